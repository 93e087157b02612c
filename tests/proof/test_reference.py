"""The pure-PyTorch reference against BlinkDL's `rwkv` package and fla, and its own invariants."""

from __future__ import annotations

import blinkdl_rwkv
import pytest
import torch
from fla_cpu import fla_logits, fla_model
from rwkv7_factory import Goose, flatten_r_k, make_state_dict, save, squeeze_vectors

from fla.rwkv7_convert.proof.reference import RWKV7Reference


def rwkv_package_model(sd: dict[str, torch.Tensor], tmp_path):
    """BlinkDL's own CPU implementation (fp32), loaded from `sd` saved as RWKV-LM does."""
    save(sd, tmp_path / 'model.pth')
    return blinkdl_rwkv.rwkv_package_model(tmp_path / 'model')


def tokens(batch: int, length: int, vocab: int, seed: int = 0) -> torch.LongTensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def error_ratio(got: torch.Tensor, want: torch.Tensor) -> float:
    """RMS of the difference over RMS of the reference, as fla.utils.assert_close measures it."""
    got, want = got.double(), want.double()
    return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()


# (shape, storage dtype, what the reference is given: 'canonical' | 'squeezed' | 'flat_r_k', layer-0 v present)
BLINKDL_CASES = [
    pytest.param(Goose(vocab=300, hidden=64, layers=1, head_size=32), torch.float32, 'canonical', True, id='N32-L1-V300'),
    pytest.param(Goose(vocab=256, hidden=128, layers=3, head_size=64), torch.float32, 'squeezed', True,
                 id='N64-L3-squeezed'),
    pytest.param(Goose(vocab=1000, hidden=256, layers=3, head_size=128, w_rank=64), torch.float32, 'canonical', False,
                 id='N128-L3-V1000-no-layer0-v'),
    pytest.param(Goose(vocab=77, hidden=96, layers=3, head_size=32, ffn=320), torch.bfloat16, 'flat_r_k', True,
                 id='N32-L3-bf16-flat-r_k'),
]


