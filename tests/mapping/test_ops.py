"""Every op is exactly reversible: each op class and every rule, applied to random data (the table's sizes bound at
random) and reversed, gives the data back bit for bit, in the declared shapes. An op with no inverse says so instead
of passing for its own, and only the rules (read both ways) must have one: a layout's renames are read one way. The
one reshape op takes only the shape it declares, so it is exact by construction."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fla.rwkv7_convert.mapping import ops
from fla.rwkv7_convert.mapping.config import Dims
from fla.rwkv7_convert.mapping.engine import check_table, expected_blinkdl
from fla.rwkv7_convert.mapping.ops import IDENTITY, SQUEEZE, SWAP_LAST_TWO, TRANSPOSE, Op, Orient, Reshape, UnaryOp
from fla.rwkv7_convert.mapping.predicates import NamePattern
from fla.rwkv7_convert.mapping.refusals import REFUSALS
from fla.rwkv7_convert.mapping.schema import Kind, Layout, Rename, Rule, Side, Target
from fla.rwkv7_convert.mapping.table import LAYOUTS, RULES

SEEDS = range(4)


def _roundtrip(op: Op, shapes: tuple[tuple[int, ...], ...], rng: np.random.Generator) -> bool:
    """Whether the output held the input's bytes unchanged."""
    arrays = tuple(rng.standard_normal(s).astype(np.float32) for s in shapes)
    out = op.run(arrays)
    assert tuple(a.shape for a in out) == op.shapes(shapes), op
    assert len(arrays) == op.inputs and len(out) == op.outputs, op
    back = op.reverse.run(out)
    assert tuple(b.shape for b in back) == shapes, op
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back)), op
    assert op.reverse.shapes(op.shapes(shapes)) == shapes, op
    # the declaration the raw copy relies on
    same = len(arrays) == len(out) == 1 and out[0].tobytes() == arrays[0].tobytes()
    assert same or not op.bytes_unchanged, op
    return same


OP_CASES = [
    pytest.param(IDENTITY, ((3, 5),), id='identity'),
    pytest.param(TRANSPOSE, ((3, 5),), id='transpose'),
    pytest.param(SWAP_LAST_TWO, ((2, 3, 5),), id='swap-last-two'),
    pytest.param(SQUEEZE, ((1, 1, 7),), id='squeeze'),
    pytest.param(SQUEEZE.reverse, ((7,),), id='unsqueeze'),
    pytest.param(Reshape('1,1,H,N', 'H,N'), ((1, 1, 2, 4),), id='drop-unit-dims'),
    pytest.param(Reshape('H,N', '1,1,H,N'), ((2, 4),), id='add-unit-dims'),
    pytest.param(Reshape('6,C', '1,1,C', outputs=6), ((6, 5),), id='split'),
    pytest.param(Reshape('1,1,C', '6,C', inputs=6), ((1, 1, 5),) * 6, id='join'),
]


@pytest.mark.parametrize('op, shapes', OP_CASES)
def test_every_op_reverses_exactly(op, shapes):
    # on these shapes an op that moves bytes shows it, so `bytes_unchanged` is checked both ways
    assert _roundtrip(op, shapes, np.random.default_rng(0)) == op.bytes_unchanged
    assert op.reverse.reverse.name == op.name


def test_every_op_class_is_covered():
    classes = {c for c in vars(ops).values() if isinstance(c, type) and issubclass(c, Op) and c not in (Op, UnaryOp)}
    assert classes == {type(p.values[0]) for p in OP_CASES}


@pytest.mark.parametrize('op, shape', [
    pytest.param(SQUEEZE, (7,), id='squeeze-flat'),
    pytest.param(SQUEEZE, (1, 7), id='squeeze-two-dims'),
    pytest.param(SQUEEZE, (2, 1, 7), id='squeeze-no-unit-dim'),
    pytest.param(Reshape('1,1,H,N', 'H,N'), (2, 4), id='drop-unit-dims-none-there'),
    pytest.param(Reshape('H,N,N', 'H,N,N'), (2, 3, 4), id='one-symbol-two-sizes'),
    pytest.param(Reshape('6,C', '1,1,C', outputs=6), (5, 4), id='split-wrong-height'),
])
def test_a_reshape_takes_only_the_shape_it_declares(op, shape):
    # what made the old DropUnitDims/AddUnitDims inexact: a shape outside the domain passed through unchanged
    assert not op.fits(shape)
    with pytest.raises(ValueError, match='cannot take'):
        op.shape(shape)


@pytest.mark.parametrize('source, target, counts', [
    pytest.param('C', 'C,C', {}, id='more-elements'),
    pytest.param('1,1,C', 'N', {}, id='another-symbol'),
    pytest.param('6,C', '1,1,C', {'outputs': 5}, id='split-into-the-wrong-count'),
    pytest.param('6,C', '1,C', {'inputs': 2, 'outputs': 3}, id='many-to-many'),
])
def test_a_reshape_that_would_change_the_elements_cannot_be_declared(source, target, counts):
    with pytest.raises(TypeError, match='not the same elements'):
        Reshape(source, target, **counts)


class _Take(UnaryOp):
    """The first row: many tensors give the same row, so nothing can go back."""

    name = 'first row'

    def apply(self, data):
        return data[0]

    def shape(self, shape):
        return shape[1:]


