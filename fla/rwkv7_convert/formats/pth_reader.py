"""The index of a PyTorch zip (.pth): its pickle read by an unpickler that only knows tensors and plain containers (the
`weights_only=True` guarantee), and each tensor's record located (offset, CRC) for a later single read."""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from fla.rwkv7_convert.errors import (
    NotACheckpointError,
    UnsafeCheckpointError,
)
from fla.rwkv7_convert.formats.checkpoint import RawSpan, TensorRef, check_crc, contiguous_strides, is_int, read_exact
from fla.rwkv7_convert.formats.dtypes import CARRIER, FLOATING, TORCH_DTYPE, TORCH_STORAGE, itemsize


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _PthTensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _BadTensor(Exception):
    """A tensor record the reader refuses; re-raised as NotACheckpointError with the file's name."""


@dataclass(frozen=True)
class _Unsupported:
    """An inert stand-in for a torch storage class or dtype the converter does not handle (complex, float8, ...)."""

    name: str


_UNTYPED = 'untyped'  # torch >= 2.x writes new dtypes as an UntypedStorage plus the dtype in _rebuild_tensor_v3
# torch dtype names that only ever denote a dtype; resolved to inert markers, never to anything callable
_TORCH_DTYPE_NAME = re.compile(r'^(float8_\w+|float4_\w+|u?int\d+|complex\d+|c(float|double|half)|q(u?int)\w*|bits\w+)$')


