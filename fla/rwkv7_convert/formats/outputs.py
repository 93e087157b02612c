"""What every output format takes: `OutTensor` (a tensor to write, produced on demand) and the `Writer` interface.

A single-file output format is one module that defines a `Writer` and one line in formats/writers.py's `WRITERS`;
the export direction (convert/to_blinkdl.py), the command line's `--format` and the docs read that registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fla.rwkv7_convert.formats.checkpoint import RawSpan
from fla.rwkv7_convert.formats.dtypes import itemsize


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


# write(path, tensors in order, metadata (formats without a metadata block ignore it), on_tensor after each)
WriteFn = Callable[[str | os.PathLike, list[OutTensor], dict[str, str], Callable[[OutTensor], None] | None], None]


@dataclass(frozen=True)
class Writer:
    name: str  # the --format value
    suffixes: tuple[str, ...]  # the names it is usually given; the first one picks it when --format is not given
    what: str  # one line for --help and the docs
    write: WriteFn
    suffix_note: str = ''  # why a name without one of `suffixes` matters, warned about when it happens
