"""Tuned initial states on their own, both ways: a bare state file -> fla's state file, and fla's -> RWKV-PEFT's.

- `convert_state`: a bare RWKV-PEFT state file (`blocks.N.att.time_state` only; RWKV-block's `init_state.N.wkv`
  too) converted against its base model's converted directory, which gives the sizes it must fit (read and checked
  as the export reads a directory: formats.readers.open_hf_directory, mapping/export_plan.py). The output is a
  directory holding the state file (formats/state_file.py) and its provenance, for `verify --model-state` and
  `runtime.state_cache.initial_cache`; the base directory is not touched.
- `export_state`: a state in fla's layout (a converted directory, a state directory or file, or a [L, H, K, V]
  tensor a user trained with fla) written as RWKV-PEFT's state file: `blocks.N.att.time_state` [H, V, K], what
  BlinkDL's `rwkv` package and RWKV-PEFT load. The tensors' dtype is kept, so a round trip is bit for bit.

The names, shapes and per-head transpose are the table's state rule (table.RULES, target STATE) and its reverse.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fla.rwkv7_convert import __version__
from fla.rwkv7_convert.errors import ConversionError, NonFiniteError
from fla.rwkv7_convert.formats.atomic import (
    atomic_directory,
    atomic_file,
    check_target,
    check_target_file,
    clean_stale,
    write_json,
)
from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.formats.dtypes import TORCH_NAME, is_finite
from fla.rwkv7_convert.formats.hf_directory import has_config, read_config
from fla.rwkv7_convert.formats.outputs import OutTensor
from fla.rwkv7_convert.formats.provenance import PROVENANCE_FILE, FileDigest
from fla.rwkv7_convert.formats.readers import open_checkpoint, open_hf_directory
from fla.rwkv7_convert.formats.safetensors_writer import write_safetensors
from fla.rwkv7_convert.formats.state_file import METADATA, STATE_FILE, read_state_file, state_path
from fla.rwkv7_convert.formats.writers import suffix_warning, writer_for
from fla.rwkv7_convert.mapping.config import Dims
from fla.rwkv7_convert.mapping.engine import STATE_RULES
from fla.rwkv7_convert.mapping.export_plan import make_export_plan
from fla.rwkv7_convert.mapping.plan import Entry
from fla.rwkv7_convert.mapping.state_plan import make_state_plan

# torch is imported inside the functions that use it: the command line imports this module, and a conversion never
# pays for torch (~2 s: the `import torch` row of benchmarks/benchmark_convert.py; tests/test_commands.py checks).

(RULE,) = STATE_RULES  # one state rule; a second kind of state would need its own file contract first


@dataclass
class StateResult:
    output: Path | None
    entries: list[Entry]  # convert_state: one per block
    dims: Dims | None = None  # the base model's sizes
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0
    fmt: str = 'safetensors'
    dtype: str = ''


def base_dims(base: str | os.PathLike) -> Dims:
    """The sizes of the base model's converted directory, read and checked as the export reads a directory (config.json
    against its tensors' names and shapes; no tensor data)."""
    base = Path(base)
    cfg = read_config(base)
    with open_hf_directory(base) as ckpt:
        return make_export_plan(cfg, ckpt.tree, str(base), weight_files=ckpt.files).dims


def state_tensor(entry: Entry, allow_nonfinite: bool, shown: str) -> OutTensor:
    """A planned tuned state (a merge's or a bare file's) in fla's orientation (the rule's op), in its stored dtype: it
    is a few hundred KB, fla computes it in float32, and casting it down would lose what was tuned."""
    def produce() -> np.ndarray:
        data = entry.source.load().reshape(entry.canonical_shape)
        if not allow_nonfinite and not is_finite(data, entry.source.dtype):
            raise NonFiniteError(f'{entry.source.name} holds NaN or Inf values; pass --allow-nonfinite to convert '
                                 'anyway', shown)
        return np.ascontiguousarray(entry.rule.op.apply(data))

    return OutTensor(entry.fla, entry.fla_shape, entry.source.dtype, produce)


