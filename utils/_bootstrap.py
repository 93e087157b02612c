"""Lets the command-line scripts import `fla.rwkv7_convert` without first running fla's own `__init__.py`.

`import fla.<anything>` normally runs fla/__init__.py, which imports all of fla's models, triton and transformers:
about 5-10 s before the first byte is converted. Conversion needs none of them, so the scripts register `fla` as a
bare namespace over the same folders (the ones `pkgutil.extend_path` would find) while fla is not yet imported.
Nothing of fla is copied or replaced; `fla.rwkv7_convert.proof.loading.ensure_real_fla()` swaps in the real package
for steps that run fla's models.
"""

from __future__ import annotations

import os
import signal
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _stop_quietly(signum, frame) -> None:
    # outside the command's own work (imports: seconds on a loaded machine; the exit): nothing is half-written, and
    # a KeyboardInterrupt here would surface as a traceback from whichever import it hit (numpy's: an ImportError)
    os.write(2, f'interrupted ({signal.Signals(signum).name}) outside the conversion: nothing was left half-written\n'
             .encode())
    os._exit(128 + signum)


_stop_quietly.outside_the_command = True  # cli.run_cli replaces it while the command runs, and puts it back after


def quiet_interrupts() -> None:
    """Ctrl-C, SIGTERM and SIGHUP end the process with one line until cli.run_cli installs its own handling (signals
    the caller chose to ignore, SIGHUP under nohup say, stay ignored)."""
    for name in ('SIGINT', 'SIGTERM', 'SIGHUP'):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(sig, _stop_quietly)


def light_fla() -> None:
    quiet_interrupts()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if 'fla' in sys.modules:
        return
    stub = types.ModuleType('fla')
    stub.__path__ = [str(Path(p) / 'fla') for p in sys.path if p and (Path(p) / 'fla').is_dir()]
    stub.__light_stub__ = True
    sys.modules['fla'] = stub
