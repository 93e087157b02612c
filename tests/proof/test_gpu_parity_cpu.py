"""benchmarks/gpu_parity.py, the one GPU parity command, proven on its CPU path (Triton's interpreter).

The script runs in a subprocess, so its interpreter settings and its patched autotuner never reach this process.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'benchmarks' / 'gpu_parity.py'


def load_script():
    spec = importlib.util.spec_from_file_location('gpu_parity', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)  # the script puts benchmarks/ on sys.path: not for the rest of the session
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
        sys.path[:] = saved_path
    return module


def run_script(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / 'out'
    proc = subprocess.run([sys.executable, str(SCRIPT), '--cpu', '--out', str(out), '--workdir', str(tmp_path / 'work'),
                           *extra], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert (out / 'gpu_parity.json').exists(), proc.stdout + proc.stderr
    return proc, json.loads((out / 'gpu_parity.json').read_text())


def test_cpu_matrix_has_every_planned_cell_and_all_pass(tmp_path):
    proc, report = run_script(tmp_path)
    log = proc.stdout + (tmp_path / 'out' / 'gpu_parity_workers.log').read_text()
    assert proc.returncode == 0, log
    cases, precisions = load_script().make_plan(cpu=True)
    expected = {(c.name, lay.name, k, p) for c in cases for lay in c.layouts for k in lay.kernels for p in precisions}
    got = {(c['case'], c['layout'], c['kernel'], c['precision']) for c in report['cells']}
    assert got == expected
    assert {c['kind'] for c in report['cells']} == {'tokens', 'leftpad', 'decode', 'varlen'}
    for cell in report['cells']:
        assert cell['status'] == 'PASS', cell
        # float32 with IEEE arithmetic: the conversion-exactness bar, and about the reference's own error
        assert cell['fla_error'] <= 1e-4 and cell['ratio'] < 3, cell
    assert report['passed'] and report['mode'] == 'cpu'
    table = (tmp_path / 'out' / 'gpu_parity.md').read_text()
    assert '| C128 L2 N64 V256 | decode |' in table and 'cells pass' in table


def test_swapped_k_k_and_k_a_fail_the_verdict(tmp_path):
    proc, report = run_script(tmp_path, '--corrupt', 'swap-kk-ka', '--only', 'T9')
    assert proc.returncode == 1, proc.stdout
    assert report['cells'] and not report['passed']
    for cell in report['cells']:
        # a wrong tensor is orders of magnitude above what float32 rounding explains
        assert cell['status'] == 'FAIL' and cell['ratio'] > 1e3, cell
    assert 'FAIL' in proc.stdout


def test_gpu_plan_is_the_issues_matrix():
    cases, precisions = load_script().make_plan(cpu=False)
    assert precisions == ('float32', 'tf32', 'bfloat16', 'float16')
    small = [c for c in cases if c.kind == 'goose']
    assert sorted(c.head_size for c in small) == [32, 64, 128]
    for c in small:
        tokens = [lay for lay in c.layouts if lay.kind == 'tokens']
        assert [lay.lengths[0] for lay in tokens] == [1, 63, 64, 257, 1024, 4096]
        assert all(lay.kernels == ('chunk', 'fused_recurrent') for lay in tokens)
        assert {lay.kind for lay in c.layouts} == {'tokens', 'leftpad', 'decode', 'varlen'}
    released = {c.size: c.layouts for c in cases if c.kind == 'released'}
    assert set(released) == {'0.1B', '1.5B'}
    assert all(lay.lengths == (2048,) for layouts in released.values() for lay in layouts)


class _FakeAutotuner:
    """Just what keep_first_fitting_config touches: configs, prune_configs and triton's do_bench slot."""

    def __init__(self, configs):
        self.configs, self._do_bench = configs, None

    def prune_configs(self, meta):
        return self.configs

    @property
    def do_bench(self):
        return self._do_bench


def test_autotuner_keeps_the_first_config_that_fits_untimed(monkeypatch):
    from triton.runtime import autotuner

    launched = []

    def triton_like_bench(self, *args, config, **meta):  # what Autotuner._bench does, minus the kernel
        def kernel_call():
            launched.append(config)
            if config == 'too big':
                raise MemoryError('out of shared memory')
        try:
            return self.do_bench(kernel_call, quantiles=(0.5, 0.2, 0.8))
        except MemoryError:
            return [math.inf] * 3

    monkeypatch.setattr(autotuner.Autotuner, '_bench', triton_like_bench)
    load_script().keep_first_fitting_config()  # patches the class; monkeypatch restores it afterwards
    tuner = _FakeAutotuner(['too big', 'fits', 'never compiled'])
    for _ in range(2):  # a second tuning round (another key) starts over
        timings = {c: autotuner.Autotuner._bench(tuner, config=c) for c in tuner.configs}
        assert min(timings, key=timings.get) == 'fits'
    assert launched == ['too big', 'fits'] * 2
    assert tuner.do_bench is None  # triton's own benchmarker is back in its slot



