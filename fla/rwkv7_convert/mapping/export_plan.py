"""The export side's plan: an fla / Hugging Face directory's config.json and tensors checked against the one table,
and the RWKV-LM tensors to write, in RWKV-LM's order. The mirror of plan.py (the BlinkDL side), step for step:
layouts applied (engine.apply_layouts, fla side), refusals (refusals.REFUSALS: names, then config.json), sizes read
(sizes.dims_from, as plan.py reads them), every name and shape checked, one key report (key_report.py). Only names,
shapes and dtypes are read here, never tensor data.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from fla.rwkv7_convert.errors import KeyMismatchError
from fla.rwkv7_convert.formats.checkpoint import TensorRef, is_int
from fla.rwkv7_convert.formats.dtypes import CARRIER, FLOATING
from fla.rwkv7_convert.mapping.config import Dims, config_notes, size_mismatches
from fla.rwkv7_convert.mapping.engine import (
    apply_layouts,
    apply_orientation,
    expected_blinkdl,
    lookup_blinkdl,
    lookup_fla,
    refuse,
)
from fla.rwkv7_convert.mapping.key_report import missing_tensor, unexpected_tensors
from fla.rwkv7_convert.mapping.ops import IDENTITY
from fla.rwkv7_convert.mapping.schema import Layout, Rule, Seen, Side
from fla.rwkv7_convert.mapping.sizes import dims_from


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

    def lines(self) -> list[str]:
        """export --dry-run's listing: what was detected and every tensor's mapping (placeholders included)."""
        out = ['detected:', *(f'  {note}' for note in self.notes),
               'mapping (fla name [shape] dtype -> RWKV-LM name [shape] dtype):']
        for e in self.entries:
            if e.source is None:
                out.append(f'  (placeholder) -> {e.blinkdl} {list(e.shape)} {e.dtype}: {e.note}')
                continue
            how = ', '.join(x for x in (e.note, '' if e.rule.op is IDENTITY else e.rule.reverse.name) if x)
            out.append(f'  {e.fla} {list(e.source.shape)} {e.source.dtype} -> {e.blinkdl} {list(e.shape)} {e.dtype}'
                       + (f' ({how})' if how else ''))
        return out


def _config_layers(cfg: dict, tensors: dict[str, TensorRef], problems: list[str]) -> int | None:
    """L from config.json, checked against the tensors' layer indices; None (with a problem) when it is no count."""
    L = cfg.get('num_hidden_layers')
    if not isinstance(L, int) or L <= 0:
        problems.append(f'config.json num_hidden_layers is {L!r}, expected a positive integer')
        return None
    layer_ids = {int(m.group(1)) for n in tensors if (m := re.match(r'^model\.layers\.(\d+)\.', n))}
    if layer_ids and max(layer_ids) + 1 != L:
        problems.append(f'config.json num_hidden_layers is {L} but the tensors have layers 0..{max(layer_ids)}')
    return L


def _fla_name(blinkdl: str) -> str:
    rule, layer = lookup_blinkdl(blinkdl)
    return rule.names(layer)[1]


def _dims(cfg: dict, tensors: dict[str, TensorRef], problems: list[str], shown: str) -> Dims:
    """Sizes from the tensors' shapes, read as the forward direction reads them (sizes.dims_from, on the tensors'
    RWKV-LM names and shapes), then cross-checked with config.json (its mismatches added to `problems`)."""
    L = _config_layers(cfg, tensors, problems)
    if L is None:
        raise KeyMismatchError(problems, shown)
    as_blinkdl = {}
    for name, ref in tensors.items():
        found = lookup_fla(name)
        if found is not None and found[0].reverse.fits(ref.shape):
            rule, layer = found
            as_blinkdl[rule.names(layer)[0]] = rule.reverse.shape(ref.shape)
    # one layer has no used value LoRA: the config's rank sizes the layer-0 placeholders
    v = cfg.get('v_low_rank_dim')
    dims = dims_from(as_blinkdl, L, shown, problems=problems, shown=_fla_name,
                     default_Dv=v if is_int(v) and v > 0 else 32)
    read = {k: size for k, size in asdict(dims).items() if k != 'Dv' or L > 1}  # one layer: Dv is the config's own
    problems += [f'config.json {key} is {value} but the tensors say {size}'
                 for key, value, _, size in size_mismatches(cfg, read)]
    return dims


