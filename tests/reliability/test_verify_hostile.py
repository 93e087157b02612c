"""Reliability campaign, verify: the export campaign's hostile directories (test_export_direction.py, its own case
builders) given to `verify` as the conversion of their source file, plus verify's own cases.

The property: verify either refuses a directory before any compute with one line (a ConversionError naming the
directory and the file or key; through the command line exit 1, one `error: ` line, nothing on stdout, no
traceback), or computes a verdict: PASS only for the model transformers would load from the source's conversion,
FAIL otherwise. Never another exception, and no file outside the directory is opened (every `open` is recorded
with an audit hook; shard names that lead out find real files there to read). An interrupted verify exits 130
with one line and writes nothing.

Refusals run no fla; the cases that compute all use TOKENS tokens, so fla's interpreted kernels compile once.
Counts are printed at the end of the module; docs/reliability.md (section 6) cites them.
Reproduce: python -m pytest tests/reliability/test_verify_hostile.py -q
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_export_direction as export
import torch
from reliability_common import print_summary, start_script
from reliability_common import tally as common_tally
from rwkv7_factory import make_state_dict, save

from fla.rwkv7_convert.cli.verify import main_verify
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError, refusal_exit_codes
from fla.rwkv7_convert.proof import verify as verify_module
from fla.rwkv7_convert.proof.verify import verify

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'utils' / 'verify_rwkv7.py'
TOKENS = 4
STATS: dict[str, dict] = {}


def tally(section: str, outcome: str, by: str | list[str] | None = None) -> None:
    common_tally(section, outcome, by, stats=STATS)


@pytest.fixture(scope='module', autouse=True)
def campaign_summary(request):
    yield
    print_summary(request, 'verify (tests/reliability/test_verify_hostile.py)', STATS, total=True)


# ------------------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope='module')
def hf(tmp_path_factory) -> dict:
    """The export campaign's base directory and the source file it was converted from."""
    return export.make_hf(tmp_path_factory.mktemp('hf'))


_RECORDING: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if _RECORDING and event == 'open' and isinstance(args[0], (str, bytes, os.PathLike)):
        _RECORDING[-1].append(os.path.normpath(os.path.abspath(os.fsdecode(args[0]))))


@pytest.fixture(scope='module')
def audit():
    """Every file this process tries to open while `opened()` records (an audit hook stays for good, so it is added
    once, and records nothing outside `opened()`)."""
    sys.addaudithook(_audit)


@contextlib.contextmanager
def opened():
    paths: list[str] = []
    _RECORDING.append(paths)
    try:
        yield paths
    finally:
        _RECORDING.pop()


def outside(paths: list[str], root: Path, model: Path) -> list[str]:
    """The paths under the case's `root` that are not inside the model directory."""
    inside = os.path.normpath(os.path.abspath(model)) + os.sep
    root_s = os.path.normpath(os.path.abspath(root)) + os.sep
    return sorted({p for p in paths if p.startswith(root_s) and not (p + os.sep).startswith(inside)})


@pytest.fixture
def no_compute(monkeypatch):
    """verify must refuse before building the streaming pair: building it fails the test."""
    def computed(*args, **kwargs):
        raise AssertionError('verify went on to compute')
    monkeypatch.setattr(verify_module, 'StreamingPair', computed)


def library(source: Path, model: Path, root: Path) -> tuple[str, str]:
    """verify in this process: ('PASS' or 'FAIL', the report) or (the ConversionError's class, its line); any other
    exception fails the test. Asserts that nothing under `root` outside `model` was opened."""
    with opened() as paths:
        try:
            report = verify(source, model, tokens=TOKENS)
        except ConversionError as e:
            line = e.one_line()
            assert '\n' not in line and str(model) in line, line
            result = type(e).__name__, line
        else:
            result = ('PASS' if report.passed else 'FAIL'), report.render()
    assert outside(paths, root, model) == [], f'opened outside {model}'
    return result


