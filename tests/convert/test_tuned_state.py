"""Tuned initial states through the converter, both ways: a state-tuned merge (RWKV-PEFT's merge_state.py, RWKV-block's
init_state.N.wkv) converts with rwkv7_state.safetensors beside unchanged weights; a bare state file converts against
its base model's directory; the export writes RWKV-PEFT's time_state back bit for bit (alone, or after the weights as
a merge). Every refusal is one line and writes nothing. That fla started from a converted state computes what the
reference and BlinkDL's package compute from the original: tests/proof/test_verify_state.py (the same converter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_script
from rwkv7_factory import Goose, _hf_dir, make_state_dict, make_tuned_state, save, state_file_tensors, time_states
from safetensors import safe_open
from safetensors.torch import load_file

from fla.rwkv7_convert.api import convert_state, export_state, inspect, load_initial_state
from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError, KeyMismatchError, NonFiniteError, OutputExistsError, refusal_exit_codes
from fla.rwkv7_convert.formats.state_file import FLA_STATE_KEY, STATE_FILE

SHAPE = Goose(vocab=64, hidden=128, layers=2, head_size=64)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('states')
    sd = make_state_dict(SHAPE, seed=4)
    state = make_tuned_state(SHAPE)
    base = save(sd, root / 'base.pth')
    convert_to_fla(base, root / 'base', tokenizer='none')
    return {'root': root, 'sd': sd, 'state': state, 'base': base, 'base_dir': root / 'base',
            'merge': save({**sd, **time_states(state)}, root / 'merge.pth'),
            'bare': save(time_states(state), root / 'state.pth')}


def _fla_state(directory: Path) -> torch.Tensor:
    return load_initial_state(directory)


def _same_files(a: Path, b: Path) -> bool:
    """The same config.json and the same weights (names, dtypes, values; the metadata names the source file)."""
    x, y = load_file(a / 'model.safetensors'), load_file(b / 'model.safetensors')
    return ((a / 'config.json').read_bytes() == (b / 'config.json').read_bytes() and list(x) == list(y)
            and all(x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]) for k in x))


def test_a_merge_converts_with_its_state_and_the_base_weights_unchanged(files, tmp_path):
    result = convert_to_fla(files['merge'], tmp_path / 'm', tokenizer='none')
    assert result.state_file == STATE_FILE and STATE_FILE in result.files
    # config.json and the weights are exactly the base model's conversion: every loader reads them as before
    assert _same_files(tmp_path / 'm', files['base_dir'])
    got = _fla_state(tmp_path / 'm')
    assert torch.equal(got, files['state'].transpose(-1, -2))  # fla's [H, K, V]
    with safe_open(tmp_path / 'm' / STATE_FILE, 'pt') as f:
        assert sorted(f.keys()) == [FLA_STATE_KEY.format(i=i) for i in range(SHAPE.layers)]
        assert f.metadata()['rwkv7_convert'] == 'initial_state'
    meta = json.loads((tmp_path / 'm' / 'rwkv7_convert.json').read_text())
    assert meta['state']['layers'] == SHAPE.layers and meta['state']['from'] == 'blocks.N.att.time_state'
    assert meta['parameters'] == json.loads((files['base_dir'] / 'rwkv7_convert.json').read_text())['parameters']
    card = (tmp_path / 'm' / 'README.md').read_text()
    assert '## Tuned initial state' in card and 'initial_cache' in card
    assert '## Tuned initial state' not in (files['base_dir'] / 'README.md').read_text()


@pytest.mark.parametrize('dtype', [pytest.param(torch.bfloat16, id='bf16'), pytest.param(torch.float16, id='fp16')])
def test_a_state_keeps_its_stored_dtype_whatever_the_precision(files, tmp_path, dtype):
    state = files['state'].to(dtype)
    merge = save({**files['sd'], **time_states(state)}, tmp_path / 'm.pth')
    convert_to_fla(merge, tmp_path / 'out', tokenizer='none', precision='fp32')
    stored = load_file(tmp_path / 'out' / STATE_FILE)
    assert {t.dtype for t in stored.values()} == {dtype}
    assert torch.equal(torch.stack([stored[FLA_STATE_KEY.format(i=i)] for i in range(SHAPE.layers)]),
                       state.transpose(-1, -2))


def test_rwkv_block_init_state_converts_as_the_same_state(files, tmp_path):
    """RWKV-block keeps the state as init_state.N.wkv (a .pth of its state_dict, or its hf_builder's directory)."""
    block = {**files['sd'], **{f'init_state.{i}.wkv': s.clone() for i, s in enumerate(files['state'])}}
    convert_to_fla(save(block, tmp_path / 'block.pth'), tmp_path / 'a', tokenizer='none')
    hf = _hf_dir(tmp_path / 'hf', block, ['RWKV7ForCausalLM', 'RWKV7Model'])
    result = convert_to_fla(hf, tmp_path / 'b', tokenizer='none')
    assert any('RWKV-block tuned state' in n for n in result.plan.notes)
    for out in ('a', 'b'):
        assert torch.equal(_fla_state(tmp_path / out), files['state'].transpose(-1, -2))
        assert _same_files(tmp_path / out, files['base_dir'])


def test_a_bare_state_converts_against_its_base_directory(files, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in files['base_dir'].iterdir()}
    result = convert_state(files['bare'], tmp_path / 's', files['base_dir'])
    assert sorted(p.name for p in (tmp_path / 's').iterdir()) == sorted(result.files) == ['rwkv7_convert.json', STATE_FILE]
    assert torch.equal(_fla_state(tmp_path / 's'), files['state'].transpose(-1, -2))
    meta = json.loads((tmp_path / 's' / 'rwkv7_convert.json').read_text())
    assert meta['base'] == {'name': 'base', 'num_hidden_layers': 2, 'num_heads': 2, 'head_dim': 64}
    assert meta['source']['name'] == 'state.pth' and len(meta['source']['sha256']) == 64
    assert {p.name: p.stat().st_mtime_ns for p in files['base_dir'].iterdir()} == before  # only read


def _refused(tmp_path, make, *args, error=ConversionError, **kwargs) -> str:
    with pytest.raises(error) as info:
        make(*args, **kwargs)
    line = info.value.one_line()
    assert '\n' not in line
    assert not (tmp_path / 'out').exists()
    return line


@pytest.mark.parametrize('make, message', [
    pytest.param(lambda st: {f'blocks.{i}.att.time_state': torch.zeros(4, 32, 32) for i in range(2)},
                 r'is \[4, 32, 32\], the base model .* has 2 heads of 64 \(\[2, 64, 64\]\): this state was tuned for '
                 'another model', id='head-size'),
    pytest.param(lambda st: {f'blocks.{i}.att.time_state': torch.zeros(1, 64, 64) for i in range(2)},
                 r'is \[1, 64, 64\], the base model .* has 2 heads of 64', id='head-count'),
    pytest.param(lambda st: time_states(torch.cat([st, st])), 'the state has a block 2, the base model .* has 2 layer',
                 id='more-layers'),
    pytest.param(lambda st: time_states(st[:1]), 'missing tensor blocks.1.att.time_state: the base model .* has 2 layers',
                 id='fewer-layers'),
    pytest.param(lambda st: {**time_states(st), 'blocks.0.att.time_statex': st[0]},
                 'unexpected tensor blocks.0.att.time_statex', id='stray-name'),
    pytest.param(lambda st: {k: v.to(torch.int32) for k, v in time_states(st).items()},
                 'blocks.0.att.time_state has dtype I32, expected a floating point dtype', id='int-state'),
])
def test_a_state_that_does_not_fit_its_base_is_refused_in_one_line(files, tmp_path, make, message):
    path = save(make(files['state']), tmp_path / 'st.pth')
    line = _refused(tmp_path, convert_state, path, tmp_path / 'out', files['base_dir'])
    assert str(path) in line
    import re
    assert re.search(message, line), line


def test_weights_given_with_a_base_are_refused(files, tmp_path):
    line = _refused(tmp_path, convert_state, files['merge'], tmp_path / 'out', files['base_dir'])
    assert 'holds model weights' in line and 'a state-tuned merge converts on its own, without --base' in line


@pytest.mark.parametrize('base', [
    pytest.param(lambda f, t: t / 'missing', id='missing'),
    pytest.param(lambda f, t: f['base'], id='a-pth-file'),
    pytest.param(lambda f, t: t, id='no-config'),
])
def test_a_base_that_is_no_converted_directory_is_refused(files, tmp_path, base):
    _refused(tmp_path, convert_state, files['bare'], tmp_path / 'out', base(files, tmp_path))


def test_a_non_finite_state_is_refused_unless_allowed(files, tmp_path):
    state = files['state'].clone()
    state[1, 0, 3, 5] = float('nan')
    path = save(time_states(state), tmp_path / 'nan.pth')
    line = _refused(tmp_path, convert_state, path, tmp_path / 'out', files['base_dir'], error=NonFiniteError)
    assert 'blocks.1.att.time_state holds NaN or Inf' in line
    merge = save({**files['sd'], **time_states(state)}, tmp_path / 'nanmerge.pth')
    _refused(tmp_path, convert_to_fla, merge, tmp_path / 'out', tokenizer='none', error=NonFiniteError)
    convert_state(path, tmp_path / 'ok', files['base_dir'], allow_nonfinite=True)
    assert torch.isnan(_fla_state(tmp_path / 'ok')[1, 0, 5, 3])


def test_an_existing_state_directory_is_kept_without_force(files, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    with pytest.raises(OutputExistsError):
        convert_state(files['bare'], out, files['base_dir'])
    assert [p.name for p in out.iterdir()] == ['keep.txt']
    convert_state(files['bare'], out, files['base_dir'], force=True)
    assert (out / STATE_FILE).is_file() and not (out / 'keep.txt').exists()


def test_a_merge_missing_some_blocks_states_is_reported(files, tmp_path):
    merge = save({**files['sd'], **time_states(files['state'][:1])}, tmp_path / 'half.pth')
    line = _refused(tmp_path, convert_to_fla, merge, tmp_path / 'out', tokenizer='none', error=KeyMismatchError)
    assert 'blocks.1.att.time_state missing: a tuned state has one per block' in line


# ------------------------------------------------------------------------------------------------------ the way back

@pytest.mark.parametrize('dtype', [pytest.param(torch.float32, id='fp32'), pytest.param(torch.bfloat16, id='bf16')])
def test_a_bare_state_round_trips_bit_for_bit(files, tmp_path, dtype):
    original = time_states(files['state'].to(dtype))
    convert_state(save(original, tmp_path / 'st.pth'), tmp_path / 's', files['base_dir'])
    export_state(tmp_path / 's', tmp_path / 'back.pth')
    back = torch.load(tmp_path / 'back.pth', weights_only=True)
    assert list(back) == list(original)
    assert all(back[k].dtype == dtype and torch.equal(back[k].view(torch.uint8), original[k].view(torch.uint8))
               for k in original)


def test_a_merge_round_trips_with_its_state(files, tmp_path):
    convert_to_fla(files['merge'], tmp_path / 'm', tokenizer='none')
    result = convert_from_fla(tmp_path / 'm', tmp_path / 'back.pth')
    assert any('state-tuned merge' in n for n in result.plan.notes)
    back, original = torch.load(tmp_path / 'back.pth', weights_only=True), torch.load(files['merge'], weights_only=True)
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original if k.endswith('time_state'))
    # the weights alone, and the state alone, on request
    convert_from_fla(tmp_path / 'm', tmp_path / 'weights.pth', drop_state=True)
    assert not any(k.endswith('time_state') for k in torch.load(tmp_path / 'weights.pth', weights_only=True))
    export_state(tmp_path / 'm', tmp_path / 'state.pth')
    only = torch.load(tmp_path / 'state.pth', weights_only=True)
    assert set(only) == {f'blocks.{i}.att.time_state' for i in range(SHAPE.layers)}
    assert all(torch.equal(only[k], original[k]) for k in only)


def test_a_state_trained_with_fla_exports_from_a_tensor(tmp_path):
    fla_state = torch.randn(3, 2, 32, 32).to(torch.bfloat16)  # [L, H, K, V]
    export_state(fla_state, tmp_path / 'st.safetensors', fmt='safetensors')
    got = load_file(tmp_path / 'st.safetensors')
    assert all(torch.equal(got[f'blocks.{i}.att.time_state'], fla_state[i].transpose(-1, -2)) for i in range(3))
    with pytest.raises(ConversionError, match=r'\[L, H, K, V\] tensor'):
        export_state(torch.zeros(2, 32, 32), tmp_path / 'x.pth')
    assert not (tmp_path / 'x.pth').exists()


def test_a_state_that_does_not_fit_the_directory_is_not_exported(files, tmp_path):
    convert_to_fla(files['merge'], tmp_path / 'm', tokenizer='none')
    other = torch.randn(3, 2, 64, 64)  # three layers where the model has two
    from fla.rwkv7_convert.formats.checkpoint import TensorRef
    from fla.rwkv7_convert.formats.safetensors_writer import write_safetensors
    from fla.rwkv7_convert.formats.state_file import METADATA
    refs = [TensorRef(f's{i}', tuple(s.shape), 'F32', lambda s=s: s.numpy()) for i, s in enumerate(other)]
    write_safetensors(tmp_path / 'm' / STATE_FILE, state_file_tensors(refs, to_fla=False), METADATA)
    for run in (lambda: convert_from_fla(tmp_path / 'm', tmp_path / 'out'),
                lambda: export_state(tmp_path / 'm', tmp_path / 'out')):
        with pytest.raises(ConversionError, match=r'the state is 3 layer\(s\) of \[2, 64, 64\], the model 2 layers'):
            run()
        assert not (tmp_path / 'out').exists()


def test_inspect_shows_the_state_on_both_sides(files, tmp_path):
    found = inspect(files['merge'])
    assert found.state == {'names': 'blocks.N.att.time_state', 'layers': 2, 'shape': [2, 64, 64], 'dtype': 'F32',
                           'file': 'merge.pth'}
    assert any(line.startswith('tuned initial state: 2 blocks of [2, 64, 64] F32') for line in found.lines())
    convert_to_fla(files['merge'], tmp_path / 'm', tokenizer='none')
    d = inspect(tmp_path / 'm').to_dict()
    assert d['direction'] == 'export' and d['state']['file'] == STATE_FILE and d['state']['layers'] == 2
    assert inspect(files['base_dir']).state is None


def test_the_commands_convert_and_export_a_bare_state(files, tmp_path):
    run = run_script(REPO / 'utils/convert_to_rwkv7.py', '--rwkv7', files['bare'], '--base', files['base_dir'], '--output',
               tmp_path / 's')
    assert run.returncode == 0 and f'{STATE_FILE}: 2 layers' in run.stdout, run.stderr
    run = run_script(REPO / 'utils/convert_from_fla_rwkv7.py', '--model', tmp_path / 's', '--output', tmp_path / 'back.pth',
               '--state-only')
    assert run.returncode == 0, run.stderr
    back, original = torch.load(tmp_path / 'back.pth', weights_only=True), torch.load(files['bare'], weights_only=True)
    assert all(torch.equal(back[k], original[k]) for k in original) and set(back) == set(original)
    refused = [
        ('utils/convert_to_rwkv7.py', '--rwkv7', files['bare'], '--output', tmp_path / 'x'),  # no base
        ('utils/convert_to_rwkv7.py', '--rwkv7', files['bare'], '--base', files['base_dir'], '--output', tmp_path / 'x',
         '--verify'),
        ('utils/convert_to_rwkv7.py', '--rwkv7', files['bare'], '--base', files['base_dir'], '--output', tmp_path / 'x',
         '--fuse-norm', 'false'),  # a bare state has no config.json
        ('utils/convert_from_fla_rwkv7.py', '--model', tmp_path / 's', '--output', tmp_path / 'x', '--state-only',
         '--precision', 'bf16'),
        ('utils/convert_from_fla_rwkv7.py', '--model', files['base_dir'], '--output', tmp_path / 'x', '--state-only'),
    ]
    for args in refused:
        run = run_script(REPO / args[0], *args[1:])
        assert run.returncode in refusal_exit_codes() and len(run.stderr.strip().splitlines()) == 1, (args, run.stderr)
        assert not (tmp_path / 'x').exists()
