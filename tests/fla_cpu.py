"""Run fla's RWKV7ForCausalLM in tests, on the CPU through Triton's interpreter (or on CUDA where there is one).

On the CPU fla's Triton kernels run under `TRITON_INTERPRET=1`, provided the autotuner does not time configs (the
interpreter cannot) and fla does not cache autotune results. Both variables are read when triton and fla are
imported, so `use_interpreter()` must run first: conftest.py calls it before anything imports them.
Only fla's recurrent path works in the interpreter; fla takes it for eval-mode, no-grad calls of fewer than 64
tokens, so `fla_logits` feeds a sequence in pieces through the cache.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest
import torch

from fla.rwkv7_convert.runtime.device import PROMPT_PIECE, RECURRENT_MAX_TOKENS, use_interpreter  # noqa: F401  (re-exported)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def fla_device() -> torch.device:
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def blinkdl_to_fla(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Test-only name/shape mapping from a canonical BlinkDL state dict to RWKV7ForCausalLM's (rwkv7-format.md)."""
    top = {'emb.weight': 'model.embeddings.weight', 'head.weight': 'lm_head.weight',
           'ln_out.weight': 'model.norm.weight', 'ln_out.bias': 'model.norm.bias'}
    norms = {'ln0': 'pre_norm', 'ln1': 'attn_norm', 'ln2': 'ffn_norm'}
    loras = {'w': 'w_lora', 'a': 'a_lora', 'v': 'v_lora', 'g': 'g_lora'}
    lora_slots = {'0': 'lora.2.bias', '1': 'lora.0.weight', '2': 'lora.2.weight'}
    projs = {'receptance': 'r_proj', 'key': 'k_proj', 'value': 'v_proj', 'output': 'o_proj'}
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name in top:
            out[top[name]] = t
            continue
        m = re.fullmatch(r'blocks\.(\d+)\.(ln0|ln1|ln2|att|ffn)\.(.+)', name)
        if m is None:
            raise KeyError(f'unmapped tensor {name!r}')
        i, part, rest = m.groups()
        layer = f'model.layers.{i}.'
        if part in norms:
            out[layer + f'{norms[part]}.{rest}'] = t
        elif part == 'ffn':
            out[layer + f'ffn.{rest}'] = t.reshape(-1) if rest == 'x_k' else t
        elif re.fullmatch(r'[wavg][012]', rest):
            if i == '0' and rest[0] == 'v':
                continue  # layer 0 has no v_lora: v_first is its own v
            # BlinkDL multiplies x @ w1 @ w2; nn.Linear stores [out, in]
            out[layer + f'attn.{loras[rest[0]]}.{lora_slots[rest[1]]}'] = t.reshape(-1) if rest[1] == '0' else t.t()
        elif rest.split('.')[0] in projs:
            out[layer + f'attn.{projs[rest.split(".")[0]]}.weight'] = t
        elif rest.startswith('ln_x.'):
            out[layer + 'attn.g_norm.' + rest[len('ln_x.'):]] = t
        elif rest in ('k_k', 'k_a'):
            out[layer + f'attn.{rest}'] = t.reshape(-1)
        elif rest == 'r_k':
            out[layer + 'attn.r_k'] = t
        elif re.fullmatch(r'x_[rwkvag]', rest):
            out[layer + f'attn.{rest}'] = t.reshape(1, 1, -1)
        else:
            raise KeyError(f'unmapped tensor {name!r}')
    return out


def fla_config(sd: Mapping[str, torch.Tensor], norm_eps: float = 1e-5):
    from fla.models import RWKV7Config

    V, C = sd['emb.weight'].shape
    H, N = sd['blocks.0.att.r_k'].shape
    L = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    # layer 0's v1 may be absent (it is never used), so read the v rank from layer 1
    v1 = sd.get('blocks.1.att.v1', sd.get('blocks.0.att.v1'))
    return RWKV7Config(
        hidden_size=C, num_hidden_layers=L, head_dim=N, vocab_size=V,
        intermediate_size=sd['blocks.0.ffn.key.weight'].shape[0],
        decay_low_rank_dim=sd['blocks.0.att.w1'].shape[1],
        a_low_rank_dim=sd['blocks.0.att.a1'].shape[1],
        v_low_rank_dim=v1.shape[1] if v1 is not None else 32,
        gate_low_rank_dim=sd['blocks.0.att.g1'].shape[1],
        norm_eps=norm_eps, eos_token_id=0, pad_token_id=0, bos_token_id=None,
    )


def fla_model(sd: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32, device: torch.device | None = None):
    """An eval-mode RWKV7ForCausalLM holding the BlinkDL weights `sd` (canonical names, r_k as [H, N])."""
    from fla.models import RWKV7ForCausalLM

    from fla.rwkv7_convert.runtime.loading import fla_init_skipped

    # fla's own init is wasted work here, and divides by zero for 1-layer models
    with fla_init_skipped():
        model = RWKV7ForCausalLM(fla_config(sd))
    model.load_state_dict(blinkdl_to_fla(sd), strict=True)
    return model.to(device=device or fla_device(), dtype=dtype).eval()


def fla_logits(model, tokens: torch.LongTensor, piece: int = PROMPT_PIECE) -> torch.Tensor:
    """Logits [B, T, V] of `model` for tokens [B, T], fed `piece` tokens at a time through the cache."""
    from fla.rwkv7_convert.runtime.device import fla_logits as run
    return run(model, tokens, piece=piece)
