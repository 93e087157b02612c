"""RWKV-PEFT adapters merged on conversion (`--adapter`): the directory is RWKV-PEFT's merge followed by a conversion,
bit for bit, and everything the merge cannot do is refused in one line with nothing written.

The oracle (tests/rwkv_peft_factory.rwkv_peft_merge) is RWKV-PEFT's merge scripts written again from their code; the
library's formulas (mapping/adapter_ops.py) share nothing with it.
"""

from __future__ import annotations

import json

import pytest
import torch
from rwkv7_factory import Goose, make_state_dict, save
from rwkv_peft_factory import make_adapter, rwkv_peft_merge
from safetensors.torch import load_file

from fla.rwkv7_convert.cli.convert import main_to_fla
from fla.rwkv7_convert.cli.inspect import main_inspect
from fla.rwkv7_convert.convert.adapters import AdapterSpec
from fla.rwkv7_convert.convert.inspection import inspect_adapter
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import (
    ConversionError,
    KeyMismatchError,
    NonFiniteError,
    NotACheckpointError,
    UnsupportedVariantError,
)

SHAPE = Goose(hidden=128, layers=2)
ALPHA = {'lora': 24.0}


def _files(tmp_path, method, base, adapter, init):
    """base and merged files of the same name in two folders: the safetensors metadata names the source file."""
    (tmp_path / 'base').mkdir(exist_ok=True)
    (tmp_path / 'oracle').mkdir(exist_ok=True)
    save(base, tmp_path / 'base' / 'model.pth')
    save(adapter, tmp_path / 'adapter.pth')
    if init is not None:
        save(init, tmp_path / 'init_pissa.pth')
    merged = rwkv_peft_merge(base, adapter, method, init, ALPHA.get(method))
    save(merged, tmp_path / 'oracle' / 'model.pth')
    return AdapterSpec(tmp_path / 'adapter.pth', tmp_path / 'init_pissa.pth' if init is not None else None,
                       ALPHA.get(method))


def _same_directory(a, b):
    for name in ('model.safetensors', 'config.json'):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


CASES = [
    pytest.param('lora', 8, torch.float32, torch.float32, ('ln',), id='lora-fp32'),
    pytest.param('lora', 8, torch.bfloat16, torch.bfloat16, ('ln',), id='lora-bf16'),
    pytest.param('lora', 16, torch.bfloat16, torch.float32, ('ln', 'x_'), id='lora-bf16-base-fp32-adapter-x'),
    pytest.param('pissa', 8, torch.float32, torch.float32, ('ln',), id='pissa-fp32'),
    pytest.param('pissa', 8, torch.bfloat16, torch.bfloat16, ('ln', 'emb', 'head'), id='pissa-bf16-emb-head'),
    pytest.param('bone', 8, torch.float32, torch.float32, ('ln',), id='bone-fp32'),
    pytest.param('bone', 24, torch.float32, torch.float32, ('ln',), id='bone-rank-not-dividing'),
    pytest.param('bone', 8, torch.bfloat16, torch.float32, ('ln',), id='bone-bf16-base-fp32-adapter'),
    pytest.param('bat', 8, torch.float32, torch.float32, ('ln', 'x_'), id='bat-fp32'),
    pytest.param('bat', 16, torch.bfloat16, torch.bfloat16, ('ln',), id='bat-bf16'),
]


@pytest.mark.parametrize('method, rank, base_dtype, adapter_dtype, parts', CASES)
def test_merge_on_convert_is_rwkv_peft_merge_then_convert(tmp_path, method, rank, base_dtype, adapter_dtype, parts):
    base = make_state_dict(SHAPE, dtype=base_dtype)
    adapter, init = make_adapter(base, SHAPE, method, rank=rank, dtype=adapter_dtype, train_parts=parts)
    spec = _files(tmp_path, method, base, adapter, init)
    convert_to_fla(tmp_path / 'oracle' / 'model.pth', tmp_path / 'want', tokenizer='none')
    result = convert_to_fla(tmp_path / 'base' / 'model.pth', tmp_path / 'got', tokenizer='none', adapter=spec)
    _same_directory(tmp_path / 'want', tmp_path / 'got')
    # the adapter changed the model: every target and every trained tensor differs from the base's conversion
    convert_to_fla(tmp_path / 'base' / 'model.pth', tmp_path / 'plain', tokenizer='none')
    got, plain = load_file(tmp_path / 'got' / 'model.safetensors'), load_file(tmp_path / 'plain' / 'model.safetensors')
    changed = {k for k in got if got[k].dtype != plain[k].dtype or not torch.equal(got[k], plain[k])}
    assert {'model.layers.1.ffn.value.weight', 'model.layers.0.attn.r_proj.weight', 'model.norm.weight'} <= changed
    record = json.loads((tmp_path / 'got' / 'rwkv7_convert.json').read_text())['adapter']
    assert record['method'] == result.adapter.method.name and record['rank'] == [rank]


