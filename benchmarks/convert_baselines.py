#!/usr/bin/env python
"""The baselines benchmark_convert.py times ours against, and the checks that their outputs are ours, each run in a
fresh process as `python benchmarks/convert_baselines.py COMMAND ARGS`:

  _naive_to SRC OUT      what one would otherwise write: fla's model (random init), torch.load, renames, save_pretrained
  _plain_to SRC OUT      the strongest plain script: torch.load(mmap=True) + renames + safetensors' save_file
  _naive_from DIR OUT    the reverse: from_pretrained, renames back, torch.save
  _compare_dirs A B      tensor-by-tensor equality of two model directories ('' when equal)
  _compare_pth A B       the same for two .pth files (layer-0 v0/v1/v2 ignored: dropped by design)

torch, safetensors and fla are imported inside the functions: the benchmark's driver imports this module for
WORKER alone and must stay small (harness.py says why).
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness import Goose

WORKER = Path(__file__).resolve()

_NORMS = {'ln0': 'pre_norm', 'ln1': 'attn_norm', 'ln2': 'ffn_norm'}
_PROJ = {'receptance': 'r_proj', 'key': 'k_proj', 'value': 'v_proj', 'output': 'o_proj'}
_LORA_SLOT = {'0': 'lora.2.bias', '1': 'lora.0.weight', '2': 'lora.2.weight'}
_TOP = {'emb.weight': 'model.embeddings.weight', 'ln_out.weight': 'model.norm.weight',
        'ln_out.bias': 'model.norm.bias', 'head.weight': 'lm_head.weight'}


def _naive_name(name: str) -> tuple[str | None, bool]:
    """BlinkDL name -> (fla name or None to drop, transpose?) — the hand-written renaming a user would write."""
    if name in _TOP:
        return _TOP[name], False
    _, i, part, rest = name.split('.', 3)
    pre = f'model.layers.{i}.'
    if part in _NORMS:
        return pre + f'{_NORMS[part]}.{rest}', False
    if part == 'ffn':
        return pre + f'ffn.{rest}', False
    head = rest.split('.')[0]
    if head in _PROJ:
        return pre + f'attn.{_PROJ[head]}.weight', False
    if head == 'ln_x':
        return pre + f'attn.g_norm.{rest.split(".")[1]}', False
    if len(rest) == 2 and rest[0] in 'wavg' and rest[1] in '012':
        if rest[0] == 'v' and i == '0':
            return None, False  # layer 0 uses its own v as v_first: no v_lora there
        return pre + f'attn.{rest[0]}_lora.{_LORA_SLOT[rest[1]]}', rest[1] != '0'
    return pre + f'attn.{rest}', False  # x_*, k_k, k_a, r_k


def _naive_config(sd):
    from fla.models import RWKV7Config

    V, C = sd['emb.weight'].shape
    H, N = sd['blocks.0.att.r_k'].shape
    L = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    return RWKV7Config(
        hidden_size=C, num_hidden_layers=L, head_dim=N, num_heads=H, vocab_size=V,
        intermediate_size=sd['blocks.0.ffn.key.weight'].shape[0],
        decay_low_rank_dim=sd['blocks.0.att.w1'].shape[1], a_low_rank_dim=sd['blocks.0.att.a1'].shape[1],
        v_low_rank_dim=sd['blocks.1.att.v1'].shape[1], gate_low_rank_dim=sd['blocks.0.att.g1'].shape[1],
        norm_eps=1e-5, bos_token_id=None, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)


def naive_to_fla(src: str, out: str) -> None:
    import torch
    from fla.models import RWKV7ForCausalLM

    sd = torch.load(src, map_location='cpu', weights_only=True)
    model = RWKV7ForCausalLM(_naive_config(sd))
    target = model.state_dict()
    renamed = {}
    for name, t in sd.items():
        new, transpose = _naive_name(name)
        if new is None:
            continue
        t = t.t() if transpose else t
        renamed[new] = t.reshape(target[new].shape)
    model.load_state_dict(renamed, strict=True)
    model.to(sd['emb.weight'].dtype)
    model.save_pretrained(out)


def plain_to_fla(src: str, out: str) -> None:
    """torch.load(mmap=True) + safetensors' save_file: memory-mapped input, one output file, nothing instantiated."""
    import torch
    from fla.models import RWKV7ForCausalLM
    from safetensors.torch import save_file

    sd = torch.load(src, map_location='cpu', weights_only=True, mmap=True)
    config = _naive_config(sd)
    with torch.device('meta'):  # target names and shapes only
        shapes = {k: v.shape for k, v in RWKV7ForCausalLM(config).state_dict().items()}
    renamed = {}
    for name, t in sd.items():
        new, transpose = _naive_name(name)
        if new is not None:
            renamed[new] = (t.t() if transpose else t).reshape(shapes[new]).contiguous()
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(renamed, str(Path(out) / 'model.safetensors'), metadata={'format': 'pt'})
    config.save_pretrained(out)


