"""Ctrl-C, SIGTERM and SIGHUP outside the command's own work (the imports, seconds on a loaded machine, and the
exit) end the scripts with one line, never a traceback from whichever import they hit; inside it, cli.process.run_cli's
handling (KeyboardInterrupt, scratch output removed) takes over and is put back after."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UTILS = REPO / 'utils'

_CHILD = '''
import os, signal, sys, time
sys.path.insert(0, {utils!r})
import _bootstrap
if {ignore_hup}:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
_bootstrap.light_fla()
os.kill(os.getpid(), signal.{sig})  # as if it came while numpy and torch were being imported
time.sleep({wait})  # never reached when the signal ends the process: it is handled before the next line
print('still running', flush=True)
'''


def _child(sig: str, ignore_hup: bool = False) -> subprocess.CompletedProcess:
    code = _CHILD.format(utils=str(UTILS), sig=sig, ignore_hup=ignore_hup, wait=0 if ignore_hup else 30)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600,
                          preexec_fn=_default_signals)


def _default_signals() -> None:
    # as from a terminal, even where the tests run as a background job (SIGINT ignored) or under nohup (SIGHUP)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


@pytest.mark.parametrize('sig', [pytest.param(s, id=s) for s in ('SIGINT', 'SIGTERM', 'SIGHUP')])
def test_a_signal_while_starting_is_one_line(sig):
    r = _child(sig)
    assert r.returncode == 128 + getattr(signal, sig), (r.returncode, r.stderr)
    assert r.stderr == f'interrupted ({sig}) outside the conversion: nothing was left half-written\n', r.stderr


def test_an_ignored_sighup_stays_ignored():
    r = _child('SIGHUP', ignore_hup=True)
    assert r.returncode == 0 and r.stdout == 'still running\n', (r.returncode, r.stderr)


def test_run_cli_takes_over_while_the_command_runs_and_gives_back_after(monkeypatch):
    sys.path.insert(0, str(UTILS))
    try:
        import _bootstrap
    finally:
        sys.path.remove(str(UTILS))
    from fla.rwkv7_convert.cli.process import _raise_terminated, run_cli
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for s in saved:
            signal.signal(s, _bootstrap._stop_quietly)
        inside = {}

        def body(args):
            inside.update({s: signal.getsignal(s) for s in saved})
            raise KeyboardInterrupt
        assert run_cli(body, type('Args', (), {})()) == 130
        assert inside[signal.SIGINT] is signal.default_int_handler
        assert inside[signal.SIGTERM] is inside[signal.SIGHUP] is _raise_terminated
        assert all(signal.getsignal(s) is _bootstrap._stop_quietly for s in saved)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
