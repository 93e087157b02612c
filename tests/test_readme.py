"""README.md is executable documentation: every fenced bash and python block runs on a CPU, exactly as written, each in
a fresh process, in the order a reader meets them, in a fresh folder that holds what a checkout holds (`examples/`,
`utils/`: links to this one) and what the blocks before it wrote (`out/`, `world.pth`, ...).

A block that needs a GPU or a file the user brings is marked on the line before it, `<!-- readme-test: skip gpu -->`
or `<!-- readme-test: skip own-file -->`, and skipped by name; the test command (`<!-- test-command -->`) is the
suite itself, which .ci/run runs. The run prints how many blocks ran and which were skipped. `pip install` is the one
thing not run for real: these tests run inside the installed environment, so `pip` is a stand-in that accepts the
README's install commands and nothing else. No assertion depends on timing.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SKIPS = {'gpu': 'needs a CUDA device', 'own-file': "needs a file the user brings", 'suite': 'the test suite itself'}
FAKE_PIP = """#!/bin/sh
# README test: the package is installed in this environment already; accept the README's install commands only
[ "$1" = install ] && echo "$*" | grep -q -- '-e ' || { echo "unexpected pip call: $*" >&2; exit 1; }
"""


@dataclass
class Block:
    name: str  # the section it is in and its number there, e.g. "Quickstart #1"
    lang: str
    code: str
    skip: str | None  # a key of SKIPS


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of `text` in reading order (bash and python; other languages are listings, not code)."""
    blocks, section, count, skip = [], 'top', 0, None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith('## '):
            section, count = line[3:].strip(), 0
        marker = re.fullmatch(r'<!-- readme-test: skip ([\w-]+) -->', line.strip())
        if marker:
            skip = marker.group(1)
            assert skip in SKIPS, f'README line {i + 1}: unknown skip {skip!r}; expected one of {sorted(SKIPS)}'
        elif line.strip() == '<!-- test-command -->':
            skip = 'suite'
        fence = re.fullmatch(r'```(\w*)', line)
        if fence:
            end = lines.index('```', i + 1)
            count += 1
            if fence.group(1) in ('bash', 'python'):
                blocks.append(Block(f'{section} #{count}', fence.group(1), '\n'.join(lines[i + 1:end]), skip))
            skip, i = None, end
        elif line.strip() and not marker and not line.startswith('<!--'):
            skip = None  # a marker applies to the block right after it
        i += 1
    return blocks


def test_the_blocks_are_found_in_order_and_markers_apply_to_the_next_block_only():
    text = ('## A\n```bash\necho 1\n```\n<!-- readme-test: skip gpu -->\n```python\nprint(2)\n```\n'
            '<!-- readme-test: skip own-file -->\nprose\n```bash\necho 3\n```\n## B\n```text\nlisting\n```\n'
            '<!-- test-command -->\n```bash\npytest\n```\n')
    got = [(b.name, b.lang, b.code, b.skip) for b in readme_blocks(text)]
    assert got == [('A #1', 'bash', 'echo 1', None), ('A #2', 'python', 'print(2)', 'gpu'),
                   ('A #3', 'bash', 'echo 3', None), ('B #2', 'bash', 'pytest', 'suite')]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> Path:
    """A reader's checkout: examples/ and utils/ as in this one (links), nothing written yet."""
    root = tmp_path_factory.mktemp('readme')
    for name in ('examples', 'utils'):
        (root / name).symlink_to(REPO / name)
    return root


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU is what the blocks promise to run on')
def test_every_readme_block_runs_as_written_on_a_cpu(workdir, user_env, tmp_path):
    blocks = readme_blocks((REPO / 'README.md').read_text())
    fake_bin = tmp_path / 'bin'
    fake_bin.mkdir()
    (fake_bin / 'pip').write_text(FAKE_PIP)
    (fake_bin / 'pip').chmod(0o755)
    env = dict(user_env, PATH=f'{fake_bin}:{user_env["PATH"]}')
    ran = []
    for block in blocks:
        if block.skip is not None:
            continue
        start = time.monotonic()
        args = ['bash', '-e', '-o', 'pipefail', '-c', block.code] if block.lang == 'bash' else ['python', '-']
        r = subprocess.run(args, input=block.code if block.lang == 'python' else None, cwd=workdir, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f'README block "{block.name}" failed:\n{block.code}\n--- stderr:\n{r.stderr[-3000:]}'
        assert 'Traceback' not in r.stderr, f'README block "{block.name}":\n{r.stderr[-3000:]}'
        ran.append(f'{block.name} {time.monotonic() - start:.0f} s')
    skipped = [f'{b.name} ({SKIPS[b.skip]})' for b in blocks if b.skip is not None]
    print(f'\nREADME: {len(ran)} blocks ran ({", ".join(ran)}), {len(skipped)} skipped: {"; ".join(skipped)}')
    assert len(ran) >= 10 and all(b.skip != 'gpu' or 'cuda' in b.code for b in blocks)
    assert (workdir / 'out' / 'goose-mini' / 'config.json').is_file() and (workdir / 'state_back.pth').is_file()


DOCS = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]


@pytest.mark.parametrize('doc', [pytest.param(p, id=p.name) for p in DOCS])
def test_every_relative_link_resolves(doc):
    """The README points to docs/ for what it no longer holds: each such link must lead somewhere."""
    links = re.findall(r'\]\(([\w./-]+)(?:#[\w-]*)?\)', doc.read_text())
    missing = [link for link in links if '://' not in link and not (doc.parent / link).exists()]
    assert not missing, missing


def test_the_readme_stays_short_and_keeps_the_placeholders_others_fill():
    text = (REPO / 'README.md').read_text()
    assert len(text.splitlines()) <= 200
    assert text.count('<!-- parity-intro -->') == 1 and '\n## Parity\n' in text
