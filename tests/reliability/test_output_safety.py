"""Reliability campaign 3, output safety: interruptions (SIGINT/SIGTERM/SIGKILL) mid-conversion and inside the final
swap, a full disk (injected and a real 1 MB tmpfs), racing conversions into one OUTDIR, symlinked outputs. The old
model or the complete new one is in place at every instant, and no scratch is left.

Reproduce: python -m pytest tests/reliability/test_output_safety.py -q
"""

from __future__ import annotations

import errno
import functools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import assert_one_line_error, leftovers, run_script, script_env, start_script
from reliability_common import (
    REPO,
    SCRIPT,
    base_state_dict,
    check_interrupted,
    digest,
    make_old_model,
    race,
    tally,
    tmpfs,
)
from rwkv7_factory import Goose, make_state_dict, save

from fla.rwkv7_convert.cli.convert import main_to_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import EXIT_OS_ERROR
from fla.rwkv7_convert.formats import atomic, safetensors_writer

pytestmark = pytest.mark.usefixtures('campaign_summary')  # the forward campaign's counts: printed, checked


# ------------------------------------------------------------------------------------------------ 3. output safety

@pytest.fixture(scope='module')
def big(tmp_path_factory) -> dict:
    """A ~110 MB checkpoint (conversion takes about a second), the old model at OUTDIR and both expected states."""
    root = tmp_path_factory.mktemp('big')
    src = save(make_state_dict(Goose(vocab=1024, hidden=512, layers=8), seed=5), root / 'big.pth')
    small = save(base_state_dict(0), root / 'small.pth')
    old, new = root / 'old-model', root / 'new-model'
    assert run_script(SCRIPT, '--rwkv7', small, '--output', old, '--tokenizer', 'none', '-q').returncode == 0
    start = time.perf_counter()
    assert run_script(SCRIPT, '--rwkv7', src, '--output', new, '--tokenizer', 'none', '-q').returncode == 0
    seconds = time.perf_counter() - start
    return {'root': root, 'src': src, 'small': small, 'old': old, 'new': new, 'old_digest': digest(old),
            'new_digest': digest(new), 'seconds': seconds}


def _start(*args) -> subprocess.Popen:
    return start_script(SCRIPT, *args)


def _scratch(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith('.out.')]


def _wait_for_scratch(parent: Path, proc: subprocess.Popen, limit: float) -> bool:
    end = time.perf_counter() + limit
    while time.perf_counter() < end and proc.poll() is None:
        if _scratch(parent):
            return True
        time.sleep(0.002)
    return False


KILLS = [(sig, anchor) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL) for anchor in ('run', 'write') * 2]


def test_interrupted_conversion_leaves_the_old_or_the_complete_new_model(tmp_path, big):
    """SIGINT, SIGTERM and SIGKILL at random moments of a real conversion replacing an existing model (--force):
    OUTDIR then holds exactly the old files or exactly the new ones (sha256), and the next run leaves no scratch."""
    rng = random.Random(20240607)
    out = tmp_path / 'out'
    for sig, anchor in KILLS:
        shutil.copytree(big['old'], out)
        proc = _start('--rwkv7', big['src'], '--output', out, '--force', '--tokenizer', 'none', '-q')
        if anchor == 'write':  # a moment while the scratch folder is being written or swapped in
            _wait_for_scratch(tmp_path, proc, 30)
            time.sleep(rng.uniform(0, 0.6 * big['seconds']))
        else:  # any moment of the whole run, startup included
            time.sleep(rng.uniform(0, 1.2 * big['seconds']))
        proc.send_signal(sig)
        state = check_interrupted(proc, sig, lambda: digest(out), big['old_digest'], big['new_digest'],
                                  lambda: _scratch(tmp_path), 'model')
        tally('interruptions of a 110 MB conversion', f'{signal.Signals(sig).name}: {state}',
              f'{signal.Signals(sig).name} exit {proc.returncode}')
        # the next run (a small conversion into the same OUTDIR) tidies whatever a killed one left
        r = run_script(SCRIPT, '--rwkv7', big['small'], '--output', out, '--force', '--tokenizer', 'none', '-q')
        assert r.returncode == 0, r.stderr
        assert digest(out) == big['old_digest'] and leftovers(tmp_path, 'out') == []
        shutil.rmtree(out)


