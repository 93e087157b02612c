"""Lazy, torch-free readers for `.pth` (PyTorch zip) and `.safetensors` checkpoints.

Opening a file reads only its index (the pickle or the JSON header): names, shapes and dtypes. Each tensor's bytes
are read later, once, straight into a fresh numpy array (`readinto`), and dropped after use, so memory stays at
about one tensor whatever the model size. A `torch.load(mmap=True)` would instead keep every page it touched
resident until the end.

The `.pth` pickle is read by an unpickler that only knows tensors and plain containers, the same guarantee as
`torch.load(weights_only=True)`: a pickle asking for anything else is refused before any of it runs.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import stat
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fla.rwkv7_convert.errors import (
    ConfigError,
    KeyMismatchError,
    NotACheckpointError,
    UnsafeCheckpointError,
    UnsupportedVariantError,
)
from fla.rwkv7_convert.formats.dtypes import CARRIER, FLOATING, TORCH_DTYPE, TORCH_STORAGE, itemsize

# Files that are no PyTorch zip or safetensors at all, told apart by their first bytes.
MAGICS: tuple[tuple[bytes, str, str], ...] = (
    (b'GGUF', 'a GGUF file (llama.cpp)',
     'its tensors are renamed and usually quantized; convert the original RWKV-LM .pth or .safetensors instead'),
    (b'fmgg', 'an rwkv.cpp ggml file (magic "ggmf")',
     'its tensors are converted and usually quantized; convert the original RWKV-LM .pth instead'),
    (b'lmgg', 'a legacy ggml file', 'convert the original RWKV-LM .pth instead'),
)


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

    For a Hugging Face directory, `kind` is 'hf-directory', `files` its weight files and `config` its config.json."""

    def __init__(self, path: Path, kind: str, tree: object, handle, files: list[str] | None = None,
                 config: dict | None = None):
        self.path, self.kind, self.tree, self._handle = path, kind, tree, handle
        self.files, self.config = files or [path.name], config or {}

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
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a loop or a dangling link fails here
    except OSError as e:
        raise NotACheckpointError(f'cannot open: {e.strerror or e}', shown) from e
    if stat.S_ISDIR(mode):
        if (path / CONFIG_FILE).is_file():
            return open_hf_directory(path)
        raise NotACheckpointError('is a directory, expected a .pth or .safetensors file (or a Hugging Face model '
                                  'directory with config.json)', shown)
    if not stat.S_ISREG(mode):  # a FIFO would block forever, a device never ends
        raise NotACheckpointError('is not a regular file (a pipe, socket or device?); expected a .pth or .safetensors file',
                                  shown)
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
        for magic, what, instead in MAGICS:
            if head.startswith(magic):
                raise UnsupportedVariantError(f'this is {what}, not a PyTorch zip or safetensors file: {instead}', shown)
        if path.suffix == '.prefab':
            raise UnsupportedVariantError('this is an ai00 / web-rwkv prefab (a serialized, usually quantized runtime '
                                          'model), not a checkpoint: convert the original RWKV-LM .pth instead', shown)
        if head[:1] == b'\x80':
            raise NotACheckpointError('legacy (pre-1.6) torch.save format is not supported; re-save it with a current torch',
                                      shown)
        raise NotACheckpointError('not a PyTorch zip (.pth) or safetensors file', shown)
    except BaseException:
        handle.close()
        raise


CONFIG_FILE = 'config.json'
# weight files of a Hugging Face directory, in the order transformers prefers them
WEIGHT_INDEXES = ('model.safetensors.index.json', 'pytorch_model.bin.index.json')
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


class _Handles:
    """Closes the files of a multi-file checkpoint together."""

    def __init__(self, checkpoints: list[Checkpoint]):
        self.checkpoints = checkpoints

    def close(self) -> None:
        for c in self.checkpoints:
            c.close()


def _flat(ckpt: Checkpoint, shown: str) -> dict[str, TensorRef]:
    tree = ckpt.tree
    if isinstance(tree, dict) and set(tree) == {'state_dict'}:
        tree = tree['state_dict']
    if not isinstance(tree, dict) or not all(isinstance(v, TensorRef) for v in tree.values()):
        raise NotACheckpointError(f'{ckpt.path.name} is not a flat mapping of names to tensors', shown)
    return tree