def test_the_cli_merges_and_names_the_adapter(tmp_path, capsys):
    base = make_state_dict(SHAPE)
    adapter, _ = make_adapter(base, SHAPE, 'lora', rank=4)
    spec = _files(tmp_path, 'lora', base, adapter, None)
    argv = ['--rwkv7', str(tmp_path / 'base' / 'model.pth'), '--adapter', str(spec.path), '--lora-alpha', '24',
            '--output', str(tmp_path / 'got'), '--tokenizer', 'none']
    assert main_to_fla(argv) == 0
    assert 'LoRA rank 4, alpha 24' in capsys.readouterr().out
    convert_to_fla(tmp_path / 'oracle' / 'model.pth', tmp_path / 'want', tokenizer='none')
    _same_directory(tmp_path / 'want', tmp_path / 'got')


def test_alpha_matters(tmp_path):
    """A wrong alpha gives another model: the merge reads the option it is given."""
    base = make_state_dict(SHAPE)
    adapter, _ = make_adapter(base, SHAPE, 'lora', rank=4)
    spec = _files(tmp_path, 'lora', base, adapter, None)
    convert_to_fla(tmp_path / 'base' / 'model.pth', tmp_path / 'a', tokenizer='none', adapter=spec)
    wrong = AdapterSpec(spec.path, alpha=spec.alpha * 2)
    convert_to_fla(tmp_path / 'base' / 'model.pth', tmp_path / 'b', tokenizer='none', adapter=wrong)
    assert (tmp_path / 'a' / 'model.safetensors').read_bytes() != (tmp_path / 'b' / 'model.safetensors').read_bytes()


def _refused_cases():
    return [
        pytest.param('lora', lambda a, i: a, {}, ConversionError, r'needs --lora-alpha A \(RWKV-PEFT keeps alpha outside '
                     r'the file: the training command\'s --lora_config "lora_alpha".*--pissa-init init_pissa.pth',
                     id='lora-without-alpha-or-pissa-without-init'),
        pytest.param('pissa', lambda a, i: a, {'alpha': 8.0, 'pissa': True}, ConversionError,
                     '--lora-alpha and --pissa-init given', id='both-options'),
        pytest.param('bone', lambda a, i: a, {'alpha': 8.0}, ConversionError,
                     '--lora-alpha does not apply to a DiSHA Bone adapter', id='alpha-for-bone'),
        pytest.param('lora', lambda a, i: {**a, 'blocks.1.ffn.key.disha': torch.zeros(8, 512)}, {'alpha': 8.0},
                     UnsupportedVariantError, r'mixes adapter methods in one file \(LoRA or PiSSA .* and DiSHA Bone',
                     id='mixed-methods'),
        pytest.param('bone', lambda a, i: {**a, 'blocks.1.ffn.key.disha': torch.zeros(64, 8, 8)}, {},
                     UnsupportedVariantError, 'mixes adapter methods in one file .DiSHA Bone .* and DiSHA Bat',
                     id='bone-and-bat'),
        pytest.param('pissa', lambda a, i: i, {}, UnsupportedVariantError,
                     'holds PiSSA\'s initial factors .*give it as --pissa-init', id='init-file-as-adapter'),
        pytest.param('lora', lambda a, i: {k: v for k, v in a.items() if 'lora' not in k}, {'alpha': 8.0},
                     UnsupportedVariantError, 'holds no adapter factors', id='no-factors'),
        pytest.param('lora', lambda a, i: {k: (v.t().contiguous() if k == 'blocks.0.att.key.lora_A' else v)
                                           for k, v in a.items()}, {'alpha': 8.0}, KeyMismatchError,
                     r'blocks.0.att.key.lora_A is \[128, 8\], expected', id='transposed-factor'),
        pytest.param('lora', lambda a, i: {k: v for k, v in a.items() if k != 'blocks.0.att.key.lora_B'},
                     {'alpha': 8.0}, KeyMismatchError, 'blocks.0.att.key.lora_B missing', id='unpaired-factor'),
        pytest.param('bat', lambda a, i: {k: v.to(torch.bfloat16) if 'disha' in k else v for k, v in a.items()}, {},
                     UnsupportedVariantError, 'the merge\'s matmul needs one dtype', id='bat-of-two-dtypes'),
        pytest.param('lora', lambda a, i: {**a, 'blocks.0.att.key.lora_C': torch.zeros(3)}, {'alpha': 8.0},
                     KeyMismatchError, 'unexpected tensor blocks.0.att.key.lora_C', id='unknown-name'),
    ]


