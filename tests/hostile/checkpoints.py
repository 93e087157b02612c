"""The forward campaign's seeded mutations of valid RWKV-LM checkpoints (tests/reliability/test_mutated_checkpoints.py):
`make_case(seed)` is case `seed`, the same recipe on every machine, and `save_case` writes it as .pth or .safetensors.
Each mutation changes case.sd and returns True when the result must still convert to the canonical model."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import torch
from reliability_common import BASES, DTYPE, OPTIONAL, base_state_dict
from rwkv7_factory import Goose
from safetensors.torch import save_file

from fla.rwkv7_convert.mapping import table
from fla.rwkv7_convert.mapping.engine import expected_blinkdl, lookup_blinkdl, strip_prefixes
from hostile.draw import Draw

PREFIXES, WRAPPER_KEYS = tuple(table.PREFIXES), tuple(table.WRAPPER_KEYS)  # the table's, in its order


@functools.cache
def all_names(L: int) -> frozenset[str]:
    return frozenset(n for n, _, _ in expected_blinkdl(L))


class Case:
    """A checkpoint being mutated (a plain class, so a failure prints the recipe)."""

    def __init__(self, base: int, sd: object):
        self.base = base
        self.sd = sd  # what gets saved: a flat dict until a structural mutation wraps it
        self.head_size: int | None = None
        self.needs_pth = False  # safetensors holds a flat mapping of tensors only
        self.harmful: list[str] = []  # mutations that must make the input refused
        self.harmed: set[str] = set()  # keys a harmful mutation changed: benign ones leave them alone

    @property
    def shape(self) -> Goose:
        return BASES[self.base][0]

    @property
    def L(self) -> int:
        return self.shape.layers

    @property
    def dtype(self) -> str:
        return DTYPE[BASES[self.base][1]]

    def __repr__(self) -> str:  # the recipe, not the tensors
        flat = isinstance(self.sd, dict) and all(isinstance(v, torch.Tensor) for v in self.sd.values())
        shapes = {k: tuple(v.shape) for k, v in self.sd.items() if k in self.harmed or k.endswith('r_k')} if flat else {}
        return (f'Case(base={self.base}, harmful={self.harmful}, harmed={sorted(self.harmed)}, '
                f'head_size={self.head_size}, shapes={shapes}, top={type(self.sd).__name__})')

    def pick(self, d: Draw, keys):
        return d.choice(sorted(keys))

    def unharmed(self) -> list[str]:
        return [k for k in self.sd if k not in self.harmed]


# Each mutation changes case.sd and returns True when the result must still convert to the canonical model.

def widen_dtype(c: Case, d: Draw) -> bool:
    keys = d.subset(sorted(c.unharmed()), 1, 6)
    wider = [torch.float64] if c.dtype == 'F32' else [torch.float32, torch.float64]
    for k in keys:
        c.sd[k] = c.sd[k].to(d.choice(wider))
    return True


def strided_storage(c: Case, d: Draw) -> bool:
    k = c.pick(d, c.unharmed())
    t = c.sd[k]
    if t.dim() == 2 and d.boolean():
        c.sd[k] = t.t().contiguous().t()  # column-major: same values, transposed strides
    else:  # a view into a larger storage, at an offset
        pad = d.integer(1, 17)
        big = torch.cat([torch.full((pad,), 7.0, dtype=t.dtype), t.flatten(), torch.full((5,), -7.0, dtype=t.dtype)])
        c.sd[k] = big[pad:pad + t.numel()].view(t.shape)
    return True


def nonfinite(c: Case, d: Draw) -> bool:
    k = c.pick(d, c.sd)
    t = c.sd[k].contiguous().clone()
    t.view(-1)[d.integer(0, t.numel() - 1)] = d.choice([math.nan, math.inf, -math.inf])
    c.sd[k] = t
    if k in OPTIONAL:
        return True  # dropped unread: its values cannot matter
    c.harmed.add(k)
    return False


def int_dtype(c: Case, d: Draw) -> bool:
    k = c.pick(d, c.sd)
    c.sd[k] = c.sd[k].to(d.choice([torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool]))
    c.harmed.add(k)
    return False


def exotic_dtype(c: Case, d: Draw) -> bool:
    k = c.pick(d, c.sd)
    dtype = d.choice([torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32])
    c.sd[k] = c.sd[k].float().to(dtype)
    c.harmed.add(k)
    return False


def empty_tensor(c: Case, d: Draw) -> bool:
    k = c.pick(d, c.sd)
    shape = list(c.sd[k].shape)
    shape[d.integer(0, len(shape) - 1)] = 0
    c.sd[k] = torch.empty(shape, dtype=c.sd[k].dtype)
    c.harmed.add(k)
    return False


def wrong_shape(c: Case, d: Draw) -> bool:
    k = c.pick(d, [k for k in c.sd if c.sd[k].numel()])
    t = c.sd[k]
    vector = lookup_blinkdl(k)[0].shape == '1,1,C'
    ops = ['grow', 'scalar'] + (['shrink'] if any(d > 1 for d in t.shape) else [])
    if vector:
        ops += ['C,1,1', '1,C,1', 'C,1']
    else:
        ops.append('unsqueeze')  # ([1,1,1,C] would be a benign alias of a vector)
        if t.dim() == 2 and not k.endswith('att.r_k'):  # a flat r_k is an alias (with --head-size)
            ops.append('flatten')
        # a transposed square matrix, or the only r_k transposed, is another valid model: undetectable
        if t.dim() == 2 and t.shape[0] != t.shape[1] and not (k.endswith('att.r_k') and c.L == 1):
            ops.append('transpose')
    op = d.choice(ops)
    if op == 'grow':
        axis = d.integer(0, t.dim() - 1)
        t = torch.cat([t, t.narrow(axis, 0, 1)], axis)
    elif op == 'shrink':
        axis = d.choice([a for a, n in enumerate(t.shape) if n > 1])
        t = t.narrow(axis, 0, t.shape[axis] - 1)
    elif op == 'scalar':
        t = t.flatten()[0]
    elif op == 'unsqueeze':
        t = t.unsqueeze(0)
    elif op == 'flatten':
        t = t.flatten()
    elif op == 'transpose':
        t = t.t()
    else:
        t = t.reshape([-1 if d == 'C' else 1 for d in op.split(',')])
    c.sd[k] = t.contiguous().clone()
    c.harmed.add(k)
    return False


def drop_layer0_v(c: Case, d: Draw) -> bool:
    present = [k for k in OPTIONAL if k in c.sd and k not in c.harmed]
    if present:
        for k in d.subset(present, 1):
            del c.sd[k]
    return True


def drop_required(c: Case, d: Draw) -> bool:
    del c.sd[c.pick(d, [k for k in c.sd if k not in OPTIONAL])]
    return False


def drop_block(c: Case, d: Draw) -> bool:  # a block other than the last: the last one gone is a valid smaller model
    b = d.integer(0, c.L - 2)
    for k in [k for k in c.sd if k.startswith(f'blocks.{b}.')]:
        del c.sd[k]
    return False


def partial_extra_block(c: Case, d: Draw) -> bool:  # a complete extra block would be a valid larger model
    src = sorted(k for k in c.sd if k.startswith(f'blocks.{c.L - 1}.'))
    for k in d.subset(src, 1, len(src) - 1):
        c.sd[k.replace(f'blocks.{c.L - 1}.', f'blocks.{c.L}.', 1)] = c.sd[k].clone()
    return False


def _unknown(c: Case, name: str) -> bool:
    return name not in c.sd and strip_prefixes(name) not in all_names(c.L)


MANGLES = {
    'upper case': lambda k, i: k[:1].upper() + k[1:],
    'leading zero': lambda k, i: re.sub(r'^blocks\.(\d+)\.', r'blocks.0\1.', k),
    'trailing newline': lambda k, i: k + '\n',
    'trailing space': lambda k, i: k + ' ',
    'unicode digit': lambda k, i: k.translate(str.maketrans('0123456789', '٠١٢٣٤٥٦٧٨٩')),
    'fullwidth dot': lambda k, i: k.replace('.', '．', 1),
    'dropped character': lambda k, i: k[:i % len(k)] + k[i % len(k) + 1:],
    'PEFT prefix': lambda k, i: 'base_model.model.' + k,
    'unknown prefix': lambda k, i: ('model.', 'rwkv.', 'ema.')[i % 3] + k,
    'suffix': lambda k, i: k + ('.weight', '_', '.0')[i % 3],
}


def rename(c: Case, d: Draw) -> bool:
    k = c.pick(d, c.sd)
    new = MANGLES[d.choice(sorted(MANGLES))](k, d.integer(0, 99))
    if not _unknown(c, new):  # the mangle did nothing or hit another real name
        new = k + '.renamed'
    c.sd[new] = c.sd.pop(k)
    c.harmed.add(new)
    return False


def duplicate(c: Case, d: Draw) -> bool:
    k = c.pick(d, c.sd)
    prefix = ''.join(d.items(PREFIXES, 1, 2))
    while prefix + k in c.sd:
        prefix += '_orig_mod.'
    c.sd[prefix + k] = c.sd[k].clone()
    c.harmed.add(prefix + k)
    return False


EXTRA_NAMES = [
    'blocks.0.att.time_decay', 'blocks.0.att.time_faaaa', 'blocks.0.ffn.s_emb.weight', 'blocks.0.ffn.s1',
    'blocks.0.qkv.q.weight', 'blocks.0.ffn.enn.weight', 'blocks.0.att.receptance.lora_A', 'blocks.0.att.time_state',
    'model.layers.0.attn.r_k', 'lm_head.weight', 'blocks.{L}.att.x_r', 'blocks.{L}.ln1.weight',
    'blocks.1000000000.ln1.weight', 'blocks.99999999999999999999999.att.k_k', 'blocks.-1.att.k_k', 'blocks..att.k_k',
    'blocks.0.att.v3', 'emb.bias', 'head.bias', 'ln0.weight', 'step', '', ' ', '.', 'module.', '_orig_mod._orig_mod.',
    'blocks.0.att.k_k.1', 'blocks.0.att.k_k\n', 'blocks.0.att.k_k\x00',
]


def extra_key(c: Case, d: Draw) -> bool:
    name = (d.choice(EXTRA_NAMES) if d.boolean() else d.text(24)).replace('{L}', str(c.L))
    if not _unknown(c, name):
        name = 'step'
    C = c.shape.hidden
    shape = d.choice([(C,), (1, 1, C), (3,), (2, 2), ()])
    c.sd[name] = torch.randn(shape).to(BASES[c.base][1])
    c.harmed.add(name)
    return False


def head_size(c: Case, d: Draw) -> bool:
    """r_k stored flat for some blocks, with or without a right, wrong or invalid --head-size."""
    N, C = c.shape.head_size, c.shape.hidden
    candidates = [k for k in c.sd if k.endswith('att.r_k') and k not in c.harmed]
    for k in d.subset(sorted(candidates), 0):
        c.sd[k] = c.sd[k].reshape(-1)
    r_ks = [v for k, v in c.sd.items() if k.endswith('att.r_k')]
    all_flat = all(v.dim() == 1 for v in r_ks)
    choice = d.choice(['right', 'none', 'zero', 'negative', 'wrong'])
    if choice == 'right':
        c.head_size = N
        return True
    if choice == 'none':
        return not all_flat  # one r_k kept [H, N] tells N, and the flat ones are read with it
    if choice == 'wrong':
        # a wrong N' that divides C, with every r_k flat, is a valid model with another head size: the user's
        # word is all there is, so only wrong values the file contradicts or that cannot divide C are tried
        c.head_size = next(n for n in (N + 1, N + 3, N + 5) if C % n) if all_flat else d.choice([N // 2, N * 2])
        return False
    c.head_size = 0 if choice == 'zero' else -N
    return False


def squeeze_vectors(c: Case, d: Draw) -> bool:
    C = c.shape.hidden
    vectors = [k for k in c.unharmed() if tuple(c.sd[k].shape) == (1, 1, C)]
    for k in d.subset(sorted(vectors), 1):
        c.sd[k] = c.sd[k].reshape(d.choice([(C,), (1, C), (1, 1, 1, C)]))
    return True


def non_tensor(c: Case, d: Draw) -> bool:
    value = d.choice([3, 1.5, 'text', None, [torch.zeros(2)], {'a': torch.zeros(2)}, b'bytes', (1, 2), True])
    if d.boolean():
        name = d.choice(['step', 'epoch', 'config', 'state_dict', 'emb.weight_meta'])
        c.sd[name if name not in c.sd else name + '_'] = value
    else:
        c.sd[c.pick(d, c.sd)] = value
    c.needs_pth = True
    return False


def _prefixes(d: Draw, min_size: int) -> str:
    return ''.join(d.items(PREFIXES, min_size, 3))


def prefix_all(c: Case, d: Draw) -> bool:
    prefix = _prefixes(d, 1)
    c.sd = {prefix + k: v for k, v in c.sd.items()}
    return True


def mixed_prefixes(c: Case, d: Draw) -> bool:
    out = {}
    for k, v in c.sd.items():
        name = _prefixes(d, 0) + k
        while name in out:
            name = '_orig_mod.' + name
        out[name] = v
    c.sd = out
    return True


def wrap(c: Case, d: Draw) -> bool:
    for key in d.items(WRAPPER_KEYS, 1, 3):
        siblings = {'epoch': 3, 'global_step': 1000, 'hyper_parameters': {'lr': 1e-4, 'n_layer': c.L},
                    'optimizer_states': [{'state': {0: {'exp_avg': torch.zeros(4)}}}],
                    'model': {'n_layer': c.L}}  # a wrapper key holding no weights: not a candidate
        chosen = d.subset(sorted(k for k in siblings if k != key), 0)
        c.sd = {key: c.sd, **{k: siblings[k] for k in chosen}}
    c.needs_pth = True
    return True


def ambiguous_wrap(c: Case, d: Draw) -> bool:
    first, second = d.subset(WRAPPER_KEYS, 2, 2)
    c.sd = {first: c.sd, second: dict(base_state_dict(c.base))}
    c.needs_pth = True
    return False


def not_a_dict(c: Case, d: Draw) -> bool:
    kind = d.choice(['list', 'tuple', 'nested list', 'tensor', 'None', 'int'])
    c.sd = {'list': [c.sd], 'tuple': (c.sd,), 'nested list': [[c.sd]], 'tensor': torch.zeros(3), 'None': None,
            'int': 7}[kind]
    c.needs_pth = True
    return False


# applied in this order: values and dtypes, then keys, then aliases of names, then structure
MUTATIONS = [widen_dtype, strided_storage, nonfinite, int_dtype, exotic_dtype, empty_tensor, wrong_shape, drop_layer0_v,
             drop_required, drop_block, partial_extra_block, rename, duplicate, extra_key, head_size, squeeze_vectors,
             non_tensor, prefix_all, mixed_prefixes, wrap, ambiguous_wrap, not_a_dict]
BY_NAME = {m.__name__: m for m in MUTATIONS}


def make_case(seed: int) -> tuple[Case, str, list[str]]:
    """Case number `seed` of the campaign: the same recipe on every machine and every version of every package."""
    d = Draw(seed, 'rwkv7-reliability')
    base = d.integer(0, len(BASES) - 1)
    options = [m for m in BY_NAME if m != 'drop_block' or BASES[base][0].layers > 1]
    names = sorted(d.subset(options, 1, 3), key=list(BY_NAME).index)
    c = Case(base, dict(base_state_dict(base)))
    for name in names:
        if not BY_NAME[name](c, d):
            c.harmful.append(name)
    fmt = d.choice(['pth', 'safetensors'])
    return c, fmt, names


def save_case(c: Case, fmt: str, folder: Path) -> Path:
    if fmt == 'safetensors' and not c.needs_pth:
        path = folder / 'm.safetensors'
        save_file({k: v.contiguous() for k, v in c.sd.items()}, str(path))
        return path
    path = folder / 'm.pth'
    torch.save(c.sd, path)
    return path