class _RecordingModel:
    """Stands in for RWKV7ForCausalLM: logits[b, t] = the token id there, and every call recorded."""

    def __init__(self, vocab=8):
        import types
        self.config, self.calls = types.SimpleNamespace(vocab_size=vocab), []

    def __call__(self, input_ids, past_key_values=None, use_cache=True, return_dict=False, attention_mask=None,
                 cu_seqlens=None):
        import torch
        self.calls.append({'T': input_ids.shape[1], 'grad': torch.is_grad_enabled(), 'cached': past_key_values,
                           'mask': None if attention_mask is None else attention_mask.shape[1],
                           'packed': cu_seqlens is not None})
        logits = input_ids.double().unsqueeze(-1).expand(*input_ids.shape, self.config.vocab_size)
        return logits, (past_key_values or 0) + input_ids.shape[1]


@pytest.mark.parametrize('kind, lengths, batch', [
    pytest.param('tokens', (63,), 2, id='T63'),
    pytest.param('tokens', (130,), 2, id='T130'),
    pytest.param('leftpad', (130, 70, 5), 1, id='leftpad'),
    pytest.param('decode', (100, 3), 2, id='decode'),
    pytest.param('varlen', (30, 1, 17, 9), 1, id='varlen57'),
])
@pytest.mark.parametrize('kernel', ['chunk', 'fused_recurrent'])
def test_layouts_reach_the_kernel_they_name(kind, lengths, batch, kernel):
    """fla picks chunk for calls of >= 64 tokens or with grad, recurrent otherwise: each cell must make such calls,
    and both sides must compare the same positions."""
    import torch
    script = load_script()
    layout = script.Layout('x', kind, lengths, batch)
    case = script.Case('N64', 'goose', vocab=8)
    inputs = script.layout_inputs(case, layout, 8)
    model = _RecordingModel()
    got = script.fla_layout_logits(model, layout, inputs, kernel, torch.device('cpu'))

    class Echo:  # the reference side: logits = token ids, run sequence by sequence
        vocab = 8

        def zero_state(self, batch):
            from fla.rwkv7_convert.proof.reference import RWKV7State
            return RWKV7State([], [], [])

        def __call__(self, ids, state):
            return ids.double().unsqueeze(-1).expand(*ids.shape, 8), state

    want = script.reference_logits(Echo(), layout, inputs, torch.device('cpu'))
    assert got.shape == (layout.tokens, 8) and torch.equal(got, want)
    prefill = [c for c in model.calls if c['T'] > 1 or kind != 'decode']
    for call in (model.calls if kind != 'decode' else prefill[:1] if kernel == 'chunk' else prefill):
        assert (call['T'] >= 64 or call['grad']) == (kernel == 'chunk'), model.calls
    if kind == 'leftpad':  # fla reads the last len(piece) mask columns: each call gets the mask up to its end
        ends = [c['mask'] for c in model.calls]
        assert ends[-1] == max(lengths) and all(e is not None for e in ends)
    if kernel == 'fused_recurrent' and kind != 'varlen':
        assert all(c['T'] <= 63 for c in model.calls)


_REAL_AUTOTUNER = r'''
import os, sys
os.environ['TRITON_INTERPRET'] = '1'
sys.path.insert(0, sys.argv[1])
import gpu_parity  # imports no triton at module level
gpu_parity.keep_first_fitting_config()
import torch
import triton
import triton.language as tl

@triton.autotune(configs=[triton.Config({'BLOCK': b}) for b in (32, 64, 128)], key=['n'])
@triton.jit
def double(x, y, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + i, 2 * tl.load(x + i, mask=i < n), mask=i < n)

x = torch.arange(100, dtype=torch.float32)
y = torch.empty_like(x)
double[lambda meta: (triton.cdiv(100, meta['BLOCK']),)](x, y, 100)
assert torch.equal(y, 2 * x)
print(double.best_config.kwargs['BLOCK'], sorted(t[0] for t in double.configs_timings.values()))
'''


def test_first_fitting_config_with_triton_s_own_autotuner():
    """The patch against the installed Triton's real Autotuner (interpreted, in a subprocess): the first config is
    launched once and kept, the others are never compiled."""
    proc = subprocess.run([sys.executable, '-c', _REAL_AUTOTUNER, str(REPO / 'benchmarks')], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split('\n')[0] == '32 [1.0, 2.0, 2.0]', proc.stdout