def test_an_op_without_an_inverse_has_none_and_the_table_refuses_it():
    assert _Take().reverse is None  # not itself by inheritance
    with pytest.raises(TypeError, match='blocks.0.x: first row is not a one-to-one op with a reverse'):
        check_table(rules=(Rule('blocks.0.x', 'y', 'C', _Take()),), layouts=(), refusals=())
    with pytest.raises(TypeError, match='has no reverse'):
        _ = Rule('blocks.0.x', 'y', 'C', _Take()).reverse


def test_a_layout_rename_is_read_one_way_and_needs_no_reverse():
    one_way = Layout('one way', Side.BLINKDL, Kind.NAMES, 'a test', (), NamePattern('^x$'), (Rename('x', 'y', _Take()),))
    check_table(layouts=(one_way,), refusals=())


def test_the_table_itself_passes_its_checks():
    check_table()
    with pytest.raises(TypeError, match='not in stage order'):
        check_table(refusals=tuple(reversed(REFUSALS)))


def _dims(seed: int) -> Dims:
    """Random sizes; no LoRA rank equals C, so every factor's orientation can be read from its shape."""
    rng = np.random.default_rng(seed)
    N, H = int(rng.choice([2, 4, 8])), int(rng.integers(1, 4))
    C = H * N

    def size() -> int:
        return int(rng.choice([d for d in range(1, 3 * C) if d != C]))
    return Dims(V=size(), C=C, L=2, H=H, N=N, F=size(), Dw=size(), Da=size(), Dv=size(), Dg=size())


@pytest.mark.parametrize('seed', SEEDS)
def test_every_rule_reverses_exactly(seed):
    dims, rng = _dims(seed), np.random.default_rng(seed)
    for rule in RULES:
        if rule.fla is not None:
            canonical = dims.resolve(rule.shape)
            _roundtrip(rule.op, (canonical,), rng)
            assert rule.reverse.shape(rule.op.shape(canonical)) == canonical, rule.blinkdl


def _canonical(side: Side, dims: Dims) -> dict[str, tuple[int, ...]]:
    """Every canonical name of `side` with its shape there (RWKV-LM's, or fla's after the rule's op)."""
    out = {}
    for name, rule, layer in expected_blinkdl(dims.L) + expected_blinkdl(dims.L, target=Target.STATE):
        canonical = dims.resolve(rule.shape)
        if side is Side.BLINKDL:
            out[name] = canonical
        elif rule.fla is not None:
            out[rule.names(layer)[1]] = rule.op.shape(canonical)
    return out


def _groups(pattern: str) -> list[str]:
    """The source of each capturing group of `pattern`, in group-number order (the order of the opening parens)."""
    starts, groups, escaped, in_class = [], {}, False, False
    for i, ch in enumerate(pattern):
        if escaped:
            escaped = False
        elif ch == '\\':
            escaped = True
        elif in_class:
            in_class = ch != ']'
        elif ch == '[':
            in_class = True
        elif ch == '(':
            starts.append((i, not pattern.startswith('(?', i)))
        elif ch == ')':
            start, capturing = starts.pop()
            if capturing:
                groups[start] = pattern[start + 1:i]
    return [groups[k] for k in sorted(groups)]


def _targets(rename, template: str, names: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    """The canonical names a rename's target template can produce (`\\N` standing for what group N matches)."""
    groups = _groups(rename.pattern)
    pieces = re.split(r'\\(\d)', template)
    pattern = ''.join(re.escape(p) if k % 2 == 0 else f'(?:{groups[int(p) - 1]})' for k, p in enumerate(pieces))
    return sorted((n, s) for n, s in names.items() if re.fullmatch(pattern, n))


RENAMES = [pytest.param(x, r, id=f'{x.name}: {r.pattern}') for x in LAYOUTS for r in x.renames if r.to is not None]


@pytest.mark.parametrize('seed', SEEDS)
@pytest.mark.parametrize('layout, rename', RENAMES)
def test_every_rename_of_every_layout_gives_canonical_tensors_exactly(layout, rename, seed):
    # no rename needs a reverse; the built-in ops all have one, which builds the stored shape and checks every byte
    dims, rng = _dims(seed), np.random.default_rng(seed)
    names = _canonical(layout.side, dims)
    templates = rename.to if isinstance(rename.to, tuple) else (rename.to,)
    found = [_targets(rename, t, names) for t in templates]
    assert all(found), f'{rename.pattern} -> {rename.to}: no canonical {layout.side.name} name'
    if len(templates) > 1:  # one stored tensor becomes several: the first block's set
        shapes = tuple(f[0][1] for f in found)
        stored = rename.op.reverse.shapes(shapes)
        assert rename.op.shapes(stored) == shapes and all(rename.op.fits(s) for s in stored)
        _roundtrip(rename.op, stored, rng)
        return
    for _, canonical in found[0]:
        if isinstance(rename.op, Orient):  # either stored orientation is brought to RWKV-LM's
            for stored in (canonical, canonical[::-1]):
                op = rename.op.choose(stored, dims.C)
                assert op is not None and op.shape(stored) == canonical, (stored, canonical)
                _roundtrip(op, (stored,), rng)
        else:
            stored = rename.op.reverse.shape(canonical)
            assert rename.op.shape(stored) == canonical
            _roundtrip(rename.op, (stored,), rng)
