#!/usr/bin/env python
"""How fast, and in how much memory, does the converter turn a released-size RWKV-7 checkpoint into an fla directory?

For each model size it writes an RWKV-LM-format bf16 `.pth` shaped like BlinkDL's release (random values) and
times, each in a fresh process, median of --repeats runs:

  ours     python utils/convert_to_rwkv7.py --rwkv7 F --output D --force --quiet --tokenizer none
  naive    what one would otherwise write: import fla, RWKV7ForCausalLM(RWKV7Config(...)) (random init),
           torch.load the file, rename/transpose into the model's state dict, cast to the file's dtype,
           save_pretrained (convert_baselines.py's `naive_to_fla`)
  plain    the strongest plain script a user would write: torch.load(mmap=True, weights_only=True), the same
           renames and transposes, fla's target shapes from a model built on the meta device (no weights),
           safetensors.torch.save_file into one file, config.json (convert_baselines.py's `plain_to_fla`); no sharding,
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

The files come from tests/rwkv7_factory.py (the generator tests use too), measuring and the machine's description from
harness.py, the report and plot from convert_report.py. The report replaces only what lies between RESULTS.md's
`<!-- convert:begin -->` and `<!-- convert:end -->` lines: the hand-written notes around them stay.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from convert_baselines import WORKER
from convert_report import markdown, plot
from harness import (
    REPO,
    UTILS,
    Goose,
    Sample,
    generate,
    git_state,
    machine,
    measure,
    mem_available,
    say,
    software,
    write_between_markers,
)
from rwkv7_factory import RELEASED

HERE = Path(__file__).resolve()
TO_FLA = UTILS / 'convert_to_rwkv7.py'
FROM_FLA = UTILS / 'convert_from_fla_rwkv7.py'
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / 'rwkv7-bench'
DEFAULT_MARKDOWN = HERE.parent / 'RESULTS.md'
DEFAULT_PLOT = HERE.parent / 'convert_benchmark.png'
MARKERS = 'convert'  # RESULTS.md's <!-- convert:begin --> ... <!-- convert:end -->
DEFAULT_SIZES = ('0.1B', '0.4B', '1.5B')

READ_ALL = ('import sys\nbuf = memoryview(bytearray(1 << 24))\n'
            'with open(sys.argv[1], "rb", buffering=0) as f:\n    while f.readinto(buf):\n        pass\n')
COPY_FSYNC = ('import os, shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[2])\n'
              'fd = os.open(sys.argv[2], os.O_RDONLY)\nos.fsync(fd)\nos.close(fd)\n')


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


def run_methods(methods: list[Method], repeats: int, log: Path) -> None:
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


# ----------------------------------------------------------------------------------------------------- running

def source_file(name: str, work: Path) -> Path:
    """The size's RWKV-LM file in `work` (generated when missing), after checking the disk holds it and the outputs."""
    shape = Goose.released(name)
    src = work / f'rwkv7-{name}.pth'
    file_bytes = 2 * shape.num_parameters  # roughly
    need = 6 * file_bytes + (4 * file_bytes if FROM_FLA.exists() else 0)
    free = shutil.disk_usage(work).free
    if not src.exists() and free < need + file_bytes:
        raise SystemExit(f'{name}: needs ~{(need + file_bytes) / 1e9:.1f} GB free under {work.parent}, '
                         f'has {free / 1e9:.1f} GB')
    if not src.exists():
        say(f'  generating {src} ({shape.num_parameters / 1e9:.2f}B params, C{shape.hidden} L{shape.layers}, '
            f'ranks {shape.ranks})')
        t = time.perf_counter()
        generate(shape, src)
        say(f'  generated in {time.perf_counter() - t:.1f} s')
    return src


def worker(*argv: str) -> list[str]:
    return [sys.executable, str(WORKER), *argv]


def check(*argv: str) -> str:
    """A comparison of convert_baselines.py in a fresh process: '' when equal, else what differs."""
    out = subprocess.run(worker(*argv), capture_output=True, text=True, cwd=REPO)
    return f'check failed: {out.stderr.strip()[-500:]}' if out.returncode != 0 else out.stdout.strip()


