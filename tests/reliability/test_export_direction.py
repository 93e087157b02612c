"""Reliability campaign, export direction (fla / Hugging Face directory -> BlinkDL RWKV-LM file).

The property: every input directory either exports to exactly the canonical RWKV-LM file (the tensors the
unmodified directory exports to: names, dtypes, shapes and bytes, read back with torch.load) or is refused with a
one-line ConversionError subclass (through the command line: exit 1, exactly one `error: ` line, no traceback),
with the existing output file untouched (sha256) and nothing left beside it. Never another exception, never a
different model.

Counts are printed at the end of the module; docs/reliability.md (section 4) cites them.
Reproduce: python -m pytest tests/reliability/test_export_direction.py -q
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from reliability_common import print_summary, start_script, tmpfs
from reliability_common import tally as common_tally
from rwkv7_factory import Goose, make_state_dict, save
from safetensors.torch import load_file, save_file

from fla.rwkv7_convert.cli.export import main_from_fla
from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError, refusal_exit_codes

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'utils' / 'convert_from_fla_rwkv7.py'
STATS: dict[str, dict] = {}
OLD = b'the old exported model, which must survive every refusal' * 50


def tally(section: str, outcome: str, by: str | list[str] | None = None) -> None:
    common_tally(section, outcome, by, stats=STATS)  # this campaign's own summary, apart from the forward one


@pytest.fixture(scope='module', autouse=True)
def campaign_summary(request):
    yield
    print_summary(request, 'export direction (tests/reliability/test_export_direction.py)', STATS, per_mutation=True)


# ------------------------------------------------------------------------------------------------------- helpers

# no two sizes equal (V 61, C 64, F 96, H 2, N 32, ranks 8/16/24/12), so a transposed tensor can never look right
BASE = Goose(vocab=61, hidden=64, layers=2, head_size=32, ffn=96, w_rank=8, a_rank=16, v_rank=24, g_rank=12)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_pth(path: Path) -> dict:
    """name -> (dtype, shape, raw bytes), read by torch (not by our writer's code)."""
    sd = torch.load(path, weights_only=True, map_location='cpu')
    return {k: (str(v.dtype), tuple(v.shape), v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            for k, v in sd.items()}


def leftovers(parent: Path, *expected: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in expected)


@pytest.fixture(scope='module')
def hf(tmp_path_factory) -> dict:
    return make_hf(tmp_path_factory.mktemp('hf'))


def make_hf(root: Path) -> dict:
    """The base fla directory (bf16, made by the forward converter from `source`), its tensors and config, and the
    canonical export (what the unmodified directory exports to)."""
    sd = make_state_dict(BASE, torch.bfloat16, seed=15)
    convert_to_fla(save(sd, root / 'src.pth'), root / 'model', tokenizer='none')
    model = root / 'model'
    convert_from_fla(model, root / 'canonical.pth')
    return {'dir': model, 'source': root / 'src.pth', 'config': json.loads((model / 'config.json').read_text()),
            'tensors': load_file(model / 'model.safetensors'), 'canonical': read_pth(root / 'canonical.pth'),
            'canonical_bytes': (root / 'canonical.pth').read_bytes()}


def write_dir(folder: Path, config: dict | bytes | None, tensors: dict[str, torch.Tensor] | None,
              how: str = 'single', shard_sizes: list[int] | None = None) -> Path:
    """A Hugging Face directory: config.json (a dict, raw bytes, or none) and the tensors stored `how`:
    'single' (model.safetensors), 'bin' (pytorch_model.bin), 'shards' (index + shards of `shard_sizes` tensors)."""
    folder.mkdir(parents=True)
    if isinstance(config, dict):
        (folder / 'config.json').write_text(json.dumps(config))
    elif config is not None:
        (folder / 'config.json').write_bytes(config)
    if tensors is None:
        return folder
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if how == 'single':
        save_file(tensors, folder / 'model.safetensors', metadata={'format': 'pt'})
    elif how == 'bin':
        torch.save(tensors, folder / 'pytorch_model.bin')
    else:
        names, sizes, weight_map, k = list(tensors), list(shard_sizes or [len(tensors)]), {}, 0
        files = []
        while names:
            n = sizes[k % len(sizes)]
            part, names = names[:n], names[n:]
            files.append(part)
            k += 1
        for i, part in enumerate(files):
            fname = f'model-{i + 1:05d}-of-{len(files):05d}.safetensors'
            save_file({n: tensors[n] for n in part}, folder / fname, metadata={'format': 'pt'})
            weight_map.update(dict.fromkeys(part, fname))
        (folder / 'model.safetensors.index.json').write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
    return folder


def export_outcome(model: Path, out: Path, **kw) -> str:
    """Export into `out` (an existing file, replaced with force): 'exported' or the ConversionError's class name.
    Any other exception propagates and fails the test."""
    try:
        convert_from_fla(model, out, force=True, **kw)
    except ConversionError as e:
        assert '\n' not in e.one_line()
        return type(e).__name__
    return 'exported'


def check_property(model: Path, work: Path, want: dict, *, precision: str | None = None) -> str:
    """The property, through the library: exact canonical export, or a refusal leaving the old output as it was
    and nothing beside it."""
    out = work / 'out.pth'
    out.write_bytes(OLD)
    before = set(os.listdir(work))
    outcome = export_outcome(model, out, precision=precision)
    if outcome == 'exported':
        got = read_pth(out)
        assert sorted(got) == sorted(want)
        differ = [n for n in want if got[n] != want[n]]
        assert not differ, f'exported, but a different model: {differ[:5]}'
    else:
        assert out.read_bytes() == OLD
    assert set(os.listdir(work)) == before, 'scratch left beside the output'
    out.unlink()
    return outcome


def cli(*args) -> tuple[int, str]:
    """main_from_fla in this process: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main_from_fla([str(a) for a in args])
    return code, err.getvalue()


def assert_one_line_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code in refusal_exit_codes() and len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in err, (
        code, err)
    return lines[0]


def run_script(*args, timeout=600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


# ------------------------------------------------------------------------- 1. hostile config.json (every refusal)

C = BASE.hidden
HOSTILE_CONFIGS = [
    # wrong types
    *[pytest.param({key: value}, id=f'{key}={value!r}') for key in ('hidden_size', 'num_hidden_layers')
      for value in ('64', -64, 0, 2 ** 70, True, None, 64.5, [64], {'a': 1})],
    *[pytest.param({key: value}, id=f'{key}={value!r}')
      for key in ('head_dim', 'num_heads', 'vocab_size', 'intermediate_size', 'decay_low_rank_dim', 'a_low_rank_dim',
                  'v_low_rank_dim', 'gate_low_rank_dim')
      for value in ('32', -32, 2 ** 70, [32])],
    pytest.param({'norm_eps': '1e-5'}, id='norm_eps-string'),
    pytest.param({'value_dim': 'x'}, id='value_dim-string'),
    pytest.param({'attn': 'yes'}, id='attn-string'),
    pytest.param({'attn': ['layers', 1]}, id='attn-list'),
    # contradicting the tensors
    pytest.param({'hidden_size': 128}, id='hidden_size-128'),
    pytest.param({'num_hidden_layers': 1}, id='layers-1'),
    pytest.param({'num_hidden_layers': 3}, id='layers-3'),
    pytest.param({'head_dim': 16, 'num_heads': 4}, id='heads-16x4'),
    pytest.param({'head_dim': 64, 'num_heads': 1}, id='heads-64x1'),
    pytest.param({'vocab_size': 62}, id='vocab-62'),
    pytest.param({'intermediate_size': 128}, id='ffn-128'),
    pytest.param({'decay_low_rank_dim': 9}, id='w-rank-9'),
    pytest.param({'a_low_rank_dim': 8}, id='a-rank-8'),
    pytest.param({'v_low_rank_dim': 16}, id='v-rank-16'),
    pytest.param({'gate_low_rank_dim': 24}, id='g-rank-24'),
    # options BlinkDL's RWKV-7 cannot express
    pytest.param({'value_dim': 2 * C}, id='value_dim-2C'),
    pytest.param({'value_dim': [C, 2 * C]}, id='value_dim-list'),
    pytest.param({'norm_first': False}, id='norm_first-false'),
    pytest.param({'norm_bias': False}, id='norm_bias-false'),
    pytest.param({'attn': {'layers': [1], 'num_heads': 2}}, id='hybrid-attn'),
    pytest.param({'hidden_act': 'swish'}, id='hidden_act-swish'),
    pytest.param({'model_type': 'rwkv6'}, id='model_type-rwkv6'),
    pytest.param({'model_type': 'llama'}, id='model_type-llama'),
    pytest.param({'model_type': None}, id='model_type-null'),
    pytest.param({'model_type': ['rwkv7']}, id='model_type-list'),
]


@pytest.mark.parametrize('edit', HOSTILE_CONFIGS)
def test_hostile_config_is_refused(tmp_path, hf, edit):
    cfg = {**hf['config'], **edit}
    model = write_dir(tmp_path / 'm', cfg, hf['tensors'])
    outcome = check_property(model, tmp_path, hf['canonical'])
    assert outcome != 'exported', f'{edit} must be refused'
    tally('hostile config.json', outcome, next(iter(edit)))


# odd values that do not change the weights: exporting exactly (with the eps warning where it applies) or refusing
# are both right; only the property is checked
ODD_CONFIGS = [
    *[pytest.param({'norm_eps': v}, id=f'norm_eps={v!r}') for v in (float('nan'), float('inf'), -1, True, 0)],
    pytest.param({'norm_eps': 10 ** 400}, id='norm_eps=10**400'),  # once an OverflowError traceback
    pytest.param({'num_heads': 2.0}, id='num_heads=2.0'),
    pytest.param({'head_dim': 32.0}, id='head_dim=32.0'),
    pytest.param({'value_dim': [C] * 5}, id='value_dim-5-entries'),
    pytest.param({'value_dim': None}, id='value_dim-null'),
    pytest.param({'attn': {}}, id='attn-empty-object'),
    pytest.param({'attn': {'layers': []}}, id='attn-no-layers'),
    pytest.param({'architectures': ['LlamaForCausalLM']}, id='architectures-llama'),
    pytest.param({'head_size': 16}, id='head_size-16-unused-key'),
    pytest.param({'tie_word_embeddings': None}, id='tie_word_embeddings-null'),
]


@pytest.mark.parametrize('edit', ODD_CONFIGS)
def test_odd_config_exports_exactly_or_is_refused(tmp_path, hf, edit):
    model = write_dir(tmp_path / 'm', {**hf['config'], **edit}, hf['tensors'])
    outcome = check_property(model, tmp_path, hf['canonical'])
    tally('odd config.json values (either is right)', outcome, next(iter(edit)))


RAW_CONFIGS = {
    'missing': None,
    'empty file': b'',
    'not JSON': b'{"model_type": "rwkv7", ',
    'a JSON array': b'[1, 2, 3]',
    'a JSON string': b'"rwkv7"',
    'null': b'null',
    'binary garbage': bytes(range(256)),
    'UTF-16': json.dumps({'model_type': 'rwkv7'}).encode('utf-16'),
    'nested 100000 deep': b'[' * 100000 + b']' * 100000,
    'model_type missing': b'{"hidden_size": 64}',
}


RAW_CONFIG_PARAMS = [pytest.param(k, id=k) for k in RAW_CONFIGS]  # 'nested' was once a RecursionError traceback


@pytest.mark.parametrize('what', RAW_CONFIG_PARAMS)
def test_unreadable_config_is_a_one_line_error(tmp_path, hf, what):
    model = write_dir(tmp_path / 'm', RAW_CONFIGS[what], hf['tensors'])
    outcome = check_property(model, tmp_path, hf['canonical'])
    assert outcome != 'exported'
    code, err = cli('--model', model, '--output', tmp_path / 'o.pth')
    assert_one_line_error(code, err)
    assert leftovers(tmp_path, 'm') == []
    tally('broken config.json (library + command line)', outcome, what)


# -------------------------------------------------------------------- 2. seeded campaign: config + tensor mutations

class Draw:
    """Seeded chooser (as in test_reliability.py): Python's random.Random gives the same sequence everywhere."""

    def __init__(self, seed: int):
        self.rng = random.Random(f'rwkv7-export-reliability-{seed}')

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options):
        return options[self.rng.randrange(len(options))]

    def subset(self, options, lo: int, hi: int) -> list:
        options = list(options)
        return self.rng.sample(options, self.integer(min(lo, len(options)), min(hi, len(options))))


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
    d = Draw(seed)
    c = Case(hf)
    names = [m.__name__ for m in d.subset(MUTATIONS, 1, 3)]
    # structural mutations last, so that the tensor mutations see the names they expect
    late = ['fla_january_vectors', 'fused_x_x', 'bare_names', 'sharded', 'pytorch_bin']
    names.sort(key=lambda n: late.index(n) if n in late else -1)
    for name in names:
        if not globals()[name](c, d):
            c.harmful.append(name)
    return c, names


@pytest.mark.parametrize('seed', range(CAMPAIGN_CASES))
def test_mutated_directories_export_exactly_or_are_refused(tmp_path, hf, seed):
    c, names = mutated_case(hf, seed)
    model = write_dir(tmp_path / 'm', c.config, c.sd, c.how, c.shard_sizes)
    outcome = check_property(model, tmp_path, hf['canonical'], precision=c.precision)
    if c.harmful:
        assert outcome != 'exported', c
    else:
        assert outcome == 'exported', (c, outcome)
    tally('mutated directories (seeded)', outcome, names)
    # the same directory through the command line: exit 1 and one `error: ` line, or exit 0 and the same file
    out = tmp_path / 'cli.pth'
    out.write_bytes(OLD)
    code, err = cli('--model', model, '--output', out, '--force', '-q',
                    *(['--precision', c.precision] if c.precision else []))
    if outcome == 'exported':
        assert code == 0 and err == '' and read_pth(out) == hf['canonical'], (code, err)
    else:
        assert_one_line_error(code, err)
        assert out.read_bytes() == OLD
    assert leftovers(tmp_path, 'm', 'cli.pth') == []


# ------------------------------------------------------------------------- 3. broken weight files and indexes

def safetensors_boundaries(data: bytes) -> list[int]:
    n = int.from_bytes(data[:8], 'little')
    points = {0, 8, 8 + n, len(data)}
    for name, info in json.loads(data[8:8 + n]).items():
        if name != '__metadata__':
            points |= {8 + n + o for o in info['data_offsets']}
    return sorted(points)


def test_truncated_model_safetensors_at_every_boundary_is_refused(tmp_path, hf):
    data = (hf['dir'] / 'model.safetensors').read_bytes()
    cuts = sorted({c + d for c in safetensors_boundaries(data) for d in (-1, 0, 1) if 0 <= c + d < len(data)}
                  | set(range(17)))
    model = write_dir(tmp_path / 'm', hf['config'], None)
    for cut in cuts:
        (model / 'model.safetensors').write_bytes(data[:cut])
        outcome = check_property(model, tmp_path, hf['canonical'])
        assert outcome == 'NotACheckpointError', (cut, outcome)
        tally('truncated model.safetensors', outcome)
    assert len(cuts) > 100


def _edit_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], 'little')
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    first = next(k for k in header if k != '__metadata__')
    new = edit(header, first, body)
    text, body = new if isinstance(new, tuple) else (json.dumps(header).encode(), body)
    path.write_bytes(len(text).to_bytes(8, 'little') + text + body)


