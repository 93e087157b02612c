"""Running fla's RWKV7ForCausalLM where we verify: on CUDA with its kernels, or on the CPU through Triton's interpreter.

fla's Triton kernels run on the CPU under `TRITON_INTERPRET=1` if the autotuner does not time its configs (the
interpreter has no benchmarker) and fla does not cache autotune results; both variables are read when triton is
imported, so `use_interpreter()` must run before anything imports triton or fla's models. Only fla's recurrent
kernel works there, and fla takes it for eval-mode, no-grad calls of fewer than 64 tokens, so `fla_logits` feeds
longer sequences in pieces through the cache.
"""

from __future__ import annotations

import os
import sys

from fla.rwkv7_convert.runtime import interpreter

# torch is imported inside the functions: the command line imports this module on its light path (verify's backends),
# and torch costs ~1.3 s to import there

# fla picks its recurrent kernel only below 64 tokens per call; the chunk kernels fail when interpreted. The one name
# for this fact: verify's CPU backends feed this many by default, the CPU guard and the parity matrix use it.
RECURRENT_MAX_TOKENS = 63
# tokens per call on the CPU where the caller does not choose (fla_logits, generate's prompt): under the limit above
PROMPT_PIECE = 48


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def interpreter_ready() -> bool:
    """Whether Triton's CPU interpreter is chosen, or can still be: TRITON_INTERPRET=1 was set, or triton is not
    imported yet (`import fla` and `import fla.rwkv7_convert.api` import it, so from a script it must be set before
    Python starts)."""
    return os.environ.get('TRITON_INTERPRET') == '1' or 'triton' not in sys.modules


def use_interpreter() -> bool:
    """Route Triton to its CPU interpreter when there is no CUDA device; returns whether it is in use."""
    if cuda_available():
        return os.environ.get('TRITON_INTERPRET') == '1'
    if 'triton' in sys.modules and os.environ.get('TRITON_INTERPRET') != '1':
        raise RuntimeError('triton was imported before TRITON_INTERPRET=1 was set; call use_interpreter() earlier')
    os.environ.setdefault('TRITON_INTERPRET', '1')
    os.environ.setdefault('FLA_CACHE_RESULTS', '0')

    interpreter.install()  # untimed autotuning (fewest programs), triton.language patched once: interpreter.py
    return True


def fla_logits(model, tokens, piece: int | None = None, hook=None, cache=None):
    """Logits [B, T, V] of `model` for tokens [B, T]; in pieces through the cache on the CPU (or when `piece` is set).

    `hook(start)` is called before each piece, so callers can tag what forward hooks capture. `cache`: where the
    sequences start (a tuned state: runtime.state_cache.initial_cache); it is consumed. Default: zero states.
    """
    import torch

    device = next(model.parameters()).device
    if piece is None:
        piece = PROMPT_PIECE if device.type == 'cpu' else tokens.shape[1]
    if device.type == 'cpu' and not 1 <= piece <= RECURRENT_MAX_TOKENS:
        raise ValueError(f'piece={piece}: on the CPU fla only runs pieces of 1..{RECURRENT_MAX_TOKENS} tokens')
    outs = []
    with torch.no_grad():
        for start in range(0, tokens.shape[1], piece):
            if hook is not None:
                hook(start)
            # return_dict=False: transformers 5 is renaming the output's past_key_values to `cache`
            logits, cache = model(input_ids=tokens[:, start:start + piece].to(device), past_key_values=cache,
                                  use_cache=True, return_dict=False)[:2]
            outs.append(logits)
    return torch.cat(outs, dim=1)
