"""fla / Hugging Face RWKV-7 directory -> BlinkDL RWKV-LM checkpoint (`.pth` or `.safetensors`), streamed.

The walk mirrors the forward direction, read from the other side of the same table (table.py): every fla tensor
is looked up with `lookup_fla`, checked against the shape its rule predicts, and turned back into RWKV-LM's
tensor by `rule.op.reverse` (`[C]` -> `[1,1,C]`, LoRA factors transposed back). No second name mapping exists.

Only names, shapes and dtypes are read while planning (config.json, the safetensors headers); each tensor's bytes
are read once when it is written and dropped right after, so memory holds one tensor whatever the model size.

What fla can hold but BlinkDL's RWKV-7 cannot express is refused with a one-line reason: value_dim != hidden_size,
norm_first false (no ln0), LayerNorms without bias, an activation other than sqrelu, hybrid attention layers.
Tied embeddings are exported as a copy (RWKV-LM always has a separate `head.weight`; the copy computes the same
logits). Layer-0 `att.v0/v1/v2`, which RWKV-LM's training model creates but never uses, are written as zeros
unless `layer0_v=False`, so RWKV-LM can load the file strictly for further training.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fla.rwkv7_convert import __version__
from fla.rwkv7_convert.errors import (
    ConversionError,
    KeyMismatchError,
    NonFiniteError,
    NotACheckpointError,
    UnsupportedVariantError,
)
from fla.rwkv7_convert.formats.atomic import atomic_file, check_target_file
from fla.rwkv7_convert.formats.dtypes import CARRIER, FLOATING, cast, is_finite, parse_precision
from fla.rwkv7_convert.formats.pth_writer import write_pth
from fla.rwkv7_convert.formats.readers import CONFIG_FILE, TensorRef, open_hf_directory
from fla.rwkv7_convert.formats.safetensors_writer import OutTensor, write_safetensors
from fla.rwkv7_convert.mapping.config import BLINKDL_LN_X_EPS, BLINKDL_NORM_EPS, Dims
from fla.rwkv7_convert.mapping.plan import apply_layouts
from fla.rwkv7_convert.mapping.table import FLA_SIDE, SIZES, Rule, bind_sizes, expected_blinkdl, lookup_fla

FORMATS = ('pth', 'safetensors')


class ConfigError(ConversionError):
    """config.json is missing, unreadable, or contradicts the tensors."""


@dataclass(frozen=True)
class ExportEntry:
    """One tensor of the output: where it comes from and what it becomes."""

    blinkdl: str  # RWKV-LM name written
    shape: tuple[int, ...]  # RWKV-LM shape written
    dtype: str  # dtype written
    rule: Rule
    layer: int | None
    source: TensorRef | None  # None: a zero placeholder (layer-0 att.v0/v1/v2)
    fla: str | None  # the fla tensor it is made from
    note: str = ''

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * CARRIER[self.dtype].itemsize


@dataclass
class ExportPlan:
    dims: Dims
    config: dict
    entries: list[ExportEntry]  # in RWKV-LM's order
    weight_files: list[str]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def num_parameters(self) -> int:
        return sum(int(np.prod(e.shape, dtype=np.int64)) for e in self.entries if e.source is not None)

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


@dataclass
class ExportResult:
    output: Path | None
    plan: ExportPlan
    fmt: str
    dtype: str  # the model's dtype (emb.weight's), for the summary
    seconds: float = 0.0
    bytes_written: int = 0


# ------------------------------------------------------------------------------------------------------------ input

def read_config(model_dir: Path) -> dict:
    shown = str(model_dir)
    if not model_dir.exists():
        raise NotACheckpointError('no such directory', shown)
    if not model_dir.is_dir():
        raise NotACheckpointError('is a file; expected a Hugging Face model directory (config.json + model.safetensors); '
                                  'for a BlinkDL .pth use convert_to_rwkv7.py', shown)
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f'no {CONFIG_FILE}: not a Hugging Face model directory', shown)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f'cannot read {CONFIG_FILE} ({e})', shown) from e
    if not isinstance(cfg, dict):
        raise ConfigError(f'{CONFIG_FILE} is not a JSON object', shown)
    return cfg


def open_weights(model_dir: Path, stack: ExitStack) -> tuple[dict[str, TensorRef], list[str]]:
    """Every tensor of the directory's weight files (one file, or shards named by an index), read lazily."""
    ckpt = stack.enter_context(open_hf_directory(model_dir))
    return ckpt.tree, ckpt.files


