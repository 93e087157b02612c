"""Streaming safetensors shards and an all-or-nothing output directory.

A safetensors file is an 8-byte header length, a JSON header with every tensor's dtype, shape and byte range,
then the raw bytes. Since plans know every shape and dtype before any data is read, each shard's header is
written first and tensors are appended one at a time as they are produced: memory holds one tensor, never a
shard. The index follows Hugging Face's `model.safetensors.index.json` format.
"""

from __future__ import annotations

import errno
import glob
import json
import mmap
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fla.rwkv7_convert.errors import ConversionError, NotACheckpointError, OutputExistsError
from fla.rwkv7_convert.formats.dtypes import itemsize
from fla.rwkv7_convert.formats.readers import RawSpan

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'


@dataclass(frozen=True)
class OutTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    produce: Callable[[], np.ndarray]  # returns a C-contiguous carrier array of `shape`
    # Fast path for tensors whose output bytes equal bytes of the input file: where they lie (None: use produce),
    # and a check to run on a read-only mapping of them before they are copied inside the kernel.
    raw: Callable[[], RawSpan | None] | None = None
    check: Callable[[RawSpan, memoryview], None] | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * itemsize(self.dtype)


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB', '300000B', 1000 -> bytes (decimal units as Hugging Face uses them, binary with 'i').

    A string needs its unit: a bare '5' would be 5 bytes, one shard per tensor, which no one means.
    """
    if isinstance(text, int):
        return text
    units = {'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12,
             'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30, 'TIB': 2**40}
    s = text.strip().upper().replace(' ', '')
    num = s.rstrip('KMGTIB')
    unit = s[len(num):]
    try:
        number = float(num)
        size = int(number * units[unit])
    except (KeyError, ValueError, OverflowError):
        if not unit and num.replace('.', '', 1).isdigit():
            raise ValueError(f'size {text!r} has no unit; expected e.g. 5GB, 500MB or 2GiB (B for bytes)') from None
        raise ValueError(f'cannot read size {text!r}; expected e.g. 5GB, 500MB or 2GiB') from None
    if size <= 0:
        raise ValueError(f'size {text!r} is not positive; expected e.g. 5GB, 500MB or 2GiB')
    return size


def split_into_shards(tensors: list[OutTensor], max_shard_size: int) -> list[list[OutTensor]]:
    """Greedy in order, as Hugging Face does; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _header(tensors: list[OutTensor], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {'__metadata__': metadata}
    offset = 0
    for t in tensors:
        header[t.name] = {'dtype': t.dtype, 'shape': list(t.shape), 'data_offsets': [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(',', ':')).encode()
    raw += b' ' * (-len(raw) % 8)  # keeps tensor data 8-byte aligned
    return len(raw).to_bytes(8, 'little') + raw


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast('B')
    while view:
        view = view[os.write(fd, view):]


def _release(close: Callable[[], None]) -> None:
    # When `check` raised (Ctrl-C, NaN, a bad CRC), frames of that exception may still hold arrays viewing the
    # mapping: closing it then raises BufferError, which would replace the real exception with a traceback. The
    # mapping is then freed with the exception instead.
    try:
        close()
    except BufferError:
        pass


def _copy_span(fd: int, span: RawSpan, check: Callable[[RawSpan, memoryview], None] | None) -> None:
    """Check the span's bytes on a mapping released right after (RSS stays flat), then copy them in the kernel."""
    if check is not None:
        start = span.offset - span.offset % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(span.fd, span.nbytes + span.offset - start, access=mmap.ACCESS_READ, offset=start)
        try:
            view = memoryview(mapped)[span.offset - start:]
            try:
                check(span, view)
            finally:
                _release(view.release)
        finally:
            _release(mapped.close)
    done = 0
    while done < span.nbytes:
        try:
            n = os.copy_file_range(span.fd, fd, span.nbytes - done, span.offset + done)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            n = _copy_through_memory(span.fd, fd, span.offset + done, span.nbytes - done)
        if n == 0:
            raise NotACheckpointError(f'{span.what}: file ends early (truncated or corrupt)', span.shown)
        done += n


def _copy_through_memory(src: int, dst: int, offset: int, count: int) -> int:
    chunk = os.pread(src, min(count, 64 << 20), offset)
    _write_all(dst, chunk)
    return len(chunk)


def write_safetensors(path: Path, tensors: list[OutTensor], metadata: dict[str, str],
                      on_tensor: Callable[[OutTensor], None] | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, _header(tensors, metadata))
        for t in tensors:
            span = t.raw() if t.raw is not None else None
            if span is not None and span.nbytes == t.nbytes:
                _copy_span(fd, span, t.check)
            else:
                data = t.produce()
                if data.shape != t.shape or data.dtype.itemsize != itemsize(t.dtype) or not data.flags.c_contiguous:
                    raise ConversionError(f'internal error: {t.name} is {data.shape} {data.dtype}, planned {t.shape} '
                                          f'{t.dtype}')
                if data.size:  # memoryview cannot cast an array with a zero in its shape
                    _write_all(fd, data)
                del data
            if on_tensor:
                on_tensor(t)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_sharded(outdir: Path, tensors: list[OutTensor], max_shard_size: int, metadata: dict[str, str],
                  on_tensor: Callable[[OutTensor], None] | None = None) -> list[str]:
    """Write `tensors` as one file or as shards plus an index; returns the file names written."""
    shards = split_into_shards(tensors, max_shard_size)
    if len(shards) == 1:
        write_safetensors(outdir / SINGLE_FILE, shards[0], metadata, on_tensor)
        return [SINGLE_FILE]
    names = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        write_safetensors(outdir / name, shard, metadata, on_tensor)
        weight_map.update({t.name: name for t in shard})
    index = {'metadata': {'total_size': sum(t.nbytes for t in tensors)}, 'weight_map': weight_map}
    write_json(outdir / INDEX_FILE, index)
    return names + [INDEX_FILE]


def write_json(path: Path, obj: object) -> None:
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())


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
                import ctypes
                _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
            except (OSError, AttributeError):
                pass
    if not _renameat2:
        return False
    import ctypes
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
        if target.is_dir():
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
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    check_target(target, force, protect)
    scratch = _scratch_name(target, 'tmp')
    scratch.mkdir()
    try:
        yield scratch
        fsync_dir(scratch)
        _commit(scratch, target, force, protect)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
