"""The merge formulas of RWKV-PEFT's adapters, as the table declares them (adapter_methods.ADAPTER_METHODS): each takes the
target weight W [out, in] and the adapter's factors (torch tensors, by suffix) and returns the merged W.

Each is the same torch operations, in the same order and with the same in-place or out-of-place steps, as RWKV-PEFT's
merge scripts (cited on each method in adapter_methods.py), so that the result is theirs bit for bit on the CPU, dtype
promotion included: an in-place `+=` keeps W's dtype, an out-of-place `+` promotes, PiSSA's residual is rounded to
bfloat16 before the trained product is added. Run on 'meta' tensors, the same functions give the merged dtype without
reading any data (`merged_dtype`).

torch is imported inside the functions: the converter imports this module without needing torch until a merge runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fla.rwkv7_convert.formats.dtypes import TORCH_DTYPE, TORCH_NAME

Factors = Mapping[str, 'object']  # suffix -> torch.Tensor


def lora(W, f: Factors, alpha: float | None):
    """W += B @ A * (alpha / r), in place (W keeps its dtype); r is lora_B's second axis."""
    B, A = f['lora_B'], f['lora_A']
    W += B @ A * (alpha / B.shape[1])
    return W


def pissa(W, f: Factors, alpha: float | None):
    """W = bf16(W - B0 @ A0), then W += B @ A in place: no scaling (PiSSA trains B, A from the SVD's own scale)."""
    import torch
    W = (W - f['init_lora_B'] @ f['init_lora_A']).to(dtype=torch.bfloat16)
    W += f['lora_B'] @ f['lora_A']
    return W


def bone(W, f: Factors, alpha: float | None):
    """W[o, j*r + i] += disha[i, o]: every r-column block of W gets disha transposed; a last partial block its first
    columns. Out of place (dtype promoted) when r divides in, in place in the two slices when it does not."""
    D = f['disha']
    r, n_in = D.shape[0], W.shape[-1]
    if n_in % r == 0:
        blocks = W.reshape(-1, n_in // r, r).permute(1, 2, 0) + D
        return blocks.permute(2, 0, 1).reshape(*W.shape)
    full = (n_in // r) * r
    W[:, :full] = (W[:, :full].reshape(-1, n_in // r, r).permute(1, 2, 0) + D).permute(2, 0, 1).reshape(-1, full)
    W[:, full:] = W[:, full:] + D.transpose(0, 1)[:, :n_in - full]
    return W


def bat(W, f: Factors, alpha: float | None):
    """Each r x r block W[a, b] += W[a, b] @ disha[b] + disha[b] (disha [in/r, r, r]: one per input block), in place."""
    D = f['disha']
    r = D.shape[1]
    out, n_in = W.shape
    blocks = W.reshape(out // r, r, n_in // r, r).permute(0, 2, 1, 3)  # [a, b, r1, r2]
    delta = blocks @ D + D
    W += delta.permute(0, 2, 1, 3).reshape(out, n_in)
    return W


def pissa_exact(W, f: Factors, alpha: float | None):
    """W - B0 @ A0 + B @ A in W's dtype: PiSSA's function without the bf16 rounding its merge script adds (the
    function a PEFT LoRA of rank 2r, [A; A0] and [B, -B0], computes)."""
    return W - f['init_lora_B'] @ f['init_lora_A'] + f['lora_B'] @ f['lora_A']


Merge = Callable[..., object]

# merges whose scripts round on the way (to the storage dtype they save): the function they approximate, for the
# exact proof of an adapter carried as a PEFT adapter (proof/peft_form.py); the others are exact in float64 as written
EXACT: dict = {pissa: pissa_exact}


def exact(merge: Merge) -> Merge:
    """`merge`'s function without its script's rounding (in the inputs' dtype: float64 for the exact proof)."""
    return EXACT.get(merge, merge)


def merged_dtype(merge: Merge, W: tuple[tuple[int, ...], str], factors: Mapping[str, tuple[tuple[int, ...], str]],
                 alpha: float | None) -> str:
    """The safetensors dtype `merge` gives for a W and factors of these (shape, dtype), from a run on 'meta' tensors
    (no data). Raises RuntimeError where torch itself refuses (a matmul of two dtypes, as RWKV-PEFT's merge would)."""
    import torch

    def meta(shape, dtype):
        return torch.empty(shape, dtype=getattr(torch, TORCH_NAME[dtype]), device='meta')

    out = merge(meta(*W), {k: meta(*v) for k, v in factors.items()}, 1.0 if alpha is None else alpha)
    return TORCH_DTYPE[str(out.dtype).removeprefix('torch.')]
