"""Streaming safetensors shards (the all-or-nothing output directory they go into is atomic.py).

A safetensors file is an 8-byte header length, a JSON header with every tensor's dtype, shape and byte range,
then the raw bytes. Since plans know every shape and dtype before any data is read, each shard's header is
written first and tensors are appended one at a time as they are produced: memory holds one tensor, never a
shard. The index follows Hugging Face's `model.safetensors.index.json` format.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
from collections.abc import Callable
from pathlib import Path

from fla.rwkv7_convert.errors import ConversionError, NotACheckpointError
from fla.rwkv7_convert.formats.atomic import write_json
from fla.rwkv7_convert.formats.checkpoint import RawSpan
from fla.rwkv7_convert.formats.dtypes import itemsize
from fla.rwkv7_convert.formats.outputs import OutTensor, Writer

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'


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


WRITER = Writer('safetensors', ('.safetensors',), 'one safetensors file (metadata: format pt), for loaders that take one',
                write_safetensors)


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
