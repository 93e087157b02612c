"""runtime/interpreter.py: what we change in Triton's interpreter computes what the stock interpreter computes, bit for
bit, and restore() puts triton back as it was.

"Stock" here is what use_interpreter did before interpreter.py: the autotuner's first config, triton.language
patched by Triton at every launch and helper call. Both sides run in this process, one after the other, with the
autotuners' caches emptied in between so each side chooses its own config.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager

import pytest
import torch
from fla_cpu import fla_model
from rwkv7_factory import Goose, make_state_dict

from fla.rwkv7_convert.runtime import interpreter
from fla.rwkv7_convert.runtime.device import cuda_available, fla_logits

pytestmark = pytest.mark.skipif(cuda_available(), reason="Triton's CPU interpreter only")


def _autotuners():
    from triton.runtime.autotuner import Autotuner
    return [o for o in gc.get_objects() if issubclass(type(o), Autotuner)]  # type(): weak proxies raise on isinstance


@contextmanager
def installed(**how):
    """The interpreter set up as `how` says for the block (fresh autotuning), then as use_interpreter leaves it."""
    interpreter.restore()
    interpreter.install(**how)
    for tuner in _autotuners():
        tuner.cache.clear()
    try:
        yield
    finally:
        interpreter.restore()
        interpreter.install()
        for tuner in _autotuners():
            tuner.cache.clear()


STOCK = dict(fewest_programs=False, keep_lang_patched=False)


@contextmanager
def counting_lang_patches():
    from triton.runtime import interpreter as it
    count, set_attr = [0], it._LangPatchScope.set_attr

    def counted(self, *args):
        count[0] += 1
        return set_attr(self, *args)

    it._LangPatchScope.set_attr = counted
    try:
        yield count
    finally:
        it._LangPatchScope.set_attr = set_attr


def _recurrent(N: int, T: int, initial: bool, H: int = 2, B: int = 2):
    from fla.ops.rwkv7.fused_recurrent import fused_mul_recurrent_rwkv7, fused_recurrent_rwkv7_fwd_kernel
    gen = torch.Generator().manual_seed(N + T)
    r, k, v = (torch.randn(B, T, H, N, generator=gen) for _ in range(3))
    w = -torch.rand(B, T, H, N, generator=gen) - 0.1  # log decay
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=gen), dim=-1)
    a = torch.rand(B, T, H, N, generator=gen)
    h0 = torch.randn(B, H, N, N, generator=gen) if initial else None
    with torch.no_grad():
        # what fla's RWKV7Attention calls below 64 tokens in eval mode
        o, ht = fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, scale=1.0, initial_state=h0, output_final_state=True)
    from triton.runtime.autotuner import Autotuner
    tuner = fused_recurrent_rwkv7_fwd_kernel
    while not isinstance(tuner, Autotuner):
        tuner = tuner.fn
    return o, ht, tuner.best_config.kwargs['BV']


@pytest.mark.parametrize(('N', 'T', 'initial'), [
    pytest.param(32, 7, True, id='N32-T7-h0'),
    pytest.param(64, 1, False, id='N64-decode'),
    pytest.param(64, 6, True, id='N64-T6-h0'),
    pytest.param(128, 3, False, id='N128-T3'),
])
def test_recurrent_kernel_is_bit_identical_to_the_stock_interpreter(N, T, initial):
    with installed(**STOCK), counting_lang_patches() as stock_patches:
        want_o, want_ht, stock_bv = _recurrent(N, T, initial)
    with installed(), counting_lang_patches() as our_patches:
        got_o, got_ht, our_bv = _recurrent(N, T, initial)
    assert (stock_bv, our_bv) == (16, 64)  # the first config, and the one with the fewest programs
    assert stock_patches[0] > 0 and our_patches[0] == 0  # patched at every launch and helper call / never again
    assert torch.equal(got_o, want_o) and torch.equal(got_ht, want_ht)


def test_model_logits_are_bit_identical_to_the_stock_interpreter():
    """Every kernel fla's model runs (norms, token shift, addcmul, k update, recurrent wkv, gate correction); N = 32
    so the recurrent kernel's chosen block (64) is wider than the head."""
    sd = make_state_dict(Goose(vocab=64, hidden=64, layers=2, head_size=32), seed=5)
    model = fla_model(sd)
    tokens = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(1))
    with installed(**STOCK):
        want = fla_logits(model, tokens, piece=5)  # two pieces: the cache between calls too
    with installed():
        got = fla_logits(model, tokens, piece=5)
    assert torch.equal(got, want)


def _language_state() -> dict:
    import triton.language as tl
    owners = {'tl': tl, 'tl.core': tl.core, 'tl.math': tl.math, 'tl.tensor': tl.tensor, 'tl.dtype': tl.dtype,
              'tl.condition': tl.condition, 'tensor_descriptor_base': tl.core.tensor_descriptor_base}
    return {(name, k): v for name, owner in owners.items() for k, v in vars(owner).items()}


def test_restore_puts_triton_back_as_it_was():
    from triton.runtime import autotuner
    from triton.runtime import interpreter as it
    interpreter.restore()
    try:
        before = _language_state(), it._patch_lang, autotuner.Autotuner._bench
        interpreter.install()
        during = _language_state()
        assert interpreter.installed() and it._patch_lang is not before[1] and autotuner.Autotuner._bench is not before[2]
        assert [k for k in before[0] if during.get(k) is not before[0][k]]  # something was patched
        interpreter.install()  # a second install changes nothing (use_interpreter runs more than once)
        again = _language_state()
        assert again.keys() == during.keys() and all(again[k] is during[k] for k in during)
        interpreter.restore()
        after = _language_state()
        assert after.keys() == before[0].keys()
        assert [k for k in after if after[k] is not before[0][k]] == []
        assert it._patch_lang is before[1] and autotuner.Autotuner._bench is before[2]
    finally:
        interpreter.restore()
        interpreter.install()


def test_a_function_that_sees_no_triton_language_still_goes_to_triton():
    """The replacement covers kernels that see tl or tl.core; anything else gets Triton's own _patch_lang (which
    refuses it, as it would without us)."""
    from triton.runtime import interpreter as it

    def no_language():
        return None

    with pytest.raises(AssertionError, match='triton.language must be visible'):
        it._patch_lang(no_language)