LIES = {
    'range one element short': lambda h, f, b: h[f].__setitem__('data_offsets', [h[f]['data_offsets'][0],
                                                                                 h[f]['data_offsets'][1] - 2]),
    'shape claims more rows': lambda h, f, b: h[f].__setitem__('shape', [h[f]['shape'][0] + 1, *h[f]['shape'][1:]]),
    'dtype F32 for bf16 bytes': lambda h, f, b: h[f].__setitem__('dtype', 'F32'),
    'dtype I16 for bf16 bytes': lambda h, f, b: h[f].__setitem__('dtype', 'I16'),
    'negative offset': lambda h, f, b: h[f].__setitem__('data_offsets', [-2, 0]),
    'bytes appended': lambda h, f, b: (json.dumps(h).encode(), b + b'tail'),
    'header a JSON array': lambda h, f, b: (b'[1]', b),
    'header not JSON': lambda h, f, b: (b'{"model.norm.weight": ', b),
    'a tensor listed twice': lambda h, f, b: (('{"' + f + '": ' + json.dumps(h[f]) + ', ' + json.dumps(h)[1:]).encode(), b),
    'header length beyond the file': None,
}


@pytest.mark.parametrize('lie', LIES)
def test_lying_safetensors_header_is_refused(tmp_path, hf, lie):
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'])
    path = model / 'model.safetensors'
    if LIES[lie] is None:
        raw = path.read_bytes()
        path.write_bytes((len(raw) * 2).to_bytes(8, 'little') + raw[8:])
    else:
        _edit_header(path, LIES[lie])
    outcome = check_property(model, tmp_path, hf['canonical'])
    assert outcome in ('NotACheckpointError', 'KeyMismatchError'), outcome  # I16: readable, but not floating point
    tally('lying safetensors headers', outcome, lie)


