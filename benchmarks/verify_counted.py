#!/usr/bin/env python
"""`utils/verify_rwkv7.py` with Triton's interpreter counted: what benchmark_verify.py runs for --launches.

Benchmark code only: the counters wrap the interpreter's entry points in this process once the backend has set
the interpreter up (runtime.device.use_interpreter), and are written as JSON to the file named by
$RWKV7_BENCH_COUNTS when the process ends:

  launches        kernel launches (GridExecutor.__call__), per kernel
  programs        grid programs run (one Python execution of the kernel body each), per kernel
  device_calls    @triton.jit helpers called from inside a kernel (InterpretedFunction.__call__), per helper
  lang_patches    calls of the interpreter's _patch_lang (stock Triton: one per launch and one per helper call)
  attrs_patched   attributes of triton.language those calls set (_LangPatchScope.set_attr): the patching work

$RWKV7_BENCH_INTERPRETER installs runtime.interpreter with other options (see _reinstall), so that each of its
changes can be measured alone. A backend that never sets the interpreter up writes {"interpreted": false}. Each
counter costs a dict update per call, small against the milliseconds an interpreted launch takes.

    RWKV7_BENCH_COUNTS=counts.json python benchmarks/verify_counted.py --rwkv7 F --model D --tokens 16
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'utils'))
from _bootstrap import light_fla  # noqa: E402

light_fla()

COUNTS: dict = {'interpreted': False, 'launches': Counter(), 'programs': Counter(), 'device_calls': Counter(),
                'lang_patches': 0, 'attrs_patched': 0}


def _kernel_name(fn) -> str:
    return getattr(fn, '__name__', repr(fn))


def install_counters() -> None:
    """Wrap the interpreter's launch, program, helper-call and patch entry points (class and module attributes,
    so every kernel is seen)."""
    from triton.runtime import interpreter as it

    COUNTS['interpreted'] = True
    launch, helper, patch = it.GridExecutor.__call__, it.InterpretedFunction.__call__, it._patch_lang
    set_attr = it._LangPatchScope.set_attr
    current = []  # the kernel whose programs are being counted

    def counted_launch(self, *args, **kwargs):
        name = _kernel_name(self.fn)
        COUNTS['launches'][name] += 1
        current.append(name)
        try:
            return launch(self, *args, **kwargs)
        finally:
            current.pop()

    def counted_helper(self, *args, **kwargs):
        COUNTS['device_calls'][_kernel_name(self.fn)] += 1
        return helper(self, *args, **kwargs)

    def counted_patch(fn):
        COUNTS['lang_patches'] += 1
        return patch(fn)

    def counted_set_attr(self, *args):
        COUNTS['attrs_patched'] += 1
        return set_attr(self, *args)

    builder = it.interpreter_builder
    set_grid_idx = builder.set_grid_idx

    def counted_grid_idx(*args):
        COUNTS['programs'][current[-1] if current else '?'] += 1
        return set_grid_idx(*args)

    it.GridExecutor.__call__ = counted_launch
    it.InterpretedFunction.__call__ = counted_helper
    builder.set_grid_idx = counted_grid_idx
    it._LangPatchScope.set_attr = counted_set_attr
    it._patch_lang = counted_patch  # whichever _patch_lang use_interpreter left in place


def _wrap_use_interpreter() -> None:
    from fla.rwkv7_convert.runtime import device as runtime

    original = runtime.use_interpreter

    def use_interpreter(*args, **kwargs):
        result = original(*args, **kwargs)
        if result and not COUNTS['interpreted']:
            _reinstall(os.environ.get('RWKV7_BENCH_INTERPRETER', ''))
            install_counters()
        return result

    runtime.use_interpreter = use_interpreter


def _reinstall(how: str) -> None:
    """$RWKV7_BENCH_INTERPRETER, e.g. `fewest_programs=0,keep_lang_patched=1`: runtime.interpreter installed with those
    options instead of its defaults, to measure each change alone (empty: as use_interpreter left it)."""
    if not how:
        return
    from fla.rwkv7_convert.runtime import interpreter
    options = {k: bool(int(v)) for k, v in (item.split('=') for item in how.split(','))}
    interpreter.restore()
    interpreter.install(**options)
    COUNTS['interpreter_options'] = options


def _write() -> None:
    path = os.environ.get('RWKV7_BENCH_COUNTS')
    if path:
        Path(path).write_text(json.dumps(COUNTS))


if __name__ == '__main__':
    _wrap_use_interpreter()
    atexit.register(_write)
    from fla.rwkv7_convert.cli.verify import main_verify
    sys.exit(main_verify())
