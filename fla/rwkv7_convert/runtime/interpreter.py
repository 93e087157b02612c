"""What we change in Triton's CPU interpreter to run fla's kernels there, each change scoped and restorable.

Two changes, installed together by `install()` (device.use_interpreter calls it) and undone by `restore()`:

- The autotuner's `_bench`: the interpreter has no benchmarker, so every config gets a constant "time", and the
  one that needs the fewest programs wins (the largest product of its int kwargs: fla's kernels tile tokens with BT
  and the value dimension with BV; configs without kwargs tie, and the first is kept, as the autotuner itself does).
  An interpreted program costs the same Python overhead whatever its block holds, so fewer, larger programs are
  faster; every config computes the same function, and for the kernels a verification runs the logits are bit for
  bit those of the first config (tests/runtime/test_interpreter.py).
- triton.language patched once for the process instead of at every launch: Triton's interpreter (triton
  runtime/interpreter.py, `GridExecutor.__call__` and `InterpretedFunction.__call__`, both through `_patch_lang`)
  re-patches the language module (`inspect.getmembers` over tl, tl.core, tl.math and tl.tensor, ~30 attributes
  set) before every launch and before every call of a @triton.jit helper from inside a kernel: `tl.sum`, `tl.zeros`
  and fla's `exp` are such helpers, so fla's recurrent kernel re-patches three times per token per program. The
  patches are the same objects every time (they bind the interpreter's one semantic object), so `install` applies
  them once, as `_patch_lang` would for a kernel that sees both tl and tl.core, and replaces `_patch_lang` with a
  function that returns an empty scope for the functions those patches cover; anything else goes to the original.
  Stock Triton itself leaves the patches of a helper's call in place after the launch (the helper's scope is never
  restored), so a patched language outside a launch is the state it reaches after the first kernel anyway.

Nothing here runs on CUDA: use_interpreter installs it only for the interpreter.
"""

from __future__ import annotations

import inspect
import math

# triton is imported inside the functions: use_interpreter sets the variables it reads at import first

_INSTALLED: dict | None = None  # what install() replaced, while installed


def blocks(config) -> int:
    """The product of a triton.Config's int kwargs (BT, BV, ...): the larger, the fewer programs a launch runs."""
    return math.prod(v for v in config.kwargs.values() if isinstance(v, int) and not isinstance(v, bool))


def _fewest_programs_bench(self, *args, config, **meta):
    """Stands in for Autotuner._bench under the interpreter: nothing is launched; larger blocks "take" less."""
    t = 1.0 / blocks(config)
    return [t, t, t]


def _language_sees(fn, modules) -> bool:
    return any(inspect.ismodule(v) and v in modules for v in fn.__globals__.values())


def installed() -> bool:
    return _INSTALLED is not None


def _first_config_bench(self, *args, config, **meta):
    """Every config "takes" the same time, so the autotuner keeps the first (what use_interpreter did before)."""
    return [1.0, 1.0, 1.0]


def install(fewest_programs: bool = True, keep_lang_patched: bool = True) -> None:
    """Replace the autotuner's benchmark (the config with the fewest programs, else the first) and, with
    `keep_lang_patched`, patch triton.language once for the process; a no-op while installed (restore() first)."""
    global _INSTALLED
    if _INSTALLED is not None:
        return
    import triton.language as tl
    from triton.runtime import autotuner
    from triton.runtime import interpreter as it

    saved = {'bench': autotuner.Autotuner._bench, 'patch_lang': it._patch_lang, 'scope': None}
    autotuner.Autotuner._bench = _fewest_programs_bench if fewest_programs else _first_config_bench
    if keep_lang_patched:
        original = it._patch_lang
        covered = (tl, tl.core)
        probe = type(install)(compile('None', '<lang probe>', 'eval'), {'tl': tl, 'core': tl.core})
        saved['scope'] = original(probe)  # the patches of a kernel that sees tl and tl.core: a superset of any kernel's

        def patch_lang(fn):
            if _language_sees(fn, covered):
                return it._LangPatchScope()  # nothing to set, nothing to restore: already patched
            return original(fn)

        it._patch_lang = patch_lang
        saved['ours'] = patch_lang
    _INSTALLED = saved


def restore() -> None:
    """Undo install(): Triton's own _bench and _patch_lang, and triton.language as it was before."""
    global _INSTALLED
    if _INSTALLED is None:
        return
    from triton.runtime import autotuner
    from triton.runtime import interpreter as it

    saved, _INSTALLED = _INSTALLED, None
    autotuner.Autotuner._bench = saved['bench']
    if saved['scope'] is not None:
        if it._patch_lang is saved['ours']:
            it._patch_lang = saved['patch_lang']
        saved['scope'].restore()
