"""The torch stand-ins (runtime/torch_wkv.py) against fla's Triton kernels run by the interpreter, cell by cell at tiny
shapes, and fla's RWKV7Block with them installed: the same output, and no Triton kernel launched."""

import pytest
import torch

from fla.rwkv7_convert.runtime import torch_wkv


def _inputs(B, T, H, K, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    r, k, v = rnd(B, T, H, K), rnd(B, T, H, K) * 0.3, rnd(B, T, H, K)
    w = -0.6065306597126334 * torch.sigmoid(rnd(B, T, H, K))
    kk = torch.nn.functional.normalize(rnd(B, T, H, K), dim=-1)
    a = torch.sigmoid(rnd(B, T, H, K))
    h0 = rnd(B, H, K, K) * 0.1
    return r, w, k, v, kk, a, h0


@pytest.mark.parametrize('K', [32, 64, 128])
@pytest.mark.parametrize('T', [1, 5])
@pytest.mark.parametrize('with_h0', [False, True])
def test_recurrence_matches_the_interpreted_kernel(K, T, with_h0):
    from fla.ops.rwkv7 import fused_mul_recurrent_rwkv7
    r, w, k, v, kk, a, h0 = _inputs(2, T, 1 if K == 128 else 2, K, seed=K + T)
    h0 = h0 if with_h0 else None
    want_o, want_s = fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, scale=1., initial_state=h0, output_final_state=True)
    got_o, got_s = torch_wkv.fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, scale=1., initial_state=h0,
                                                       output_final_state=True)
    assert got_s.shape == want_s.shape and got_s.dtype == want_s.dtype == torch.float32
    torch.testing.assert_close(got_o, want_o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_s, want_s, rtol=1e-5, atol=1e-5)


def test_pieces_through_the_state_equal_one_call():
    r, w, k, v, kk, a, h0 = _inputs(1, 7, 2, 32, seed=3)
    whole, s_whole = torch_wkv.fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, initial_state=h0, output_final_state=True)
    o1, s1 = torch_wkv.fused_mul_recurrent_rwkv7(*(x[:, :3] for x in (r, w, k, v, kk, a)), initial_state=h0,
                                                 output_final_state=True)
    o2, s2 = torch_wkv.fused_mul_recurrent_rwkv7(*(x[:, 3:] for x in (r, w, k, v, kk, a)), initial_state=s1,
                                                 output_final_state=True)
    torch.testing.assert_close(torch.cat([o1, o2], 1), whole)
    torch.testing.assert_close(s2, s_whole)


@pytest.mark.parametrize('T', [1, 4])
@pytest.mark.parametrize('with_cache', [False, True])
def test_small_ops_match_the_interpreted_kernels(T, with_cache):
    from fla.modules.l2norm import l2_norm
    from fla.modules.token_shift import token_shift
    from fla.ops.rwkv7.fused_addcmul import fused_addcmul_rwkv7
    from fla.ops.rwkv7.fused_k_update import fused_k_rwkv7
    from fla.ops.rwkv7.gate_output_correction import gate_output_correction
    g = torch.Generator().manual_seed(T)
    B, H, N = 2, 2, 32
    D = H * N
    x, d = torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g)
    cache = torch.randn(B, D, generator=g) if with_cache else None
    for want, got in zip(token_shift(x, None, cache=cache, output_cache=True),
                         torch_wkv.token_shift(x, None, cache=cache, output_cache=True)):
        torch.testing.assert_close(got, want)
    mixes = [torch.randn(D, generator=g) for _ in range(6)]
    for want, got in zip(fused_addcmul_rwkv7(x, d, *mixes), torch_wkv.fused_addcmul_rwkv7(x, d, *mixes)):
        torch.testing.assert_close(got, want)
    a, ka = torch.rand(B, T, D, generator=g), torch.randn(D, generator=g)
    torch.testing.assert_close(torch_wkv.fused_k_rwkv7(x, a, ka), fused_k_rwkv7(x, a, ka))
    x4 = x.view(B, T, H, N)
    torch.testing.assert_close(torch_wkv.l2_norm(x4), l2_norm(x4))
    o, v4, r4 = torch.randn(B, T, D, generator=g), d.view(B, T, H, N), a.view(B, T, H, N)
    rk, gate = torch.randn(H, N, generator=g), torch.randn(B, T, D, generator=g)
    torch.testing.assert_close(torch_wkv.gate_output_correction(o, r4, x4, rk, v4, gate),
                               gate_output_correction(o, r4, x4, rk, v4, gate))


def _tiny_blocks(head_dim):
    from fla.models import RWKV7Config
    from fla.models.rwkv7.modeling_rwkv7 import RWKV7Block
    torch.manual_seed(0)
    cfg = RWKV7Config(hidden_size=2 * head_dim, head_dim=head_dim, num_hidden_layers=2, vocab_size=16,
                      decay_low_rank_dim=8, gate_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=8)
    blocks = [RWKV7Block(cfg, i).eval() for i in range(2)]
    with torch.no_grad():  # fla initialises some of these to zero or one: random values test more
        for b in blocks:
            for name, p in b.named_parameters():
                if p.dim() == 1 or 'norm' in name or 'x_' in name or 'k_' in name or 'r_k' in name:
                    p.add_(torch.randn_like(p) * 0.2)
    return blocks