# ----------------------------------------------------------------------------------------------------------- config

def _refuse(reason: str, shown: str) -> None:
    raise UnsupportedVariantError(f"config.json: {reason}; BlinkDL's RWKV-7 cannot express this model", shown)


def check_config(cfg: dict, shown: str) -> tuple[list[str], list[str]]:
    """Refuse what BlinkDL's RWKV-7 cannot run; returns (notes, warnings)."""
    model_type = cfg.get('model_type')
    if model_type != 'rwkv7':
        hint = {'rwkv': ' (Hugging Face RWKV-4)', 'rwkv6': ' (RWKV-6)', 'rwkv5': ' (RWKV-5)'}.get(str(model_type), '')
        raise UnsupportedVariantError(f'config.json model_type is {model_type!r}{hint}, expected "rwkv7" '
                                      "(fla's RWKV7ForCausalLM)", shown)
    C = cfg.get('hidden_size')
    if not isinstance(C, int) or C <= 0:
        raise ConfigError(f'config.json hidden_size is {C!r}, expected a positive integer', shown)
    if cfg.get('attn'):
        layers = cfg['attn'].get('layers') if isinstance(cfg['attn'], dict) else None
        _refuse(f'attn is set (hybrid softmax-attention layers {layers}); RWKV-LM has no attention layers', shown)
    if cfg.get('hidden_act', 'sqrelu') != 'sqrelu':
        _refuse(f'hidden_act is {cfg["hidden_act"]!r}; RWKV-LM\'s channel mix is relu(x)^2 (sqrelu)', shown)
    if cfg.get('norm_first', True) is not True:
        _refuse('norm_first is false, so the model has no pre_norm after the embedding; RWKV-LM always applies ln0',
                shown)
    if cfg.get('norm_bias', True) is not True:
        _refuse('norm_bias is false (LayerNorms without bias); RWKV-LM\'s LayerNorms always have one', shown)
    value_dim = cfg.get('value_dim')
    if value_dim is not None:
        dims = value_dim if isinstance(value_dim, list) else [value_dim]
        if any(v != C for v in dims):
            _refuse(f'value_dim is {value_dim} but hidden_size is {C}; RWKV-LM\'s values are as wide as the model', shown)
    head_dim, num_heads = cfg.get('head_dim'), cfg.get('num_heads')
    if head_dim is None and num_heads:
        head_dim = C // num_heads
    if num_heads is None and head_dim:
        num_heads = C // head_dim
    if not head_dim or not num_heads or head_dim * num_heads != C:
        _refuse(f'head_dim {cfg.get("head_dim")} x num_heads {cfg.get("num_heads")} != hidden_size {C}', shown)

    notes, warnings = [], []
    if cfg.get('tie_word_embeddings'):
        notes.append('tie_word_embeddings: head.weight written as a copy of emb.weight (RWKV-LM has a separate head)')
    eps = cfg.get('norm_eps', BLINKDL_NORM_EPS)
    if not isinstance(eps, (int, float)):
        raise ConfigError(f'config.json norm_eps is {eps!r}, expected a number', shown)
    off = []
    if not math.isclose(eps, BLINKDL_NORM_EPS, rel_tol=1e-6):
        off.append(f'LayerNorm eps {eps:g} (RWKV-LM: {BLINKDL_NORM_EPS:g})')
    if not math.isclose(head_dim * eps, BLINKDL_LN_X_EPS, rel_tol=1e-6):
        off.append(f'ln_x GroupNorm eps head_dim*norm_eps = {head_dim * eps:g} (BlinkDL: {BLINKDL_LN_X_EPS:g} for every '
                   'head size)')
    if off:
        warnings.append('fla runs this model with ' + ' and '.join(off) + "; BlinkDL's runtimes use their fixed eps, "
                        'so logits will differ slightly (weights are exported exactly)')
    return notes, warnings


