"""The export side's plan: an fla / Hugging Face directory's config.json and tensors checked against the one table,
and the RWKV-LM tensors to write, in RWKV-LM's order. The mirror of plan.py (the BlinkDL side), step for step:
layouts applied (engine.apply_layouts, fla side), refusals (table.REFUSALS: names, then config.json), sizes bound
(engine.bind_sizes), every name and shape checked, one key report (key_report.py). Only names, shapes and dtypes are read
here, never tensor data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from fla.rwkv7_convert.errors import KeyMismatchError
from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.formats.dtypes import CARRIER, FLOATING
from fla.rwkv7_convert.mapping.config import Dims, config_notes, size_mismatches
from fla.rwkv7_convert.mapping.engine import apply_layouts, apply_orientation, bind_sizes, expected_blinkdl, lookup_fla, refuse
from fla.rwkv7_convert.mapping.key_report import missing_tensor, unexpected_tensors
from fla.rwkv7_convert.mapping.schema import Layout, Rule, Seen, Side
from fla.rwkv7_convert.mapping.table import SIZES


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
    layouts: list[tuple[Layout, tuple[str, ...]]] = field(default_factory=list)  # detected, with their evidence

    @property
    def num_parameters(self) -> int:
        return sum(int(np.prod(e.shape, dtype=np.int64)) for e in self.entries if e.source is not None)

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


def _dims(cfg: dict, tensors: dict[str, TensorRef], problems: list[str]) -> Dims | None:
    """Sizes from the tensors' shapes, bound as the forward direction binds them (engine.bind_sizes, on the tensors'
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
            as_blinkdl[rule.names(layer)[0]] = rule.reverse.shape(ref.shape)
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
    known = {'V': V, 'C': C, 'H': H, 'N': N, 'F': F, 'Dw': Dw, 'Da': Da, 'Dg': Dg, 'Dv': sizes.get('Dv', 0)}
    problems += [f'config.json {key} is {value} but the tensors say {size}'
                 for key, value, _, size in size_mismatches(cfg, known)]
    if H and N and C and H * N != C:
        problems.append(f'model.layers.0.attn.r_k is {H}x{N} = {H * N}, expected hidden size {C}')
    if problems:
        return None
    return Dims(V=V, C=C, L=L, H=H, N=N, F=F, Dw=Dw, Da=Da, Dv=Dv, Dg=Dg)


def _expected_fla(L: int) -> list[str]:
    return [rule.names(layer)[1] for _, rule, layer in expected_blinkdl(L, with_optional=False) if rule.fla]


def refuse_fla_input(cfg: dict, tensors: dict[str, TensorRef], shown: str) -> tuple:
    """The fla-side layouts applied and table.REFUSALS checked in order (names, shapes, config.json) for a directory;
    the export and verify refuse the same directories. Returns apply_layouts' (tensors, notes, problems, found)."""
    tensors, layout_notes, problems, found = apply_layouts(tensors, Side.FLA)  # fla-side layouts: table.LAYOUTS
    refuse(Side.FLA, Seen({n: r.shape for n, r in tensors.items()}, found, cfg), shown)
    return tensors, layout_notes, problems, found


def make_export_plan(cfg: dict, tensors: dict[str, TensorRef], shown: str, *, precision: str | None = None,
                     layer0_v: bool = True, weight_files: list[str] | None = None) -> ExportPlan:
    """Check every name, shape and dtype (no tensor data is read) and list the output tensors in RWKV-LM's order."""
    tensors, layout_notes, problems, detected = refuse_fla_input(cfg, tensors, shown)
    tensors, more_notes, oriented = apply_orientation(tensors, Side.FLA)
    notes, warnings = config_notes(cfg)
    notes += layout_notes + more_notes
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
        elif rule.reverse.shape(ref.shape) != canonical:  # the table's ops must be inverses
            problems.append(f'internal error: {rule.op!r} does not reverse {name} to {list(canonical)}')
        else:
            by_blinkdl[rule.names(layer)[0]] = (ref, name)
    problems += unexpected_tensors(unknown, _expected_fla(dims.L))

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
                problems.append(missing_tensor(fla_name, rule.op.shape(shape)))
            continue
        ref, fla_name = found
        entries.append(ExportEntry(bname, shape, precision or ref.dtype, rule, layer, ref, fla_name, note))
    if problems:
        raise KeyMismatchError(problems, shown)

    notes[:0] = [f'fla RWKV-7, {dims.L} layer(s), hidden {dims.C}, {dims.H} heads of {dims.N}, vocab {dims.V}, '
                 f'FFN {dims.F}', f'LoRA ranks: decay {dims.Dw}, a {dims.Da}, value {dims.Dv}, gate {dims.Dg}']
    notes.append('layer-0 att.v0/v1/v2: written as zeros (RWKV-LM training creates them; no model uses them)'
                 if layer0_v else 'layer-0 att.v0/v1/v2: omitted (--no-layer0-v)')
    return ExportPlan(dims, cfg, entries, weight_files or [], notes, warnings, list(detected) + list(oriented))