def _sharded(tmp_path: Path, hf: dict) -> tuple[Path, dict]:
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'], 'shards', [len(hf['tensors']) // 2 + 1])
    return model, json.loads((model / 'model.safetensors.index.json').read_text())


def _index(model: Path, index: dict | bytes) -> None:
    path = model / 'model.safetensors.index.json'
    path.write_bytes(index if isinstance(index, bytes) else json.dumps(index).encode())


def _first_tensor(index: dict) -> str:
    return sorted(index['weight_map'])[0]


def _other_shard(index: dict) -> str:
    return next(s for s in sorted(set(index['weight_map'].values())) if s != index['weight_map'][_first_tensor(index)])


def _store_twice(model: Path, index: dict, name: str) -> None:
    """A second copy of `name` (other values) in the shard that the index does not name for it."""
    other = model / next(s for s in sorted(set(index['weight_map'].values())) if s != index['weight_map'][name])
    save_file({**load_file(other), name: torch.zeros(C, dtype=torch.bfloat16)}, other, metadata={'format': 'pt'})


# JSON keeps the last of two equal keys (as transformers reads the index too): the earlier entry is then overridden,
# and the directory may export exactly; every other attack must be refused
EITHER = {'a tensor listed twice, the earlier entry naming the wrong shard'}
INDEX_ATTACKS = {
    'a missing shard': lambda m, ix: (m / 'model-00002-of-00002.safetensors').unlink(),
    'a shard that does not hold the tensor': lambda m, ix: _index(m, {**ix, 'weight_map': {
        **ix['weight_map'], _first_tensor(ix): _other_shard(ix)}}),
    'a tensor listed twice, the later entry naming the wrong shard': lambda m, ix: _index(m, (
        '{"weight_map": ' + json.dumps(ix['weight_map'])[:-1] + ', "' + _first_tensor(ix) + '": "'
        + _other_shard(ix) + '"}}').encode()),
    'a tensor listed twice, the earlier entry naming the wrong shard': lambda m, ix: _index(m, (
        '{"weight_map": {"' + _first_tensor(ix) + '": "' + _other_shard(ix) + '", '
        + json.dumps(ix['weight_map'])[1:] + '}').encode()),
    'a tensor stored in two shards': lambda m, ix: _store_twice(m, ix, 'model.norm.weight'),
    'not JSON': lambda m, ix: _index(m, b'{"weight_map": {'),
    'no weight_map': lambda m, ix: _index(m, {'metadata': {}}),
    'weight_map a list': lambda m, ix: _index(m, {'weight_map': [1, 2]}),
    'index a JSON array': lambda m, ix: _index(m, b'[]'),
    'a shard outside the directory': lambda m, ix: _index(m, {'weight_map': {
        **ix['weight_map'], _first_tensor(ix): '../model-00001-of-00002.safetensors'}}),
    'an absolute shard path': lambda m, ix: _index(m, {'weight_map': {
        **ix['weight_map'], _first_tensor(ix): str(m / 'model-00001-of-00002.safetensors')}}),
    'a shard that is a directory': lambda m, ix: (m / 'model-00002-of-00002.safetensors').unlink()
    or (m / 'model-00002-of-00002.safetensors').mkdir(),
    'a truncated shard': lambda m, ix: (m / 'model-00002-of-00002.safetensors').write_bytes(
        (m / 'model-00002-of-00002.safetensors').read_bytes()[:-3]),
}
# shard names that are not strings: `sorted(set(weight_map.values()))` in readers.open_hf_directory runs outside the
# try that turns a malformed index into NotACheckpointError, so these escape as TypeError tracebacks
INDEX_BUGS = {
    'a shard name that is a number among strings': lambda m, ix: _index(m, {'weight_map': {
        **ix['weight_map'], _first_tensor(ix): 1}}),
    'a shard name that is a list': lambda m, ix: _index(m, {'weight_map': {
        **ix['weight_map'], _first_tensor(ix): ['model-00001-of-00002.safetensors']}}),
}


