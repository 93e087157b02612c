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


# ------------------------------------------------------------------------------------------------- layout writers
# Each writes the canonical state dict `sd` the way one producer in the wild stores it (table.LAYOUTS names them
# and cites where each was verified) and returns (path, the canonical state dict that file means): a file is a
# faithful copy, so converting it must give exactly what converting `expected` gives.

_RC4A_TRAIN = {'x_r': 'time_maa_r', 'x_w': 'time_maa_w', 'x_k': 'time_maa_k', 'x_v': 'time_maa_v', 'x_a': 'time_maa_a',
               'x_g': 'time_maa_g', 'w0': 'time_decay', 'w1': 'time_decay_w1', 'w2': 'time_decay_w2',
               'a0': 'time_aaaaa', 'a1': 'time_aaa_w1', 'a2': 'time_aaa_w2', 'v0': 'time_misc_v', 'v1': 'mv_w1',
               'v2': 'mv_w2', 'g1': 'gate_w1', 'g2': 'gate_w2', 'k_k': 'time_misc_kkk', 'k_a': 'time_misc_a',
               'r_k': 'time_faaaa'}
_RC4A_DEMO = {'x_r': 'xx_r', 'x_w': 'xx_w', 'x_k': 'xx_k', 'x_v': 'xx_v', 'x_a': 'xx_a', 'x_g': 'xx_g', 'w0': 'ww_b',
              'w1': 'ww_w1', 'w2': 'ww_w2', 'a0': 'aa_b', 'a1': 'aa_w1', 'a2': 'aa_w2', 'v0': 'vv_b', 'v1': 'vv_w1',
              'v2': 'vv_w2', 'g1': 'gg_w1', 'g2': 'gg_w2', 'k_k': 'kk_s', 'k_a': 'ka_s', 'r_k': 'rk_s'}
LORA_FACTOR = ('w1', 'w2', 'a1', 'a2', 'v1', 'v2', 'g1', 'g2')


