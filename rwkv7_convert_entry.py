"""The console commands (`rwkv7-convert`, `rwkv7-export`, `rwkv7-verify`, `rwkv7-inspect`) and their fast start.

`import fla.<anything>` normally runs fla/__init__.py, which imports all of fla's models, triton and transformers:
about 5-10 s before the first byte is converted. Conversion needs none of them, so the commands register `fla` as a
bare namespace over the same folders (the ones `pkgutil.extend_path` would find) while fla is not yet imported.
Nothing of fla is copied or replaced; `fla.rwkv7_convert.runtime.loading.ensure_real_fla()` swaps in the real package
for steps that run fla's models.

This module lives outside the `fla` package on purpose: a console script naming `fla.rwkv7_convert.cli.dispatch:main` would
import `fla` (and run its __init__) before any code of ours could run. setup.py installs it as a top-level module
(`py_modules`) and points the console scripts here; utils/_bootstrap.py re-exports it for the utils/*.py scripts.
`python -m rwkv7_convert_entry COMMAND ...` is the fast twin of `python -m fla.rwkv7_convert COMMAND ...` (which
imports fla first, as `-m` of any fla submodule must).
"""

from __future__ import annotations

import os
import signal
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent  # the checkout (or site-packages) holding fla/rwkv7_convert


def _stop_quietly(signum, frame) -> None:
    # outside the command's own work (imports: seconds on a loaded machine; the exit): nothing is half-written, and
    # a KeyboardInterrupt here would surface as a traceback from whichever import it hit (numpy's: an ImportError)
    os.write(2, f'interrupted ({signal.Signals(signum).name}) outside the conversion: nothing was left half-written\n'
             .encode())
    os._exit(128 + signum)


_stop_quietly.outside_the_command = True  # cli.process.run_cli replaces it while the command runs, and puts it back after


def quiet_interrupts() -> None:
    """Ctrl-C, SIGTERM and SIGHUP end the process with one line until cli.process.run_cli installs its own handling (signals
    the caller chose to ignore, SIGHUP under nohup say, stay ignored)."""
    for name in ('SIGINT', 'SIGTERM', 'SIGHUP'):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(sig, _stop_quietly)


def light_fla() -> None:
    """Quiet interrupts, this module's folder first on sys.path, and `fla` a bare namespace unless fla is imported
    already. Call it before the first `import fla...`."""
    quiet_interrupts()
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    if 'fla' in sys.modules:
        return
    stub = types.ModuleType('fla')
    stub.__path__ = [str(Path(p) / 'fla') for p in sys.path if p and (Path(p) / 'fla').is_dir()]
    stub.__light_stub__ = True
    sys.modules['fla'] = stub


def _command(name: str, argv: list[str] | None = None) -> int:
    light_fla()
    from fla.rwkv7_convert.cli.dispatch import CONSOLE_SCRIPTS, run_command  # after light_fla(): see the docstring
    return run_command(name, argv, prog=CONSOLE_SCRIPTS[name])


# the console scripts (setup.py entry_points): each starts without fla's __init__
def convert() -> int:
    """rwkv7-convert: BlinkDL checkpoint -> fla / Hugging Face directory (= utils/convert_to_rwkv7.py)."""
    return _command('convert')


def export() -> int:
    """rwkv7-export: fla / Hugging Face directory -> BlinkDL checkpoint (= utils/convert_from_fla_rwkv7.py)."""
    return _command('export')


def verify() -> int:
    """rwkv7-verify: logits of the converted directory against the reference on the source (= utils/verify_rwkv7.py)."""
    return _command('verify')


def inspect() -> int:
    """rwkv7-inspect: what a BlinkDL file or an fla directory holds and what converting it would do; writes nothing."""
    return _command('inspect')


def main(argv: list[str] | None = None) -> int:
    """`python -m rwkv7_convert_entry COMMAND [args]`: the dispatcher of `python -m fla.rwkv7_convert`, started fast."""
    light_fla()
    from fla.rwkv7_convert.cli.dispatch import main as dispatch  # after light_fla(): see the docstring
    return dispatch(argv, prog='python -m rwkv7_convert_entry')


if __name__ == '__main__':
    sys.exit(main())
