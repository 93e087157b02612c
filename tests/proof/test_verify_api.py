"""`verify` as a library, called the way a test in fla's own suite would: a tiny RWKV-LM checkpoint from the test
factory, converted, then `verify(source, model_dir, device=...)` and assertions on the Report. On the CPU it runs
through Triton's interpreter (conftest.py sets it up where there is no CUDA); the CUDA variants carry the `gpu`
marker and are skipped without a device.
"""

from __future__ import annotations

import os

import pytest
import torch
from rwkv7_factory import Goose
from safetensors.torch import load_file, save_file

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.proof.backends import BACKENDS, CpuInterpreted, backend_for
from fla.rwkv7_convert.proof.report import Report
from fla.rwkv7_convert.proof.verify import verify

SHAPE = Goose(vocab=96, hidden=128, layers=2, head_size=64, w_rank=16, a_rank=16, v_rank=16, g_rank=32)
interpreted = pytest.mark.skipif(os.environ.get('TRITON_INTERPRET') != '1',
                                 reason="the CPU backend runs fla through Triton's interpreter, chosen before Python "
                                        'imports triton (conftest.py does so only where there is no CUDA)')


@pytest.fixture(scope='module')
def converted(tmp_path_factory, converted_model):
    tmp = tmp_path_factory.mktemp('verify-api')
    source, out = converted_model(SHAPE, torch.float32, seed=3).source, converted_model(SHAPE, torch.float32, seed=3).dir
    # the same directory with two same-shaped tensors swapped in layer 1: loads, and is the wrong model
    bad = tmp / 'swapped'
    bad.mkdir()
    for f in out.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    w = load_file(bad / 'model.safetensors')
    a, b = 'model.layers.1.attn.k_k', 'model.layers.1.attn.k_a'
    w[a], w[b] = w[b].clone(), w[a].clone()
    save_file(w, bad / 'model.safetensors', metadata={'format': 'pt'})
    return source, out, bad


def check_report(report: Report, backend: str, precision: str, tokens: int) -> None:
    """The exact proof passed, and the named kernels ran beside it in `precision`, within their calibration."""
    assert isinstance(report, Report)
    assert report.passed, report.render()
    assert report.exact.backend == 'fla modules in float64, torch wkv' and report.exact.logits.rel_rms <= 1e-12
    k = report.kernels
    assert k.backend == backend and f"kernels' accuracy (not the conversion's verdict): {backend}" in report.render()
    assert k.precision == precision and report.tokens == tokens and k.within, report.render()
    assert [s.key for s in k.steps][:2] == ['ln0', 'blocks.0.att'] and report.first_divergence is None


@interpreted
def test_verify_on_the_cpu(converted):
    source, out, _ = converted
    check_report(verify(source, out, device='cpu', tokens=20), 'fla Triton kernels, interpreted', 'float32', 20)


@interpreted
def test_a_wrong_tensor_fails_on_the_cpu(converted):
    source, _, bad = converted
    report = verify(source, bad, device='cpu', tokens=20)
    assert not report.passed and report.first_divergence == 'blocks.1.att', report.render()


@interpreted
def test_a_backend_instance_is_the_seam(converted):
    """A Backend subclass passed as `device` runs fla where its parent does and is named in the report."""
    class Named(CpuInterpreted):
        name = 'fla Triton kernels, interpreted (a subclass)'

    source, out, _ = converted
    check_report(verify(source, out, device=Named(), tokens=8), Named.name, 'float32', 8)


def test_the_command_line_offers_the_registered_backends():
    from fla.rwkv7_convert.cli.verify import build_verify_parser
    device = next(a for a in build_verify_parser()._actions if '--device' in a.option_strings)
    assert device.choices == ['auto', *BACKENDS] and list(BACKENDS) == ['cpu', 'cpu-torch', 'cuda']
    assert device.default == 'auto'
    assert all(b.name in device.help for b in BACKENDS.values())
    with pytest.raises(ConversionError, match=r"^--device: 'tpu' is not one of auto, cpu, cpu-torch, cuda$"):
        backend_for('tpu')


def test_the_torch_wkv_backend_passes_a_conversion_and_fails_a_broken_one_at_the_same_layer(converted):
    """cpu-torch: fla's modules with torch stand-ins for the kernels; the same verdicts as the interpreted kernels."""
    source, out, bad = converted
    report = verify(source, out, device='cpu-torch', tokens=20)
    check_report(report, 'fla modules, torch wkv', 'float32', 20)
    report = verify(source, bad, device='cpu-torch', tokens=20)
    assert not report.passed and report.first_divergence == 'blocks.1.att', report.render()


def test_auto_is_the_exact_proof_alone_on_the_cpu():
    from types import SimpleNamespace

    from fla.rwkv7_convert.proof.backends import AUTO, EXACT
    small, big = SimpleNamespace(L=2, C=64, N=32), SimpleNamespace(L=32, C=4096, N=64)
    assert backend_for('auto') is AUTO
    if torch.cuda.is_available():
        assert AUTO.choose(small, None) is BACKENDS['cuda']
        return
    assert AUTO.choose(small, None) is EXACT and AUTO.choose(big, 64) is EXACT and not EXACT.kernels
    with pytest.raises(ConversionError, match='--dtype bfloat16: the exact proof runs in float64'):
        AUTO.check('bfloat16', None, 8)


def test_the_default_needs_no_interpreter_and_reports_no_kernels(converted):
    source, out, bad = converted
    report = verify(source, out, tokens=12)
    assert report.passed and report.kernels is None and "kernels'" not in report.render(), report.render()
    report = verify(source, bad, tokens=12)
    assert not report.passed and report.first_divergence == 'blocks.1.att', report.render()


@pytest.mark.gpu
@pytest.mark.parametrize('dtype, tokens, precision', [
    pytest.param('float32', 20, 'float32', id='fp32-recurrent'),
    pytest.param('float32', 100, 'tf32', id='fp32-chunk-tf32'),
    pytest.param('bfloat16', 100, 'bfloat16', id='bf16-chunk'),
])
def test_verify_on_cuda(converted, monkeypatch, dtype, tokens, precision):
    monkeypatch.delenv('TRITON_F32_DEFAULT', raising=False)  # the default: TF32 dots in the chunk kernel
    source, out, _ = converted
    check_report(verify(source, out, device='cuda', dtype=dtype, tokens=tokens), 'fla Triton kernels, CUDA', precision,
                 tokens)


@pytest.mark.gpu
def test_a_wrong_tensor_fails_on_cuda(converted):
    source, _, bad = converted
    report = verify(source, bad, device='cuda', tokens=100)
    assert not report.passed and report.first_divergence == 'blocks.1.att', report.render()