def _expected_fla(L: int) -> list[str]:
    return [rule.names(layer)[1] for _, rule, layer in expected_blinkdl(L, with_optional=False) if rule.fla]


def refuse_fla_input(cfg: dict, tensors: dict[str, TensorRef], shown: str) -> tuple:
    """The fla-side layouts applied and refusals.REFUSALS checked in order (names, shapes, config.json) for a directory;
    the export and verify refuse the same directories. Returns apply_layouts' (tensors, notes, problems, found)."""
    tensors, layout_notes, problems, found = apply_layouts(tensors, Side.FLA)  # fla-side layouts: table.LAYOUTS
    refuse(Side.FLA, Seen({n: r.shape for n, r in tensors.items()}, found, cfg), shown)
    return tensors, layout_notes, problems, found


def _by_blinkdl(tensors: dict[str, TensorRef], dims: Dims, tied: bool, notes: list[str], problems: list[str],
                ) -> dict[str, tuple[TensorRef, str]]:
    """RWKV-LM name -> (fla tensor, its name) for every tensor whose name, shape and dtype check out; the rest go to
    `problems` (unknown names as the key report's unexpected tensors)."""
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
        else:  # the rule's reverse gives `canonical` back: its op is exact (tests/mapping/test_ops.py)
            by_blinkdl[rule.names(layer)[0]] = (ref, name)
    problems += unexpected_tensors(unknown, _expected_fla(dims.L))
    return by_blinkdl


def _entries(by_blinkdl: dict[str, tuple[TensorRef, str]], tensors: dict[str, TensorRef], dims: Dims, tied: bool,
             precision: str | None, layer0_v: bool, problems: list[str]) -> list[ExportEntry]:
    """The output tensors in RWKV-LM's order: each from its fla tensor, a tied head from the embeddings, layer-0
    att.v0/v1/v2 as zero placeholders; a missing one is a problem."""
    entries: list[ExportEntry] = []
    emb = by_blinkdl.get('emb.weight')
    for bname, rule, layer in expected_blinkdl(dims.L, with_optional=layer0_v):
        shape = dims.resolve(rule.shape)
        if rule.fla is None:  # layer-0 att.v0/v1/v2: zero placeholders
            like = by_blinkdl.get('blocks.1.att.v1', emb)
            dtype = precision or (like[0].dtype if like else 'F32')
            entries.append(ExportEntry(bname, shape, dtype, rule, layer, None, None, 'zeros (unused by the model)'))
            continue
        found, note = by_blinkdl.get(bname), ''
        if found is None and bname == 'head.weight' and tied and emb is not None:
            found, note = emb, 'copy of the tied embeddings'
        if found is not None:
            ref, fla_name = found
            entries.append(ExportEntry(bname, shape, precision or ref.dtype, rule, layer, ref, fla_name, note))
        elif (fla_name := rule.names(layer)[1]) not in tensors:
            problems.append(missing_tensor(fla_name, rule.op.shape(shape)))
    return entries


def make_export_plan(cfg: dict, tensors: dict[str, TensorRef], shown: str, *, precision: str | None = None,
                     layer0_v: bool = True, weight_files: list[str] | None = None) -> ExportPlan:
    """Check every name, shape and dtype (no tensor data is read) and list the output tensors in RWKV-LM's order."""
    tensors, layout_notes, problems, detected = refuse_fla_input(cfg, tensors, shown)
    tensors, more_notes, oriented = apply_orientation(tensors, Side.FLA)
    config, warnings = config_notes(cfg)
    dims = _dims(cfg, tensors, problems, shown)
    tied = bool(cfg.get('tie_word_embeddings'))
    notes = dims.notes('fla RWKV-7') + config + layout_notes + more_notes
    by_blinkdl = _by_blinkdl(tensors, dims, tied, notes, problems)
    entries = _entries(by_blinkdl, tensors, dims, tied, precision, layer0_v, problems)
    if problems:
        raise KeyMismatchError(problems, shown)
    notes.append('layer-0 att.v0/v1/v2: written as zeros (RWKV-LM training creates them; no model uses them)'
                 if layer0_v else 'layer-0 att.v0/v1/v2: omitted (--no-layer0-v)')
    return ExportPlan(dims, cfg, entries, weight_files or [], notes, warnings, list(detected) + list(oriented))
