"""fla / Hugging Face RWKV-7 directory -> BlinkDL RWKV-LM checkpoint (`.pth` or `.safetensors`), streamed.

The walk mirrors convert/to_fla.py step for step, read from the other side of the same table (mapping/table.py):
open (formats.readers: config.json and the weight files, read lazily) -> check config.json and apply the fla-side
layouts -> plan with the key report (mapping/export_plan.py: every fla tensor looked up with `lookup_fla`, checked
against the shape its rule predicts) -> write atomically (formats.atomic + formats.pth_writer or
safetensors_writer), each tensor turned back into RWKV-LM's by `rule.reverse` -> metadata. No second name
mapping exists.

Each tensor's bytes are read once when it is written and dropped right after, so memory holds one tensor whatever
the model size. What fla can hold but BlinkDL's RWKV-7 cannot express is refused with a one-line reason
(mapping/config.py: value_dim != hidden_size, norm_first false, LayerNorms without bias, an activation other than
sqrelu, hybrid attention layers). Tied embeddings are exported as a copy (RWKV-LM always has a separate
`head.weight`; the copy computes the same logits). Layer-0 `att.v0/v1/v2`, which RWKV-LM's training model creates
but never uses, are written as zeros unless `layer0_v=False`, so RWKV-LM can load the file strictly for further
training.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fla.rwkv7_convert import __version__
from fla.rwkv7_convert.convert.tuned_state import check_fits, state_export_tensors
from fla.rwkv7_convert.errors import (
    NonFiniteError,
)
from fla.rwkv7_convert.formats.atomic import atomic_file, check_target_file
from fla.rwkv7_convert.formats.dtypes import CARRIER, cast, is_finite, output_precision
from fla.rwkv7_convert.formats.hf_directory import read_config
from fla.rwkv7_convert.formats.outputs import OutTensor
from fla.rwkv7_convert.formats.readers import open_hf_directory
from fla.rwkv7_convert.formats.state_file import STATE_FILE, has_state, read_state_file
from fla.rwkv7_convert.formats.writers import suffix_warning, writer_for
from fla.rwkv7_convert.mapping.export_plan import ExportEntry, ExportPlan, make_export_plan


@dataclass
class ExportResult:
    output: Path | None
    plan: ExportPlan
    fmt: str
    dtype: str  # the model's dtype (emb.weight's), for the summary
    seconds: float = 0.0
    bytes_written: int = 0


# ------------------------------------------------------------------------------------------------------------ write

def _producer(entry: ExportEntry, allow_nonfinite: bool, shown: str) -> Callable[[], np.ndarray]:
    def produce() -> np.ndarray:
        if entry.source is None:
            return np.zeros(entry.shape, CARRIER[entry.dtype])
        data = entry.source.load()
        if not allow_nonfinite and not is_finite(data, entry.source.dtype):
            raise NonFiniteError(f'{entry.fla} holds NaN or Inf values; pass --allow-nonfinite to export anyway', shown)
        data = entry.rule.reverse.apply(data.reshape(entry.source.shape))
        return np.ascontiguousarray(cast(data, entry.source.dtype, entry.dtype).reshape(entry.shape))
    return produce


def _input_files(model_dir: Path) -> tuple[Path, ...]:
    """The input directory's own files (config, weights, index): an --output onto one of them must not replace it.
    A directory that cannot be listed is reported by read_config, in its own words."""
    try:
        return tuple(p for p in model_dir.iterdir() if p.is_file())
    except OSError:
        return ()


def plan_export(model_dir: str | os.PathLike, *, precision: str | None = None, layer0_v: bool = True) -> ExportPlan:
    """The checked plan for exporting `model_dir`, without reading any tensor data (the export's dry run)."""
    return convert_from_fla(model_dir, None, precision=precision, layer0_v=layer0_v, dry_run=True).plan


def convert_from_fla(
    model_dir: str | os.PathLike,
    output: str | os.PathLike | None,
    *,
    precision: str | None = None,
    fmt: str | None = None,
    force: bool = False,
    layer0_v: bool = True,
    allow_nonfinite: bool = False,
    drop_state: bool = False,
    dry_run: bool = False,
    on_start: Callable[[ExportPlan, int], None] | None = None,
    on_tensor: Callable[[str, int], None] | None = None,
) -> ExportResult:
    """Export the fla / Hugging Face RWKV-7 directory `model_dir` as a BlinkDL RWKV-LM checkpoint at `output`.

    `precision`: None keeps each tensor's stored dtype; otherwise 'BF16'/'F16'/'F32' (or bf16, fp16, float32, ...).
    `fmt`: a name in formats.writers.WRITERS ('pth': torch.save format, what RWKV-LM and the `rwkv` package load;
    'safetensors'); None picks the writer whose declared suffix the output has, else pth. `layer0_v=False` omits
    the unused layer-0 att.v0/v1/v2 placeholders.
    A directory carrying a tuned state (formats/state_file.py) exports as a state-tuned merge: its states are written
    after the weights as `blocks.N.att.time_state` [H, V, K], as RWKV-PEFT's merge/merge_state.py writes them;
    `drop_state` writes the weights alone (tuned_state.export_state writes the state alone).
    An existing `output` is refused unless `force`; the file appears atomically, complete or not at all.
    """
    start = time.perf_counter()
    model_dir = Path(model_dir)
    shown = str(model_dir)
    precision = output_precision(precision)
    writer = writer_for(output, fmt)
    protect = _input_files(model_dir) if output is not None else ()
    if output is not None and not dry_run:
        check_target_file(Path(output).absolute(), force, protect)  # fail before reading anything
    cfg = read_config(model_dir)
    with ExitStack() as stack:
        ckpt = stack.enter_context(open_hf_directory(model_dir))
        tensors, files = ckpt.tree, ckpt.files
        plan = make_export_plan(cfg, tensors, shown, precision=precision, layer0_v=layer0_v, weight_files=files)
        if output is not None and (warning := suffix_warning(output, writer)):
            plan.warnings.append(warning)
        state = []
        if has_state(model_dir) and not drop_state:
            sf = read_state_file(model_dir)
            stack.callback(sf.close)
            check_fits(sf.layers, plan.dims, str(sf.path))
            state = state_export_tensors(sf.layers, allow_nonfinite, str(sf.path))
            plan.notes.append(f'tuned initial state ({STATE_FILE}): written as {len(state)} '
                              f'blocks.N.att.time_state {list(state[0].shape)} {state[0].dtype}, after the weights (a '
                              'state-tuned merge, as RWKV-PEFT\'s merge/merge_state.py writes it); --drop-state leaves '
                              'it out')
        elif has_state(model_dir):
            plan.notes.append(f'tuned initial state ({STATE_FILE}): left out (--drop-state)')
        model_dtype = next(e.dtype for e in plan.entries if e.blinkdl == 'emb.weight')
        result = ExportResult(None, plan, writer.name, model_dtype,
                              bytes_written=plan.total_bytes + sum(t.nbytes for t in state))
        if dry_run or output is None:
            return result
        out = [OutTensor(e.blinkdl, e.shape, e.dtype, _producer(e, allow_nonfinite, shown)) for e in plan.entries]
        out += state
        if on_start:
            on_start(plan, result.bytes_written)
        report = (lambda t: on_tensor(t.name, t.nbytes)) if on_tensor else None
        with atomic_file(output, force=force, protect=protect) as scratch:
            metadata = {'format': 'pt', 'converted_by': f'rwkv7_convert {__version__}', 'source': model_dir.name}
            writer.write(scratch, out, metadata, report)
    result.output = Path(output)
    result.seconds = time.perf_counter() - start
    return result