def _ints(values, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(is_int(v) and v >= 0 for v in values):
        raise _BadTensor(f'a tensor has a malformed {what} {values!r:.60}')
    return tuple(values)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _PthTensor:
    if not isinstance(storage, _Storage):
        raise _BadTensor(f'a tensor is built from {type(storage).__name__}, not a storage')
    if storage.dtype == _UNTYPED:
        raise _BadTensor('a tensor over an untyped storage has no dtype')
    (offset,) = _ints((storage_offset,), 'storage offset')
    size, stride = _ints(size, 'size'), _ints(stride, 'stride')
    if len(size) != len(stride):
        raise _BadTensor(f'a tensor has size {list(size)} but stride {list(stride)}')
    return _PthTensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *unused) -> _PthTensor:
    if isinstance(dtype, _Unsupported):
        raise _BadTensor(f'a tensor has dtype torch.{dtype.name}, which is not supported '
                         f'(RWKV-7 weights are one of {", ".join(FLOATING)})')
    if not isinstance(storage, _Storage) or dtype not in CARRIER:
        raise _BadTensor('a tensor record is malformed')
    if storage.dtype == _UNTYPED:
        storage = _Storage(storage.key, dtype, storage.numel // itemsize(dtype))
    elif storage.dtype != dtype:
        raise _BadTensor(f'a tensor of dtype {dtype} is built on a {storage.dtype} storage')
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


def _latin1_bytes(text, encoding='latin1'):
    """How protocol-2 pickles spell a bytes object (`_codecs.encode(text, 'latin1')`); other codecs refused."""
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise _BadTensor(f'the pickle asks for _codecs.encode with {encoding!r:.20}, not a plain bytes object')
    return text.encode('latin1')


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Knows tensors, storages and plain containers; anything else is refused, never imported or called."""

    ALLOWED = {
        ('collections', 'OrderedDict'): OrderedDict,
        ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
        ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
        ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
        ('torch.storage', 'UntypedStorage'): _UNTYPED,
        ('torch', 'UntypedStorage'): _UNTYPED,
        ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
        ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
        ('torch', 'device'): str,
        ('_codecs', 'encode'): _latin1_bytes,
    }

    def __init__(self, data, shown: str):
        super().__init__(data)
        self.shown = shown

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == 'torch' and name in TORCH_STORAGE:
            return TORCH_STORAGE[name]
        if module == 'torch' and name in TORCH_DTYPE:
            return TORCH_DTYPE[name]
        if module == 'torch' and (name.endswith('Storage') and name.isidentifier() or _TORCH_DTYPE_NAME.match(name)):
            return _Unsupported(name)  # complex, float8, uint16, quantized...: refused with a clear reason below
        raise UnsafeCheckpointError(
            f'the pickle asks for {module}.{name}, which is neither a tensor nor a plain container; '
            'refused as torch.load(weights_only=True) would (it could run code)', self.shown)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
            raise NotACheckpointError(f'unknown persistent id {pid!r:.80} in the pickle', self.shown)
        _, dtype, key, _location, numel = pid
        if isinstance(dtype, _Unsupported):
            raise NotACheckpointError(f'a tensor is stored as torch.{dtype.name}, which is not a supported dtype '
                                      f'(RWKV-7 weights are one of {", ".join(FLOATING)})', self.shown)
        if dtype not in CARRIER and dtype != _UNTYPED or not isinstance(key, str) or not is_int(numel):
            raise NotACheckpointError(f'storage {key!r:.40} has unsupported type {dtype!r:.40}', self.shown)
        return _Storage(key, dtype, numel)


def read_pth_index(handle, shown: str) -> object:
    try:
        archive = zipfile.ZipFile(handle)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise NotACheckpointError(f'truncated or corrupt PyTorch zip ({e})', shown) from e
    pickles = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pickles) != 1:
        raise NotACheckpointError('zip file is not a torch.save archive (no data.pkl)', shown)
    root = pickles[0][: -len('data.pkl')]
    byteorder = root + 'byteorder'
    try:
        if byteorder in names and _read_record(archive, byteorder, handle, shown).strip() not in (b'little', b''):
            raise NotACheckpointError('big-endian torch archives are not supported', shown)
        tree = _TensorsOnlyUnpickler(io.BytesIO(_read_record(archive, pickles[0], handle, shown)), shown).load()
    except (UnsafeCheckpointError, NotACheckpointError):
        raise
    except _BadTensor as e:
        raise NotACheckpointError(str(e), shown) from None
    except Exception as e:
        raise NotACheckpointError(f'cannot read the pickle in the archive ({type(e).__name__}: {e})', shown) from e
    return _Attach(archive, root, handle, shown).node(tree, ())


MAX_NESTING = 32  # wrappers in real checkpoints nest 1-3 deep


class _Attach:
    """Replaces each pickled tensor by a TensorRef. Shared containers are converted once (a pickle can reference
    one list from many places, which walked as a tree grows exponentially); cycles and deep nesting are refused."""

    def __init__(self, archive: zipfile.ZipFile, root: str, handle, shown: str):
        self.archive, self.root, self.handle, self.shown = archive, root, handle, shown
        self.done: dict[int, object] = {}
        self.active: set[int] = set()

    def node(self, node, path: tuple) -> object:
        if isinstance(node, _PthTensor):
            name = '.'.join(str(p) for p in path)
            if math.prod(node.shape) > node.storage.numel:
                raise NotACheckpointError(
                    f'tensor {name!r} has {math.prod(node.shape)} elements but its storage only {node.storage.numel} '
                    '(a broadcast view or a corrupt record); re-save it with .contiguous()', self.shown)
            return TensorRef(name, node.shape, node.storage.dtype,
                             _pth_loader(node, self.archive, self.root, self.handle, name, self.shown),
                             _pth_spanner(node, self.archive, self.root, self.handle, name, self.shown))
        if not isinstance(node, (dict, list, tuple)):
            return node
        if id(node) in self.done:
            return self.done[id(node)]
        if id(node) in self.active:
            raise NotACheckpointError('the pickle holds a container that contains itself; not a state dict', self.shown)
        if len(path) >= MAX_NESTING:
            raise NotACheckpointError(f'the pickle nests containers more than {MAX_NESTING} deep; not a state dict',
                                      self.shown)
        self.active.add(id(node))
        if isinstance(node, dict):
            out = type(node)((k, self.node(v, path + (k,))) for k, v in node.items())
        else:
            out = type(node)(self.node(v, path + (i,)) for i, v in enumerate(node))
        self.active.discard(id(node))
        self.done[id(node)] = out
        return out


def _record_offset(archive: zipfile.ZipFile, record: str, handle, shown: str) -> tuple[int, int, bool, int]:
    """(data offset, size, stored uncompressed, CRC-32) of a zip member: torch stores records uncompressed."""
    try:
        info = archive.getinfo(record)
    except KeyError:
        raise NotACheckpointError(f'storage record {record!r} is missing from the archive', shown) from None
    handle.seek(info.header_offset)
    local = handle.read(30)
    if len(local) < 30 or local[:4] != b'PK\x03\x04':
        raise NotACheckpointError(f'storage record {record!r} has a corrupt zip header', shown)
    name_len, extra_len = struct.unpack('<HH', local[26:30])
    return (info.header_offset + 30 + name_len + extra_len, info.file_size, info.compress_type == zipfile.ZIP_STORED,
            info.CRC)


def _read_record(archive: zipfile.ZipFile, record: str, handle, shown: str) -> bytes:
    """A small record's bytes. Not through zipfile, which fails on the zero CRCs that torch writes when saving
    with `torch.serialization.set_crc32_options(False)` (torch.load reads those files)."""
    offset, size, stored, crc = _record_offset(archive, record, handle, shown)
    if not stored:
        return archive.read(record)
    return check_crc(read_exact(handle, offset, np.empty(size, np.uint8), record, shown), crc, repr(record), shown).tobytes()


def _is_contiguous(t: _PthTensor) -> bool:
    """Row-major strides, ignoring unit dimensions (whose stride is arbitrary)."""
    return all(s == e for d, s, e in zip(t.shape, t.stride, contiguous_strides(t.shape)) if d != 1)


def _pth_loader(t: _PthTensor, archive: zipfile.ZipFile, root: str, handle, name: str, shown: str):
    def load() -> np.ndarray:
        carrier = CARRIER[t.storage.dtype]
        record = f'{root}data/{t.storage.key}'
        offset, size, stored, crc = _record_offset(archive, record, handle, shown)
        numel = math.prod(t.shape)
        if numel == 0:
            return np.empty(t.shape, carrier)
        extent = 1 + sum((d - 1) * s for d, s in zip(t.shape, t.stride))
        if t.offset + extent > t.storage.numel or (t.offset + extent) * carrier.itemsize > size:
            raise NotACheckpointError(f'tensor {name!r} reaches past its storage (truncated or corrupt)', shown)
        if not stored:
            try:
                raw = np.frombuffer(archive.read(record), carrier)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
                raise NotACheckpointError(f'tensor {name!r}: cannot read its record ({type(e).__name__}: {e})',
                                          shown) from None
            span = raw[t.offset:t.offset + extent]
        else:
            whole = t.offset == 0 and extent * carrier.itemsize == size  # the tensor spans its whole record
            if _is_contiguous(t):
                start = offset + t.offset * carrier.itemsize
                data = read_exact(handle, start, np.empty(t.shape, carrier), f'tensor {name!r}', shown)
                return check_crc(data, crc, f'tensor {name!r}', shown) if whole else data
            span = read_exact(handle, offset + t.offset * carrier.itemsize, np.empty(extent, carrier), f'tensor {name!r}',
                               shown)
            if whole:
                check_crc(span, crc, f'tensor {name!r}', shown)
        strided = np.lib.stride_tricks.as_strided(span, t.shape, tuple(s * carrier.itemsize for s in t.stride))
        return np.ascontiguousarray(strided)
    return load


def _pth_spanner(t: _PthTensor, archive: zipfile.ZipFile, root: str, handle, name: str, shown: str):
    def span() -> RawSpan | None:
        carrier = CARRIER[t.storage.dtype]
        record = f'{root}data/{t.storage.key}'
        offset, size, stored, crc = _record_offset(archive, record, handle, shown)
        numel = math.prod(t.shape)
        if not stored or not numel or not _is_contiguous(t) or (t.offset + numel) * carrier.itemsize > size:
            return None  # the loader handles (and reports) everything else
        whole = t.offset == 0 and numel * carrier.itemsize == size
        return RawSpan(handle.fileno(), offset + t.offset * carrier.itemsize, numel * carrier.itemsize,
                       crc if whole else 0, f'tensor {name!r}', shown)
    return span
