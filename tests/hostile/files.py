"""Broken files inside a directory: lying safetensors headers, broken shard indexes, hostile tuned-state files (the
directory's rwkv7_state.safetensors and a bare --state file)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hostile.directories import C, write_dir


def zip_boundaries(data: bytes) -> list[int]:
    """Start of every local record, its data and its end; every central directory entry; the end records."""
    points = {0, len(data)}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            name_len, extra_len = struct.unpack('<HH', data[info.header_offset + 26:info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            points |= {info.header_offset, start, start + info.compress_size}
    for signature in (b'PK\x01\x02', b'PK\x05\x06', b'PK\x06\x06', b'PK\x06\x07'):
        points |= {m.start() for m in re.finditer(re.escape(signature), data)}
    return sorted(points)


def safetensors_boundaries(data: bytes) -> list[int]:
    n = int.from_bytes(data[:8], 'little')
    points = {0, 8, 8 + n, len(data)}
    for name, info in json.loads(data[8:8 + n]).items():
        if name != '__metadata__':
            points |= {8 + n + o for o in info['data_offsets']}
    return sorted(points)


def cut_points(data: bytes, boundaries) -> list[int]:
    """Where to truncate a file: one byte either side of each of its `boundaries(data)`, and each of the first 17."""
    return sorted({c + d for c in boundaries(data) for d in (-1, 0, 1) if 0 <= c + d < len(data)} | set(range(17)))


def edit_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], 'little')
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    first = next(k for k in header if k != '__metadata__')
    new = edit(header, first, body)
    text, body = new if isinstance(new, tuple) else (json.dumps(header).encode(), body)
    path.write_bytes(len(text).to_bytes(8, 'little') + text + body)


LIES = {
    'range one element short': lambda h, f, b: h[f].__setitem__('data_offsets', [h[f]['data_offsets'][0],
                                                                                 h[f]['data_offsets'][1] - 2]),
    'shape claims more rows': lambda h, f, b: h[f].__setitem__('shape', [h[f]['shape'][0] + 1, *h[f]['shape'][1:]]),
    'dtype F32 for bf16 bytes': lambda h, f, b: h[f].__setitem__('dtype', 'F32'),
    'dtype I16 for bf16 bytes': lambda h, f, b: h[f].__setitem__('dtype', 'I16'),
    'negative offset': lambda h, f, b: h[f].__setitem__('data_offsets', [-2, 0]),
    'bytes appended': lambda h, f, b: (json.dumps(h).encode(), b + b'tail'),
    'header a JSON array': lambda h, f, b: (b'[1]', b),
    'header not JSON': lambda h, f, b: (b'{"model.norm.weight": ', b),
    'a tensor listed twice': lambda h, f, b: (('{"' + f + '": ' + json.dumps(h[f]) + ', ' + json.dumps(h)[1:]).encode(), b),
    'header length beyond the file': None,
}


def tell_lie(path: Path, lie: str) -> None:
    """Rewrites the safetensors file at `path` so that its header tells `lie` (a key of LIES)."""
    if LIES[lie] is None:
        raw = path.read_bytes()
        path.write_bytes((len(raw) * 2).to_bytes(8, 'little') + raw[8:])
    else:
        edit_header(path, LIES[lie])


def sharded_dir(tmp_path: Path, hf: dict) -> tuple[Path, dict]:
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'], 'shards', [len(hf['tensors']) // 2 + 1])
    return model, json.loads((model / 'model.safetensors.index.json').read_text())


def write_index(model: Path, index: dict | bytes) -> None:
    path = model / 'model.safetensors.index.json'
    path.write_bytes(index if isinstance(index, bytes) else json.dumps(index).encode())


def first_tensor(index: dict) -> str:
    return sorted(index['weight_map'])[0]


def other_shard(index: dict) -> str:
    return next(s for s in sorted(set(index['weight_map'].values())) if s != index['weight_map'][first_tensor(index)])


def store_twice(model: Path, index: dict, name: str) -> None:
    """A second copy of `name` (other values) in the shard that the index does not name for it."""
    other = model / next(s for s in sorted(set(index['weight_map'].values())) if s != index['weight_map'][name])
    save_file({**load_file(other), name: torch.zeros(C, dtype=torch.bfloat16)}, other, metadata={'format': 'pt'})


# JSON keeps the last of two equal keys (as transformers reads the index too): the earlier entry is then overridden,
# and the directory may export exactly; every other attack must be refused
EITHER = {'a tensor listed twice, the earlier entry naming the wrong shard'}
INDEX_ATTACKS = {
    'a missing shard': lambda m, ix: (m / 'model-00002-of-00002.safetensors').unlink(),
    'a shard that does not hold the tensor': lambda m, ix: write_index(m, {**ix, 'weight_map': {
        **ix['weight_map'], first_tensor(ix): other_shard(ix)}}),
    'a tensor listed twice, the later entry naming the wrong shard': lambda m, ix: write_index(m, (
        '{"weight_map": ' + json.dumps(ix['weight_map'])[:-1] + ', "' + first_tensor(ix) + '": "'
        + other_shard(ix) + '"}}').encode()),
    'a tensor listed twice, the earlier entry naming the wrong shard': lambda m, ix: write_index(m, (
        '{"weight_map": {"' + first_tensor(ix) + '": "' + other_shard(ix) + '", '
        + json.dumps(ix['weight_map'])[1:] + '}').encode()),
    'a tensor stored in two shards': lambda m, ix: store_twice(m, ix, 'model.norm.weight'),
    'not JSON': lambda m, ix: write_index(m, b'{"weight_map": {'),
    'no weight_map': lambda m, ix: write_index(m, {'metadata': {}}),
    'weight_map a list': lambda m, ix: write_index(m, {'weight_map': [1, 2]}),
    'index a JSON array': lambda m, ix: write_index(m, b'[]'),
    'a shard outside the directory': lambda m, ix: write_index(m, {'weight_map': {
        **ix['weight_map'], first_tensor(ix): '../model-00001-of-00002.safetensors'}}),
    'an absolute shard path': lambda m, ix: write_index(m, {'weight_map': {
        **ix['weight_map'], first_tensor(ix): str(m / 'model-00001-of-00002.safetensors')}}),
    'a shard that is a directory': lambda m, ix: (m / 'model-00002-of-00002.safetensors').unlink()
    or (m / 'model-00002-of-00002.safetensors').mkdir(),
    'a truncated shard': lambda m, ix: (m / 'model-00002-of-00002.safetensors').write_bytes(
        (m / 'model-00002-of-00002.safetensors').read_bytes()[:-3]),
}
# shard names that are not strings: `sorted(set(weight_map.values()))` in readers.open_hf_directory runs outside the
# try that turns a malformed index into NotACheckpointError, so these escape as TypeError tracebacks
INDEX_BUGS = {
    'a shard name that is a number among strings': lambda m, ix: write_index(m, {'weight_map': {
        **ix['weight_map'], first_tensor(ix): 1}}),
    'a shard name that is a list': lambda m, ix: write_index(m, {'weight_map': {
        **ix['weight_map'], first_tensor(ix): ['model-00001-of-00002.safetensors']}}),
}


def parent_as_model(m: Path) -> None:
    """Copies of the directory's files in its parent, so that a shard name leading there finds a model to read."""
    for p in m.iterdir():
        shutil.copyfile(p, m.parent / p.name)
    shutil.copyfile(m / 'model-00001-of-00002.safetensors', m.parent / 'model.safetensors')


