"""benchmarks/mutation.py on two slips that fooled verify before the reference read the source on its own: each
makes a wrong model with the slipped table, and verify (with the slip still applied) must not PASS it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_verify_catches_two_table_slips(tmp_path):
    out = tmp_path / 'rows.json'
    proc = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'mutation.py'), '--slips',
                           'rc4a-demo-kk-ka,rc4a-decay-aaaaa', '--no-tests', '--json', str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.exists(), proc.stderr[-3000:]
    rows = {r['slip']: r for r in json.loads(out.read_text())}
    assert set(rows) == {'rc4a-demo-kk-ka', 'rc4a-decay-aaaaa'}
    for key, row in rows.items():
        assert row['converted'] and row['wrong'], f'{key}: the slip made no wrong model, so it proves nothing: {row}'
        assert row['verdict'] == 'refused' and 'read two ways and they disagree' in row['why'], f'{key}: {row}'
    assert proc.returncode == 0, proc.stdout[-2000:]
