"""GPU parity through the one GPU parity path, benchmarks/gpu_parity.py (marker `gpu`; skipped without CUDA).

The full matrix (head sizes 32/64/128 x T up to 4096 x chunk/fused_recurrent x fp32 IEEE/TF32/bf16/fp16, left
padding, prefill then decode, packed batches, a tuned initial state, the released 0.1B/1.5B shapes, the timed
verify run) is one command for a cold GPU session: `bash benchmarks/gpu_parity.sh` (docs/benchmarks.md, "The GPU
parity matrix"). Here pytest runs its quick form (T <= 257, no released shapes) in a subprocess, so that the
script's patched autotuner and TRITON_F32_DEFAULT stay out of this process. Its CPU path runs in CI:
tests/parity/test_gpu_parity_cpu.py; single cells through the library (parity.matrix.run_cell), per precision on
CUDA: tests/parity/test_parity_api.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]


def test_quick_gpu_matrix_passes(tmp_path):
    out = tmp_path / 'out'
    proc = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'gpu_parity.py'), '--quick', '--no-verify',
                           '--out', str(out)], capture_output=True, text=True, timeout=900, cwd=REPO)
    print(proc.stdout)
    report = json.loads((out / 'gpu_parity.json').read_text())
    failed = [c for c in report['cells'] if not c['passed']]
    assert proc.returncode == 0 and not failed, failed[:5]
    assert {c['precision'] for c in report['cells']} == {'float32', 'tf32', 'bfloat16', 'float16'}
    assert {c['kernel'] for c in report['cells']} == {'chunk', 'fused_recurrent'}
    # from a tuned initial state, both kernels: chunk in one call of 257 tokens, recurrent in pieces of 63
    state = [c for c in report['cells'] if c['state']]
    assert {(c['layout'], c['kernel']) for c in state} >= {('T257-state', 'chunk'), ('T257-state', 'fused_recurrent')}
