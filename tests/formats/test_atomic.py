"""The atomic single-file protocol (the directory protocol is attacked in tests/reliability/test_output_safety.py)."""

from __future__ import annotations

import os

import pytest

from fla.rwkv7_convert.errors import (
    OutputExistsError,
)
from fla.rwkv7_convert.formats import atomic
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


@pytest.mark.parametrize('target_before', [pytest.param(False, id='no-target'), pytest.param(True, id='empty-folder')])
def test_a_model_landing_right_after_the_last_check_is_not_replaced_without_force(tmp_path, monkeypatch, target_before):
    """A racing run renames its complete model into OUTDIR between our last check and our swap: without --force we
    must refuse, never exchange its model out (as a plain rename onto a non-empty folder refuses)."""
    target = tmp_path / 'out'
    if target_before:
        target.mkdir()
    real_check = atomic.check_target
    landed = []

    def check_then_rival_lands(t, force, protect=()):
        real_check(t, force, protect)
        if not landed:  # the rival's model appears just after our check passed
            rival = tmp_path / '.rival'
            rival.mkdir()
            (rival / 'config.json').write_text('{"rival": true}')
            if t.exists():
                t.rmdir()
            rival.rename(t)
            landed.append(True)
    scratch = tmp_path / '.out.tmp-ours'  # our complete model, as atomic_directory hands it to _commit
    scratch.mkdir()
    (scratch / 'config.json').write_text('{"ours": true}')
    monkeypatch.setattr(atomic, 'check_target', check_then_rival_lands)
    with pytest.raises(OutputExistsError, match='exists and is not empty'):
        atomic._commit(scratch, target, False, ())
    assert (target / 'config.json').read_text() == '{"rival": true}'
