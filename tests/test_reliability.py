"""Reliability campaign: hostile and broken checkpoints, broken files, interruptions, a full disk, racing runs.

The property: every input either converts to exactly the tensors and config.json that the canonical checkpoint
converts to (the mutation was a benign alias), or is refused with a one-line ConversionError subclass, with the
existing output untouched and no scratch folder left; never another exception, never a different model.

Counts are printed at the end of the module and written to out/reliability-stats.json (set RELIABILITY_STATS to
another path to move it); docs/reliability.md cites them. Reproduce: python -m pytest tests/test_reliability.py -q
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rwkv7_factory import Goose, make_state_dict, save

from fla.rwkv7_convert import writer
from fla.rwkv7_convert.cli import main_to_fla
from fla.rwkv7_convert.convert import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError, NotACheckpointError
from fla.rwkv7_convert.table import PREFIXES, WRAPPER_KEYS, expected_blinkdl, lookup_blinkdl, strip_prefixes

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'utils' / 'convert_to_rwkv7.py'
STATS: dict[str, dict] = {}


def tally(section: str, outcome: str, by: str | list[str] | None = None) -> None:
    """Count one input of `section` with its outcome ('converted' or the error class), also per mutation."""
    s = STATS.setdefault(section, {'inputs': 0, 'outcomes': Counter(), 'by': {}})
    s['inputs'] += 1
    s['outcomes'][outcome] += 1
    for name in [by] if isinstance(by, str) else by or []:
        s['by'].setdefault(name, Counter())[outcome] += 1


@pytest.fixture(scope='module', autouse=True)
def campaign_summary(request):
    yield
    lines = ['', 'reliability campaign (tests/test_reliability.py):']
    for section, s in STATS.items():
        outcomes = ', '.join(f'{k} {v}' for k, v in sorted(s['outcomes'].items(), key=lambda kv: -kv[1]))
        lines.append(f'  {section}: {s["inputs"]} inputs: {outcomes}')
    capture = request.config.pluginmanager.getplugin('capturemanager')
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print('\n'.join(lines))
    target = Path(os.environ.get('RELIABILITY_STATS', REPO / 'out' / 'reliability-stats.json'))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(STATS, indent=1, sort_keys=True, default=dict) + '\n')
    except OSError:
        pass


# ------------------------------------------------------------------------------------------------------- helpers

def read_model(outdir: Path) -> dict:
    """Every tensor of a converted directory as (dtype, shape, raw bytes), and its config; read without our code."""
    tensors = {}
    for f in sorted(outdir.glob('*.safetensors')):
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], 'little')
        header = json.loads(raw[8:8 + n])
        header.pop('__metadata__', None)
        for name, info in header.items():
            begin, end = info['data_offsets']
            tensors[name] = (info['dtype'], tuple(info['shape']), raw[8 + n + begin:8 + n + end])
    return {'tensors': tensors, 'config': json.loads((outdir / 'config.json').read_text())}


def _meaningful(config: dict) -> dict:
    # fla builds no value LoRA in layer 0 (it takes v_first there), so a 1-layer model's v_low_rank_dim is unused:
    # a file without block 0's unused v0/v1/v2 cannot tell it, and any value builds the same model
    return {k: v for k, v in config.items() if not (k == 'v_low_rank_dim' and config['num_hidden_layers'] == 1)}


def assert_same_model(got: dict, want: dict) -> None:
    assert _meaningful(got['config']) == _meaningful(want['config'])
    assert sorted(got['tensors']) == sorted(want['tensors'])
    differ = [n for n in want['tensors'] if got['tensors'][n] != want['tensors'][n]]
    assert not differ, f'converted, but to a different model: {differ[:5]}'


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file below `path` (empty when it does not exist)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob('*'))
            if p.is_file()}


def make_old_model(out: Path) -> dict[str, str]:
    out.mkdir()
    (out / 'config.json').write_text('{"old": "model"}\n')
    (out / 'model.safetensors').write_bytes(b'old weights' * 100)
    return digest(out)


def leftovers(parent: Path, *expected: str) -> list[str]:
    """Names in `parent` other than `expected`: scratch or moved-aside folders would show up here."""
    return sorted(p.name for p in parent.iterdir() if p.name not in expected)


def run_cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, **kw)


def assert_one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in r.stderr, r.stderr
    return lines[0]


# ------------------------------------------------------------------------------- 1. mutated checkpoints (property)

# small models with no two sizes equal (V, C, F, ranks, H, N), so a transposed tensor can never look right
BASES = [
    (Goose(vocab=61, hidden=64, layers=1, head_size=32, ffn=96, w_rank=8, a_rank=16, v_rank=8, g_rank=16), torch.float32),
    (Goose(vocab=48, hidden=128, layers=2, head_size=64, ffn=256, w_rank=16, a_rank=8, v_rank=16, g_rank=24),
     torch.bfloat16),
    (Goose(vocab=50, hidden=64, layers=3, head_size=16, ffn=160, w_rank=8, a_rank=12, v_rank=8, g_rank=8), torch.float32),
]
DTYPE = {torch.float32: 'F32', torch.bfloat16: 'BF16'}
OPTIONAL = ('blocks.0.att.v0', 'blocks.0.att.v1', 'blocks.0.att.v2')  # unused by the model: dropped unread


@functools.cache
def base_state_dict(i: int) -> dict[str, torch.Tensor]:
    shape, dtype = BASES[i]
    return make_state_dict(shape, dtype=dtype, seed=100 + i)


@functools.cache
def canonical(i: int) -> dict:
    """What the unmodified checkpoint converts to (proven by logits in test_parity.py for such checkpoints)."""
    with tempfile.TemporaryDirectory() as d:
        src = save(base_state_dict(i), Path(d) / 'm.pth')
        convert_to_fla(src, Path(d) / 'out', precision=DTYPE[BASES[i][1]], tokenizer='none')
        return read_model(Path(d) / 'out')


@functools.cache
def all_names(L: int) -> frozenset[str]:
    return frozenset(n for n, _, _ in expected_blinkdl(L))


class Case:
    """A checkpoint being mutated (a plain class: hypothesis would print a dataclass with all its tensors)."""

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

    def __repr__(self) -> str:  # what hypothesis prints for a failing example: the recipe, not the tensors
        flat = isinstance(self.sd, dict) and all(isinstance(v, torch.Tensor) for v in self.sd.values())
        shapes = {k: tuple(v.shape) for k, v in self.sd.items() if k in self.harmed or k.endswith('r_k')} if flat else {}
        return (f'Case(base={self.base}, harmful={self.harmful}, harmed={sorted(self.harmed)}, '
                f'head_size={self.head_size}, shapes={shapes}, top={type(self.sd).__name__})')

    def pick(self, draw, keys, **kw):
        return draw(st.sampled_from(sorted(keys)), **kw)

    def unharmed(self) -> list[str]:
        return [k for k in self.sd if k not in self.harmed]


# Each mutation changes case.sd and returns True when the result must still convert to the canonical model.

def widen_dtype(c: Case, draw) -> bool:
    keys = draw(st.lists(st.sampled_from(sorted(c.unharmed())), min_size=1, max_size=6, unique=True))
    wider = [torch.float64] if c.dtype == 'F32' else [torch.float32, torch.float64]
    for k in keys:
        c.sd[k] = c.sd[k].to(draw(st.sampled_from(wider)))
    return True


def strided_storage(c: Case, draw) -> bool:
    k = c.pick(draw, c.unharmed())
    t = c.sd[k]
    if t.dim() == 2 and draw(st.booleans()):
        c.sd[k] = t.t().contiguous().t()  # column-major: same values, transposed strides
    else:  # a view into a larger storage, at an offset
        pad = draw(st.integers(1, 17))
        big = torch.cat([torch.full((pad,), 7.0, dtype=t.dtype), t.flatten(), torch.full((5,), -7.0, dtype=t.dtype)])
        c.sd[k] = big[pad:pad + t.numel()].view(t.shape)
    return True


def nonfinite(c: Case, draw) -> bool:
    k = c.pick(draw, c.sd)
    t = c.sd[k].contiguous().clone()
    t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    c.sd[k] = t
    if k in OPTIONAL:
        return True  # dropped unread: its values cannot matter
    c.harmed.add(k)
    return False


def int_dtype(c: Case, draw) -> bool:
    k = c.pick(draw, c.sd)
    c.sd[k] = c.sd[k].to(draw(st.sampled_from([torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool])))
    c.harmed.add(k)
    return False


def exotic_dtype(c: Case, draw) -> bool:
    k = c.pick(draw, c.sd)
    dtype = draw(st.sampled_from([torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32]))
    c.sd[k] = c.sd[k].float().to(dtype)
    c.harmed.add(k)
    return False


def empty_tensor(c: Case, draw) -> bool:
    k = c.pick(draw, c.sd)
    shape = list(c.sd[k].shape)
    shape[draw(st.integers(0, len(shape) - 1))] = 0
    c.sd[k] = torch.empty(shape, dtype=c.sd[k].dtype)
    c.harmed.add(k)
    return False


def wrong_shape(c: Case, draw) -> bool:
    k = c.pick(draw, [k for k in c.sd if c.sd[k].numel()])
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
    op = draw(st.sampled_from(ops))
    if op == 'grow':
        axis = draw(st.integers(0, t.dim() - 1))
        t = torch.cat([t, t.narrow(axis, 0, 1)], axis)
    elif op == 'shrink':
        axis = draw(st.sampled_from([a for a, d in enumerate(t.shape) if d > 1]))
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


def drop_layer0_v(c: Case, draw) -> bool:
    present = [k for k in OPTIONAL if k in c.sd and k not in c.harmed]
    if present:
        for k in draw(st.lists(st.sampled_from(present), min_size=1, unique=True)):
            del c.sd[k]
    return True


def drop_required(c: Case, draw) -> bool:
    del c.sd[c.pick(draw, [k for k in c.sd if k not in OPTIONAL])]
    return False


def drop_block(c: Case, draw) -> bool:  # a block other than the last: the last one gone is a valid smaller model
    b = draw(st.integers(0, c.L - 2))
    for k in [k for k in c.sd if k.startswith(f'blocks.{b}.')]:
        del c.sd[k]
    return False


def partial_extra_block(c: Case, draw) -> bool:  # a complete extra block would be a valid larger model
    src = sorted(k for k in c.sd if k.startswith(f'blocks.{c.L - 1}.'))
    for k in draw(st.lists(st.sampled_from(src), min_size=1, max_size=len(src) - 1, unique=True)):
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


def rename(c: Case, draw) -> bool:
    k = c.pick(draw, c.sd)
    new = MANGLES[draw(st.sampled_from(sorted(MANGLES)))](k, draw(st.integers(0, 99)))
    if not _unknown(c, new):  # the mangle did nothing or hit another real name
        new = k + '.renamed'
    c.sd[new] = c.sd.pop(k)
    c.harmed.add(new)
    return False


def duplicate(c: Case, draw) -> bool:
    k = c.pick(draw, c.sd)
    prefix = ''.join(draw(st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=2)))
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


def extra_key(c: Case, draw) -> bool:
    name = draw(st.one_of(st.sampled_from(EXTRA_NAMES), st.text(max_size=24))).replace('{L}', str(c.L))
    if not _unknown(c, name):
        name = 'step'
    C = c.shape.hidden
    shape = draw(st.sampled_from([(C,), (1, 1, C), (3,), (2, 2), ()]))
    c.sd[name] = torch.randn(shape).to(BASES[c.base][1])
    c.harmed.add(name)
    return False


def head_size(c: Case, draw) -> bool:
    """r_k stored flat for some blocks, with or without a right, wrong or invalid --head-size."""
    N, C = c.shape.head_size, c.shape.hidden
    candidates = [k for k in c.sd if k.endswith('att.r_k') and k not in c.harmed]
    for k in draw(st.lists(st.sampled_from(sorted(candidates)), unique=True)) if candidates else []:
        c.sd[k] = c.sd[k].reshape(-1)
    r_ks = [v for k, v in c.sd.items() if k.endswith('att.r_k')]
    all_flat = all(v.dim() == 1 for v in r_ks)
    choice = draw(st.sampled_from(['right', 'none', 'zero', 'negative', 'wrong']))
    if choice == 'right':
        c.head_size = N
        return True
    if choice == 'none':
        return not all_flat  # one r_k kept [H, N] tells N, and the flat ones are read with it
    if choice == 'wrong':
        # a wrong N' that divides C, with every r_k flat, is a valid model with another head size: the user's
        # word is all there is, so only wrong values the file contradicts or that cannot divide C are tried
        c.head_size = next(n for n in (N + 1, N + 3, N + 5) if C % n) if all_flat else draw(st.sampled_from([N // 2, N * 2]))
        return False
    c.head_size = 0 if choice == 'zero' else -N
    return False


def squeeze_vectors(c: Case, draw) -> bool:
    C = c.shape.hidden
    vectors = [k for k in c.unharmed() if tuple(c.sd[k].shape) == (1, 1, C)]
    for k in draw(st.lists(st.sampled_from(sorted(vectors)), min_size=1, unique=True)):
        c.sd[k] = c.sd[k].reshape(draw(st.sampled_from([(C,), (1, C), (1, 1, 1, C)])))
    return True


def non_tensor(c: Case, draw) -> bool:
    value = draw(st.sampled_from([3, 1.5, 'text', None, [torch.zeros(2)], {'a': torch.zeros(2)}, b'bytes', (1, 2), True]))
    if draw(st.booleans()):
        name = draw(st.sampled_from(['step', 'epoch', 'config', 'state_dict', 'emb.weight_meta']))
        c.sd[name if name not in c.sd else name + '_'] = value
    else:
        c.sd[c.pick(draw, c.sd)] = value
    c.needs_pth = True
    return False


def _prefixes(draw, min_size: int) -> str:
    return ''.join(draw(st.lists(st.sampled_from(PREFIXES), min_size=min_size, max_size=3)))


def prefix_all(c: Case, draw) -> bool:
    prefix = _prefixes(draw, 1)
    c.sd = {prefix + k: v for k, v in c.sd.items()}
    return True


def mixed_prefixes(c: Case, draw) -> bool:
    out = {}
    for k, v in c.sd.items():
        name = _prefixes(draw, 0) + k
        while name in out:
            name = '_orig_mod.' + name
        out[name] = v
    c.sd = out
    return True


def wrap(c: Case, draw) -> bool:
    for key in draw(st.lists(st.sampled_from(WRAPPER_KEYS), min_size=1, max_size=3)):
        siblings = {'epoch': 3, 'global_step': 1000, 'hyper_parameters': {'lr': 1e-4, 'n_layer': c.L},
                    'optimizer_states': [{'state': {0: {'exp_avg': torch.zeros(4)}}}],
                    'model': {'n_layer': c.L}}  # a wrapper key holding no weights: not a candidate
        chosen = draw(st.lists(st.sampled_from(sorted(k for k in siblings if k != key)), unique=True))
        c.sd = {key: c.sd, **{k: siblings[k] for k in chosen}}
    c.needs_pth = True
    return True


def ambiguous_wrap(c: Case, draw) -> bool:
    first, second = draw(st.lists(st.sampled_from(WRAPPER_KEYS), min_size=2, max_size=2, unique=True))
    c.sd = {first: c.sd, second: dict(base_state_dict(c.base))}
    c.needs_pth = True
    return False


def not_a_dict(c: Case, draw) -> bool:
    kind = draw(st.sampled_from(['list', 'tuple', 'nested list', 'tensor', 'None', 'int']))
    c.sd = {'list': [c.sd], 'tuple': (c.sd,), 'nested list': [[c.sd]], 'tensor': torch.zeros(3), 'None': None,
            'int': 7}[kind]
    c.needs_pth = True
    return False


# applied in this order: values and dtypes, then keys, then aliases of names, then structure
MUTATIONS = [widen_dtype, strided_storage, nonfinite, int_dtype, exotic_dtype, empty_tensor, wrong_shape, drop_layer0_v,
             drop_required, drop_block, partial_extra_block, rename, duplicate, extra_key, head_size, squeeze_vectors,
             non_tensor, prefix_all, mixed_prefixes, wrap, ambiguous_wrap, not_a_dict]
BY_NAME = {m.__name__: m for m in MUTATIONS}


@st.composite
def cases(draw) -> tuple[Case, str, list[str]]:
    base = draw(st.integers(0, len(BASES) - 1))
    options = [m for m in BY_NAME if m != 'drop_block' or BASES[base][0].layers > 1]
    names = sorted(draw(st.permutations(options))[:draw(st.integers(1, 3))], key=list(BY_NAME).index)
    c = Case(base, dict(base_state_dict(base)))
    for name in names:
        if not BY_NAME[name](c, draw):
            c.harmful.append(name)
    fmt = draw(st.sampled_from(['pth', 'safetensors']))
    return c, fmt, names


def save_case(c: Case, fmt: str, folder: Path) -> Path:
    if fmt == 'safetensors' and not c.needs_pth:
        from safetensors.torch import save_file
        path = folder / 'm.safetensors'
        save_file({k: v.contiguous() for k, v in c.sd.items()}, str(path))
        return path
    path = folder / 'm.pth'
    torch.save(c.sd, path)
    return path


def check_case(c: Case, src: Path, outcome_of) -> str:
    """Convert `src` over an existing model; returns 'converted' or the error class, asserting the property."""
    folder = src.parent
    out = folder / 'out'
    before = make_old_model(out)
    outcome, line = outcome_of(src, out)
    if outcome == 'converted':
        assert_same_model(read_model(out), canonical(c.base))
        assert not c.harmful, f'{c.harmful} should have been refused'
    else:
        assert c.harmful, f'a benign input was refused: {line}'
        assert digest(out) == before, 'a refused conversion changed the existing output'
    assert leftovers(folder, src.name, 'out') == []
    return outcome


def library_outcome(c: Case):
    def outcome_of(src: Path, out: Path) -> tuple[str, str]:
        try:
            convert_to_fla(src, out, precision=c.dtype, force=True, tokenizer='none', head_size=c.head_size)
        except ConversionError as e:
            line = e.one_line()
            assert type(e) is not ConversionError and line and '\n' not in line, (type(e), line)
            return type(e).__name__, line
        return 'converted', ''
    return outcome_of


SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=list(HealthCheck))


@settings(max_examples=500, **SETTINGS)
@given(cases())
def test_mutated_checkpoints_convert_exactly_or_are_refused(case):
    c, fmt, names = case
    with tempfile.TemporaryDirectory() as d:
        src = save_case(c, fmt, Path(d))
        outcome = check_case(c, src, library_outcome(c))
    tally('mutated checkpoints (library)', outcome, names)


def cli_outcome(c: Case):
    def outcome_of(src: Path, out: Path) -> tuple[str, str]:
        precision = {'F32': 'fp32', 'BF16': 'bf16'}[c.dtype]
        extra = [f'--head-size={c.head_size}'] if c.head_size is not None else []
        r = run_cli('--rwkv7', src, '--output', out, '--force', '--tokenizer', 'none', '--precision', precision, '-q',
                    *extra)
        if r.returncode == 0:
            assert r.stderr == ''
            return 'converted', ''
        line = assert_one_line_error(r)
        return 'refused (exit 1, one line)', line
    return outcome_of


@settings(max_examples=24, **SETTINGS)
@given(cases())
def test_mutated_checkpoints_through_the_command_line(case):
    c, fmt, names = case
    with tempfile.TemporaryDirectory() as d:
        src = save_case(c, fmt, Path(d))
        outcome = check_case(c, src, cli_outcome(c))
    tally('mutated checkpoints (command line)', outcome, names)


# ----------------------------------------------------------------------------------------------- 2. broken files

def convert_outcome(src: Path, out: Path, **kw) -> str:
    try:
        convert_to_fla(src, out, tokenizer='none', **kw)
    except ConversionError as e:
        assert '\n' not in e.one_line()
        return type(e).__name__
    return 'converted'


def zip_boundaries(data: bytes) -> list[int]:
    """Start of every local record, its data and its end; every central directory entry; the end records."""
    points = {0, len(data)}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            name_len, extra_len = struct.unpack('<HH', data[info.header_offset + 26:info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            points |= {info.header_offset, start, start + info.compress_size}
    for signature in (b'PK\x01\x02', b'PK\x05\x06', b'PK\x06\x06', b'PK\x06\x07'):
        points |= {m.start() for m in re.finditer(re.escape(signature), data)}
    return sorted(points)


def safetensors_boundaries(data: bytes) -> list[int]:
    n = int.from_bytes(data[:8], 'little')
    points = {0, 8, 8 + n, len(data)}
    for name, info in json.loads(data[8:8 + n]).items():
        if name != '__metadata__':
            points |= {8 + n + o for o in info['data_offsets']}
    return sorted(points)


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_truncated_at_every_boundary_is_refused(tmp_path, fmt):
    src = save(base_state_dict(0), tmp_path / f'whole.{fmt}')
    data = src.read_bytes()
    cuts = sorted({c + d for c in (zip_boundaries if fmt == 'pth' else safetensors_boundaries)(data) for d in (-1, 0, 1)
                   if 0 <= c + d < len(data)} | set(range(17)))
    path = tmp_path / f'cut.{fmt}'
    for cut in cuts:
        path.write_bytes(data[:cut])
        outcome = convert_outcome(path, tmp_path / 'out')
        assert outcome == 'NotACheckpointError', (cut, outcome)
        tally(f'truncated {fmt} files', outcome)
    assert leftovers(tmp_path, src.name, path.name) == []
    assert len(cuts) > (100 if fmt == 'pth' else 50)


def test_pth_zeroed_at_every_boundary_is_refused_or_unchanged(tmp_path):
    """16 zero bytes written at each record boundary: headers, checksums and data are all covered, so the file is
    refused (zip structure, pickle, per-record CRC-32) or, where only padding was hit, converts exactly."""
    src = save(base_state_dict(0), tmp_path / 'whole.pth')
    data = src.read_bytes()
    want = canonical(0)
    path = tmp_path / 'zeroed.pth'
    for start in sorted({c + d for c in zip_boundaries(data) for d in (-5, 0) if 0 <= c + d < len(data)}):
        broken = bytearray(data)
        broken[start:start + 16] = bytes(len(broken[start:start + 16]))
        if broken == data:
            continue
        path.write_bytes(broken)
        out = tmp_path / 'out'
        outcome = convert_outcome(path, out, precision='F32')
        if outcome == 'converted':
            assert_same_model(read_model(out), want)
            shutil.rmtree(out)
        else:
            assert outcome == 'NotACheckpointError', (start, outcome)
        tally('zeroed .pth boundaries', outcome)


def edit_safetensors(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], 'little')
    header = json.loads(raw[8:8 + n])
    result = edit(header, raw[8 + n:])
    new_header, body = result if isinstance(result, tuple) else (header, raw[8 + n:])
    text = new_header if isinstance(new_header, bytes) else json.dumps(new_header).encode()
    path.write_bytes(len(text).to_bytes(8, 'little') + text + body)


def _first(header):
    return next(k for k in header if k != '__metadata__')


def _size(header) -> int:
    begin, end = header[_first(header)]['data_offsets']
    return end - begin


def _last(header) -> int:
    return max(v['data_offsets'][0] for k, v in header.items() if k != '__metadata__')


def _moved(header, which) -> dict:
    """The header with the byte ranges starting at offsets `which` accepts moved 8 bytes on."""
    return {k: v if k == '__metadata__' or not which(v['data_offsets'][0])
            else {**v, 'data_offsets': [o + 8 for o in v['data_offsets']]} for k, v in header.items()}


def _set(key, value, name=None):
    def edit(header, body):
        header[name or _first(header)][key] = value
    return edit


def _shift(delta):
    def edit(header, body):
        info = header[_first(header)]
        info['data_offsets'] = [info['data_offsets'][0], info['data_offsets'][1] + delta]
    return edit


LIES = {
    'size mismatch (range one element short)': _shift(-4),
    'range beyond the end of the file': lambda h, b: h[_first(h)].__setitem__(
        'data_offsets', [len(b) + 4 - _size(h), len(b) + 4]),
    'negative offset': _set('data_offsets', [-8, 4]),
    'unclaimed bytes before the first tensor': lambda h, b: (_moved(h, lambda o: True), bytes(8) + b),
    'unclaimed bytes between two tensors': lambda h, b: (_moved(h, lambda o: o >= _last(h)), b[:_last(h)] + bytes(8)
                                                         + b[_last(h):]),
    'bytes appended after the last tensor': lambda h, b: (h, b + b'trailing'),
    'a tensor listed twice': lambda h, b: (('{"' + _first(h) + '": ' + json.dumps(h[_first(h)]) + ', '
                                            + json.dumps(h)[1:]).encode(), b),
    'offsets as strings': _set('data_offsets', ['0', '4']),
    'offsets as floats': _set('data_offsets', [0.0, 4.0]),
    'offsets not a pair': _set('data_offsets', [0, 4, 8]),
    'negative dimension': _set('shape', [-1, 64]),
    'boolean dimension': _set('shape', [True, 64]),
    'dimension of 2**64': _set('shape', [2 ** 64, 0]),
    'dtype a list': _set('dtype', ['F32']),
    'unknown dtype': _set('dtype', 'F128'),
    'entry not an object': lambda h, b: h.__setitem__(_first(h), [1, 2]),
    'entry without dtype': lambda h, b: h[_first(h)].pop('dtype'),
    'header a JSON array': lambda h, b: (b'[1, 2, 3]', b),
    'header not JSON': lambda h, b: (b'{"emb.weight": {"dtype": "F32", ', b),
    'header nested 100000 deep': lambda h, b: (b'[' * 100000 + b']' * 100000, b),
    'header length beyond the file': None,  # the 8-byte length itself lies (below)
}


@pytest.mark.parametrize('lie', LIES)
def test_safetensors_header_that_lies_is_refused(tmp_path, lie):
    path = save(base_state_dict(0), tmp_path / 'm.safetensors')
    if lie == 'header length beyond the file':
        raw = path.read_bytes()
        path.write_bytes((len(raw) * 2).to_bytes(8, 'little') + raw[8:])
    else:
        edit_safetensors(path, LIES[lie])
    outcome = convert_outcome(path, tmp_path / 'out')
    assert outcome == 'NotACheckpointError'
    assert leftovers(tmp_path, 'm.safetensors') == []
    tally('lying safetensors headers', outcome, lie)


def _rewrite_pickle(path: Path, obj_bytes: bytes) -> None:
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[next(n for n in members if n.endswith('data.pkl'))] = obj_bytes
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)


def _deep_pickle(depth: int) -> bytes:
    # {'a': [[[...]]]} written opcode by opcode (pickle.dumps would recurse): EMPTY_DICT, 'a', depth EMPTY_LISTs,
    # depth - 1 APPENDs, SETITEM. The C unpickler builds any depth; the reader's walk must refuse it, not crash.
    return b'\x80\x02}X\x01\x00\x00\x00a' + b']' * depth + b'a' * (depth - 1) + b's.'


def _self_containing_pickle() -> bytes:
    d: dict = {}
    d['state_dict'] = d
    import pickle
    return pickle.dumps(d, protocol=2)


def _shared_list_bomb(levels: int) -> bytes:
    # level k holds level k-1 twice: 2**levels paths through a pickle of a few hundred bytes
    import pickle
    node: list = [0]
    for _ in range(levels):
        node = [node, node]
    return pickle.dumps({'state_dict': {'x': node}}, protocol=2)


@pytest.mark.parametrize('make, message', [
    pytest.param(lambda: _self_containing_pickle(), 'contains itself', id='self-containing-dict'),
    pytest.param(lambda: _deep_pickle(5000), 'nests containers', id='nested-5000-deep'),
    pytest.param(lambda: _shared_list_bomb(25), 'not tensors', id='2**25-paths-shared-lists'),
])
def test_pickles_that_would_exhaust_the_reader_are_refused(tmp_path, make, message):
    path = save({'emb.weight': torch.zeros(2)}, tmp_path / 'm.pth')
    _rewrite_pickle(path, make())
    start = time.perf_counter()
    with pytest.raises(NotACheckpointError, match=message):
        convert_to_fla(path, tmp_path / 'out')
    assert time.perf_counter() - start < 10
    tally('hostile pickles', 'NotACheckpointError')


def test_files_saved_by_torch_without_checksums_convert(tmp_path):
    torch.serialization.set_crc32_options(False)
    try:
        path = save(base_state_dict(0), tmp_path / 'm.pth')
    finally:
        torch.serialization.set_crc32_options(True)
    with zipfile.ZipFile(path) as z:
        assert all(i.CRC == 0 for i in z.infolist())
    assert convert_outcome(path, tmp_path / 'out', precision='F32') == 'converted'
    assert_same_model(read_model(tmp_path / 'out'), canonical(0))


def _special_inputs(tmp_path: Path) -> dict[str, Path]:
    loop_a, loop_b, self_loop = tmp_path / 'loop-a.pth', tmp_path / 'loop-b.pth', tmp_path / 'self.pth'
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    self_loop.symlink_to(self_loop)
    dangling = tmp_path / 'dangling.pth'
    dangling.symlink_to(tmp_path / 'nowhere.pth')
    fifo = tmp_path / 'fifo.pth'
    os.mkfifo(fifo)
    return {'symlink loop': loop_a, 'symlink to itself': self_loop, 'dangling symlink': dangling,
            'named pipe (FIFO)': fifo, 'character device': Path('/dev/zero')}


def test_special_files_are_one_line_errors(tmp_path):
    for what, path in _special_inputs(tmp_path).items():
        # a subprocess with a timeout: a FIFO opened for reading would block forever
        r = run_cli('--rwkv7', path, '--output', tmp_path / 'out', timeout=60)
        line = assert_one_line_error(r)
        assert str(path) in line, (what, line)
        tally('special files (command line)', 'refused (exit 1, one line)', what)
    assert not (tmp_path / 'out').exists()


def _as_nobody(argv: list[str]) -> tuple[int, str]:
    """Run main_to_fla in a forked child that dropped root, so that file permissions apply to it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 99
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main_to_fla(argv)
            os.write(write_end, err.getvalue().encode())
        except BaseException as e:
            os.write(write_end, f'child failed: {e!r}'.encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, 'rb') as f:
        text = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def test_unreadable_file_is_a_one_line_error(tmp_path):
    folder = Path(tempfile.mkdtemp(prefix='unreadable-'))  # outside pytest's root-only tmp tree
    try:
        folder.chmod(0o777)
        src = save(base_state_dict(0), folder / 'm.pth')
        src.chmod(0)
        argv = ['--rwkv7', str(src), '--output', str(folder / 'out'), '--tokenizer', 'none']
        if os.geteuid() == 0:  # root reads files whatever their mode: drop to 'nobody' in a forked child
            code, err = _as_nobody(argv)
        else:
            err_buffer = io.StringIO()
            with contextlib.redirect_stderr(err_buffer):
                code = main_to_fla(argv)
            err = err_buffer.getvalue()
        assert code == 1, err
        assert err.strip() == f'error: {src}: cannot open: Permission denied', err
        assert leftovers(folder, 'm.pth') == []
        tally('special files (command line)', 'refused (exit 1, one line)', 'no read permission')
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_output_folders_that_must_not_be_replaced(tmp_path):
    src_dir = tmp_path / 'models'
    src_dir.mkdir()
    src = save(base_state_dict(0), src_dir / 'm.pth')
    (tmp_path / 'a-file').write_text('x')
    keep = digest(tmp_path)
    cases = {
        'the folder holding the input, with --force': ['--output', src_dir, '--force'],
        'the current folder, with --force': ['--output', '.', '--force'],
        'a path under a file': ['--output', tmp_path / 'a-file' / 'out'],
        'an existing file': ['--output', tmp_path / 'a-file', '--force'],
    }
    for what, args in cases.items():
        r = run_cli('--rwkv7', src, *args, '--tokenizer', 'none', cwd=src_dir if 'current' in what else tmp_path)
        assert_one_line_error(r)
        assert digest(tmp_path) == keep, what
        tally('outputs that must not be replaced (command line)', 'refused (exit 1, one line)', what)


