"""From an open checkpoint to a checked conversion plan, reading names, shapes and dtypes only (no tensor data).

The walk: unwrap nested state dicts -> strip wrapper prefixes -> the prefix and naming layouts (engine.py) -> refuse
other architectures (refusals.REFUSALS, whole key set and shapes) -> the orientation layouts -> look every name up in
the table -> infer the model's sizes from shapes -> check every shape against them.
Every problem found on the way is collected and raised together in one KeyMismatchError.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from fla.rwkv7_convert.errors import KeyMismatchError, NotACheckpointError
from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.formats.dtypes import FLOATING
from fla.rwkv7_convert.mapping.config import Dims
from fla.rwkv7_convert.mapping.engine import (
    apply_layouts,
    apply_orientation,
    canonical_shape,
    expected_blinkdl,
    lookup_blinkdl,
    prefix_layout,
    refuse,
    strip_prefixes,
)
from fla.rwkv7_convert.mapping.key_report import missing_tensor, unexpected_tensors
from fla.rwkv7_convert.mapping.ops import IDENTITY
from fla.rwkv7_convert.mapping.schema import Layout, Rule, Seen, Side, Target
from fla.rwkv7_convert.mapping.sizes import dims_from
from fla.rwkv7_convert.mapping.table import BLINKDL_STATE_KEY, WRAPPER_KEYS


@dataclass(frozen=True)
class Entry:
    """One tensor's way from the input file to the output."""

    source: TensorRef  # as stored in the file (original name, stored shape)
    blinkdl: str  # canonical RWKV-LM name
    rule: Rule
    layer: int | None
    canonical_shape: tuple[int, ...]  # RWKV-LM's shape after aliases
    fla: str | None  # None: dropped (layer-0 v0/v1/v2)
    fla_shape: tuple[int, ...] | None


@dataclass
class Plan:
    dims: Dims
    entries: list[Entry]  # in input order; dropped ones have fla None
    prefixes: list[str] = field(default_factory=list)  # wrapper prefixes that were stripped
    unwrapped: list[str] = field(default_factory=list)  # wrapper keys that were unwrapped
    notes: list[str] = field(default_factory=list)  # what the detector saw, for --dry-run
    layouts: list[tuple[Layout, tuple[str, ...]]] = field(default_factory=list)  # detected, with their evidence

    @property
    def kept(self) -> list[Entry]:
        """The weights converted (model.safetensors)."""
        return [e for e in self.entries if e.fla is not None and e.rule.target is Target.WEIGHTS]

    @property
    def states(self) -> list[Entry]:
        """The tuned initial states converted (rwkv7_state.safetensors), in block order; [] or one per block."""
        return sorted((e for e in self.entries if e.rule.target is Target.STATE), key=lambda e: e.layer)

    @property
    def dropped(self) -> list[Entry]:
        return [e for e in self.entries if e.fla is None]

    @property
    def stored_dtypes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.kept:
            counts[e.source.dtype] = counts.get(e.source.dtype, 0) + e.source.numel
        return counts

    @property
    def num_parameters(self) -> int:
        return sum(e.source.numel for e in self.kept)

    def lines(self, config: dict, precision: str | None, norms: str) -> list[str]:
        """convert --dry-run's listing: what was detected, the config.json the run writes (`norms`: what its
        fuse_norm computes, hub.model_card.fuse_norm_line, which mapping/ cannot import) and every tensor's mapping."""
        out = ['detected:', *(f'  {note}' for note in self.notes), 'config.json:',
               '  ' + json.dumps(config, sort_keys=False).replace(', "', ',\n   "'), f'norms: {norms}',
               'mapping (RWKV-LM name [stored shape] dtype -> fla name [shape] op):']
        for e in self.entries:
            src = f'  {e.source.name} {list(e.source.shape)} {e.source.dtype} ->'
            if e.fla is None:
                out.append(f'{src} (dropped: {e.rule.note})')
                continue
            op = '' if e.rule.op is IDENTITY else f' ({e.rule.op.name})'
            reshape = ' (alias: reshaped)' if e.source.shape != e.canonical_shape else ''
            out.append(f'{src} {e.fla} {list(e.fla_shape)} {precision or e.source.dtype}{op}{reshape}')
        return out


MAX_WRAPPERS = 8


