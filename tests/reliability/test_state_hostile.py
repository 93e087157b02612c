"""Reliability campaign, tuned states: the hostile inputs of the other campaigns given to the state commands.

- convert --base: the export campaign's hostile config.json values in the base directory (test_export_direction.py),
  and the verify campaign's hostile bare state files (test_verify_hostile.py);
- export of a directory carrying a hostile rwkv7_state.safetensors (the verify campaign's twelve), as a merge and
  with --state-only.
Each is refused with one line (a ConversionError; exit 1 and one `error:` line from the command line) and nothing is
written; a state file that is no regular file (a FIFO, a directory, a symlink to a device) is no state: the full export
writes the weights alone and says so, --state-only refuses.

Reproduce: python -m pytest tests/reliability/test_state_hostile.py -q
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_export_direction as export
import torch
from rwkv7_factory import make_tuned_state, save, time_states
from test_verify_hostile import HOSTILE_STATES, _hostile_source_state, _hostile_state

from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.convert.tuned_state import convert_state, export_state
from fla.rwkv7_convert.errors import ConversionError, refusal_exit_codes
from fla.rwkv7_convert.formats.state_file import STATE_FILE

REPO = Path(__file__).resolve().parents[2]
NOT_REGULAR = ('a FIFO', 'a directory', 'a symlink to /dev/zero')


@pytest.fixture(scope='module')
def tuned(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('tuned')
    (root / 'hf').mkdir()
    hf = export.make_hf(root / 'hf')
    state = make_tuned_state(export.BASE)
    merge = save({**torch.load(hf['source'], weights_only=True), **time_states(state)}, root / 'merge.pth')
    convert_to_fla(merge, root / 'merged', tokenizer='none')
    return {'hf': hf, 'state': state, 'bare': save(time_states(state), root / 'state.pth'), 'merged': root / 'merged'}


def _one_line(run) -> str:
    with pytest.raises(ConversionError) as info:
        run()
    line = info.value.one_line()
    assert '\n' not in line
    return line


@pytest.mark.parametrize('edit', export.HOSTILE_CONFIGS)
def test_a_hostile_base_directory_is_refused(tmp_path, tuned, edit):
    hf = tuned['hf']
    base = export.write_dir(tmp_path / 'base', {**hf['config'], **edit}, hf['tensors'])
    _one_line(lambda: convert_state(tuned['bare'], tmp_path / 'out', base))
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('what', ['truncated', 'weights in it', 'wrong names', 'not square', 'int dtype',
                                  'a layer missing', 'a FIFO'])
def test_a_hostile_bare_state_is_refused(tmp_path, tuned, what):
    bad = tmp_path / 'state.pth'
    _hostile_source_state(bad, what, tuned['state'])
    line = _one_line(lambda: convert_state(bad, tmp_path / 'out', tuned['hf']['dir']))
    assert str(bad) in line, line
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('what', HOSTILE_STATES)
def test_a_hostile_state_file_is_not_exported(tmp_path, tuned, what):
    model = tmp_path / 'm'
    shutil.copytree(tuned['merged'], model)
    _hostile_state(model / STATE_FILE, what, tuned['state'])
    only = _one_line(lambda: export_state(model, tmp_path / 'state.pth'))
    assert STATE_FILE in only, only
    assert not (tmp_path / 'state.pth').exists()
    if what in NOT_REGULAR:  # no state file at all: the weights alone, as from any directory without one
        result = convert_from_fla(model, tmp_path / 'w.pth')
        assert not any(k.endswith('time_state') for k in torch.load(tmp_path / 'w.pth', weights_only=True))
        assert not any('tuned initial state' in n for n in result.plan.notes)
    else:
        line = _one_line(lambda: convert_from_fla(model, tmp_path / 'w.pth'))
        assert STATE_FILE in line, line
        assert not (tmp_path / 'w.pth').exists()


def test_the_commands_refuse_hostile_state_inputs_in_one_line(tmp_path, tuned):
    bad = tmp_path / 'state.pth'
    _hostile_source_state(bad, 'truncated', tuned['state'])
    model = tmp_path / 'm'
    shutil.copytree(tuned['merged'], model)
    _hostile_state(model / STATE_FILE, 'truncated in its data', tuned['state'])
    for args in (('utils/convert_to_rwkv7.py', '--rwkv7', bad, '--base', tuned['hf']['dir'], '--output', tmp_path / 'x'),
                 ('utils/convert_from_fla_rwkv7.py', '--model', model, '--output', tmp_path / 'x'),
                 ('utils/convert_from_fla_rwkv7.py', '--model', model, '--output', tmp_path / 'x', '--state-only')):
        run = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=300)
        lines = run.stderr.strip().splitlines()
        assert run.returncode in refusal_exit_codes() and len(lines) == 1 and lines[0].startswith('error: '), (
            args, run.stderr)
        assert not (tmp_path / 'x').exists()
