"""The calibrated verdict: bounds, ratio, and the TF32 switch that must leave torch as it found it."""

import math

import pytest
import torch

from fla.rwkv7_convert.proof.verdict import CALIBRATION, PRECISIONS, judge, matmul_precision, rel_rms, storage_dtype


@pytest.mark.parametrize('precision', [pytest.param(p, id=p) for p in PRECISIONS])
def test_bound_is_factor_times_reference_error_plus_floor(precision):
    c = CALIBRATION[precision]
    ok = judge(c.factor * 1e-3 + c.floor, 1e-3, precision)
    assert ok.passed and ok.bound == pytest.approx(c.factor * 1e-3 + c.floor)
    bad = judge(ok.bound * 1.01, 1e-3, precision)
    assert not bad.passed
    assert bad.ratio == pytest.approx(bad.fla_error / 1e-3)


def test_nan_never_passes_and_unknown_precision_is_refused():
    assert not judge(math.nan, 1e-3, 'float32').passed
    with pytest.raises(ValueError, match='not one of'):
        judge(1e-6, 1e-6, 'float8')


def test_rel_rms_and_storage_dtype():
    want = torch.tensor([3.0, 4.0])
    assert rel_rms(want, want) == 0
    assert rel_rms(want * 1.5, want) == pytest.approx(0.5)
    assert storage_dtype('tf32') is torch.float32 and storage_dtype('bfloat16') is torch.bfloat16


def test_matmul_precision_restores_torch_settings():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with matmul_precision('tf32'):
        assert torch.backends.cuda.matmul.allow_tf32
    with pytest.raises(RuntimeError):
        with matmul_precision('float32'):
            assert not torch.backends.cuda.matmul.allow_tf32
            raise RuntimeError
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