def state_provenance(entries: list[Entry]) -> dict:
    """rwkv7_convert.json's record of the state file written from `entries`."""
    first = entries[0]
    return {'file': STATE_FILE, 'layers': len(entries), 'shape': list(first.fla_shape), 'dtype': first.source.dtype,
            'from': first.blinkdl.replace('.0.', '.N.'), 'orientation': '[H, K, V] (fla); the source is [H, V, K]'}


def convert_state(source: str | os.PathLike, output: str | os.PathLike | None, base: str | os.PathLike, *,
                  force: bool = False, allow_nonfinite: bool = False, dry_run: bool = False,
                  on_tensor: Callable[[str, int], None] | None = None) -> StateResult:
    """Convert the bare state file `source`, tuned for the model converted in `base`, into the directory `output`
    (STATE_FILE and PROVENANCE_FILE). Refused in one line: weights in `source` (a merge converts without a base), a
    state for another model (layer count, heads, head size), anything the plan reports."""
    start = time.perf_counter()
    shown = str(source)
    if output is not None and not dry_run:
        clean_stale(Path(output).absolute())
        check_target(Path(output).absolute(), force, protect=(source, base))
    dims = base_dims(base)
    with open_checkpoint(source) as ckpt:
        entries = make_state_plan(ckpt.tree, shown, dims, str(base))
        first = entries[0]
        notes = [f'tuned initial state: {len(entries)} block(s) of {list(first.canonical_shape)} {first.source.dtype} '
                 f'({first.source.name.replace(".0.", ".N.")}), for the base model {base} ({dims.L} layers, {dims.H} '
                 f'heads of {dims.N}); written transposed per head to fla\'s [H, K, V]']
        tensors = [state_tensor(e, allow_nonfinite, shown) for e in entries]
        result = StateResult(None, entries, dims, notes=notes, bytes_written=sum(t.nbytes for t in tensors),
                             dtype=first.source.dtype)
        if dry_run or output is None:
            return result
        digest = FileDigest(source)
        with atomic_directory(output, force=force, protect=(source, base)) as scratch:
            write_safetensors(scratch / STATE_FILE, tensors, {**METADATA, 'source': Path(source).name},
                              on_tensor=(lambda t: on_tensor(t.name, t.nbytes)) if on_tensor else None)
            # names, sizes and digests only (the folder may be published): what was converted, for which model
            write_json(scratch / PROVENANCE_FILE, {
                'converter': f'rwkv7_convert {__version__}',
                'source': {'name': Path(source).name, 'bytes': digest.size, 'sha256': digest.result(),
                           'format': ckpt.kind},
                'base': {'name': Path(base).absolute().name, 'num_hidden_layers': dims.L, 'num_heads': dims.H,
                         'head_dim': dims.N},
                'state': state_provenance(entries),
                'notes': notes,
            })
    result.output = Path(output)
    result.files = [STATE_FILE, PROVENANCE_FILE]
    result.seconds = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------------------------------ export

def _layers_of(state) -> tuple[list[TensorRef], Callable[[], None], str]:
    """(per-layer refs in fla's [H, K, V], close, shown) for a path (read_state_file) or a tensor [L, H, K, V]."""
    if isinstance(state, (str, os.PathLike)):
        sf = read_state_file(state)
        return sf.layers, sf.close, str(sf.path)
    import torch  # only for a tensor given: torch costs seconds of start-up that a path does not need

    names = {v: k for k, v in TORCH_NAME.items()}
    if not isinstance(state, torch.Tensor) or state.dim() != 4 or state.shape[-1] != state.shape[-2]:
        raise ConversionError('state: expected a state file or directory, or a [L, H, K, V] tensor with K == V')
    dtype = names.get(str(state.dtype).removeprefix('torch.'))
    if dtype is None:
        raise ConversionError(f'state: dtype {state.dtype} is not one of float32, bfloat16, float16')
    t = state.detach().cpu().contiguous()
    refs = []
    for i in range(t.shape[0]):
        layer = t[i]
        carrier = layer.view(torch.int16).numpy().view(np.uint16) if dtype == 'BF16' else layer.numpy()
        refs.append(TensorRef(f'state[{i}]', tuple(layer.shape), dtype, lambda c=carrier: c))
    return refs, lambda: None, 'state tensor'


