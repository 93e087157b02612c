#!/usr/bin/env python
"""How fast, and in how much memory, does the converter turn a released-size RWKV-7 checkpoint into an fla directory?

For each model size it writes an RWKV-LM-format bf16 `.pth` shaped like BlinkDL's release (random values) and
times, each in a fresh process, median of --repeats runs:

  ours     python utils/convert_to_rwkv7.py --rwkv7 F --output D --force --quiet --tokenizer none
  naive    what one would otherwise write: import fla, RWKV7ForCausalLM(RWKV7Config(...)) (random init),
           torch.load the file, rename/transpose into the model's state dict, cast to the file's dtype,
           save_pretrained (see `naive_to_fla` below)
  plain    the strongest plain script a user would write: torch.load(mmap=True, weights_only=True), the same
           renames and transposes, fla's target shapes from a model built on the meta device (no weights),
           safetensors.torch.save_file into one file, config.json (see `plain_to_fla` below); no sharding,
           no fsync, no atomic output, no checks
  floor    cp of the file; a python process copying it and fsyncing the copy (our converter fsyncs its
           output); a python process reading every byte once; plus `python -c pass`, `import torch` and
           `import fla.models` once per run for reference

and, when utils/convert_from_fla_rwkv7.py exists, the reverse direction and the round trip likewise.
Wall time, CPU time (user + sys) and peak RSS come from os.wait4 on each child (peak RSS covers the child and
any process it waited for). The page cache cannot be dropped here, so every method reads a warm file; the
output of each run is deleted and `sync` is called before the next measurement, outside the timing.

    python benchmarks/benchmark_convert.py                      # 0.1B,0.4B,1.5B x 3; writes RESULTS.md + PNG
    python benchmarks/benchmark_convert.py --naive-repeats 1     # the same, one naive run per size (~9 min at 1.5B)
    python benchmarks/benchmark_convert.py --sizes 2.9B --repeats 1 --json out.json --plot out.png
    python benchmarks/benchmark_convert.py --naive-json old.json  # re-time ours and the floor, reuse naive numbers

Writing benchmarks/RESULTS.md replaces it whole, including the hand-written profile notes at its end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
TO_FLA = REPO / 'utils' / 'convert_to_rwkv7.py'
FROM_FLA = REPO / 'utils' / 'convert_from_fla_rwkv7.py'
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / 'rwkv7-bench'
DEFAULT_MARKDOWN = HERE.parent / 'RESULTS.md'
DEFAULT_PLOT = HERE.parent / 'convert_benchmark.png'

VOCAB, HEAD_SIZE = 65536, 64
# released RWKV-7 "Goose" World models: name -> (hidden size C, layers L)
SIZES = {'0.1B': (768, 12), '0.4B': (1024, 24), '1.5B': (2048, 24), '2.9B': (2560, 32),
         'tiny': (256, 2)}  # tiny: a quick smoke test, not a released shape
DEFAULT_SIZES = ('0.1B', '0.4B', '1.5B')


def lora_rank(factor: float, C: int) -> int:
    """RWKV-LM's suggested LoRA rank: max(32, round(f * sqrt(C) / 32) * 32)."""
    return max(32, int(round(factor * math.sqrt(C) / 32)) * 32)


