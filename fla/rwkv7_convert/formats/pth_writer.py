"""Write `torch.save`-compatible `.pth` files without torch, one tensor at a time (atomic.py puts them in place).

A `torch.save` file is a zip archive whose members are stored uncompressed: `archive/data.pkl` (a pickle of the
state dict in which every tensor is a call to `torch._utils._rebuild_tensor_v2` on a storage named by a
persistent id), one record `archive/data/<key>` per storage holding its raw little-endian bytes, and the small
records `.format_version`, `.storage_alignment`, `byteorder`, `version` and `.data/serialization_id`.

The layout written here follows the one torch's writer (miniz, called from `PyTorchStreamWriter`) produces, so that
every reader of torch files accepts it, including `torch.load(mmap=True)` and torch's opt-in
`calculate_storage_offsets`, which predicts record offsets instead of reading them:

* each member's local header has general-purpose flags 0x0808 (sizes in a data descriptor, UTF-8 names), zero CRC
  and sizes, and an extra field `FB` of 'Z' bytes that puts the member's data on a 64-byte boundary;
* the data is followed by a data descriptor (`PK\\x07\\x08`, CRC-32, sizes: 16 bytes, or 24 with 8-byte sizes);
* members at offsets >= 0xFFFFFFFF or with sizes >= 0xFFFFFFFF get ZIP64 extra fields (local header: before the
  padding, as miniz puts them; central directory: the fields that overflow);
* a ZIP64 end-of-central-directory record and locator precede the classic end record, always.

Because the pickle only needs each tensor's dtype and shape, it is written first and the tensors follow as they are
produced: memory holds one tensor, never the model. The pickle is emitted opcode by opcode (protocol 2, as torch
uses), so writing needs neither torch nor any class that would have to be importable.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.checkpoint import contiguous_strides
from fla.rwkv7_convert.formats.dtypes import TORCH_STORAGE, itemsize
from fla.rwkv7_convert.formats.outputs import OutTensor, Writer

ALIGNMENT = 64  # torch's default `storage_alignment`
ARCHIVE = 'archive'  # the root folder torch uses inside the zip for file objects
ZIP64_LIMIT = 0xFFFFFFFF  # miniz switches a member to ZIP64 fields at this size or offset (tests lower it)
_MAX32 = 0xFFFFFFFF  # the value a 32-bit field holds when its ZIP64 counterpart has the real one
_FLAGS = 0x0808  # bit 3: sizes in a data descriptor; bit 11: UTF-8 names
_STORAGE_OF = {v: k for k, v in TORCH_STORAGE.items()}  # 'BF16' -> 'BFloat16Storage'


# ------------------------------------------------------------------------------------------------------------ pickle

def _int(n: int) -> bytes:
    if 0 <= n < 0x100:
        return b'K' + bytes((n,))
    if 0 <= n < 0x10000:
        return b'M' + struct.pack('<H', n)
    if -0x80000000 <= n < 0x80000000:
        return b'J' + struct.pack('<i', n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, 'little', signed=True)  # LONG1: two's complement, little-endian
    return b'\x8a' + bytes((len(raw),)) + raw


def _str(s: str) -> bytes:
    raw = s.encode('utf-8')
    return b'X' + struct.pack('<I', len(raw)) + raw


def _tuple(items: list[bytes]) -> bytes:
    small = {0: b')', 1: b'\x85', 2: b'\x86', 3: b'\x87'}
    if len(items) in small:
        return b''.join(items) + small[len(items)]
    return b'(' + b''.join(items) + b't'


def _global(module: str, name: str) -> bytes:
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def state_dict_pickle(tensors: list[OutTensor]) -> bytes:
    """The `data.pkl` of a `torch.save(dict)` whose tensor i lives alone in storage `str(i)`, contiguous, on CPU."""
    out = [b'\x80\x02', b'}']  # PROTO 2, EMPTY_DICT
    if tensors:
        out.append(b'(')  # MARK for SETITEMS
    for key, t in enumerate(tensors):
        if t.dtype not in _STORAGE_OF:
            raise ConversionError(f'internal error: {t.name} has dtype {t.dtype}, which has no torch storage type')
        persistent_id = _tuple([_str('storage'), _global('torch', _STORAGE_OF[t.dtype]), _str(str(key)), _str('cpu'),
                                _int(int(np.prod(t.shape, dtype=np.int64)))])
        args = [
            persistent_id + b'Q',  # BINPERSID
            _int(0),  # storage offset
            _tuple([_int(d) for d in t.shape]),
            _tuple([_int(s) for s in contiguous_strides(t.shape)]),
            b'\x89',  # requires_grad: NEWFALSE
            _global('collections', 'OrderedDict') + b')R',  # backward hooks: OrderedDict()
        ]
        out += [_str(t.name), _global('torch._utils', '_rebuild_tensor_v2'), b'(', *args, b't', b'R']
    if tensors:
        out.append(b'u')  # SETITEMS
    out.append(b'.')  # STOP
    return b''.join(out)


# --------------------------------------------------------------------------------------------------------------- zip

@dataclass
class _Member:
    name: bytes
    offset: int
    size: int
    crc: int

    @property
    def zip64(self) -> bool:
        return self.offset >= ZIP64_LIMIT or self.size >= ZIP64_LIMIT


class _ZipStream:
    """Append stored (uncompressed) members to a file, each aligned like torch's writer aligns them."""

    def __init__(self, f, root: str):
        self.f, self.root, self.pos, self.members = f, root, 0, []

    def _write(self, data) -> None:
        self.f.write(data)
        self.pos += len(memoryview(data).cast('B'))

    def begin(self, name: str, size: int) -> _Member:
        member = _Member(f'{self.root}/{name}'.encode(), self.pos, size, 0)
        zip64 = b''
        if member.zip64:
            fields = (struct.pack('<QQ', size, size) if size >= ZIP64_LIMIT else b'') + \
                (struct.pack('<Q', member.offset) if member.offset >= ZIP64_LIMIT else b'')
            zip64 = struct.pack('<HH', 0x0001, len(fields)) + fields
        start = self.pos + 30 + len(member.name) + len(zip64) + 4  # where data would start with an empty FB field
        pad = -start % ALIGNMENT
        extra = zip64 + b'FB' + struct.pack('<H', pad) + b'Z' * pad
        header = struct.pack('<4sHHHHHIIIHH', b'PK\x03\x04', 0, _FLAGS, 0, 0, 0, 0, 0, 0, len(member.name), len(extra))
        self._write(header + member.name + extra)
        if self.pos % ALIGNMENT:
            raise AssertionError('internal error: zip member data is not aligned')
        return member

    def data(self, member: _Member, chunk) -> None:
        member.crc = zlib.crc32(chunk, member.crc)
        self._write(chunk)

    def end(self, member: _Member, written: int) -> None:
        if written != member.size:
            raise ConversionError(f'internal error: {member.name.decode()} wrote {written} bytes, planned {member.size}')
        if member.zip64:
            self._write(struct.pack('<4sIQQ', b'PK\x07\x08', member.crc, member.size, member.size))
        else:
            self._write(struct.pack('<4sIII', b'PK\x07\x08', member.crc, member.size, member.size))
        self.members.append(member)

    def record(self, name: str, data: bytes) -> None:
        member = self.begin(name, len(data))
        self.data(member, data)
        self.end(member, len(data))

    def finish(self) -> None:
        cd_start = self.pos
        for m in self.members:
            fields = b''
            size32, offset32 = m.size, m.offset
            if m.size >= ZIP64_LIMIT:
                fields += struct.pack('<QQ', m.size, m.size)
                size32 = _MAX32
            if m.offset >= ZIP64_LIMIT:
                fields += struct.pack('<Q', m.offset)
                offset32 = _MAX32
            extra = struct.pack('<HH', 0x0001, len(fields)) + fields if fields else b''
            version = 45 if fields else 0
            self._write(struct.pack('<4sHHHHHHIIIHHHHHII', b'PK\x01\x02', version, version, _FLAGS, 0, 0, 0, m.crc,
                                    size32, size32, len(m.name), len(extra), 0, 0, 0, 0, offset32) + m.name + extra)
        cd_size = self.pos - cd_start
        n = len(self.members)
        eocd64 = self.pos
        self._write(struct.pack('<4sQHHIIQQQQ', b'PK\x06\x06', 44, 45, 45, 0, 0, n, n, cd_size, cd_start))
        self._write(struct.pack('<4sIQI', b'PK\x06\x07', 0, eocd64, 1))
        self._write(struct.pack('<4sHHHHIIH', b'PK\x05\x06', 0, 0, min(n, 0xFFFF), min(n, 0xFFFF),
                                min(cd_size, _MAX32), min(cd_start, _MAX32), 0))


