#!/usr/bin/env python
"""fuse_norm: fla's fused norms against its unfused ones, in float32, on the CPU backends (issue #29, part 3).

For each size and weight profile (rwkv7_factory.PROFILES: 'trained-like', and 'long-memory', w0 around -2) it
writes an RWKV-LM-format bf16 `.pth` shaped like BlinkDL's release (tests/rwkv7_factory.py's generator, in a process of
its own) and converts it once with the converter (neither timed). The directory is then copied twice (the weights
hard-linked), config.json set to `"fuse_norm": true` in one and `false` in the other, and each copy is verified in a
fresh process on each backend:

  cpu-torch  fla's modules with the torch stand-ins for its kernels (those of the fused norms follow fla's fused
             Triton LayerNorm/GroupNorm and l2_norm; with fuse_norm false fla uses torch's norms itself)
  cpu        fla's Triton kernels, interpreted (only for --interpreted sizes: it is slow)

Printed: a markdown table of the kernels' error and the float32 reference's error (relative RMS of the logits against
the float64 reference of fla's own function: rounding alone), their ratio for each fuse_norm value, the worst
sub-step ratio, the formula difference from BlinkDL's function (float64: the l2-norm eps when fused), the exact
proof's verdicts and the CPU time (user + sys of the child, os.wait4).

    python benchmarks/benchmark_fuse_norm.py --sizes 0.1B,0.4B --tokens 16
    python benchmarks/benchmark_fuse_norm.py --sizes 0.1B --profiles long-memory --backends cpu-torch
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from harness import md_table, prepare_size, run_measured, say
from rwkv7_factory import PROFILES, RELEASED

DEFAULT_CACHE = Path(tempfile.gettempdir()) / 'rwkv7-fuse-norm-bench'
BACKENDS = ('cpu-torch', 'cpu')
FUSE_NORM = (True, False)


def prepare(size: str, profile: str, workdir: Path) -> tuple[Path, dict[bool, Path]]:
    """The size's file, and its conversion with config.json's fuse_norm set to each value; reused when there."""
    files = prepare_size(size, workdir, weights=profile)  # benchmark_verify's files: one generator, one converter run
    if files is None:
        raise SystemExit(f'{size}: not enough disk in {workdir}')
    source, converted = files
    dirs = {}
    for value in FUSE_NORM:
        d = dirs[value] = workdir / f'{size}-{profile}-fuse-{str(value).lower()}'
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(converted, d, copy_function=os.link)  # the weights are read only: links, not copies
        config = json.loads((converted / 'config.json').read_text())
        (d / 'config.json').unlink()  # a file of its own, not the link to the converted one
        (d / 'config.json').write_text(json.dumps({**config, 'fuse_norm': value}, indent=2))
    return source, dirs


def measure(source: Path, model: Path, device: str, tokens: int) -> dict:
    """One verify in a fresh process (this script's --one): its figures, with wall and CPU time."""
    with tempfile.TemporaryFile('w+') as out:
        sample, code = run_measured([sys.executable, Path(__file__).resolve(), '--one', source, model, device, tokens],
                                    out)
        out.seek(0)
        text = out.read()
    if code != 0:
        raise SystemExit(f'verify of {model} on {device} failed (exit {code})')
    row = json.loads(text.strip().splitlines()[-1])
    return {**row, 'wall_s': sample.wall, 'cpu_s': sample.cpu}


def one(source: str, model: str, device: str, tokens: int) -> None:
    """The child: verify with every sub-step judged; one JSON line on stdout. The kernels' error is against the
    float64 reference of fla's own function (their rounding alone); the formula, fla's function against BlinkDL's
    (in float64: the l2-norm eps when fused); their sum is what a float32 comparison with BlinkDL's function sees."""
    from _bootstrap import light_fla  # here: the driver never imports fla (harness.py says why)
    light_fla()
    from fla.rwkv7_convert.api import verify
    report = verify(source, model, device=device, tokens=tokens, per_layer=True, quiet=True)
    k = report.kernels
    steps = [(s.fla.rel_rms / s.ref.rel_rms, s.key) for s in k.steps if s.ref.rel_rms > 0]
    worst = max(steps, default=(float('nan'), '-'))
    print(json.dumps({'fla': k.logits.rel_rms, 'ref': k.reference.rel_rms, 'ratio': k.judgement.ratio,
                      'exact': report.exact.logits.rel_rms,
                      'formula': report.exact.formula.rel_rms if report.exact.formula else 0.0,
                      'verdict': 'PASS' if report.passed else 'FAIL', 'first': report.first_divergence,
                      'worst': worst[0], 'worst_at': worst[1]}))


TABLE = ['size', 'weights', 'backend', 'ref-f32 rel. RMS', 'kernels rel. RMS, fused', 'kernels ratio, fused',
         'worst sub-step, fused', 'formula vs BlinkDL (float64), fused', 'kernels ratio, unfused', 'formula, unfused',
         'exact proof (fused / unfused)', 'CPU s (fused / unfused)']


def table(rows: list[dict]) -> str:
    cells = [[f'{r["size"]} (C{r["C"]} L{r["L"]})', r['profile'], r['backend'], f'{t["ref"]:.3g}', f'{t["fla"]:.3g}',
              f'**{t["ratio"]:.3g}**', f'{t["worst"]:.3g} ({t["worst_at"]})', f'{t["formula"]:.2g}', f'**{f["ratio"]:.3g}**',
              f'{f["formula"]:.2g}', f'{t["verdict"]} {t["exact"]:.1e} / {f["verdict"]} {f["exact"]:.1e}',
              f'{t["cpu_s"]:.0f} / {f["cpu_s"]:.0f}'] for r in rows for t, f in [(r[True], r[False])]]
    return '\n'.join(md_table(TABLE, cells))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', default='0.1B,0.4B', help=f'comma-separated, of {", ".join(RELEASED)}')
    p.add_argument('--profiles', default=','.join(PROFILES), help=f'comma-separated, of {", ".join(PROFILES)}')
    p.add_argument('--backends', default=','.join(BACKENDS), help='comma-separated --device keys')
    p.add_argument('--interpreted', default='0.1B', help='sizes also run on the interpreted kernels (--device cpu)')
    p.add_argument('--tokens', type=int, default=16)
    p.add_argument('--cache-dir', type=Path, default=DEFAULT_CACHE, help='generated files and conversions, reused')
    p.add_argument('--json', type=Path, default=None, help='append every row as JSON lines here')
    p.add_argument('--one', nargs=4, metavar=('SOURCE', 'MODEL', 'DEVICE', 'TOKENS'), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        one(*args.one[:3], int(args.one[3]))
        return 0

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    interpreted = set(args.interpreted.split(','))
    rows = []
    for size in args.sizes.split(','):
        for profile in args.profiles.split(','):
            source, dirs = prepare(size, profile, args.cache_dir)
            for backend in args.backends.split(','):
                if backend == 'cpu' and size not in interpreted:
                    continue
                row = {'size': size, 'C': RELEASED[size][0], 'L': RELEASED[size][1], 'profile': profile, 'backend': backend,
                       'tokens': args.tokens}
                for value in FUSE_NORM:
                    say(f'{size} {profile} {backend} fuse_norm {str(value).lower()}: verify, {args.tokens} tokens',
                        stamp=True)
                    r = row[value] = measure(source, dirs[value], backend, args.tokens)
                    say(f'  ratio {r["ratio"]:.3g} ({r["verdict"]}), {r["cpu_s"]:.0f} s CPU', stamp=True)
                rows.append(row)
                if args.json:
                    with open(args.json, 'a') as f:
                        f.write(json.dumps({k if isinstance(k, str) else f'fuse_norm_{str(k).lower()}': v
                                            for k, v in row.items()}) + '\n')
    print(f'Command: python benchmarks/benchmark_fuse_norm.py {" ".join(argv if argv is not None else sys.argv[1:])}')
    print(f'({args.tokens} tokens, float32, relative RMS of the logits against the float64 reference of fla\'s function; '
          'ratio = kernels / ref-f32; fused: config.json "fuse_norm": true, unfused: false)\n')
    print(table(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