def to_fla(name: str, src: Path, work: Path, args) -> tuple[list[Method], dict]:
    py, d_ours, d_naive, d_plain = sys.executable, work / 'fla-ours', work / 'fla-naive', work / 'fla-plain'
    copy, copy2 = work / 'copy.pth', work / 'copy-fsync.pth'
    # naive holds the random fp32 model (4 B/param), the loaded file (2) and the cast copy (up to 2)
    naive_need = 8 * Goose.released(name).num_parameters
    naive_skip = '' if naive_need < 0.9 * mem_available() else f'skipped: needs ~{naive_need / 2**30:.0f} GiB RAM'
    methods = [
        Method('ours', 'ours (to fla)', [py, str(TO_FLA), '--rwkv7', str(src), '--output', str(d_ours), '--force',
                                         '--quiet', '--tokenizer', 'none'], [d_ours]),
        Method('naive', 'naive (to fla)', worker('_naive_to', str(src), str(d_naive)), [d_naive],
               skipped='skipped: --no-naive' if args.no_naive else naive_skip, max_runs=args.naive_repeats),
        Method('plain', 'plain (mmap+save_file)', worker('_plain_to', str(src), str(d_plain)), [d_plain],
               skipped='skipped: --no-plain' if args.no_plain else ''),
        Method('cp', 'cp', ['cp', '--reflink=never', str(src), str(copy)], [copy]),
        Method('copy_fsync', 'python copy + fsync', [py, '-c', COPY_FSYNC, str(src), str(copy2)], [copy2]),
        Method('read', 'python read all', [py, '-c', READ_ALL, str(src)]),
    ]
    say(f'  {name}: {src.stat().st_size / 1e9:.2f} GB file, to fla (load average {os.getloadavg()[0]:.1f})')
    run_methods(methods, args.repeats, work / 'log.txt')
    equal = {}
    for m, out in ((methods[1], d_naive), (methods[2], d_plain)):
        if not m.skipped:
            diff = check('_compare_dirs', str(d_ours), str(out))
            say(f'  ours vs {m.key} output: {"identical tensors" if not diff else "DIFFER: " + diff}')
        equal[f'ours_equals_{m.key}'] = None if m.skipped else not diff
    return methods, equal


def from_fla(name: str, src: Path, work: Path, args, naive_skipped: str) -> dict:
    """The reverse direction and the round trip; the naive reverse reads ours (equal to naive's, checked)."""
    py, sh, d_ours = sys.executable, shutil.which('sh') or '/bin/sh', work / 'fla-ours'
    back_ours, back_naive, rt_ours, rt_naive = work / 'back-ours.pth', work / 'back-naive.pth', work / 'rt-ours', \
        work / 'rt-naive'
    rt_ours_pth, rt_naive_pth = work / 'rt-ours.pth', work / 'rt-naive.pth'
    from_methods = [
        Method('ours', 'ours (from fla)', [py, str(FROM_FLA), '--model', str(d_ours), '--output', str(back_ours),
                                           '--force', '--quiet'], [back_ours]),
        Method('naive', 'naive (from fla)', worker('_naive_from', str(d_ours), str(back_naive)), [back_naive],
               skipped=naive_skipped, max_runs=args.naive_repeats),
    ]
    rt_methods = [Method('ours', 'ours (round trip)', [
        sh, '-c', '"$0" "$1" --rwkv7 "$2" --output "$3" --force --quiet --tokenizer none && '
        '"$0" "$4" --model "$3" --output "$5" --force --quiet', py, str(TO_FLA), str(src), str(rt_ours), str(FROM_FLA),
        str(rt_ours_pth)], [rt_ours, rt_ours_pth])]
    if args.naive_round_trip:
        rt_methods.append(Method('naive', 'naive (round trip)', [
            sh, '-c', '"$0" "$1" _naive_to "$2" "$3" && "$0" "$1" _naive_from "$3" "$4"', py, str(WORKER), str(src),
            str(rt_naive), str(rt_naive_pth)], [rt_naive, rt_naive_pth], skipped=naive_skipped,
            max_runs=args.naive_repeats))
    for label, methods in (('from fla', from_methods), ('round trip', rt_methods)):
        say(f'  {name}: {label}')
        run_methods(methods, args.repeats, work / 'log.txt')
    rt_check = check('_compare_pth', str(src), str(rt_ours_pth))
    say(f'  round trip source vs back: {"identical tensors" if not rt_check else "DIFFER: " + rt_check}')
    result = {'from_fla': {m.key: method_dict(m) for m in from_methods},
              'round_trip': {m.key: method_dict(m) for m in rt_methods}, 'round_trip_identical': not rt_check}
    return result


