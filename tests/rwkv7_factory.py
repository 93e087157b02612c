"""Writes RWKV-7 checkpoints the way BlinkDL's RWKV-LM does, with random but trained-like values: the one generator
of tests and benchmarks (benchmarks/ imports it for released-size files).

Names and shapes follow RWKV-LM's `RWKV-v7/train_temp/src/model.py` (see ../shared/rwkv7-format.md): vectors are
`[1, 1, C]`, `r_k` is `[H, N]`, layer 0 carries the unused `att.v0/v1/v2`. The values are drawn so that every path
of the forward pass matters: decays spread over their whole range, gates away from 0 and 1, non-trivial norms.

torch is imported inside the functions that draw or save: the benchmarks' drivers import this module for the shapes
alone, and Linux passes a parent's peak RSS on to every child it starts, so a driver holding torch (~300 MB) would
floor every peak RSS it measures.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# released RWKV-7 "Goose" World models: name -> (hidden size C, layers L); tiny is a quick smoke test, not released
RELEASED = {'0.1B': (768, 12), '0.4B': (1024, 24), '1.5B': (2048, 24), '2.9B': (2560, 32), '7.2B': (4096, 32),
            'tiny': (256, 2)}
# How make_state_dict draws the values. 'tests' (the default): per tensor, trained-like, float32 (tests pin results on
# it). 'trained-like' (released-size files, drawn in the target dtype: memory is the file's size once): LayerNorm gains
# around 1, mixing coefficients in [0, 1], other vectors N(0, 0.2). 'long-memory', issue #29's ill-conditioned recipe:
# every vector N(0, 0.1), the decay base w0 around -2 (decays exp(-exp(-softplus(2) - 0.5)) ~ 0.93 per token). Matrices
# are N(0, fan_in^-0.5) in both released profiles.
PROFILES = ('trained-like', 'long-memory')
LONG_MEMORY_W0, LONG_MEMORY_SCALE = -2.0, 0.1


def lora_rank(factor: float, C: int) -> int:
    """RWKV-LM's suggested LoRA rank: max(32, round(f * sqrt(C) / 32) * 32)."""
    return max(32, int(round(factor * math.sqrt(C) / 32)) * 32)


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

    @classmethod
    def rwkv_lm(cls, hidden: int, layers: int, vocab: int = 65536, head_size: int = 64) -> Goose:
        """The shape RWKV-LM trains at this width and depth (FFN 4C, its suggested LoRA ranks), as released."""
        return cls(vocab=vocab, hidden=hidden, layers=layers, head_size=head_size, w_rank=lora_rank(2.5, hidden),
                   a_rank=lora_rank(2.5, hidden), v_rank=lora_rank(1.7, hidden), g_rank=lora_rank(5.0, hidden))

    @classmethod
    def released(cls, size: str) -> Goose:
        return cls.rwkv_lm(*RELEASED[size])

    @property
    def heads(self) -> int:
        return self.hidden // self.head_size

    @property
    def ffn_width(self) -> int:
        return self.ffn if self.ffn is not None else 4 * self.hidden

    @property
    def ranks(self) -> dict[str, int]:
        return {'w': self.w_rank, 'a': self.a_rank, 'v': self.v_rank, 'g': self.g_rank}

    def but(self, **changes) -> Goose:
        return replace(self, **changes)

    def tensors(self, layer0_v: bool = True) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) in RWKV-LM's module order, the order the values are drawn in."""
        C, F, V, r = self.hidden, self.ffn_width, self.vocab, self.ranks
        vec = (1, 1, C)
        out: list[tuple[str, tuple[int, ...]]] = [('emb.weight', (V, C))]
        for i in range(self.layers):
            b, a = f'blocks.{i}.', f'blocks.{i}.att.'
            norms = ('ln0', 'ln1', 'ln2') if i == 0 else ('ln1', 'ln2')
            out += [(b + f'{n}.{p}', (C,)) for n in norms for p in ('weight', 'bias')]
            out += [(a + f'x_{c}', vec) for c in 'rwkvag']
            for letter in 'wav' if i > 0 or layer0_v else 'wa':
                out += [(a + f'{letter}0', vec), (a + f'{letter}1', (C, r[letter])), (a + f'{letter}2', (r[letter], C))]
            out += [(a + 'g1', (C, r['g'])), (a + 'g2', (r['g'], C)), (a + 'k_k', vec), (a + 'k_a', vec),
                    (a + 'r_k', (self.heads, self.head_size))]
            out += [(a + f'{p}.weight', (C, C)) for p in ('receptance', 'key', 'value', 'output')]
            out += [(a + 'ln_x.weight', (C,)), (a + 'ln_x.bias', (C,))]
            out += [(b + 'ffn.x_k', vec), (b + 'ffn.key.weight', (F, C)), (b + 'ffn.value.weight', (C, F))]
        return out + [('ln_out.weight', (C,)), ('ln_out.bias', (C,)), ('head.weight', (V, C))]

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(s) for _, s in self.tensors())


