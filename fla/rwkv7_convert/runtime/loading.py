"""Loading a converted directory into fla's RWKV7ForCausalLM, with the checks a user would want."""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager

from fla.rwkv7_convert.runtime.cpu_guard import guard_cpu_runs

# fla's models and transformers are imported inside the functions, after ensure_real_fla (the command line starts with
# fla a light namespace) and after the caller chose Triton's interpreter, which must come before triton is imported


def ensure_real_fla():
    """The real `fla` package, imported now if the command-line scripts had put a light stub in its place
    (utils/_bootstrap.py does, so that converting never pays for importing fla's models)."""
    # on a CPU-only machine fla says on import that Triton falls back to the CPU: expected here, not news
    warnings.filterwarnings('ignore', message='Triton is not supported on current platform')
    mod = sys.modules.get('fla')
    if mod is not None and getattr(mod, '__light_stub__', False):
        del sys.modules['fla']
        import fla
        for name, module in list(sys.modules.items()):
            if name.startswith('fla.rwkv7_convert') and name.count('.') == 1:
                setattr(fla, name.split('.')[1], module)
    import fla
    return fla


@contextmanager
def fla_init_skipped():
    """Skip the random init that fla's RWKV-7 modules run in `__init__` while pretrained weights are being loaded.

    fla 0.6.0 looks for transformers 4's no-init switch, which transformers 5 removed, so its RWKV-7 layers always
    initialise themselves: wasted work that is overwritten by the checkpoint anyway, and for a 1-layer model a
    ZeroDivisionError (`layer_idx / (num_hidden_layers - 1)` in RWKV7Attention), which makes plain
    `from_pretrained` fail on valid 1-layer models.
    """
    ensure_real_fla()
    from fla.layers.rwkv6 import LoRA
    from fla.layers.rwkv7 import RWKV7Attention
    from fla.models.rwkv7.modeling_rwkv7 import RWKV7FeedForward

    classes = (RWKV7Attention, RWKV7FeedForward, LoRA)
    saved = {cls: cls.__dict__['_initialize_weights'] for cls in classes if '_initialize_weights' in cls.__dict__}
    try:
        for cls in saved:
            cls._initialize_weights = lambda self, module: None
        yield
    finally:
        for cls, fn in saved.items():
            cls._initialize_weights = fn


def load_fla_model(model_dir: str | os.PathLike, dtype=None, device=None):
    """An eval-mode RWKV7ForCausalLM from a converted directory; raises if any weight is missing or unexpected."""
    ensure_real_fla()  # registers RWKV7 with transformers' Auto classes
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    # fla warns on every RWKV-7 layer that its port may differ from BlinkDL's: checking that is our job
    warnings.filterwarnings('ignore', message='According to Bo')
    with fla_init_skipped():
        model, info = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, output_loading_info=True)
    problems = {k: sorted(v) for k, v in info.items() if k != 'error_msgs' and v}
    if problems or info.get('error_msgs'):
        raise RuntimeError(f'{model_dir}: loading into RWKV7ForCausalLM reported {problems or info["error_msgs"]}')
    if device is not None:
        model = model.to(device)
    return guard_cpu_runs(model.eval())
