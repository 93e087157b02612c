"""The export campaign's seeded mutations of the base directory: `mutated_case(hf, seed)` is case `seed`, the same on
every machine (Python's random.Random), given to the exporter and to verify."""

from __future__ import annotations

import torch

from hostile.directories import BASE, C
from hostile.draw import Draw


class Case:
    def __init__(self, hf: dict):
        self.config = dict(hf['config'])
        self.sd = dict(hf['tensors'])
        self.how = 'single'
        self.shard_sizes: list[int] | None = None
        self.precision: str | None = None
        self.harmful: list[str] = []
        self.harmed: set[str] = set()  # tensors a harmful mutation changed: benign ones leave them alone

    def unharmed(self) -> list[str]:
        return sorted(k for k in self.sd if k not in self.harmed and k.startswith('model.'))

    def __repr__(self) -> str:
        return f'Case(harmful={self.harmful}, harmed={sorted(self.harmed)}, how={self.how}, precision={self.precision})'


# each mutation changes the case; it returns True when the directory must still export to the canonical file

def stored_fp32(c: Case, d: Draw) -> bool:  # some tensors stored fp32 (exactly the bf16 values), --precision bf16
    for k in d.subset(c.unharmed(), 1, 6):
        c.sd[k] = c.sd[k].float()
    c.precision = 'bf16'
    return True


def sharded(c: Case, d: Draw) -> bool:  # index + shards of different sizes
    c.how, c.shard_sizes = 'shards', [d.integer(1, 40) for _ in range(d.integer(1, 4))]
    return True


def pytorch_bin(c: Case, d: Draw) -> bool:
    if c.how == 'single':
        c.how = 'bin'
    return True


def benign_config_keys(c: Case, d: Draw) -> bool:  # keys that do not change the weights: ignored
    for key in d.subset(['fuse_norm', 'attn_mode', 'use_l2warp', 'use_cache', 'max_position_embeddings',
                         'initializer_range', 'unknown_future_key', 'transformers_version'], 1, 4):
        c.config[key] = d.choice([True, False, 'fused_recurrent', 7, None, [1, 2], {'x': 1}])
    return True


def drop_cross_checked_key(c: Case, d: Draw) -> bool:  # read from the tensors; config.json only cross-checks them
    for key in d.subset(['vocab_size', 'intermediate_size', 'decay_low_rank_dim', 'a_low_rank_dim', 'v_low_rank_dim',
                         'gate_low_rank_dim', 'value_dim', 'head_dim'], 1, 3):
        c.config.pop(key, None)
    return True


def fla_january_vectors(c: Case, d: Draw) -> bool:  # fla 0.1 stored k_k, k_a, ffn.x_k as [1,1,C]
    for k in [k for k in c.unharmed() if k.endswith(('attn.k_k', 'attn.k_a', 'ffn.x_k'))]:
        if d.integer(0, 1):
            c.sd[k] = c.sd[k].reshape(1, 1, -1)
    return True


def fused_x_x(c: Case, d: Draw) -> bool:  # fla v1: the six token-shift mixes stacked in attn.x_x [6, C]
    for i in range(BASE.layers):
        names = [f'model.layers.{i}.attn.x_{m}' for m in 'rwkvag']
        if any(n not in c.sd or n in c.harmed for n in names):
            continue
        c.sd[f'model.layers.{i}.attn.x_x'] = torch.stack([c.sd.pop(n).reshape(-1) for n in names])
    return True


def bare_names(c: Case, d: Draw) -> bool:  # a bare RWKV7Model's names: no `model.` prefix
    if c.harmed:
        return True
    c.sd = {k.removeprefix('model.'): v for k, v in c.sd.items()}
    return True


def contradict_config(c: Case, d: Draw) -> bool:
    key = d.choice(['hidden_size', 'num_hidden_layers', 'vocab_size', 'intermediate_size', 'decay_low_rank_dim',
                    'a_low_rank_dim', 'v_low_rank_dim', 'gate_low_rank_dim', 'head_dim', 'num_heads'])
    c.config[key] = d.choice([v for v in (1, 2, 3, 4, 8, 16, 24, 32, 48, 61, 64, 96, 128) if v != c.config.get(key)])
    return False


