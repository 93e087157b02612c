"""runtime/state_cache.initial_cache: fla started from a tuned state computes what the reference computes from it.

BlinkDL's wkv state is [H, value, key] per layer; fla's cache holds [B, H, key, value]. The reference runs from
the state as RWKV-PEFT's time_state holds it; fla from its per-head transpose, through initial_cache. Running fla
from the untransposed state must give different logits (a random state is not symmetric), so the test can fail.
"""

from __future__ import annotations

import pytest
import torch
from fla_cpu import fla_logits, fla_model
from rwkv7_factory import Goose, make_state_dict

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.proof.reference import RWKV7Reference, RWKV7State
from fla.rwkv7_convert.runtime.state_cache import initial_cache


def _tuned(shape: Goose, seed: int = 5) -> torch.Tensor:
    """[L, H, V, K] in BlinkDL's orientation, scaled like a trained state (entries of order 0.1 to 1)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape.layers, shape.heads, shape.head_size, shape.head_size, generator=gen) * 0.5


def _reference_from(sd, state_vk: torch.Tensor, tokens: torch.Tensor, batch: int) -> torch.Tensor:
    ref = RWKV7Reference(sd)
    st = ref.zero_state(batch)
    st = RWKV7State(st.att_x_prev, [s.double().expand(batch, *s.shape).clone() for s in state_vk], st.ffn_x_prev)
    return ref(tokens, st)[0]


@pytest.mark.parametrize('shape, batch', [
    pytest.param(Goose(hidden=64, head_size=32, layers=2, vocab=97), 2, id='C64-N32-L2-B2'),
    pytest.param(Goose(hidden=128, head_size=64, layers=1, vocab=97), 1, id='C128-N64-L1-B1'),
])
def test_fla_from_initial_cache_matches_the_reference_from_the_state(shape, batch):
    sd = make_state_dict(shape, seed=2)
    state_vk = _tuned(shape)
    tokens = torch.randint(0, shape.vocab, (batch, 12), generator=torch.Generator().manual_seed(1))
    want = _reference_from(sd, state_vk, tokens, batch)
    model = fla_model(sd)

    def run(state):
        with torch.no_grad():
            return model(input_ids=tokens, past_key_values=initial_cache(model, state, batch_size=batch),
                         use_cache=True, return_dict=False)[0].double()

    got = run(state_vk.transpose(-1, -2))
    zero = fla_logits(model, tokens).double()
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(got, want) < 1e-4
    assert rel(zero, want) > 1e-2  # the state matters for these logits
    assert rel(run(state_vk), want) > 1e-2  # the untransposed state is a different function


def test_initial_cache_refuses_a_state_that_does_not_fit():
    shape = Goose(hidden=64, head_size=32, layers=2, vocab=97)
    model = fla_model(make_state_dict(shape))
    with pytest.raises(ConversionError, match=r'do not fit the model \(2 layers of \[H=2, K=32, V=32\]\)'):
        initial_cache(model, torch.zeros(3, 2, 32, 32))
    with pytest.raises(ConversionError, match='do not fit'):
        initial_cache(model, torch.zeros(2, 1, 64, 64))
    with pytest.raises(ConversionError, match=r'\[L, H, K, V\]'):
        initial_cache(model, torch.zeros(2, 32, 32))