@dataclass(frozen=True)
class Shape:
    C: int
    L: int
    V: int = VOCAB
    N: int = HEAD_SIZE

    @property
    def F(self) -> int:
        return 4 * self.C

    @property
    def ranks(self) -> dict[str, int]:
        return {'w': lora_rank(2.5, self.C), 'a': lora_rank(2.5, self.C), 'v': lora_rank(1.7, self.C),
                'g': lora_rank(5.0, self.C)}

    def tensors(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, kind) in RWKV-LM's module order; layer 0 carries v0/v1/v2 as RWKV-LM training saves them."""
        C, F, V, N, r = self.C, self.F, self.V, self.N, self.ranks
        vec = (1, 1, C)
        out: list[tuple[str, tuple[int, ...], str]] = [('emb.weight', (V, C), 'matrix')]
        for i in range(self.L):
            b = f'blocks.{i}.'
            if i == 0:
                out += [(b + 'ln0.weight', (C,), 'one'), (b + 'ln0.bias', (C,), 'small')]
            out += [(b + 'ln1.weight', (C,), 'one'), (b + 'ln1.bias', (C,), 'small'),
                    (b + 'ln2.weight', (C,), 'one'), (b + 'ln2.bias', (C,), 'small')]
            a = b + 'att.'
            out += [(a + f'x_{c}', vec, 'unit') for c in 'rwkvag']
            for letter in 'wav':
                out += [(a + f'{letter}0', vec, 'small'), (a + f'{letter}1', (C, r[letter]), 'matrix'),
                        (a + f'{letter}2', (r[letter], C), 'matrix')]
            out += [(a + 'g1', (C, r['g']), 'matrix'), (a + 'g2', (r['g'], C), 'matrix'),
                    (a + 'k_k', vec, 'one'), (a + 'k_a', vec, 'one'), (a + 'r_k', (C // N, N), 'small')]
            out += [(a + f'{p}.weight', (C, C), 'matrix') for p in ('receptance', 'key', 'value', 'output')]
            out += [(a + 'ln_x.weight', (C,), 'one'), (a + 'ln_x.bias', (C,), 'small')]
            out += [(b + 'ffn.x_k', vec, 'unit'), (b + 'ffn.key.weight', (F, C), 'matrix'),
                    (b + 'ffn.value.weight', (C, F), 'matrix')]
        out += [('ln_out.weight', (C,), 'one'), ('ln_out.bias', (C,), 'small'), ('head.weight', (V, C), 'matrix')]
        return out

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(s) for _, s, _ in self.tensors())


# How the values are drawn: 'trained-like' (the default: LayerNorm gains around 1, mixing coefficients in [0, 1], other
# vectors N(0, 0.2)) or 'long-memory', issue #29's ill-conditioned recipe: every vector N(0, 0.1), the decay base w0
# around -2 (decays exp(-exp(-softplus(2) - 0.5)) ~ 0.93 per token: long memory). Matrices are N(0, fan_in^-0.5) in both.
PROFILES = ('trained-like', 'long-memory')
LONG_MEMORY_W0, LONG_MEMORY_SCALE = -2.0, 0.1


def generate_checkpoint(shape: Shape, path: Path, seed: int = 0, profile: str = 'trained-like') -> Path:
    """Write an RWKV-LM-format bf16 state dict with torch.save, the way RWKV-LM saves its checkpoints.

    Values are finite random numbers of sensible scale (the converter refuses NaN/Inf), drawn as `profile` says
    (PROFILES); each tensor is drawn directly in bf16, so memory is the file's size once and a 3 GB file takes ~15 s
    on 2 cores.
    """
    import torch

    if profile not in PROFILES:
        raise ValueError(f'profile {profile!r}: expected one of {", ".join(PROFILES)}')

    torch.manual_seed(seed)
    sd = {}
    for name, size, kind in shape.tensors():
        t = torch.empty(size, dtype=torch.bfloat16)
        if kind == 'matrix':
            t.normal_(0.0, 1.0 / math.sqrt(size[-1]))
        elif profile == 'long-memory':
            t.normal_(LONG_MEMORY_W0 if name.endswith('.att.w0') else 0.0, LONG_MEMORY_SCALE)
        elif kind == 'one':
            t.normal_(1.0, 0.1)
        elif kind == 'unit':
            t.uniform_(0.0, 1.0)
        else:
            t.normal_(0.0, 0.2)
        sd[name] = t
    tmp = path.with_name(path.name + '.partial')
    torch.save(sd, tmp)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------ the naive baseline

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
    # only the names are taken from Shape; shapes come from the model's tensors
    for old, shape, _ in Shape(C, model.config.num_hidden_layers, model.config.vocab_size).tensors():
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


# --------------------------------------------------------------------------------------------------- measuring

READ_ALL = ('import sys\nbuf = memoryview(bytearray(1 << 24))\n'
            'with open(sys.argv[1], "rb", buffering=0) as f:\n    while f.readinto(buf):\n        pass\n')
COPY_FSYNC = ('import os, shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[2])\n'
              'fd = os.open(sys.argv[2], os.O_RDONLY)\nos.fsync(fd)\nos.close(fd)\n')


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mb: float


@dataclass
class Method:
    key: str
    label: str
    argv: list[str]
    clean: list[Path] = field(default_factory=list)  # outputs removed before each run
    samples: list[Sample] = field(default_factory=list)
    skipped: str = ''
    max_runs: int | None = None  # fewer runs than --repeats (the slow naive baseline, with --naive-repeats)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples) if self.samples else float('nan')


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def measure(argv: list[str], log: Path) -> Sample:
    """Run argv in a fresh process; wall clock around spawn + exit, CPU and peak RSS from the child's rusage."""
    with open(log, 'wb') as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors='replace')[-2000:]
        raise RuntimeError(f'{" ".join(map(str, argv))} exited {proc.returncode}:\n{tail}')
    # ru_maxrss is in KiB on Linux
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def run_methods(methods: list[Method], repeats: int, log: Path, say) -> None:
    """Round-robin over the methods `repeats` times, so slow drifts of the machine hit all of them alike."""
    for r in range(repeats):
        for m in methods:
            if m.skipped or (m.max_runs is not None and r >= m.max_runs):
                continue
            for p in m.clean:
                remove(p)
            os.sync()
            s = measure(m.argv, log)
            m.samples.append(s)
            runs = min(repeats, m.max_runs or repeats)
            say(f'    [{r + 1}/{runs}] {m.label:<22} {s.wall:7.2f} s wall {s.cpu:7.2f} s cpu {s.rss_mb:8.0f} MB')


def mem_available() -> int:
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


# ----------------------------------------------------------------------------------------------------- running

def bench_size(name: str, args, py: str, say) -> dict:
    shape = Shape(*SIZES[name])
    work = args.workdir / name
    work.mkdir(parents=True, exist_ok=True)
    src = work / f'rwkv7-{name}.pth'
    file_bytes = 2 * shape.num_parameters  # roughly; exact size read below
    free = shutil.disk_usage(args.workdir).free
    need = 6 * file_bytes + (4 * file_bytes if FROM_FLA.exists() else 0)
    if not src.exists() and free < need + file_bytes:
        raise SystemExit(f'{name}: needs ~{(need + file_bytes) / 1e9:.1f} GB free under {args.workdir}, '
                         f'has {free / 1e9:.1f} GB')
    if not src.exists():
        say(f'  generating {src} ({shape.num_parameters / 1e9:.2f}B params, C{shape.C} L{shape.L}, ranks {shape.ranks})')
        t = time.perf_counter()
        subprocess.run([py, str(HERE), '_generate', name, str(src)], check=True)
        say(f'  generated in {time.perf_counter() - t:.1f} s')
    file_bytes = src.stat().st_size
    measure([py, '-c', READ_ALL, str(src)], work / 'log.txt')  # warm the page cache for every method alike

    d_ours, d_naive, d_plain = work / 'fla-ours', work / 'fla-naive', work / 'fla-plain'
    copy, copy2 = work / 'copy.pth', work / 'copy-fsync.pth'
    # naive holds the random fp32 model (4 B/param), the loaded file (2) and the cast copy (up to 2)
    naive_need = 8 * shape.num_parameters
    naive_skip = '' if naive_need < 0.9 * mem_available() else f'skipped: needs ~{naive_need / 2**30:.0f} GiB RAM'
    to_methods = [
        Method('ours', 'ours (to fla)', [py, str(TO_FLA), '--rwkv7', str(src), '--output', str(d_ours), '--force',
                                         '--quiet', '--tokenizer', 'none'], [d_ours]),
        Method('naive', 'naive (to fla)', [py, str(HERE), '_naive_to', str(src), str(d_naive)], [d_naive],
               skipped=naive_skip if not args.no_naive else 'skipped: --no-naive', max_runs=args.naive_repeats),
        Method('plain', 'plain (mmap+save_file)', [py, str(HERE), '_plain_to', str(src), str(d_plain)], [d_plain],
               skipped='skipped: --no-plain' if args.no_plain else ''),
        Method('cp', 'cp', ['cp', '--reflink=never', str(src), str(copy)], [copy]),
        Method('copy_fsync', 'python copy + fsync', [py, '-c', COPY_FSYNC, str(src), str(copy2)], [copy2]),
        Method('read', 'python read all', [py, '-c', READ_ALL, str(src)]),
    ]
    say(f'  {name}: {file_bytes / 1e9:.2f} GB file, to fla (load average {os.getloadavg()[0]:.1f})')
    run_methods(to_methods, args.repeats, work / 'log.txt', say)
    check = ''
    if not to_methods[1].skipped:
        check = run_worker(py, '_compare_dirs', str(d_ours), str(d_naive))
        say(f'  ours vs naive output: {"identical tensors" if not check else "DIFFER: " + check}')

    plain_check = ''
    if not to_methods[2].skipped:
        plain_check = run_worker(py, '_compare_dirs', str(d_ours), str(d_plain))
        say(f'  ours vs plain output: {"identical tensors" if not plain_check else "DIFFER: " + plain_check}')

    result = {'size': name, 'C': shape.C, 'L': shape.L, 'params': shape.num_parameters, 'file_bytes': file_bytes,
              'ranks': shape.ranks, 'to_fla': {m.key: method_dict(m) for m in to_methods},
              'ours_equals_naive': (not check) if not to_methods[1].skipped else None,
              'ours_equals_plain': (not plain_check) if not to_methods[2].skipped else None}

    if FROM_FLA.exists():
        back_ours, back_naive = work / 'back-ours.pth', work / 'back-naive.pth'
        rt_ours, rt_naive = work / 'rt-ours', work / 'rt-naive'
        rt_ours_pth, rt_naive_pth = work / 'rt-ours.pth', work / 'rt-naive.pth'
        # the naive reverse needs an fla directory: ours is made at this point and equal to naive's
        from_methods = [
            Method('ours', 'ours (from fla)', [py, str(FROM_FLA), '--model', str(d_ours), '--output', str(back_ours),
                                               '--force', '--quiet'], [back_ours]),
            Method('naive', 'naive (from fla)', [py, str(HERE), '_naive_from', str(d_ours), str(back_naive)],
                   [back_naive], skipped=to_methods[1].skipped, max_runs=args.naive_repeats),
        ]
        say(f'  {name}: from fla')
        run_methods(from_methods, args.repeats, work / 'log.txt', say)
        sh = shutil.which('sh') or '/bin/sh'
        rt_methods = [
            Method('ours', 'ours (round trip)', [sh, '-c', '"$0" "$1" --rwkv7 "$2" --output "$3" --force --quiet '
                                                 '--tokenizer none && "$0" "$4" --model "$3" --output "$5" --force --quiet',
                                                 py, str(TO_FLA), str(src), str(rt_ours), str(FROM_FLA), str(rt_ours_pth)],
                   [rt_ours, rt_ours_pth]),
        ]
        if args.naive_round_trip:
            rt_methods.append(
                Method('naive', 'naive (round trip)', [sh, '-c', '"$0" "$1" _naive_to "$2" "$3" && '
                                                       '"$0" "$1" _naive_from "$3" "$4"',
                                                       py, str(HERE), str(src), str(rt_naive), str(rt_naive_pth)],
                       [rt_naive, rt_naive_pth], skipped=to_methods[1].skipped, max_runs=args.naive_repeats))
        say(f'  {name}: round trip')
        run_methods(rt_methods, args.repeats, work / 'log.txt', say)
        rt_check = run_worker(py, '_compare_pth', str(src), str(rt_ours_pth))
        say(f'  round trip source vs back: {"identical tensors" if not rt_check else "DIFFER: " + rt_check}')
        result['from_fla'] = {m.key: method_dict(m) for m in from_methods}
        result['round_trip'] = {m.key: method_dict(m) for m in rt_methods}
        if not args.naive_round_trip and not to_methods[1].skipped:
            # two fresh processes either way: the sum of the medians of the two directions
            n_to, n_from = result['to_fla']['naive']['median'], result['from_fla']['naive']['median']
            result['round_trip']['naive'] = {
                'label': 'naive (round trip, sum of both directions)', 'argv': [], 'skipped': '', 'samples': [],
                'summed': True, 'median': {'wall': n_to['wall'] + n_from['wall'], 'cpu': n_to['cpu'] + n_from['cpu'],
                                           'rss_mb': max(n_to['rss_mb'], n_from['rss_mb'])}}
        result['round_trip_identical'] = not rt_check
    result['load_average'] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        for m in to_methods:
            for p in m.clean:
                remove(p)
    return result


def method_dict(m: Method) -> dict:
    return {'label': m.label, 'argv': [str(a) for a in m.argv], 'skipped': m.skipped,
            'samples': [asdict(s) for s in m.samples],
            'median': {k: m.median(k) for k in ('wall', 'cpu', 'rss_mb')} if m.samples else None}


def run_worker(py: str, *argv: str) -> str:
    out = subprocess.run([py, str(HERE), *argv], capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        return f'check failed: {out.stderr.strip()[-500:]}'
    return out.stdout.strip()


def bench_constants(args, py: str, say) -> dict:
    args.workdir.mkdir(parents=True, exist_ok=True)
    methods = [Method('start', 'python -c pass', [py, '-c', 'pass']),
               Method('torch', 'import torch', [py, '-c', 'import torch']),
               Method('fla', 'import fla.models', [py, '-W', 'ignore', '-c', 'import fla.models'])]
    say('  interpreter and imports')
    measure([py, '-W', 'ignore', '-c', 'import fla.models'], args.workdir / 'log.txt')  # warm .pyc and file cache
    run_methods(methods, args.repeats, args.workdir / 'log.txt', say)
    return {m.key: method_dict(m) for m in methods}


# ------------------------------------------------------------------------------------------------------ report

def _med(d: dict, key: str, attr: str = 'wall') -> float:
    m = d.get(key)
    return m['median'][attr] if m and m['median'] else float('nan')


def _fmt(x: float, digits: int = 2) -> str:
    return 'n/a' if x != x else f'{x:.{digits}f}'


def _x(x: float, digits: int = 2) -> str:
    return 'n/a' if x != x else f'{x:.{digits}f}×'


TARGET_FLOOR, TARGET_NAIVE, TARGET_RSS_MB = 2.0, 10.0, 1.5 * 1024


def targets(results: list[dict], consts: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows."""
    start = _med(consts, 'start')
    rows = []
    big = [r for r in results if r['params'] >= 0.3e9]
    for r in big:
        ours, floor = _med(r['to_fla'], 'ours'), _med(r['to_fla'], 'cp') + start
        ok = ours <= TARGET_FLOOR * floor
        rows.append((f'ours ≤ 2× floor (cp + python start) at {r["size"]}', f'{ours / floor:.2f}×', _verdict(ok)))
    for r in results:
        if r['size'] == '0.4B':
            ratio = _med(r['to_fla'], 'naive') / _med(r['to_fla'], 'ours')
            rows.append(('ours ≥ 10× faster than naive at 0.4B', f'{_x(ratio, 1)}',
                         'n/a' if ratio != ratio else _verdict(ratio >= TARGET_NAIVE)))
    rss = [(r['size'], _med(r['to_fla'], 'ours', 'rss_mb')) for r in results]
    for size, mb in rss:
        if size == '1.5B':
            rows.append(('ours peak RSS ≤ 1.5 GB at 1.5B', f'{mb:.0f} MB', _verdict(mb <= TARGET_RSS_MB)))
    if len(rss) >= 2:
        lo, hi = min(mb for _, mb in rss), max(mb for _, mb in rss)
        small, large = results[0], results[-1]
        grow_mb = (large['file_bytes'] - small['file_bytes']) / 2**20
        # "flat": RSS grows by under a quarter of what the file grows by; it cannot be constant, since the largest
        # tensor (emb/head, V x C) is held whole and scales with C
        flat = hi - lo < 0.25 * grow_mb
        rows.append((f'ours peak RSS flat in model size ({small["size"]} → {large["size"]}: file +{grow_mb:.0f} MB, '
                     'allowed RSS growth < 25% of that)', f'{lo:.0f} → {hi:.0f} MB (+{hi - lo:.0f})', _verdict(flat)))
    return rows


def _verdict(ok: bool) -> str:
    return 'met' if ok else '**missed**'


def markdown(results: list[dict], consts: dict, meta: dict) -> str:
    start = _med(consts, 'start')
    lines = [
        '# RWKV-7 converter benchmark', '',
        f'Command: `{meta["command"]}`  ', f'Converter: commit {meta.get("commit", "unknown")}  ',
        f'Machine: {meta["machine"]}  ', f'Software: {meta["software"]}  ',
        f'Date: {meta["date"]}; median of {meta["repeats"]} runs, each in a fresh process'
        + (f' (naive: {meta["naive_repeats"]} run(s))' if meta.get('naive_repeats') not in (None, meta['repeats'])
           else '') + f'. {meta.get("load", "")}', '',
        'Checkpoints: RWKV-LM-format bf16 `.pth` (torch.save) with random values, shaped like the released models '
        '(vocab 65536, FFN 4C, head size 64, LoRA ranks max(32, round(f·sqrt(C)/32)·32), f = 2.5 w/a, 1.7 v, 5 g; '
        'layer-0 v present).', '',
        *([f'The naive baseline was taken from an earlier run of this script, {meta["naive_from"]}: it does not '
           'use the converter, so it is unaffected by the converter changes since.', ''] if meta.get('naive_from') else []),
        '**The page cache could not be dropped: every method reads a file that is warm in the page cache.** '
        'Outputs are deleted and `sync` is run before each measurement (outside the timing). '
        'Ours fsyncs its output; `cp` does not (the "copy + fsync" column does).', '',
        f'Reference (size-independent): python -c pass {_fmt(start)} s / {_med(consts, "start", "rss_mb"):.0f} MB; '
        f'import torch {_fmt(_med(consts, "torch"))} s / {_med(consts, "torch", "rss_mb"):.0f} MB; '
        f'import fla.models {_fmt(_med(consts, "fla"))} s / {_med(consts, "fla", "rss_mb"):.0f} MB.', '',
        '## RWKV-LM .pth → fla directory', '',
        '| model | file GB | ours s (cpu) | ours RSS MB | plain s (cpu) | plain RSS MB | naive s (cpu) | naive RSS MB | '
        'cp s | copy+fsync s | read s | floor s = cp + start | ours / floor | ours / (copy+fsync + start) | '
        'plain / ours | naive / ours |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in results:
        d = r['to_fla']
        ours, naive, cp = _med(d, 'ours'), _med(d, 'naive'), _med(d, 'cp')
        floor = cp + start
        lines.append(
            f'| {r["size"]} | {r["file_bytes"] / 1e9:.2f} | {_fmt(ours)} ({_fmt(_med(d, "ours", "cpu"))}) | '
            f'{_med(d, "ours", "rss_mb"):.0f} | {_cell(d, "plain")} | {_fmt(_med(d, "plain", "rss_mb"), 0)} | '
            f'{_cell(d, "naive")} | {_fmt(_med(d, "naive", "rss_mb"), 0)} | '
            f'{_fmt(cp)} | {_fmt(_med(d, "copy_fsync"))} | {_fmt(_med(d, "read"))} | {_fmt(floor)} | '
            f'{_x(ours / floor)} | {_fmt(ours / (_med(d, "copy_fsync") + start))}× | {_x(_med(d, "plain") / ours)} | '
            f'{_x(naive / ours, 1)} |')
    lines += ['', 'Peak RSS of the floor: ' + ', '.join(
        f'{r["size"]}: cp {_med(r["to_fla"], "cp", "rss_mb"):.0f} MB, read {_med(r["to_fla"], "read", "rss_mb"):.0f} MB'
        for r in results) + '.', '']
    for key, who in (('ours_equals_naive', 'naive'), ('ours_equals_plain', 'plain')):
        checks = [f'{r["size"]}: {"identical" if r[key] else "DIFFERENT"}' for r in results if r.get(key) is not None]
        if checks:
            lines += [f'Ours vs {who} output, tensor by tensor: ' + ', '.join(checks) + '.', '']
    lines += ['Plain: `torch.load(mmap=True, weights_only=True)` + renames + `safetensors.torch.save_file` into one '
              'file, no fsync (see `plain_to_fla`). Its peak RSS counts the pages of the mapped input it touched '
              'and the whole output it builds before writing.', '']

    lines += ['## fla directory → RWKV-LM .pth, and round trip', '']
    if not any('from_fla' in r for r in results):
        lines += ['n/a: utils/convert_from_fla_rwkv7.py did not exist when this was run.', '']
    else:
        lines += ['| model | direction | ours s (cpu) | ours RSS MB | naive s (cpu) | naive RSS MB | floor s | '
                  'ours / floor | naive / ours |', '|---|---|---|---|---|---|---|---|---|']
        for r in results:
            cp = _med(r['to_fla'], 'cp')
            for key, label, floor in (('from_fla', 'from fla', cp + start), ('round_trip', 'round trip',
                                                                                 2 * (cp + start))):
                d = r[key]
                ours, naive = _med(d, 'ours'), _med(d, 'naive')
                lines.append(f'| {r["size"]} | {label} | {_fmt(ours)} ({_fmt(_med(d, "ours", "cpu"))}) | '
                             f'{_med(d, "ours", "rss_mb"):.0f} | {_cell(d, "naive")} | '
                             f'{_fmt(_med(d, "naive", "rss_mb"), 0)} | {_fmt(floor)} | {_x(ours / floor)} | '
                             f'{_x(naive / ours, 1)} |')
        summed = any(r['round_trip'].get('naive', {}).get('summed') for r in results)
        lines += ['', 'Floor: one cp + python start per direction (two for the round trip). '
                  + ('Naive round trip: the sum of its two directions\' medians (it is two fresh processes); '
                     'peak RSS the larger of the two. ' if summed else '')
                  + 'Ours round trip: timed as one `sh -c \'to && from\'`. Round trip: '
                  + ', '.join(f'{r["size"]} {"source tensors recovered exactly" if r["round_trip_identical"] else "DIFFERS"}'
                              for r in results) + ' (layer-0 v0/v1/v2 are dropped by design).', '']

    lines += ['## Targets', '', '| target | measured | verdict |', '|---|---|---|']
    lines += [f'| {t} | {m} | {v} |' for t, m, v in targets(results, consts)]
    lines.append('')
    return '\n'.join(lines)


def _cell(d: dict, key: str) -> str:
    m = d.get(key)
    if not m or m['skipped'] or not m['median']:
        return m['skipped'] if m and m['skipped'] else 'n/a'
    return f'{m["median"]["wall"]:.2f} ({m["median"]["cpu"]:.2f})'


def plot(results: list[dict], consts: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', 'matplotlib'], check=True)
        import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    start = _med(consts, 'start')
    gb = [r['file_bytes'] / 1e9 for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    series = [('ours', 'ours', 'o-'), ('plain', 'plain (torch.load mmap + save_file)', '^-'),
              ('naive', 'naive (fla + torch.load + save_pretrained)', 's-')]
    for key, label, style in series:
        ax1.plot(gb, [_med(r['to_fla'], key) for r in results], style, label=label)
        ax2.plot(gb, [_med(r['to_fla'], key, 'rss_mb') / 1024 for r in results], style, label=label)
    ax1.plot(gb, [_med(r['to_fla'], 'cp') + start for r in results], 'k--', label='floor: cp + python start')
    ax1.plot(gb, [_med(r['to_fla'], 'copy_fsync') + start for r in results], ':', color='gray',
             label='copy + fsync + python start')
    ax2.plot(gb, [_med(r['to_fla'], 'cp', 'rss_mb') / 1024 for r in results], 'k--', label='cp')
    ax2.plot(gb, gb, ':', color='gray', label='file size')
    ax1.set(xlabel='checkpoint size (GB, bf16)', ylabel='wall time (s, log)', title='time, .pth → fla (warm cache)',
            yscale='log')
    ax2.set(xlabel='checkpoint size (GB, bf16)', ylabel='peak RSS (GiB, log)', title='peak memory', yscale='log')
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        for r, x in zip(results, gb):
            ax.annotate(r['size'], (x, 0), textcoords='offset points', xytext=(0, 2), fontsize=7, ha='center',
                        xycoords=('data', 'axes fraction'))
    for ax in (ax1, ax2):  # head room on the log axis, so the legend sits above the curves
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (hi / lo) ** 0.6)
        ax.legend(fontsize=7, loc='upper left')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def machine() -> str:
    cpu = ''
    try:
        cpu = next(line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                   if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    mem = 0
    try:
        mem = int(Path('/proc/meminfo').read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return f'{cpu or platform.processor()}, {os.cpu_count()} cores, {mem / 2**30:.0f} GiB RAM, {platform.system()} ' \
           f'{platform.release()}'


def software(py: str) -> str:
    code = ('import sys, numpy, torch, transformers\n'
            'from importlib.metadata import version\n'
            'print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, torch {torch.__version__}, "\n'
            '      f"transformers {transformers.__version__}, flash-linear-attention {version(\'flash-linear-attention\')}")')
    out = subprocess.run([py, '-c', code], capture_output=True, text=True)
    return out.stdout.strip() or 'unknown'


def git_state() -> str:
    try:
        head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True).stdout
        dirty = subprocess.run(['git', 'status', '--porcelain', '--', 'fla/rwkv7_convert', 'utils'], cwd=REPO,
                               capture_output=True, text=True).stdout
    except OSError:
        return 'unknown'
    return head.strip() + (' + uncommitted changes in fla/rwkv7_convert or utils' if dirty.strip() else '')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--sizes', default=None, help=f'comma-separated from {", ".join(SIZES)} '
                                                  f'(default {",".join(DEFAULT_SIZES)}: fits 2 cores / 24 GB)')
    p.add_argument('--repeats', type=int, default=3, help='runs per method; the median is reported (default 3)')
    p.add_argument('--workdir', type=Path, default=DEFAULT_WORKDIR, help=f'scratch space (default {DEFAULT_WORKDIR})')
    p.add_argument('--json', type=Path, default=None, help='write every sample and median as JSON')
    p.add_argument('--plot', type=Path, default=None,
                   help=f'PNG of time and peak RSS vs size (default with default sizes: {DEFAULT_PLOT.relative_to(REPO)})')
    p.add_argument('--markdown', type=Path, default=None,
                   help=f'markdown report (default with default sizes: {DEFAULT_MARKDOWN.relative_to(REPO)})')
    p.add_argument('--no-naive', action='store_true', help='skip the naive baseline (slow: ~1.5 min per run at 1.5B)')
    p.add_argument('--no-plain', action='store_true', help='skip the plain torch.load(mmap=True) + save_file baseline')
    p.add_argument('--naive-repeats', type=int, default=None,
                   help='runs of the naive baseline (default: --repeats); it is 10-30x slower than the rest')
    p.add_argument('--naive-round-trip', action='store_true',
                   help='time the naive round trip itself (default: the sum of its two directions, which it is)')
    p.add_argument('--keep', action='store_true', help='keep the generated checkpoints and outputs in --workdir')
    p.add_argument('--from-json', type=Path, default=None, help='re-render the report and plot from a saved --json')
    p.add_argument('--naive-json', type=Path, default=None,
                   help='take the naive baseline from an earlier --json of this script instead of running it again '
                        '(it does not use the converter, so converter changes do not affect it)')
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        report = markdown(saved['results'], saved['constants'], saved['meta'])
        print(report)
        if args.markdown:
            args.markdown.write_text(report)
        if args.plot:
            plot(saved['results'], saved['constants'], args.plot)
        return 0
    defaults = args.sizes is None
    sizes = list(DEFAULT_SIZES) if defaults else [s.strip() for s in args.sizes.split(',') if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f'unknown size(s) {unknown}; choose from {", ".join(SIZES)}')
    sizes.sort(key=lambda s: Shape(*SIZES[s]).num_parameters)
    if defaults:
        args.plot = args.plot or DEFAULT_PLOT
        args.markdown = args.markdown or DEFAULT_MARKDOWN
    py = sys.executable

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    usage = shutil.disk_usage(args.workdir.parent if not args.workdir.exists() else args.workdir)
    say(f'workdir {args.workdir}: {usage.free / 1e9:.1f} GB free; reverse script '
        f'{"present" if FROM_FLA.exists() else "absent (reverse and round trip: n/a)"}')
    naive_saved = {}
    if args.naive_json:
        saved = json.loads(args.naive_json.read_text())
        naive_saved = {r['size']: r for r in saved['results']}
        missing = [s for s in sizes if s not in naive_saved]
        if missing:
            p.error(f'--naive-json has no results for {missing}')
        args.no_naive = True
    consts = bench_constants(args, py, say)
    results = [bench_size(name, args, py, say) for name in sizes]
    for r in results:
        if r['size'] in naive_saved:
            old = naive_saved[r['size']]
            note = f'from {args.naive_json.name} ({saved["meta"]["date"]})'
            for direction in ('to_fla', 'from_fla', 'round_trip'):
                if direction in r and direction in old and 'naive' in old[direction]:
                    r[direction]['naive'] = dict(old[direction]['naive'], reused=note)
            r['ours_equals_naive'] = old.get('ours_equals_naive')
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)

    cmd = 'python benchmarks/benchmark_convert.py' + (' ' + ' '.join(sys.argv[1:]) if argv is None and sys.argv[1:]
                                                      else '')
    meta = {'command': cmd, 'commit': git_state(),
            'naive_from': f'{args.naive_json} ({saved["meta"]["date"]})' if args.naive_json else None,
            'machine': machine(), 'software': software(py), 'repeats': args.repeats,
            'date': time.strftime('%Y-%m-%d %H:%M %Z'),
            'naive_repeats': saved['meta'].get('naive_repeats') if args.naive_json else args.naive_repeats,
            'load': 'Other jobs shared this 2-core machine: 1-minute load average '
                    + ', '.join(f'{r["size"]} {r["load_average"][0]:.1f}' for r in results)
                    + ' at the end of each size; CPU times are less affected by that than wall times.'}
    report = markdown(results, consts, meta)
    print(report)
    if args.markdown:
        args.markdown.write_text(report)
    if args.json:
        args.json.write_text(json.dumps({'meta': meta, 'constants': consts, 'results': results}, indent=1))
    if args.plot:
        plot(results, consts, args.plot)
        say(f'plot: {args.plot} ({args.plot.stat().st_size / 1e3:.0f} KB)')
    return 0


def worker(argv: list[str]) -> int:
    """Subcommands run in fresh processes by the benchmark itself."""
    cmd, *rest = argv
    if cmd == '_generate':
        generate_checkpoint(Shape(*SIZES[rest[0]]), Path(rest[1]))
    elif cmd == '_naive_to':
        naive_to_fla(*rest)
    elif cmd == '_plain_to':
        plain_to_fla(*rest)
    elif cmd == '_naive_from':
        naive_from_fla(*rest)
    elif cmd == '_compare_dirs':
        print(compare_outputs(*rest))
    elif cmd == '_compare_pth':
        print(compare_pth(*rest))
    else:
        raise SystemExit(f'unknown worker command {cmd}')
    return 0


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1].startswith('_'):
        sys.exit(worker(sys.argv[1:]))
    sys.exit(main())
