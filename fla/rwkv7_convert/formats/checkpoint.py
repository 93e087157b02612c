"""What every reader returns: TensorRef (name, shape, dtype, and how to load its bytes later), RawSpan (where the bytes
lie, for a kernel copy), Checkpoint (the tree of refs and the open handles), and the small helpers they share."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fla.rwkv7_convert.errors import (
    NotACheckpointError,
)
from fla.rwkv7_convert.formats.dtypes import itemsize


@dataclass(frozen=True)
class TensorRef:
    """A tensor in a file: its shape and dtype now, its data on `load()`."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors name, e.g. 'BF16'
    loader: Callable[[], np.ndarray] = field(repr=False, compare=False)
    # (fd, byte offset, byte count, CRC-32 or 0) when the bytes lie contiguous and uncompressed in the file, so a
    # writer can copy them inside the kernel instead of through a numpy array; None when they do not
    spanner: Callable[[], RawSpan | None] | None = field(default=None, repr=False, compare=False)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)

    def load(self) -> np.ndarray:
        """The data as a C-contiguous carrier array of `shape` (bf16 as uint16 bit patterns)."""
        return self.loader()

    def renamed(self, name: str) -> TensorRef:
        return TensorRef(name, self.shape, self.dtype, self.loader, self.spanner)

    def span(self) -> RawSpan | None:
        return self.spanner() if self.spanner is not None else None


@dataclass(frozen=True)
class RawSpan:
    fd: int
    offset: int
    nbytes: int
    crc: int = 0  # CRC-32 the bytes must have (a whole .pth record); 0: nothing to check
    what: str = ''  # for error messages
    shown: str = ''


class Checkpoint:
    """An open checkpoint: `tree` is what the file holds, with `TensorRef` leaves (usually a flat dict).

    For a Hugging Face directory, `kind` is 'hf-directory', `files` its weight files, `config` its config.json and
    `origins` the weight file each tensor was found in."""

    def __init__(self, path: Path, kind: str, tree: object, handle, files: list[str] | None = None,
                 config: dict | None = None, origins: dict[str, str] | None = None):
        self.path, self.kind, self.tree, self._handle = path, kind, tree, handle
        self.files, self.config = files or [path.name], config or {}
        self.origins = origins or {}

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_exact(handle, offset: int, out: np.ndarray, where: str, shown: str) -> np.ndarray:
    view = memoryview(out).cast('B')
    done = 0
    handle.seek(offset)
    while done < len(view):
        n = handle.readinto(view[done:])
        if not n:
            raise NotACheckpointError(f'{where}: file ends early (truncated or corrupt)', shown)
        done += n
    return out


def check_span(span: RawSpan | None, view: memoryview) -> None:
    """The CRC-32 check of loaded records, for bytes that are copied without being loaded."""
    if span is not None:
        check_crc(view, span.crc, span.what, span.shown)


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))


def check_crc(data: np.ndarray | memoryview, crc: int, what: str, shown: str):
    """Bytes read straight from a record are checked against the zip's CRC-32 (~2 GB/s), so a corrupt record is
    refused instead of converted. torch can save without checksums (CRC 0); those are not checked."""
    raw = data if isinstance(data, memoryview) else memoryview(data).cast('B') if data.size else b''
    if crc and len(raw) and zlib.crc32(raw) != crc:
        raise NotACheckpointError(f'{what}: its data does not match the checksum stored in the archive (corrupt file)',
                                  shown)
    return data


def is_int(x: object) -> bool:
    """An int as JSON or a pickle gives it, not a bool (True is an int in Python)."""
    return isinstance(x, int) and not isinstance(x, bool)
