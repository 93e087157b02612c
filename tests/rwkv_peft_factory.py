"""RWKV-PEFT adapters as its trainer saves them, and its merge scripts as a test oracle.

The adapter files follow JL-er/RWKV-PEFT @ 5b8aac9 (adapter_methods.ADAPTER_METHODS cites the files):
`rwkvt/peft/rwkvLinear.py` for the factors' names and shapes, `rwkvt/lightning_train/trainer.py` for what is saved
(the factors and the parameters whose names hold a `train_parts` entry, the `model.` of the Lightning module stripped),
`rwkvt/peft/peft_loading.py` for init_pissa.pth (module names of the Lightning module: `model.` kept).

`rwkv_peft_merge` is the oracle: the merge scripts' steps (`merge/merge.py` for LoRA and PiSSA,
`merge/merge_disha.py` for Bone and Bat) written again from their code, over whole state dicts as they run, einops
included; it shares no code with the library (mapping/adapter_ops.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from einops import rearrange
from rwkv7_factory import Goose

TARGETS = ('att.receptance', 'att.key', 'att.value', 'att.output', 'ffn.key', 'ffn.value')
METHODS = ('lora', 'pissa', 'bone', 'bat')


def target_names(shape: Goose, targets: tuple[str, ...] = TARGETS) -> list[str]:
    return [f'blocks.{i}.{t}' for i in range(shape.layers) for t in targets]


def make_adapter(base: dict[str, torch.Tensor], shape: Goose, method: str, rank: int = 8, seed: int = 1,
                 dtype: torch.dtype = torch.float32, train_parts: tuple[str, ...] = ('ln',),
                 targets: tuple[str, ...] = TARGETS) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(adapter state dict, init_pissa state dict or None) of a run of `method` on `base`, as if trained a while:
    factors away from their initial values, and the parameters naming a `train_parts` entry moved a little."""
    gen = torch.Generator().manual_seed(seed)

    def noise(*size, std):
        return torch.randn(*size, generator=gen) * std

    adapter: dict[str, torch.Tensor] = {}
    init: dict[str, torch.Tensor] | None = {} if method == 'pissa' else None
    for name in target_names(shape, targets):
        W = base[name + '.weight'].float()
        out, n_in = W.shape
        if method == 'lora':
            adapter[name + '.lora_A'] = noise(rank, n_in, std=1 / math.sqrt(n_in))
            adapter[name + '.lora_B'] = noise(out, rank, std=0.05)
        elif method == 'pissa':
            U, S, Vh = torch.linalg.svd(W, full_matrices=False)
            A0 = torch.diag(S[:rank].sqrt()) @ Vh[:rank]
            B0 = U[:, :rank] @ torch.diag(S[:rank].sqrt())
            init[f'model.{name}.init_lora_A'], init[f'model.{name}.init_lora_B'] = A0, B0
            adapter[name + '.lora_A'] = A0 + noise(*A0.shape, std=0.02)
            adapter[name + '.lora_B'] = B0 + noise(*B0.shape, std=0.02)
        elif method == 'bone':
            adapter[name + '.disha'] = noise(rank, out, std=0.02)
        elif method == 'bat':
            adapter[name + '.disha'] = noise(n_in // rank, rank, rank, std=0.05)
        else:
            raise ValueError(method)
    for k, v in base.items():
        if any(part in k for part in train_parts):
            adapter[k] = v + noise(*v.shape, std=0.05).to(v.dtype)
    adapter = {k: v.to(dtype) for k, v in adapter.items()}
    init = {k: v.to(dtype) for k, v in init.items()} if init is not None else None
    return adapter, init


def rwkv_peft_merge(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], method: str,
                    init: dict[str, torch.Tensor] | None = None, alpha: float | None = None) -> OrderedDict:
    """The state dict RWKV-PEFT's merge script saves for these inputs (the CPU, no quantization)."""
    w = {k: v.clone() for k, v in base.items()}  # as loaded from the files: the merge works in place
    for k in adapter:  # trained tensors replace the base's, factors join
        w[k] = adapter[k].clone()
    marker = 'disha' if method in ('bone', 'bat') else 'lora'
    out: OrderedDict = OrderedDict()
    keys = list(w.keys())
    for k in keys:
        if k.endswith('.weight'):
            prefix = k[:-len('.weight')]
            if marker == 'lora' and prefix + '.lora_A' in keys:
                A, B = w[prefix + '.lora_A'], w[prefix + '.lora_B']
                r = B.shape[1]
                if method == 'pissa':
                    w[k] = (w[k] - init['model.' + prefix + '.init_lora_B'] @ init['model.' + prefix + '.init_lora_A']
                            ).to(dtype=torch.bfloat16)
                    w[k] += B @ A
                else:
                    w[k] += B @ A * (alpha / r)
                out[k] = w[k].clone()
                continue
            if marker == 'disha' and prefix + '.disha' in keys:
                D = w[prefix + '.disha']
                if D.dim() == 3:
                    r = D.shape[1]
                    blocks = rearrange(w[k], '(a r1) (b r2) -> a b r1 r2', r1=r, r2=r) @ D + D
                    w[k] += rearrange(blocks, 'a b r1 r2 -> (a r1) (b r2)')
                else:
                    r = D.shape[0]
                    n_in = w[k].size(-1)
                    if n_in % r:
                        n = n_in // r * r
                        w[k][:, :n] = (w[k][:, :n].reshape(-1, n_in // r, r).permute(1, 2, 0) + D).permute(
                            2, 0, 1).reshape(*w[k][:, :n].shape)
                        w[k][:, n:] = w[k][:, n:] + D.transpose(0, 1)[:, :n_in % r]
                    else:
                        t = w[k].reshape(-1, n_in // r, r).permute(1, 2, 0) + D
                        w[k] = t.permute(2, 0, 1).reshape(*w[k].shape)
                out[k] = w[k].clone()
                continue
        if marker not in k:
            out[k] = w[k].clone()
    return out