def _parent_as_model(m: Path) -> None:
    """Copies of the directory's files in its parent, so that a shard name leading there finds a model to read."""
    for p in m.iterdir():
        shutil.copyfile(p, m.parent / p.name)
    shutil.copyfile(m / 'model-00001-of-00002.safetensors', m.parent / 'model.safetensors')


# shard names that are the directory itself or its parent (Path(name).name is the name): '' read the directory
# again and again (RecursionError traceback); '..' read the parent's model (found by test_verify_hostile.py)
INDEX_NAMES = {
    'a shard name that is empty': lambda m, ix: _index(m, {'weight_map': {**ix['weight_map'], _first_tensor(ix): ''}}),
    'a shard name that is ..': lambda m, ix: _parent_as_model(m) or _index(m, {'weight_map': {
        **ix['weight_map'], _first_tensor(ix): '..'}}),
    'an absolute shard path outside the directory': lambda m, ix: _parent_as_model(m) or _index(m, {'weight_map': {
        **ix['weight_map'], _first_tensor(ix): str(m.parent / 'model-00001-of-00002.safetensors')}}),
}
ALL_INDEX_ATTACKS = {**INDEX_ATTACKS, **INDEX_BUGS, **INDEX_NAMES}
# INDEX_BUGS: non-string shard names, once a TypeError traceback
INDEX_PARAMS = [pytest.param(k, id=k) for k in ALL_INDEX_ATTACKS]