def summed_naive_round_trip(result: dict) -> dict:
    """Two fresh processes either way: the naive round trip as the sum of the medians of its two directions."""
    n_to, n_from = result['to_fla']['naive']['median'], result['from_fla']['naive']['median']
    return {'label': 'naive (round trip, sum of both directions)', 'argv': [], 'skipped': '', 'samples': [],
            'summed': True, 'median': {'wall': n_to['wall'] + n_from['wall'], 'cpu': n_to['cpu'] + n_from['cpu'],
                                       'rss_mb': max(n_to['rss_mb'], n_from['rss_mb'])}}


def bench_size(name: str, args) -> dict:
    work = args.workdir / name
    work.mkdir(parents=True, exist_ok=True)
    src = source_file(name, work)
    measure([sys.executable, '-c', READ_ALL, str(src)], work / 'log.txt')  # warm the page cache for every method alike
    shape = Goose.released(name)
    methods, equal = to_fla(name, src, work, args)
    result = {'size': name, 'C': shape.hidden, 'L': shape.layers, 'params': shape.num_parameters,
              'file_bytes': src.stat().st_size, 'ranks': shape.ranks, 'to_fla': {m.key: method_dict(m) for m in methods},
              **equal}
    if FROM_FLA.exists():
        result.update(from_fla(name, src, work, args, methods[1].skipped))
        if not args.naive_round_trip and not methods[1].skipped:
            result['round_trip']['naive'] = summed_naive_round_trip(result)
    result['load_average'] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        for m in methods:
            for path in m.clean:
                remove(path)
    return result


def method_dict(m: Method) -> dict:
    return {'label': m.label, 'argv': [str(a) for a in m.argv], 'skipped': m.skipped,
            'samples': [asdict(s) for s in m.samples],
            'median': {k: m.median(k) for k in ('wall', 'cpu', 'rss_mb')} if m.samples else None}


def bench_constants(args) -> dict:
    py = sys.executable
    args.workdir.mkdir(parents=True, exist_ok=True)
    methods = [Method('start', 'python -c pass', [py, '-c', 'pass']),
               Method('torch', 'import torch', [py, '-c', 'import torch']),
               Method('fla', 'import fla.models', [py, '-W', 'ignore', '-c', 'import fla.models'])]
    say('  interpreter and imports')
    measure([py, '-W', 'ignore', '-c', 'import fla.models'], args.workdir / 'log.txt')  # warm .pyc and file cache
    run_methods(methods, args.repeats, args.workdir / 'log.txt')
    return {m.key: method_dict(m) for m in methods}


# ------------------------------------------------------------------------------------------------------- main

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--sizes', default=None, help=f'comma-separated from {", ".join(RELEASED)} '
                                                  f'(default {",".join(DEFAULT_SIZES)}: fits 2 cores / 24 GB)')
    p.add_argument('--repeats', type=int, default=3, help='runs per method; the median is reported (default 3)')
    p.add_argument('--workdir', type=Path, default=DEFAULT_WORKDIR, help=f'scratch space (default {DEFAULT_WORKDIR})')
    p.add_argument('--json', type=Path, default=None, help='write every sample and median as JSON')
    p.add_argument('--plot', type=Path, default=None,
                   help=f'PNG of time and peak RSS vs size (default with default sizes: {DEFAULT_PLOT.relative_to(REPO)})')
    p.add_argument('--markdown', type=Path, default=None,
                   help=f'markdown report, written between its <!-- {MARKERS}:begin/end --> lines (a new file: made '
                        f'with them; default with default sizes: {DEFAULT_MARKDOWN.relative_to(REPO)})')
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
    return p


