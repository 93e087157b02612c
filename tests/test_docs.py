"""Generated documentation is fresh, and the code follows the house style (ruff, 127 columns)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from fla.rwkv7_convert.docs import render

REPO = Path(__file__).resolve().parents[1]


def test_mapping_doc_is_generated_from_the_table():
    current = (REPO / 'docs' / 'mapping.md').read_text()
    assert current == render(), 'docs/mapping.md is stale: run python -m fla.rwkv7_convert.docs > docs/mapping.md'


def test_mapping_doc_names_every_rule_and_refusal():
    from fla.rwkv7_convert.table import REFUSALS, RULES
    text = render()
    assert all(f'`{r.blinkdl}`' in text for r in RULES)
    assert all(f.variant in text for f in REFUSALS)
    assert '## Adding a naming variant' in text


@pytest.mark.skipif(shutil.which('ruff') is None, reason='ruff is not installed')
def test_ruff_is_clean():
    paths = [p for p in ('fla', 'utils', 'tests', 'benchmarks', 'examples') if (REPO / p).exists()]
    r = subprocess.run(['ruff', 'check', *paths], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
