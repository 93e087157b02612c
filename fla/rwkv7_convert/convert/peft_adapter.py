"""An RWKV-PEFT adapter as a Hugging Face PEFT adapter directory (adapter_config.json, adapter_model.safetensors) for
the converted base model: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE_DIR), ADAPTER_DIR)`.

Each method's PEFT form is the table's (`AdapterMethod.peft`, `peft_note`): LoRA stays LoRA (factors as stored, alpha
as lora_alpha), PiSSA becomes a LoRA of rank 2r ([A; A0], [B, -B0], scale 1), Bone becomes MiSS (disha is
miss_block); Bat has none. The trained full tensors go to `modules_to_save` when they make whole modules of
adapter_methods.PEFT_MODULES (LayerNorms, embeddings, head); anything else is refused in one line that offers the merged form.
The names are fla's (the table's rules), under PEFT's `base_model.model.` prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fla.rwkv7_convert.errors import UnsupportedVariantError
from fla.rwkv7_convert.formats.atomic import write_json
from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.formats.dtypes import TORCH_DTYPE, TORCH_NAME
from fla.rwkv7_convert.formats.outputs import OutTensor
from fla.rwkv7_convert.formats.safetensors_writer import write_safetensors
from fla.rwkv7_convert.mapping.adapter_methods import PEFT_MODULES
from fla.rwkv7_convert.mapping.adapter_plan import AdapterFile, check_base, from_torch, to_torch
from fla.rwkv7_convert.mapping.engine import lookup_blinkdl
from fla.rwkv7_convert.mapping.plan import Plan
from fla.rwkv7_convert.mapping.schema import PeftTensor, Target

# torch is imported inside the functions that use it: the command line imports this module, and a conversion never
# pays for torch (~2 s: the `import torch` row of benchmarks/benchmark_convert.py; tests/test_commands.py checks).

PEFT_DIR = 'peft'  # inside the converted base model's directory
PEFT_PREFIX = 'base_model.model.'
CONFIG_FILE, WEIGHTS_FILE = 'adapter_config.json', 'adapter_model.safetensors'
_INSTEAD = 'use --adapter-format merged (the merged model, which carries everything)'


@dataclass
class PeftAdapter:
    config: dict
    tensors: list[OutTensor]

    def write(self, outdir: Path, on_tensor: Callable[[OutTensor], None] | None = None) -> list[str]:
        folder = outdir / PEFT_DIR
        folder.mkdir()
        write_safetensors(folder / WEIGHTS_FILE, self.tensors, {'format': 'pt'}, on_tensor=on_tensor)
        write_json(folder / CONFIG_FILE, self.config)
        return [f'{PEFT_DIR}/{WEIGHTS_FILE}', f'{PEFT_DIR}/{CONFIG_FILE}']


def fla_module(blinkdl: str) -> tuple[str, str]:
    """(fla module path, parameter name) of a canonical RWKV-LM tensor name, from the table's rules."""
    rule, layer = lookup_blinkdl(blinkdl)
    fla = rule.names(layer)[1]
    module, _, param = fla.rpartition('.') if fla else ('', '', '')
    return module, param


def _factor_tensors(adapter: AdapterFile, shown: str) -> tuple[list[OutTensor], list[str], int]:
    method = adapter.method
    if not method.peft_tensors:
        raise UnsupportedVariantError(f'a {method.name} adapter has no PEFT form: {method.peft_note}; {_INSTEAD}', shown)
    if len(adapter.ranks) > 1:
        raise UnsupportedVariantError(f'ranks {adapter.ranks} differ between targets; PEFT\'s form here takes one '
                                      f'rank; {_INSTEAD}', shown)
    out, modules = [], []
    for target, factors in adapter.factors.items():
        module = fla_module(target)[0]
        modules.append(module)
        out += [_joined(f'{PEFT_PREFIX}{module}.{t.suffix}', t, factors) for t in method.peft_tensors]
    return out, modules, adapter.ranks[0]