@pytest.mark.parametrize('attack', INDEX_PARAMS)
def test_broken_shard_index_is_refused(tmp_path, hf, attack):
    model, index = _sharded(tmp_path, hf)
    assert len(set(index['weight_map'].values())) == 2
    ALL_INDEX_ATTACKS[attack](model, index)
    outcome = check_property(model, tmp_path, hf['canonical'])
    assert outcome in ('NotACheckpointError', 'KeyMismatchError') or attack in EITHER, outcome
    tally('broken shard indexes', outcome, attack)


def _different(hf: dict) -> dict[str, torch.Tensor]:
    """Another model of the same shapes (every tensor changed)."""
    return {k: (v.float() + 0.5).to(v.dtype) for k, v in hf['tensors'].items()}


def test_two_weight_formats_holding_the_same_model_export_exactly(tmp_path, hf):
    for what, stores in {'model.safetensors + pytorch_model.bin': ('single', 'bin'),
                         'model.safetensors + an index with shards': ('single', 'shards'),
                         'pytorch_model.bin + an index with shards': ('bin', 'shards')}.items():
        model = tmp_path / 'm'
        for i, how in enumerate(stores):
            write_dir(model if i == 0 else tmp_path / 'tmp', hf['config'], hf['tensors'], how, [25])
        for p in (tmp_path / 'tmp').iterdir():
            if p.name != 'config.json':
                p.rename(model / p.name)
        shutil.rmtree(tmp_path / 'tmp')
        outcome = check_property(model, tmp_path, hf['canonical'])
        assert outcome == 'exported'
        tally('two weight formats at once', outcome, f'{what}, same model')
        shutil.rmtree(model)


TWO_SOURCES = [
    # transformers' from_pretrained loads model.safetensors first, then model.safetensors.index.json, then
    # pytorch_model.bin (modeling_utils._get_resolved_checkpoint_files); the exporter must export that model or refuse
    pytest.param('single', 'bin', id='model.safetensors-over-pytorch_model.bin'),
    pytest.param('shards', 'bin', id='safetensors-index-over-pytorch_model.bin'),
    pytest.param('single', 'shards', id='model.safetensors-over-a-stale-index'),  # the shards used to win
]


@pytest.mark.parametrize('loaded, stale', TWO_SOURCES)
def test_two_weight_sources_export_the_one_transformers_loads_or_are_refused(tmp_path, hf, loaded, stale):
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'], loaded, [25])
    write_dir(tmp_path / 'stale', None, _different(hf), stale, [25])
    for p in (tmp_path / 'stale').iterdir():
        if not (model / p.name).exists():
            p.rename(model / p.name)
    shutil.rmtree(tmp_path / 'stale')
    outcome = check_property(model, tmp_path, hf['canonical'])
    tally('two weight formats at once', outcome, f'{loaded} + a different {stale}')


def test_tied_embeddings_export_as_the_untied_model(tmp_path, hf):
    """docs/export.md: tie_word_embeddings exports head.weight as a copy of emb.weight; the same file as the
    untied directory whose lm_head equals the embeddings."""
    untied = {**hf['tensors'], 'lm_head.weight': hf['tensors']['model.embeddings.weight'].clone()}
    ref = write_dir(tmp_path / 'untied', hf['config'], untied)
    convert_from_fla(ref, tmp_path / 'ref.pth')
    want = read_pth(tmp_path / 'ref.pth')
    (tmp_path / 'ref.pth').unlink()
    tied_sd = {k: v for k, v in hf['tensors'].items() if k != 'lm_head.weight'}
    tied = write_dir(tmp_path / 'tied', {**hf['config'], 'tie_word_embeddings': True}, tied_sd)
    assert check_property(tied, tmp_path, want) == 'exported'
    # a tied config with a stale lm_head.weight: fla ignores the stored head (it uses the embeddings); so does the export
    stale = write_dir(tmp_path / 'stale', {**hf['config'], 'tie_word_embeddings': True}, hf['tensors'])
    assert check_property(stale, tmp_path, want) == 'exported'
    tally('benign variants', 'exported', 'tied embeddings')
    tally('benign variants', 'exported', 'tied, with a stale lm_head.weight')


