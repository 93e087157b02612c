"""Helpers every test folder shares: running an entry point in this process or a script in a child, reading the
one-line refusal of a command, running as an unprivileged user, and listing what a run left behind.

Fixtures live in the conftest.py files; plain functions live here, so that test modules import them from one place
and never from one another (tests/test_suite_layout.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fla.rwkv7_convert.errors import refusal_exit_codes

REPO = Path(__file__).resolve().parents[1]


def call_main(main: Callable[[list[str]], int], *args) -> tuple[int, str, str]:
    """A command's `main` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def script_env() -> dict:
    # the child runs as a user's shell would: fla's compiled kernels, not the interpreter this process uses
    return {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}


def run_script(script: Path | str, *args, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """`python script args...` in a child process, with its output captured as text."""
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          env=script_env(), timeout=timeout, **kw)


def start_script(script: Path | str, *args) -> subprocess.Popen:
    """`script` in a child process, to be interrupted: with SIGINT at its default so that it reaches the child as
    Ctrl-C would, even where the tests run with SIGINT ignored (background jobs)."""
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=script_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def assert_one_line_error(code: int, err: str) -> str:
    """A refusal from the command line: a refusal's exit status (errors.py: one per error class) and exactly one
    `error: ` line on stderr, no traceback; the line."""
    lines = err.strip().splitlines()
    assert code in refusal_exit_codes(), (code, err)
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in err, (code, err)
    return lines[0]


def leftovers(parent: Path, *expected: str) -> list[str]:
    """Names in `parent` other than `expected`: scratch or moved-aside folders would show up here."""
    return sorted(p.name for p in parent.iterdir() if p.name not in expected)


def as_nobody(run: Callable[[], tuple[int, object]]) -> tuple[int, object]:
    """`run()` in a forked child that dropped root (user and group 65534), so that file permissions apply to it:
    (the child's exit code, the JSON-able value `run` returned with it)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 99
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code, value = run()
            os.write(write_end, json.dumps(value).encode())
        except BaseException as e:
            os.write(write_end, json.dumps(f'child failed: {e!r}').encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, 'rb') as f:
        text = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), json.loads(text)