_WINDOW = '''
import sys, time
sys.path.insert(0, {utils!r})
from _bootstrap import light_fla
light_fla()
from fla.rwkv7_convert.formats import atomic
real_exchange, real_rename = atomic.exchange, atomic.os.rename
def pause(what):
    print(what, flush=True)
    time.sleep(60)
if {mode!r} == 'after-exchange':
    def exchange(a, b):
        done = real_exchange(a, b)
        pause('swapped')
        return done
    atomic.exchange = exchange
else:  # the two-rename fallback, paused between the renames
    atomic.exchange = lambda a, b: False
    def rename(a, b):
        real_rename(a, b)
        if '.old-' in str(b):
            pause('moved aside')
    atomic.os.rename = rename
from fla.rwkv7_convert.cli.convert import main_to_fla
sys.exit(main_to_fla(sys.argv[1:]))
'''


@pytest.mark.parametrize('mode', ['after-exchange', 'between-two-renames'])
def test_sigkill_inside_the_final_swap_loses_nothing(tmp_path, big, mode):
    """A SIGKILL at the worst moment of the swap: right after the atomic exchange, or (where renameat2 is missing)
    between moving the old model aside and moving the new one in. The next run must find a complete model."""
    small = save(base_state_dict(0), tmp_path / 'small.pth')
    out = tmp_path / 'out'
    shutil.copytree(big['old'], out)
    code = _WINDOW.format(utils=str(REPO / 'utils'), mode=mode)
    env = script_env()
    proc = subprocess.Popen([sys.executable, '-c', code, '--rwkv7', str(big['src']), '--output', str(out), '--force',
                             '--tokenizer', 'none', '-q'], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() in ('swapped', 'moved aside')
    proc.kill()
    proc.wait()
    if mode == 'after-exchange':
        assert digest(out) == big['new_digest']  # already complete; the old copy waits in a scratch folder
    else:
        assert not out.exists()  # the old model is beside it, under .out.old-<dead pid>-...
    # the next run, without --force: restores the old model if needed, then refuses to replace it
    r = run_script(SCRIPT, '--rwkv7', small, '--output', out, '--tokenizer', 'none')
    assert_one_line_error(r.returncode, r.stderr)
    expected = big['new_digest'] if mode == 'after-exchange' else big['old_digest']
    assert digest(out) == expected and leftovers(tmp_path, 'out', 'small.pth') == []
    tally('SIGKILL inside the final swap', 'complete model kept', mode)


def test_swap_without_renameat2_puts_the_old_model_back_on_failure(tmp_path, monkeypatch):
    src = save(base_state_dict(0), tmp_path / 'm.pth')
    out = tmp_path / 'out'
    before = make_old_model(out)
    monkeypatch.setattr(atomic, 'exchange', lambda a, b: False)
    real = os.rename

    def failing_rename(a, b):
        if '.tmp-' in str(a):
            raise OSError(errno.EIO, 'Input/output error')
        real(a, b)
    monkeypatch.setattr(atomic.os, 'rename', failing_rename)
    with pytest.raises(OSError):
        convert_to_fla(src, out, force=True, tokenizer='none')
    assert digest(out) == before and leftovers(tmp_path, 'm.pth', 'out') == []


class _FullDisk:
    """A disk that fills up after `budget` more bytes below `root`: every way of writing a file the converter may
    use (buffered files opened by the writer, os.write/pwrite, copy_file_range, sendfile) then fails with ENOSPC."""

    def __init__(self, budget: int, root: Path, monkeypatch):
        self.budget, self.root = budget, str(root)
        real_open = open
        owner = self

        def limited_open(path, mode='r', *args, **kw):
            f = real_open(path, mode, *args, **kw)

            class Limited:
                def write(self, data):
                    owner.spend(len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes)
                    return f.write(data)

                def __getattr__(self, name):
                    return getattr(f, name)

                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    return f.__exit__(*exc)
            return Limited() if str(path).startswith(self.root) and 'r' not in mode else f

        for module in (atomic, safetensors_writer):  # Python-level file writes: JSON (atomic) and shards
            monkeypatch.setattr(module, 'open', limited_open, raising=False)
        for name, nbytes in (('write', lambda fd, data: memoryview(data).nbytes),
                             ('pwrite', lambda fd, data, offset: memoryview(data).nbytes),
                             ('copy_file_range', lambda src, dst, count, *a: count),
                             ('sendfile', lambda dst, src, offset, count: count)):
            real = getattr(os, name, None)
            if real is not None:
                fd_arg = 1 if name in ('copy_file_range',) else 0
                monkeypatch.setattr(os, name, self._limited(real, nbytes, fd_arg))

    def spend(self, n: int) -> None:
        if n > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= n

    def _limited(self, real, nbytes, fd_arg: int):
        def call(*args):
            try:
                ours = os.readlink(f'/proc/self/fd/{args[fd_arg]}').startswith(self.root)
            except OSError:
                ours = False
            if ours:
                self.spend(nbytes(*args))
            return real(*args)
        return call


@functools.cache
def _shard_sizes() -> tuple[int, int]:
    """(header bytes, file bytes) of base 0's model.safetensors."""
    with tempfile.TemporaryDirectory() as d:
        convert_to_fla(save(base_state_dict(0), Path(d) / 'm.pth'), Path(d) / 'out', tokenizer='none')
        raw = (Path(d) / 'out' / 'model.safetensors').read_bytes()
        return 8 + int.from_bytes(raw[:8], 'little'), len(raw)


FULL_AT = {'at-the-header': lambda h, n: 0, 'in-the-first-tensor': lambda h, n: h + 100,
           'mid-shard': lambda h, n: n // 2, 'at-config-json': lambda h, n: n + 10}


@pytest.mark.parametrize('where', FULL_AT)
def test_full_disk_injected_fails_cleanly(tmp_path, monkeypatch, capsys, where):
    budget = FULL_AT[where](*_shard_sizes())
    src = save(base_state_dict(0), tmp_path / 'm.pth')
    out = tmp_path / 'out'
    before = make_old_model(out)
    _FullDisk(budget, tmp_path, monkeypatch)
    code = main_to_fla(['--rwkv7', str(src), '--output', str(out), '--force', '--tokenizer', 'none'])
    err = capsys.readouterr().err
    assert code == EXIT_OS_ERROR
    assert err.strip().splitlines() == ['error: No space left on device (nothing was written; any existing output is '
                                        'untouched)']
    assert digest(out) == before and leftovers(tmp_path, 'm.pth', 'out') == []
    tally('full disk', 'refused (one line)', f'injected ENOSPC {where}')


@pytest.fixture
def small_tmpfs(tmp_path):
    with tmpfs(tmp_path / 'tmpfs', '1m') as mnt:
        yield mnt


@pytest.mark.parametrize('existing', [False, True], ids=['fresh-output', 'replacing-a-model'])
def test_full_disk_on_a_real_1mb_tmpfs_fails_cleanly(tmp_path, small_tmpfs, existing):
    src = save(make_state_dict(Goose(vocab=256, hidden=256, layers=2)), tmp_path / 'big.pth')  # ~7 MB
    out = small_tmpfs / 'out'
    if existing:
        assert run_script(SCRIPT, '--rwkv7', save(base_state_dict(0), tmp_path / 'small.pth'), '--output', out, '--tokenizer',
                       'none', '-q').returncode == 0
    before = digest(small_tmpfs)
    r = run_script(SCRIPT, '--rwkv7', src, '--output', out, '--force', '--tokenizer', 'none')
    line = assert_one_line_error(r.returncode, r.stderr)
    assert 'No space left on device' in line
    assert digest(small_tmpfs) == before
    assert leftovers(small_tmpfs, 'out') == [] if existing else list(small_tmpfs.iterdir()) == []
    tally('full disk', 'refused (one line)', f'1 MB tmpfs, {"replacing a model" if existing else "fresh"}')


@pytest.fixture(scope='module')
def rivals(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('rivals')
    out = {}
    for name, seed in (('a', 1), ('b', 2)):
        src = save(make_state_dict(Goose(vocab=512, hidden=256, layers=4), seed=seed), root / f'{name}.pth')  # ~14 MB
        r = run_script(SCRIPT, '--rwkv7', src, '--output', root / f'ref-{name}', '--tokenizer', 'none', '-q')
        assert r.returncode == 0, r.stderr
        out[name] = (src, digest(root / f'ref-{name}'))
    return out


@pytest.mark.parametrize('force', [True, False], ids=['force', 'no-force'])
def test_racing_conversions_leave_one_complete_model(tmp_path, rivals, force):
    out = tmp_path / 'out'
    for _round in range(3):
        before = make_old_model(out) if force else {}
        procs = [_start('--rwkv7', src, '--output', out, *(['--force'] if force else []), '--tokenizer', 'none', '-q')
                 for src, _ in rivals.values()]
        results = race(procs, force)
        final = digest(out)
        winners = [name for name, (_, d) in rivals.items() if d == final]
        assert len(winners) == 1, f'OUTDIR is neither complete model: {sorted(final)}'
        # without --force the loser finds the winner's model and refuses to replace it
        assert force or all('exists and is not empty' in err for code, err in results if code != 0), results
        assert final != before and leftovers(tmp_path, 'out') == []
        tally('racing conversions into one OUTDIR', f'{"--force" if force else "no --force"}: one complete model')
        shutil.rmtree(out)


def test_ctrl_c_while_a_tensor_is_checked_in_place_is_a_clean_interrupt(tmp_path, monkeypatch, capsys):
    """Ctrl-C inside the NaN/CRC check of the kernel-copy path, while a numpy array still views the mapped input:
    the mapping cannot be closed then, and that must not replace the interrupt with a BufferError traceback."""
    import numpy as np

    from fla.rwkv7_convert.convert import to_fla as convert

    def interrupted_check(span, view):
        data = np.frombuffer(view, np.uint8)  # alive in this frame, which the traceback keeps  # noqa: F841
        raise KeyboardInterrupt
    monkeypatch.setattr(convert, 'check_span', interrupted_check)
    src = save(base_state_dict(0), tmp_path / 'm.pth')
    out = tmp_path / 'out'
    before = make_old_model(out)
    code = main_to_fla(['--rwkv7', str(src), '--output', str(out), '--force', '--tokenizer', 'none'])
    err = capsys.readouterr().err
    assert code == 130 and err.startswith('interrupted (SIGINT)') and len(err.strip().splitlines()) == 1, err
    assert digest(out) == before and leftovers(tmp_path, 'm.pth', 'out') == []


def test_symlinked_output_is_replaced_as_a_link_and_its_target_kept(tmp_path):
    src = save(base_state_dict(0), tmp_path / 'm.pth')
    linked = tmp_path / 'linked-model'
    before = make_old_model(linked)
    (tmp_path / 'out').symlink_to(linked)
    r = run_script(SCRIPT, '--rwkv7', src, '--output', tmp_path / 'out', '--force', '--tokenizer', 'none', '-q')
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / 'out').is_symlink() and (tmp_path / 'out' / 'model.safetensors').is_file()
    assert digest(linked) == before and leftovers(tmp_path, 'm.pth', 'out', 'linked-model') == []
    tally('outputs that must not be replaced (command line)', 'converted, the symlink\'s target kept',
          'OUTDIR a symlink to another model, --force')
