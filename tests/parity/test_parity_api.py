"""The GPU parity engine as a library (fla.rwkv7_convert.parity.matrix): the plan, one cell through `run_cell`, the
verdict on a row, the autotuner patch, and the layouts' calls into fla. On the CPU fla runs under the interpreter
conftest.py sets up; the CUDA test runs each precision in its own process (TRITON_F32_DEFAULT is per process)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from rwkv7_factory import Goose, make_state_dict, save

from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.parity import matrix as parity
from fla.rwkv7_convert.parity import process
from fla.rwkv7_convert.parity.matrix import Case, Layout, judge_row, make_plan, run_cell
from fla.rwkv7_convert.runtime.device import RECURRENT_MAX_TOKENS

REPO = Path(__file__).resolve().parents[2]


def converted(tmp_path: Path, shape: Goose | None = None) -> tuple[Path, Path]:
    """(BlinkDL file, converted directory) of a random float32 model."""
    source = save(make_state_dict(shape or Goose(), dtype=torch.float32, seed=5), tmp_path / 'model.pth')
    convert_to_fla(source, tmp_path / 'fla', tokenizer='none')
    return source, tmp_path / 'fla'


# ----------------------------------------------------------------------------------------------------- the plan

def test_gpu_plan_is_the_issues_matrix():
    cases, precisions = make_plan(cpu=False)
    assert precisions == ('float32', 'tf32', 'bfloat16', 'float16')
    small = [c for c in cases if c.kind == 'goose']
    assert sorted(c.head_size for c in small) == [32, 64, 128]
    for c in small:
        tokens = [lay for lay in c.layouts if lay.kind == 'tokens' and not lay.state]
        assert [lay.lengths[0] for lay in tokens] == [1, 63, 64, 257, 1024, 4096]
        assert all(lay.kernels == ('chunk', 'fused_recurrent') for lay in tokens)
        assert {lay.kind for lay in c.layouts} == {'tokens', 'leftpad', 'decode', 'varlen'}
        # a tuned initial state on both kernels: >= 64 tokens per chunk call, < 64 per recurrent piece
        assert {(lay.name, lay.kind, lay.lengths) for lay in c.layouts if lay.state} == {
            ('T257-state', 'tokens', (257,)), ('decode-state', 'decode', (256, 44))}
    released = {c.size: c for c in cases if c.kind == 'released'}
    assert {s: c.shape for s, c in released.items()} == {'0.1B': '0.1B (C768 L12 N64 V65536)',
                                                         '1.5B': '1.5B (C2048 L24 N64 V65536)'}
    assert all(lay.lengths == (2048,) for c in released.values() for lay in c.layouts)


def test_plan_round_trips_through_the_workers_json():
    cases = make_plan(cpu=False)[0] + make_plan(cpu=True)[0]
    assert [Case.from_dict(json.loads(json.dumps(asdict(c)))) for c in cases] == cases


def test_only_keeps_the_named_layouts():
    cases, _ = make_plan(cpu=False, quick=True, only='T64,decode')
    assert [c.name for c in cases] == ['N64', 'N32', 'N128']
    assert all([lay.name for lay in c.layouts] == ['T64', 'decode'] for c in cases)


# -------------------------------------------------------------------------------------------------- the verdict

def row(precision: str, fla_error: float, ref_error: float, **extra) -> dict:
    return {'case': 'm', 'layout': 'T9', 'kernel': 'chunk', 'precision': precision, 'fla_error': fla_error,
            'ref_error': ref_error, 'max_abs': 0.0, 'top1': 1.0, 'fla_s': 0.1, 'ref_s': 0.2, **extra}


@pytest.mark.parametrize('precision, fla_error, ref_error, status', [
    pytest.param('float32', 5e-7, 5e-7, 'PASS', id='float32-at-the-reference-s-error'),
    pytest.param('bfloat16', 4e-3, 2e-3, 'PASS', id='bf16-2x'),
    pytest.param('float32', 5e-2, 5e-7, 'FAIL', id='float32-a-wrong-tensor'),
    pytest.param('bfloat16', 8e-3, 2e-3, 'FAIL', id='bf16-4x'),
    # within 8x the reference's own float32 error, but above the IEEE exactness bar
    pytest.param('float32', 2e-4, 1e-4, 'FAIL', id='float32-above-the-ieee-bar'),
    pytest.param('tf32', 2e-4, 1e-4, 'PASS', id='tf32-has-no-ieee-bar'),
])
def test_judge_row(precision, fla_error, ref_error, status):
    cell = judge_row(row(precision, fla_error, ref_error))
    assert (cell.status, cell.passed) == (status, status == 'PASS'), cell
    assert cell.ratio == pytest.approx(fla_error / ref_error)
    assert (cell.why is not None) == (precision == 'float32' and fla_error > parity.IEEE_BAR)
    d = cell.as_dict()
    assert list(d)[-2:] == ['passed', 'status'] and 'error' not in d and d['fla_s'] == 0.1


def test_judge_row_of_a_failed_call_and_of_a_non_finite_reference():
    failed = judge_row({'case': 'm', 'layout': 'T9', 'kernel': 'chunk', 'precision': 'float16', 'ref_error': 1e-3,
                        'error': 'RuntimeError: out of memory', 'fla_s': 0.5})
    assert failed.as_dict() == {'case': 'm', 'layout': 'T9', 'kernel': 'chunk', 'precision': 'float16',
                                'ref_error': 1e-3, 'error': 'RuntimeError: out of memory', 'passed': False,
                                'status': 'error'}
    overflow = judge_row(row('float16', 1e-3, math.nan))
    assert (overflow.status, overflow.passed, overflow.verdict) == ('reference non-finite', False, None)


# ----------------------------------------------------------------------------------------------- one cell, CPU

def test_run_cell_on_the_cpu(tmp_path):
    source, model_dir = converted(tmp_path)
    layout = Layout('leftpad', 'leftpad', (9, 4), kernels=('fused_recurrent',))
    cell = run_cell(model_dir, source, layout, 'fused_recurrent', 'float32', case='N64', device='cpu')
    assert (cell.case, cell.layout, cell.kernel, cell.precision) == ('N64', 'leftpad', 'fused_recurrent', 'float32')
    assert cell.status == 'PASS' and cell.passed, cell
    assert cell.fla_error <= parity.IEEE_BAR and cell.ratio < 3 and cell.top1 == 1.0, cell


@pytest.mark.parametrize('transposed, status', [pytest.param(True, 'PASS', id='converted'),
                                                 pytest.param(False, 'FAIL', id='stored-untransposed')])
def test_run_cell_from_a_tuned_state_on_the_cpu(tmp_path, transposed, status):
    """A state layout: the reference from a bare time_state file, fla from its conversion; stored untransposed
    (BlinkDL's [value, key]) the same cell fails by orders of magnitude."""
    from rwkv7_factory import make_tuned_state, time_states, write_state_conversion
    source, model_dir = converted(tmp_path)
    state = save(time_states(make_tuned_state(Goose())), tmp_path / 'state.pth')
    write_state_conversion(state, tmp_path / 'fla-state', transposed=transposed)
    layout = Layout('T9-state', 'tokens', (9,), 2, ('fused_recurrent',), state=True)
    cell = run_cell(model_dir, source, layout, 'fused_recurrent', 'float32', case='N64', device='cpu', state=state,
                    model_state=tmp_path / 'fla-state')
    assert cell.status == status, cell
    assert cell.ratio < 3 if transposed else cell.ratio > 1e3, cell
    with pytest.raises(ValueError, match='no tuned state'):  # a state layout without a state
        run_cell(model_dir, source, layout, 'fused_recurrent', 'float32', device='cpu')
    with pytest.raises(ValueError, match='tokens or decode layouts, not leftpad'):
        Layout('x', 'leftpad', (9, 4), state=True)


def test_run_cell_catches_swapped_k_k_and_k_a(tmp_path):
    from safetensors.torch import load_file, save_file
    source, model_dir = converted(tmp_path)
    shard = next(model_dir.glob('*.safetensors'))
    sd = load_file(str(shard))
    kk, ka = 'model.layers.0.attn.k_k', 'model.layers.0.attn.k_a'
    sd[kk], sd[ka] = sd[ka].clone(), sd[kk].clone()
    save_file(sd, str(shard), metadata={'format': 'pt'})
    layout = Layout('T9', 'tokens', (9,), 1, ('fused_recurrent',))
    cell = run_cell(model_dir, source, layout, 'fused_recurrent', 'float32', device='cpu')
    assert cell.status == 'FAIL' and cell.ratio > 1e3, cell


def test_run_cell_refuses_what_it_cannot_run(tmp_path, monkeypatch):
    layout = Layout('T9', 'tokens', (9,), 1, ('fused_recurrent',))
    with pytest.raises(ValueError, match="kernel 'chunk' is not one of its kernels"):
        run_cell(tmp_path, tmp_path, layout, 'chunk', 'float32', device='cpu')
    # on CUDA a process compiles float32 dots one way only: IEEE cells need TRITON_F32_DEFAULT=ieee, tf32 without
    monkeypatch.delenv('TRITON_F32_DEFAULT', raising=False)
    with pytest.raises(ValueError, match="precision 'float32'.*TF32.*runtime_env"):
        run_cell(tmp_path, tmp_path, layout, 'fused_recurrent', 'float32', device='cuda')
    monkeypatch.setenv('TRITON_F32_DEFAULT', 'ieee')
    with pytest.raises(ValueError, match="precision 'tf32'.*IEEE"):
        run_cell(tmp_path, tmp_path, layout, 'fused_recurrent', 'tf32', device='cuda')


def test_runtime_env_per_process():
    assert process.runtime_env(cpu=True) == {'FLA_CACHE_RESULTS': '0', 'TRITON_INTERPRET': '1'}
    assert process.runtime_env(cpu=False, precision='float32') == {'FLA_CACHE_RESULTS': '0', 'TRITON_F32_DEFAULT': 'ieee'}
    assert process.runtime_env(cpu=False, precision='tf32') == {'FLA_CACHE_RESULTS': '0'}


# ------------------------------------------------------------------------------------------- the autotuner patch

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
    process.keep_first_fitting_config()  # patches the class; monkeypatch restores it afterwards
    tuner = _FakeAutotuner(['too big', 'fits', 'never compiled'])
    for _ in range(2):  # a second tuning round (another key) starts over
        timings = {c: autotuner.Autotuner._bench(tuner, config=c) for c in tuner.configs}
        assert min(timings, key=timings.get) == 'fits'
    assert launched == ['too big', 'fits'] * 2
    assert tuner.do_bench is None  # triton's own benchmarker is back in its slot


_REAL_AUTOTUNER = r'''
import os
os.environ['TRITON_INTERPRET'] = '1'
from fla.rwkv7_convert.parity.process import keep_first_fitting_config
keep_first_fitting_config()
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
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, '-c', _REAL_AUTOTUNER], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split('\n')[0] == '32 [1.0, 2.0, 2.0]', proc.stdout


# ------------------------------------------------------------------------------------- the layouts' fla calls

class _RecordingModel:
    """Stands in for RWKV7ForCausalLM: logits[b, t] = the token id there, and every call recorded."""

    def __init__(self, vocab=8):
        self.config, self.calls = types.SimpleNamespace(vocab_size=vocab), []

    def __call__(self, input_ids, past_key_values=None, use_cache=True, return_dict=False, attention_mask=None,
                 cu_seqlens=None):
        self.calls.append({'T': input_ids.shape[1], 'grad': torch.is_grad_enabled(), 'cached': past_key_values,
                           'mask': None if attention_mask is None else attention_mask.shape[1],
                           'packed': cu_seqlens is not None})
        logits = input_ids.double().unsqueeze(-1).expand(*input_ids.shape, self.config.vocab_size)
        return logits, (past_key_values or 0) + input_ids.shape[1]


class _Echo:
    """The reference side: logits = token ids, run sequence by sequence."""
    vocab = 8

    def zero_state(self, batch):
        from fla.rwkv7_convert.proof.reference import RWKV7State
        return RWKV7State([], [], [])

    def __call__(self, ids, state):
        return ids.double().unsqueeze(-1).expand(*ids.shape, 8), state


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
    layout = Layout('x', kind, lengths, batch)
    inputs = parity.layout_inputs('N64', layout, 8)
    model = _RecordingModel()
    got = parity.fla_layout_logits(model, layout, inputs, kernel, torch.device('cpu'))
    want = parity.reference_logits(_Echo(), layout, inputs, torch.device('cpu'))
    assert got.shape == (layout.tokens, 8) and torch.equal(got, want)
    prefill = [c for c in model.calls if c['T'] > 1 or kind != 'decode']
    for call in (model.calls if kind != 'decode' else prefill[:1] if kernel == 'chunk' else prefill):
        assert (call['T'] >= 64 or call['grad']) == (kernel == 'chunk'), model.calls
    if kind == 'leftpad':  # fla reads the last len(piece) mask columns: each call gets the mask up to its end
        ends = [c['mask'] for c in model.calls]
        assert ends[-1] == max(lengths) and all(e is not None for e in ends)
    if kernel == 'fused_recurrent' and kind != 'varlen':
        assert all(c['T'] <= RECURRENT_MAX_TOKENS for c in model.calls)


def test_same_inputs_for_a_case_name_or_its_case():
    layout = Layout('leftpad', 'leftpad', (9, 4))
    by_name = parity.layout_inputs('N64', layout, 256)
    by_case = parity.layout_inputs(Case('N64', 'goose'), layout, 256)
    assert torch.equal(by_name['ids'], by_case['ids']) and torch.equal(by_name['mask'], by_case['mask'])
    assert by_name['mask'].sum().item() == 13


# ----------------------------------------------------------------------------------------------- one cell, CUDA

_GPU_CELLS = r'''
import json, sys
from fla.rwkv7_convert.parity.matrix import Layout, run_cell
from fla.rwkv7_convert.parity.process import select_runtime
select_runtime(cpu=False)
source, model_dir, precision = sys.argv[1:]
layouts = [Layout('T64', 'tokens', (64,), 2), Layout('leftpad', 'leftpad', (70, 9)),
           Layout('decode', 'decode', (20, 3), 2), Layout('varlen', 'varlen', (30, 1, 17))]
print(json.dumps([run_cell(model_dir, source, lay, k, precision, case='gpu').as_dict()
                  for lay in layouts for k in lay.kernels]))
'''


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('precision', parity.GPU_PRECISIONS)
def test_run_cell_on_the_gpu(tmp_path, precision):
    source, model_dir = converted(tmp_path, Goose(vocab=512, hidden=256, layers=3, head_size=64))
    env = {**os.environ, **process.runtime_env(cpu=False, precision=precision),
           'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    if precision != 'float32':
        env.pop('TRITON_F32_DEFAULT', None)
    else:
        env['TRITON_CACHE_DIR'] = str(tmp_path / 'triton-ieee')
    proc = subprocess.run([sys.executable, '-c', _GPU_CELLS, str(source), str(model_dir), precision],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(cells) == 8 and {c['kernel'] for c in cells} == set(parity.KERNELS)
    failed = [c for c in cells if c['status'] != 'PASS']
    assert not failed, failed