def open_hf_directory(path: Path) -> Checkpoint:
    """A Hugging Face model directory: config.json plus `model.safetensors`, `pytorch_model.bin` or shards named by an
    index, read as one flat mapping of tensors (lazily, as single files are)."""
    shown = str(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotACheckpointError(f'cannot read {CONFIG_FILE} ({e})', shown) from e
    if not isinstance(config, dict):
        raise NotACheckpointError(f'{CONFIG_FILE} is not a JSON object', shown)
    opened: list[Checkpoint] = []
    try:
        for index_name in WEIGHT_INDEXES:
            if not (path / index_name).is_file():
                continue
            try:
                weight_map = json.loads((path / index_name).read_text())['weight_map']
                if not isinstance(weight_map, dict):
                    raise TypeError('weight_map is not an object')
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise NotACheckpointError(f'cannot read {index_name} ({e})', shown) from e
            shards = sorted(set(weight_map.values()))
            tensors: dict[str, TensorRef] = {}
            problems = []
            for shard in shards:
                if not isinstance(shard, str) or Path(shard).name != shard:
                    raise NotACheckpointError(f'{index_name} names a shard outside the directory: {shard!r}', shown)
                opened.append(open_checkpoint(path / shard))
                found = _flat(opened[-1], shown)
                for name, ref in found.items():
                    if name in tensors:
                        problems.append(f'tensor {name} is stored in more than one shard')
                    tensors[name] = ref
                problems += [f'{index_name} puts {n} in {shard}, which does not hold it'
                             for n, s in weight_map.items() if s == shard and n not in found]
            if problems:
                raise KeyMismatchError(problems, shown)
            return Checkpoint(path, 'hf-directory', tensors, _Handles(opened), shards, config)
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                opened.append(open_checkpoint(path / name))
                return Checkpoint(path, 'hf-directory', _flat(opened[-1], shown), _Handles(opened), [name], config)
        raise NotACheckpointError(f'no weights: expected {" or ".join(WEIGHT_FILES + WEIGHT_INDEXES[:1])}', shown)
    except BaseException:
        _Handles(opened).close()
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
    raw = _read_exact(handle, 8, np.empty(header_len, np.uint8), 'header', shown).tobytes()
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as e:
        raise NotACheckpointError(f'safetensors header names {e.args[0]!r} twice (ambiguous or lying header)', shown) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise NotACheckpointError(f'safetensors header is not valid JSON ({type(e).__name__})', shown) from None
    if not isinstance(header, dict):
        raise NotACheckpointError('safetensors header is not a JSON object', shown)
    data_start = 8 + header_len
    data_size = size - data_start
    tensors: dict[str, TensorRef] = {}
    spans = []
    for name, info in header.items():
        if name == '__metadata__':
            continue
        dtype, shape, begin, end = _header_entry(name, info, shown)
        expected = math.prod(shape) * itemsize(dtype)
        if not (0 <= begin <= end <= data_size) or end - begin != expected:
            raise NotACheckpointError(
                f'tensor {name!r}: header offsets [{begin}, {end}) do not fit shape {list(shape)} {dtype} '
                f'in {data_size} data bytes (truncated or lying header)', shown)
        spans.append((begin, end, name))
        loader = _safetensors_loader(handle, data_start + begin, shape, dtype, name, shown)
        span = RawSpan(handle.fileno(), data_start + begin, end - begin, 0, f'tensor {name!r}', shown)
        tensors[name] = TensorRef(name, shape, dtype, loader, lambda span=span: span)
    # as the safetensors library requires: the byte ranges tile the data exactly, with no overlap, gap or tail
    spans.sort()
    for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise NotACheckpointError(f'tensors {n0!r} and {n1!r} overlap in the file (lying header)', shown)
        if b1 > e0:
            raise NotACheckpointError(f'{b1 - e0} unclaimed bytes between tensors {n0!r} and {n1!r} (lying header)', shown)
    covered = spans[-1][1] if spans else 0
    if spans and spans[0][0] != 0:
        raise NotACheckpointError(f'{spans[0][0]} unclaimed bytes before tensor {spans[0][2]!r} (lying header)', shown)
    if covered != data_size:
        raise NotACheckpointError(
            f'the header describes {covered} data bytes, the file holds {data_size} (truncated, appended to or lying header)',
            shown)
    return tensors


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _header_entry(name: str, info: object, shown: str) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, each of the exact JSON type the format prescribes."""
    def bad(what: str) -> NotACheckpointError:
        return NotACheckpointError(f'safetensors header entry {name!r} is malformed ({what})', shown)
    if not isinstance(info, dict):
        raise bad('not an object')
    dtype, shape, offsets = info.get('dtype'), info.get('shape'), info.get('data_offsets')
    if not isinstance(dtype, str):
        raise bad('dtype is not a string')
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad('shape is not a list of non-negative integers')
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise bad('data_offsets is not a pair of integers')
    if dtype not in CARRIER:
        raise NotACheckpointError(f'tensor {name!r} has dtype {dtype}, expected one of {", ".join(CARRIER)}', shown)
    return dtype, tuple(shape), offsets[0], offsets[1]


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
    if not isinstance(values, (tuple, list)) or not all(_is_int(v) and v >= 0 for v in values):
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
        if dtype not in CARRIER and dtype != _UNTYPED or not isinstance(key, str) or not _is_int(numel):
            raise NotACheckpointError(f'storage {key!r:.40} has unsupported type {dtype!r:.40}', self.shown)
        return _Storage(key, dtype, numel)


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
    return _check_crc(_read_exact(handle, offset, np.empty(size, np.uint8), record, shown), crc, repr(record), shown).tobytes()


def _check_crc(data: np.ndarray | memoryview, crc: int, what: str, shown: str):
    """Bytes read straight from a record are checked against the zip's CRC-32 (~2 GB/s), so a corrupt record is
    refused instead of converted. torch can save without checksums (CRC 0); those are not checked."""
    raw = data if isinstance(data, memoryview) else memoryview(data).cast('B') if data.size else b''
    if crc and len(raw) and zlib.crc32(raw) != crc:
        raise NotACheckpointError(f'{what}: its data does not match the checksum stored in the archive (corrupt file)',
                                  shown)
    return data


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
                data = _read_exact(handle, start, np.empty(t.shape, carrier), f'tensor {name!r}', shown)
                return _check_crc(data, crc, f'tensor {name!r}', shown) if whole else data
            span = _read_exact(handle, offset + t.offset * carrier.itemsize, np.empty(extent, carrier), f'tensor {name!r}',
                               shown)
            if whole:
                _check_crc(span, crc, f'tensor {name!r}', shown)
        strided = np.lib.stride_tricks.as_strided(span, t.shape, tuple(s * carrier.itemsize for s in t.stride))
        return np.ascontiguousarray(strided)
    return load


def check_span(span: RawSpan | None, view: memoryview) -> None:
    """The CRC-32 check of loaded records, for bytes that are copied without being loaded."""
    if span is not None:
        _check_crc(view, span.crc, span.what, span.shown)


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


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))


def read_config(model_dir: Path) -> dict:
    """config.json of a Hugging Face directory, as a dict; a one-line error when there is none or it is no JSON object."""
    shown = str(model_dir)
    if not model_dir.exists():
        raise NotACheckpointError('no such directory', shown)
    if not model_dir.is_dir():
        raise NotACheckpointError('is a file; expected a Hugging Face model directory (config.json + model.safetensors); '
                                  'for a BlinkDL .pth use convert_to_rwkv7.py', shown)
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f'no {CONFIG_FILE}: not a Hugging Face model directory', shown)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f'cannot read {CONFIG_FILE} ({e})', shown) from e
    if not isinstance(cfg, dict):
        raise ConfigError(f'{CONFIG_FILE} is not a JSON object', shown)
    return cfg
