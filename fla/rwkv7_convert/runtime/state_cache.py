"""A converted tuned state (formats/state_file.py) as what fla's RWKV7ForCausalLM runs from: its cache.

fla keeps, per layer, `recurrent_state` [B, H, K, V] (float32), `conv_state` (the time mix's token shift) and
`ffn_state` (the channel mix's). A tuned state sets only the wkv part; both token shifts start at zero, which fla
does when they are absent. The cache is filled by every forward call, so each generation needs a fresh one:
`initial_cache` builds a new one each time it is called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.dtypes import to_float32
from fla.rwkv7_convert.formats.state_file import read_state_file

# numpy, torch and fla's Cache are imported inside the functions: api.py (so the command line) imports this module

StateLike = str | os.PathLike | Sequence[Any] | Any  # a state file or directory, [L, H, K, V], or a list of [H, K, V]


def load_initial_state(path: str | os.PathLike):
    """The per-layer states of a state file (or of the one in a converted directory) as one float32 tensor
    [L, H, K, V], in fla's orientation. Raises ConversionError (one line) for a file that is not one."""
    import numpy as np
    import torch

    sf = read_state_file(path)
    try:
        return torch.from_numpy(np.stack([to_float32(ref.load(), ref.dtype) for ref in sf.layers]))
    finally:
        sf.close()


def _as_layers(state: StateLike) -> list:
    import torch

    if isinstance(state, (str, os.PathLike)):
        return list(load_initial_state(state).unbind(0))
    if isinstance(state, torch.Tensor):
        if state.dim() != 4:
            raise ConversionError(f'initial state: expected a [L, H, K, V] tensor, got shape {list(state.shape)}')
        return list(state.unbind(0))
    layers = list(state)
    if not all(isinstance(t, torch.Tensor) for t in layers):
        raise ConversionError('initial state: expected a path, a [L, H, K, V] tensor or a list of [H, K, V] tensors')
    return layers


def initial_cache(model: Any, state: StateLike, batch_size: int = 1, device: Any = None):
    """A fresh fla Cache that starts every one of `batch_size` sequences from `state` (a state file or directory, a
    [L, H, K, V] tensor, or a list of [H, K, V] tensors, fla's orientation), for `model(..., past_key_values=cache,
    use_cache=True)` or `model.generate(..., past_key_values=cache)`. The state's layer count, head count and head
    size must be the model's (one-line ConversionError otherwise). A cache is consumed by the run it seeds."""
    cfg = model.config
    layers = _as_layers(state)
    heads = cfg.hidden_size // cfg.head_dim
    want = (cfg.num_hidden_layers, heads, cfg.head_dim, cfg.head_dim)
    got = (len(layers), *(tuple(layers[0].shape) if layers else ()))
    if got != want or any(t.shape != layers[0].shape for t in layers):
        shapes = sorted({tuple(t.shape) for t in layers})
        raise ConversionError(f'initial state: {len(layers)} layer(s) of {[list(s) for s in shapes]} do not fit the model '
                              f'({want[0]} layers of [H={want[1]}, K={want[2]}, V={want[3]}])')
    if batch_size < 1:
        raise ConversionError(f'initial state: batch_size={batch_size}, expected 1 or more')
    if device is None:
        device = next(model.parameters()).device
    return seeded_cache(layers, batch_size, device)


def seeded_cache(layers: Sequence[Any], batch_size: int, device: Any, dtype: Any = None):
    """A fresh fla Cache whose layer i starts from `layers[i]` ([H, K, V], fla's orientation) for each of `batch_size`
    sequences, in float32 as fla keeps it (or `dtype`: float64 for the exact proof); no checks (initial_cache checks
    against a model; verify's streaming
    pair, which runs fla's blocks one at a time, has checked the state against the directory's config)."""
    import torch
    from fla.models.utils import Cache

    # every key fla's layers index, the token shifts None (= zeros: no previous token)
    seeded = [{'recurrent_state': t.to(device=device, dtype=dtype or torch.float32).unsqueeze(0).expand(batch_size, *t.shape)
               .contiguous(), 'attn_state': None, 'conv_state': None, 'ffn_state': None} for t in layers]
    return Cache.from_legacy_cache(seeded, seen_tokens=0)
