#!/usr/bin/env python
"""Verification at released sizes, for every CPU backend: time, CPU, peak RSS, launches and the calibrated verdict.

For each size it writes an RWKV-LM-format bf16 `.pth` shaped like BlinkDL's release (random trained-like values,
vocab 65536; benchmark_convert.py's generator, in a process of its own) and converts it with the converter (neither
timed), into --cache-dir, where later runs find them again. Then for each backend (proof.backends.BACKENDS: every
CPU one by default, so a backend registered there is measured without changing this script) it runs

  python benchmarks/verify_counted.py --rwkv7 F --model D --tokens T --device KEY [--per-layer]

in a fresh process: `utils/verify_rwkv7.py` with Triton's interpreter counted (kernel launches, grid programs,
@jit helper calls; zero for a backend that does not interpret), or that script itself with --plain. Wall time, CPU
time (user + sys) and peak RSS come from os.wait4 on the child; the 1-minute load average before each run is
shown, since the machine may be shared (CPU seconds are the steadier figure then). With --corruptions, copies of
the converted directory are corrupted (verify_cases.py) and each must FAIL, named to its layer.

7.2B runs only with backends that declare themselves fast (a class attribute `fast = True` on the Backend): the
interpreter would take hours. Files above --keep-gb are deleted after their size's runs; the free disk is checked
before a size is generated (7.2B: ~15 GB for the file, as much again for its conversion).

    python benchmarks/benchmark_verify.py --sizes 0.1B,0.4B --tokens 16            # every CPU backend
    python benchmarks/benchmark_verify.py --sizes 1.5B,2.9B,7.2B --backends cpu     # one backend (by --device key)
    python benchmarks/benchmark_verify.py --sizes 0.1B --corruptions all --per-layer
    python benchmarks/benchmark_verify.py --calibrate --tokens 48                   # the calibration table

Targets: issue #11 (peak RSS: 1.5B <= 3 GiB, 2.9B <= 4 GiB, any backend) and issue #22 for a fast backend (1.5B
<= 60 s wall and <= 2 GiB, 7.2B <= 300 s and <= 4 GiB), 16 tokens, this 2-core machine; a correct conversion must
PASS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / 'utils'))
from benchmark_convert import SIZES, Shape  # noqa: E402
from verify_cases import calibrate, corrupt, corruptions  # noqa: E402

SIZES = {**SIZES, '7.2B': (4096, 32)}
FAST_ONLY = {'7.2B'}
VERIFY = REPO / 'utils' / 'verify_rwkv7.py'
COUNTED = HERE / 'verify_counted.py'
CONVERT = REPO / 'utils' / 'convert_to_rwkv7.py'
DEFAULT_CACHE = Path(tempfile.gettempdir()) / 'rwkv7-verify-bench'
GiB = 1 << 30
# (wall s or None, peak RSS GiB): issue #11 for every backend, issue #22 for a fast one
TARGETS = {'1.5B': (None, 3.0), '2.9B': (None, 4.0)}
FAST_TARGETS = {'1.5B': (60.0, 2.0), '2.9B': (None, 4.0), '7.2B': (300.0, 4.0)}


def cpu_backends(wanted: str) -> dict:
    """--device key -> Backend for the backends to measure: every CPU one (BACKENDS), or those named."""
    from _bootstrap import light_fla
    light_fla()  # BACKENDS without fla's own __init__ (triton, torch): this process stays small
    from fla.rwkv7_convert.proof.backends import BACKENDS
    if wanted:
        unknown = [k for k in wanted.split(',') if k not in BACKENDS]
        if unknown:
            raise SystemExit(f'--backends: {", ".join(unknown)} not in {", ".join(BACKENDS)}')
        return {k: BACKENDS[k] for k in wanted.split(',')}
    return {k: b for k, b in BACKENDS.items() if not str(getattr(b, 'device', k)).startswith('cuda')}


def run_verify(source: Path, model: Path, tokens: int, device: str, per_layer: bool, plain: bool,
               piece: int | None = None) -> dict:
    # not -q: that prints the verdict line alone, and the table is parsed below (no bar: stdout is not a terminal)
    script = VERIFY if plain else COUNTED
    argv = [sys.executable, str(script), '--rwkv7', str(source), '--model', str(model), '--tokens', str(tokens),
            '--device', device, *(['--per-layer'] if per_layer else []), *(['--piece', str(piece)] if piece else [])]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile('w+') as out:
        counts_file = Path(tmp) / 'counts.json'
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, RWKV7_BENCH_COUNTS=str(counts_file)))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
        counts = json.loads(counts_file.read_text()) if counts_file.exists() else None
    row = {'exit': os.waitstatus_to_exitcode(status), 'wall_s': round(wall, 1),
           'cpu_s': round(usage.ru_utime + usage.ru_stime, 1), 'peak_rss_gib': round(usage.ru_maxrss * 1024 / GiB, 2),
           'load': round(load, 2), 'output': text}
    if counts is not None:
        row['launches'] = sum(counts['launches'].values()) if counts['interpreted'] else 0
        row['programs'] = sum(counts['programs'].values()) if counts['interpreted'] else 0
        row['helper_calls'] = sum(counts['device_calls'].values()) if counts['interpreted'] else 0
        row['counts'] = counts
    m = re.search(r'relative RMS error\s+(\S+)\s+(\S+)', text)
    if m:
        row['fla_rel_rms'], row['ref_rel_rms'] = float(m.group(1)), float(m.group(2))
    m = re.search(r'ratio fla / reference\s+(\S+)', text)
    row['ratio'] = float(m.group(1)) if m else None
    m = re.search(r'^\s*backend\s+(.+)$', text, re.M)
    row['backend_shown'] = m.group(1).strip() if m else None
    m = re.search(r'^(PASS|FAIL): ', text, re.M)
    row['verdict'] = m.group(1) if m else 'error'
    m = re.search(r'the models part first at .*\((\S+)\)', text)
    row['first_divergence'] = m.group(1) if m else None
    return row


def _need_bytes(name: str) -> int:
    """The .pth and its conversion, both bf16, plus 1 GiB to spare."""
    C, L = SIZES[name]
    return 2 * 2 * Shape(C, L).num_parameters + GiB


def prepare_size(name: str, workdir: Path, say) -> tuple[Path, Path] | None:
    """The size's file and its conversion in `workdir`, reused when there; None when the disk cannot hold them."""
    C, L = SIZES[name]
    source, out = workdir / f'{name}.pth', workdir / f'{name}-out'
    have = (source.stat().st_size if source.exists() else 0) * (2 if (out / 'config.json').exists() else 1)
    free = shutil.disk_usage(workdir).free
    if _need_bytes(name) - have > free:
        say(f'{name}: skipped, {free / GiB:.1f} GiB free in {workdir}, {_need_bytes(name) / GiB:.1f} GiB needed')
        return None
    if not source.exists():
        say(f'{name}: writing {source}')
        # in a process of its own: Linux passes a parent's peak RSS on to every child it starts (the high-water mark
        # survives fork and exec), so a parent that held the generated state dict inflated verify's measured peak
        # RSS to the file's size (3.07 GiB at 1.5B instead of 1.22 GiB)
        subprocess.run([sys.executable, '-c', 'import sys; sys.path.insert(0, sys.argv[1]); '
                        'from pathlib import Path; from benchmark_convert import Shape, generate_checkpoint; '
                        'generate_checkpoint(Shape(int(sys.argv[2]), int(sys.argv[3])), Path(sys.argv[4]))',
                        str(HERE), str(C), str(L), str(source)], check=True)
    if not (out / 'config.json').exists():
        say(f'{name}: converting to {out}')
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([sys.executable, str(CONVERT), '--rwkv7', str(source), '--output', str(out), '--quiet',
                        '--tokenizer', 'none'], check=True)
    return source, out


