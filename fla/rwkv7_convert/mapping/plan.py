"""From an open checkpoint to a checked conversion plan, reading names, shapes and dtypes only (no tensor data).

The walk: unwrap nested state dicts -> strip wrapper prefixes -> the prefix and naming layouts (engine.py) -> refuse
other architectures (table.REFUSALS, whole key set and shapes) -> the orientation layouts -> look every name up in
the table -> infer the model's sizes from shapes -> check every shape against them.
Every problem found on the way is collected and raised together in one KeyMismatchError.
"""

from __future__ import annotations

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
    bind_sizes,
    canonical_shape,
    expected_blinkdl,
    lookup_blinkdl,
    prefix_layout,
    refuse,
    strip_prefixes,
)
from fla.rwkv7_convert.mapping.key_report import missing_tensor, unexpected_tensors
from fla.rwkv7_convert.mapping.schema import Layout, Rule, Seen, Side, Target
from fla.rwkv7_convert.mapping.table import BLINKDL_STATE_KEY, SIZES, WRAPPER_KEYS


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


def _common_shape(tensors: dict[str, TensorRef], names: list[str], rank: int) -> tuple[int, ...] | None:
    """The most common shape of the given rank among `names`: one broken tensor then shows up as mis-shaped
    in the full report instead of hiding the model's true size."""
    shapes = Counter(tensors[n].shape for n in names if n in tensors and len(tensors[n].shape) == rank)
    return shapes.most_common(1)[0][0] if shapes else None


def infer_dims(tensors: dict[str, TensorRef], head_size: int | None, shown: str) -> Dims:
    """Sizes from shapes alone; raises KeyMismatchError naming each size that cannot be read."""
    problems = []
    if head_size is not None and head_size <= 0:
        raise KeyMismatchError([f'--head-size must be a positive number, not {head_size}'], shown)
    layers = {int(m.group(1)) for n in tensors if (m := _BLOCK_INDEX.match(n))}
    L = max(layers) + 1 if layers else 0
    if L == 0:
        problems.append('no blocks.{i}.* tensors: cannot tell the number of layers')
    elif len(layers) != L:
        # a stray high index would otherwise make every tensor of every block in between "missing" (and a huge
        # index would take unbounded time and memory to list)
        raise KeyMismatchError([f'block indices are not contiguous: blocks {_ranges(sorted(layers))} have tensors, '
                                f'{_ranges(_gaps(sorted(layers)), limit=3)} have none'], shown)

    sizes = bind_sizes({n: r.shape for n, r in tensors.items()})
    first = {'V': 'emb.weight', 'C': 'emb.weight', 'F': 'blocks.0.ffn.key.weight', 'Dw': 'blocks.0.att.w1',
             'Da': 'blocks.0.att.a1', 'Dg': 'blocks.0.att.g1'}
    for symbol, name in first.items():
        if symbol not in sizes:
            found = list(tensors[name].shape) if name in tensors else 'missing'
            problems.append(f'cannot read {SIZES[symbol]} from {name} (shape {found}) or any tensor of that size')
    V, C, F, Dw, Da, Dg = (sizes.get(s, 0) for s in first)
    # v1 is read from block 1 on; block 0's copy is unused and may be absent (then any rank works for L = 1)
    Dv = sizes.get('Dv', 32)
    if L > 1 and 'Dv' not in sizes:
        problems.append('cannot read the value LoRA rank from blocks.1.att.v1 or v2')

    r_k_names = [f'blocks.{i}.att.r_k' for i in range(L)]
    r_k = _common_shape(tensors, r_k_names, 2) or _common_shape(tensors, r_k_names, 1)
    H = N = 0
    if r_k is not None and len(r_k) == 2:
        H, N = r_k
        if head_size and head_size != N:
            problems.append(f'--head-size {head_size} contradicts blocks.0.att.r_k of shape {list(r_k)} (head size {N})')
    elif r_k is not None and len(r_k) == 1:
        if not head_size:
            problems.append(f'blocks.0.att.r_k is stored flat {list(r_k)}, so the head size cannot be read from it; '
                            'pass --head-size N (64 for released models)')
        elif C and C % head_size:
            problems.append(f'--head-size {head_size} does not divide the hidden size {C}')
        else:
            N, H = head_size, r_k[0] // head_size
    else:
        problems.append(f'cannot read the head size from blocks.0.att.r_k (shape {list(r_k) if r_k else "missing"})')
    if r_k is not None and C and H * N != C:
        problems.append(f'blocks.0.att.r_k is {H}x{N} = {H * N}, expected H*N = hidden size {C}')
    if problems:
        raise KeyMismatchError(problems, shown)
    dims = Dims(V=V, C=C, L=L, H=H, N=N, F=F, Dw=Dw, Da=Da, Dv=Dv, Dg=Dg)
    empty = [f'{k} = 0' for k, v in vars(dims).items() if v <= 0]
    if empty:  # fla cannot build a model with an empty dimension; the config would divide by it
        raise KeyMismatchError([f'zero-sized model dimension(s) read from the shapes: {", ".join(empty)}'], shown)
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


