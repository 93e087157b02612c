"""The torch-free casts agree with torch bit for bit, including rounding ties, subnormals, Inf and NaN."""

import numpy as np
import pytest
import torch

from fla.rwkv7_convert.formats.dtypes import cast, is_finite, parse_precision

TORCH = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16}


def carrier(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


@pytest.fixture(scope='module')
def values() -> torch.Tensor:
    x = torch.randn(200_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x * torch.logspace(-45, 40, x.numel(), dtype=torch.float64)  # subnormals to overflow
    special = torch.tensor([0.0, -0.0, float('inf'), float('-inf'), float('nan'), 1 + 2**-8, 1 + 3 * 2**-9, 65504, 65520],
                           dtype=torch.float64)
    return torch.cat([special, x])


@pytest.mark.parametrize('src', list(TORCH))
@pytest.mark.parametrize('dst', list(TORCH))
def test_cast_matches_torch(values, src, dst):
    t = values.to(TORCH[src])
    want = carrier(t.to(TORCH[dst]))
    got = cast(carrier(t), src, dst)
    nan = np.isnan(cast(want, dst, 'F32'))
    assert np.array_equal(got[~nan], want[~nan])
    assert np.isnan(cast(got[nan], dst, 'F32')).all()


@pytest.mark.parametrize('dtype', list(TORCH))
def test_is_finite(dtype):
    t = torch.ones(1000, dtype=TORCH[dtype])
    assert is_finite(carrier(t), dtype)
    for bad in (float('nan'), float('inf'), float('-inf')):
        u = t.clone()
        u[-1] = bad
        assert not is_finite(carrier(u), dtype)


def test_parse_precision():
    assert parse_precision(None) is None and parse_precision('keep') is None
    assert [parse_precision(p) for p in ('fp32', 'float32', 'bf16', 'bfloat16', 'fp16', 'float16')] == \
        ['F32', 'F32', 'BF16', 'BF16', 'F16', 'F16']
    with pytest.raises(ValueError, match='unknown precision'):
        parse_precision('int4')
