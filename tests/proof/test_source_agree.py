"""SourceFile reads the source twice, through the converter's plan and through the reference's own reader, and
refuses before any compute when the two readings disagree on a stored key, an op or a shape (proof/source_agree.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.readers import open_checkpoint
from fla.rwkv7_convert.mapping import engine
from fla.rwkv7_convert.mapping.ops import IDENTITY, TRANSPOSE
from fla.rwkv7_convert.mapping.plan import make_plan
from fla.rwkv7_convert.mapping.schema import Rename
from fla.rwkv7_convert.proof.files import SourceFile
from fla.rwkv7_convert.proof.source_agree import disagreements, tagged_tree, trace
from fla.rwkv7_convert.proof.source_reader import read_tree

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures' / 'layouts'
FILES = {'rc4a-train': 'rc4a.pth', 'rc4a-demo': 'rc4a-demo.pth', 'st': 'model.st', 'hf-transformers-rwkv': 'hf-trwkv',
         'flat-r_k': 'flat-r_k.pth', 'lightning': 'last.ckpt'}


@pytest.mark.parametrize('meta', [pytest.param(p, id=p.stem) for p in sorted(FIXTURES.glob('*.json'))])
def test_both_readings_agree_on_every_layout(meta):
    import json
    record = json.loads(meta.read_text())
    with SourceFile(FIXTURES / record['file'], record['head_size']) as src:
        assert set(src.reading.tensors) == set(src.entries)


def _slipped(name: str, first: tuple) -> tuple:
    """engine.LAYOUTS with renames `first` tried before layout `name`'s own."""
    return tuple(dataclasses.replace(x, renames=first + x.renames) if x.name == name else x for x in engine.LAYOUTS)


@pytest.mark.parametrize(('fixture', 'layout', 'a', 'b'), [
    pytest.param('rc4a-demo', 'rc4a demo names', ('kk_s', 'k_a'), ('ka_s', 'k_k'), id='demo-kk-ka'),
    pytest.param('rc4a-train', 'rc4a training names', ('time_decay', 'a0'), ('time_aaaaa', 'w0'), id='train-decay'),
    pytest.param('rc4a-train', 'rc4a training names', ('time_maa_r', 'x_k'), ('time_maa_k', 'x_r'), id='train-maa'),
])
def test_a_slipped_table_is_refused_naming_the_tensor_and_both_origins(monkeypatch, fixture, layout, a, b):
    first = tuple(Rename(rf'blocks\.(\d+)\.att\.{s}', rf'blocks.\1.att.{t}') for s, t in (a, b))
    monkeypatch.setattr(engine, 'LAYOUTS', _slipped(layout, first))
    path = FIXTURES / FILES[fixture]
    with pytest.raises(ConversionError) as e:
        SourceFile(path)
    line = str(e.value)
    assert '\n' not in line and line.startswith(str(path))
    # the table feeds a[0] into a[1] (and b[0] into b[1]); the reader's a[1] is b[0]'s original: whichever comes first
    named = [f"blocks.0.att.{x[1]}: the converter's table reads 'blocks.0.att.{x[0]}' as stored as [1, 1, 8], the "
             f"reference's reader 'blocks.0.att.{y[0]}' as stored as [1, 1, 8] (and 3 more)" for x, y in ((a, b), (b, a))]
    assert any(n in line for n in named), line


def test_an_op_the_readings_disagree_on_is_named():
    with open_checkpoint(FIXTURES / 'canonical.pth') as ckpt:
        plan = make_plan(tagged_tree(ckpt.tree), 'canonical.pth', drop_state=True)
        reading = read_tree(ckpt.tree, 'canonical.pth')
    assert disagreements(plan, reading) == []
    i = next(j for j, e in enumerate(plan.entries) if e.blinkdl == 'blocks.1.att.g1')
    e = plan.entries[i]
    turned = engine.with_op(e.source, e.source.name, TRANSPOSE)
    plan.entries[i] = dataclasses.replace(e, source=turned)
    assert trace(turned) == (('blocks.1.att.g1',), 'transposed')
    assert trace(engine.with_op(turned, 'x', IDENTITY)) == (('blocks.1.att.g1',), 'transposed')
    assert disagreements(plan, reading) == [
        "blocks.1.att.g1: the converter's table reads 'blocks.1.att.g1' transposed as [8, 2], the reference's reader "
        "'blocks.1.att.g1' as stored as [8, 2]"]


def test_a_size_the_readings_disagree_on_is_named():
    with open_checkpoint(FIXTURES / 'canonical.pth') as ckpt:
        plan = make_plan(tagged_tree(ckpt.tree), 'canonical.pth', drop_state=True)
        reading = read_tree(ckpt.tree, 'canonical.pth')
    reading.dims['F'] += 1
    assert disagreements(plan, reading) == ["size F: the converter's table reads 32, the reference's reader 33"]
