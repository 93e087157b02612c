"""Running a converted directory: load it with its tokenizer, and generate, on a GPU or on the CPU.

On the CPU fla's kernels run either as torch stand-ins (torch_wkv.py, device 'cpu-torch', the default there: no
environment variables) or under Triton's interpreter (device.py, device 'cpu'), which must be chosen before triton is
imported, computes with numpy (no bfloat16: NaN logits) and runs only fla's recurrent kernel, which fla picks below
64 tokens per call. `load_model` loads in float32 there; `generate` feeds the prompt in pieces through the cache. On
a GPU `generate` is `model.generate`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.runtime.device import PROMPT_PIECE, cuda_available, interpreter_ready, use_interpreter
from fla.rwkv7_convert.runtime.loading import load_fla_model
from fla.rwkv7_convert.runtime.state_cache import initial_cache
from fla.rwkv7_convert.runtime.torch_wkv import installed

# torch and transformers are imported inside the functions: api.py (imported by the command line) imports this module,
# and they cost seconds to import there

_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json')


def _torch_dtype(dtype):
    import torch
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {'float32': torch.float32, 'fp32': torch.float32, 'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16,
                'float16': torch.float16, 'fp16': torch.float16}[str(dtype).lower()]
    except KeyError:
        raise ConversionError(f'dtype={dtype!r}: expected float32, bfloat16 or float16') from None


CPU_DEVICES = ('cpu', 'cpu-torch')  # load_model's CPU choices, as verify's --device names them


def resolve_device(device: str) -> str:
    """device='auto': 'cuda' where torch sees a GPU (and Triton's interpreter was not asked for); on the CPU 'cpu'
    (Triton's interpreter) when TRITON_INTERPRET=1 was set before Python started, else 'cpu-torch' (no variables)."""
    if device != 'auto':
        return device
    if os.environ.get('TRITON_INTERPRET') == '1':
        return 'cpu'
    return 'cuda' if cuda_available() else 'cpu-torch'


def _check_device(device: str, model_dir: Path) -> None:
    """One line, in this API's terms, for a device that cannot run here."""
    if device == 'cpu' and not interpreter_ready():
        raise ConversionError("device='cpu' runs fla's Triton kernels through Triton's CPU interpreter, which must be "
                              'chosen before triton is imported, and this process has imported it (import fla does); '
                              "use device='cpu-torch' (fla's modules with torch stand-ins for the kernels; no "
                              'environment variables), or start Python with TRITON_INTERPRET=1 FLA_CACHE_RESULTS=0',
                              str(model_dir))
    if device.startswith('cuda') and not cuda_available():
        raise ConversionError(f"device={device!r}: torch sees no CUDA device; use device='cpu-torch' (or 'auto')",
                              str(model_dir))
    if device not in CPU_DEVICES and not device.startswith('cuda'):
        raise ConversionError(f"device={device!r}: expected 'auto', 'cpu', 'cpu-torch' or 'cuda'", str(model_dir))


def with_torch_wkv(model):
    """`model` (on the CPU) runs every forward call with fla's Triton kernels replaced by the torch stand-ins of
    torch_wkv.py (verify's cpu-torch backend): no interpreter, no environment variables, any number of tokens a call."""
    forward = model.forward

    @functools.wraps(forward)
    def run(*args, **kwargs):
        with installed():
            return forward(*args, **kwargs)

    model.forward = run
    model.rwkv7_torch_wkv = True  # cpu_guard: no interpreter limits apply
    return model


def load_model(model_dir: str | os.PathLike, device: str = 'auto', dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a converted directory: an eval-mode RWKV7ForCausalLM on `device` and the directory's
    tokenizer (None when it has none).

    device: 'auto' (default): 'cuda' on a GPU; on the CPU 'cpu-torch', or 'cpu' when Python was started with
        TRITON_INTERPRET=1 FLA_CACHE_RESULTS=0. 'cpu-torch': fla's modules with torch stand-ins for its Triton
        kernels (runtime/torch_wkv.py), no environment variables needed. 'cpu': fla's Triton kernels through Triton's
        interpreter (those two variables set before Python starts; under 64 tokens a call). On the CPU the weights are
        loaded in float32 (bfloat16 and float16 are refused); on 'cuda' dtype None keeps the stored dtype.
    Raises ConversionError (one line) for what cannot run.
    """
    model_dir = Path(model_dir)
    if not (model_dir / 'config.json').is_file():
        raise ConversionError('not a converted directory: config.json is missing', str(model_dir))
    dtype = _torch_dtype(dtype)
    device = resolve_device(str(device))
    _check_device(device, model_dir)
    if device in CPU_DEVICES:
        import torch
        if dtype not in (None, torch.float32):
            raise ConversionError(f'dtype={str(dtype).replace("torch.", "")} on the CPU: Triton\'s interpreter computes '
                                  'with numpy, which has no bfloat16 (NaN logits; generate returns [0, 0, ...]); load '
                                  "with dtype=float32 on the CPU, or run bf16/fp16 on a GPU (device='cuda')",
                                  str(model_dir))
        dtype = torch.float32
        if device == 'cpu':
            use_interpreter()
    model = load_fla_model(model_dir, dtype=dtype, device='cpu' if device in CPU_DEVICES else device)
    if device == 'cpu-torch':
        model = with_torch_wkv(model)
    tokenizer = None
    if any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model, tokenizer


def _stop_ids(model, eos_token_id) -> set[int]:
    if eos_token_id is None:
        eos_token_id = getattr(model.generation_config, 'eos_token_id', None)
    if eos_token_id is None:
        return set()
    return {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(i) for i in eos_token_id}


def _next_tokens(logits, do_sample: bool, temperature: float, generator):
    import torch
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _generate_cpu(model, ids, max_new_tokens: int, stop: set[int], pad: int, do_sample: bool, temperature: float,
                  seed: int | None, cache=None):
    """Prompt in pieces of at most PROMPT_PIECE tokens, then one token per call, all through fla's recurrent cache (which
    starts from a tuned state when `cache` is one: runtime.state_cache.initial_cache)."""
    import torch
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    logits = None
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    out = ids
    with torch.no_grad():
        for start in range(0, ids.shape[1], PROMPT_PIECE):
            logits, cache = model(input_ids=ids[:, start:start + PROMPT_PIECE], past_key_values=cache, use_cache=True,
                                  return_dict=False)[:2]
        for _ in range(max_new_tokens):
            token = _next_tokens(logits[:, -1], do_sample, temperature, generator)
            token = torch.where(done, torch.full_like(token, pad), token)
            out = torch.cat([out, token[:, None]], dim=1)
            done |= torch.tensor([int(t) in stop for t in token])
            if bool(done.all()):
                break
            logits, cache = model(input_ids=token[:, None], past_key_values=cache, use_cache=True, return_dict=False)[:2]
    return out


def generate(model: Any, tokenizer_or_ids: Any, max_new_tokens: int = 16, *, prompt: str | None = None,
             chat: bool = False, do_sample: bool = False, temperature: float = 1.0,
             eos_token_id: int | list[int] | None = None, seed: int | None = None, state: Any = None) -> Any:
    """Continue a prompt with `model` (from load_model); greedy unless `do_sample`.

    tokenizer_or_ids: token ids (a LongTensor [B, T] or a list of ints): returns the ids, prompt and new tokens,
        [B, T + new], as `model.generate` does; or a tokenizer with `prompt` text: returns the new text. With `chat`
        the prompt is one user turn through the tokenizer's chat template.
    eos_token_id: an id or ids that end a row; None takes generation_config.json's.
    state: start every row from a tuned initial state (a converted directory or state directory holding
        rwkv7_state.safetensors, the file, or a [L, H, K, V] tensor: runtime.state_cache.initial_cache); None: zero states.
    On the CPU the prompt goes in pieces of under 64 tokens through the cache (fla's recurrent kernel is the one the
    interpreter runs); on a GPU this is `model.generate`.
    """
    import torch
    tokenizer = None
    if isinstance(tokenizer_or_ids, torch.Tensor | list | tuple):
        ids = torch.as_tensor(tokenizer_or_ids, dtype=torch.long)
        ids = ids[None] if ids.dim() == 1 else ids
    elif tokenizer_or_ids is None:  # load_model's tokenizer for a directory without one
        raise ConversionError('generate: no tokenizer (the directory load_model read has none), so prompt text cannot be '
                              'encoded; pass token ids instead: generate(model, [[1, 2, 3]], 16)')
    else:
        tokenizer = tokenizer_or_ids
        if prompt is None:
            raise ConversionError('generate: given a tokenizer, pass the text as prompt=...')
        if chat:
            ids = tokenizer.apply_chat_template([{'role': 'user', 'content': prompt}], add_generation_prompt=True,
                                                return_tensors='pt', return_dict=True)['input_ids']
        else:
            ids = tokenizer(prompt, return_tensors='pt')['input_ids']
    if ids.numel() == 0:
        raise ConversionError('generate: the prompt has no tokens')
    rows = model.get_input_embeddings().weight.shape[0]
    if int(ids.max()) >= rows or int(ids.min()) < 0:
        raise ConversionError(f'generate: token ids must be in 0..{rows - 1} (the model has {rows} embedding rows), '
                              f'got {int(ids.min())}..{int(ids.max())}')
    device = next(model.parameters()).device
    stop = _stop_ids(model, eos_token_id)
    cache = None
    if state is not None:
        cache = initial_cache(model, state, batch_size=ids.shape[0], device=device)
    if device.type == 'cpu':
        pad = getattr(model.generation_config, 'pad_token_id', None) or 0
        out = _generate_cpu(model, ids, max_new_tokens, stop, pad, do_sample, temperature, seed, cache)
    else:
        if seed is not None:
            torch.manual_seed(seed)
        kwargs = {'temperature': temperature} if do_sample else {}
        if cache is not None:
            kwargs['past_key_values'] = cache
        out = model.generate(ids.to(device), max_new_tokens=max_new_tokens, do_sample=do_sample,
                             eos_token_id=sorted(stop) or None, **kwargs).cpu()
    if tokenizer is None:
        return out
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