# ------------------------------------------------------------------------------------------------ 3. output safety

@pytest.fixture(scope='module')
def big(tmp_path_factory) -> dict:
    """A ~110 MB checkpoint (conversion takes about a second), the old model at OUTDIR and both expected states."""
    root = tmp_path_factory.mktemp('big')
    src = save(make_state_dict(Goose(vocab=1024, hidden=512, layers=8), seed=5), root / 'big.pth')
    small = save(base_state_dict(0), root / 'small.pth')
    old, new = root / 'old-model', root / 'new-model'
    assert run_cli('--rwkv7', small, '--output', old, '--tokenizer', 'none', '-q').returncode == 0
    start = time.perf_counter()
    assert run_cli('--rwkv7', src, '--output', new, '--tokenizer', 'none', '-q').returncode == 0
    seconds = time.perf_counter() - start
    return {'root': root, 'src': src, 'small': small, 'old': old, 'new': new, 'old_digest': digest(old),
            'new_digest': digest(new), 'seconds': seconds}


def _start(*args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    # SIGINT must reach the child as Ctrl-C would, even where this test runs with SIGINT ignored (background jobs)
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _scratch(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith('.out.')]


def _wait_for_scratch(parent: Path, proc: subprocess.Popen, limit: float) -> bool:
    end = time.perf_counter() + limit
    while time.perf_counter() < end and proc.poll() is None:
        if _scratch(parent):
            return True
        time.sleep(0.002)
    return False


KILLS = [(sig, anchor) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL) for anchor in ('run', 'write') * 2]


