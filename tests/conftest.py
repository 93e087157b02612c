"""Test-wide setup: Triton's CPU interpreter for fla (before anything imports triton), and the `gpu` marker."""

import os

import pytest
import torch

# Before anything imports triton (importing any fla.* module does): the interpreter is chosen at import time
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
    os.environ.setdefault('FLA_CACHE_RESULTS', '0')

import fla_cpu  # noqa: E402

fla_cpu.use_interpreter()
# BlinkDL's `rwkv` package picks its RWKV-7 classes at import time
os.environ.setdefault('RWKV_V7_ON', '1')


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA device; skipped where there is none')


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)