def state_export_tensors(layers: list[TensorRef], allow_nonfinite: bool, shown: str) -> list[OutTensor]:
    """RWKV-PEFT's tensors (table rule's BlinkDL name, the rule's reverse: [H, K, V] -> [H, V, K]) for fla's layers."""
    def produce(ref: TensorRef):
        def run() -> np.ndarray:
            data = ref.load()
            if not allow_nonfinite and not is_finite(data, ref.dtype):
                raise NonFiniteError(f'{ref.name} holds NaN or Inf values; pass --allow-nonfinite to export anyway',
                                     shown)
            return np.ascontiguousarray(RULE.reverse.apply(data.reshape(ref.shape)))
        return run

    return [OutTensor(RULE.names(i)[0], RULE.reverse.shape(ref.shape), ref.dtype, produce(ref))
            for i, ref in enumerate(layers)]


def export_state(state, output: str | os.PathLike | None, *, fmt: str | None = None, force: bool = False,
                 allow_nonfinite: bool = False, dry_run: bool = False, dims: Dims | None = None) -> StateResult:
    """Write a state in fla's layout (`state`: a converted directory, a state directory or file, or a [L, H, K, V]
    tensor) as RWKV-PEFT's state file `output` (torch.save format by default: what RWKV-PEFT and BlinkDL's `rwkv`
    package load). `dims`: the model it must fit; default: a converted directory's own (config.json and tensors),
    none for a state directory, file or tensor."""
    start = time.perf_counter()
    if dims is None and isinstance(state, (str, os.PathLike)) and has_config(state):
        dims = base_dims(state)
    writer = writer_for(output, fmt)
    if output is not None and not dry_run:
        check_target_file(Path(output).absolute(), force,
                          (state_path(state),) if isinstance(state, (str, os.PathLike)) else ())
    layers, close, shown = _layers_of(state)
    try:
        check_fits(layers, dims, shown)
        tensors = state_export_tensors(layers, allow_nonfinite, shown)
        first = tensors[0]
        notes = [f'tuned initial state: {len(tensors)} block(s), written as {first.name.replace(".0.", ".N.")} '
                 f'{list(first.shape)} {first.dtype} ([H, V, K], RWKV-PEFT\'s orientation)']
        result = StateResult(None, [], dims, notes=notes, bytes_written=sum(t.nbytes for t in tensors), fmt=writer.name,
                             dtype=first.dtype)
        if output is not None and (warning := suffix_warning(output, writer)):
            result.notes.append(warning)
        if dry_run or output is None:
            return result
        with atomic_file(output, force=force) as scratch:
            writer.write(scratch, tensors, {'format': 'pt', 'converted_by': f'rwkv7_convert {__version__}'}, None)
    finally:
        close()
    result.output = Path(output)
    result.seconds = time.perf_counter() - start
    return result


def check_fits(layers: list[TensorRef], dims: Dims | None, shown: str) -> None:
    """A state written beside (or into) a model's export must be that model's: L layers of [H, N, N]."""
    if dims is None:
        return
    want = (dims.L, dims.H, dims.N, dims.N)
    got = (len(layers), *layers[0].shape)
    if got != want:
        raise ConversionError(f'the state is {got[0]} layer(s) of {list(got[1:])}, the model {dims.L} layers of '
                              f'[{dims.H}, {dims.N}, {dims.N}]: it was tuned for another model', shown)