def _holds_weights(node: object) -> bool:
    """A mapping that is a state dict or wraps one (directly or through further wrapper keys)."""
    return isinstance(node, Mapping) and (any(isinstance(v, TensorRef) for v in node.values())
                                          or any(isinstance(node.get(k), Mapping) for k in WRAPPER_KEYS))


def unwrap_state_dict(tree: object, shown: str) -> tuple[dict[str, TensorRef], list[str]]:
    """The flat name -> tensor mapping inside `tree`, unwrapping `{"state_dict": {...}}`-style containers."""
    unwrapped = []
    while isinstance(tree, Mapping) and not any(isinstance(v, TensorRef) for v in tree.values()):
        inner = [k for k in WRAPPER_KEYS if isinstance(tree.get(k), Mapping)]
        if not inner:
            break
        weighty = [k for k in inner if _holds_weights(tree[k])]
        if len(weighty) > 1:  # picking one would be a guess that may convert the wrong model
            raise NotACheckpointError(f'ambiguous: {" and ".join(repr(k) for k in weighty)} both hold state dicts; '
                                      'save the one to convert on its own', shown)
        if len(unwrapped) >= MAX_WRAPPERS:
            raise NotACheckpointError(f'state dict wrapped more than {MAX_WRAPPERS} levels deep', shown)
        key = (weighty or inner)[0]
        unwrapped.append(key)
        tree = tree[key]
    if not isinstance(tree, Mapping):
        raise NotACheckpointError(f'holds a {type(tree).__name__}, expected a state dict (a mapping of names to tensors)',
                                  shown)
    if not tree:
        raise NotACheckpointError('holds an empty state dict', shown)
    bad = [f'{k!r} ({type(v).__name__})' for k, v in tree.items() if not isinstance(v, TensorRef) or not isinstance(k, str)]
    if bad:
        more = f' and {len(bad) - 5} more' if len(bad) > 5 else ''
        raise NotACheckpointError(
            f'is not a plain state dict: {len(bad)} value(s) are not tensors: {", ".join(bad[:5])}{more}', shown)
    return dict(tree), unwrapped


def normalize_names(tensors: dict[str, TensorRef]) -> tuple[dict[str, TensorRef], list[str], list[str]]:
    """Strip wrapper prefixes; returns (canonical name -> tensor, prefixes seen, duplicate problems)."""
    out: dict[str, TensorRef] = {}
    origin: dict[str, str] = {}
    prefixes: set[str] = set()
    problems = []
    for name, ref in tensors.items():
        canon = strip_prefixes(name)
        if canon != name:
            prefixes.add(name[: len(name) - len(canon)])
        if canon in out:
            problems.append(f'duplicate tensor {canon} (stored as both {origin[canon]!r} and {name!r})')
            continue
        out[canon], origin[canon] = ref, name
    return out, sorted(prefixes), problems


def _layer_count(tensors: dict[str, TensorRef], shown: str, problems: list[str]) -> int:
    """L from the block indices (0 with a problem when there are none)."""
    layers = {int(m.group(1)) for n in tensors if (m := _BLOCK_INDEX.match(n))}
    if not layers:
        problems.append('no blocks.{i}.* tensors: cannot tell the number of layers')
        return 0
    if len(layers) != max(layers) + 1:
        # a stray high index would otherwise make every tensor of every block in between "missing" (and a huge
        # index would take unbounded time and memory to list)
        raise KeyMismatchError([f'block indices are not contiguous: blocks {_ranges(sorted(layers))} have tensors, '
                                f'{_ranges(_gaps(sorted(layers)), limit=3)} have none'], shown)
    return max(layers) + 1