# The 'tests' profile: ('normal', mean, std) or ('uniform', low, high) per tensor, by name
_TESTS_RECIPE = {'w0': ('uniform', -6.0, 1.5),  # fast to slow decays, as trained models have
                 'w2': ('normal', 0.0, 0.3), 'a0': ('normal', -0.2, 0.5), 'a2': ('normal', 0.0, 0.5),
                 'v0': ('normal', 0.5, 0.5), 'v2': ('normal', 0.0, 0.5), 'k_k': ('normal', 0.8, 0.2),
                 'k_a': ('normal', 1.0, 0.2), 'r_k': ('normal', 0.0, 0.3), 'bias': ('normal', 0.0, 0.1)}


def _tests_recipe(name: str, s: Goose) -> tuple[str, float, float]:
    *_, module, leaf = ['', *name.split('.')]
    C = s.hidden
    if leaf.startswith('x_'):
        return 'uniform', 0.0, 1.0
    if leaf in _TESTS_RECIPE:
        return _TESTS_RECIPE[leaf]
    if module.startswith('ln'):
        return 'normal', 0.8 if module == 'ln_x' else 1.0, 0.2
    if name == 'emb.weight':
        return 'normal', 0.0, 0.3
    fan = s.ffn_width if name.endswith('ffn.value.weight') else s.g_rank if leaf == 'g2' else C
    scale = {'head': 2.0, 'w1': 0.3, 'a1': 0.5, 'v1': 0.5, 'g2': 0.5}.get(module if leaf == 'weight' else leaf, 1.0)
    return 'normal', 0.0, scale / math.sqrt(fan)


def _released_draw(t: torch.Tensor, name: str, size: tuple[int, ...], profile: str, gen) -> None:
    if len(size) == 2 and not name.endswith('att.r_k'):
        t.normal_(0.0, 1.0 / math.sqrt(size[-1]), generator=gen)
    elif profile == 'long-memory':
        t.normal_(LONG_MEMORY_W0 if name.endswith('.att.w0') else 0.0, LONG_MEMORY_SCALE, generator=gen)
    elif name.endswith(('ln0.weight', 'ln1.weight', 'ln2.weight', 'ln_x.weight', 'ln_out.weight', 'k_k', 'k_a')):
        t.normal_(1.0, 0.1, generator=gen)
    elif len(size) == 3 and name.split('.')[-1].startswith('x_'):
        t.uniform_(0.0, 1.0, generator=gen)
    else:
        t.normal_(0.0, 0.2, generator=gen)


def make_state_dict(shape: Goose, dtype: torch.dtype | None = None, seed: int = 0, layer0_v: bool = True,
                    profile: str = 'tests') -> dict[str, torch.Tensor]:
    """An RWKV-LM-format state dict (canonical names and shapes, no prefix) for `shape`, its values drawn as `profile`
    says ('tests' or one of PROFILES); dtype float32 by default."""
    import torch

    if profile not in ('tests', *PROFILES):
        raise ValueError(f'profile {profile!r}: expected tests or one of {", ".join(PROFILES)}')
    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, size in shape.tensors(layer0_v):
        if profile != 'tests':  # drawn in the target dtype: a released-size file is held once
            sd[name] = torch.empty(size, dtype=dtype)
            _released_draw(sd[name], name, size, profile, gen)
            continue
        how, x, y = _tests_recipe(name, shape)
        if how == 'uniform':
            t = torch.rand(*size, generator=gen) * (y - x) + x
        else:
            t = torch.randn(*size, generator=gen) * y + x
        sd[name] = t.to(dtype).contiguous()
    return sd


def write_checkpoint(shape: Goose, path: str | Path, seed: int = 0, profile: str = 'trained-like') -> Path:
    """A released-style bf16 RWKV-LM `.pth` of `shape`, values as `profile` says (PROFILES); ~15 s for 3 GB on 2 cores.
    Written beside `path` and renamed into place: benchmarks reuse the file they find, so it must never be partial."""
    import torch

    path = Path(path)
    partial = save(make_state_dict(shape, torch.bfloat16, seed, profile=profile), path.with_name(path.name + '.partial'))
    os.replace(partial, path)
    return path


def squeeze_vectors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `[C]` variant: every `[1, 1, C]` vector stored squeezed, as some exporters write them."""
    return {k: (v.reshape(-1) if v.dim() == 3 else v) for k, v in sd.items()}


def flatten_r_k(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.reshape(-1) if k.endswith('att.r_k') else v) for k, v in sd.items()}


def add_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def save(sd: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Save as RWKV-LM does (`torch.save`) or, for a `.safetensors` path, with safetensors."""
    import torch

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
    import torch

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
    import torch

    out = {k: (v.reshape(1, 1, -1) if k.endswith(('attn.k_k', 'attn.k_a', 'ffn.x_k')) else v) for k, v in fla_sd.items()}
    for k in [k for k in fla_sd if k.startswith('model.layers.1.attn.v_lora.')]:
        out[k.replace('layers.1.', 'layers.0.')] = torch.zeros_like(fla_sd[k])
    return out


def to_fla_x_x(fla_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fla 845112af: the six mixing vectors stacked as attn.x_x [6, C]."""
    import torch

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
    import torch

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
