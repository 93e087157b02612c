"""The tuned initial states of a verification, read from both sides and checked against each other before compute.

The source's side (BlinkDL): the states inside the source itself, a state-tuned merge (RWKV-PEFT's
merge/merge_state.py writes `blocks.N.att.time_state` beside the weights; RWKV-block keeps `init_state.N.wkv`), or a
bare RWKV-PEFT state file given with `state=` (`--state`: only `blocks.N.att.time_state`) beside the base model.
Either is [H, N, N] per layer, indexed [head, value, key]: RWKV-PEFT (JL-er/RWKV-PEFT @5b8aac9c,
rwkvt/operator/rwkvop.py) runs `s = s.transpose(1, 2)` before it hands time_state to fla's chunk_rwkv7 as its
initial_state, whose state is [N, H, K, V]; BlinkDL's rwkv package (BlinkDL/ChatRWKV @965e40b8,
rwkv_pip_package/src/rwkv/model.py, RWKV_x070_TMix_one) computes `state @ r` on its state[i*3+1] as it is, [H, V, K].
The converted side (fla): formats/state_file.py's file, `model.layers.N.attn.initial_state` [H, K, V], in the converted
directory or in the directory (or file) given with `model_state=` (`--model-state`: a bare state's conversion).

Refused before compute, one line each: a source with states and no converted state (converted with --drop-state?),
a converted state and none in the source, a state on both sides of the source (a merge and --state), a --state file
that holds weights, states whose layer count, heads or head size do not fit the model, non-float states, and any
state file formats.state_file refuses (truncated, wrong names, not [H, N, N]). `drop_state=True` (`--drop-state`)
verifies the weights alone: both sides from zero states, whatever the files carry.

The direct check: the converted state must equal the source's transposed per head, exactly (the source cast to the
converted dtype first, as the converter casts). One that equals the source untransposed is named as stored in
BlinkDL's orientation; that is a FAIL besides the logits' (which a transposed state fails too).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fla.rwkv7_convert.errors import ConversionError, KeyMismatchError
from fla.rwkv7_convert.formats.dtypes import FLOATING, TORCH_NAME, to_float32
from fla.rwkv7_convert.formats.readers import open_checkpoint
from fla.rwkv7_convert.formats.state_file import FLA_STATE_KEY, STATE_FILE, has_state, read_state_file, state_path
from fla.rwkv7_convert.mapping.engine import apply_layouts
from fla.rwkv7_convert.mapping.plan import normalize_names, unwrap_state_dict
from fla.rwkv7_convert.mapping.schema import Side

# torch is imported inside the functions that use it: the command line imports this module, and a conversion never
# pays for torch (~2 s: the `import torch` row of benchmarks/benchmark_convert.py; tests/test_commands.py checks).

_SOURCE_STATE = re.compile(r'blocks\.(\d+)\.att\.time_state|init_state\.(\d+)\.wkv')
SOURCE_STATE_NAMES = 'blocks.N.att.time_state'


def find_states(tree: object, shown: str) -> dict[int, tuple[str, object]]:
    """The tuned states in a BlinkDL checkpoint's tree: layer -> (canonical name, TensorRef), after the same
    unwrapping, prefix stripping and renaming layouts the plan applies (mapping.plan.make_plan)."""

    tensors, _ = unwrap_state_dict(tree, shown)
    tensors, _, _ = normalize_names(tensors)
    tensors = apply_layouts(tensors, Side.BLINKDL)[0]
    found = {}
    for name, ref in tensors.items():
        if m := _SOURCE_STATE.fullmatch(name):
            found[int(m.group(1) or m.group(2))] = (name, ref)
    return found


@dataclass
class TunedStates:
    """Both sides' initial wkv states, one tensor per layer: `blinkdl` [H, V, K] (float32, float64 if stored so) for
    the reference, `fla` [H, K, V] float32 for fla's cache; `problems` the direct check's findings."""

    source: str  # the file the source's states were read from (the merge, or the --state file)
    names: list[str]  # their names, per layer
    converted: str  # the converted state file
    blinkdl: list = field(default_factory=list)
    fla: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def describe(self, source_name: str | None = None, converted_name: str | None = None) -> str:
        first = self.names[0].replace('.0.', '.N.', 1)
        return (f'tuned, {len(self.names)} layer(s): the reference from {first} of {source_name or self.source}, fla '
                f'from {converted_name or self.converted} (token shifts zero)')


def _fit(states: dict[int, tuple[str, object]], dims, shown: str) -> list[tuple[str, object]]:
    """The per-layer (name, ref) of states that fit the model: layers 0..L-1, float [H, N, N]; one report."""
    want = (dims.H, dims.N, dims.N)
    problems = []
    layers = sorted(states)
    if layers != list(range(dims.L)):
        problems.append(f'tuned states for layer(s) {layers}, but the model has {dims.L} layer(s) (0..{dims.L - 1})')
    for i in layers:
        name, ref = states[i]
        if tuple(ref.shape) != want:
            problems.append(f'{name} is {list(ref.shape)}, but the model has {dims.H} heads of {dims.N}: expected '
                            f'{list(want)} [H, N, N]')
        elif ref.dtype not in FLOATING:
            problems.append(f'{name} has dtype {ref.dtype}, expected a floating point dtype ({", ".join(FLOATING)})')
    if problems:
        raise KeyMismatchError(problems, shown)
    return [states[i] for i in layers]


def _read_state_source(path: str | os.PathLike):
    """A bare state file (--state): (its states by layer, close). Refuses one that holds weights."""
    shown = str(path)
    ckpt = open_checkpoint(path)
    try:
        tensors, _ = unwrap_state_dict(ckpt.tree, shown)
        names = normalize_names(tensors)[0]
        other = [n for n in names if not _SOURCE_STATE.fullmatch(n)]
        if other:
            raise ConversionError(f'--state: not a state file: it holds {len(other)} tensor(s) that are not tuned '
                                  f'states ({", ".join(other[:3])}{", ..." if len(other) > 3 else ""}); a '
                                  'state-tuned merge is given as the source itself', shown)
        return find_states(ckpt.tree, shown), ckpt.close
    except BaseException:
        ckpt.close()
        raise


def load_states(src, out, *, state=None, model_state=None, drop_state: bool = False) -> TunedStates | None:
    """Both sides' tuned states for the pair `src` (files.SourceFile) / `out` (files.ConvertedDir), read, fitted to
    the model and checked against each other; None when neither side has one (or with `drop_state`). Everything
    refused is a one-line ConversionError (see the module docstring)."""
    if drop_state:
        return None
    close = None
    try:
        if state is not None:
            if src.states:
                raise ConversionError(f'{src.path} is a state-tuned merge (it carries {SOURCE_STATE_NAMES}) and --state '
                                      f'{state} is given too: verify one state at a time (the merge alone, or its '
                                      'weights with --drop-state)')
            states, close = _read_state_source(state)
            shown = str(state)
        else:
            states, shown = src.states, src.path
        converted = (state_path(model_state) if model_state is not None
                     else out.path / STATE_FILE if has_state(out.path) else None)
        if states and converted is None:
            how = ('give its conversion with --model-state DIR' if state is not None else
                   'it was probably converted with --drop-state: convert again without --drop-state to carry the state')
            raise ConversionError(f'{out.path} has no {STATE_FILE}, but {shown} carries tuned initial states '
                                  f'({SOURCE_STATE_NAMES}, {len(states)} layer(s)); {how}, or verify the weights alone '
                                  'from zero states with --drop-state')
        if not states and converted is None:
            return None
        if not states:
            raise ConversionError(f'{converted} holds a tuned initial state, but {src.path} carries none (no '
                                  f'{SOURCE_STATE_NAMES}): give the state file it was converted from with --state FILE, '
                                  'or verify the weights alone from zero states with --drop-state')
        refs = _fit(states, src.plan.dims, shown)
        pair = TunedStates(shown, [n for n, _ in refs], str(converted))
        pair.blinkdl = [_load(ref) for _, ref in refs]
        sf = read_state_file(converted)
        try:
            d = src.plan.dims
            if (len(sf.layers), sf.heads, sf.head_size) != (d.L, d.H, d.N):
                raise ConversionError(f'{sf.path}: {len(sf.layers)} layer(s) of [{sf.heads}, {sf.head_size}, '
                                      f'{sf.head_size}], but the model has {d.L} layer(s) of {d.H} heads of {d.N}: '
                                      f'expected [{d.H}, {d.N}, {d.N}] per layer')
            stored = [(ref.load(), ref.dtype) for ref in sf.layers]
        finally:
            sf.close()
        pair.fla = [_as_torch(data, dtype).float() for data, dtype in stored]
        pair.problems = check_states(pair, stored, Path(converted).name)
        return pair
    finally:
        if close is not None:
            close()


def _as_torch(data, dtype: str):
    """A carrier array as a float torch tensor: float64 kept, everything else float32 (as files.to_torch)."""
    import torch

    return torch.from_numpy(data if dtype == 'F64' else to_float32(data, dtype)).reshape(data.shape)


def _load(ref):
    return _as_torch(ref.load(), ref.dtype).reshape(ref.shape)


def check_states(pair: TunedStates, stored: list, file_name: str) -> list[str]:
    """The direct check, layer by layer: the converted state equals the source's transposed per head exactly (the
    source cast to the stored dtype, as the converter casts it)."""
    import torch

    problems = []
    for i, (src, (data, dtype)) in enumerate(zip(pair.blinkdl, stored)):
        got = _as_torch(data, dtype).double()
        as_stored = getattr(torch, TORCH_NAME[dtype])
        want = src.transpose(-1, -2).to(as_stored).double()
        if torch.equal(got, want):
            continue
        where = f'{file_name} {FLA_STATE_KEY.format(i=i)}'
        if torch.equal(got, src.to(as_stored).double()):
            problems.append(f'the initial state of layer {i} is stored transposed ([value, key], BlinkDL\'s orientation) '
                            f'where fla expects [key, value] ({where} equals {pair.names[i]} untransposed)')
        else:
            gap = (got - want).abs().max().item()
            problems.append(f'the initial state of layer {i} ({where}) differs from the source\'s ({pair.names[i]} '
                            f'transposed per head): max |Δ| {gap:.3g}')
    return problems
