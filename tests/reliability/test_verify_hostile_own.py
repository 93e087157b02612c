"""Reliability campaign, verify: verify's own hostile cases: a tensor in another shard, NaN weights, a pair that is not
a pair, hostile source records and tuned states, the script, an interrupt.

The property is test_verify_hostile.py's (docs/reliability.md, section 6, with the counts); the campaign's counts
add up over both modules.
Reproduce: python -m pytest tests/reliability/test_verify_hostile_own.py -q
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, call_main, run_script, start_script
from hostile.directories import BASE, RAW_CONFIGS, write_dir
from hostile.files import (
    ALL_INDEX_ATTACKS,
    HOSTILE_SOURCE_STATES,
    HOSTILE_STATES,
    INDEX_ATTACKS,
    first_tensor,
    other_shard,
    sharded_dir,
    write_hostile_source_state,
    write_hostile_state,
)
from reliability_common import TOKENS, VERIFY_SCRIPT, library, opened, outside, refused, verify_tally
from rwkv7_factory import make_state_dict, save

from fla.rwkv7_convert.cli.verify import main_verify
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.proof.verify import verify

pytestmark = pytest.mark.usefixtures('verify_summary')  # the verify campaign's counts, printed



# ------------------------------------------------------------------------------------------ 2. verify's own cases

def test_a_tensor_the_index_puts_in_another_shard_is_named(tmp_path, hf, audit, no_compute):
    model, index = sharded_dir(tmp_path, hf)
    name = first_tensor(index)
    INDEX_ATTACKS['a shard that does not hold the tensor'](model, index)
    line = refused(hf['source'], model, tmp_path, "verify's own cases", 'a tensor the index puts in another shard')
    assert f'puts {name} in {other_shard(index)}, which does not hold it' in line, line


NAN_AT = [pytest.param('model.layers.1.attn.k_k', 'blocks.1.att', id='layer-1-k_k'),
          pytest.param('model.layers.0.ffn.value.weight', 'blocks.0.ffn', id='layer-0-ffn-value'),
          pytest.param('lm_head.weight', None, id='lm_head')]


@pytest.mark.parametrize('name, where', NAN_AT)
def test_nan_weights_fail_and_say_where(tmp_path, hf, audit, name, where):
    tensors = dict(hf['tensors'])
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = float('nan')
    model = write_dir(tmp_path / 'm', hf['config'], tensors)
    outcome, text = library(hf['source'], model, tmp_path)
    assert outcome == 'FAIL', text
    if where:  # a NaN inside a layer: the first sub-step it reaches is named
        assert f'the models part first at layer {where[7]}' in text and f'({where})' in text, text
    else:  # in the head: every sub-step agrees, the logits do not
        assert 'part first' not in text and 'relative RMS nan' in text, text
    code, out, err = call_main(main_verify, '--rwkv7', hf['source'], '--model', model, '--tokens', TOKENS)
    assert code == 1 and 'FAIL' in out and 'Traceback' not in err, (code, err)
    verify_tally("verify's own cases", outcome, f'NaN in {name}')


@pytest.fixture(scope='module')
def other_conversion(tmp_path_factory, hf) -> Path:
    """A directory converted from another file of the same shapes: a valid conversion, of another file."""
    tmp = tmp_path_factory.mktemp('other')
    other = save(make_state_dict(BASE, torch.bfloat16, seed=16), tmp / 'other.pth')
    convert_to_fla(other, tmp / 'm', tokenizer='none')
    return tmp / 'm'


def test_a_pair_that_is_not_a_pair_is_refused_by_the_recorded_source(hf, audit, no_compute, other_conversion):
    """Every check of names, shapes and config.json passes; rwkv7_convert.json records another file."""
    line = refused(hf['source'], other_conversion, other_conversion.parent, "verify's own cases",
                   'the directory of another file of the same shapes')
    assert f'was not converted from {hf["source"]}: its rwkv7_convert.json records \'other.pth\'' in line, line


def test_a_pair_that_is_not_a_pair_fails_at_the_embedding(hf, audit, other_conversion):
    """Verified anyway (check_source=False), the verdict fails where the models first differ."""
    with opened() as paths:
        report = verify(hf['source'], other_conversion, tokens=TOKENS, check_source=False)
    assert outside(paths, other_conversion.parent, other_conversion) == []
    text = report.render()
    assert not report.passed and 'the models part first at ln0 (embedding LayerNorm) (ln0)' in text, text
    code, out, err = call_main(main_verify, '--rwkv7', hf['source'], '--model', other_conversion, '--tokens', TOKENS,
                               '--any-source', '-q')
    assert code == 1 and out.startswith('FAIL: ') and len(out.splitlines()) == 1 and err == '', (code, out, err)
    verify_tally("verify's own cases", 'FAIL', 'the directory of another file of the same shapes, --any-source')


def _record(path: Path, what: str) -> None:
    if what == 'a FIFO':
        os.mkfifo(path)  # a blocking read would hang verify
    elif what == 'a symlink to /dev/zero':
        path.symlink_to('/dev/zero')
    elif what == 'not JSON':
        path.write_bytes(b'{"source": {"bytes": 1,')
    else:  # a record of the right shape with the wrong types
        path.write_text('{"source": {"bytes": "1234", "sha256": null}}')


@pytest.mark.parametrize('what', ['a FIFO', 'a symlink to /dev/zero', 'not JSON', 'wrong types'])
def test_a_hostile_source_record_is_skipped_with_a_note(tmp_path, hf, audit, what):
    """rwkv7_convert.json is the directory's word, not ours: anything but the converter's record is no record; the
    right model passes, saying the source was not checked."""
    model = tmp_path / 'm'
    shutil.copytree(hf['dir'], model)
    (model / 'rwkv7_convert.json').unlink()
    _record(model / 'rwkv7_convert.json', what)
    outcome, text = library(hf['source'], model, tmp_path)
    assert outcome == 'PASS' and 'note: source file not checked against the directory: rwkv7_convert.json' in text, text
    verify_tally('hostile rwkv7_convert.json (the source record)', outcome, what)


def test_hostile_directories_through_the_script(tmp_path, hf):
    """A sample through utils/verify_rwkv7.py in a fresh process: a refusal's exit status, one line, no traceback."""
    sample = {'config.json not JSON': write_dir(tmp_path / 'raw', RAW_CONFIGS['not JSON'], hf['tensors']),
              'no weights': write_dir(tmp_path / 'none', hf['config'], None)}
    model, index = sharded_dir(tmp_path / 'sharded', hf)
    ALL_INDEX_ATTACKS['a shard name that is ..'](model, index)
    sample['a shard name that is ..'] = model
    for what, path in sample.items():
        r = run_script(VERIFY_SCRIPT, '--rwkv7', hf['source'], '--model', path, timeout=120)
        assert_one_line_error(r.returncode, r.stderr)
        assert r.stdout == '', r.stdout
        verify_tally('through utils/verify_rwkv7.py', 'refused (one line)', what)


