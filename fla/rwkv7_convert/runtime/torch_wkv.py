"""torch stand-ins for the Triton kernels fla's RWKV-7 modules launch in a verification: the "fla modules, torch wkv"
backend (backends.TorchWkv).

fla's own modules run (RWKV7Block, its attention and FFN, the LoRAs, LayerNorm and GroupNorm modules); only the
functions they call into Triton are replaced, each by a torch function with the kernel's contract (same arguments,
same outputs, same state layout), written from the kernels' semantics, computing in float32 (float64 for float64
inputs: the exact proof, verify's default) and returning the kernel's output dtype. The kernels a block launches
(counted under the interpreter: tests/runtime/test_torch_wkv.py): layer_norm_fwd (LayerNorm and GroupNorm),
token_shift_fwd, fused_addcmul_fwd, l2norm_fwd, k_update_fwd, fused_recurrent_rwkv7_fwd and
gate_output_correction_fwd; chunk_rwkv7 (>= 64 tokens a call) gets the same recurrence. fla's squared ReLU (the
FFN's `sqrelu`, fla/modules/activations/ops.py `sqrelu_fwd`) squares in float32 whatever its input: the last float32
island of fla's RWKV-7 modules, replaced by the same function in the input's precision. `installed()` patches the
names where fla's modules look them up and restores them on exit.

The recurrence (fla ops/rwkv7 fused_recurrent, state S [N, H, K, V] in float32, w the log decay):
    S_t = exp(w_t)[:, None] * S + b_t[:, None] (a_t^T S) + k_t v_t^T,    o_t = (scale r_t)^T S_t
with a = -kk and b = kk * a_gate for fused_mul_recurrent_rwkv7 (a and b given for chunk_rwkv7).
"""

from __future__ import annotations

import contextlib

from fla.rwkv7_convert.runtime.loading import ensure_real_fla

# torch and fla's modules are imported inside the functions: the command line imports this module on its light path
# (seconds), and fla's modules come after ensure_real_fla and the interpreter's variables

NAME = 'fla modules, torch wkv'


def wkv(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None):
    """o [B, T, H, V] (v's dtype) and the final state [N, H, K, V] float32 (or None) for [B, T, H, K] inputs."""
    import torch
    if cu_seqlens is not None:  # [1, total, ...] holding N sequences back to back
        bounds = cu_seqlens.tolist()
        outs, finals = [], []
        for n in range(len(bounds) - 1):
            s, e = bounds[n], bounds[n + 1]
            h0 = None if initial_state is None else initial_state[n:n + 1]
            o, ht = wkv(*(x[:, s:e] for x in (r, w, k, v, a, b)), scale=scale, initial_state=h0,
                        output_final_state=True)
            outs.append(o)
            finals.append(ht)
        return torch.cat(outs, 1), (torch.cat(finals, 0) if output_final_state else None)
    B, T, H, K = r.shape
    V = v.shape[-1]
    f = compute_dtype(v)
    r, w, k, v, a, b = (x.to(f) for x in (r, w, k, v, a, b))
    r = r * scale
    s = torch.zeros(B, H, K, V, dtype=f, device=v.device) if initial_state is None else initial_state.to(f).clone()
    out = torch.empty(B, T, H, V, dtype=f, device=v.device)
    decay = torch.exp(w)
    for t in range(T):
        sa = torch.einsum('bhk,bhkv->bhv', a[:, t], s)
        s = decay[:, t, :, :, None] * s + b[:, t, :, :, None] * sa[:, :, None, :] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out[:, t] = torch.einsum('bhk,bhkv->bhv', r[:, t], s)
    return out.to(v.dtype), (s if output_final_state else None)


def compute_dtype(x):
    """What the stand-ins compute in for `x`: float32 as the kernels do, float64 for float64 inputs."""
    import torch
    return torch.promote_types(x.dtype, torch.float32)


def fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, scale=1.0, initial_state=None, output_final_state=False,
                              reverse=False, cu_seqlens=None):
    if reverse:
        raise NotImplementedError('torch wkv: reverse=True is not a verification path')
    if scale is None:
        scale = r.shape[-1] ** -0.5
    f = compute_dtype(kk)
    kk32 = kk.to(f)
    return wkv(r, w, k, v, -kk32, kk32 * a.to(f), scale, initial_state, output_final_state, cu_seqlens)


def chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=True, cu_seqlens=None, **_tiling):
    """The chunk kernel's function (its chunk_size, safe_gate, lower_bound only choose how it tiles the same sum)."""
    if scale is None:
        scale = r.shape[-1] ** -0.5
    return wkv(r, w, k, v, a, b, scale, initial_state, output_final_state, cu_seqlens)


def token_shift(x, cu_seqlens=None, cache=None, output_cache=False, chunk_indices=None):
    """delta = previous token - x (the previous of token 0: `cache` [N, D], else zero); the cache out: the last token."""
    import torch
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        parts = [token_shift(x[:, s:e], cache=None if cache is None else cache.reshape(-1, x.shape[-1])[n:n + 1],
                             output_cache=True) for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:]))]
        delta = torch.cat([p[0] for p in parts], 1)
        return (delta, torch.cat([p[1] for p in parts], 0)) if output_cache else delta
    B, T, D = x.shape
    first = torch.zeros(B, 1, D, dtype=x.dtype, device=x.device) if cache is None else cache.reshape(B, 1, D).to(x.dtype)
    delta = torch.cat([first, x[:, :-1]], 1) - x
    return (delta, x[:, -1].clone()) if output_cache else delta


def fused_addcmul_rwkv7(hidden_states, delta, xr, xw, xk, xv, xa, xg=None):
    """hidden + delta * mix for each of the six (five without xg: None in its place)."""
    f, c = hidden_states.dtype, compute_dtype(hidden_states)
    h, d = hidden_states.to(c), delta.to(c)
    return tuple(None if m is None else (h + d * m.to(c)).to(f) for m in (xr, xw, xk, xv, xa, xg))


def fused_k_rwkv7(k, a, ka, cu_seqlens=None, cu_seqlens_cpu=None):
    """k * (1 + (a - 1) * k_a)."""
    c = compute_dtype(k)
    return (k.to(c) * (1 + (a.to(c) - 1) * ka.to(c))).to(k.dtype)


def l2_norm(x, eps=1e-6, output_dtype=None):
    """x / sqrt(sum(x^2) + eps) over the last dimension."""
    import torch
    x32 = x.to(compute_dtype(x))
    y = x32 / torch.sqrt((x32 * x32).sum(-1, keepdim=True) + eps)
    return y.to(output_dtype or x.dtype)


def gate_output_correction(o, r, k, r_k, v, g):
    """(o + ((r * k * r_k).sum(-1) * v).view_as(o)) * g, with r, k, v [B, T, H, D] and r_k [H, D]."""
    c = compute_dtype(o)
    corr = ((r.to(c) * k.to(c) * r_k.to(c)).sum(-1, keepdim=True) * v.to(c)).reshape(o.shape)
    return ((o.to(c) + corr) * g.to(c)).to(o.dtype)