def _run(blocks, x, pieces):
    from fla.models.utils import Cache
    cache, outs = Cache(), []
    with torch.no_grad():
        for s, e in pieces:
            h, v = x[:, s:e], None
            for b in blocks:
                h, _, cache, v = b(h, past_key_values=cache, use_cache=True, v_first=v)
            outs.append(h)
    return torch.cat(outs, 1)


@pytest.mark.parametrize('head_dim', [32, 64])
def test_fla_blocks_with_the_stand_ins_match_the_kernels_and_launch_none(head_dim, monkeypatch):
    from triton.runtime import interpreter
    blocks = _tiny_blocks(head_dim)
    x = torch.randn(2, 6, 2 * head_dim, generator=torch.Generator().manual_seed(1))
    pieces = [(0, 1), (1, 4), (4, 6)]  # decode, a piece, a piece through the cache
    want = _run(blocks, x, pieces)

    def launched(*args, **kwargs):
        raise AssertionError('a Triton kernel was launched')

    with torch_wkv.installed():
        monkeypatch.setattr(interpreter.GridExecutor, '__call__', launched)
        got = _run(blocks, x, pieces)
        monkeypatch.undo()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_installed_restores_fla():
    from fla.layers import rwkv7
    from fla.modules.norm import layernorm
    before = (rwkv7.fused_mul_recurrent_rwkv7, layernorm.LayerNorm.forward, torch.get_num_threads())
    with torch_wkv.installed(threads=1):
        assert rwkv7.fused_mul_recurrent_rwkv7 is torch_wkv.fused_mul_recurrent_rwkv7
    assert (rwkv7.fused_mul_recurrent_rwkv7, layernorm.LayerNorm.forward, torch.get_num_threads()) == before


def test_the_guard_catches_a_kernel(monkeypatch):
    """The launch guard above can fail: an interpreted kernel outside the stand-ins trips it."""
    from fla.modules.l2norm import l2_norm
    from triton.runtime import interpreter

    def launched(*args, **kwargs):
        raise AssertionError('a Triton kernel was launched')
    monkeypatch.setattr(interpreter.GridExecutor, '__call__', launched)
    with pytest.raises(AssertionError, match='launched'):
        l2_norm(torch.randn(1, 3, 2, 32))


def test_float64_inputs_are_computed_in_float64():
    """The exact proof's stand-ins: float64 in, float64 arithmetic and state out (float32 in: float32, as the kernels)."""
    r, w, k, v, kk, a, h0 = (x.double() for x in _inputs(1, 6, 2, 32, seed=5))
    o64, s64 = torch_wkv.fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, initial_state=h0, output_final_state=True)
    o32, s32 = torch_wkv.fused_mul_recurrent_rwkv7(*(x.float() for x in (r, w, k, v, kk, a)),
                                                   initial_state=h0.float(), output_final_state=True)
    assert o64.dtype == s64.dtype == torch.float64 and o32.dtype == s32.dtype == torch.float32
    # the recurrence written out in float64: S = diag(exp w) S + (kk*a)(-kk^T S)... per fla's [K, V] state
    s = h0.clone()
    for t in range(6):
        sa = torch.einsum('bhk,bhkv->bhv', -kk[:, t], s)
        s = (w[:, t].exp()[..., None] * s + (kk[:, t] * a[:, t])[..., None] * sa[:, :, None, :]
             + k[:, t, :, :, None] * v[:, t, :, None, :])
    torch.testing.assert_close(s64, s, rtol=0, atol=1e-13)
    assert (s32.double() - s).abs().max() > 1e-9  # float32 really rounds: the float64 path is not the same numbers
    x = torch.randn(2, 3, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch_wkv.l2_norm(x).dtype == torch.float64
    torch.testing.assert_close(torch_wkv.l2_norm(x), x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6), rtol=0,
                               atol=1e-15)


def test_fla_squared_relu_keeps_float64_inside_installed():
    """fla's sqrelu squares in float32 whatever its input: the last float32 island, replaced while installed."""
    from fla.modules.activations import sqrelu
    x = torch.tensor([1 + 2 ** -40, -3.0, 0.5], dtype=torch.float64)
    want = torch.relu(x) ** 2
    with torch_wkv.installed():
        got = sqrelu(x)
    assert got.dtype == torch.float64 and torch.equal(got, want)
    assert not torch.equal(sqrelu(x), want)  # restored: fla's own rounds through float32


def test_a_precise_kernel_computes_in_float64_and_rounds_once():
    """installed(precise=...): the measurement benchmarks/benchmark_kernels.py makes of each kernel's rounding."""
    from fla.modules import LayerNorm
    norm = LayerNorm(64, eps=1e-5, bias=True)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(4)) * 100 + 1000  # cancellation-prone
    want = torch.nn.functional.layer_norm(x.double(), (64,), norm.weight.double(), norm.bias.double(), 1e-5).float()
    with torch_wkv.installed():
        rounded = norm(x)
    with torch_wkv.installed(precise=frozenset({'layer_norm'})):
        exact = norm(x)
    assert exact.dtype == rounded.dtype == torch.float32
    assert torch.equal(exact, want) and not torch.equal(rounded, want)
    with pytest.raises(ValueError, match='not in'):
        with torch_wkv.installed(precise=frozenset({'softmax'})):
            pass
