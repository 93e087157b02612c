"""proof/variant.py: which function a converted directory computes, every way it differs from BlinkDL's named by its
config key, and what no conversion writes; then verify on directories that differ from BlinkDL's function on purpose
(fuse_norm false, --precision bf16): PASS, with the difference measured and named, never called broken."""

from __future__ import annotations

import json

import pytest
import torch
from rwkv7_factory import Goose, make_state_dict, save

from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.proof.variant import (
    BLINKDL,
    config_problems,
    converted_norm_eps,
    differences,
    fla_variant,
    narrowed,
    storage_difference,
)
from fla.rwkv7_convert.proof.verify import verify


@pytest.mark.parametrize(('fuse', 'N', 'keys'), [
    pytest.param(True, 64, ['fuse_norm'], id='fused-N64'),
    pytest.param(False, 64, [], id='unfused-N64-is-blinkdl'),
    pytest.param(True, 32, ['fuse_norm', 'norm_eps'], id='fused-N32'),
    pytest.param(False, 128, ['norm_eps'], id='unfused-N128'),
])
def test_each_difference_is_named_by_its_key(fuse, N, keys):
    variant = fla_variant({'fuse_norm': fuse}, N)
    assert variant.ln_x_eps == pytest.approx(64e-5) and variant.norm_eps == pytest.approx(64e-5 / N)
    found = differences(variant, N)
    assert [d.key for d in found] == keys
    assert all(d.alternative and d.fla != d.blinkdl for d in found)
    assert (variant == BLINKDL) == (not keys) or N != 64


def test_fla_default_fuse_norm_is_the_fused_l2_norm():
    assert fla_variant({}, 64).l2_eps == 1e-6 and fla_variant({'fuse_norm': False}, 64).l2_eps is None


@pytest.mark.parametrize(('config', 'N', 'bad'), [
    pytest.param({'norm_eps': 1e-5}, 64, False, id='blinkdl-N64'),
    pytest.param({}, 64, False, id='fla-default-is-N64s'),
    pytest.param({'norm_eps': 2e-5}, 32, False, id='converter-N32'),
    pytest.param({'norm_eps': 1e-5}, 32, True, id='N64-eps-at-N32'),
    pytest.param({'norm_eps': 1e-2}, 64, True, id='edited'),
    pytest.param({'norm_eps': '1e-5'}, 64, True, id='a-string'),
    pytest.param({'norm_eps': True}, 64, True, id='a-bool'),
])
def test_config_problems_are_the_eps_no_conversion_writes(config, N, bad):
    problems = config_problems(config, N)
    assert bool(problems) == bad
    if bad:
        assert problems[0].startswith('config.json norm_eps = ') and f'{converted_norm_eps(N):.6g}' in problems[0]


def test_narrowed_is_fewer_bits_or_the_other_16_bit_format():
    got = narrowed([('a', 'F32', 'BF16'), ('b', 'BF16', 'F16'), ('c', 'BF16', 'F32'), ('d', 'F32', 'F32'),
                    ('e', 'F64', 'F32'), ('f', 'F16', 'F16')])
    assert got == {'a': 'BF16', 'b': 'F16', 'e': 'F32'}
    d = storage_difference(got, {'a': 'F32', 'b': 'BF16', 'e': 'F64'})
    assert d.key == 'precision' and '3 tensors' in d.fla and '--precision' in d.render()
    assert storage_difference({}, {}) is None


SHAPE = Goose(vocab=96, hidden=128, layers=2, head_size=64, w_rank=16, a_rank=16, v_rank=16, g_rank=32)


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    return save(make_state_dict(SHAPE, dtype=torch.float32, seed=11), tmp_path_factory.mktemp('variant') / 'm.pth')


def test_unfused_norms_are_blinkdls_function_exactly(source, tmp_path):
    convert_to_fla(source, tmp_path / 'out', tokenizer='none')
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    config['fuse_norm'] = False
    (tmp_path / 'out' / 'config.json').write_text(json.dumps(config))
    report = verify(source, tmp_path / 'out', tokens=16)
    assert report.passed and report.exact.formula is None and report.exact.differences == [], report.render()
    assert report.verdict_line().endswith("fla's function is BlinkDL's") and report.exact.logits.rel_rms < 1e-13


def test_a_precision_conversion_passes_with_its_rounding_named(source, tmp_path):
    convert_to_fla(source, tmp_path / 'bf16', tokenizer='none', precision='bf16')
    report = verify(source, tmp_path / 'bf16', tokens=16)
    assert report.passed and report.exact.logits.rel_rms < 1e-13, report.render()
    assert sorted(d.key for d in report.exact.differences) == ['fuse_norm', 'precision']
    assert 1e-5 < report.exact.formula.rel_rms < 1e-1  # bf16 rounding of the weights, measured
    assert 'stored weights: fla bfloat16' in report.render() and 'precision)' in report.verdict_line()
