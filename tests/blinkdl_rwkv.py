"""BlinkDL's `rwkv` package as an oracle, imported without leaving its import-time switches behind.

`rwkv.model` reads RWKV_V7_ON / RWKV_JIT_ON / RWKV_CUDA_ON at import (it writes the last two into os.environ) and
turns TF32 matmuls on. Left alone, those would change every test that runs after the first one that imports it.
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

_SWITCHES = ('RWKV_V7_ON', 'RWKV_JIT_ON', 'RWKV_CUDA_ON')


def rwkv_model_module():
    """`rwkv.model` with its RWKV-7 classes; process environment and torch flags as they were before."""
    module = sys.modules.get('rwkv.model')
    if module is not None and hasattr(module, 'RWKV_x070') and module.RWKV is module.RWKV_x070:
        return module
    env = {k: os.environ.get(k) for k in _SWITCHES}
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    os.environ['RWKV_V7_ON'] = '1'  # its RWKV-7 classes exist only when this is set at import
    try:
        module = importlib.reload(module) if module is not None else importlib.import_module('rwkv.model')
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags[:2]
        torch.set_float32_matmul_precision(flags[2])
    return module


def rwkv_package_model(path_without_suffix, strategy: str = 'cpu fp32'):
    """BlinkDL's RWKV_x070 on `path_without_suffix + '.pth'`."""
    return rwkv_model_module().RWKV_x070(str(path_without_suffix), strategy)