# ------------------------------------------------------------------------------------------------------------- plan

def _dims(cfg: dict, tensors: dict[str, TensorRef], problems: list[str]) -> Dims | None:
    """Sizes from the tensors' shapes, bound as the forward direction binds them (table.bind_sizes, on the tensors'
    RWKV-LM names and shapes), then cross-checked with config.json."""
    layer_ids = {int(m.group(1)) for n in tensors if (m := re.match(r'^model\.layers\.(\d+)\.', n))}
    L = cfg.get('num_hidden_layers')
    if not isinstance(L, int) or L <= 0:
        problems.append(f'config.json num_hidden_layers is {L!r}, expected a positive integer')
        return None
    if layer_ids and max(layer_ids) + 1 != L:
        problems.append(f'config.json num_hidden_layers is {L} but the tensors have layers 0..{max(layer_ids)}')
    as_blinkdl = {}
    for name, ref in tensors.items():
        found = lookup_fla(name)
        if found is not None:
            rule, layer = found
            as_blinkdl[rule.names(layer)[0]] = rule.op.reverse.shape(ref.shape)
    sizes = bind_sizes(as_blinkdl)
    first = {'V': 'model.embeddings.weight', 'C': 'model.embeddings.weight', 'H': 'model.layers.0.attn.r_k',
             'N': 'model.layers.0.attn.r_k', 'F': 'model.layers.0.ffn.key.weight',
             'Dw': 'model.layers.0.attn.w_lora.lora.0.weight', 'Da': 'model.layers.0.attn.a_lora.lora.0.weight',
             'Dg': 'model.layers.0.attn.g_lora.lora.0.weight'}
    for symbol, name in first.items():
        if symbol not in sizes:
            found = list(tensors[name].shape) if name in tensors else 'missing'
            problems.append(f'cannot read {SIZES[symbol]} from {name} (shape {found}) or any tensor of that size')
    V, C, H, N, F, Dw, Da, Dg = (sizes.get(s, 0) for s in first)
    if 'Dv' in sizes:
        Dv = sizes['Dv']
    elif L > 1:
        problems.append('cannot read the value LoRA rank from model.layers.1.attn.v_lora.lora.0.weight')
        Dv = 0
    else:  # one layer: no v_lora anywhere; the config's rank sizes the layer-0 placeholders
        Dv = cfg.get('v_low_rank_dim') or 32
    checks = [('hidden_size', C), ('vocab_size', V), ('head_dim', N), ('num_heads', H), ('intermediate_size', F),
              ('decay_low_rank_dim', Dw), ('a_low_rank_dim', Da), ('gate_low_rank_dim', Dg)]
    if 'Dv' in sizes:
        checks.append(('v_low_rank_dim', Dv))
    for key, value in checks:
        if value and cfg.get(key) is not None and cfg[key] != value:
            problems.append(f'config.json {key} is {cfg[key]} but the tensors say {value}')
    if H and N and C and H * N != C:
        problems.append(f'model.layers.0.attn.r_k is {H}x{N} = {H * N}, expected hidden size {C}')
    if problems:
        return None
    return Dims(V=V, C=C, L=L, H=H, N=N, F=F, Dw=Dw, Da=Da, Dv=Dv, Dg=Dg)


def _expected_fla(L: int) -> list[str]:
    return [rule.names(layer)[1] for _, rule, layer in expected_blinkdl(L, with_optional=False) if rule.fla]


