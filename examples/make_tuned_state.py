"""Writes a tuned-state sample for the bundled model (examples/rwkv7-goose-mini.pth): `state.pth`, a bare state file
as RWKV-PEFT's state tuning saves it, and `merged.pth`, the bundled weights with that state merged in, as RWKV-PEFT's
merge/merge_state.py writes it.

Both hold `blocks.N.att.time_state` [H, N, N] (float32, BlinkDL's [head, value, key] orientation) for each of the
2 layers. The state is random, scaled like a trained one and far from symmetric (so a transposed state would show):
it is a sample for the converter's tuned-state path, not a tuned model. Deterministic, no network.
"""

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLED = HERE / 'rwkv7-goose-mini.pth'
SEED = 5


def main(argv: list[str] | None = None) -> int:
    # parsed before anything is imported or written: `--help` (or a typo) writes nothing
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--state', type=Path, default=Path('state.pth'), help='the bare state file (default: state.pth)')
    p.add_argument('--merged', type=Path, default=Path('merged.pth'),
                   help='the bundled weights plus the state (default: merged.pth)')
    args = p.parse_args(argv)
    import torch
    sys.path.insert(0, str(HERE.parent / 'tests'))
    sys.path.insert(0, str(HERE))
    from make_goose_mini import SHAPE
    from rwkv7_factory import make_tuned_state, save, time_states

    states = time_states(make_tuned_state(SHAPE, seed=SEED))
    weights = torch.load(BUNDLED, weights_only=True)
    for path in (save(states, args.state), save({**weights, **states}, args.merged)):
        print(f'wrote {path} ({path.stat().st_size / 1e6:.2f} MB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
