"""One clear error instead of an obscure failure or silent NaN when fla's RWKV-7 runs on the CPU.

fla's kernels are Triton kernels. On a machine without CUDA they run only through Triton's interpreter
(`TRITON_INTERPRET=1` before Python imports triton; device.use_interpreter), and there only fla's recurrent
kernel works, which fla picks for eval-mode, no-grad calls of fewer than 64 tokens; the interpreter computes with
numpy, which has no bfloat16, so bfloat16 weights give NaN logits, and `generate` goes on sampling from them without
a word. Measured here (fla 0.6.0, transformers 5.24, triton's interpreter): without the interpreter the first
forward fails with "0 active drivers"; bfloat16 gives NaN; a 64-token call fails in the chunk kernel.
"""

from __future__ import annotations

import os

from fla.rwkv7_convert.runtime.device import RECURRENT_MAX_TOKENS

# torch is imported inside the functions that use it: the command line imports this module, and a conversion never
# pays for torch (~2 s: the `import torch` row of benchmarks/benchmark_convert.py; tests/test_commands.py checks).

HOW = 'see "Run a converted model" in the rwkv7-convert README'


class CpuRunError(RuntimeError):
    """A forward call of fla's RWKV-7 on the CPU that cannot give correct logits."""


def cpu_problem(*, dtype, tokens: int, interpreted: bool, training: bool, grad: bool) -> str | None:
    """Why a forward call on the CPU would fail or give NaN, or None when it works."""
    import torch

    if not interpreted:
        return ("fla's Triton kernels need CUDA, or Triton's CPU interpreter: load with fla.rwkv7_convert.api."
                "load_model(model_dir, device='cpu-torch') (torch stand-ins for the kernels, no environment variables), "
                'or set TRITON_INTERPRET=1 and FLA_CACHE_RESULTS=0 before starting Python and call '
                f'fla.rwkv7_convert.runtime.device.use_interpreter() first ({HOW})')
    if dtype == torch.bfloat16:
        return ("bfloat16 on the CPU: Triton's interpreter gives NaN logits in bfloat16; load with "
                f'dtype=torch.float32 or call model.float() ({HOW})')
    if training or grad or tokens > RECURRENT_MAX_TOKENS:
        return (f'on the CPU fla runs only its recurrent kernel: eval mode, under torch.no_grad(), at most '
                f'{RECURRENT_MAX_TOKENS} tokens per call (this call: {tokens} tokens'
                f'{", training mode" if training else ""}{", gradients on" if grad else ""}); feed longer inputs '
                f'in pieces through the cache, as fla.rwkv7_convert.runtime.device.fla_logits does ({HOW})')
    return None


def guard_cpu_runs(model):
    """Check every forward call of `model` that runs on the CPU, and raise CpuRunError where it could not give
    correct logits (also inside `generate`). Calls on CUDA pass untouched; returns `model`."""
    import torch

    def check(module, args, kwargs):
        param = next(module.parameters(), None)
        if param is None or param.device.type != 'cpu' or getattr(module, 'rwkv7_torch_wkv', False):
            return None  # CUDA, or the torch stand-ins (run.with_torch_wkv): none of the interpreter's limits
        ids = kwargs.get('input_ids', args[0] if args else None)
        if ids is None:
            ids = kwargs.get('inputs_embeds')
        tokens = int(ids.shape[1]) if ids is not None and ids.dim() >= 2 else 0
        problem = cpu_problem(dtype=param.dtype, tokens=tokens, interpreted=os.environ.get('TRITON_INTERPRET') == '1',
                              training=module.training, grad=torch.is_grad_enabled())
        if problem:
            raise CpuRunError(problem)
        return None

    model.register_forward_pre_hook(check, with_kwargs=True)
    return model