@pytest.mark.parametrize('what', HOSTILE_STATES)
def test_hostile_state_file_is_refused(tmp_path, tuned, audit, no_compute, what):
    """The directory's rwkv7_state.safetensors, hostile: one line naming it (or, for what is no regular file, saying
    the directory has none), before any compute."""
    model = tmp_path / 'm'
    shutil.copytree(tuned['dir'], model)
    write_hostile_state(model / 'rwkv7_state.safetensors', what, tuned['state'])
    line = refused(tuned['source'], model, tmp_path, 'hostile rwkv7_state.safetensors', what)
    if what in ('a FIFO', 'a directory', 'a symlink to /dev/zero'):
        assert 'has no rwkv7_state.safetensors' in line, line
    else:
        assert 'rwkv7_state.safetensors' in line, line


@pytest.mark.parametrize('what', HOSTILE_SOURCE_STATES)
def test_hostile_state_given_with_state_is_refused(tmp_path, hf, tuned, no_compute, what):
    """--state FILE beside the base model, hostile: one line naming FILE, before any compute; through the command line
    a refusal's exit status, one `error: ` line, nothing on stdout."""
    bad = tmp_path / 'state.pth'
    write_hostile_source_state(bad, what, tuned['state'])
    with pytest.raises(ConversionError) as e:
        verify(hf['source'], hf['dir'], tokens=TOKENS, state=bad, model_state=tuned['state_dir'])
    line = e.value.one_line()
    assert '\n' not in line and str(bad) in line, line
    code, out, err = call_main(main_verify, '--rwkv7', hf['source'], '--state', bad, '--model', hf['dir'], '--model-state',
                               tuned['state_dir'], '--tokens', TOKENS)
    line = assert_one_line_error(code, err)
    assert out == '' and str(bad) in line, (out, line)
    verify_tally('hostile --state files', type(e.value).__name__, what)


def test_the_tuned_pair_itself_passes(tuned, hf, audit):
    """The controls: the merge against its directory, and the bare state beside the base model, both PASS."""
    outcome, text = library(tuned['source'], tuned['dir'], tuned['dir'].parent)
    assert outcome == 'PASS' and 'from the tuned initial state' in text, text
    report = verify(hf['source'], hf['dir'], tokens=TOKENS, state=tuned['bare'], model_state=tuned['state_dir'])
    assert report.passed and report.state is not None, report.render()
    verify_tally('hostile rwkv7_state.safetensors', 'PASS', 'the state as converted (control)')
    verify_tally('hostile --state files', 'PASS', 'the state as converted (control)')


# ------------------------------------------------------------------------------------------ 3. interrupted verify

def _holds_open(pid: int, path: Path) -> bool:
    with contextlib.suppress(OSError):
        for fd in os.listdir(f'/proc/{pid}/fd'):
            with contextlib.suppress(OSError):
                if os.readlink(f'/proc/{pid}/fd/{fd}') == str(path):
                    return True
    return False


@pytest.mark.skipif(not Path('/proc/self/fd').is_dir(), reason='needs /proc to see the files a process holds')
def test_interrupted_verify_exits_130_and_writes_nothing(tmp_path, hf):
    """SIGINT once the verifier holds the model's weights open (it has read config.json and the index, and not yet
    computed): exit 130, one line on stderr, nothing on stdout, no file written anywhere in the case."""
    model = tmp_path / 'm'
    shutil.copytree(hf['dir'], model)
    before = {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob('*')) if p.is_file()}
    weights = (model / 'model.safetensors').resolve()
    proc = start_script(VERIFY_SCRIPT, '--rwkv7', hf['source'], '--model', model, '--tokens', 48)
    deadline = time.monotonic() + 120  # a guard against a hang, not a measure of anything
    while proc.poll() is None and not _holds_open(proc.pid, weights) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert proc.poll() is None, f'verify ended before it was interrupted: {proc.communicate()}'
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)
    assert out == '' and err == 'interrupted (SIGINT): verify stopped; nothing was written\n', err
    after = {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob('*')) if p.is_file()}
    assert after == before
    verify_tally('interrupted verify', f'SIGINT: exit {proc.returncode}, one line, nothing written')
