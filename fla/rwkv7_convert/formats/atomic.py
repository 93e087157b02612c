"""All-or-nothing output, for a directory (convert) and for a single file (export): the one place for the protocol.

Output is written to a scratch name beside the target and moved into place only when complete, so at every instant
the target is absent, the old complete output or the new complete one. Scratch left by killed runs (its process
gone) is removed on the next run; an existing target is replaced only with --force.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fla.rwkv7_convert.errors import ConversionError, OutputExistsError

# ------------------------------------------------------------------------------------------- atomic output folder

def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _scratch_name(target: Path, kind: str) -> Path:
    return target.parent / f'.{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}'


def _claim(target: Path, shown: str, make_scratch) -> Path:
    """The target's folder made and a scratch name beside it claimed by `make_scratch(path)`; a place where nothing
    can be created (`/proc/x`, a read-only folder, a file as the folder) is one error naming the user's path, never
    the scratch name the user did not choose."""
    parent = target.parent
    if os.path.lexists(parent) and not parent.is_dir():
        raise ConversionError(f'cannot be created: {parent} is not a directory; nothing was written', shown)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        scratch = _scratch_name(target, 'tmp')
        make_scratch(scratch)
    except OSError as e:
        raise ConversionError(f'cannot be created in {parent} ({e.strerror or e}); nothing was written', shown) from e
    return scratch


def clean_stale(target: Path) -> list[Path]:
    """Tidy what earlier runs, now dead (killed or crashed), left beside `target`.

    Their scratch folders are removed. A folder holding the previous model (`.old-`) is removed once `target`
    exists; if `target` is missing, the run died between moving the old model aside and putting the new one in
    place, so the old model is moved back instead: it is never deleted without a model at `target`.
    """
    removed = []
    if not target.parent.is_dir():
        return removed
    for p in sorted(target.parent.glob(glob.escape(f'.{target.name}.') + '*-*-*')):
        kind, _, rest = p.name[len(target.name) + 2:].partition('-')
        pid = rest.split('-')[0]
        if kind in ('tmp', 'old') and pid.isdigit() and not pid_alive(int(pid)):
            if kind == 'old' and not os.path.lexists(target):
                try:
                    os.rename(p, target)
                    continue
                except OSError:
                    pass  # another run put something there meanwhile: then this copy is stale
            _remove(p)
            removed.append(p)
    return removed


def _remove(path: Path) -> None:
    """Delete a folder we moved aside; a symlink (OUTDIR may be one) is unlinked, its target left alone."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def check_target(target: Path, force: bool, protect: tuple[str | os.PathLike, ...] = ()) -> None:
    """Refuse a non-empty output unless --force, before any work is done.

    Even with --force, a folder that holds one of `protect` (the source checkpoint) or the current directory is
    never replaced: `--output . --force` would otherwise delete the folder the user works in.
    """
    if target.exists() and not target.is_dir():
        raise OutputExistsError('exists and is not a directory; remove it or choose another --output', str(target))
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise OutputExistsError('exists and is not empty; pass --force to replace it', str(target))
        real = os.path.realpath(target)
        for what, path in [('the current directory', os.getcwd())] + [('the input file', p) for p in protect]:
            inside = os.path.realpath(path)
            if os.path.commonpath([real, inside]) == real:
                raise OutputExistsError(f'holds {what} ({path}); --force will not replace it, choose another --output',
                                        str(target))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_renameat2 = None


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if os.name == 'posix':
            try:
                _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
            except (OSError, AttributeError):
                pass
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):  # old kernel or file system
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM/SIGHUP until the block is done (they are then delivered), so no exception lands
    between two renames that must happen together."""
    sigs = {signal.SIGINT, signal.SIGTERM, getattr(signal, 'SIGHUP', signal.SIGTERM)}
    if not hasattr(signal, 'pthread_sigmask') or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _commit(scratch: Path, target: Path, force: bool, protect: tuple) -> None:
    """Put the complete `scratch` at `target`; an existing model there is swapped out and deleted afterwards."""
    for _attempt in range(3):
        check_target(target, force, protect)  # another process may have written it meanwhile
        # without --force only rename(2), which replaces nothing but an empty folder, in one step: a racing run may
        # put its model at `target` right after the check above, and exchanging would then replace it unasked
        if force and target.is_dir():
            if exchange(scratch, target):  # one step: `target` is the old model, then the new one
                fsync_dir(target.parent)
                _remove(scratch)  # now holds the old model (or the symlink OUTDIR was)
                return
            old = _scratch_name(target, 'old')
            with _signals_deferred():  # two steps; a SIGKILL in between is undone by clean_stale
                os.rename(target, old)
                try:
                    os.rename(scratch, target)
                except BaseException:
                    os.rename(old, target)  # put the old model back
                    raise
            fsync_dir(target.parent)
            _remove(old)
            return
        try:
            os.rename(scratch, target)
            fsync_dir(target.parent)
            return
        except OSError as e:  # a racing run put a model there since the check: check again
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    raise OutputExistsError('keeps being replaced by other runs converting into it at the same time', str(target))


@contextmanager
def atomic_directory(target: str | os.PathLike, force: bool = False,
                     protect: tuple[str | os.PathLike, ...] = ()) -> Iterator[Path]:
    """Yield a scratch folder beside `target`; on success it becomes `target`, on any failure it vanishes.

    With --force an existing target is swapped with the complete new folder in one atomic step (renameat2
    RENAME_EXCHANGE; elsewhere two renames with signals held, repaired by `clean_stale` if the process is killed
    between them) and deleted after, so at every instant either the old complete model or the new complete
    model sits at `target`, also when runs race for the same `target`. `protect`: see `check_target`.
    """
    shown = os.fspath(target)
    target = Path(target).absolute()
    clean_stale(target)
    check_target(target, force, protect)
    scratch = _claim(target, shown, Path.mkdir)
    try:
        yield scratch
        fsync_dir(scratch)
        _commit(scratch, target, force, protect)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------------ atomic single file

def clean_stale_files(target: Path) -> list[Path]:
    """Remove temporary files our earlier runs left beside `target` (their process is gone: killed or crashed)."""
    removed = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.glob(f'.{target.name}.tmp-*-*'):
        pid = p.name[len(target.name) + len('..tmp-'):].split('-')[0]
        if p.is_file() and pid.isdigit() and not pid_alive(int(pid)):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def check_target_file(target: Path, force: bool, protect: tuple[str | os.PathLike, ...] = ()) -> None:
    """Refuse an existing output file unless --force, and a directory (or other non-file) always. Even with --force,
    a target that is one of `protect` (a file of the input) is refused: replacing it would destroy the input."""
    if os.path.lexists(target) and (target.is_dir() or not target.is_file()):
        raise OutputExistsError('exists and is not a regular file; remove it or choose another --output', str(target))
    for path in protect:
        try:
            same = os.path.samefile(target, path)
        except OSError:  # one of them does not exist
            same = False
        if same:
            raise OutputExistsError(f'is the input\'s own {Path(path).name}; choose another --output', str(target))
    if target.exists() and not force:
        raise OutputExistsError('exists; pass --force to replace it', str(target))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(target: str | os.PathLike, force: bool = False,
                protect: tuple[str | os.PathLike, ...] = ()) -> Iterator[Path]:
    """Yield a fresh scratch path beside `target` to write; on success it is synced and moved onto `target`.

    On any failure (an exception, Ctrl-C) the scratch file is removed and `target` is untouched: at every instant
    `target` is absent, the old complete file or the new complete file. Without `force` the last step is a hard
    link, which fails if `target` appeared meanwhile, so an existing file is never replaced; with `force` it is an
    atomic rename over the old file. Scratch files left by killed runs are removed on the next run. `protect`: see
    `check_target_file`.
    """
    shown = os.fspath(target)
    target = Path(target).absolute()
    clean_stale_files(target)
    check_target_file(target, force, protect)
    scratch = _claim(target, shown, lambda path: open(path, 'xb').close())
    try:
        yield scratch
        _fsync_file(scratch)
        check_target_file(target, force, protect)  # another process may have written it meanwhile
        if force:
            os.replace(scratch, target)
        else:
            try:
                os.link(scratch, target)
            except FileExistsError:
                raise OutputExistsError('appeared while converting; pass --force to replace it', str(target)) from None
            except OSError:  # no hard links on this file system: rename, having checked just above
                os.rename(scratch, target)
            else:
                os.unlink(scratch)
        fsync_dir(target.parent)
    except BaseException:
        try:
            scratch.unlink()
        except OSError:
            pass
        raise


def write_json(path: Path, obj: object) -> None:
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
