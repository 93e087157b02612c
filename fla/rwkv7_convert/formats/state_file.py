"""A tuned initial wkv state in fla's layout: the file a converted directory carries beside its weights.

State tuning trains only the initial wkv state of every layer. BlinkDL's side stores it per layer as `[H, N, N]`
indexed [head, value, key] (RWKV-PEFT's `blocks.N.att.time_state`, RWKV-block's `init_state.N.wkv`); fla's cache
holds `recurrent_state` as `[B, H, K, V]`. The file written here holds one tensor per layer, named
`FLA_STATE_KEY.format(i=layer)` (the fla side of the table's state rule), shaped `[H, K, V]` (fla's orientation,
batch dimension left out), in the dtype it was converted to. It is a file of its own so that config.json and the
weights stay exactly what every loader reads.

This module only says what that file is and reads and checks it; where the tensors come from and the per-head
transpose (the mapping table's state rule, mapping/ops.py SWAP_LAST_TWO) and how they become fla's cache
(runtime/state_cache.py) live elsewhere.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from fla.rwkv7_convert.errors import KeyMismatchError, NotACheckpointError
from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.formats.readers import open_checkpoint

STATE_FILE = 'rwkv7_state.safetensors'
FLA_STATE_KEY = 'model.layers.{i}.attn.initial_state'  # fla's name of layer i's state
STATE_LAYOUT = '[H, K, V] per layer: fla recurrent_state orientation (BlinkDL time_state [H, V, K] transposed per head)'
METADATA = {'format': 'pt', 'rwkv7_convert': 'initial_state', 'layout': STATE_LAYOUT}
FLOAT_DTYPES = ('F32', 'BF16', 'F16', 'F64')
_NAME = re.compile(re.escape(FLA_STATE_KEY).replace(re.escape('{i}'), r'(\d+)'))


@dataclass(frozen=True)
class StateFile:
    """The validated contents of a state file: one TensorRef per layer (layer order), all [H, K, V] of one dtype."""

    path: Path
    layers: list[TensorRef]
    close: object  # closes the open file: call it when the tensors have been loaded

    @property
    def heads(self) -> int:
        return self.layers[0].shape[0]

    @property
    def head_size(self) -> int:
        return self.layers[0].shape[1]

    @property
    def dtype(self) -> str:
        return self.layers[0].dtype


def state_path(path: str | os.PathLike) -> Path:
    """The state file for `path`: the file itself, or STATE_FILE inside a directory."""
    p = Path(path)
    try:
        return p / STATE_FILE if stat.S_ISDIR(os.stat(p).st_mode) else p
    except OSError:
        return p


def has_state(model_dir: str | os.PathLike) -> bool:
    """Whether a directory carries a state file (a regular file; a directory or a pipe by that name is not one)."""
    try:
        return stat.S_ISREG(os.stat(Path(model_dir) / STATE_FILE).st_mode)
    except OSError:
        return False


def check_layers(refs: dict[str, TensorRef], shown: str) -> list[TensorRef]:
    """The per-layer refs of a state file's tensors, every problem in one report: names exactly
    FLA_STATE_KEY for layers 0..L-1, each a float [H, N, N] with the same shape and dtype."""
    problems, layers = [], {}
    for name, ref in refs.items():
        m = _NAME.fullmatch(name)
        if m is None:
            problems.append(f'unexpected tensor {name!r} (expected {FLA_STATE_KEY.format(i="N")})')
            continue
        layers[int(m.group(1))] = ref
    if not layers and not problems:
        problems.append(f'no tensors (expected {FLA_STATE_KEY.format(i="N")} for every layer)')
    if layers:
        missing = sorted(set(range(max(layers) + 1)) - set(layers))
        problems += [f'missing tensor {FLA_STATE_KEY.format(i=i)}' for i in missing]
    for _, ref in sorted(layers.items()):
        if len(ref.shape) != 3 or ref.shape[1] != ref.shape[2]:
            problems.append(f'{ref.name} has shape {list(ref.shape)}, expected [H, N, N]')
        elif ref.dtype not in FLOAT_DTYPES:
            problems.append(f'{ref.name} has dtype {ref.dtype}, expected one of {", ".join(FLOAT_DTYPES)}')
    if problems:
        raise KeyMismatchError(problems, shown)
    ordered = [layers[i] for i in sorted(layers)]
    first = ordered[0]
    odd = [r for r in ordered if (r.shape, r.dtype) != (first.shape, first.dtype)]
    if odd:
        raise KeyMismatchError([f'{odd[0].name} is {list(odd[0].shape)} {odd[0].dtype} where {first.name} is '
                                f'{list(first.shape)} {first.dtype}: every layer\'s state has one shape and dtype'], shown)
    return ordered


def read_state_file(path: str | os.PathLike) -> StateFile:
    """Open and check a state file (or the one inside a converted directory); tensors are loaded on demand. The file is
    opened through formats.readers, as every input is, so a hostile file is refused the same way."""
    p = state_path(path)
    ckpt = open_checkpoint(p)
    if ckpt.kind != 'safetensors':
        ckpt.close()
        raise NotACheckpointError(f'a state file is a safetensors file ({STATE_FILE}); this is a {ckpt.kind} file', str(p))
    tree = ckpt.tree
    if not isinstance(tree, dict):
        ckpt.close()
        raise NotACheckpointError('not a flat mapping of names to tensors', str(p))
    try:
        layers = check_layers(tree, str(p))
    except BaseException:
        ckpt.close()
        raise
    return StateFile(p, layers, ckpt.close)