@pytest.mark.parametrize(('shape', 'dtype', 'variant', 'layer0_v'), BLINKDL_CASES)
def test_matches_blinkdl_rwkv_package(shape, dtype, variant, layer0_v, tmp_path):
    sd = make_state_dict(shape, dtype=dtype, seed=11, layer0_v=layer0_v)
    given = {'canonical': sd, 'squeezed': squeeze_vectors(sd), 'flat_r_k': flatten_r_k(sd)}[variant]
    ref = RWKV7Reference(given, head_size=shape.head_size if variant == 'flat_r_k' else None)
    theirs = rwkv_package_model(sd, tmp_path)
    toks = tokens(1, 24, shape.vocab)

    want, state = ref(toks)
    got, their_state = theirs.forward(toks[0].tolist(), None, full_output=True)
    assert (got.double() - want[0]).abs().max().item() <= 1e-4

    # Same recurrent state, in the same layout: token shifts [C] and wkv [H, N(value), N(key)]
    for i in range(shape.layers):
        torch.testing.assert_close(their_state[3 * i].double(), state.att_x_prev[i][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(their_state[3 * i + 1].double(), state.wkv[i][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(their_state[3 * i + 2].double(), state.ffn_x_prev[i][0], atol=1e-5, rtol=1e-5)

    # BlinkDL's one-token path after a prefill
    _, their_state = theirs.forward(toks[0, :-1].tolist(), None)
    last, _ = theirs.forward([toks[0, -1].item()], their_state)
    assert (last.double() - want[0, -1]).abs().max().item() <= 1e-4


@pytest.fixture(scope='module')
def small():
    """A 3-layer head-32 model and its reference in float64."""
    sd = make_state_dict(Goose(vocab=128, hidden=64, layers=3, head_size=32), seed=5)
    return sd, RWKV7Reference(sd)


@pytest.mark.parametrize('cuts', [pytest.param([1], id='1+rest'), pytest.param([7, 8, 20], id='7+1+12+rest')])
def test_prefill_then_decode_equals_one_pass(small, cuts):
    _, ref = small
    toks = tokens(2, 29, 128, seed=1)
    whole, whole_state = ref(toks)
    pieces, state = [], None
    for a, b in zip([0] + cuts, cuts + [toks.shape[1]]):
        logits, state = ref(toks[:, a:b], state)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-12, rtol=1e-12)
    for got, want in zip(state.wkv + state.att_x_prev + state.ffn_x_prev,
                         whole_state.wkv + whole_state.att_x_prev + whole_state.ffn_x_prev):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_forward_leaves_given_state_alone(small):
    _, ref = small
    _, state = ref(tokens(1, 5, 128))
    before = state.clone()
    ref(tokens(1, 3, 128, seed=2), state)
    for got, want in zip(state.wkv + state.att_x_prev, before.wkv + before.att_x_prev):
        assert torch.equal(got, want)


def test_batch_equals_single_runs(small):
    _, ref = small
    toks = tokens(2, 17, 128, seed=3)
    both, _ = ref(toks)
    for b in range(2):
        one, _ = ref(toks[b:b + 1])
        torch.testing.assert_close(both[b:b + 1], one, atol=1e-12, rtol=1e-12)


def test_fp32_close_to_fp64(small):
    sd, ref64 = small
    toks = tokens(2, 40, 128, seed=4)
    want, _ = ref64(toks)
    got, state = RWKV7Reference(sd, dtype=torch.float32)(toks)
    assert got.dtype == torch.float32 and state.wkv[0].dtype == torch.float32
    assert (got.double() - want).abs().max().item() <= 1e-4
    assert error_ratio(got, want) <= 1e-5


def test_trace_records_residual_stream(small):
    _, ref = small
    trace = {}
    logits, _ = ref(tokens(2, 6, 128), trace=trace)
    assert list(trace) == ['ln0'] + [f'blocks.{i}.{m}' for i in range(3) for m in ('att', 'ffn')] + ['ln_out']
    assert all(t.shape == (2, 6, 64) for t in trace.values())
    torch.testing.assert_close(trace['ln_out'] @ ref.head.t(), logits)


def test_layer0_v_is_ignored(small):
    sd, ref = small
    toks = tokens(1, 9, 128)
    unused = ('blocks.0.att.v0', 'blocks.0.att.v1', 'blocks.0.att.v2')
    without = {k: v for k, v in sd.items() if k not in unused}
    garbage = {**sd, **{k: torch.full_like(sd[k], 7.0) for k in unused}}
    want, _ = ref(toks)
    for weights in (without, garbage):
        assert torch.equal(RWKV7Reference(weights)(toks)[0], want)


@pytest.mark.parametrize(('change', 'error'), [
    pytest.param(lambda sd: flatten_r_k(sd), 'head_size', id='flat-r_k-without-head_size'),
    pytest.param(lambda sd: {**sd, 'blocks.0.ffn.s_emb.weight': torch.zeros(128, 1024)}, 'unexpected', id='deep-embed'),
    pytest.param(lambda sd: {k: v for k, v in sd.items() if k != 'blocks.1.att.k_a'}, 'k_a', id='missing-tensor'),
])
def test_rejects_what_it_cannot_run(small, change, error):
    sd, _ = small
    with pytest.raises((ValueError, KeyError), match=error):
        RWKV7Reference(change(sd))


@pytest.mark.parametrize(('shape', 'batch', 'length', 'piece'), [
    pytest.param(Goose(vocab=256, hidden=128, layers=2, head_size=64), 1, 96, 48, id='L2-C128-N64-96tok'),
    pytest.param(Goose(vocab=64, hidden=64, layers=1, head_size=32), 2, 20, 7, id='L1-C64-N32-batch2'),
])
def test_matches_fla(shape, batch, length, piece):
    """fla's RWKV7ForCausalLM in fp32 (recurrent kernels; Triton's interpreter without CUDA), fed in pieces."""
    sd = make_state_dict(shape, seed=3)
    toks = tokens(batch, length, shape.vocab, seed=6)
    # fla_config keeps norm_eps=1e-5, so fla's GroupNorm eps is N * 1e-5 (BlinkDL's 64e-5 only for N = 64)
    want, _ = RWKV7Reference(sd, ln_x_eps=shape.head_size * 1e-5)(toks)
    got = fla_logits(fla_model(sd, dtype=torch.float32), toks, piece=piece).cpu()
    max_diff, ratio = (got.double() - want).abs().max().item(), error_ratio(got, want)
    assert max_diff <= 1e-4, f'max |dlogit| {max_diff:.3e}'
    assert ratio <= 1e-5, f'error ratio {ratio:.3e}'


@pytest.mark.parametrize('head_size', [pytest.param(32, id='N32'), pytest.param(128, id='N128')])
def test_groupnorm_exact_eps_is_closer_than_layernorm_exact(head_size):
    """fla has one norm_eps: LayerNorms use it, GroupNorm uses head_dim * norm_eps; BlinkDL uses 1e-5 and 64e-5.

    Keeping GroupNorm's eps exact (norm_eps = 64e-5 / N) moves logits far less than keeping LayerNorms' exact.
    """
    sd = make_state_dict(Goose(vocab=256, hidden=128, layers=3, head_size=head_size), seed=5)
    toks = tokens(2, 48, 256, seed=1)
    want, _ = RWKV7Reference(sd)(toks)
    layernorm_exact, _ = RWKV7Reference(sd, ln_x_eps=head_size * 1e-5)(toks)
    groupnorm_exact, _ = RWKV7Reference(sd, norm_eps=64e-5 / head_size)(toks)
    ln_diff = (layernorm_exact - want).abs().max().item()
    gn_diff = (groupnorm_exact - want).abs().max().item()
    assert gn_diff < ln_diff / 10, f'GroupNorm-exact {gn_diff:.3e} vs LayerNorm-exact {ln_diff:.3e}'


def test_one_layer_at_a_time_equals_forward(small):
    """`empty` + `embed`/`block`/`final`, fed one layer's tensors at a time (as verify streams them), is `forward`."""
    sd, ref = small
    toks = tokens(2, 11, 128, seed=8)
    want, want_state = ref(toks)
    lean = RWKV7Reference.empty(vocab=128, hidden=64, layers=3, head_size=32)
    assert lean.emb is None and lean.blocks == []  # nothing of the model is held
    state = lean.zero_state(2)
    x = lean.embed(sd['emb.weight'][toks], (sd['blocks.0.ln0.weight'], sd['blocks.0.ln0.bias']))
    v_first = None
    for i in range(3):
        p = {n: lean.shaped(n, sd[f'blocks.{i}.{n}']) for n in lean.block_names(i)}
        _, x, v_first, layer_state = lean.block(i, p, x, v_first, state.layer(i))
        torch.testing.assert_close(layer_state[1], want_state.wkv[i], rtol=0, atol=0)
    got = lean.final(x, (sd['ln_out.weight'], sd['ln_out.bias'])) @ sd['head.weight'].double().t()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert 'att.v0' not in lean.block_names(0) and 'att.v0' in lean.block_names(1)
