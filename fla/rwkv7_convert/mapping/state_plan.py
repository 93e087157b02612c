"""A bare tuned-state file (RWKV-PEFT's state-tuning output, or RWKV-block's `init_state.N.wkv` alone) checked against
the base model it was tuned for, from names and shapes only (no tensor data).

A state holds no weights, so the model's sizes cannot be read from it: they come from the base model's converted
directory (its config.json and tensors, checked as the export checks them: mapping/export_plan.py). Names go through
the same normalizations as a checkpoint's (wrapper keys, prefixes, the BlinkDL-side layouts) and are looked up in the
one table (table.RULES, the rules whose target is the state file). Every problem is collected into one report; the two
that say "this state belongs to another model" (head count or size, layer count) are one line each.
"""

from __future__ import annotations

from fla.rwkv7_convert.errors import ConversionError, KeyMismatchError
from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.formats.dtypes import FLOATING
from fla.rwkv7_convert.mapping.config import Dims
from fla.rwkv7_convert.mapping.engine import apply_layouts, expected_blinkdl, lookup_blinkdl
from fla.rwkv7_convert.mapping.key_report import unexpected_tensors
from fla.rwkv7_convert.mapping.plan import Entry, normalize_names, unwrap_state_dict
from fla.rwkv7_convert.mapping.schema import Side, Target


def state_names(tree: object, shown: str) -> dict[str, TensorRef]:
    """The tensors of `tree` under their canonical RWKV-LM names (after unwrapping, prefixes and the layouts)."""
    tensors, _ = unwrap_state_dict(tree, shown)
    tensors, _, problems = normalize_names(tensors)
    tensors, _, more, _ = apply_layouts(tensors, Side.BLINKDL)
    if problems + more:
        raise KeyMismatchError(problems + more, shown)
    return tensors


def make_state_plan(tree: object, shown: str, dims: Dims, base: str) -> list[Entry]:
    """The entries (one per block, block order) of a bare state file tuned for the model of sizes `dims` (read from
    the base model's directory `base`, named in the messages)."""
    tensors = state_names(tree, shown)
    entries: dict[int, Entry] = {}
    weights, unknown, problems = [], [], []
    for name, ref in tensors.items():
        found = lookup_blinkdl(name)
        if found is None or found[0].names(found[1])[0] != name:
            unknown.append(name)
            continue
        rule, layer = found
        if rule.target is not Target.STATE:
            weights.append(name)
            continue
        if layer >= dims.L:
            raise ConversionError(f'{name}: the state has a block {layer}, the base model {base} has {dims.L} layer(s) '
                                  '(0-{}): this state was tuned for another model'.format(dims.L - 1), shown)
        want = dims.resolve(rule.shape)
        if tuple(ref.shape) != want:
            raise ConversionError(f'{name} is {list(ref.shape)}, the base model {base} has {dims.H} heads of {dims.N} '
                                  f'({list(want)}): this state was tuned for another model', shown)
        if ref.dtype not in FLOATING:
            problems.append(f'{name} has dtype {ref.dtype}, expected a floating point dtype')
            continue
        fla_name = rule.names(layer)[1]
        entries[layer] = Entry(ref, name, rule, layer, want, fla_name, rule.op.shape(want))
    if weights:
        raise ConversionError(f'holds model weights ({", ".join(weights[:2])}, ...) beside its states: --base is for a '
                              'bare state file; a state-tuned merge converts on its own, without --base', shown)
    known = [n for n, _, _ in expected_blinkdl(dims.L, target=Target.STATE)]
    problems += unexpected_tensors(unknown, known)
    if not entries and not problems:
        problems.append('no tuned state (blocks.N.att.time_state or init_state.N.wkv)')
    if entries:
        missing = [n for n, _, layer in expected_blinkdl(dims.L, target=Target.STATE) if layer not in entries]
        if missing:
            problems += [f'missing tensor {n}: the base model {base} has {dims.L} layers, the state one per block'
                         for n in missing[:3]]
    if problems:
        raise KeyMismatchError(problems, shown)
    return [entries[i] for i in sorted(entries)]
