"""Writes examples/rwkv7-goose-mini.pth, the bundled default checkpoint (random but trained-like weights).

It is saved exactly as RWKV-LM training saves a model: `torch.save` of the state dict, bf16, `[1,1,C]` vectors,
layer-0 `att.v0/v1/v2` present. Regenerate with `python examples/make_goose_mini.py` (deterministic).
"""

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 'tests'))
from rwkv7_factory import Goose, make_state_dict, save  # noqa: E402

SHAPE = Goose(vocab=512, hidden=128, layers=2, head_size=64)
BUNDLED = HERE / 'rwkv7-goose-mini.pth'


def main(argv: list[str] | None = None) -> int:
    # parsed before anything is written: `--help` (or a typo) must not rewrite the bundled file
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                epilog=f'{SHAPE.layers} layers, hidden {SHAPE.hidden}, head size {SHAPE.head_size}, '
                                       f'vocab {SHAPE.vocab}; bf16; seed 2026 (deterministic)')
    p.add_argument('--output', type=Path, default=BUNDLED, help=f'where to write it (default: {BUNDLED.name} here)')
    args = p.parse_args(argv)
    path = save(make_state_dict(SHAPE, dtype=torch.bfloat16, seed=2026), args.output)
    print(f'wrote {path} ({path.stat().st_size / 1e6:.2f} MB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