def test_interrupted_conversion_leaves_the_old_or_the_complete_new_model(tmp_path, big):
    """SIGINT, SIGTERM and SIGKILL at random moments of a real conversion replacing an existing model (--force):
    OUTDIR then holds exactly the old files or exactly the new ones (sha256), and the next run leaves no scratch."""
    rng = random.Random(20240607)
    out = tmp_path / 'out'
    for sig, anchor in KILLS:
        shutil.copytree(big['old'], out)
        proc = _start('--rwkv7', big['src'], '--output', out, '--force', '--tokenizer', 'none', '-q')
        if anchor == 'write':  # a moment while the scratch folder is being written or swapped in
            _wait_for_scratch(tmp_path, proc, 30)
            time.sleep(rng.uniform(0, 0.6 * big['seconds']))
        else:  # any moment of the whole run, startup included
            time.sleep(rng.uniform(0, 1.2 * big['seconds']))
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        now = digest(out)
        state = 'old model' if now == big['old_digest'] else 'new model' if now == big['new_digest'] else 'DAMAGED'
        assert state != 'DAMAGED', (sig, proc.returncode, stderr)
        if proc.returncode == 0:
            assert state == 'new model'
        elif proc.returncode in (130, 143):  # our handler ran: one line, and the scratch folder is gone already
            assert stderr.startswith('interrupted (') and len(stderr.strip().splitlines()) == 1, stderr
            assert _scratch(tmp_path) == []
        else:  # killed outright (SIGKILL, or a signal before the handler was installed at startup)
            assert proc.returncode == -sig, (proc.returncode, stderr)
        tally('interruptions of a 110 MB conversion', f'{signal.Signals(sig).name}: {state}',
              f'{signal.Signals(sig).name} exit {proc.returncode}')
        # the next run (a small conversion into the same OUTDIR) tidies whatever a killed one left
        r = run_cli('--rwkv7', big['small'], '--output', out, '--force', '--tokenizer', 'none', '-q')
        assert r.returncode == 0, r.stderr
        assert digest(out) == big['old_digest'] and leftovers(tmp_path, 'out') == []
        shutil.rmtree(out)