# shard names that are the directory itself or its parent (Path(name).name is the name): '' read the directory
# again and again (RecursionError traceback); '..' read the parent's model (found by test_verify_hostile.py)
INDEX_NAMES = {
    'a shard name that is empty': lambda m, ix: write_index(m, {'weight_map': {**ix['weight_map'], first_tensor(ix): ''}}),
    'a shard name that is ..': lambda m, ix: parent_as_model(m) or write_index(m, {'weight_map': {
        **ix['weight_map'], first_tensor(ix): '..'}}),
    'an absolute shard path outside the directory': lambda m, ix: parent_as_model(m) or write_index(m, {'weight_map': {
        **ix['weight_map'], first_tensor(ix): str(m.parent / 'model-00001-of-00002.safetensors')}}),
}
ALL_INDEX_ATTACKS = {**INDEX_ATTACKS, **INDEX_BUGS, **INDEX_NAMES}
# INDEX_BUGS: non-string shard names, once a TypeError traceback
INDEX_PARAMS = [pytest.param(k, id=k) for k in ALL_INDEX_ATTACKS]


def state_tensors(state: torch.Tensor, name: str = 'model.layers.{}.attn.initial_state') -> dict:
    return {name.format(i): s.transpose(-1, -2).contiguous() for i, s in enumerate(state)}


