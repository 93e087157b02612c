"""Executes the table (table.py) for both directions: lookups, size binding, the normalizations of names and
shapes, the layouts (each detected by its own predicate, applied by its renames) and the ordered refusals.

The table says what; this module says how, once. Nothing here names a layout, a refusal or a file suffix: what a
declaration means is in the declaration.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.mapping.ops import IDENTITY, TRANSPOSE, Op, Orient, Shape, UnaryOp
from fla.rwkv7_convert.mapping.predicates import oriented
from fla.rwkv7_convert.mapping.refusals import REFUSALS
from fla.rwkv7_convert.mapping.schema import Kind, Layout, Refusal, Rule, Scope, Seen, Side, Stage, Target
from fla.rwkv7_convert.mapping.table import LAYOUTS, PREFIXES, RULES, SHAPE_ALIASES


def check_table(rules=RULES, layouts=LAYOUTS, refusals=REFUSALS) -> None:
    """The table's invariants, checked on import: every rule's op exactly reversible (the rules are read both ways;
    a layout's renames are read one way, so they need no reverse), renames' ops as many outputs as names, `Orient`
    only in orientation layouts, refusals sorted by stage, names unique."""
    problems = []
    for r in rules:
        if not isinstance(r.op, UnaryOp) or (r.op.inputs, r.op.outputs) != (1, 1) or r.op.reverse is None:
            problems.append(f'rule {r.blinkdl}: {r.op!r} is not a one-to-one op with a reverse')
    for x in layouts:
        for rename in x.renames:
            if isinstance(rename.op, Orient):
                if x.kind is not Kind.ORIENTATION:
                    problems.append(f'layout {x.name}: {rename.pattern} chooses its op by shape outside an orientation layout')
                continue
            count = len(rename.to) if isinstance(rename.to, tuple) else 1
            if rename.to is not None and (rename.op.inputs, rename.op.outputs) != (1, count):
                problems.append(f'layout {x.name}: {rename.op!r} does not turn one tensor into {count}')
    if [f.stage.rank for f in refusals] != sorted(f.stage.rank for f in refusals):
        problems.append('REFUSALS are not in stage order (' + ' < '.join(s.value for s in Stage) + ')')
    for what, names in (('layout', [x.name for x in layouts]), ('refusal', [f.variant for f in refusals])):
        problems += [f'two {what}s named {n!r}' for n, k in Counter(names).items() if k > 1]
    if problems:
        raise TypeError('mapping table: ' + '; '.join(problems))


check_table()

# ---------------------------------------------------------------------------------------------------------- lookups

_BLOCK = re.compile(r'^blocks\.(\d+)\.(.+)$')
_FLA_BLOCK = re.compile(r'^model\.layers\.(\d+)\.(.+)$')


def _index(key) -> dict[str, list[Rule]]:
    out: dict[str, list[Rule]] = {}
    for rule in RULES:
        k = key(rule)
        if k is not None:
            out.setdefault(k, []).append(rule)
    return out


# per-block rules by name suffix (one suffix may have rows for block 0 and for the other blocks), global by name.
# fla's side is looked up among the weights' rules only: a tuned state has a file of its own (formats/state_file.py), so
# one among the weights is an unexpected tensor there.
_BY_BLINKDL = _index(lambda r: r.blinkdl.removeprefix('blocks.{i}.') if r.layers is not Scope.GLOBAL else None)
_BY_BLINKDL_GLOBAL = _index(lambda r: r.blinkdl if r.layers is Scope.GLOBAL else None)
_WEIGHT = (lambda r: r.fla and r.target is Target.WEIGHTS)
_BY_FLA = _index(lambda r: r.fla.removeprefix('model.layers.{i}.') if _WEIGHT(r) and r.layers is not Scope.GLOBAL else None)
_BY_FLA_GLOBAL = _index(lambda r: r.fla if _WEIGHT(r) and r.layers is Scope.GLOBAL else None)
STATE_RULES = tuple(r for r in RULES if r.target is Target.STATE)


def _find(pattern: re.Pattern, per_block: dict, global_: dict, name: str) -> tuple[Rule, int | None] | None:
    m = pattern.match(name)
    layer, candidates = (None, global_.get(name, [])) if m is None else (int(m.group(1)), per_block.get(m.group(2), []))
    return next(((rule, layer) for rule in candidates if rule.applies_to(layer)), None)


def lookup_blinkdl(name: str) -> tuple[Rule, int | None] | None:
    """The rule and block index for a canonical RWKV-LM name, or None when no row matches."""
    return _find(_BLOCK, _BY_BLINKDL, _BY_BLINKDL_GLOBAL, name)


def lookup_fla(name: str) -> tuple[Rule, int | None] | None:
    """The rule and layer index for an fla parameter name, or None."""
    return _find(_FLA_BLOCK, _BY_FLA, _BY_FLA_GLOBAL, name)


def expected_blinkdl(num_layers: int, *, with_optional: bool = True,
                     target: Target = Target.WEIGHTS) -> list[tuple[str, Rule, int | None]]:
    """Every canonical RWKV-LM name of an L-block model for `target` (the weights, or a tuned state), in RWKV-LM's
    order."""
    out = []
    for rule in RULES:
        if (rule.optional and not with_optional) or rule.target is not target:
            continue
        for layer in ([None] if rule.layers is Scope.GLOBAL else range(num_layers)):
            if rule.applies_to(layer):
                out.append((rule.names(layer)[0], rule, layer))
    order = {'emb': 0, 'blocks': 1, 'ln_out': 2, 'head': 3}
    return sorted(out, key=lambda t: (order[t[0].split('.')[0]], t[2] or 0))


# ------------------------------------------------------------------------------------------------- shapes and sizes

_ALIASES = {a.canonical: a for a in SHAPE_ALIASES}


def canonical_shape(rule: Rule, shape: Shape, head_size: int | None) -> Shape | None:
    """The canonical RWKV-LM shape of a stored tensor under the table's SHAPE_ALIASES; None when none explains it."""
    alias = _ALIASES.get(rule.shape)
    return alias.normalize(tuple(shape), head_size) if alias else tuple(shape)


# ------------------------------------------------------------------------------------------------------------ names

_PREFIX_LAYOUTS = tuple(x for x in LAYOUTS if x.side is Side.BLINKDL and x.kind is Kind.PREFIX)


def strip_prefixes(name: str) -> str:
    """`name` without wrapper prefixes (PREFIXES, any number, any order) and without the guarded prefixes of the
    BlinkDL-side prefix layouts (`model.`, `rwkv7.`: only before a top-level RWKV-LM name)."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
        for layout in _PREFIX_LAYOUTS:
            found = next((t for r in layout.renames if (t := r.match(name))), None)
            if found:
                name, changed = found[0], True
    return name


def prefix_layout(prefix: str) -> Layout | None:
    """The prefix layout a stripped prefix belongs to (None for the wrapper PREFIXES)."""
    return next((x for x in _PREFIX_LAYOUTS if any(r.match(prefix + 'emb.weight') for r in x.renames)), None)


def with_op(ref: TensorRef, name: str, op: UnaryOp) -> TensorRef:
    """`ref` under `name`, its data passed through `op` when read (nothing is read now). An op that keeps the bytes
    keeps the way to copy them raw."""
    if op is IDENTITY:
        return ref.renamed(name)
    return TensorRef(name, op.shape(ref.shape), ref.dtype, lambda: op.apply(ref.load().reshape(ref.shape)),
                     ref.spanner if op.bytes_unchanged else None)


def _outputs(ref: TensorRef, names: list[str], op: Op) -> list[TensorRef]:
    if len(names) == 1:
        return [with_op(ref, names[0], op)]
    shapes = op.shapes((ref.shape,))
    return [TensorRef(n, s, ref.dtype, lambda j=j: op.run((ref.load().reshape(ref.shape),))[j])
            for j, (n, s) in enumerate(zip(names, shapes))]


def _rename(layout: Layout, tensors: dict[str, TensorRef], problems: list[str]) -> tuple[dict[str, TensorRef], str]:
    out: dict[str, TensorRef] = {}
    origin: dict[str, str] = {}
    renamed = dropped = 0
    for name, ref in tensors.items():
        # the first rename that matches and whose op takes the stored shape; none: left for the key report (e.g. a
        # stacked tensor of the wrong height)
        hit = next(((r, t) for r in layout.renames if (t := r.match(name)) is not None and r.op.fits(ref.shape)), None)
        if hit is None:
            new = [ref.renamed(name)]
        elif hit[1] == [None]:
            dropped += 1
            continue
        else:
            renamed += 1
            new = _outputs(ref, hit[1], hit[0].op)
        for r in new:
            if r.name in out:
                problems.append(f'duplicate tensor {r.name} (stored as both {origin[r.name]!r} and {name!r})')
                continue
            out[r.name], origin[r.name] = r, name
    return out, f'{renamed} tensor(s) renamed' + (f', {dropped} dropped (unused)' if dropped else '')


def _note(layout: Layout, what: str) -> str:
    return f'layout {layout.name}: {what}' + (f'; {layout.caveat}' if layout.caveat else '')


def apply_layouts(tensors: dict[str, TensorRef], side: Side) -> tuple[dict[str, TensorRef], list[str], list[str],
                                                                     tuple[tuple[Layout, tuple[str, ...]], ...]]:
    """The prefix layouts of `side`, then its naming layout, applied by their renames. Two naming layouts in one
    file are applied neither: the names stage refuses the file (refusals.REFUSALS). Returns (tensors, notes, problems:
    duplicates the renames produced, the prefix and naming layouts found with their hits: the evidence)."""
    notes: list[str] = []
    problems: list[str] = []
    found: tuple[tuple[Layout, tuple[str, ...]], ...] = ()
    for kind in (Kind.PREFIX, Kind.NAMES):
        seen = Seen({n: r.shape for n, r in tensors.items()})
        hits = tuple((x, tuple(h)) for x in LAYOUTS if x.side is side and x.kind is kind and (h := x.detect.hits(seen)))
        found += hits
        if kind is Kind.NAMES and len(hits) > 1:
            continue
        for layout, _ in hits:
            tensors, what = _rename(layout, tensors, problems)
            notes.append(_note(layout, what))
    return tensors, notes, problems, found


def apply_orientation(tensors: dict[str, TensorRef], side: Side) -> tuple[dict[str, TensorRef], list[str],
                                                                         tuple[tuple[Layout, tuple[str, ...]], ...]]:
    """The orientation layouts of `side` whose predicate holds: each tensor their `Orient` renames apply to turned
    by the op its stored shape calls for (a shape that cannot tell was refused at the shapes stage). Returns
    (tensors, notes, the layouts applied with their hits)."""
    notes = []
    found: tuple[tuple[Layout, tuple[str, ...]], ...] = ()
    for layout in (x for x in LAYOUTS if x.side is side and x.kind is Kind.ORIENTATION):
        shapes = {n: r.shape for n, r in tensors.items()}
        if not (hits := layout.detect.hits(Seen(shapes))):
            continue
        found += ((layout, tuple(hits)),)
        _, ops = oriented(layout.renames, shapes)
        tensors = {n: with_op(r, n, ops.get(n) or IDENTITY) for n, r in tensors.items()}
        flipped = sum(1 for op in ops.values() if op is TRANSPOSE)
        notes.append(_note(layout, f'{flipped} tensor(s) stored transposed, transposed back'))
    return tensors, notes, found


def directory_layouts(tensors: Mapping[str, TensorRef], side: Side) -> tuple[tuple[Layout, tuple[str, ...]], ...]:
    """The directory layouts of `side` (a Hugging Face directory read as it is) that `tensors` show, with hits."""
    seen = Seen({n: r.shape for n, r in tensors.items()})
    return tuple((x, tuple(h)) for x in LAYOUTS if x.side is side and x.kind is Kind.DIRECTORY and (h := x.detect.hits(seen)))


# --------------------------------------------------------------------------------------------------------- refusals

def first_refusal(side: Side, seen: Seen) -> tuple[Refusal, list[str]] | None:
    """The first refusal of REFUSALS (in its order: stage by stage) that applies to an input of `side`, with its
    hits. The file stage is decided by formats.readers before any name is read."""
    for refusal in REFUSALS:
        if refusal.stage is not Stage.FILE and side in refusal.sides and (hits := refusal.when.hits(seen)):
            return refusal, hits
    return None


def refuse(side: Side, seen: Seen, shown: str) -> None:
    """Raise the first refusal that applies (one line: what the input is, why, what to use instead)."""
    found = first_refusal(side, seen)
    if found is not None:
        refusal, hits = found
        raise refusal.error(refusal.text(hits), shown, refusal=refusal)
