"""Numbers and progress as people read them, one way for every command: byte sizes, parameter counts, the bar."""

from __future__ import annotations

import sys


def human_bytes(n: float) -> str:
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if n < 1000 or unit == 'TB':
            return f'{n:.1f} {unit}' if unit != 'B' else f'{int(n)} B'
        n /= 1000
    return f'{n:.1f} TB'


def human_count(n: int) -> str:
    return f'{n / 1e9:.2f}B' if n >= 1e9 else f'{n / 1e6:.1f}M' if n >= 1e6 else f'{n / 1e3:.1f}K'


def progress_bar(total: int, desc: str, unit: str, quiet: bool = False):
    """A tqdm bar on stderr, or None: not with `quiet`, not when stderr is not a terminal (logs stay clean), not
    without tqdm (it is optional)."""
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == 'B', file=sys.stderr, leave=False)
