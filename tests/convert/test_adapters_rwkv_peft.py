"""RWKV-PEFT's own merge scripts, run where a checkout of JL-er/RWKV-PEFT is given (RWKV_PEFT_DIR, at the commit
adapter_methods.ADAPTER_METHODS cites), followed by a conversion: the same bytes as `--adapter`. Skipped without one;
nothing of their code is kept here. Their merge_disha.py and merge.py import bitsandbytes, which the CPU merge without
quantization never calls: a stand-in module is put on their path.

    git clone https://github.com/JL-er/RWKV-PEFT && git -C RWKV-PEFT checkout 5b8aac9cbed9474fb9f13332ffe9bd1aa377b7d2
    RWKV_PEFT_DIR=$PWD/RWKV-PEFT python -m pytest tests/convert/test_adapters_rwkv_peft.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rwkv7_factory import Goose, make_state_dict, save
from rwkv_peft_factory import make_adapter

from fla.rwkv7_convert.convert.adapters import AdapterSpec
from fla.rwkv7_convert.convert.to_fla import convert_to_fla

CHECKOUT = Path(os.environ.get('RWKV_PEFT_DIR', '/nonexistent'))
pytestmark = pytest.mark.skipif(not (CHECKOUT / 'merge' / 'merge_disha.py').is_file(),
                                reason='needs a checkout of JL-er/RWKV-PEFT in RWKV_PEFT_DIR')
SHAPE = Goose(hidden=128, layers=2)


def _their_merge(method: str, base: Path, adapter: Path, init: Path, out: Path, stub: Path) -> None:
    merge = CHECKOUT / 'merge'
    if method == 'lora':
        cmd = [merge / 'merge_lora.py', '24', base, adapter, out]
    elif method == 'pissa':
        cmd = [merge / 'merge.py', '--type', 'pissa', '--base_model', base, '--lora_init', init, '--lora_checkpoint',
               adapter, '--output', out, '--device', 'cpu']
    else:
        cmd = [merge / 'merge_disha.py', '--base_model', base, '--peft_checkpoint', adapter, '--output', out,
               '--device', 'cpu']
    env = {**os.environ, 'PYTHONPATH': str(stub)}
    run = subprocess.run([sys.executable, *map(str, cmd)], cwd=out.parent, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
@pytest.mark.parametrize('method, rank', [('lora', 8), ('pissa', 8), ('bone', 8), ('bone', 24), ('bat', 16)])
def test_rwkv_peft_merge_script_then_convert_is_convert_with_adapter(tmp_path, method, rank, dtype):
    (tmp_path / 'stub').mkdir()
    (tmp_path / 'stub' / 'bitsandbytes.py').write_text('')
    for d in ('base', 'theirs'):
        (tmp_path / d).mkdir()
    base = make_state_dict(SHAPE, dtype=dtype)
    adapter, init = make_adapter(base, SHAPE, method, rank=rank, dtype=dtype, train_parts=('ln', 'x_'))
    save(base, tmp_path / 'base' / 'model.pth')
    save(adapter, tmp_path / 'adapter.pth')
    if init is not None:
        save(init, tmp_path / 'init_pissa.pth')
    _their_merge(method, tmp_path / 'base' / 'model.pth', tmp_path / 'adapter.pth', tmp_path / 'init_pissa.pth',
                 tmp_path / 'theirs' / 'model.pth', tmp_path / 'stub')
    convert_to_fla(tmp_path / 'theirs' / 'model.pth', tmp_path / 'want', tokenizer='none')
    spec = AdapterSpec(tmp_path / 'adapter.pth', tmp_path / 'init_pissa.pth' if init is not None else None,
                       24.0 if method == 'lora' else None)
    convert_to_fla(tmp_path / 'base' / 'model.pth', tmp_path / 'got', tokenizer='none', adapter=spec)
    for name in ('model.safetensors', 'config.json'):
        assert (tmp_path / 'want' / name).read_bytes() == (tmp_path / 'got' / name).read_bytes(), name