def make_plan(tree: object, shown: str, *, head_size: int | None = None, drop_state: bool = False) -> Plan:
    """The checked plan for the state dict in `tree`. A state-tuned merge's tuned initial states (`att.time_state`,
    RWKV-block's `init_state.N.wkv`) are planned for the state file (`Plan.states`); `drop_state` leaves them out."""
    tensors, unwrapped = unwrap_state_dict(tree, shown)
    tensors, prefixes, problems = normalize_names(tensors)
    tensors, layout_notes, more, detected = apply_layouts(tensors, Side.BLINKDL)
    problems += more
    states = [n for n in tensors if BLINKDL_STATE_KEY.match(n)]
    if drop_state and states and len(states) < len(tensors):
        tensors = {n: r for n, r in tensors.items() if n not in states}
        layout_notes.append(f'--drop-state: {len(states)} tuned initial state(s) att.time_state dropped')
    refuse(Side.BLINKDL, Seen({n: r.shape for n, r in tensors.items()}, detected), shown)  # table.REFUSALS, in order
    tensors, more_notes, oriented = apply_orientation(tensors, Side.BLINKDL)
    layout_notes += more_notes
    dims = infer_dims(tensors, head_size, shown)

    expected = expected_blinkdl(dims.L)
    entries, seen = [], set()
    unknown = []
    for name, ref in tensors.items():
        found = lookup_blinkdl(name)
        # the exact canonical spelling only: the table's patterns also match 'blocks.01.x', a trailing newline...
        if found is None or (found[1] is not None and found[1] >= dims.L) or found[0].names(found[1])[0] != name:
            unknown.append(name)
            continue
        rule, layer = found
        seen.add(name)
        want = dims.resolve(rule.shape)
        canon = canonical_shape(rule, ref.shape, dims.N)
        if canon != want:
            problems.append(f'{name} has shape {list(ref.shape)}, expected {list(want)} ({rule.shape})')
            continue
        if ref.dtype not in FLOATING:
            problems.append(f'{name} has dtype {ref.dtype}, expected a floating point dtype')
            continue
        _, fla_name = rule.names(layer)
        fla_shape = rule.op.shape(canon) if fla_name else None
        entries.append(Entry(ref, name, rule, layer, canon, fla_name, fla_shape))

    problems += unexpected_tensors(unknown, [n for n, _, _ in expected])
    problems += _missing_states(entries, dims.L)
    for name, rule, _layer in expected:
        if name not in seen and not rule.optional and name not in tensors:
            problems.append(missing_tensor(name, dims.resolve(rule.shape)))
    if problems:
        raise KeyMismatchError(problems, shown)

    notes = [f'RWKV-7 "Goose", {dims.L} layer(s), hidden {dims.C}, {dims.H} heads of {dims.N}, vocab {dims.V}, FFN {dims.F}',
             f'LoRA ranks: decay {dims.Dw}, a {dims.Da}, value {dims.Dv}, gate {dims.Dg}']
    if unwrapped:
        notes.append('unwrapped nested state dict: ' + ' -> '.join(repr(k) for k in unwrapped))
    if prefixes:
        notes.append('stripped wrapper prefixes: ' + ', '.join(repr(p) for p in prefixes))
    # BlinkDL-side prefix layouts are stripped with the wrapper prefixes (strip_prefixes): the prefix is the evidence
    by_prefix: dict[str, tuple[Layout, list[str]]] = {}
    for p in prefixes:
        for part in p.split('.'):
            if x := prefix_layout(part + '.'):
                by_prefix.setdefault(x.name, (x, []))[1].append(f'{p}*')
    for layout, _ in by_prefix.values():
        notes.append(f'layout {layout.name}: {layout.who}')
    layouts = [(x, tuple(h)) for x, h in by_prefix.values()] + list(detected) + list(oriented)
    notes += layout_notes
    squeezed = sum(1 for e in entries if e.source.shape != e.canonical_shape)
    if squeezed:
        notes.append(f'{squeezed} tensor(s) stored in a squeezed/flat shape, normalized to RWKV-LM shapes')
    plan = Plan(dims, entries, prefixes, unwrapped, notes, layouts)
    if plan.states:
        first = plan.states[0]
        notes.append(f'tuned initial state: {len(plan.states)} block(s) of {list(first.canonical_shape)} '
                     f'{first.source.dtype} ({first.blinkdl.replace(".0.", ".N.")}), written to the state file '
                     f'transposed per head to fla\'s [H, K, V]')
    if plan.dropped:
        notes.append(f'layer-0 att.v0/v1/v2 present: dropped ({len(plan.dropped)} tensors, unused by the model)')
    else:
        notes.append('layer-0 att.v0/v1/v2 absent (fine: they are unused)')
    return plan
