"""The process plumbing every command shares: run_cli turns each expected failure into one line on stderr and the
exit status of its kind (a ConversionError's `exit_code`, EXIT_OS_ERROR; errors.py holds the table), a closed stdout
(`... | head`) into a quiet EXIT_BROKEN_PIPE, and SIGTERM/SIGHUP into an interrupt that unwinds like Ctrl-C (exit 128 +
the signal), so that the converters' cleanup runs."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fla.rwkv7_convert.errors import EXIT_BROKEN_PIPE, EXIT_OS_ERROR, ConversionError, KeyMismatchError


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (`... --dry-run | head -2`): stop without a message, as `cat` or `yes` do.

    stdout is pointed at /dev/null so that Python's final flush at exit does not raise the same error again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that the same cleanup runs (scratch output removed)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _ours(handler) -> bool:
    """Handlers the command may replace: the defaults, and the quiet start-up handler (rwkv7_convert_entry.py)."""
    return handler in (signal.SIG_DFL, signal.default_int_handler) or getattr(handler, 'outside_the_command', False)


@contextmanager
def _termination_as_interrupt() -> Iterator[None]:
    """While converting, SIGINT is Ctrl-C (KeyboardInterrupt) and SIGTERM/SIGHUP unwind like it instead of killing
    the process mid-write (signals a caller chose to ignore, such as SIGHUP under nohup, stay ignored)."""
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, 'SIGHUP', None)) if s is not None]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in sigs}
    for s, handler in previous.items():
        if _ours(handler):
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else _raise_terminated)
    try:
        yield
    finally:
        for s, handler in previous.items():
            if _ours(handler):
                signal.signal(s, handler)


# What an interrupted command says after `interrupted (SIGINT): `; the converters' output is atomic
CONVERT_INTERRUPTED = ('no partial output was left (the output is as it was, or the complete new one if the interrupt '
                       'came after it was in place)')


def run_cli(body: Callable[[argparse.Namespace], int], args: argparse.Namespace,
            interrupted: str = CONVERT_INTERRUPTED) -> int:
    """Run `body`, turning every expected failure into one line on stderr (`interrupted`: what Ctrl-C left)."""
    try:
        with _termination_as_interrupt():
            return body(args)  # a body may set args.interrupted: what an interrupt from then on leaves
    except ConversionError as e:
        print(f'error: {e.one_line()}', file=sys.stderr)
        if getattr(args, 'verbose', False):
            if isinstance(e, KeyMismatchError):
                print(e.full_report(), file=sys.stderr)
            traceback.print_exc()
        return e.exit_code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        print(f'interrupted ({signal.Signals(signum).name}): {getattr(args, "interrupted", interrupted)}', file=sys.stderr)
        return 128 + signum
    except OSError as e:
        where = f'{e.filename}: ' if e.filename else ''
        print(f'error: {where}{e.strerror or e} (nothing was written; any existing output is untouched)', file=sys.stderr)
        if getattr(args, 'verbose', False):
            traceback.print_exc()
        return EXIT_OS_ERROR