@pytest.mark.parametrize('precision', ['fp32', 'bf16', 'fp16'])
def test_stored_fp32_exports_like_bf16_with_precision(tmp_path, hf, precision):
    """The whole directory stored fp32 (the bf16 values widened) exports, with --precision, exactly as the bf16
    directory does with the same --precision."""
    convert_from_fla(hf['dir'], tmp_path / 'ref.pth', precision=precision)
    want = read_pth(tmp_path / 'ref.pth')
    (tmp_path / 'ref.pth').unlink()
    wide = write_dir(tmp_path / 'm', hf['config'], {k: v.float() for k, v in hf['tensors'].items()})
    assert check_property(wide, tmp_path, want, precision=precision) == 'exported'
    tally('benign variants', 'exported', f'stored fp32, --precision {precision}')


def test_fla_january_2025_layout_with_layer0_v_lora_exports_exactly(tmp_path, hf):
    sd = {k: (v.reshape(1, 1, -1) if k.endswith(('attn.k_k', 'attn.k_a', 'ffn.x_k')) else v)
          for k, v in hf['tensors'].items()}
    sd.update({k.replace('layers.1', 'layers.0'): v.clone() for k, v in hf['tensors'].items()
               if k.startswith('model.layers.1.attn.v_lora')})
    model = write_dir(tmp_path / 'm', hf['config'], sd)
    assert check_property(model, tmp_path, hf['canonical']) == 'exported'
    tally('benign variants', 'exported', 'fla January 2025 layout ([1,1,C] vectors, layer-0 v_lora)')


# ------------------------------------------------------------------------------------- 4. special paths as inputs

def _special(tmp_path: Path, hf: dict) -> dict[str, Path]:
    loop = tmp_path / 'loop'
    loop.symlink_to(tmp_path / 'loop')
    a_file = tmp_path / 'a-file'
    a_file.write_bytes(b'not a directory')
    cfg_loop = write_dir(tmp_path / 'cfg-loop', None, hf['tensors'])
    (cfg_loop / 'config.json').symlink_to(cfg_loop / 'config.json')
    w_loop = write_dir(tmp_path / 'weights-loop', hf['config'], None)
    (w_loop / 'model.safetensors').symlink_to(w_loop / 'model.safetensors')
    cfg_dir = write_dir(tmp_path / 'config-a-dir', None, hf['tensors'])
    (cfg_dir / 'config.json').mkdir()
    w_dir = write_dir(tmp_path / 'weights-a-dir', hf['config'], None)
    (w_dir / 'model.safetensors').mkdir()
    dangling = write_dir(tmp_path / 'dangling', hf['config'], None)
    (dangling / 'model.safetensors').symlink_to(tmp_path / 'nowhere')
    empty = write_dir(tmp_path / 'empty-weights', hf['config'], None)
    (empty / 'model.safetensors').write_bytes(b'')
    return {'directory a symlink loop': loop, 'directory is a file': a_file, 'no such directory': tmp_path / 'nope',
            'config.json a symlink loop': cfg_loop, 'model.safetensors a symlink loop': w_loop,
            'config.json a directory': cfg_dir, 'model.safetensors a directory': w_dir,
            'model.safetensors a dangling symlink': dangling, 'model.safetensors empty': empty,
            'no weights': write_dir(tmp_path / 'no-weights', hf['config'], None)}


def test_special_paths_are_one_line_errors(tmp_path, hf):
    work = tmp_path / 'work'
    work.mkdir()
    for what, path in _special(tmp_path, hf).items():
        outcome = check_property(path, work, hf['canonical'])
        assert outcome != 'exported', what
        code, err = cli('--model', path, '--output', work / 'o.pth')
        assert_one_line_error(code, err)
        assert list(work.iterdir()) == [], what
        tally('special paths (library + command line)', outcome, what)


