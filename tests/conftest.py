"""Test-wide setup and fixtures: Triton's CPU interpreter for fla (before anything imports triton), the `gpu`
marker, the guard against leaked global state, a user's environment for subprocesses, and the session's cache of
small converted models (`converted_model`). Each test folder's conftest.py holds that folder's fixtures; plain
helper functions are in tests/helpers.py."""

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Before anything imports triton (importing any fla.* module does): the interpreter is chosen at import time
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
    os.environ.setdefault('FLA_CACHE_RESULTS', '0')

import fla_cpu  # noqa: E402
from rwkv7_factory import Goose, make_state_dict, save  # noqa: E402

fla_cpu.use_interpreter()

# after the interpreter is in place: the converter imports fla (and so triton)
from fla.rwkv7_convert.convert.to_fla import convert_to_fla  # noqa: E402
from fla.rwkv7_convert.proof import verify as verify_module  # noqa: E402


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
    env = {k: v for k, v in os.environ.items() if k not in ('TRITON_INTERPRET', 'FLA_CACHE_RESULTS')}
    repo = Path(__file__).resolve().parents[1]
    env['PYTHONPATH'] = os.pathsep.join([str(repo), env.get('PYTHONPATH', '')])
    env['PATH'] = os.pathsep.join([str(Path(sys.executable).parent), env.get('PATH', '')])
    return env


@dataclass(frozen=True)
class Converted:
    """A converted model of the session's cache: the RWKV-LM file it was converted from and its fla directory."""
    source: Path
    dir: Path


@pytest.fixture(scope='session')
def converted_model(tmp_path_factory) -> Callable[..., Converted]:
    """converted_model(shape_or_file, dtype=torch.bfloat16, seed=0, **options) -> Converted: the forward conversion
    of a seeded state dict of `shape` (a Goose), or of an RWKV-LM file, with convert_to_fla's `options` (tokenizer
    'none' unless given). Converted once per session for each set of arguments, so it is read-only by convention: a
    test that changes the directory copies it first."""
    made: dict[tuple, Converted] = {}

    def make(what: Goose | Path, dtype: torch.dtype = torch.bfloat16, seed: int = 0, **options) -> Converted:
        key = (what, dtype, seed, tuple(sorted(options.items())))
        if key not in made:
            root = tmp_path_factory.mktemp('converted')
            source = Path(what) if isinstance(what, (str, Path)) else save(make_state_dict(what, dtype, seed=seed),
                                                                             root / 'm.pth')
            convert_to_fla(source, root / 'model', **{'tokenizer': 'none', **options})
            made[key] = Converted(source, root / 'model')
        return made[key]

    return make


@pytest.fixture
def no_compute(monkeypatch):
    """verify must refuse before building the streaming pair: building it fails the test."""
    def computed(*args, **kwargs):
        raise AssertionError('verify went on to compute')
    monkeypatch.setattr(verify_module, 'StreamingPair', computed)
