"""Our loader turns the CPU runs of fla's RWKV-7 that would fail obscurely or give NaN into one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rwkv7_factory import Goose

from fla.rwkv7_convert.runtime.cpu_guard import CpuRunError, cpu_problem

OK = dict(dtype=torch.float32, tokens=63, interpreted=True, training=False, grad=False)


@pytest.mark.parametrize('change, message', [
    pytest.param({}, None, id='fp32-63-tokens'),
    pytest.param({'dtype': torch.float16}, None, id='fp16'),  # numpy has float16: measured finite
    pytest.param({'interpreted': False}, "device='cpu-torch') (torch stand-ins for the kernels, no environment variables), "
                 'or set TRITON_INTERPRET=1', id='no-interpreter'),
    pytest.param({'dtype': torch.bfloat16}, 'NaN logits in bfloat16', id='bf16'),
    pytest.param({'tokens': 64}, 'at most 63 tokens per call (this call: 64 tokens)', id='64-tokens'),
    pytest.param({'training': True}, 'training mode', id='training'),
    pytest.param({'grad': True}, 'gradients on', id='grad'),
])
def test_cpu_problem(change, message):
    problem = cpu_problem(**{**OK, **change})
    assert problem is None if message is None else message in problem and '"Run a converted model" in' in problem
    assert message is None or '## Run a converted model' in (Path(__file__).resolve().parents[2] / 'README.md').read_text()


cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason='checks runs on a machine without CUDA')


@pytest.fixture(scope='module')
def model_dir(converted_model):
    return converted_model(Goose(hidden=64, head_size=32, layers=2), torch.bfloat16, seed=7).dir


@cpu_only
def test_default_bf16_load_refuses_to_run_instead_of_giving_nan(model_dir):
    from fla.rwkv7_convert.runtime.loading import load_fla_model

    model = load_fla_model(model_dir)  # the stored dtype, as from_pretrained gives it
    assert model.dtype == torch.bfloat16
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad(), pytest.raises(CpuRunError, match='bfloat16 on the CPU'):
        model(input_ids=ids)
    with pytest.raises(CpuRunError, match='bfloat16 on the CPU'):
        model.generate(ids, max_new_tokens=2, do_sample=False)
    model.float()  # the fix the error names
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


@cpu_only
def test_float32_generate_works_and_long_calls_are_refused(model_dir):
    from fla.rwkv7_convert.runtime.loading import load_fla_model

    model = load_fla_model(model_dir, dtype=torch.float32)
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)
    with torch.no_grad(), pytest.raises(CpuRunError, match='this call: 64 tokens'):
        model(input_ids=torch.zeros(1, 64, dtype=torch.long))
    with pytest.raises(CpuRunError, match='gradients on'):
        model(input_ids=torch.tensor([[1, 2]]))


@cpu_only
def test_without_the_interpreter_the_error_says_how_to_turn_it_on(model_dir, monkeypatch):
    from fla.rwkv7_convert.runtime.loading import load_fla_model

    model = load_fla_model(model_dir, dtype=torch.float32)
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with torch.no_grad(), pytest.raises(CpuRunError, match='TRITON_INTERPRET=1'):
        model(input_ids=torch.tensor([[1]]))