def _norm(x, weight, bias, eps, residual, prenorm, residual_in_fp32, groups, rms):
    """fla's layer_norm/group_norm functions: (x + residual) normalised per group in float32 (float64 for float64),
    times weight plus bias; with `prenorm` also the sum x + residual (in the residual's dtype, at least float32 with
    residual_in_fp32)."""
    import torch
    shape = x.shape
    c = compute_dtype(x)
    s = x.to(c) if residual is None else x.to(c) + residual.to(c)
    g = s.reshape(*shape[:-1], groups, shape[-1] // groups)
    if rms:
        y = g * torch.rsqrt((g * g).mean(-1, keepdim=True) + eps)
    else:
        c = g - g.mean(-1, keepdim=True)
        y = c * torch.rsqrt((c * c).mean(-1, keepdim=True) + eps)
    y = y.reshape(shape)
    if weight is not None:
        y = y * weight.to(c)
    if bias is not None:
        y = y + bias.to(c)
    y = y.to(x.dtype)
    if not prenorm:
        return y
    res_dtype = residual.dtype if residual is not None else (c if residual_in_fp32 else x.dtype)
    return y, s.to(res_dtype)


def _layer_norm_forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
    return _norm(x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32, 1, False)


def _group_norm_forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
    return _norm(x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32, self.num_groups,
                 self.is_rms_norm)


def sqrelu_fwd(x):
    """relu(x)^2 in x's precision, at least float32 (fla's squares in float32 and returns x's dtype)."""
    import torch
    r = torch.relu(x.to(compute_dtype(x)))
    return (r * r).to(x.dtype)


def _patches() -> list[tuple[object, str, object]]:
    ensure_real_fla()  # the command line starts with fla a light namespace (rwkv7_convert_entry)
    from fla.layers import rwkv7 as layer
    from fla.models.rwkv7 import modeling_rwkv7 as model
    from fla.modules.activations import ops as activations
    from fla.modules.norm import layernorm
    ours = {'l2_norm': l2_norm, 'token_shift': token_shift, 'chunk_rwkv7': chunk_rwkv7,
            'fused_mul_recurrent_rwkv7': fused_mul_recurrent_rwkv7, 'fused_addcmul_rwkv7': fused_addcmul_rwkv7,
            'fused_k_rwkv7': fused_k_rwkv7, 'gate_output_correction': gate_output_correction}
    return ([(layer, n, f) for n, f in ours.items()] + [(model, 'token_shift', token_shift)]
            + [(layernorm.LayerNorm, 'forward', _layer_norm_forward), (layernorm.GroupNorm, 'forward', _group_norm_forward)]
            + [(activations, 'sqrelu_fwd', sqrelu_fwd)])


# the stand-ins by the kernel they replace, for `installed(precise=...)`: which kernel's float32 rounding dominates
KERNELS = {'layer_norm': ('forward@LayerNorm',), 'group_norm': ('forward@GroupNorm',), 'l2_norm': ('l2_norm',),
           'wkv': ('chunk_rwkv7', 'fused_mul_recurrent_rwkv7'), 'token_shift': ('token_shift',),
           'addcmul': ('fused_addcmul_rwkv7',), 'k_update': ('fused_k_rwkv7',),
           'gate_correction': ('gate_output_correction',), 'sqrelu': ('sqrelu_fwd',)}


def _precise(f):
    """`f` computed in float64 on float32 inputs, its outputs rounded back to float32 once: a kernel without rounding
    of its own (benchmarks/benchmark_kernels.py measures each kernel's share of the float32 error this way)."""
    import torch

    def up(x):
        return x.double() if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x

    def down(y):
        return y.float() if isinstance(y, torch.Tensor) and y.dtype == torch.float64 else y

    def run(*args, **kwargs):
        out = f(*map(up, args), **{k: up(v) for k, v in kwargs.items()})
        return tuple(map(down, out)) if isinstance(out, tuple) else down(out)
    return run


def _key(obj, name: str) -> str:
    return f'{name}@{obj.__name__}' if isinstance(obj, type) else name


@contextlib.contextmanager
def installed(threads: int | None = None, precise: frozenset[str] = frozenset()):
    """fla's modules call the torch stand-ins inside the block (and torch uses `threads` threads); restored after.
    `precise`: names of KERNELS whose stand-ins compute in float64 even on float32 inputs (a measurement)."""
    import torch
    unknown = set(precise) - set(KERNELS)
    if unknown:
        raise ValueError(f'precise: {sorted(unknown)} not in {sorted(KERNELS)}')
    exact = {key for k in precise for key in KERNELS[k]}
    saved = [(obj, name, obj.__dict__[name]) for obj, name, _ in _patches()]
    old_threads = torch.get_num_threads()
    try:
        for obj, name, f in _patches():
            setattr(obj, name, _precise(f) if _key(obj, name) in exact else f)
        if threads:
            torch.set_num_threads(threads)
        yield
    finally:
        for obj, name, f in saved:
            setattr(obj, name, f)
        torch.set_num_threads(old_threads)
