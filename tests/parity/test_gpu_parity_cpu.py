"""benchmarks/gpu_parity.py, the one GPU parity command, proven on its CPU path (Triton's interpreter).

The script runs in a subprocess, so its interpreter settings and its patched autotuner never reach this process.
The engine it drives (fla.rwkv7_convert.parity: matrix.py and workers.py) is tested directly in test_parity_api.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fla.rwkv7_convert.parity.matrix import make_plan

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'benchmarks' / 'gpu_parity.py'


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
    cases, precisions = make_plan(cpu=True)
    expected = {(c.name, lay.name, k, p) for c in cases for lay in c.layouts for k in lay.kernels for p in precisions}
    got = {(c['case'], c['layout'], c['kernel'], c['precision']) for c in report['cells']}
    assert got == expected
    assert {c['kind'] for c in report['cells']} == {'tokens', 'leftpad', 'decode', 'varlen'}
    # from a tuned initial state (the reference from a time_state file, fla from its conversion): recurrent kernel
    assert {c['layout'] for c in report['cells'] if c['state']} == {'T9-state', 'decode-state'}
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


def test_a_state_converted_untransposed_fails_only_the_state_cells(tmp_path):
    """--corrupt transpose-state: the converted state stored in BlinkDL's [value, key] orientation; the cell from
    it fails by orders of magnitude, the same model from zero states passes."""
    proc, report = run_script(tmp_path, '--corrupt', 'transpose-state', '--only', 'T9,T9-state')
    assert proc.returncode == 1, proc.stdout
    cells = {c['layout']: c for c in report['cells']}
    assert cells['T9']['status'] == 'PASS', cells
    assert cells['T9-state']['status'] == 'FAIL' and cells['T9-state']['ratio'] > 1e3, cells


def test_gpu_worker_layout_hands_the_truths_over_through_files(tmp_path):
    """--split: the GPU's worker layout (a truth worker, one worker per precision) on the interpreter."""
    proc, report = run_script(tmp_path, '--split', '--only', 'T9,leftpad', '--keep')
    assert proc.returncode == 0, proc.stdout + (tmp_path / 'out' / 'gpu_parity_workers.log').read_text()
    assert set(report['workers']) == {'truth', 'float32'}
    assert all(w['rc'] == 0 for w in report['workers'].values())
    assert sorted(p.name for p in (tmp_path / 'work' / 'N64').glob('truth-*.pt')) == ['truth-T9.pt', 'truth-leftpad.pt']
    assert [c['status'] for c in report['cells']] == ['PASS', 'PASS']


def test_cells_past_the_budget_are_reported_not_run(tmp_path):
    proc, report = run_script(tmp_path, '--budget', '0.5', '--only', 'T1')
    assert proc.returncode == 1, proc.stdout
    assert [c['status'] for c in report['cells']] == ['not run'] and not report['passed']
    # stopped at the deadline (or gave up waiting for the model) before any cell: the parent stops it as soon as
    # the model it waits for is written
    assert all(w['rc'] != 0 for w in report['workers'].values())
    assert '0/1 cells' in proc.stdout and 'not run' in (tmp_path / 'out' / 'gpu_parity.md').read_text()
