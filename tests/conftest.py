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


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA device; skipped where there is none')


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


def _global_state() -> dict:
    """What a test could change for every test after it: the process environment and torch's global switches."""
    from torch.utils.serialization import config as serialization_config
    # pytest's own marker, and torch inductor's private bookkeeping (torch.compile sets it inside fla's kernels)
    env = {k: v for k, v in os.environ.items() if k != 'PYTEST_CURRENT_TEST' and not k.startswith('_TORCHINDUCTOR')}
    return {
        'environment': env,
        'torch serialization config': serialization_config.get_config_copy(),
        'torch default dtype': torch.get_default_dtype(),
        'torch threads': torch.get_num_threads(),
        'torch deterministic algorithms': torch.are_deterministic_algorithms_enabled(),
        'TF32 matmul': torch.backends.cuda.matmul.allow_tf32,
        'TF32 cudnn': torch.backends.cudnn.allow_tf32,
        'float32 matmul precision': torch.get_float32_matmul_precision(),
        'grad mode': torch.is_grad_enabled(),
    }


@pytest.fixture(autouse=True)
def leaves_no_global_state():
    """Fails the test that changes process-wide state, instead of a test that runs after it (order dependence)."""
    before = _global_state()
    yield
    after = _global_state()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    if 'environment' in changed:
        old, new = changed['environment']
        changed['environment'] = {k: (old.get(k), new.get(k)) for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    assert not changed, f'the test left global state changed: {changed}'


@pytest.fixture(scope='session')
def user_env() -> dict:
    """The environment of a user's shell for a subprocess: no interpreter variables (conftest sets them for this
    process only), this checkout importable, and this interpreter's bin first on PATH (`python`, `rwkv7-convert`)."""
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ('TRITON_INTERPRET', 'FLA_CACHE_RESULTS')}
    repo = Path(__file__).resolve().parents[1]
    env['PYTHONPATH'] = os.pathsep.join([str(repo), env.get('PYTHONPATH', '')])
    env['PATH'] = os.pathsep.join([str(Path(sys.executable).parent), env.get('PATH', '')])
    return env
