#!/usr/bin/env python
"""Which kernel's float32 rounding dominates fla's error: the kernels' accuracy report, taken apart.

The float32 stand-ins (runtime/torch_wkv.py) round as fla's fused kernels do. This runs verify's kernels' report once
with all of them, then once per kernel with that kernel alone computed in float64 (its inputs widened, its output
rounded back to float32 once: `installed(precise=...)`), and prints the ratio of the kernels' error to the float32
reference's own each time. The kernel whose exactness brings the ratio down most is the one whose rounding
dominates. Every run is also the exact proof (it must PASS).

    python benchmarks/benchmark_kernels.py --size 0.4B --weights long-memory --tokens 16
    python benchmarks/benchmark_kernels.py --rwkv7 model.pth --model out/model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import md_table, prepare_size, say
from rwkv7_factory import PROFILES, RELEASED


def measure(source: Path, model: Path, tokens: int, kernels: list[str]) -> list[dict]:
    # fla's proof (torch) here, after main's light_fla(): --help and argument errors stay instant
    from fla.rwkv7_convert.proof.backends import TorchWkv, cpu_threads
    from fla.rwkv7_convert.proof.verify import verify
    from fla.rwkv7_convert.runtime.torch_wkv import installed

    class Precise(TorchWkv):
        def __init__(self, precise: frozenset[str]):
            self.precise = precise
            self.name = 'torch wkv, float32' + (f', {", ".join(sorted(precise))} in float64' if precise else '')

        def running(self):
            return installed(threads=cpu_threads(), precise=self.precise)

    rows = []
    for precise in [frozenset(), *(frozenset({k}) for k in kernels), frozenset(kernels)]:
        report = verify(source, model, device=Precise(precise), tokens=tokens)
        k = report.kernels
        rows.append({'exact': ', '.join(sorted(precise)) or 'none', 'ratio': k.judgement.ratio,
                     'kernels_rel_rms': k.logits.rel_rms, 'ref_rel_rms': k.reference.rel_rms,
                     'verdict': 'PASS' if report.passed else 'FAIL'})
        say(f"  {rows[-1]['exact']}: ratio {rows[-1]['ratio']:.3g}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rwkv7', type=Path, help='a BlinkDL checkpoint (with --model)')
    p.add_argument('--model', type=Path, help='its converted directory')
    p.add_argument('--size', choices=RELEASED, help='or a generated released shape, converted in --cache-dir')
    p.add_argument('--weights', default='trained-like', choices=PROFILES, help='with --size: how the values are drawn')
    p.add_argument('--cache-dir', type=Path, default=Path('/tmp/rwkv7-verify-bench'))
    p.add_argument('--tokens', type=int, default=16)
    p.add_argument('--kernels', default='', help='comma-separated KERNELS of runtime/torch_wkv.py (default: all)')
    args = p.parse_args(argv)
    from _bootstrap import light_fla
    light_fla()
    from fla.rwkv7_convert.runtime.torch_wkv import KERNELS
    if args.size:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        files = prepare_size(args.size, args.cache_dir, weights=args.weights)
        if files is None:
            raise SystemExit(f'{args.size}: not enough disk in {args.cache_dir}')
        source, model = files
    elif args.rwkv7 and args.model:
        source, model = args.rwkv7, args.model
    else:
        p.error('give --rwkv7 and --model, or --size')
    kernels = args.kernels.split(',') if args.kernels else list(KERNELS)
    rows = measure(source, model, args.tokens, kernels)
    print(f'{source.name}, {args.tokens} tokens: the float32 stand-ins\' error over the float32 reference\'s own, with '
          'one kernel at a time computed in float64')
    print()
    header = ['computed in float64', 'kernels / reference (float32)', 'kernels rel. RMS', 'reference rel. RMS', 'exact proof']
    print('\n'.join(md_table(header, [[r['exact'], f"{r['ratio']:.3g}", f"{r['kernels_rel_rms']:.2e}",
                                         f"{r['ref_rel_rms']:.2e}", r['verdict']] for r in rows])))
    return 0 if all(r['verdict'] == 'PASS' for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
