"""The torch-zip (.pth) writer: files every torch reader loads, torch's predicted offsets, ZIP64."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from fla.rwkv7_convert.formats import pth_writer
from fla.rwkv7_convert.formats.outputs import OutTensor
from fla.rwkv7_convert.formats.pth_writer import write_pth
from fla.rwkv7_convert.formats.readers import open_checkpoint


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# -------------------------------------------------------------------------------------------------- torch-zip writer

ARRAYS = {
    'f32': (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5, 'F32'),
    'bf16': (np.array([0x3F80, 0xBF80, 0x7F80, 0x0001, 0x4049], dtype=np.uint16), 'BF16'),
    'f16': (np.linspace(-2, 2, 7, dtype=np.float16).reshape(1, 1, 7), 'F16'),
    'f64': (np.array(3.25), 'F64'),
    'big': (np.random.default_rng(0).standard_normal((33, 1000)).astype(np.float32), 'F32'),
}


def _write_arrays(path: Path) -> Path:
    write_pth(path, [OutTensor(k, a.shape, d, (lambda a=a: a)) for k, (a, d) in ARRAYS.items()])
    return path


def _check_arrays(path: Path) -> None:
    assert zipfile.ZipFile(path).testzip() is None  # every CRC right
    for mmap in (False, True):
        sd = torch.load(path, weights_only=True, mmap=mmap)
        assert list(sd) == list(ARRAYS)
        for k, (a, _) in ARRAYS.items():
            assert tuple(sd[k].shape) == a.shape and _bits(sd[k]) == a.tobytes(), k
    assert sd['bf16'].dtype == torch.bfloat16 and sd['f16'].dtype == torch.float16 and sd['f64'].dtype == torch.float64
    with open_checkpoint(path) as ckpt:
        assert {k: (r.shape, r.dtype) for k, r in ckpt.tree.items()} == {k: (a.shape, d) for k, (a, d) in ARRAYS.items()}
        assert all(ckpt.tree[k].load().tobytes() == a.tobytes() for k, (a, _) in ARRAYS.items())


def test_pth_writer_loads_everywhere(tmp_path):
    path = _write_arrays(tmp_path / 'x.pth')
    _check_arrays(path)
    names = zipfile.ZipFile(path).namelist()
    assert names[:4] == ['archive/data.pkl', 'archive/.format_version', 'archive/.storage_alignment', 'archive/byteorder']
    assert names[-2:] == ['archive/version', 'archive/.data/serialization_id']
    # every record is stored uncompressed and starts on a 64-byte boundary, as torch writes them
    with open(path, 'rb') as f:
        for info in zipfile.ZipFile(path).infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            f.seek(info.header_offset + 26)
            n, m = (int(x) for x in np.frombuffer(f.read(4), '<u2'))
            assert (info.header_offset + 30 + n + m) % 64 == 0, info.filename
    # reproducible: same tensors, same bytes
    assert _write_arrays(tmp_path / 'y.pth').read_bytes() == path.read_bytes()


def test_pth_writer_matches_torch_predicted_offsets(tmp_path, monkeypatch):
    """torch's opt-in `calculate_storage_offsets` predicts each record's offset from miniz's layout; ours must match."""
    from torch.utils.serialization import config
    path = _write_arrays(tmp_path / 'x.pth')
    monkeypatch.setenv('TORCH_SERIALIZATION_DEBUG', '1')  # torch then asserts predicted == actual offsets
    # torch's own patch(): monkeypatch.setattr on the config proxy breaks torch's config module when undone
    with config.patch({'load.calculate_storage_offsets': True}):
        sd = torch.load(path, weights_only=True, mmap=True)
        assert _bits(sd['big']) == ARRAYS['big'][0].tobytes()
        meta = torch.load(path, weights_only=True, map_location='meta')
    assert config.load.calculate_storage_offsets is False
    assert meta['big'].shape == (33, 1000)


def test_pth_writer_zip64(tmp_path, monkeypatch):
    """ZIP64 fields (needed past 4 GiB) written for every member: torch, zipfile and our reader still agree."""
    monkeypatch.setattr(pth_writer, 'ZIP64_LIMIT', 1)
    _check_arrays(_write_arrays(tmp_path / 'x.pth'))
    monkeypatch.setattr(pth_writer, 'ZIP64_LIMIT', 500)  # some members, by offset and by size
    _check_arrays(_write_arrays(tmp_path / 'y.pth'))
