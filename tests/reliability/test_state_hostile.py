"""Reliability campaign, tuned states: the hostile inputs of the other campaigns given to the state commands.

- convert --base: the export campaign's hostile config.json values in the base directory (tests/hostile/directories.py),
  and the verify campaign's hostile bare state files (tests/hostile/files.py);
- export of a directory carrying a hostile rwkv7_state.safetensors (the verify campaign's twelve), as a merge and
  with --state-only.
Each is refused with one line (a ConversionError; its error's exit status and one `error:` line from the command line)
and nothing is written; a state file that is no regular file (a FIFO, a directory, a symlink to a device) is no
state: the full export writes the weights alone and says so, --state-only refuses.

Reproduce: python -m pytest tests/reliability/test_state_hostile.py -q
"""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import REPO, assert_one_line_error, run_script
from hostile.directories import HOSTILE_CONFIGS, write_dir
from hostile.files import HOSTILE_SOURCE_STATES, HOSTILE_STATES, write_hostile_source_state, write_hostile_state

from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.tuned_state import convert_state, export_state
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.state_file import STATE_FILE

NOT_REGULAR = ('a FIFO', 'a directory', 'a symlink to /dev/zero')


def _one_line(run) -> str:
    with pytest.raises(ConversionError) as info:
        run()
    line = info.value.one_line()
    assert '\n' not in line
    return line


@pytest.mark.parametrize('edit', HOSTILE_CONFIGS)
def test_a_hostile_base_directory_is_refused(tmp_path, hf, tuned, edit):
    base = write_dir(tmp_path / 'base', {**hf['config'], **edit}, hf['tensors'])
    _one_line(lambda: convert_state(tuned['bare'], tmp_path / 'out', base))
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('what', HOSTILE_SOURCE_STATES)
def test_a_hostile_bare_state_is_refused(tmp_path, hf, tuned, what):
    bad = tmp_path / 'state.pth'
    write_hostile_source_state(bad, what, tuned['state'])
    line = _one_line(lambda: convert_state(bad, tmp_path / 'out', hf['dir']))
    assert str(bad) in line, line
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('what', HOSTILE_STATES)
def test_a_hostile_state_file_is_not_exported(tmp_path, tuned, what):
    model = tmp_path / 'm'
    shutil.copytree(tuned['dir'], model)
    write_hostile_state(model / STATE_FILE, what, tuned['state'])
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


def test_the_commands_refuse_hostile_state_inputs_in_one_line(tmp_path, hf, tuned):
    bad = tmp_path / 'state.pth'
    write_hostile_source_state(bad, 'truncated', tuned['state'])
    model = tmp_path / 'm'
    shutil.copytree(tuned['dir'], model)
    write_hostile_state(model / STATE_FILE, 'truncated in its data', tuned['state'])
    for args in (('utils/convert_to_rwkv7.py', '--rwkv7', bad, '--base', hf['dir'], '--output', tmp_path / 'x'),
                 ('utils/convert_from_fla_rwkv7.py', '--model', model, '--output', tmp_path / 'x'),
                 ('utils/convert_from_fla_rwkv7.py', '--model', model, '--output', tmp_path / 'x', '--state-only')):
        run = run_script(REPO / args[0], *args[1:], timeout=300)
        assert_one_line_error(run.returncode, run.stderr)
        assert not (tmp_path / 'x').exists()