def cli(*args) -> tuple[int, str, str]:
    """main_verify in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main_verify([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def assert_refused_by_cli(source: Path, model: Path) -> str:
    code, out, err = cli('--rwkv7', source, '--model', model, '--tokens', TOKENS)
    lines = err.strip().splitlines()
    assert code in refusal_exit_codes() and out == '' and len(lines) == 1 and lines[0].startswith('error: '), (code, out, err)
    assert 'Traceback' not in err and str(model) in lines[0], err
    return lines[0]


def refused(source: Path, model: Path, root: Path, section: str, by: str) -> str:
    """The case must be refused before compute (with the no_compute fixture), by the library and the command line."""
    outcome, line = library(source, model, root)
    assert outcome not in ('PASS', 'FAIL'), f'{by}: verify computed ({outcome}) instead of refusing'
    assert_refused_by_cli(source, model)
    tally(section, outcome, by)
    return line


# ------------------------------------------------------------------- 1. the export campaign's hostile directories

@pytest.mark.parametrize('edit', export.HOSTILE_CONFIGS)
def test_hostile_config_is_refused(tmp_path, hf, audit, no_compute, edit):
    model = export.write_dir(tmp_path / 'm', {**hf['config'], **edit}, hf['tensors'])
    refused(hf['source'], model, tmp_path, 'hostile config.json', next(iter(edit)))


@pytest.mark.parametrize('edit', export.ODD_CONFIGS)
def test_odd_config_is_verified_or_refused(tmp_path, hf, audit, edit):
    model = export.write_dir(tmp_path / 'm', {**hf['config'], **edit}, hf['tensors'])
    outcome, text = library(hf['source'], model, tmp_path)
    tally('odd config.json values (a verdict or a refusal)', outcome, next(iter(edit)))


@pytest.mark.parametrize('what', export.RAW_CONFIG_PARAMS)
def test_unreadable_config_is_refused(tmp_path, hf, audit, no_compute, what):
    model = export.write_dir(tmp_path / 'm', export.RAW_CONFIGS[what], hf['tensors'])
    refused(hf['source'], model, tmp_path, 'broken config.json', what)


# benign for the export, but not what fla loads as the source's conversion: other fla names and layouts; config keys
# fla reads with its own defaults where they are missing (a missing rank is fla's default rank) or values it refuses
NOT_THE_CONVERSION = {'fla_january_vectors', 'fused_x_x', 'bare_names', 'benign_config_keys', 'drop_cross_checked_key'}


@pytest.mark.parametrize('seed', range(export.CAMPAIGN_CASES))
def test_mutated_directory_is_judged_or_refused(tmp_path, hf, audit, seed):
    c, names = export.mutated_case(hf, seed)
    model = export.write_dir(tmp_path / 'm', c.config, c.sd, c.how, c.shard_sizes)
    outcome, text = library(hf['source'], model, tmp_path)
    if c.harmful:
        assert outcome != 'PASS', (c, text)
    elif not NOT_THE_CONVERSION & set(names):
        assert outcome == 'PASS', (c, text)  # the same model, sharded, as .bin, some tensors fp32, fewer config keys
    if outcome not in ('PASS', 'FAIL'):
        assert_refused_by_cli(hf['source'], model)
    tally('mutated directories (seeded)', outcome, names)


def test_truncated_model_safetensors_is_refused(tmp_path, hf, audit, no_compute):
    data = (hf['dir'] / 'model.safetensors').read_bytes()
    cuts = sorted({c + d for c in export.safetensors_boundaries(data) for d in (-1, 0, 1) if 0 <= c + d < len(data)}
                  | set(range(17)))
    model = export.write_dir(tmp_path / 'm', hf['config'], None)
    for cut in cuts:
        (model / 'model.safetensors').write_bytes(data[:cut])
        outcome, line = library(hf['source'], model, tmp_path)
        assert outcome == 'NotACheckpointError' and 'model.safetensors' in line, (cut, line)
        tally('truncated model.safetensors', outcome)
    assert_refused_by_cli(hf['source'], model)
    assert len(cuts) > 100


@pytest.mark.parametrize('lie', export.LIES)
def test_lying_safetensors_header_is_refused(tmp_path, hf, audit, no_compute, lie):
    model = export.write_dir(tmp_path / 'm', hf['config'], hf['tensors'])
    path = model / 'model.safetensors'
    if export.LIES[lie] is None:
        raw = path.read_bytes()
        path.write_bytes((len(raw) * 2).to_bytes(8, 'little') + raw[8:])
    else:
        export._edit_header(path, export.LIES[lie])
    refused(hf['source'], model, tmp_path, 'lying safetensors headers', lie)


@pytest.mark.parametrize('attack', export.INDEX_PARAMS)
def test_broken_shard_index_is_refused_without_reading_outside(tmp_path, hf, audit, attack):
    model, index = export._sharded(tmp_path, hf)
    export._parent_as_model(model)  # a name leading out of the directory finds real files to read there
    export.ALL_INDEX_ATTACKS[attack](model, index)
    outcome, text = library(hf['source'], model, tmp_path)
    if attack in export.EITHER:  # JSON keeps the later entry, as transformers reads the index: the same model
        assert outcome == 'PASS', text
    else:
        assert outcome not in ('PASS', 'FAIL'), text
        assert_refused_by_cli(hf['source'], model)
    tally('broken shard indexes', outcome, attack)


@pytest.mark.parametrize('attack', export.BIN_ATTACKS)
def test_hostile_pytorch_model_bin_is_refused(tmp_path, hf, audit, no_compute, attack):
    model = export.write_dir(tmp_path / 'm', hf['config'], hf['tensors'], 'bin')
    marker = tmp_path / 'pwned'
    export.BIN_ATTACKS[attack](model / 'pytorch_model.bin', marker)
    refused(hf['source'], model, tmp_path, 'hostile pytorch_model.bin', attack)
    assert not marker.exists()


def test_special_paths_are_refused(tmp_path, hf, audit, no_compute):
    for what, path in export._special(tmp_path, hf).items():
        refused(hf['source'], path, tmp_path, 'special paths', what)


@pytest.mark.parametrize('loaded, stale', export.TWO_SOURCES)
def test_two_weight_sources_judge_the_one_transformers_loads(tmp_path, hf, audit, loaded, stale):
    """The model transformers loads passes; with the two swapped (the loaded one a different model), it fails."""
    for loaded_tensors, stale_tensors, want in ((hf['tensors'], export._different(hf), 'PASS'),
                                                (export._different(hf), hf['tensors'], 'FAIL')):
        case = tmp_path / want
        model = export.write_dir(case / 'm', hf['config'], loaded_tensors, loaded, [25])
        export.write_dir(case / 'stale', None, stale_tensors, stale, [25])
        for p in (case / 'stale').iterdir():
            if not (model / p.name).exists():
                p.rename(model / p.name)
        outcome, text = library(hf['source'], model, case)
        assert outcome == want, text
        which = 'the right model' if want == 'PASS' else 'another model'
        tally('two weight sources at once', outcome, f'{loaded} holding {which} + {stale}')


def test_tied_embeddings_are_judged_as_fla_loads_them(tmp_path, hf, audit):
    """A config that ties the embeddings makes fla's head the embedding matrix, whatever lm_head.weight holds:
    judged so, the directory fails (the source's head is not its embeddings), stored head or not."""
    tied = {**hf['config'], 'tie_word_embeddings': True}
    for what, tensors in (('with the right lm_head.weight', hf['tensors']),
                          ('without lm_head.weight', {k: v for k, v in hf['tensors'].items() if k != 'lm_head.weight'})):
        model = export.write_dir(tmp_path / what.replace(' ', '-'), tied, tensors)
        outcome, text = library(hf['source'], model, tmp_path)
        assert outcome == 'FAIL' and 'ties the embeddings' in text, text
        tally('tied embeddings', outcome, what)


# ------------------------------------------------------------------------------------------ 2. verify's own cases

def test_a_tensor_the_index_puts_in_another_shard_is_named(tmp_path, hf, audit, no_compute):
    model, index = export._sharded(tmp_path, hf)
    name = export._first_tensor(index)
    export.INDEX_ATTACKS['a shard that does not hold the tensor'](model, index)
    line = refused(hf['source'], model, tmp_path, "verify's own cases", 'a tensor the index puts in another shard')
    assert f'puts {name} in {export._other_shard(index)}, which does not hold it' in line, line


NAN_AT = [pytest.param('model.layers.1.attn.k_k', 'blocks.1.att', id='layer-1-k_k'),
          pytest.param('model.layers.0.ffn.value.weight', 'blocks.0.ffn', id='layer-0-ffn-value'),
          pytest.param('lm_head.weight', None, id='lm_head')]


@pytest.mark.parametrize('name, where', NAN_AT)
def test_nan_weights_fail_and_say_where(tmp_path, hf, audit, name, where):
    tensors = dict(hf['tensors'])
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = float('nan')
    model = export.write_dir(tmp_path / 'm', hf['config'], tensors)
    outcome, text = library(hf['source'], model, tmp_path)
    assert outcome == 'FAIL', text
    if where:  # a NaN inside a layer: the first sub-step it reaches is named
        assert f'the models part first at layer {where[7]}' in text and f'({where})' in text, text
    else:  # in the head: every sub-step agrees, the logits do not
        assert 'part first' not in text and 'relative RMS nan' in text, text
    code, out, err = cli('--rwkv7', hf['source'], '--model', model, '--tokens', TOKENS)
    assert code == 1 and 'FAIL' in out and 'Traceback' not in err, (code, err)
    tally("verify's own cases", outcome, f'NaN in {name}')


@pytest.fixture(scope='module')
def other_conversion(tmp_path_factory, hf) -> Path:
    """A directory converted from another file of the same shapes: a valid conversion, of another file."""
    tmp = tmp_path_factory.mktemp('other')
    other = save(make_state_dict(export.BASE, torch.bfloat16, seed=16), tmp / 'other.pth')
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
    code, out, err = cli('--rwkv7', hf['source'], '--model', other_conversion, '--tokens', TOKENS, '--any-source', '-q')
    assert code == 1 and out.startswith('FAIL: ') and len(out.splitlines()) == 1 and err == '', (code, out, err)
    tally("verify's own cases", 'FAIL', 'the directory of another file of the same shapes, --any-source')


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
    tally('hostile rwkv7_convert.json (the source record)', outcome, what)


def test_hostile_directories_through_the_script(tmp_path, hf):
    """A sample through utils/verify_rwkv7.py in a fresh process: exit 1, one line, no traceback."""
    sample = {'config.json not JSON': export.write_dir(tmp_path / 'raw', export.RAW_CONFIGS['not JSON'], hf['tensors']),
              'no weights': export.write_dir(tmp_path / 'none', hf['config'], None)}
    model, index = export._sharded(tmp_path / 'sharded', hf)
    export.ALL_INDEX_ATTACKS['a shard name that is ..'](model, index)
    sample['a shard name that is ..'] = model
    for what, path in sample.items():
        r = subprocess.run([sys.executable, str(SCRIPT), '--rwkv7', str(hf['source']), '--model', str(path)],
                           capture_output=True, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode in refusal_exit_codes(), r.stderr
        assert r.stdout == '' and len(lines) == 1 and lines[0].startswith('error: '), r.stderr
        tally('through utils/verify_rwkv7.py', 'refused (exit 1, one line)', what)


# --------------------------------------------------------------------------------------------- 4. tuned states

@pytest.fixture(scope='module')
def tuned_hf(tmp_path_factory) -> dict:
    """A state-tuned merge of the base shape converted with its state, and a bare state file beside the base source
    with its state file (written through formats/state_file.py: no base directory here)."""
    from rwkv7_factory import make_tuned_state, time_states, write_state_conversion
    root = tmp_path_factory.mktemp('tuned')
    sd = make_state_dict(export.BASE, torch.bfloat16, seed=15)
    state = make_tuned_state(export.BASE)
    merge = save({**sd, **time_states(state)}, root / 'merge.pth')
    model = root / 'case' / 'model'  # its own folder: `library` checks that nothing else in 'case' is opened
    convert_to_fla(merge, model, tokenizer='none')
    bare = save(time_states(state), root / 'state.pth')
    write_state_conversion(bare, root / 'state')
    return {'source': merge, 'dir': model, 'state': state, 'bare': bare, 'state_dir': root / 'state'}


def _state_tensors(state: torch.Tensor, name: str = 'model.layers.{}.attn.initial_state') -> dict:
    return {name.format(i): s.transpose(-1, -2).contiguous() for i, s in enumerate(state)}


def _hostile_state(path: Path, what: str, state: torch.Tensor) -> None:
    """Writes the hostile rwkv7_state.safetensors `what` at `path` (which holds the right one)."""
    from safetensors.torch import save_file
    good = path.read_bytes()
    L, H, N = state.shape[0], state.shape[1], state.shape[2]
    path.unlink()
    if what == 'truncated in its header':
        path.write_bytes(good[:20])
    elif what == 'truncated in its data':
        path.write_bytes(good[:-7])
    elif what == 'wrong names':
        save_file(_state_tensors(state, 'model.layers.{}.attn.init_state'), str(path))
    elif what == 'a layer missing':
        save_file(_state_tensors(state[:1]), str(path))
    elif what == 'a layer too many':
        save_file(_state_tensors(torch.cat([state, state[:1]])), str(path))
    elif what == 'not square':
        save_file({f'model.layers.{i}.attn.initial_state': torch.zeros(H, N, N + 1) for i in range(L)}, str(path))
    elif what == 'int dtype':
        save_file({f'model.layers.{i}.attn.initial_state': torch.zeros(H, N, N, dtype=torch.int32) for i in range(L)},
                  str(path))
    elif what == 'other heads':
        save_file({f'model.layers.{i}.attn.initial_state': torch.zeros(H * 2, N // 2, N // 2) for i in range(L)},
                  str(path))
    elif what == 'a .pth under its name':
        torch.save(_state_tensors(state), path)
    elif what == 'a FIFO':
        os.mkfifo(path)  # a blocking read would hang verify: it is no state file
    elif what == 'a directory':
        path.mkdir()
    else:  # a symlink to /dev/zero
        path.symlink_to('/dev/zero')


HOSTILE_STATES = ['truncated in its header', 'truncated in its data', 'wrong names', 'a layer missing', 'a layer too many',
                  'not square', 'int dtype', 'other heads', 'a .pth under its name', 'a FIFO', 'a directory',
                  'a symlink to /dev/zero']


@pytest.mark.parametrize('what', HOSTILE_STATES)
def test_hostile_state_file_is_refused(tmp_path, tuned_hf, audit, no_compute, what):
    """The directory's rwkv7_state.safetensors, hostile: one line naming it (or, for what is no regular file, saying
    the directory has none), before any compute."""
    model = tmp_path / 'm'
    shutil.copytree(tuned_hf['dir'], model)
    _hostile_state(model / 'rwkv7_state.safetensors', what, tuned_hf['state'])
    line = refused(tuned_hf['source'], model, tmp_path, 'hostile rwkv7_state.safetensors', what)
    if what in ('a FIFO', 'a directory', 'a symlink to /dev/zero'):
        assert 'has no rwkv7_state.safetensors' in line, line
    else:
        assert 'rwkv7_state.safetensors' in line, line


def _hostile_source_state(path: Path, what: str, state: torch.Tensor) -> None:
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


@pytest.mark.parametrize('what', ['truncated', 'weights in it', 'wrong names', 'not square', 'int dtype',
                                  'a layer missing', 'a FIFO'])
def test_hostile_state_given_with_state_is_refused(tmp_path, hf, tuned_hf, no_compute, what):
    """--state FILE beside the base model, hostile: one line naming FILE, before any compute; through the command line
    exit 1, one `error: ` line, nothing on stdout."""
    bad = tmp_path / 'state.pth'
    _hostile_source_state(bad, what, tuned_hf['state'])
    with pytest.raises(ConversionError) as e:
        verify(hf['source'], hf['dir'], tokens=TOKENS, state=bad, model_state=tuned_hf['state_dir'])
    line = e.value.one_line()
    assert '\n' not in line and str(bad) in line, line
    code, out, err = cli('--rwkv7', hf['source'], '--state', bad, '--model', hf['dir'], '--model-state',
                         tuned_hf['state_dir'], '--tokens', TOKENS)
    lines = err.strip().splitlines()
    assert code in refusal_exit_codes(), err
    assert out == '' and len(lines) == 1 and lines[0].startswith('error: ') and str(bad) in lines[0], err
    tally('hostile --state files', type(e.value).__name__, what)


def test_the_tuned_pair_itself_passes(tuned_hf, hf, audit):
    """The controls: the merge against its directory, and the bare state beside the base model, both PASS."""
    outcome, text = library(tuned_hf['source'], tuned_hf['dir'], tuned_hf['dir'].parent)
    assert outcome == 'PASS' and 'from the tuned initial state' in text, text
    report = verify(hf['source'], hf['dir'], tokens=TOKENS, state=tuned_hf['bare'], model_state=tuned_hf['state_dir'])
    assert report.passed and report.state is not None, report.render()
    tally('hostile rwkv7_state.safetensors', 'PASS', 'the state as converted (control)')
    tally('hostile --state files', 'PASS', 'the state as converted (control)')


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
    proc = start_script(SCRIPT, '--rwkv7', hf['source'], '--model', model, '--tokens', 48)
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
    tally('interrupted verify', f'SIGINT: exit {proc.returncode}, one line, nothing written')