def _flat_heads(tensors: dict[str, TensorRef], L: int, head_size: int | None, problems: list[str]) -> dict[str, int]:
    """H and N of a model whose r_k is stored flat ([C]: N cannot be read from it), from --head-size; {} when r_k is
    stored [H,N] (bind_sizes reads it) or missing; zeros, with a problem, when --head-size cannot tell."""
    r_k = Counter(tensors[n].shape for i in range(L) if (n := f'blocks.{i}.att.r_k') in tensors)
    if not r_k or any(len(s) == 2 for s in r_k) or not (flat := [s for s in r_k if len(s) == 1]):
        return {}
    (C,) = max(flat, key=r_k.__getitem__)
    if not head_size:
        problems.append(f'blocks.0.att.r_k is stored flat [{C}], so the head size cannot be read from it; pass '
                        '--head-size N (64 for released models)')
    elif C % head_size:
        problems.append(f'--head-size {head_size} does not divide the hidden size {C}')
    else:
        return {'H': C // head_size, 'N': head_size}
    return {'H': 0, 'N': 0}


def infer_dims(tensors: dict[str, TensorRef], head_size: int | None, shown: str) -> Dims:
    """Sizes from shapes alone (sizes.dims_from, as the export reads them); raises KeyMismatchError naming each size
    that cannot be read."""
    if head_size is not None and head_size <= 0:
        raise KeyMismatchError([f'--head-size must be a positive number, not {head_size}'], shown)
    problems: list[str] = []
    L = _layer_count(tensors, shown, problems)
    known = _flat_heads(tensors, L, head_size, problems)
    dims = dims_from({n: r.shape for n, r in tensors.items()}, L, shown, problems=problems, known=known)
    if head_size and head_size != dims.N:
        raise KeyMismatchError([f'--head-size {head_size} contradicts blocks.0.att.r_k of shape [{dims.H}, {dims.N}] '
                                f'(head size {dims.N})'], shown)
    return dims


# canonical block indices only: 'blocks.01.' or 'blocks.\u0661.' would otherwise alias 'blocks.1.'
_BLOCK_INDEX = re.compile(r'^blocks\.(0|[1-9][0-9]*)\.')


def _gaps(present: list[int]) -> list[int] | list[tuple[int, int]]:
    """The missing index ranges below max(present), as (first, last) pairs."""
    out, expect = [], 0
    for i in present:
        if i > expect:
            out.append((expect, i - 1))
        expect = i + 1
    return out


def _ranges(items: list, limit: int = 6) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'; (a, b) pairs are ranges already."""
    spans: list[tuple[int, int]] = []
    for x in items:
        a, b = x if isinstance(x, tuple) else (x, x)
        if spans and a == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    text = [f'{a}' if a == b else f'{a}-{b}' for a, b in spans[:limit]]
    return ', '.join(text) + (f', ... ({len(spans) - limit} more ranges)' if len(spans) > limit else '')


def _missing_states(entries: list[Entry], L: int) -> list[str]:
    """A tuned state has one tensor per block: some blocks with one and others without is a broken file."""
    have = {e.layer for e in entries if e.rule.target is Target.STATE}
    if not have or len(have) == L:
        return []
    rule = next(e.rule for e in entries if e.rule.target is Target.STATE)
    return [f'{rule.names(i)[0]} missing: a tuned state has one per block (present for blocks '
            f'{_ranges(sorted(have))} of 0-{L - 1})' for i in sorted(set(range(L)) - have)[:3]]


def _drop_states(tensors: dict[str, TensorRef], notes: list[str]) -> dict[str, TensorRef]:
    """--drop-state: a merge's tuned states left out (a file of states alone is left to its refusal)."""
    states = [n for n in tensors if BLINKDL_STATE_KEY.match(n)]
    if not states or len(states) == len(tensors):
        return tensors
    notes.append(f'--drop-state: {len(states)} tuned initial state(s) att.time_state dropped')
    return {n: r for n, r in tensors.items() if n not in states}


def _known(name: str, L: int) -> tuple[Rule, int | None] | None:
    """The rule and block of a canonical name in an L-block model; None for any other spelling (the table's patterns
    also match 'blocks.01.x', a trailing newline...)."""
    found = lookup_blinkdl(name)
    if found is None or (found[1] is not None and found[1] >= L) or found[0].names(found[1])[0] != name:
        return None
    return found


def _entry(ref: TensorRef, name: str, rule: Rule, layer: int | None, dims: Dims, problems: list[str]) -> Entry | None:
    """The entry of a known tensor; None when its shape or dtype is a problem (added to `problems`)."""
    want = dims.resolve(rule.shape)
    canon = canonical_shape(rule, ref.shape, dims.N)
    if canon != want:
        problems.append(f'{name} has shape {list(ref.shape)}, expected {list(want)} ({rule.shape})')
    elif ref.dtype not in FLOATING:
        problems.append(f'{name} has dtype {ref.dtype}, expected a floating point dtype')
    else:
        fla_name = rule.names(layer)[1]
        return Entry(ref, name, rule, layer, canon, fla_name, rule.op.shape(canon) if fla_name else None)
    return None


def _entries(tensors: dict[str, TensorRef], dims: Dims, problems: list[str]) -> list[Entry]:
    """Every tensor looked up and checked; the key report's problems (unexpected, missing) added to `problems`."""
    expected = expected_blinkdl(dims.L)
    entries, unknown, seen = [], [], set()
    for name, ref in tensors.items():
        found = _known(name, dims.L)
        if found is None:
            unknown.append(name)
            continue
        seen.add(name)
        if (entry := _entry(ref, name, *found, dims, problems)) is not None:
            entries.append(entry)
    problems += unexpected_tensors(unknown, [n for n, _, _ in expected])
    problems += _missing_states(entries, dims.L)
    problems += [missing_tensor(name, dims.resolve(rule.shape)) for name, rule, _ in expected
                 if name not in seen and not rule.optional and name not in tensors]
    return entries


def _prefix_layouts(prefixes: list[str]) -> list[tuple[Layout, tuple[str, ...]]]:
    """The BlinkDL-side prefix layouts stripped with the wrapper prefixes (engine.strip_prefixes), each with the
    prefixes that show it: the prefix is the evidence."""
    by_prefix: dict[str, tuple[Layout, list[str]]] = {}
    for p in prefixes:
        for part in p.split('.'):
            if x := prefix_layout(part + '.'):
                by_prefix.setdefault(x.name, (x, []))[1].append(f'{p}*')
    return [(x, tuple(hits)) for x, hits in by_prefix.values()]


def _notes(plan: Plan, prefixed: list[tuple[Layout, tuple[str, ...]]], layout_notes: list[str]) -> list[str]:
    """What the detector saw, for --dry-run and inspect: the sizes, wrappers, layouts, aliases, states, layer-0 v."""
    notes = plan.dims.notes('RWKV-7 "Goose"')
    if plan.unwrapped:
        notes.append('unwrapped nested state dict: ' + ' -> '.join(repr(k) for k in plan.unwrapped))
    if plan.prefixes:
        notes.append('stripped wrapper prefixes: ' + ', '.join(repr(p) for p in plan.prefixes))
    notes += [f'layout {x.name}: {x.who}' for x, _ in prefixed] + layout_notes
    squeezed = sum(1 for e in plan.entries if e.source.shape != e.canonical_shape)
    if squeezed:
        notes.append(f'{squeezed} tensor(s) stored in a squeezed/flat shape, normalized to RWKV-LM shapes')
    if plan.states:
        first = plan.states[0]
        notes.append(f'tuned initial state: {len(plan.states)} block(s) of {list(first.canonical_shape)} '
                     f'{first.source.dtype} ({first.blinkdl.replace(".0.", ".N.")}), written to the state file '
                     f'transposed per head to fla\'s [H, K, V]')
    if plan.dropped:
        notes.append(f'layer-0 att.v0/v1/v2 present: dropped ({len(plan.dropped)} tensors, unused by the model)')
    else:
        notes.append('layer-0 att.v0/v1/v2 absent (fine: they are unused)')
    return notes


def make_plan(tree: object, shown: str, *, head_size: int | None = None, drop_state: bool = False) -> Plan:
    """The checked plan for the state dict in `tree`. A state-tuned merge's tuned initial states (`att.time_state`,
    RWKV-block's `init_state.N.wkv`) are planned for the state file (`Plan.states`); `drop_state` leaves them out."""
    tensors, unwrapped = unwrap_state_dict(tree, shown)
    tensors, prefixes, problems = normalize_names(tensors)
    tensors, layout_notes, more, detected = apply_layouts(tensors, Side.BLINKDL)
    problems += more
    if drop_state:
        tensors = _drop_states(tensors, layout_notes)
    refuse(Side.BLINKDL, Seen({n: r.shape for n, r in tensors.items()}, detected), shown)  # refusals.REFUSALS, in order
    tensors, more_notes, oriented = apply_orientation(tensors, Side.BLINKDL)
    dims = infer_dims(tensors, head_size, shown)
    entries = _entries(tensors, dims, problems)
    if problems:
        raise KeyMismatchError(problems, shown)
    prefixed = _prefix_layouts(prefixes)
    plan = Plan(dims, entries, prefixes, unwrapped, layouts=prefixed + list(detected) + list(oriented))
    plan.notes = _notes(plan, prefixed, layout_notes + more_notes)
    return plan
