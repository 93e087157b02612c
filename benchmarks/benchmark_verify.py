#!/usr/bin/env python
"""Verification at released sizes: time, CPU, peak RSS, the exact proof's error, the formula difference, launches.

For each size it writes an RWKV-LM-format bf16 `.pth` shaped like BlinkDL's release (random trained-like values, vocab
65536; tests/rwkv7_factory.py's generator, in a process of its own: harness.prepare_size) and converts it with the
converter (neither timed), into --cache-dir, where later runs find them again; --weights long-memory draws w0 around
-2 (decays near 1: the ill-conditioned case). Then for each backend (`auto`, the default path: the exact proof alone;
or keys of proof.backends.BACKENDS, which add their kernels' accuracy report: a backend registered there is measured
without changing this script) it runs

  python benchmarks/verify_counted.py --rwkv7 F --model D --tokens T --device KEY [--per-layer]

in a fresh process: `utils/verify_rwkv7.py` with Triton's interpreter counted (kernel launches, grid programs,
@jit helper calls; zero for a backend that does not interpret), or that script itself with --plain. Wall time, CPU
time (user + sys) and peak RSS come from os.wait4 on the child; the 1-minute load average before each run is
shown, since the machine may be shared (CPU seconds are the steadier figure then). With --corruptions, copies of
the converted directory are corrupted (verify_cases.py) and each must FAIL, named to its layer.

7.2B runs only with backends that declare themselves fast (a class attribute `fast = True` on the Backend): the
interpreter would take hours. Files above --keep-gb are deleted after their size's runs; the free disk is checked
before a size is generated (7.2B: ~15 GB for the file, as much again for its conversion).

    python benchmarks/benchmark_verify.py --sizes 0.1B,1.5B,7.2B --tokens 16        # the default path (auto)
    python benchmarks/benchmark_verify.py --sizes 2.9B --weights long-memory         # issue 29's 2.9B file
    python benchmarks/benchmark_verify.py --sizes 0.1B,0.4B --backends cpu,cpu-torch # with the kernels' reports
    python benchmarks/benchmark_verify.py --sizes 0.1B --corruptions all --per-layer
    python benchmarks/benchmark_verify.py --calibrate --tokens 48                   # the gap table (factory models)

Targets: issue #29 for the default path (1.5B <= 30 s wall and <= 2 GiB, 7.2B <= 240 s and <= 4 GiB), issue #11 for
any backend (peak RSS: 1.5B <= 3 GiB, 2.9B <= 4 GiB), 16 tokens, this 2-core machine; a correct conversion must
PASS, and each corruption FAIL at its layer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from harness import HERE, UTILS, GiB, git_state, md_table, prepare_size, run_measured, say
from rwkv7_factory import PROFILES, RELEASED
from verify_cases import calibrate, corrupt, corruptions

FAST_ONLY = {'7.2B'}
VERIFY = UTILS / 'verify_rwkv7.py'
COUNTED = HERE / 'verify_counted.py'
DEFAULT_CACHE = Path(tempfile.gettempdir()) / 'rwkv7-verify-bench'
# (wall s or None, peak RSS GiB): issue #11 for every backend, issue #29 for the default path (auto: the exact proof)
TARGETS = {'1.5B': (None, 3.0), '2.9B': (None, 4.0)}
DEFAULT_TARGETS = {'1.5B': (30.0, 2.0), '2.9B': (None, 4.0), '7.2B': (240.0, 4.0)}


def cpu_backends(wanted: str) -> dict:
    """--device key -> Backend for the backends to measure: `auto` (the default path), or those named ('all': auto
    and every CPU one of BACKENDS)."""
    from _bootstrap import light_fla  # here: light_fla() must run before fla.rwkv7_convert is imported
    light_fla()  # BACKENDS without fla's own __init__ (triton, torch): this process stays small
    from fla.rwkv7_convert.proof.backends import AUTO, BACKENDS, EXACT
    known = {'auto': EXACT, **{k: b for k, b in BACKENDS.items() if not str(b.device).startswith('cuda')}}
    keys = list(known) if wanted == 'all' else wanted.split(',')
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise SystemExit(f'--backends: {", ".join(unknown)} not in all, {", ".join(known)}')
    assert AUTO.choose(None, None) is EXACT  # on this CPU machine auto is the exact proof alone
    return {k: known[k] for k in keys}


def run_verify(source: Path, model: Path, tokens: int, device: str, per_layer: bool, plain: bool,
               piece: int | None = None) -> dict:
    # not -q: that prints the verdict line alone, and the table is parsed below (no bar: stdout is not a terminal)
    script = VERIFY if plain else COUNTED
    argv = [sys.executable, str(script), '--rwkv7', str(source), '--model', str(model), '--tokens', str(tokens),
            '--device', device, *(['--per-layer'] if per_layer else []), *(['--piece', str(piece)] if piece else [])]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile('w+') as out:
        counts_file = Path(tmp) / 'counts.json'
        sample, code = run_measured(argv, out, env=dict(os.environ, RWKV7_BENCH_COUNTS=str(counts_file)))
        out.seek(0)
        text = out.read()
        counts = json.loads(counts_file.read_text()) if counts_file.exists() else None
    row = {'exit': code, 'wall_s': round(sample.wall, 1), 'cpu_s': round(sample.cpu, 1),
           'peak_rss_gib': round(sample.rss_mb * 2**20 / GiB, 2), 'load': round(load, 2), 'output': text}
    if counts is not None:
        row['launches'] = sum(counts['launches'].values()) if counts['interpreted'] else 0
        row['programs'] = sum(counts['programs'].values()) if counts['interpreted'] else 0
        row['helper_calls'] = sum(counts['device_calls'].values()) if counts['interpreted'] else 0
        row['counts'] = counts
    m = re.search(r'^\s*logits\s+relative RMS (\S+) \(bound', text, re.M)
    row['exact_rel_rms'] = float(m.group(1)) if m else None
    m = re.search(r"differs from BlinkDL's by relative RMS (\S+)", text)
    row['formula_rel_rms'] = float(m.group(1)) if m else (0.0 if "fla's function is BlinkDL's" in text else None)
    m = re.search(r'ratio kernels / reference\s+(\S+)', text)
    row['ratio'] = float(m.group(1)) if m else None
    m = re.search(r'^\s*exact proof\s+(.+?) on ', text, re.M)
    row['backend_shown'] = m.group(1).strip() if m else None
    m = re.search(r'^(PASS|FAIL): ', text, re.M)
    row['verdict'] = m.group(1) if m else 'error'
    m = re.search(r'the models part first at .*\((\S+)\)', text)
    row['first_divergence'] = m.group(1) if m else None
    return row


def judge_row(row: dict, name: str, default_path: bool, corruption) -> None:
    if corruption:
        row['expected'] = f'FAIL at {corruption[1]}'
        row['met'] = row['verdict'] == 'FAIL' and row['first_divergence'] == corruption[1]
        return
    wall, rss = (DEFAULT_TARGETS if default_path else TARGETS).get(name, (None, None))
    row['expected'] = ', '.join(['PASS'] + ([f'wall <= {wall:g} s'] if wall else []) + ([f'RSS <= {rss:g} GiB'] if rss
                                                                                          else []))
    row['met'] = (row['verdict'] == 'PASS' and (wall is None or row['wall_s'] <= wall)
                  and (rss is None or row['peak_rss_gib'] <= rss))


def _sci(x) -> str:
    return '-' if x is None else f'{x:.1e}'


TABLE = ['size', 'weights', 'backend', 'case', 'tokens', 'verdict', 'exact: fla float64 rel. RMS', 'formula vs BlinkDL',
         'kernels ratio', 'wall', 'CPU', 'peak RSS', 'launches / programs / helper calls', 'load', 'target']


def _cells(r: dict) -> list:
    if r.get('skipped'):
        return [r['size'], '', r['backend'], '-', '-', f"not run: {r['skipped']}"] + [''] * 9
    counts = f"{r['launches']} / {r['programs']} / {r['helper_calls']}" if 'launches' in r else '-'
    verdict = r['verdict'] + (f" at {r['first_divergence']}" if r['verdict'] == 'FAIL' and r['first_divergence'] else '')
    piece = f" (piece {r['piece']})" if r.get('piece') else ''
    return [f"{r['size']} (C{r['C']} L{r['L']})", r['weights'], r['backend'], r['case'], f"{r['tokens']}{piece}", verdict,
            _sci(r.get('exact_rel_rms')), _sci(r.get('formula_rel_rms')), r['ratio'] or '-', f"{r['wall_s']} s",
            f"{r['cpu_s']} s", f"{r['peak_rss_gib']} GiB", counts, r['load'],
            f"{r['expected']}: {'met' if r['met'] else 'NOT met'}"]


def table(rows: list[dict]) -> str:
    return '\n'.join(md_table(TABLE, [_cells(r) for r in rows]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--sizes', default='0.1B,0.4B,1.5B,2.9B',
                   help=f'comma-separated from {", ".join(RELEASED)} (default 0.1B,0.4B,1.5B,2.9B; 7.2B only with fast '
                        'backends)')
    p.add_argument('--backends', default='auto',
                   help='comma-separated: auto (the default path: the exact proof alone) or --device keys of CPU '
                        'backends (the exact proof and their kernels\' report), or all (default auto)')
    p.add_argument('--weights', default='trained-like', choices=PROFILES,
                   help='rwkv7_factory.PROFILES: trained-like (default) or long-memory (every vector N(0, 0.1), w0 '
                        'around -2: issue 29\'s ill-conditioned recipe)')
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

    if args.calibrate:
        rows = calibrate(args.workdir, args.tokens, say)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0

    backends = cpu_backends(args.backends)
    rows, ok = [], True
    for name in args.sizes.split(','):
        C, L = RELEASED[name]
        chosen = {k: b for k, b in backends.items() if name not in FAST_ONLY or getattr(b, 'fast', False)}
        for key in sorted(set(backends) - set(chosen)):
            rows.append({'size': name, 'backend': backends[key].name, 'skipped': 'only fast backends run 7.2B'})
        if not chosen:
            continue
        files = prepare_size(name, args.workdir, say, args.weights)
        if files is None:
            rows += [{'size': name, 'backend': b.name, 'skipped': 'not enough disk'} for b in chosen.values()]
            continue
        source, out = files
        wanted = corruptions(L)
        picked = list(wanted) if args.corruptions == 'all' else [c for c in args.corruptions.split(',') if c]
        runs = ([] if args.no_clean else [('correct', out, None)])
        runs += [(c, args.workdir / f'{source.stem}-{c}', wanted[c]) for c in picked]
        for what, model, corruption in runs:
            if corruption:
                corrupt(out, model, corruption[0])
            for key, backend in chosen.items():
                say(f'{name} {what}, {backend.name}: verifying ({args.tokens} tokens, load {os.getloadavg()[0]:.2f})')
                row = {'size': name, 'C': C, 'L': L, 'case': what, 'tokens': args.tokens, 'piece': args.piece,
                       'backend': backend.name if key != 'auto' else f'auto ({backend.name})', 'weights': args.weights,
                       'device': key, **run_verify(source, model, args.tokens, key, args.per_layer, args.plain,
                                                      args.piece)}
                judge_row(row, name, key == 'auto', corruption)
                ok &= row['met']
                rows.append(row)
                if args.json:
                    with open(args.json, 'a') as f:
                        f.write(json.dumps({k: v for k, v in row.items() if k != 'output'}) + '\n')
                if not row['met']:
                    say(row['output'])
                say(f"  -> {row['verdict']} {row.get('first_divergence') or ''} {row['wall_s']} s wall, "
                    f"{row['cpu_s']} s CPU, {row['peak_rss_gib']} GiB, exact {row.get('exact_rel_rms')}, formula "
                    f"{row.get('formula_rel_rms')}, kernels ratio {row.get('ratio')}, "
                    f"launches {row.get('launches', '-')}")
            if corruption:
                shutil.rmtree(model, ignore_errors=True)
        if 2 * source.stat().st_size > args.keep_gb * 1e9:
            source.unlink(missing_ok=True)
            shutil.rmtree(out, ignore_errors=True)

    print(f'commit {git_state()}, {os.cpu_count()} CPUs, {args.tokens} tokens; `load` is the 1-minute load average '
          'before each run')
    print()
    print(table(rows))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
