"""Lazy, torch-free readers for `.pth` (PyTorch zip) and `.safetensors` checkpoints.

Opening a file reads only its index (the pickle or the JSON header): names, shapes and dtypes. Each tensor's bytes
are read later, once, straight into a fresh numpy array (`readinto`), and dropped after use, so memory stays at
about one tensor whatever the model size. A `torch.load(mmap=True)` would instead keep every page it touched
resident until the end.

The `.pth` pickle is read by an unpickler that only knows tensors and plain containers, the same guarantee as
`torch.load(weights_only=True)`: a pickle asking for anything else is refused before any of it runs.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fla.rwkv7_convert.dtypes import CARRIER, TORCH_DTYPE, TORCH_STORAGE, itemsize
from fla.rwkv7_convert.errors import NotACheckpointError, UnsafeCheckpointError


@dataclass(frozen=True)
class TensorRef:
    """A tensor in a file: its shape and dtype now, its data on `load()`."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors name, e.g. 'BF16'
    loader: Callable[[], np.ndarray] = field(repr=False, compare=False)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)

    def load(self) -> np.ndarray:
        """The data as a C-contiguous carrier array of `shape` (bf16 as uint16 bit patterns)."""
        return self.loader()

    def renamed(self, name: str) -> TensorRef:
        return TensorRef(name, self.shape, self.dtype, self.loader)