def make_export_plan(cfg: dict, tensors: dict[str, TensorRef], shown: str, *, precision: str | None = None,
                     layer0_v: bool = True, weight_files: list[str] | None = None) -> ExportPlan:
    """Check every name, shape and dtype (no tensor data is read) and list the output tensors in RWKV-LM's order."""
    notes, warnings = check_config(cfg, shown)
    if any(n.startswith('blocks.') for n in tensors) and not any(n.startswith(('model.', 'layers.')) for n in tensors):
        raise UnsupportedVariantError('the weights already have RWKV-LM names (blocks.*); nothing to convert', shown)
    tensors, alias_notes, problems = apply_layouts(tensors, FLA_SIDE, shown)  # fla-side layouts: table.LAYOUTS
    notes += alias_notes
    dims = _dims(cfg, tensors, problems)
    if dims is None:
        raise KeyMismatchError(problems, shown)
    tied = bool(cfg.get('tie_word_embeddings'))

    by_blinkdl: dict[str, tuple[TensorRef, str]] = {}
    unknown = []
    for name, ref in tensors.items():
        found = lookup_fla(name)
        if found is None or (found[1] is not None and found[1] >= dims.L):
            unknown.append(name)
            continue
        rule, layer = found
        if rule.blinkdl == 'head.weight' and tied:
            notes.append('lm_head.weight ignored: tied to the embeddings, which fla uses as the head')
            continue
        canonical = dims.resolve(rule.shape)
        want = rule.op.shape(canonical)
        if ref.shape != want:
            problems.append(f'{name} has shape {list(ref.shape)}, expected {list(want)} (RWKV-LM {rule.shape})')
        elif ref.dtype not in FLOATING:
            problems.append(f'{name} has dtype {ref.dtype}, expected a floating point dtype')
        elif rule.op.reverse.shape(ref.shape) != canonical:  # the table's ops must be inverses
            problems.append(f'internal error: {rule.op!r} does not reverse {name} to {list(canonical)}')
        else:
            by_blinkdl[rule.names(layer)[0]] = (ref, name)
    known = _expected_fla(dims.L)
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        problems.append(f'unexpected tensor {name}' + (f' (closest known name: {close[0]})' if close else ''))

    entries: list[ExportEntry] = []
    emb = by_blinkdl.get('emb.weight')
    for bname, rule, layer in expected_blinkdl(dims.L, with_optional=layer0_v):
        shape = dims.resolve(rule.shape)
        if rule.fla is None:  # layer-0 att.v0/v1/v2: zero placeholders
            like = by_blinkdl.get('blocks.1.att.v1', emb)
            dtype = precision or (like[0].dtype if like else 'F32')
            entries.append(ExportEntry(bname, shape, dtype, rule, layer, None, None, 'zeros (unused by the model)'))
            continue
        found = by_blinkdl.get(bname)
        note = ''
        if found is None and bname == 'head.weight' and tied and emb is not None:
            found, note = emb, 'copy of the tied embeddings'
        if found is None:
            fla_name = rule.names(layer)[1]
            if fla_name not in tensors:
                problems.append(f'missing tensor {fla_name} [{",".join(map(str, rule.op.shape(shape)))}]')
            continue
        ref, fla_name = found
        entries.append(ExportEntry(bname, shape, precision or ref.dtype, rule, layer, ref, fla_name, note))
    if problems:
        raise KeyMismatchError(problems, shown)

    notes[:0] = [f'fla RWKV-7, {dims.L} layer(s), hidden {dims.C}, {dims.H} heads of {dims.N}, vocab {dims.V}, '
                 f'FFN {dims.F}', f'LoRA ranks: decay {dims.Dw}, a {dims.Da}, value {dims.Dv}, gate {dims.Dg}']
    notes.append('layer-0 att.v0/v1/v2: written as zeros (RWKV-LM training creates them; no model uses them)'
                 if layer0_v else 'layer-0 att.v0/v1/v2: omitted (--no-layer0-v)')
    return ExportPlan(dims, cfg, entries, weight_files or [], notes, warnings)


# ------------------------------------------------------------------------------------------------------------ write

def _producer(entry: ExportEntry, allow_nonfinite: bool, shown: str) -> Callable[[], np.ndarray]:
    def produce() -> np.ndarray:
        if entry.source is None:
            return np.zeros(entry.shape, CARRIER[entry.dtype])
        data = entry.source.load()
        if not allow_nonfinite and not is_finite(data, entry.source.dtype):
            raise NonFiniteError(f'{entry.fla} holds NaN or Inf values; pass --allow-nonfinite to export anyway', shown)
        data = entry.rule.op.reverse.apply(data.reshape(entry.source.shape))
        return np.ascontiguousarray(cast(data, entry.source.dtype, entry.dtype).reshape(entry.shape))
    return produce