def _joined(name: str, t: PeftTensor, factors: dict[str, TensorRef]) -> OutTensor:
    """One PEFT tensor: a factor as stored, or several joined along `t.axis` with their signs (torch.cat's dtype)."""
    refs = [(factors[s], sign) for s, sign in t.parts]
    if t.as_stored:
        ref = refs[0][0]
        return OutTensor(name, tuple(ref.shape), ref.dtype, ref.load)
    import torch

    meta = torch.cat([torch.empty(r.shape, dtype=getattr(torch, TORCH_NAME[r.dtype]), device='meta') for r, _ in refs],
                     t.axis)
    dtype = TORCH_DTYPE[str(meta.dtype).removeprefix('torch.')]

    def produce():
        return from_torch(torch.cat([to_torch(r) * sign for r, sign in refs], t.axis), dtype)
    return OutTensor(name, tuple(meta.shape), dtype, produce)


def _trained_tensors(adapter: AdapterFile, shown: str) -> tuple[list[OutTensor], list[str]]:
    """The trained full tensors as modules_to_save: whole modules of PEFT_MODULES only."""
    by_module: dict[str, dict[str, str]] = {}
    for name in adapter.trained:
        module, param = fla_module(name)
        if not module:
            continue  # a tensor fla does not use (layer 0's v0/v1/v2): the merge drops it too
        by_module.setdefault(module, {})[param] = name
    out = []
    for module, params in by_module.items():
        kind = module.rpartition('.')[2]
        whole = PEFT_MODULES.get(kind)
        if whole is None or set(params) != set(whole):
            what = next(iter(params.values()))
            why = (f'of {module}, whose other parameters were not trained' if whole else
                   f'fla keeps it in {module}, a module with untrained parameters')
            raise UnsupportedVariantError(f'the adapter trains {what} in full, and PEFT carries trained tensors only as '
                                          f'whole modules (modules_to_save: LayerNorms, embeddings, head): {why}; '
                                          f'{_INSTEAD}', shown)
        for param in whole:
            ref = adapter.trained[params[param]]
            rule = lookup_blinkdl(params[param])[0]
            shape = rule.op.shape(tuple(ref.shape))
            out.append(OutTensor(f'{PEFT_PREFIX}{module}.{param}', shape, ref.dtype,
                                 lambda ref=ref, rule=rule: rule.op.apply(ref.load().reshape(ref.shape)).copy()))
    return out, sorted(by_module)


def peft_tensors(adapter: AdapterFile, plan: Plan, shown: str) -> PeftAdapter:
    """The PEFT adapter of `adapter` for the base model of `plan` (checked against it first): one line when PEFT has
    no form for the method or for a trained tensor."""
    check_base(adapter, {e.blinkdl: e.source for e in plan.entries}, shown)
    if any(lookup_blinkdl(n)[0].target is not Target.WEIGHTS for n in adapter.trained):
        raise UnsupportedVariantError(f'the adapter trains the initial state (time_state), which PEFT has no place '
                                      f'for; {_INSTEAD}', shown)
    factors, targets, r = _factor_tensors(adapter, shown)
    trained, modules = _trained_tensors(adapter, shown)
    method = adapter.method
    rank = r * method.peft_rank_factor
    config = {'peft_type': method.peft_type, 'task_type': 'CAUSAL_LM', 'base_model_name_or_path': None,
              'target_modules': targets, 'modules_to_save': modules or None, 'bias': 'none', 'inference_mode': True,
              'r': rank}
    if method.peft_type == 'LORA':
        alpha = adapter.alpha if method.peft_alpha == 'alpha' else rank
        config.update(lora_alpha=alpha, lora_dropout=0.0, use_rslora=False, init_lora_weights=True)
    else:
        config.update(init_weights=True, miss_dropout=0.0, mini_r=1)
    return PeftAdapter(config, factors + trained)