@pytest.mark.parametrize('method, edit, options, error, message', _refused_cases())
def test_what_the_merge_cannot_do_is_refused_in_one_line_with_nothing_written(tmp_path, method, edit, options, error,
                                                                             message):
    base = make_state_dict(SHAPE)
    adapter, init = make_adapter(base, SHAPE, method, rank=8)
    save(base, tmp_path / 'base.pth')
    save(edit(adapter, init), tmp_path / 'adapter.pth')
    if init is not None:
        save(init, tmp_path / 'init_pissa.pth')
    spec = AdapterSpec(tmp_path / 'adapter.pth', tmp_path / 'init_pissa.pth' if options.get('pissa') else None,
                       options.get('alpha'))
    with pytest.raises(error, match=message) as info:
        convert_to_fla(tmp_path / 'base.pth', tmp_path / 'out', adapter=spec)
    assert '\n' not in info.value.one_line()
    assert not (tmp_path / 'out').exists()


def test_pissa_without_its_init_file_is_refused(tmp_path):
    base = make_state_dict(SHAPE)
    adapter, init = make_adapter(base, SHAPE, 'pissa', rank=8)
    save(base, tmp_path / 'base.pth')
    save(adapter, tmp_path / 'adapter.pth')
    with pytest.raises(ConversionError, match='PiSSA adapter .the same names. needs its init file instead: --pissa-init'):
        convert_to_fla(tmp_path / 'base.pth', tmp_path / 'out', adapter=AdapterSpec(tmp_path / 'adapter.pth'))
    assert not (tmp_path / 'out').exists()


