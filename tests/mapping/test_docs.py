"""Generated documentation is fresh, and the code follows the house style (ruff, 127 columns)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from fla.rwkv7_convert.mapping.docs import render
from fla.rwkv7_convert.mapping.refusals import REFUSALS
from fla.rwkv7_convert.mapping.table import RULES

REPO = Path(__file__).resolve().parents[2]


def test_mapping_doc_is_generated_from_the_table():
    current = (REPO / 'docs' / 'mapping.md').read_text()
    assert current == render(), 'docs/mapping.md is stale: run python -m fla.rwkv7_convert.mapping.docs > docs/mapping.md'


def test_mapping_doc_names_every_rule_and_refusal():
    text = render()
    assert all(f'`{r.blinkdl}`' in text for r in RULES)
    assert all(f.variant in text for f in REFUSALS)
    assert '## Adding a naming variant' in text


@pytest.mark.skipif(shutil.which('ruff') is None, reason='ruff is not installed')
def test_ruff_is_clean():
    paths = [p for p in ('fla', 'utils', 'tests', 'benchmarks', 'examples', 'rwkv7_convert_entry.py', 'setup.py')
             if (REPO / p).exists()]
    r = subprocess.run(['ruff', 'check', *paths], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ci_runs_the_readme_test_command_and_carries_no_copy_of_it():
    readme = (REPO / 'README.md').read_text().splitlines()
    marker = readme.index('<!-- test-command -->')
    assert readme[marker + 1] == '```bash'
    command = readme[marker + 2]
    assert readme[marker + 3] == '```' and 'pytest' in command and 'pip install' in command
    ci = (REPO / '.ci' / 'run').read_text()
    # .ci/run reads the README; a second copy of the command there could drift from it
    assert 'pytest' not in ci and 'pip install' not in ci
    r = subprocess.run(['bash', '-c', next(line for line in ci.splitlines() if line.startswith('cmd=')) + '; echo "$cmd"'],
                       cwd=REPO, capture_output=True, text=True)
    assert r.stdout.strip() == command, r.stderr