def unsupported_option(c: Case, d: Draw) -> bool:
    key, value = d.choice([('value_dim', 2 * C), ('norm_first', False), ('norm_bias', False), ('hidden_act', 'gelu'),
                           ('attn', {'layers': [0], 'num_heads': 2}), ('model_type', 'rwkv6'), ('model_type', 'mamba')])
    c.config[key] = value
    return False


def drop_tensor(c: Case, d: Draw) -> bool:
    k = d.choice(sorted(c.sd))
    c.sd.pop(k)
    c.harmed.add(k)
    return False


def extra_tensor(c: Case, d: Draw) -> bool:
    name = d.choice(['model.layers.0.attn.unknown', 'model.layers.2.attn.r_k', 'model.layers.0.attn.v_lora.lora.0.weight',
                     'model.extra.weight', 'lm_head.bias', 'model.layers.1.attn.x_x', 'model.layers.0.attn.k_k.weight'])
    if name in c.sd:
        return True
    c.sd[name] = torch.zeros(3, C, dtype=torch.bfloat16) if 'x_x' in name else torch.zeros(C, dtype=torch.bfloat16)
    c.harmed.add(name)
    return False


def rename_tensor(c: Case, d: Draw) -> bool:
    k = d.choice(c.unharmed())
    new = d.choice([k + '_', k.replace('layers', 'layer'), k.upper(), k.replace('.weight', '.w'), k[:-1], ' ' + k])
    if new == k or new in c.sd:
        return True
    c.sd[new] = c.sd.pop(k)
    c.harmed |= {k, new}
    return False


def nonfinite(c: Case, d: Draw) -> bool:
    k = d.choice(c.unharmed())
    t = c.sd[k].clone()
    t.view(-1)[d.integer(0, t.numel() - 1)] = d.choice([float('nan'), float('inf'), float('-inf')])
    c.sd[k] = t
    c.harmed.add(k)
    return False


def int_tensor(c: Case, d: Draw) -> bool:
    k = d.choice(c.unharmed())
    c.sd[k] = c.sd[k].to(d.choice([torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool]))
    c.harmed.add(k)
    return False


def wrong_shape(c: Case, d: Draw) -> bool:
    k = d.choice(c.unharmed())
    t = c.sd[k]
    how = d.choice(['transposed', 'grown', 'flattened', 'shrunk'])
    if how == 'transposed' and t.dim() == 2 and t.shape[0] != t.shape[1]:
        c.sd[k] = t.t().contiguous()
    elif how == 'flattened' and t.dim() >= 2:
        c.sd[k] = t.reshape(-1)
    elif how == 'shrunk' and t.shape[0] > 1:
        c.sd[k] = t[:-1]
    else:  # grown: one more row
        c.sd[k] = torch.cat([t, t[:1]])
    c.harmed.add(k)
    return False


MUTATIONS = [stored_fp32, sharded, pytorch_bin, benign_config_keys, drop_cross_checked_key, fla_january_vectors,
             fused_x_x, bare_names, contradict_config, unsupported_option, drop_tensor, extra_tensor, rename_tensor,
             nonfinite, int_tensor, wrong_shape]
CAMPAIGN_CASES = 160


def mutated_case(hf: dict, seed: int) -> tuple[Case, list[str]]:
    """Case `seed` of the seeded campaign (also given to verify by test_verify_hostile.py) and its mutations."""
    d = Draw(seed, 'rwkv7-export-reliability')
    c = Case(hf)
    names = [m.__name__ for m in d.subset(MUTATIONS, 1, 3)]
    # structural mutations last, so that the tensor mutations see the names they expect
    late = ['fla_january_vectors', 'fused_x_x', 'bare_names', 'sharded', 'pytorch_bin']
    names.sort(key=lambda n: late.index(n) if n in late else -1)
    for name in names:
        if not globals()[name](c, d):
            c.harmful.append(name)
    return c, names