def judge_row(row: dict, name: str, fast: bool, corruption) -> None:
    if corruption:
        row['expected'] = f'FAIL at {corruption[1]}'
        row['met'] = row['verdict'] == 'FAIL' and row['first_divergence'] == corruption[1]
        return
    wall, rss = (FAST_TARGETS if fast else TARGETS).get(name, (None, None))
    row['expected'] = ', '.join(['PASS'] + ([f'wall <= {wall:g} s'] if wall else []) + ([f'RSS <= {rss:g} GiB'] if rss
                                                                                          else []))
    row['met'] = (row['verdict'] == 'PASS' and (wall is None or row['wall_s'] <= wall)
                  and (rss is None or row['peak_rss_gib'] <= rss))


def _commit() -> str:
    try:
        head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head + (' (with uncommitted changes)' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def table(rows: list[dict]) -> str:
    lines = ['| size | backend | case | tokens | verdict | ratio | fla rel. RMS | ref-f32 rel. RMS | wall | CPU | peak RSS '
             '| launches / programs / helper calls | load | target |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        if r.get('skipped'):
            lines.append(f"| {r['size']} | {r['backend']} | - | - | not run: {r['skipped']} | | | | | | | | | |")
            continue
        counts = (f"{r['launches']} / {r['programs']} / {r['helper_calls']}" if 'launches' in r else '-')
        verdict = r['verdict'] + (f" at {r['first_divergence']}" if r['verdict'] == 'FAIL' and r['first_divergence']
                                  else '')
        lines.append(f"| {r['size']} (C{r['C']} L{r['L']}) | {r['backend']} | {r['case']} | {r['tokens']}"
                     f"{' (piece ' + str(r['piece']) + ')' if r.get('piece') else ''} | {verdict} | "
                     f"{r['ratio']} | {r.get('fla_rel_rms', '-')} | {r.get('ref_rel_rms', '-')} | {r['wall_s']} s | "
                     f"{r['cpu_s']} s | {r['peak_rss_gib']} GiB | {counts} | {r['load']} | "
                     f"{r['expected']}: {'met' if r['met'] else 'NOT met'} |")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--sizes', default='0.1B,0.4B,1.5B,2.9B',
                   help=f'comma-separated from {", ".join(SIZES)} (default 0.1B,0.4B,1.5B,2.9B; 7.2B only with fast '
                        'backends)')
    p.add_argument('--backends', default='', help='comma-separated --device keys (default: every CPU backend)')
    p.add_argument('--tokens', type=int, default=16)
    p.add_argument('--per-layer', action='store_true')
    p.add_argument('--piece', type=int, default=None, help="tokens per fla call (default: the backend's)")
    p.add_argument('--corruptions', default='', help='"all" or comma-separated names; also runs the clean model')
    p.add_argument('--no-clean', action='store_true', help='with --corruptions, skip the clean run')
    p.add_argument('--plain', action='store_true', help='run utils/verify_rwkv7.py itself (no launch counts)')
    p.add_argument('--cache-dir', '--workdir', type=Path, default=DEFAULT_CACHE, dest='workdir',
                   help=f'generated files, reused across runs (default {DEFAULT_CACHE})')
    p.add_argument('--keep-gb', type=float, default=8.0,
                   help="delete a size's files after its runs when they take more than this (default 8)")
    p.add_argument('--json', type=Path, default=None, help='append every row as JSON lines here')
    p.add_argument('--calibrate', action='store_true', help='the calibration table on small factory models instead')
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.calibrate:
        rows = calibrate(args.workdir, args.tokens, say)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0

    backends = cpu_backends(args.backends)
    rows, ok = [], True
    for name in args.sizes.split(','):
        C, L = SIZES[name]
        chosen = {k: b for k, b in backends.items() if name not in FAST_ONLY or getattr(b, 'fast', False)}
        for key in sorted(set(backends) - set(chosen)):
            rows.append({'size': name, 'backend': backends[key].name, 'skipped': 'only fast backends run 7.2B'})
        if not chosen:
            continue
        files = prepare_size(name, args.workdir, say)
        if files is None:
            rows += [{'size': name, 'backend': b.name, 'skipped': 'not enough disk'} for b in chosen.values()]
            continue
        source, out = files
        wanted = corruptions(L)
        picked = list(wanted) if args.corruptions == 'all' else [c for c in args.corruptions.split(',') if c]
        runs = ([] if args.no_clean else [('correct', out, None)])
        runs += [(c, args.workdir / f'{name}-{c}', wanted[c]) for c in picked]
        for what, model, corruption in runs:
            if corruption:
                corrupt(out, model, corruption[0])
            for key, backend in chosen.items():
                say(f'{name} {what}, {backend.name}: verifying ({args.tokens} tokens, load {os.getloadavg()[0]:.2f})')
                row = {'size': name, 'C': C, 'L': L, 'case': what, 'tokens': args.tokens, 'piece': args.piece,
                       'backend': backend.name,
                       'device': key, **run_verify(source, model, args.tokens, key, args.per_layer, args.plain,
                                                      args.piece)}
                judge_row(row, name, getattr(backend, 'fast', False), corruption)
                ok &= row['met']
                rows.append(row)
                if args.json:
                    with open(args.json, 'a') as f:
                        f.write(json.dumps({k: v for k, v in row.items() if k != 'output'}) + '\n')
                if not row['met']:
                    say(row['output'])
                say(f"  -> {row['verdict']} {row.get('first_divergence') or ''} {row['wall_s']} s wall, "
                    f"{row['cpu_s']} s CPU, {row['peak_rss_gib']} GiB, ratio {row.get('ratio')}, "
                    f"launches {row.get('launches', '-')}")
            if corruption:
                shutil.rmtree(model, ignore_errors=True)
        if 2 * source.stat().st_size > args.keep_gb * 1e9:
            source.unlink(missing_ok=True)
            shutil.rmtree(out, ignore_errors=True)

    print(f'commit {_commit()}, {os.cpu_count()} CPUs, {args.tokens} tokens; `load` is the 1-minute load average '
          'before each run')
    print()
    print(table(rows))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
