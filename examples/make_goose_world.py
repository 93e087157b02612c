"""Writes a World-vocabulary sample checkpoint (65536 rows, random weights), to try the tokenizer, chat template,
stop tokens and generation end to end.

It is saved as RWKV-LM training saves a model (`torch.save` of the state dict, bf16, `[1,1,C]` vectors). The 65536 x
64 embedding and head make it about 17 MB, too big to keep in the repository: generate it where you need it
(deterministic, no network), then convert it with `--tokenizer world`. Random weights generate noise, not text.
"""

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = HERE / 'rwkv7-goose-world.pth'
VOCAB, HIDDEN, LAYERS, HEAD_SIZE, SEED = 65536, 64, 2, 64, 2026


def main(argv: list[str] | None = None) -> int:
    # parsed before anything is imported or written: `--help` (or a typo) writes nothing
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                epilog=f'{LAYERS} layers, hidden {HIDDEN}, head size {HEAD_SIZE}, vocab {VOCAB}; bf16; '
                                       f'seed {SEED} (deterministic)')
    p.add_argument('--output', type=Path, default=DEFAULT, help=f'where to write it (default: {DEFAULT.name} here)')
    args = p.parse_args(argv)
    import torch
    sys.path.insert(0, str(HERE.parent / 'tests'))
    from rwkv7_factory import Goose, make_state_dict, save

    shape = Goose(vocab=VOCAB, hidden=HIDDEN, layers=LAYERS, head_size=HEAD_SIZE)
    path = save(make_state_dict(shape, dtype=torch.bfloat16, seed=SEED), args.output)
    print(f'wrote {path} ({path.stat().st_size / 1e6:.2f} MB; random weights: its generated text is gibberish by design)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
