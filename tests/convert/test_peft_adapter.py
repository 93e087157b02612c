"""RWKV-PEFT adapters as Hugging Face PEFT adapters (`--adapter-format peft`): peft loads them onto the converted base
model and the logits are the merged model's; what PEFT has no form for is refused in one line, nothing written.

fla runs on the CPU with the torch stand-ins for its kernels (runtime.torch_wkv.installed): both sides run the same
modules, so what differs is only where the adapter is applied (merged into W, or beside it by peft).
"""

from __future__ import annotations

import pytest
import torch
from rwkv7_factory import Goose, make_state_dict, save
from rwkv_peft_factory import make_adapter
from safetensors.torch import load_file

from fla.rwkv7_convert.convert.adapters import AdapterSpec
from fla.rwkv7_convert.convert.peft_adapter import PEFT_DIR
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import UnsupportedVariantError
from fla.rwkv7_convert.runtime.torch_wkv import installed

peft = pytest.importorskip('peft')

SHAPE = Goose(hidden=128, layers=2)
TOKENS = torch.randint(0, SHAPE.vocab, (1, 24), generator=torch.Generator().manual_seed(3))


def _logits(model_dir, adapter_dir=None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    import fla  # noqa: F401  (registers rwkv7 with transformers)
    with installed(), torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        if adapter_dir is not None:
            model = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
        return model(TOKENS).logits.float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def _convert(tmp_path, method, rank, parts=('ln',), dtype=torch.float32):
    base = make_state_dict(SHAPE)
    adapter, init = make_adapter(base, SHAPE, method, rank=rank, train_parts=parts, dtype=dtype)
    save(base, tmp_path / 'base.pth')
    save(adapter, tmp_path / 'adapter.pth')
    if init is not None:
        save(init, tmp_path / 'init_pissa.pth')
    spec = dict(pissa_init=tmp_path / 'init_pissa.pth' if init is not None else None,
                alpha=16.0 if method == 'lora' else None)
    convert_to_fla(tmp_path / 'base.pth', tmp_path / 'peft', tokenizer='none',
                   adapter=AdapterSpec(tmp_path / 'adapter.pth', form='peft', **spec))
    convert_to_fla(tmp_path / 'base.pth', tmp_path / 'merged', tokenizer='none',
                   adapter=AdapterSpec(tmp_path / 'adapter.pth', **spec))
    return base, adapter, init


@pytest.mark.parametrize('method, rank, parts', [
    pytest.param('lora', 8, ('ln',), id='lora-layernorms'),
    pytest.param('lora', 4, ('ln', 'emb', 'head'), id='lora-emb-head'),
    pytest.param('bone', 8, ('ln',), id='bone-as-miss'),
    pytest.param('bone', 24, (), id='bone-rank-not-dividing'),
])
def test_peft_loads_the_adapter_onto_the_base_and_gives_the_merged_logits(tmp_path, method, rank, parts):
    _convert(tmp_path, method, rank, parts)
    merged = _logits(tmp_path / 'merged')
    with_adapter = _logits(tmp_path / 'peft', tmp_path / 'peft' / PEFT_DIR)
    base = _logits(tmp_path / 'peft')
    assert _rel(with_adapter, merged) < 1e-5
    assert _rel(base, merged) > 1e-2  # the adapter matters: loading it is what makes the two agree


def test_pissa_becomes_a_lora_of_twice_the_rank(tmp_path):
    """Exact in float32 against W - B0 A0 + B A; RWKV-PEFT's merge rounds W - B0 A0 to bf16 first (measured here)."""
    base, adapter, init = _convert(tmp_path, 'pissa', 8)
    exact = dict(base)
    for k in adapter:
        if k.endswith('.lora_A'):
            t = k.removesuffix('.lora_A')
            W0 = base[t + '.weight'].double()
            B0, A0 = init[f'model.{t}.init_lora_B'].double(), init[f'model.{t}.init_lora_A'].double()
            exact[t + '.weight'] = (W0 - B0 @ A0 + adapter[t + '.lora_B'].double() @ adapter[k].double()).float()
        elif not k.endswith('.lora_B'):
            exact[k] = adapter[k]
    save(exact, tmp_path / 'exact.pth')
    convert_to_fla(tmp_path / 'exact.pth', tmp_path / 'exact', tokenizer='none')
    with_adapter = _logits(tmp_path / 'peft', tmp_path / 'peft' / PEFT_DIR)
    assert _rel(with_adapter, _logits(tmp_path / 'exact')) < 1e-5
    stored = load_file(tmp_path / 'peft' / PEFT_DIR / 'adapter_model.safetensors')
    assert stored['base_model.model.model.layers.0.attn.k_proj.lora_A.weight'].shape == (16, SHAPE.hidden)
    bf16_rounding = _rel(_logits(tmp_path / 'merged'), with_adapter)
    print(f'PiSSA: RWKV-PEFT merge (residual rounded to bf16) vs exact, relative RMS of logits {bf16_rounding:.2e}')
    assert 1e-5 < bf16_rounding < 5e-2


def test_the_names_are_those_peft_saves_itself(tmp_path):
    """The same keys and shapes as peft's own save of the same configuration on the converted base."""
    from transformers import AutoModelForCausalLM

    import fla  # noqa: F401
    _convert(tmp_path, 'lora', 8)
    ours = load_file(tmp_path / 'peft' / PEFT_DIR / 'adapter_model.safetensors')
    config = peft.PeftConfig.from_pretrained(tmp_path / 'peft' / PEFT_DIR)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / 'peft', dtype=torch.float32)
    theirs = peft.get_peft_model_state_dict(peft.get_peft_model(model, config))
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


@pytest.mark.parametrize('method, parts, message', [
    pytest.param('bat', ('ln',), 'a DiSHA Bat adapter has no PEFT form: PEFT\'s MiSS "bat" keeps one block per output',
                 id='bat'),
    pytest.param('lora', ('ln', 'x_r'), r'trains blocks.0.att.x_r in full.*modules_to_save.*use --adapter-format merged',
                 id='mixing-vector'),
    pytest.param('lora', ('ln1.weight',), r'trains blocks.0.ln1.weight in full.*whose other parameters were not trained',
                 id='half-a-layernorm'),
])
def test_what_peft_cannot_hold_is_refused_offering_the_merged_form(tmp_path, method, parts, message):
    base = make_state_dict(SHAPE)
    adapter, _ = make_adapter(base, SHAPE, method, rank=8, train_parts=parts)
    save(base, tmp_path / 'base.pth')
    save(adapter, tmp_path / 'adapter.pth')
    spec = AdapterSpec(tmp_path / 'adapter.pth', alpha=8.0 if method == 'lora' else None, form='peft')
    with pytest.raises(UnsupportedVariantError, match=message) as info:
        convert_to_fla(tmp_path / 'base.pth', tmp_path / 'out', tokenizer='none', adapter=spec)
    assert 'use --adapter-format merged' in info.value.one_line()
    assert not (tmp_path / 'out').exists()
