"""Writes RWKV-7 checkpoints the way BlinkDL's RWKV-LM does, with random but trained-like values.

Names and shapes follow RWKV-LM's `RWKV-v7/train_temp/src/model.py` (see ../shared/rwkv7-format.md): vectors are
`[1, 1, C]`, `r_k` is `[H, N]`, layer 0 carries the unused `att.v0/v1/v2`. The values are drawn so that every path
of the forward pass matters: decays spread over their whole range, gates away from 0 and 1, non-trivial norms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch


@dataclass(frozen=True)
class Goose:
    """The shape of an RWKV-7 model, in BlinkDL's symbols."""

    vocab: int = 256
    hidden: int = 128
    layers: int = 2
    head_size: int = 64
    ffn: int | None = None
    w_rank: int = 32
    a_rank: int = 32
    v_rank: int = 32
    g_rank: int = 32

    @property
    def heads(self) -> int:
        return self.hidden // self.head_size

    @property
    def ffn_width(self) -> int:
        return self.ffn if self.ffn is not None else 4 * self.hidden

    def but(self, **changes) -> Goose:
        return replace(self, **changes)


def make_state_dict(
    shape: Goose,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    layer0_v: bool = True,
) -> dict[str, torch.Tensor]:
    """An RWKV-LM-format state dict (canonical names and shapes, no prefix) for `shape`."""
    gen = torch.Generator().manual_seed(seed)
    C, H, N, F, V = shape.hidden, shape.heads, shape.head_size, shape.ffn_width, shape.vocab

    def randn(*size, std=1.0, mean=0.0):
        return torch.randn(*size, generator=gen) * std + mean

    def uniform(*size, low=0.0, high=1.0):
        return torch.rand(*size, generator=gen) * (high - low) + low

    def vec(t):
        return t.reshape(1, 1, C)

    sd: dict[str, torch.Tensor] = {'emb.weight': randn(V, C, std=0.3)}
    for i in range(shape.layers):
        b = f'blocks.{i}.'
        if i == 0:
            sd[b + 'ln0.weight'] = randn(C, std=0.2, mean=1.0)
            sd[b + 'ln0.bias'] = randn(C, std=0.1)
        sd[b + 'ln1.weight'] = randn(C, std=0.2, mean=1.0)
        sd[b + 'ln1.bias'] = randn(C, std=0.1)
        sd[b + 'ln2.weight'] = randn(C, std=0.2, mean=1.0)
        sd[b + 'ln2.bias'] = randn(C, std=0.1)
        a = b + 'att.'
        for name in 'rwkvag':
            sd[a + f'x_{name}'] = vec(uniform(C))
        # w0 spans fast to slow decays, as trained models do
        sd[a + 'w0'] = vec(uniform(C, low=-6.0, high=1.5))
        sd[a + 'w1'] = randn(C, shape.w_rank, std=0.3 / math.sqrt(C))
        sd[a + 'w2'] = randn(shape.w_rank, C, std=0.3)
        sd[a + 'a0'] = vec(randn(C, std=0.5, mean=-0.2))
        sd[a + 'a1'] = randn(C, shape.a_rank, std=0.5 / math.sqrt(C))
        sd[a + 'a2'] = randn(shape.a_rank, C, std=0.5)
        if i > 0 or layer0_v:
            sd[a + 'v0'] = vec(randn(C, std=0.5, mean=0.5))
            sd[a + 'v1'] = randn(C, shape.v_rank, std=0.5 / math.sqrt(C))
            sd[a + 'v2'] = randn(shape.v_rank, C, std=0.5)
        sd[a + 'g1'] = randn(C, shape.g_rank, std=1.0 / math.sqrt(C))
        sd[a + 'g2'] = randn(shape.g_rank, C, std=0.5 / math.sqrt(shape.g_rank))
        sd[a + 'k_k'] = vec(randn(C, std=0.2, mean=0.8))
        sd[a + 'k_a'] = vec(randn(C, std=0.2, mean=1.0))
        sd[a + 'r_k'] = randn(H, N, std=0.3)
        for proj in ('receptance', 'key', 'value', 'output'):
            sd[a + f'{proj}.weight'] = randn(C, C, std=1.0 / math.sqrt(C))
        sd[a + 'ln_x.weight'] = randn(C, std=0.2, mean=0.8)
        sd[a + 'ln_x.bias'] = randn(C, std=0.1)
        f = b + 'ffn.'
        sd[f + 'x_k'] = vec(uniform(C))
        sd[f + 'key.weight'] = randn(F, C, std=1.0 / math.sqrt(C))
        sd[f + 'value.weight'] = randn(C, F, std=1.0 / math.sqrt(F))
    sd['ln_out.weight'] = randn(C, std=0.2, mean=1.0)
    sd['ln_out.bias'] = randn(C, std=0.1)
    sd['head.weight'] = randn(V, C, std=2.0 / math.sqrt(C))
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def squeeze_vectors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `[C]` variant: every `[1, 1, C]` vector stored squeezed, as some exporters write them."""
    return {k: (v.reshape(-1) if v.dim() == 3 else v) for k, v in sd.items()}


def flatten_r_k(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.reshape(-1) if k.endswith('att.r_k') else v) for k, v in sd.items()}


def add_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def save(sd: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Save as RWKV-LM does (`torch.save`) or, for a `.safetensors` path, with safetensors."""
    path = Path(path)
    if path.suffix == '.safetensors':
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path
