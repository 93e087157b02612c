"""The README's main command on the bundled default checkpoint: converts, verifies (PASS) and generates."""

import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / 'examples' / 'rwkv7-goose-mini.pth'


def test_bundled_checkpoint_is_what_its_generator_writes():
    sys.path.insert(0, str(REPO / 'examples'))
    from make_goose_mini import SHAPE
    from rwkv7_factory import make_state_dict
    shipped = torch.load(BUNDLED, weights_only=True)
    fresh = make_state_dict(SHAPE, dtype=torch.bfloat16, seed=2026)
    assert shipped.keys() == fresh.keys() and all(torch.equal(shipped[k], fresh[k]) for k in fresh)
    assert BUNDLED.stat().st_size < 3_000_000


def test_readme_main_command(tmp_path):
    out = tmp_path / 'goose-mini'
    r = subprocess.run([sys.executable, str(REPO / 'utils' / 'convert_to_rwkv7.py'), '--rwkv7', str(BUNDLED),
                        '--output', str(out), '--force', '--verify'], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f'converted {BUNDLED} -> {out}: RWKV-7, 2 layers, hidden 128, head size 64')
    assert 'PASS' in r.stdout and '(same as the reference)' in r.stdout
