"""Writes examples/rwkv7-goose-mini.pth, the bundled default checkpoint (random but trained-like weights).

It is saved exactly as RWKV-LM training saves a model: `torch.save` of the state dict, bf16, `[1,1,C]` vectors,
layer-0 `att.v0/v1/v2` present. Regenerate with `python examples/make_goose_mini.py` (deterministic).
"""

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 'tests'))
from rwkv7_factory import Goose, make_state_dict, save  # noqa: E402

SHAPE = Goose(vocab=512, hidden=128, layers=2, head_size=64)

if __name__ == '__main__':
    path = save(make_state_dict(SHAPE, dtype=torch.bfloat16, seed=2026), HERE / 'rwkv7-goose-mini.pth')
    print(f'wrote {path} ({path.stat().st_size / 1e6:.2f} MB)')
