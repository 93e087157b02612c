"""The index (JSON header) of a .safetensors file, checked entry by entry; each tensor's bytes are read later, once."""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from fla.rwkv7_convert.errors import (
    NotACheckpointError,
)
from fla.rwkv7_convert.formats.checkpoint import RawSpan, TensorRef, is_int, read_exact
from fla.rwkv7_convert.formats.dtypes import CARRIER, itemsize


def read_safetensors_index(handle, size: int, shown: str) -> dict[str, TensorRef]:
    handle.seek(0)
    (header_len,) = struct.unpack('<Q', handle.read(8))
    if header_len > min(size - 8, 256 << 20):
        raise NotACheckpointError(f'safetensors header claims {header_len} bytes, the file has {size}', shown)
    raw = read_exact(handle, 8, np.empty(header_len, np.uint8), 'header', shown).tobytes()
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


def _header_entry(name: str, info: object, shown: str) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, each of the exact JSON type the format prescribes."""
    def bad(what: str) -> NotACheckpointError:
        return NotACheckpointError(f'safetensors header entry {name!r} is malformed ({what})', shown)
    if not isinstance(info, dict):
        raise bad('not an object')
    dtype, shape, offsets = info.get('dtype'), info.get('shape'), info.get('data_offsets')
    if not isinstance(dtype, str):
        raise bad('dtype is not a string')
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        raise bad('shape is not a list of non-negative integers')
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o) for o in offsets):
        raise bad('data_offsets is not a pair of integers')
    if dtype not in CARRIER:
        raise NotACheckpointError(f'tensor {name!r} has dtype {dtype}, expected one of {", ".join(CARRIER)}', shown)
    return dtype, tuple(shape), offsets[0], offsets[1]


def _safetensors_loader(handle, offset: int, shape: tuple[int, ...], dtype: str, name: str, shown: str):
    def load() -> np.ndarray:
        return read_exact(handle, offset, np.empty(shape, CARRIER[dtype]), f'tensor {name!r}', shown)
    return load