def _as_nobody(argv: list[str]) -> tuple[str, int, str]:
    """convert_from_fla, then main_from_fla, in a forked child that dropped root, so that file permissions apply:
    (the library's outcome, exit code, stderr)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 99
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:  # the library first: a ConversionError, not a PermissionError
                convert_from_fla(argv[1], argv[3], force=True)
                library = 'exported'
            except Exception as e:
                library = type(e).__name__ if isinstance(e, ConversionError) else f'not a ConversionError: {e!r}'
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main_from_fla(argv)
            os.write(write_end, json.dumps([library, err.getvalue()]).encode())
        except BaseException as e:
            os.write(write_end, json.dumps(['child failed', repr(e)]).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, 'rb') as f:
        text = f.read().decode()
    _, status = os.waitpid(pid, 0)
    library, err = json.loads(text)
    return library, os.waitstatus_to_exitcode(status), err


# 'the directory' (not searchable) was once a bare PermissionError from the library
@pytest.mark.parametrize('which', ['config.json', 'model.safetensors', 'the directory'])
def test_unreadable_input_is_a_one_line_error(hf, which):
    folder = Path(tempfile.mkdtemp(prefix='unreadable-export-'))  # outside pytest's root-only tmp tree
    try:
        folder.chmod(0o777)
        model = write_dir(folder / 'm', hf['config'], hf['tensors'])
        for p in model.iterdir():
            p.chmod(0o644)
        (model if which == 'the directory' else model / which).chmod(0)
        model.chmod(0o755 if which != 'the directory' else 0)
        out = folder / 'out.pth'
        out.write_bytes(OLD)
        out.chmod(0o666)
        argv = ['--model', str(model), '--output', str(out), '--force']
        if os.geteuid() != 0:
            pytest.skip('needs root, to drop to nobody in a forked child (as test_reliability.py does)')
        library, code, err = _as_nobody(argv)  # root reads anything: drop to 'nobody' in a forked child
        line = assert_one_line_error(code, err)
        assert 'Permission denied' in line, line
        assert out.read_bytes() == OLD and leftovers(folder, 'm', 'out.pth') == []
        assert library.endswith('Error') and not library.startswith('not a'), library
        tally('special paths (library + command line)', library, f'unreadable {which}')
    finally:
        for p in (folder / 'm', *(folder / 'm').glob('*')):
            with contextlib.suppress(OSError):
                p.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------ 5. interrupted exports

@pytest.fixture(scope='module')
def big(tmp_path_factory) -> dict:
    """A ~90 MB fp32 fla directory (its export takes about a second), the old file and both expected hashes."""
    root = tmp_path_factory.mktemp('big-export')
    src = save(make_state_dict(Goose(vocab=8192, hidden=512, layers=4), torch.float32, seed=9), root / 'big.pth')
    convert_to_fla(src, root / 'big', tokenizer='none')
    src.unlink()
    start = time.perf_counter()
    r = run_script('--model', root / 'big', '--output', root / 'new.pth', '-q')
    seconds = time.perf_counter() - start
    assert r.returncode == 0, r.stderr
    old = root / 'old.pth'
    convert_from_fla(_small_dir(root), old)
    return {'root': root, 'dir': root / 'big', 'old': old, 'old_sha': sha(old), 'new_sha': sha(root / 'new.pth'),
            'seconds': seconds}


@functools.cache
def _small_state_dict() -> dict:
    return make_state_dict(BASE, torch.bfloat16, seed=16)


def _small_dir(root: Path) -> Path:
    if not (root / 'small').exists():
        convert_to_fla(save(_small_state_dict(), root / 'small.pth'), root / 'small', tokenizer='none')
    return root / 'small'


def _start(*args) -> subprocess.Popen:
    return start_script(SCRIPT, *args)


def _scratch(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if '.tmp-' in p.name]


KILLS = [(sig, anchor) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL) for anchor in ('run', 'write', 'late')]


def test_interrupted_export_leaves_the_old_or_the_complete_new_file(tmp_path, big):
    """SIGINT, SIGTERM and SIGKILL at random moments of a real export replacing an existing .pth (--force): the
    output is exactly the old file or exactly the new one (sha256), and the next run leaves no scratch file."""
    rng = random.Random(20261127)
    out = tmp_path / 'out.pth'
    for sig, anchor in KILLS:
        shutil.copyfile(big['old'], out)
        proc = _start('--model', big['dir'], '--output', out, '--force', '-q')
        if anchor == 'write':  # while the scratch file is being written
            end = time.perf_counter() + 30
            while time.perf_counter() < end and proc.poll() is None and not _scratch(tmp_path):
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.5 * big['seconds']))
        elif anchor == 'late':  # around the end: the fsync and the rename over the old file
            time.sleep(rng.uniform(0.8, 1.3) * big['seconds'])
        else:  # any moment, startup included
            time.sleep(rng.uniform(0, 1.2 * big['seconds']))
        writing = bool(_scratch(tmp_path))
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=600)
        now = sha(out)
        state = 'old file' if now == big['old_sha'] else 'new file' if now == big['new_sha'] else 'DAMAGED'
        assert state != 'DAMAGED', (sig, proc.returncode, stderr)
        if proc.returncode == 0:
            assert state == 'new file'
        elif proc.returncode in (130, 143):  # our handler ran: one line, and the scratch file is gone already
            assert proc.returncode == 128 + sig
            assert stderr.startswith('interrupted (') and len(stderr.strip().splitlines()) == 1, stderr
            assert _scratch(tmp_path) == []
        else:  # killed outright (SIGKILL, or a signal before the handler was installed)
            assert proc.returncode == -sig, (proc.returncode, stderr)
        tally('interruptions of a 90 MB export', f'{signal.Signals(sig).name}: {state}',
              [f'{signal.Signals(sig).name} exit {proc.returncode}',
               'signalled while the scratch file existed' if writing else 'signalled before or after the scratch file'])
        # the next run (a small export onto the same output) removes whatever a killed one left
        r = run_script('--model', _small_dir(big['root']), '--output', out, '--force', '-q')
        assert r.returncode == 0, r.stderr
        assert sha(out) == big['old_sha'] and leftovers(tmp_path, 'out.pth') == []
        out.unlink()


@pytest.fixture
def small_tmpfs(tmp_path):
    with tmpfs(tmp_path / 'tmpfs', '2m') as mnt:
        yield mnt


@pytest.mark.parametrize('existing', [False, True], ids=['fresh-output', 'replacing-a-file'])
def test_full_disk_on_a_real_2mb_tmpfs_fails_cleanly(tmp_path, hf, small_tmpfs, existing):
    model = tmp_path / 'mid'  # ~3.5 MB fp32: does not fit
    convert_to_fla(save(make_state_dict(Goose(vocab=512, hidden=256, layers=2), torch.float32), tmp_path / 'mid.pth'),
                   model, tokenizer='none')
    out = small_tmpfs / 'out.pth'
    if existing:
        out.write_bytes(hf['canonical_bytes'])
    before = {p.name: sha(p) for p in small_tmpfs.iterdir()}
    r = run_script('--model', model, '--output', out, '--force')
    line = assert_one_line_error(r.returncode, r.stderr)
    assert 'No space left on device' in line, line
    assert {p.name: sha(p) for p in small_tmpfs.iterdir()} == before
    tally('full disk', 'refused (exit 1, one line)', f'2 MB tmpfs, {"replacing a file" if existing else "fresh"}')


@pytest.fixture(scope='module')
def rivals(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('rivals-export')
    out = {}
    for name, seed in (('a', 1), ('b', 2)):
        src = save(make_state_dict(Goose(vocab=1024, hidden=256, layers=4), torch.float32, seed=seed), root / f'{name}.pth')
        convert_to_fla(src, root / name, tokenizer='none')
        convert_from_fla(root / name, root / f'ref-{name}.pth')
        out[name] = (root / name, sha(root / f'ref-{name}.pth'))
    return out


@pytest.mark.parametrize('force', [True, False], ids=['force', 'no-force'])
def test_racing_exports_leave_one_complete_file(tmp_path, rivals, force):
    out = tmp_path / 'out.pth'
    for _round in range(2):
        if force:
            out.write_bytes(OLD)
        procs = [_start('--model', model, '--output', out, *(['--force'] if force else []), '-q')
                 for model, _ in rivals.values()]
        results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
        for p in procs:
            p.stdout.close()
            p.stderr.close()
        final = sha(out)
        assert [name for name, (_, h) in rivals.items() if h == final], 'the output is neither complete file'
        ok = [code == 0 for code, _ in results]
        if force:
            assert all(ok), results  # both replaced the file in turn; the last rename wins
        else:
            assert sum(ok) == 1, results  # the loser finds the winner's file and refuses to replace it
            loser = next(err for code, err in results if code != 0)
            assert loser.startswith('error: ') and '\n' not in loser.strip(), loser
        assert leftovers(tmp_path, 'out.pth') == []
        tally('racing exports into one file', f'{"--force" if force else "no --force"}: one complete file')
        out.unlink()


# ------------------------------------------------------------------------------------ 6. outputs that must not be written

def _digest_dir(folder: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(folder.iterdir()) if p.is_file()}


INPUT_AS_OUTPUT = ['model.safetensors', 'config.json', 'model-00001-of-00002.safetensors']
# `--output HF_DIR/<one of its own files> --force` once replaced that file of the model being exported, exit 0


@pytest.mark.parametrize('name', INPUT_AS_OUTPUT)
def test_output_onto_a_file_of_the_input_directory_is_refused(tmp_path, hf, name):
    how = 'shards' if name.startswith('model-') else 'single'
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'], how, [len(hf['tensors']) // 2 + 1])
    before = _digest_dir(model)
    code, err = cli('--model', model, '--output', model / name, '--force', '-q')
    tally('outputs that must not be written (command line)', 'refused (exit 1, one line)' if code in refusal_exit_codes() else
          f'exit {code}', f'--output HF_DIR/{name} --force')
    assert _digest_dir(model) == before, 'the input model was overwritten'
    assert_one_line_error(code, err)


def test_outputs_that_are_not_files_are_refused(tmp_path, hf):
    (tmp_path / 'a-file').write_bytes(b'x')
    (tmp_path / 'a-dir.pth').mkdir()
    (tmp_path / 'dangling.pth').symlink_to(tmp_path / 'nowhere')
    keep = {p.name for p in tmp_path.iterdir()}
    cases = {'a directory, with --force': ['--output', tmp_path / 'a-dir.pth', '--force'],
             'the input directory, with --force': ['--output', hf['dir'], '--force'],
             'a path under a file': ['--output', tmp_path / 'a-file' / 'out.pth'],
             'a dangling symlink, with --force': ['--output', tmp_path / 'dangling.pth', '--force'],
             'an existing file, without --force': ['--output', tmp_path / 'a-file']}
    for what, args in cases.items():
        code, err = cli('--model', hf['dir'], *args, '-q')
        assert_one_line_error(code, err)
        assert {p.name for p in tmp_path.iterdir()} == keep and (tmp_path / 'a-file').read_bytes() == b'x', what
        tally('outputs that must not be written (command line)', 'refused (exit 1, one line)', what)


# ------------------------------------------------------------------------------------ 7. hostile pytorch_model.bin

class _Boom:
    """Pickles as a call of os.system: a loader that runs pickled code would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def _rewrite_pickle(path: Path, obj) -> None:
    import pickle
    import zipfile
    with zipfile.ZipFile(path) as z:
        records = {i.filename: z.read(i) for i in z.infolist()}
    name = next(n for n in records if n.endswith('/data.pkl'))
    records[name] = pickle.dumps(obj, protocol=2)
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
        for n, data in records.items():
            z.writestr(n, data)


BIN_ATTACKS = {
    'a pickle that calls os.system': lambda path, marker: _rewrite_pickle(path, {'model.norm.weight': _Boom(marker)}),
    'a pickle of a list, not a dict': lambda path, marker: _rewrite_pickle(path, [1, 2, 3]),
    'a dict of strings': lambda path, marker: _rewrite_pickle(path, {'model.norm.weight': 'x'}),
    'truncated in half': lambda path, marker: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]),
    'not a zip or a pickle': lambda path, marker: path.write_bytes(b'\x00' * 4096),
}


@pytest.mark.parametrize('attack', BIN_ATTACKS)
def test_hostile_pytorch_model_bin_is_refused(tmp_path, hf, attack):
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'], 'bin')
    marker = tmp_path / 'pwned'
    BIN_ATTACKS[attack](model / 'pytorch_model.bin', marker)
    outcome = check_property(model, tmp_path, hf['canonical'])
    assert outcome != 'exported' and not marker.exists(), outcome
    assert outcome == 'UnsafeCheckpointError' if 'os.system' in attack else outcome == 'NotACheckpointError', outcome
    tally('hostile pytorch_model.bin', outcome, attack)
