"""Reliability campaign, export direction (fla directory -> RWKV-LM file): signals at random moments of a real export,
a full disk, racing exports into one file.

The property (docs/reliability.md, section 4, with the counts): every input directory either exports to exactly the
canonical RWKV-LM file, or is refused with one line (a ConversionError; through the command line its error's exit
status and one `error: ` line) with the old output untouched and nothing left beside it.
Reproduce: python -m pytest tests/reliability/test_export_interrupts.py -q
"""

from __future__ import annotations

import functools
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, assert_one_line_error, leftovers, run_script, start_script
from hostile.directories import BASE
from reliability_common import OLD, check_interrupted, export_tally, race, sha, tmpfs
from rwkv7_factory import Goose, make_state_dict, save

from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla

SCRIPT = REPO / 'utils' / 'convert_from_fla_rwkv7.py'

pytestmark = pytest.mark.usefixtures('export_summary')  # the export campaign's counts, printed


@pytest.fixture(scope='module')
def big(tmp_path_factory) -> dict:
    """A ~90 MB fp32 fla directory (its export takes about a second), the old file and both expected hashes."""
    root = tmp_path_factory.mktemp('big-export')
    src = save(make_state_dict(Goose(vocab=8192, hidden=512, layers=4), torch.float32, seed=9), root / 'big.pth')
    convert_to_fla(src, root / 'big', tokenizer='none')
    src.unlink()
    start = time.perf_counter()
    r = run_script(SCRIPT, '--model', root / 'big', '--output', root / 'new.pth', '-q')
    seconds = time.perf_counter() - start
    assert r.returncode == 0, r.stderr
    old = root / 'old.pth'
    convert_from_fla(_small_dir(root), old)
    return {'root': root, 'dir': root / 'big', 'old': old, 'old_sha': sha(old), 'new_sha': sha(root / 'new.pth'),
            'seconds': seconds}


@functools.cache
def _small_state_dict() -> dict:
    return make_state_dict(BASE, torch.bfloat16, seed=16)


def _small_dir(root: Path) -> Path:
    if not (root / 'small').exists():
        convert_to_fla(save(_small_state_dict(), root / 'small.pth'), root / 'small', tokenizer='none')
    return root / 'small'


def _scratch(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if '.tmp-' in p.name]


KILLS = [(sig, anchor) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL) for anchor in ('run', 'write', 'late')]


def test_interrupted_export_leaves_the_old_or_the_complete_new_file(tmp_path, big):
    """SIGINT, SIGTERM and SIGKILL at random moments of a real export replacing an existing .pth (--force): the
    output is exactly the old file or exactly the new one (sha256), and the next run leaves no scratch file."""
    rng = random.Random(20261127)
    out = tmp_path / 'out.pth'
    for sig, anchor in KILLS:
        shutil.copyfile(big['old'], out)
        proc = start_script(SCRIPT, '--model', big['dir'], '--output', out, '--force', '-q')
        if anchor == 'write':  # while the scratch file is being written
            end = time.perf_counter() + 30
            while time.perf_counter() < end and proc.poll() is None and not _scratch(tmp_path):
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.5 * big['seconds']))
        elif anchor == 'late':  # around the end: the fsync and the rename over the old file
            time.sleep(rng.uniform(0.8, 1.3) * big['seconds'])
        else:  # any moment, startup included
            time.sleep(rng.uniform(0, 1.2 * big['seconds']))
        writing = bool(_scratch(tmp_path))
        proc.send_signal(sig)
        state = check_interrupted(proc, sig, lambda: sha(out), big['old_sha'], big['new_sha'], lambda: _scratch(tmp_path),
                                  'file')
        export_tally('interruptions of a 90 MB export', f'{signal.Signals(sig).name}: {state}',
              [f'{signal.Signals(sig).name} exit {proc.returncode}',
               'signalled while the scratch file existed' if writing else 'signalled before or after the scratch file'])
        # the next run (a small export onto the same output) removes whatever a killed one left
        r = run_script(SCRIPT, '--model', _small_dir(big['root']), '--output', out, '--force', '-q')
        assert r.returncode == 0, r.stderr
        assert sha(out) == big['old_sha'] and leftovers(tmp_path, 'out.pth') == []
        out.unlink()


@pytest.fixture
def small_tmpfs(tmp_path):
    with tmpfs(tmp_path / 'tmpfs', '2m') as mnt:
        yield mnt


@pytest.mark.parametrize('existing', [False, True], ids=['fresh-output', 'replacing-a-file'])
def test_full_disk_on_a_real_2mb_tmpfs_fails_cleanly(tmp_path, hf, small_tmpfs, existing):
    model = tmp_path / 'mid'  # ~3.5 MB fp32: does not fit
    convert_to_fla(save(make_state_dict(Goose(vocab=512, hidden=256, layers=2), torch.float32), tmp_path / 'mid.pth'),
                   model, tokenizer='none')
    out = small_tmpfs / 'out.pth'
    if existing:
        out.write_bytes(hf['canonical_bytes'])
    before = {p.name: sha(p) for p in small_tmpfs.iterdir()}
    r = run_script(SCRIPT, '--model', model, '--output', out, '--force')
    line = assert_one_line_error(r.returncode, r.stderr)
    assert 'No space left on device' in line, line
    assert {p.name: sha(p) for p in small_tmpfs.iterdir()} == before
    export_tally('full disk', 'refused (one line)', f'2 MB tmpfs, {"replacing a file" if existing else "fresh"}')


@pytest.fixture(scope='module')
def rivals(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('rivals-export')
    out = {}
    for name, seed in (('a', 1), ('b', 2)):
        src = save(make_state_dict(Goose(vocab=1024, hidden=256, layers=4), torch.float32, seed=seed), root / f'{name}.pth')
        convert_to_fla(src, root / name, tokenizer='none')
        convert_from_fla(root / name, root / f'ref-{name}.pth')
        out[name] = (root / name, sha(root / f'ref-{name}.pth'))
    return out


@pytest.mark.parametrize('force', [True, False], ids=['force', 'no-force'])
def test_racing_exports_leave_one_complete_file(tmp_path, rivals, force):
    out = tmp_path / 'out.pth'
    for _round in range(2):
        if force:
            out.write_bytes(OLD)
        procs = [start_script(SCRIPT, '--model', model, '--output', out, *(['--force'] if force else []), '-q')
                 for model, _ in rivals.values()]
        race(procs, force)
        final = sha(out)
        assert [name for name, (_, h) in rivals.items() if h == final], 'the output is neither complete file'
        assert leftovers(tmp_path, 'out.pth') == []
        export_tally('racing exports into one file', f'{"--force" if force else "no --force"}: one complete file')
        out.unlink()