def write_pth(path: str | os.PathLike, tensors: list[OutTensor],
              on_tensor: Callable[[OutTensor], None] | None = None) -> None:
    """Write `tensors` to `path` as `torch.save({name: tensor, ...})` would, in order, one tensor in memory at a time."""
    with open(path, 'wb') as f:
        _write_pth(f, tensors, on_tensor)
        f.flush()
        os.fsync(f.fileno())


def _write_pth(f, tensors: list[OutTensor], on_tensor: Callable[[OutTensor], None] | None) -> None:
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ConversionError('internal error: duplicate tensor names')
    pickle_bytes = state_dict_pickle(tensors)
    z = _ZipStream(f, ARCHIVE)
    z.record('data.pkl', pickle_bytes)
    z.record('.format_version', b'1')
    z.record('.storage_alignment', str(ALIGNMENT).encode())
    z.record('byteorder', b'little')
    for key, t in enumerate(tensors):
        member = z.begin(f'data/{key}', t.nbytes)
        data = t.produce()
        if data.shape != t.shape or data.dtype.itemsize != itemsize(t.dtype) or not data.flags.c_contiguous:
            raise ConversionError(f'internal error: {t.name} is {data.shape} {data.dtype}, planned {t.shape} {t.dtype}')
        raw = memoryview(data).cast('B')
        z.data(member, raw)
        z.end(member, len(raw))
        del data, raw
        if on_tensor:
            on_tensor(t)
    z.record('version', b'3\n')
    # torch writes a random id here; a digest of the pickle keeps our output reproducible
    digest = int.from_bytes(hashlib.sha256(pickle_bytes).digest(), 'big') % 10**40
    z.record('.data/serialization_id', f'{digest:040d}'.encode())
    z.finish()


WRITER = Writer('pth', ('.pth',), "torch.save's zip format: what RWKV-LM and BlinkDL's rwkv package load",
                lambda path, tensors, metadata, on_tensor: write_pth(path, tensors, on_tensor=on_tensor),
                suffix_note="BlinkDL's rwkv package appends .pth to the name it is given")