def output_format(output: str | os.PathLike, fmt: str | None) -> str:
    if fmt is None:
        return 'safetensors' if str(output).endswith('.safetensors') else 'pth'
    if fmt not in FORMATS:
        raise ConversionError(f'unknown format {fmt!r}; expected one of: {", ".join(FORMATS)}')
    return fmt


def _precision(precision: str | None) -> str | None:
    if precision is None or precision in FLOATING:
        return precision
    try:
        return parse_precision(precision)
    except ValueError as e:
        raise ConversionError(f'precision: {e}') from None


def plan_export(model_dir: str | os.PathLike, *, precision: str | None = None, layer0_v: bool = True) -> ExportPlan:
    """The checked plan for exporting `model_dir`, without reading any tensor data."""
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    with ExitStack() as stack:
        tensors, files = open_weights(model_dir, stack)
        return make_export_plan(cfg, tensors, str(model_dir), precision=_precision(precision), layer0_v=layer0_v,
                                weight_files=files)


def convert_from_fla(
    model_dir: str | os.PathLike,
    output: str | os.PathLike | None,
    *,
    precision: str | None = None,
    fmt: str | None = None,
    force: bool = False,
    layer0_v: bool = True,
    allow_nonfinite: bool = False,
    dry_run: bool = False,
    on_start: Callable[[ExportPlan, int], None] | None = None,
    on_tensor: Callable[[str, int], None] | None = None,
) -> ExportResult:
    """Export the fla / Hugging Face RWKV-7 directory `model_dir` as a BlinkDL RWKV-LM checkpoint at `output`.

    `precision`: None keeps each tensor's stored dtype; otherwise 'BF16'/'F16'/'F32' (or bf16, fp16, float32, ...).
    `fmt`: 'pth' (torch.save format, what RWKV-LM and the `rwkv` package load) or 'safetensors'; None picks by the
    output's suffix (.safetensors, else pth). `layer0_v=False` omits the unused layer-0 att.v0/v1/v2 placeholders.
    An existing `output` is refused unless `force`; the file appears atomically, complete or not at all.
    """
    start = time.perf_counter()
    model_dir = Path(model_dir)
    shown = str(model_dir)
    precision = _precision(precision)
    fmt = output_format(output or '', fmt)
    if output is not None and not dry_run:
        check_target_file(Path(output).absolute(), force)  # fail before reading anything
    cfg = read_config(model_dir)
    with ExitStack() as stack:
        tensors, files = open_weights(model_dir, stack)
        plan = make_export_plan(cfg, tensors, shown, precision=precision, layer0_v=layer0_v, weight_files=files)
        if fmt == 'pth' and output is not None and not str(output).endswith('.pth'):
            plan.warnings.append(f"{output} does not end in .pth: BlinkDL's rwkv package appends .pth to the name it "
                                 'is given')
        model_dtype = next(e.dtype for e in plan.entries if e.blinkdl == 'emb.weight')
        result = ExportResult(None, plan, fmt, model_dtype, bytes_written=plan.total_bytes)
        if dry_run or output is None:
            return result
        out = [OutTensor(e.blinkdl, e.shape, e.dtype, _producer(e, allow_nonfinite, shown)) for e in plan.entries]
        if on_start:
            on_start(plan, plan.total_bytes)
        report = (lambda t: on_tensor(t.name, t.nbytes)) if on_tensor else None
        with atomic_file(output, force=force) as scratch:
            if fmt == 'pth':
                write_pth(scratch, out, on_tensor=report)
            else:
                metadata = {'format': 'pt', 'converted_by': f'rwkv7_convert {__version__}', 'source': model_dir.name}
                write_safetensors(scratch, out, metadata, on_tensor=report)
    result.output = Path(output)
    result.seconds = time.perf_counter() - start
    return result