def publish(args, results: list[dict], consts: dict, meta: dict) -> None:
    """Print the report; write it between the markers, the JSON and the plot where asked."""
    report = markdown(results, consts, meta)
    print(report)
    if args.markdown:
        write_between_markers(args.markdown, MARKERS, report)
    if args.json:
        args.json.write_text(json.dumps({'meta': meta, 'constants': consts, 'results': results}, indent=1))
    if args.plot:
        plot(results, consts, args.plot)
        say(f'plot: {args.plot} ({args.plot.stat().st_size / 1e3:.0f} KB)')


def reuse_naive(results: list[dict], saved: dict, source: Path) -> None:
    """Put an earlier run's naive numbers (--naive-json) into `results`, saying where they come from."""
    by_size = {r['size']: r for r in saved['results']}
    note = f'from {source.name} ({saved["meta"]["date"]})'
    for r in results:
        old = by_size[r['size']]
        for direction in ('to_fla', 'from_fla', 'round_trip'):
            if direction in r and direction in old and 'naive' in old[direction]:
                r[direction]['naive'] = dict(old[direction]['naive'], reused=note)
        r['ours_equals_naive'] = old.get('ours_equals_naive')


def chosen_sizes(p: argparse.ArgumentParser, args) -> list[str]:
    defaults = args.sizes is None
    sizes = list(DEFAULT_SIZES) if defaults else [s.strip() for s in args.sizes.split(',') if s.strip()]
    unknown = [s for s in sizes if s not in RELEASED]
    if unknown:
        p.error(f'unknown size(s) {unknown}; choose from {", ".join(RELEASED)}')
    if defaults:
        args.plot = args.plot or DEFAULT_PLOT
        args.markdown = args.markdown or DEFAULT_MARKDOWN
    return sorted(sizes, key=lambda s: Goose.released(s).num_parameters)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        publish(args, saved['results'], saved['constants'], saved['meta'])
        return 0
    sizes = chosen_sizes(p, args)
    saved = json.loads(args.naive_json.read_text()) if args.naive_json else None
    if saved:
        missing = [s for s in sizes if s not in {r['size'] for r in saved['results']}]
        if missing:
            p.error(f'--naive-json has no results for {missing}')
        args.no_naive = True
    usage = shutil.disk_usage(args.workdir.parent if not args.workdir.exists() else args.workdir)
    say(f'workdir {args.workdir}: {usage.free / 1e9:.1f} GB free; reverse script '
        f'{"present" if FROM_FLA.exists() else "absent (reverse and round trip: n/a)"}')
    consts = bench_constants(args)
    results = [bench_size(name, args) for name in sizes]
    if saved:
        reuse_naive(results, saved, args.naive_json)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    shown = argv if argv is not None else sys.argv[1:]
    meta = {'command': ' '.join(['python benchmarks/benchmark_convert.py', *shown]),
            'commit': git_state('fla/rwkv7_convert', 'utils'),
            'naive_from': f'{args.naive_json} ({saved["meta"]["date"]})' if saved else None,
            'machine': machine(), 'software': software(), 'repeats': args.repeats,
            'date': time.strftime('%Y-%m-%d %H:%M %Z'),
            'naive_repeats': saved['meta'].get('naive_repeats') if saved else args.naive_repeats,
            'load': 'Other jobs shared this 2-core machine: 1-minute load average '
                    + ', '.join(f'{r["size"]} {r["load_average"][0]:.1f}' for r in results)
                    + ' at the end of each size; CPU times are less affected by that than wall times.'}
    publish(args, results, consts, meta)
    return 0


if __name__ == '__main__':
    sys.exit(main())
