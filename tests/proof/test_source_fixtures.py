"""Known answers: every layout's tiny checkpoint (tests/fixtures/layouts, written by tests/fixtures/
make_layout_fixtures.py) read through the reference's own reader (proof/source_reader.py, no mapping/), run by the
float64 reference and compared with the logits that layout's own code printed (rc4a demo names: RWKV-LM's
rwkv_v7_demo.py at the rc4a release) or, where that code cannot run here, BlinkDL's `rwkv` package on the
canonical equivalent (each fixture's JSON says which)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rwkv7_factory import LAYOUT_WRITERS

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.proof import source_layouts
from fla.rwkv7_convert.proof.reference import RWKV7Reference
from fla.rwkv7_convert.proof.source_reader import load_source_weights

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures' / 'layouts'
# float32 figures against the float64 reference: measured max |Δ| 1.9e-6 on logits of magnitude ~5
TOLERANCE = 1e-5


def fixtures() -> list:
    return [pytest.param(p, id=p.stem) for p in sorted(FIXTURES.glob('*.json'))]


def reference_logits(record: dict, path: Path) -> torch.Tensor:
    weights = load_source_weights(path, record['head_size'])
    ref = RWKV7Reference(weights, dtype=torch.float64, head_size=record['head_size'])
    return ref(torch.tensor([record['tokens']]))[0][0]


def test_every_layout_has_a_fixture():
    have = {p.stem for p in FIXTURES.glob('*.json')}
    assert set(LAYOUT_WRITERS) <= have, f'no known-answer fixture for {sorted(set(LAYOUT_WRITERS) - have)}'


@pytest.mark.parametrize('meta', fixtures())
def test_the_reference_reads_each_layout_to_its_known_answer(meta):
    record = json.loads(meta.read_text())
    got = reference_logits(record, FIXTURES / record['file'])
    for key in ('logits', 'own_code_logits'):
        if key in record:
            want = torch.tensor(record[key], dtype=torch.float64)
            assert got.shape == want.shape
            gap = (got - want).abs().max().item()
            assert gap <= TOLERANCE, f'{meta.stem}: max |Δ| {gap:.3g} against {key} ({record["by"]["code"][:60]}...)'


def test_the_demo_figures_come_from_the_demo_itself():
    record = json.loads((FIXTURES / 'rc4a-demo.json').read_text())
    assert 'rwkv_v7_demo.py at 218a94cf' in record['by']['own_code'] and len(record['own_code_logits']) == 12


@pytest.mark.parametrize(('fixture', 'table', 'a', 'b'), [
    pytest.param('rc4a-train', 'RC4A_TRAINING', 'att.time_decay', 'att.time_aaaaa', id='rc4a-decay-aaaaa'),
    pytest.param('rc4a-train', 'RC4A_TRAINING', 'att.time_maa_r', 'att.time_maa_k', id='rc4a-maa-r-k'),
    pytest.param('rc4a-demo', 'RC4A_DEMO', 'att.kk_s', 'att.ka_s', id='rc4a-demo-kk-ka'),
])
def test_a_slip_in_the_readers_own_names_misses_the_known_answer(monkeypatch, fixture, table, a, b):
    """The fixtures can fail: the same swaps that fooled verify through the table, made in the reader's own names."""
    names = dict(getattr(source_layouts, table))
    names[a], names[b] = names[b], names[a]
    monkeypatch.setattr(source_layouts, table, names)
    record = json.loads((FIXTURES / f'{fixture}.json').read_text())
    got = reference_logits(record, FIXTURES / record['file'])
    assert (got - torch.tensor(record['logits'], dtype=torch.float64)).abs().max().item() > 100 * TOLERANCE


def test_a_file_with_a_tensor_the_reader_does_not_know_is_refused(tmp_path):
    sd = torch.load(FIXTURES / 'canonical.pth', weights_only=True)
    sd['blocks.0.att.extra'] = torch.zeros(3)
    torch.save(sd, tmp_path / 'extra.pth')
    with pytest.raises(ConversionError, match=r"extra\.pth: the reference's reader: blocks\.0\.att\.extra is no RWKV-7"):
        load_source_weights(tmp_path / 'extra.pth')