def naive_from_fla(model_dir: str, out: str) -> None:
    import torch
    from fla.models import RWKV7ForCausalLM

    model = RWKV7ForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    back = {}
    inverse = {}
    C = model.config.hidden_size
    # only the names are taken from Goose; shapes come from the model's tensors
    for old, shape in Goose.rwkv_lm(C, model.config.num_hidden_layers, model.config.vocab_size).tensors():
        new, transpose = _naive_name(old)
        if new is not None:
            inverse[new] = (old, transpose, len(shape) == 3)
    for name, t in model.state_dict().items():
        old, transpose, vector = inverse[name]
        t = t.t() if transpose else t
        back[old] = (t.reshape(1, 1, -1) if vector else t).contiguous()
    torch.save(back, out)


def compare_outputs(a: str, b: str) -> str:
    """Tensor-by-tensor equality of two safetensors model directories (low memory); '' when equal."""
    import torch
    from safetensors import safe_open

    def tensors(d):
        files = sorted(Path(d).glob('*.safetensors'))
        return {k: f for f in files for k in safe_open(str(f), 'pt').keys()}

    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        return f'different names: {sorted(set(ta) ^ set(tb))[:6]}'
    for k in ta:
        with safe_open(str(ta[k]), 'pt') as fa, safe_open(str(tb[k]), 'pt') as fb:
            x, y = fa.get_tensor(k), fb.get_tensor(k)
        if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
            return f'{k} differs ({tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype})'
    return ''


def compare_pth(a: str, b: str) -> str:
    """Tensor-by-tensor equality of two .pth state dicts, ignoring layer-0 v0/v1/v2 (dropped by design)."""
    import torch

    x = torch.load(a, map_location='cpu', weights_only=True, mmap=True)
    y = torch.load(b, map_location='cpu', weights_only=True, mmap=True)
    skip = {'blocks.0.att.v0', 'blocks.0.att.v1', 'blocks.0.att.v2'}
    kx, ky = set(x) - skip, set(y) - skip
    if kx != ky:
        return f'different names: {sorted(kx ^ ky)[:6]}'
    for k in sorted(kx):
        if x[k].shape != y[k].shape or x[k].dtype != y[k].dtype or not torch.equal(x[k], y[k]):
            return f'{k} differs ({tuple(x[k].shape)} vs {tuple(y[k].shape)})'
    return ''


COMMANDS = {'_naive_to': naive_to_fla, '_plain_to': plain_to_fla, '_naive_from': naive_from_fla,
            '_compare_dirs': lambda a, b: print(compare_outputs(a, b)), '_compare_pth': lambda a, b: print(compare_pth(a, b))}


if __name__ == '__main__':
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        raise SystemExit(f'usage: {WORKER.name} {{{",".join(COMMANDS)}}} ARGS (run by benchmark_convert.py)')
    COMMANDS[sys.argv[1]](*sys.argv[2:])
