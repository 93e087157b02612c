"""Writes sample RWKV-PEFT adapters for the bundled mini model (examples/rwkv7-goose-mini.pth): one per method, as
RWKV-PEFT's trainer saves them (the factors and the trained LayerNorms), PiSSA with its init_pissa.pth, to try
`rwkv7-convert --adapter` (merged, or --adapter-format peft) and `rwkv7-inspect ADAPTER.pth`.

The values are random but shaped like a short training run's (deterministic, no network); names, shapes and the
files' layout follow JL-er/RWKV-PEFT (tests/rwkv_peft_factory.py cites where). The LoRA sample's alpha is 16.
"""

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = HERE / 'rwkv7-goose-mini.pth'
METHODS = {'lora': 8, 'pissa': 8, 'bone': 16, 'bat': 16}  # method -> rank
SEED = 2026


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                epilog=f'ranks {METHODS}; LoRA alpha 16; seed {SEED} (deterministic)')
    p.add_argument('--output', type=Path, default=Path('adapters'), help='folder to write them to (default: adapters)')
    p.add_argument('--base', type=Path, default=BASE, help=f'the base model (default: {BASE.name} here)')
    args = p.parse_args(argv)
    import torch
    sys.path.insert(0, str(HERE.parent / 'tests'))
    from rwkv7_factory import Goose, save
    from rwkv_peft_factory import make_adapter

    base = torch.load(args.base, map_location='cpu', weights_only=True)
    layers = 1 + max(int(k.split('.')[1]) for k in base if k.startswith('blocks.'))
    args.output.mkdir(parents=True, exist_ok=True)
    for method, rank in METHODS.items():
        adapter, init = make_adapter(base, Goose(layers=layers), method, rank=rank, seed=SEED,
                                     dtype=base['emb.weight'].dtype)
        path = save(adapter, args.output / f'{method}.pth')
        print(f'wrote {path} ({method}, rank {rank})')
        if init is not None:
            print(f'wrote {save(init, args.output / f"{method}_init.pth")} (its init_pissa.pth)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
