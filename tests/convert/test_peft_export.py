"""The way back (`rwkv7-export --model BASE_DIR --peft-adapter ADAPTER_DIR`): a PEFT adapter on a converted model as
an RWKV-PEFT adapter .pth (round trips exact) or merged into the exported base (RWKV-PEFT's merge, exactly)."""

from __future__ import annotations

import json

import pytest
import torch
from rwkv7_factory import Goose, make_state_dict, save
from rwkv_peft_factory import make_adapter, rwkv_peft_merge

from fla.rwkv7_convert.cli.export import main_from_fla
from fla.rwkv7_convert.convert.adapters import AdapterSpec
from fla.rwkv7_convert.convert.peft_adapter import PEFT_DIR
from fla.rwkv7_convert.convert.peft_export import export_adapter
from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import KeyMismatchError, UnsupportedVariantError

peft = pytest.importorskip('peft')

SHAPE = Goose(hidden=128, layers=2)


def _to_peft(tmp_path, method, dtype=torch.float32, parts=('ln',), alpha=16.0):
    base = make_state_dict(SHAPE, dtype=dtype)
    adapter, _ = make_adapter(base, SHAPE, method, rank=8, dtype=dtype, train_parts=parts)
    save(base, tmp_path / 'base.pth')
    save(adapter, tmp_path / 'adapter.pth')
    alpha = alpha if method == 'lora' else None
    convert_to_fla(tmp_path / 'base.pth', tmp_path / 'fla', tokenizer='none',
                   adapter=AdapterSpec(tmp_path / 'adapter.pth', alpha=alpha, form='peft'))
    return adapter, alpha


@pytest.mark.parametrize('method, dtype, parts', [
    pytest.param('lora', torch.float32, ('ln',), id='lora'),
    pytest.param('lora', torch.bfloat16, ('ln', 'emb', 'head'), id='lora-bf16-emb-head'),
    pytest.param('bone', torch.float32, ('ln',), id='bone'),
])
def test_rwkv_peft_adapter_round_trips_through_peft_exactly(tmp_path, method, dtype, parts):
    adapter, _ = _to_peft(tmp_path, method, dtype, parts)
    export_adapter(tmp_path / 'fla', tmp_path / 'fla' / PEFT_DIR, tmp_path / 'back.pth')
    back = torch.load(tmp_path / 'back.pth')
    assert set(back) == set(adapter)
    for k in adapter:
        assert back[k].dtype == adapter[k].dtype and torch.equal(back[k], adapter[k]), k


@pytest.mark.parametrize('method', ['lora', 'bone'])
def test_the_merged_export_is_rwkv_peft_merge_of_the_exported_base(tmp_path, method):
    adapter, alpha = _to_peft(tmp_path, method, parts=('ln', 'emb'))
    export_adapter(tmp_path / 'fla', tmp_path / 'fla' / PEFT_DIR, tmp_path / 'merged.pth', form='merged')
    convert_from_fla(tmp_path / 'fla', tmp_path / 'base_back.pth')
    want = rwkv_peft_merge(torch.load(tmp_path / 'base_back.pth'), adapter, method, None, alpha)
    got = torch.load(tmp_path / 'merged.pth')
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def test_the_cli_states_the_alpha_the_merge_needs(tmp_path, capsys):
    _to_peft(tmp_path, 'lora', alpha=24.0)
    argv = ['--model', str(tmp_path / 'fla'), '--peft-adapter', str(tmp_path / 'fla' / PEFT_DIR),
            '--output', str(tmp_path / 'back.pth')]
    assert main_from_fla(argv) == 0
    out = capsys.readouterr().out
    assert 'alpha 24: RWKV-PEFT\'s merge needs it' in out and '--lora-alpha 24' in out
    assert (tmp_path / 'back.pth').is_file()


