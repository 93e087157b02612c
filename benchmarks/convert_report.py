"""benchmark_convert.py's report: the markdown it writes between RESULTS.md's markers, the targets, and the plot."""

from __future__ import annotations

from pathlib import Path

from harness import md_table


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
    """The whole generated report: what RESULTS.md holds between its `convert` markers."""
    return '\n'.join(_header(consts, meta) + _to_fla(results, _med(consts, 'start')) + _from_fla(results, consts)
                     + ['## Targets', '', *md_table(['target', 'measured', 'verdict'], targets(results, consts)), ''])


def _header(consts: dict, meta: dict) -> list[str]:
    start = _med(consts, 'start')
    naive_runs = meta.get('naive_repeats')
    return [
        '# RWKV-7 converter benchmark', '',
        f'Command: `{meta["command"]}`  ', f'Converter: commit {meta.get("commit", "unknown")}  ',
        f'Machine: {meta["machine"]}  ', f'Software: {meta["software"]}  ',
        f'Date: {meta["date"]}; median of {meta["repeats"]} runs, each in a fresh process'
        + (f' (naive: {naive_runs} run(s))' if naive_runs not in (None, meta['repeats']) else '')
        + f'. {meta.get("load", "")}', '',
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
    ]


TO_FLA_HEADER = ['model', 'file GB', 'ours s (cpu)', 'ours RSS MB', 'plain s (cpu)', 'plain RSS MB', 'naive s (cpu)',
                 'naive RSS MB', 'cp s', 'copy+fsync s', 'read s', 'floor s = cp + start', 'ours / floor',
                 'ours / (copy+fsync + start)', 'plain / ours', 'naive / ours']


def _to_fla_row(r: dict, start: float) -> list[str]:
    d = r['to_fla']
    ours, naive, cp = _med(d, 'ours'), _med(d, 'naive'), _med(d, 'cp')
    floor = cp + start
    return [r['size'], f'{r["file_bytes"] / 1e9:.2f}', f'{_fmt(ours)} ({_fmt(_med(d, "ours", "cpu"))})',
            f'{_med(d, "ours", "rss_mb"):.0f}', _cell(d, 'plain'), _fmt(_med(d, 'plain', 'rss_mb'), 0), _cell(d, 'naive'),
            _fmt(_med(d, 'naive', 'rss_mb'), 0), _fmt(cp), _fmt(_med(d, 'copy_fsync')), _fmt(_med(d, 'read')),
            _fmt(floor), _x(ours / floor), f'{_fmt(ours / (_med(d, "copy_fsync") + start))}×',
            _x(_med(d, 'plain') / ours), _x(naive / ours, 1)]


def _to_fla(results: list[dict], start: float) -> list[str]:
    lines = ['## RWKV-LM .pth → fla directory', '', *md_table(TO_FLA_HEADER, [_to_fla_row(r, start) for r in results])]
    lines += ['', 'Peak RSS of the floor: ' + ', '.join(
        f'{r["size"]}: cp {_med(r["to_fla"], "cp", "rss_mb"):.0f} MB, read {_med(r["to_fla"], "read", "rss_mb"):.0f} MB'
        for r in results) + '.', '']
    for key, who in (('ours_equals_naive', 'naive'), ('ours_equals_plain', 'plain')):
        checks = [f'{r["size"]}: {"identical" if r[key] else "DIFFERENT"}' for r in results if r.get(key) is not None]
        if checks:
            lines += [f'Ours vs {who} output, tensor by tensor: ' + ', '.join(checks) + '.', '']
    return lines + ['Plain: `torch.load(mmap=True, weights_only=True)` + renames + `safetensors.torch.save_file` into one '
                    'file, no fsync (see `convert_baselines.plain_to_fla`). Its peak RSS counts the pages of the mapped '
                    'input it touched and the whole output it builds before writing.', '']


def _from_fla(results: list[dict], consts: dict) -> list[str]:
    lines = ['## fla directory → RWKV-LM .pth, and round trip', '']
    if not any('from_fla' in r for r in results):
        return lines + ['n/a: utils/convert_from_fla_rwkv7.py did not exist when this was run.', '']
    start, rows = _med(consts, 'start'), []
    for r in results:
        cp = _med(r['to_fla'], 'cp')
        for key, label, floor in (('from_fla', 'from fla', cp + start), ('round_trip', 'round trip', 2 * (cp + start))):
            d = r[key]
            ours, naive = _med(d, 'ours'), _med(d, 'naive')
            rows.append([r['size'], label, f'{_fmt(ours)} ({_fmt(_med(d, "ours", "cpu"))})',
                         f'{_med(d, "ours", "rss_mb"):.0f}', _cell(d, 'naive'), _fmt(_med(d, 'naive', 'rss_mb'), 0),
                         _fmt(floor), _x(ours / floor), _x(naive / ours, 1)])
    summed = any(r['round_trip'].get('naive', {}).get('summed') for r in results)
    header = ['model', 'direction', 'ours s (cpu)', 'ours RSS MB', 'naive s (cpu)', 'naive RSS MB', 'floor s',
              'ours / floor', 'naive / ours']
    return lines + md_table(header, rows) + [
        '', 'Floor: one cp + python start per direction (two for the round trip). '
        + ('Naive round trip: the sum of its two directions\' medians (it is two fresh processes); '
           'peak RSS the larger of the two. ' if summed else '')
        + 'Ours round trip: timed as one `sh -c \'to && from\'`. Round trip: '
        + ', '.join(f'{r["size"]} {"source tensors recovered exactly" if r["round_trip_identical"] else "DIFFERS"}'
                    for r in results) + ' (layer-0 v0/v1/v2 are dropped by design).', '']


def _cell(d: dict, key: str) -> str:
    m = d.get(key)
    if not m or m['skipped'] or not m['median']:
        return m['skipped'] if m and m['skipped'] else 'n/a'
    return f'{m["median"]["wall"]:.2f} ({m["median"]["cpu"]:.2f})'


def plot(results: list[dict], consts: dict, path: Path) -> None:
    # here, not at the top: the driver must stay small while it measures (harness.py); the [benchmark] extra has it
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
