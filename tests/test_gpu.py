"""GPU parity matrix: fla's chunk and fused-recurrent kernels on converted models against the float64 reference.

Skipped where CUDA is absent (marker `gpu`). Cells: kernel path x dtype x head size x sequence length, plus left
padding through attention_mask and prefill-then-decode through the cache. Tolerances are verify.TOLERANCES: per
dtype, against float64, with their reasons written there. Run `python -m pytest tests/test_gpu.py -q -rA` on a
GPU machine and put the printed matrix in the README.
"""

from __future__ import annotations

import pytest
import torch
from rwkv7_factory import Goose, make_state_dict, save

from fla.rwkv7_convert.convert import convert_to_fla
from fla.rwkv7_convert.loading import load_fla_model
from fla.rwkv7_convert.reference import RWKV7Reference
from fla.rwkv7_convert.runtime import fla_logits
from fla.rwkv7_convert.verify import TOLERANCES, compare

pytestmark = pytest.mark.gpu

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


@pytest.fixture(scope='module', params=[64, 128], ids=['N64', 'N128'])
def converted(request, tmp_path_factory):
    head_size = request.param
    shape = Goose(vocab=1024, hidden=256, layers=3, head_size=head_size)
    sd = make_state_dict(shape, dtype=torch.float32, seed=1)
    tmp = tmp_path_factory.mktemp(f'gpu-N{head_size}')
    convert_to_fla(save(sd, tmp / 'm.pth'), tmp / 'out', tokenizer='none')
    return sd, shape, tmp / 'out', RWKV7Reference(sd, dtype=torch.float64)


def _check(got, want, dtype_name, cell):
    result = compare(got.double().cpu(), want)
    tol = TOLERANCES[dtype_name]
    print(f'\nGPU parity {cell}: max|d|={result.max_abs:.2e} rel={result.rel_rms:.2e} kl={result.kl:.2e} '
          f'top1={result.top1:.3f}')
    assert result.rel_rms <= tol.rel_rms and result.kl <= tol.kl and result.top1 >= tol.top1, (cell, result)


@pytest.mark.parametrize('dtype_name', list(DTYPES))
@pytest.mark.parametrize('path', ['chunk', 'fused_recurrent'])
@pytest.mark.parametrize('length', [1, 63, 64, 257, 1024, 4096])
def test_parity_matrix(converted, dtype_name, path, length):
    sd, shape, out, reference = converted
    model = load_fla_model(out, dtype=DTYPES[dtype_name], device='cuda')
    tokens = torch.randint(0, shape.vocab, (2, length), generator=torch.Generator().manual_seed(length))
    # fla takes the chunk kernel for calls of >= 64 tokens, the recurrent one below: choose by piece size
    piece = length if path == 'chunk' else 32
    if path == 'chunk' and length < 64:
        pytest.skip('fla uses its recurrent kernel below 64 tokens')
    got = fla_logits(model, tokens, piece=piece)
    want, _ = reference(tokens)
    _check(got, want, dtype_name, f'{path} {dtype_name} N{shape.head_size} T{length}')


@pytest.mark.parametrize('dtype_name', list(DTYPES))
def test_left_padding(converted, dtype_name):
    sd, shape, out, reference = converted
    model = load_fla_model(out, dtype=DTYPES[dtype_name], device='cuda')
    lengths = [200, 137]
    T = max(lengths)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        tokens[b, T - n:] = torch.randint(0, shape.vocab, (n,), generator=gen)
        mask[b, T - n:] = 1
    with torch.no_grad():
        got = model(input_ids=tokens.cuda(), attention_mask=mask.cuda()).logits
    for b, n in enumerate(lengths):
        want, _ = reference(tokens[b:b + 1, T - n:])
        _check(got[b:b + 1, T - n:], want, dtype_name, f'left-padding {dtype_name} N{shape.head_size} row{b}')


@pytest.mark.parametrize('dtype_name', list(DTYPES))
def test_prefill_then_decode_equals_one_pass(converted, dtype_name):
    sd, shape, out, reference = converted
    model = load_fla_model(out, dtype=DTYPES[dtype_name], device='cuda')
    tokens = torch.randint(0, shape.vocab, (1, 300), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, cache = model(input_ids=tokens[:, :256].cuda(), use_cache=True, return_dict=False)[:2]
        steps = [logits]
        for t in range(256, 300):
            logits, cache = model(input_ids=tokens[:, t:t + 1].cuda(), past_key_values=cache, use_cache=True,
                                  return_dict=False)[:2]
            steps.append(logits)
    got = torch.cat(steps, dim=1)
    want, _ = reference(tokens)
    _check(got, want, dtype_name, f'prefill256+decode44 {dtype_name} N{shape.head_size}')
