"""The atomic single-file protocol (the directory protocol is attacked in tests/reliability/test_output_safety.py)."""

from __future__ import annotations

import os

import pytest

from fla.rwkv7_convert.errors import (
    OutputExistsError,
)
from fla.rwkv7_convert.formats.atomic import atomic_file


def test_atomic_file_never_damages(tmp_path):
    target = tmp_path / 'out.pth'
    target.write_bytes(b'old')
    with pytest.raises(OutputExistsError):
        with atomic_file(target) as scratch:
            scratch.write_bytes(b'new')
    assert target.read_bytes() == b'old'
    with pytest.raises(RuntimeError):
        with atomic_file(target, force=True) as scratch:
            scratch.write_bytes(b'half')
            raise RuntimeError('killed mid-write')
    assert target.read_bytes() == b'old'
    with atomic_file(target, force=True) as scratch:
        scratch.write_bytes(b'new')
    assert target.read_bytes() == b'new'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.pth']
    # a scratch file of a dead run is removed by the next one; a live run's is left alone
    dead = tmp_path / '.out.pth.tmp-999999999-abcd1234'
    live = tmp_path / f'.out.pth.tmp-{os.getpid()}-abcd1234'
    dead.write_bytes(b'x')
    live.write_bytes(b'x')
    with atomic_file(tmp_path / 'out.pth', force=True) as scratch:
        scratch.write_bytes(b'newer')
    assert not dead.exists() and live.exists()