class Checkpoint:
    """An open checkpoint: `tree` is what the file holds, with `TensorRef` leaves (usually a flat dict)."""

    def __init__(self, path: Path, kind: str, tree: object, handle):
        self.path, self.kind, self.tree, self._handle = path, kind, tree, handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a `.pth`/`.pt`/`.bin` (PyTorch zip) or `.safetensors` file by its content, not its extension."""
    path = Path(path)
    shown = str(path)
    if not os.path.lexists(path):
        raise NotACheckpointError('no such file', shown)
    if path.is_dir():
        hf = (path / 'config.json').exists()
        hint = ' (a Hugging Face model directory? convert_from_fla_rwkv7.py reads those)' if hf else ''
        raise NotACheckpointError(f'is a directory, expected a .pth or .safetensors file{hint}', shown)
    try:
        handle = open(path, 'rb', buffering=0)
    except OSError as e:
        raise NotACheckpointError(f'cannot open: {e.strerror or e}', shown) from e
    try:
        head = handle.read(16)
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise NotACheckpointError('empty file (0 bytes)', shown)
        if head.startswith(b'PK\x03\x04'):
            tree = _read_pth_index(handle, shown)
            return Checkpoint(path, 'pth', tree, handle)
        if len(head) >= 9 and head[8:9] == b'{':
            tree = _read_safetensors_index(handle, size, shown)
            return Checkpoint(path, 'safetensors', tree, handle)
        if head[:1] == b'\x80':
            raise NotACheckpointError('legacy (pre-1.6) torch.save format is not supported; re-save it with a current torch',
                                      shown)
        raise NotACheckpointError('not a PyTorch zip (.pth) or safetensors file', shown)
    except BaseException:
        handle.close()
        raise


def _read_exact(handle, offset: int, out: np.ndarray, where: str, shown: str) -> np.ndarray:
    view = memoryview(out).cast('B')
    done = 0
    handle.seek(offset)
    while done < len(view):
        n = handle.readinto(view[done:])
        if not n:
            raise NotACheckpointError(f'{where}: file ends early (truncated or corrupt)', shown)
        done += n
    return out


# ----------------------------------------------------------------------------------------------------- safetensors

def _read_safetensors_index(handle, size: int, shown: str) -> dict[str, TensorRef]:
    handle.seek(0)
    (header_len,) = struct.unpack('<Q', handle.read(8))
    if header_len > min(size - 8, 256 << 20):
        raise NotACheckpointError(f'safetensors header claims {header_len} bytes, the file has {size}', shown)
    try:
        header = json.loads(_read_exact(handle, 8, np.empty(header_len, np.uint8), 'header', shown).tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotACheckpointError(f'safetensors header is not valid JSON ({e})', shown) from e
    if not isinstance(header, dict):
        raise NotACheckpointError('safetensors header is not a JSON object', shown)
    data_start = 8 + header_len
    data_size = size - data_start
    tensors: dict[str, TensorRef] = {}
    spans = []
    for name, info in header.items():
        if name == '__metadata__':
            continue
        try:
            dtype, shape, (begin, end) = info['dtype'], tuple(int(d) for d in info['shape']), info['data_offsets']
        except (KeyError, TypeError, ValueError) as e:
            raise NotACheckpointError(f'safetensors header entry {name!r} is malformed', shown) from e
        if dtype not in CARRIER:
            raise NotACheckpointError(f'tensor {name!r} has dtype {dtype}, expected one of {", ".join(CARRIER)}', shown)
        expected = int(np.prod(shape, dtype=np.int64)) * itemsize(dtype)
        if not (0 <= begin <= end <= data_size) or end - begin != expected:
            raise NotACheckpointError(
                f'tensor {name!r}: header offsets [{begin}, {end}) do not fit shape {list(shape)} {dtype} '
                f'in {data_size} data bytes (truncated or lying header)', shown)
        spans.append((begin, end, name))
        loader = _safetensors_loader(handle, data_start + begin, shape, dtype, name, shown)
        tensors[name] = TensorRef(name, shape, dtype, loader)
    spans.sort()
    for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise NotACheckpointError(f'tensors {n0!r} and {n1!r} overlap in the file (lying header)', shown)
    return tensors


def _safetensors_loader(handle, offset: int, shape: tuple[int, ...], dtype: str, name: str, shown: str):
    def load() -> np.ndarray:
        return _read_exact(handle, offset, np.empty(shape, CARRIER[dtype]), f'tensor {name!r}', shown)
    return load


# ----------------------------------------------------------------------------------------------------------- .pth

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


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _PthTensor:
    return _PthTensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *unused):
    return data


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Knows tensors, storages and plain containers; anything else is refused, never imported or called."""

    ALLOWED = {
        ('collections', 'OrderedDict'): OrderedDict,
        ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
        ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
        ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
        ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
        ('torch', 'device'): str,
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
        raise UnsafeCheckpointError(
            f'the pickle asks for {module}.{name}, which is neither a tensor nor a plain container; '
            'refused as torch.load(weights_only=True) would (it could run code)', self.shown)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
            raise NotACheckpointError(f'unknown persistent id {pid!r:.80} in the pickle', self.shown)
        _, dtype, key, _location, numel = pid
        if dtype not in CARRIER:
            raise NotACheckpointError(f'storage {key} has unsupported type {dtype!r}', self.shown)
        return _Storage(str(key), dtype, int(numel))


def _read_pth_index(handle, shown: str) -> object:
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
    if byteorder in names and archive.read(byteorder).strip() not in (b'little', b''):
        raise NotACheckpointError('big-endian torch archives are not supported', shown)
    try:
        with archive.open(pickles[0]) as f:
            tree = _TensorsOnlyUnpickler(f, shown).load()
    except (UnsafeCheckpointError, NotACheckpointError):
        raise
    except Exception as e:
        raise NotACheckpointError(f'cannot read the pickle in the archive ({type(e).__name__}: {e})', shown) from e
    return _attach_loaders(tree, archive, root, handle, shown, path=())


def _attach_loaders(node, archive: zipfile.ZipFile, root: str, handle, shown: str, path: tuple) -> object:
    if isinstance(node, _PthTensor):
        name = '.'.join(str(p) for p in path)
        return TensorRef(name, node.shape, node.storage.dtype, _pth_loader(node, archive, root, handle, name, shown))
    if isinstance(node, dict):
        return type(node)((k, _attach_loaders(v, archive, root, handle, shown, path + (k,))) for k, v in node.items())
    if isinstance(node, (list, tuple)):
        return type(node)(_attach_loaders(v, archive, root, handle, shown, path + (i,)) for i, v in enumerate(node))
    return node


def _record_offset(archive: zipfile.ZipFile, record: str, handle, shown: str) -> tuple[int, int, bool]:
    """(data offset, size, stored uncompressed) of a zip member: torch stores records uncompressed."""
    try:
        info = archive.getinfo(record)
    except KeyError:
        raise NotACheckpointError(f'storage record {record!r} is missing from the archive', shown) from None
    handle.seek(info.header_offset)
    local = handle.read(30)
    if len(local) < 30 or local[:4] != b'PK\x03\x04':
        raise NotACheckpointError(f'storage record {record!r} has a corrupt zip header', shown)
    name_len, extra_len = struct.unpack('<HH', local[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size, info.compress_type == zipfile.ZIP_STORED


def _pth_loader(t: _PthTensor, archive: zipfile.ZipFile, root: str, handle, name: str, shown: str):
    def load() -> np.ndarray:
        carrier = CARRIER[t.storage.dtype]
        record = f'{root}data/{t.storage.key}'
        offset, size, stored = _record_offset(archive, record, handle, shown)
        numel = int(np.prod(t.shape, dtype=np.int64))
        if numel == 0:
            return np.empty(t.shape, carrier)
        extent = 1 + sum((d - 1) * s for d, s in zip(t.shape, t.stride))
        if t.offset + extent > t.storage.numel or (t.offset + extent) * carrier.itemsize > size:
            raise NotACheckpointError(f'tensor {name!r} reaches past its storage (truncated or corrupt)', shown)
        if not stored:
            raw = np.frombuffer(archive.read(record), carrier)
            span = raw[t.offset:t.offset + extent]
        else:
            expected = contiguous_strides(t.shape)
            contiguous = all(s == e for d, s, e in zip(t.shape, t.stride, expected) if d != 1)
            if contiguous:
                start = offset + t.offset * carrier.itemsize
                return _read_exact(handle, start, np.empty(t.shape, carrier), f'tensor {name!r}', shown)
            span = _read_exact(handle, offset + t.offset * carrier.itemsize, np.empty(extent, carrier), f'tensor {name!r}',
                               shown)
        strided = np.lib.stride_tricks.as_strided(span, t.shape, tuple(s * carrier.itemsize for s in t.stride))
        return np.ascontiguousarray(strided)
    return load


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))
