"""Lets the utils/*.py scripts import `fla.rwkv7_convert` without first running fla's own `__init__.py`.

The logic is the console commands' own (rwkv7_convert_entry.py at the top of the checkout: why, and how); this
module puts the checkout first on sys.path, so that a script run from here uses this checkout's code, and re-exports
it under the names the scripts, benchmarks and tests import.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rwkv7_convert_entry import _stop_quietly, light_fla, quiet_interrupts  # noqa: E402

__all__ = ['REPO', '_stop_quietly', 'light_fla', 'quiet_interrupts']