def _renamed(sd: dict[str, torch.Tensor], att: dict[str, str], ffn_x_k: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        parts = k.split('.')
        if len(parts) == 4 and parts[2] == 'att' and parts[3] in att:
            k = '.'.join(parts[:3] + [att[parts[3]]])
        elif len(parts) == 4 and parts[2:] == ['ffn', 'x_k']:
            k = '.'.join(parts[:3] + [ffn_x_k])
        out[k] = v
    return out


def to_rc4a_train(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RWKV-LM `RWKV-v5/src/model.py` names of 2024-11-23..29; time_faaaa is [1,1,H,N]."""
    out = _renamed(sd, _RC4A_TRAIN, 'time_maa_k')
    return {k: (v.reshape(1, 1, *v.shape) if k.endswith('time_faaaa') else v) for k, v in out.items()}


def to_rc4a_demo(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`RWKV-v7/rwkv_v7_demo.py` of the rc4a release: block 0 has no vv_*."""
    out = _renamed(sd, _RC4A_DEMO, 'xx_k')
    return {k: v for k, v in out.items() if not k.startswith('blocks.0.att.vv_')}


def to_st(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """web-rwkv / ai00 `.st`: fp16, LoRA factors transposed."""
    return {k: (v.t() if k.split('.')[-1] in LORA_FACTOR and k.startswith('blocks.') else v).half().contiguous()
            for k, v in sd.items()}


def _hf_dir(path: Path, tensors: dict[str, torch.Tensor], architectures: list[str], shard: bool = False) -> Path:
    import json

    from safetensors.torch import save_file
    path.mkdir(parents=True, exist_ok=True)
    config = {'architectures': architectures, 'model_type': 'rwkv7'}  # several ports write 'rwkv7'
    (path / 'config.json').write_text(json.dumps(config))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if not shard:
        save_file(tensors, str(path / 'model.safetensors'), metadata={'format': 'pt'})
        return path
    names = list(tensors)
    half = len(names) // 2
    weight_map = {}
    for j, part in enumerate((names[:half], names[half:])):
        file = f'model-{j + 1:05d}-of-00002.safetensors'
        save_file({n: tensors[n] for n in part}, str(path / file), metadata={'format': 'pt'})
        weight_map.update({n: file for n in part})
    (path / 'model.safetensors.index.json').write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
    return path


def write_layout(layout: str, sd: dict[str, torch.Tensor], folder: Path,
                 edit=None) -> tuple[Path, dict[str, torch.Tensor]]:
    """`sd` written in `layout` (one of LAYOUT_WRITERS) under `folder`; returns (path, what it means canonically).
    `edit`, if given, changes the stored name -> tensor mapping just before it is written (a mutation)."""
    folder = Path(folder)
    edit = edit or (lambda stored: stored)
    if layout == 'rc4a-train':
        return save(edit(to_rc4a_train(sd)), folder / 'rc4a.pth'), sd
    if layout == 'rc4a-demo':
        return save(edit(to_rc4a_demo(sd)), folder / 'rc4a-demo.pth'), sd
    if layout == 'lightning':
        torch.save({'state_dict': edit(add_prefix(sd, 'model.')), 'epoch': 1, 'global_step': 10}, folder / 'last.ckpt')
        return folder / 'last.ckpt', sd
    if layout == 'st':
        from safetensors.torch import save_file
        stored = {k: v.contiguous() for k, v in edit(to_st(sd)).items()}
        save_file(stored, str(folder / 'model.st'), metadata={'rwkv_version': 'x070', 'model_type': 'rwkv'})
        return folder / 'model.st', {k: v.half() for k, v in sd.items()}
    if layout == 'hf-rwkv7-prefix':
        return _hf_dir(folder / 'hf-rwkv7', edit(add_prefix(sd, 'rwkv7.')), ['Rwkv7ForCausalLM']), sd
    if layout == 'hf-model-prefix-sharded':
        return _hf_dir(folder / 'hf-model', edit(add_prefix(sd, 'model.')), ['RWKV7ForCausalLM'], shard=True), sd
    if layout == 'hf-transformers-rwkv':
        return _hf_dir(folder / 'hf-trwkv', edit(to_transformers_rwkv(sd)), ['Rwkv7ForCausalLM']), sd
    if layout == 'hf-rwkv-block':
        arch = ['RWKV7ForCausalLM', 'RWKV7Model', 'RWKV7PreTrainedModel']
        return _hf_dir(folder / 'hf-rwkv-block', edit(dict(sd)), arch), sd
    raise KeyError(layout)


def to_transformers_rwkv(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """rwkv-rs/transformers-rwkv: `model.` + BlinkDL names, `model.embeddings.weight`, LoRA factors as nn.Linear."""
    out = {}
    for k, v in sd.items():
        if k == 'emb.weight':
            out['model.embeddings.weight'] = v
        elif k == 'head.weight':
            out[k] = v
        elif k.split('.')[-1] in LORA_FACTOR:
            out[f'model.{k}.weight'] = v.t().contiguous()
        else:
            out['model.' + k] = v
    return out


LAYOUT_WRITERS = ('rc4a-train', 'rc4a-demo', 'lightning', 'st', 'hf-rwkv7-prefix', 'hf-model-prefix-sharded',
                  'hf-transformers-rwkv', 'hf-rwkv-block')


# fla-side layouts: a modern fla state dict rewritten the way older fla versions saved it
def to_fla_jan2025(fla_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fla 7f8c169f: k_k, k_a, ffn.x_k stored [1,1,C]; layer 0 has a (unused) v_lora."""
    out = {k: (v.reshape(1, 1, -1) if k.endswith(('attn.k_k', 'attn.k_a', 'ffn.x_k')) else v) for k, v in fla_sd.items()}
    for k in [k for k in fla_sd if k.startswith('model.layers.1.attn.v_lora.')]:
        out[k.replace('layers.1.', 'layers.0.')] = torch.zeros_like(fla_sd[k])
    return out


def to_fla_x_x(fla_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fla 845112af: the six mixing vectors stacked as attn.x_x [6, C]."""
    out = {}
    for k, v in fla_sd.items():
        if k.endswith('.attn.x_r'):
            base = k[: -len('x_r')]
            out[base + 'x_x'] = torch.cat([fla_sd[base + f'x_{c}'].reshape(1, -1) for c in 'rwkvag'])
        elif not any(k.endswith(f'.attn.x_{c}') for c in 'wkvag'):
            out[k] = v
    return out


FLA_LAYOUT_WRITERS = {'fla-jan2025': to_fla_jan2025, 'fla-x_x': to_fla_x_x}


# ----------------------------------------------------------------------------------------------- tuned states

def make_tuned_state(shape: Goose, seed: int = 5, scale: float = 0.5) -> torch.Tensor:
    """[L, H, N, N] tuned initial wkv states in BlinkDL's orientation ([head, value, key], RWKV-PEFT's time_state),
    scaled like a trained state (entries of order 0.1 to 1) and far from symmetric, so a transpose shows."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape.layers, shape.heads, shape.head_size, shape.head_size, generator=gen) * scale


def time_states(state: torch.Tensor) -> dict[str, torch.Tensor]:
    """`state` [L, H, V, K] as RWKV-PEFT names it: `blocks.N.att.time_state`, alone (a bare state file) or to add to
    the weights (a state-tuned merge, as merge/merge_state.py writes it)."""
    return {f'blocks.{i}.att.time_state': s.clone() for i, s in enumerate(state)}


def write_state_conversion(source: str | Path, outdir: str | Path, transposed: bool = True) -> Path:
    """The converted state file (formats.state_file: rwkv7_state.safetensors, [H, K, V] per layer) of the time_state
    tensors in `source`, into `outdir` (made if missing). `transposed=False` writes them untransposed, the wrong
    orientation. Tests write it themselves until the converter does."""
    from fla.rwkv7_convert.formats.readers import open_checkpoint
    from fla.rwkv7_convert.formats.safetensors_writer import write_safetensors
    from fla.rwkv7_convert.formats.state_file import METADATA, STATE_FILE

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with open_checkpoint(source) as ckpt:
        refs = sorted(((int(n.split('.')[1]), r) for n, r in ckpt.tree.items() if n.endswith('.att.time_state')))
        write_safetensors(outdir / STATE_FILE, state_file_tensors([r for _, r in refs], to_fla=transposed), METADATA)
    return outdir / STATE_FILE


def state_file_tensors(layers: list, to_fla: bool) -> list:
    """OutTensors for a state file (formats.state_file) from per-layer refs in BlinkDL's [H, V, K] (`to_fla`: turned
    by the table's state op, SWAP_LAST_TWO) or written as they are."""
    import numpy as np

    from fla.rwkv7_convert.formats.outputs import OutTensor
    from fla.rwkv7_convert.formats.state_file import FLA_STATE_KEY
    from fla.rwkv7_convert.mapping.ops import IDENTITY, SWAP_LAST_TWO

    op = SWAP_LAST_TWO if to_fla else IDENTITY
    return [OutTensor(FLA_STATE_KEY.format(i=i), op.shape(ref.shape), ref.dtype,
                      lambda ref=ref: np.ascontiguousarray(op.apply(ref.load().reshape(ref.shape))))
            for i, ref in enumerate(layers)]