def test_an_adapter_without_its_base_is_refused(tmp_path):
    base = make_state_dict(SHAPE)
    adapter, _ = make_adapter(base, SHAPE, 'bone', rank=8)
    save(adapter, tmp_path / 'adapter.pth')
    with pytest.raises(UnsupportedVariantError, match=r'not a model: convert it with the model it was trained on: '
                                                      r'--rwkv7 BASE.pth --adapter ADAPTER.pth'):
        convert_to_fla(tmp_path / 'adapter.pth', tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('other', [
    pytest.param(Goose(hidden=256, layers=2), id='wider'),
    pytest.param(Goose(hidden=128, layers=1), id='fewer-layers'),
    pytest.param(Goose(hidden=128, layers=2, ffn=384), id='other-ffn'),
])
def test_a_base_of_another_size_is_refused(tmp_path, other):
    adapter, _ = make_adapter(make_state_dict(SHAPE), SHAPE, 'lora', rank=8)
    save(make_state_dict(other), tmp_path / 'base.pth')
    save(adapter, tmp_path / 'adapter.pth')
    with pytest.raises(KeyMismatchError, match='does not fit this base model .trained on another size') as info:
        convert_to_fla(tmp_path / 'base.pth', tmp_path / 'out', adapter=AdapterSpec(tmp_path / 'adapter.pth', alpha=8))
    assert str(tmp_path / 'base.pth') in info.value.one_line()
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('method, rank, needs', [
    pytest.param('lora', 8, 'alpha (--lora-alpha A), not stored in the file', id='lora'),
    pytest.param('bat', 16, 'nothing besides its base model', id='bat'),
])
def test_inspect_describes_an_adapter(tmp_path, method, rank, needs):
    base = make_state_dict(SHAPE)
    adapter, _ = make_adapter(base, SHAPE, method, rank=rank, train_parts=('ln', 'x_k'),
                              targets=('att.key', 'ffn.value'))
    save(adapter, tmp_path / 'adapter.pth')
    text = '\n'.join(inspect_adapter(tmp_path / 'adapter.pth').lines())
    assert f'rank {rank}' in text and needs in text
    assert 'targets: att.key (blocks 0-1), ffn.value (blocks 0-1)' in text
    trained = sorted({k.replace('blocks.0.', 'blocks.N.').replace('blocks.1.', 'blocks.N.') for k in adapter
                      if 'lora' not in k and 'disha' not in k})
    assert f'trained full tensors: {len([k for k in adapter if "lora" not in k and "disha" not in k])} ' \
           f'({", ".join(trained)})' in text


def test_inspect_json_of_an_adapter_and_of_an_init_file(tmp_path, capsys):
    base = make_state_dict(SHAPE)
    adapter, init = make_adapter(base, SHAPE, 'pissa', rank=8)
    save(adapter, tmp_path / 'adapter.pth')
    save(init, tmp_path / 'init_pissa.pth')
    assert main_inspect(['--json', str(tmp_path / 'adapter.pth')]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found['direction'] == 'adapter' and found['adapter']['method'] == 'LoRA'
    assert found['adapter']['or'] == ['PiSSA'] and found['adapter']['rank'] == [8]
    assert len(found['adapter']['targets']) == 6 * SHAPE.layers
    assert main_inspect(['--json', str(tmp_path / 'init_pissa.pth')]) == UnsupportedVariantError.exit_code
    refused = json.loads(capsys.readouterr().out)
    assert refused['ok'] is False and refused['refusal'] == 'PiSSA init file given as the adapter'


def test_a_trained_tensor_the_base_lacks_is_refused(tmp_path):
    """A trained LayerNorm of a block the base does not have: trained on a deeper model."""
    base = make_state_dict(SHAPE)
    adapter, _ = make_adapter(base, SHAPE, 'bone', rank=8, targets=('att.key',))
    adapter['blocks.2.ln1.weight'] = adapter['blocks.1.ln1.weight']
    save(base, tmp_path / 'base.pth')
    save(adapter, tmp_path / 'adapter.pth')
    with pytest.raises(KeyMismatchError, match='blocks.2.ln1.weight is in the adapter but not in the base model'):
        convert_to_fla(tmp_path / 'base.pth', tmp_path / 'out', adapter=AdapterSpec(tmp_path / 'adapter.pth'))
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('damage, error, message', [
    pytest.param('nan', NonFiniteError, r'blocks.0.att.key.weight holds NaN or Inf', id='nan-in-a-factor'),
    pytest.param('truncated', NotACheckpointError, r'adapter.pth', id='truncated-adapter'),
])
def test_a_broken_adapter_is_refused_in_one_line_with_nothing_written(tmp_path, damage, error, message):
    base = make_state_dict(SHAPE)
    adapter, _ = make_adapter(base, SHAPE, 'lora', rank=8)
    if damage == 'nan':
        adapter['blocks.0.att.key.lora_B'][0, 0] = float('nan')
    save(base, tmp_path / 'base.pth')
    save(adapter, tmp_path / 'adapter.pth')
    if damage == 'truncated':
        data = (tmp_path / 'adapter.pth').read_bytes()
        (tmp_path / 'adapter.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(error, match=message) as info:
        convert_to_fla(tmp_path / 'base.pth', tmp_path / 'out', adapter=AdapterSpec(tmp_path / 'adapter.pth', alpha=8))
    assert '\n' not in info.value.one_line()
    assert not (tmp_path / 'out').exists()


def test_an_adapter_trained_with_its_state_merges_into_a_state_tuned_model(tmp_path):
    """train_parts with "time" saves time_state beside the factors: the merge is then a state-tuned merge, written as
    the oracle's merged file converts (rwkv7_state.safetensors beside the weights)."""
    from rwkv7_factory import make_tuned_state, time_states
    base = make_state_dict(SHAPE)
    adapter, _ = make_adapter(base, SHAPE, 'bone', rank=8)
    adapter.update(time_states(make_tuned_state(SHAPE)))
    spec = _files(tmp_path, 'bone', base, adapter, None)
    convert_to_fla(tmp_path / 'oracle' / 'model.pth', tmp_path / 'want', tokenizer='none')
    convert_to_fla(tmp_path / 'base' / 'model.pth', tmp_path / 'got', tokenizer='none', adapter=spec)
    _same_directory(tmp_path / 'want', tmp_path / 'got')
    state = 'rwkv7_state.safetensors'
    assert (tmp_path / 'got' / state).read_bytes() == (tmp_path / 'want' / state).read_bytes()