_WINDOW = '''
import sys, time
sys.path.insert(0, {utils!r})
from _bootstrap import light_fla
light_fla()
from fla.rwkv7_convert import writer
real_exchange, real_rename = writer.exchange, writer.os.rename
def pause(what):
    print(what, flush=True)
    time.sleep(60)
if {mode!r} == 'after-exchange':
    def exchange(a, b):
        done = real_exchange(a, b)
        pause('swapped')
        return done
    writer.exchange = exchange
else:  # the two-rename fallback, paused between the renames
    writer.exchange = lambda a, b: False
    def rename(a, b):
        real_rename(a, b)
        if '.old-' in str(b):
            pause('moved aside')
    writer.os.rename = rename
from fla.rwkv7_convert.cli import main_to_fla
sys.exit(main_to_fla(sys.argv[1:]))
'''


@pytest.mark.parametrize('mode', ['after-exchange', 'between-two-renames'])
def test_sigkill_inside_the_final_swap_loses_nothing(tmp_path, big, mode):
    """A SIGKILL at the worst moment of the swap: right after the atomic exchange, or (where renameat2 is missing)
    between moving the old model aside and moving the new one in. The next run must find a complete model."""
    small = save(base_state_dict(0), tmp_path / 'small.pth')
    out = tmp_path / 'out'
    shutil.copytree(big['old'], out)
    code = _WINDOW.format(utils=str(REPO / 'utils'), mode=mode)
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    proc = subprocess.Popen([sys.executable, '-c', code, '--rwkv7', str(big['src']), '--output', str(out), '--force',
                             '--tokenizer', 'none', '-q'], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() in ('swapped', 'moved aside')
    proc.kill()
    proc.wait()
    if mode == 'after-exchange':
        assert digest(out) == big['new_digest']  # already complete; the old copy waits in a scratch folder
    else:
        assert not out.exists()  # the old model is beside it, under .out.old-<dead pid>-...
    # the next run, without --force: restores the old model if needed, then refuses to replace it
    r = run_cli('--rwkv7', small, '--output', out, '--tokenizer', 'none')
    assert_one_line_error(r)
    expected = big['new_digest'] if mode == 'after-exchange' else big['old_digest']
    assert digest(out) == expected and leftovers(tmp_path, 'out', 'small.pth') == []
    tally('SIGKILL inside the final swap', 'complete model kept', mode)


def test_swap_without_renameat2_puts_the_old_model_back_on_failure(tmp_path, monkeypatch):
    src = save(base_state_dict(0), tmp_path / 'm.pth')
    out = tmp_path / 'out'
    before = make_old_model(out)
    monkeypatch.setattr(writer, 'exchange', lambda a, b: False)
    real = os.rename

    def failing_rename(a, b):
        if '.tmp-' in str(a):
            raise OSError(errno.EIO, 'Input/output error')
        real(a, b)
    monkeypatch.setattr(writer.os, 'rename', failing_rename)
    with pytest.raises(OSError):
        convert_to_fla(src, out, force=True, tokenizer='none')
    assert digest(out) == before and leftovers(tmp_path, 'm.pth', 'out') == []


class _FullDisk:
    """A disk that fills up after `budget` more bytes below `root`: every way of writing a file the converter may
    use (buffered files opened by the writer, os.write/pwrite, copy_file_range, sendfile) then fails with ENOSPC."""

    def __init__(self, budget: int, root: Path, monkeypatch):
        self.budget, self.root = budget, str(root)
        real_open = open
        owner = self

        def limited_open(path, mode='r', *args, **kw):
            f = real_open(path, mode, *args, **kw)

            class Limited:
                def write(self, data):
                    owner.spend(len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes)
                    return f.write(data)

                def __getattr__(self, name):
                    return getattr(f, name)

                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    return f.__exit__(*exc)
            return Limited() if str(path).startswith(self.root) and 'r' not in mode else f

        monkeypatch.setattr(writer, 'open', limited_open, raising=False)
        for name, nbytes in (('write', lambda fd, data: memoryview(data).nbytes),
                             ('pwrite', lambda fd, data, offset: memoryview(data).nbytes),
                             ('copy_file_range', lambda src, dst, count, *a: count),
                             ('sendfile', lambda dst, src, offset, count: count)):
            real = getattr(os, name, None)
            if real is not None:
                fd_arg = 1 if name in ('copy_file_range',) else 0
                monkeypatch.setattr(os, name, self._limited(real, nbytes, fd_arg))

    def spend(self, n: int) -> None:
        if n > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= n

    def _limited(self, real, nbytes, fd_arg: int):
        def call(*args):
            try:
                ours = os.readlink(f'/proc/self/fd/{args[fd_arg]}').startswith(self.root)
            except OSError:
                ours = False
            if ours:
                self.spend(nbytes(*args))
            return real(*args)
        return call


@functools.cache
def _shard_sizes() -> tuple[int, int]:
    """(header bytes, file bytes) of base 0's model.safetensors."""
    with tempfile.TemporaryDirectory() as d:
        convert_to_fla(save(base_state_dict(0), Path(d) / 'm.pth'), Path(d) / 'out', tokenizer='none')
        raw = (Path(d) / 'out' / 'model.safetensors').read_bytes()
        return 8 + int.from_bytes(raw[:8], 'little'), len(raw)


FULL_AT = {'at-the-header': lambda h, n: 0, 'in-the-first-tensor': lambda h, n: h + 100,
           'mid-shard': lambda h, n: n // 2, 'at-config-json': lambda h, n: n + 10}


@pytest.mark.parametrize('where', FULL_AT)
def test_full_disk_injected_fails_cleanly(tmp_path, monkeypatch, capsys, where):
    budget = FULL_AT[where](*_shard_sizes())
    src = save(base_state_dict(0), tmp_path / 'm.pth')
    out = tmp_path / 'out'
    before = make_old_model(out)
    _FullDisk(budget, tmp_path, monkeypatch)
    code = main_to_fla(['--rwkv7', str(src), '--output', str(out), '--force', '--tokenizer', 'none'])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == ['error: No space left on device (nothing was written; any existing output is '
                                        'untouched)']
    assert digest(out) == before and leftovers(tmp_path, 'm.pth', 'out') == []
    tally('full disk', 'refused (exit 1, one line)', f'injected ENOSPC {where}')


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / 'tmpfs'
    mnt.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here (needs root): {r.stderr.strip()}')
    try:
        yield mnt
    finally:
        subprocess.run(['umount', str(mnt)], capture_output=True)


@pytest.mark.parametrize('existing', [False, True], ids=['fresh-output', 'replacing-a-model'])
def test_full_disk_on_a_real_1mb_tmpfs_fails_cleanly(tmp_path, small_tmpfs, existing):
    src = save(make_state_dict(Goose(vocab=256, hidden=256, layers=2)), tmp_path / 'big.pth')  # ~7 MB
    out = small_tmpfs / 'out'
    if existing:
        assert run_cli('--rwkv7', save(base_state_dict(0), tmp_path / 'small.pth'), '--output', out, '--tokenizer',
                       'none', '-q').returncode == 0
    before = digest(small_tmpfs)
    r = run_cli('--rwkv7', src, '--output', out, '--force', '--tokenizer', 'none')
    line = assert_one_line_error(r)
    assert 'No space left on device' in line
    assert digest(small_tmpfs) == before
    assert leftovers(small_tmpfs, 'out') == [] if existing else list(small_tmpfs.iterdir()) == []
    tally('full disk', 'refused (exit 1, one line)', f'1 MB tmpfs, {"replacing a model" if existing else "fresh"}')


@pytest.fixture(scope='module')
def rivals(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('rivals')
    out = {}
    for name, seed in (('a', 1), ('b', 2)):
        src = save(make_state_dict(Goose(vocab=512, hidden=256, layers=4), seed=seed), root / f'{name}.pth')  # ~14 MB
        assert run_cli('--rwkv7', src, '--output', root / f'ref-{name}', '--tokenizer', 'none', '-q').returncode == 0
        out[name] = (src, digest(root / f'ref-{name}'))
    return out


@pytest.mark.parametrize('force', [True, False], ids=['force', 'no-force'])
def test_racing_conversions_leave_one_complete_model(tmp_path, rivals, force):
    out = tmp_path / 'out'
    for _round in range(3):
        before = make_old_model(out) if force else {}
        procs = [_start('--rwkv7', src, '--output', out, *(['--force'] if force else []), '--tokenizer', 'none', '-q')
                 for src, _ in rivals.values()]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        final = digest(out)
        winners = [name for name, (_, d) in rivals.items() if d == final]
        assert len(winners) == 1, f'OUTDIR is neither complete model: {sorted(final)}'
        ok = [code == 0 for code, _ in results]
        if force:
            assert all(ok), results  # both replaced the model in turn; the last swap wins
        else:
            assert sum(ok) == 1, results  # the loser finds the winner's model and refuses to replace it
            loser = next(err for code, err in results if code != 0)
            assert loser.startswith('error: ') and 'exists and is not empty' in loser and '\n' not in loser.strip()
        assert final != before and leftovers(tmp_path, 'out') == []
        tally('racing conversions into one OUTDIR', f'{"--force" if force else "no --force"}: one complete model')
        shutil.rmtree(out)


def test_ctrl_c_while_a_tensor_is_checked_in_place_is_a_clean_interrupt(tmp_path, monkeypatch, capsys):
    """Ctrl-C inside the NaN/CRC check of the kernel-copy path, while a numpy array still views the mapped input:
    the mapping cannot be closed then, and that must not replace the interrupt with a BufferError traceback."""
    import numpy as np

    from fla.rwkv7_convert import convert

    def interrupted_check(span, view):
        data = np.frombuffer(view, np.uint8)  # alive in this frame, which the traceback keeps  # noqa: F841
        raise KeyboardInterrupt
    monkeypatch.setattr(convert, 'check_span', interrupted_check)
    src = save(base_state_dict(0), tmp_path / 'm.pth')
    out = tmp_path / 'out'
    before = make_old_model(out)
    code = main_to_fla(['--rwkv7', str(src), '--output', str(out), '--force', '--tokenizer', 'none'])
    err = capsys.readouterr().err
    assert code == 130 and err.startswith('interrupted (SIGINT)') and len(err.strip().splitlines()) == 1, err
    assert digest(out) == before and leftovers(tmp_path, 'm.pth', 'out') == []


def test_symlinked_output_is_replaced_as_a_link_and_its_target_kept(tmp_path):
    src = save(base_state_dict(0), tmp_path / 'm.pth')
    linked = tmp_path / 'linked-model'
    before = make_old_model(linked)
    (tmp_path / 'out').symlink_to(linked)
    r = run_cli('--rwkv7', src, '--output', tmp_path / 'out', '--force', '--tokenizer', 'none', '-q')
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / 'out').is_symlink() and (tmp_path / 'out' / 'model.safetensors').is_file()
    assert digest(linked) == before and leftovers(tmp_path, 'm.pth', 'out', 'linked-model') == []
    tally('outputs that must not be replaced (command line)', 'converted, the symlink\'s target kept',
          'OUTDIR a symlink to another model, --force')