def test_an_adapter_trained_in_peft_comes_back_as_rwkv_peft_and_merges_to_the_same_model(tmp_path):
    """A LoRA made by peft itself on the converted base: exported, then merged back by convert --adapter, gives
    the weights peft's own merge_and_unload gives."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import fla  # noqa: F401
    save(make_state_dict(SHAPE), tmp_path / 'base.pth')
    convert_to_fla(tmp_path / 'base.pth', tmp_path / 'fla', tokenizer='none')
    model = AutoModelForCausalLM.from_pretrained(tmp_path / 'fla', dtype=torch.float32)
    config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=['k_proj', 'value'], init_lora_weights=False,
                             modules_to_save=['attn_norm'])
    torch.manual_seed(0)
    tuned = peft.get_peft_model(model, config)
    with torch.no_grad():
        for n, p in tuned.named_parameters():
            if 'modules_to_save' in n:
                p.add_(0.1)
    tuned.save_pretrained(tmp_path / 'adapter')
    export_adapter(tmp_path / 'fla', tmp_path / 'adapter', tmp_path / 'back.pth')
    assert {k.split('.', 2)[2] for k in torch.load(tmp_path / 'back.pth')} == {
        'att.key.lora_A', 'att.key.lora_B', 'ffn.value.lora_A', 'ffn.value.lora_B', 'ln1.weight', 'ln1.bias'}
    convert_to_fla(tmp_path / 'base.pth', tmp_path / 'merged', tokenizer='none',
                   adapter=AdapterSpec(tmp_path / 'back.pth', alpha=12.0))
    want = {k: v.detach() for k, v in tuned.merge_and_unload().state_dict().items()}
    got = load_file(tmp_path / 'merged' / 'model.safetensors')
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=1e-6, atol=1e-6, msg=k)
    assert not torch.equal(got['model.layers.0.attn.k_proj.weight'],
                           load_file(tmp_path / 'fla' / 'model.safetensors')['model.layers.0.attn.k_proj.weight'])


@pytest.mark.parametrize('change, error, message', [
    pytest.param({'use_rslora': True}, UnsupportedVariantError, 'a LORA adapter with use_rslora=True has no RWKV-PEFT '
                 'form .LoRA is W', id='rslora'),
    pytest.param({'alpha_pattern': {'k_proj': 3}}, UnsupportedVariantError, 'alpha_pattern=', id='alpha-pattern'),
    pytest.param({'peft_type': 'MISS', 'init_weights': 'bat'}, UnsupportedVariantError,
                 'a MISS adapter with init_weights=\'bat\' has no RWKV-PEFT form', id='miss-bat'),
    pytest.param({'peft_type': 'IA3'}, UnsupportedVariantError, "peft_type 'IA3' has no RWKV-PEFT form", id='ia3'),
])
def test_peft_forms_without_an_rwkv_peft_equal_are_refused(tmp_path, change, error, message):
    _to_peft(tmp_path, 'lora')
    path = tmp_path / 'fla' / PEFT_DIR / 'adapter_config.json'
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(error, match=message):
        export_adapter(tmp_path / 'fla', tmp_path / 'fla' / PEFT_DIR, tmp_path / 'back.pth')
    assert not (tmp_path / 'back.pth').exists()


def test_an_adapter_on_another_base_is_refused(tmp_path):
    _to_peft(tmp_path, 'lora')
    save(make_state_dict(SHAPE.but(hidden=256)), tmp_path / 'other.pth')
    convert_to_fla(tmp_path / 'other.pth', tmp_path / 'other', tokenizer='none')
    with pytest.raises(KeyMismatchError, match='does not fit this base model'):
        export_adapter(tmp_path / 'other', tmp_path / 'fla' / PEFT_DIR, tmp_path / 'back.pth', form='merged')
    assert not (tmp_path / 'back.pth').exists()


def test_blinkdl_rwkv_package_runs_the_merged_export_as_peft_runs_the_adapter(tmp_path):
    """The merged .pth, run by BlinkDL's rwkv package, gives the logits of peft's model: base plus the adapter."""
    from blinkdl_rwkv import rwkv_package_model
    from transformers import AutoModelForCausalLM

    import fla  # noqa: F401
    from fla.rwkv7_convert.runtime.torch_wkv import installed
    _to_peft(tmp_path, 'bone', parts=('ln', 'head'))
    export_adapter(tmp_path / 'fla', tmp_path / 'fla' / PEFT_DIR, tmp_path / 'model.pth', form='merged')
    tokens = torch.randint(0, SHAPE.vocab, (24,), generator=torch.Generator().manual_seed(0))
    expected, _ = rwkv_package_model(tmp_path / 'model').forward(tokens.tolist(), None, full_output=True)
    with installed(), torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tmp_path / 'fla', dtype=torch.float32).eval()
        plain = base(tokens[None]).logits[0]
        got = peft.PeftModel.from_pretrained(base, tmp_path / 'fla' / PEFT_DIR).eval()(tokens[None]).logits[0]
    rel = ((got - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()
    assert rel < 1e-5, rel
    assert ((plain - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item() > 1e-2