def write_hostile_state(path: Path, what: str, state: torch.Tensor) -> None:
    """Writes the hostile rwkv7_state.safetensors `what` at `path` (which holds the right one)."""
    good = path.read_bytes()
    L, H, N = state.shape[0], state.shape[1], state.shape[2]
    path.unlink()
    if what == 'truncated in its header':
        path.write_bytes(good[:20])
    elif what == 'truncated in its data':
        path.write_bytes(good[:-7])
    elif what == 'wrong names':
        save_file(state_tensors(state, 'model.layers.{}.attn.init_state'), str(path))
    elif what == 'a layer missing':
        save_file(state_tensors(state[:1]), str(path))
    elif what == 'a layer too many':
        save_file(state_tensors(torch.cat([state, state[:1]])), str(path))
    elif what == 'not square':
        save_file({f'model.layers.{i}.attn.initial_state': torch.zeros(H, N, N + 1) for i in range(L)}, str(path))
    elif what == 'int dtype':
        save_file({f'model.layers.{i}.attn.initial_state': torch.zeros(H, N, N, dtype=torch.int32) for i in range(L)},
                  str(path))
    elif what == 'other heads':
        save_file({f'model.layers.{i}.attn.initial_state': torch.zeros(H * 2, N // 2, N // 2) for i in range(L)},
                  str(path))
    elif what == 'a .pth under its name':
        torch.save(state_tensors(state), path)
    elif what == 'a FIFO':
        os.mkfifo(path)  # a blocking read would hang verify: it is no state file
    elif what == 'a directory':
        path.mkdir()
    else:  # a symlink to /dev/zero
        path.symlink_to('/dev/zero')


HOSTILE_STATES = ['truncated in its header', 'truncated in its data', 'wrong names', 'a layer missing', 'a layer too many',
                  'not square', 'int dtype', 'other heads', 'a .pth under its name', 'a FIFO', 'a directory',
                  'a symlink to /dev/zero']


def write_hostile_source_state(path: Path, what: str, state: torch.Tensor) -> None:
    L, H, N = state.shape[0], state.shape[1], state.shape[2]
    names = [f'blocks.{i}.att.time_state' for i in range(L)]
    if what == 'truncated':
        torch.save(dict(zip(names, state)), path)
        path.write_bytes(path.read_bytes()[:300])
    elif what == 'weights in it':
        torch.save({**dict(zip(names, state)), 'emb.weight': torch.zeros(3, 4)}, path)
    elif what == 'wrong names':
        torch.save({n + '_x': s for n, s in zip(names, state)}, path)
    elif what == 'not square':
        torch.save({n: torch.zeros(H, N, N + 1) for n in names}, path)
    elif what == 'int dtype':
        torch.save({n: torch.zeros(H, N, N, dtype=torch.int32) for n in names}, path)
    elif what == 'a layer missing':
        torch.save({names[0]: state[0]}, path)
    else:  # a FIFO
        os.mkfifo(path)


HOSTILE_SOURCE_STATES = ['truncated', 'weights in it', 'wrong names', 'not square', 'int dtype', 'a layer missing',
                         'a FIFO']
