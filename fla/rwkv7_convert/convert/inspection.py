"""What a BlinkDL checkpoint or an fla directory holds and what converting it would do: the dry run of its direction
(to_fla.convert_to_fla or to_blinkdl.convert_from_fla with `dry_run`, hence the plans of mapping/), described.

Nothing is written and no tensor data is read: names, shapes and dtypes only. The direction is the input's: a file
is a BlinkDL checkpoint (convert); a directory is whichever direction's plan takes it (a Hugging Face directory
holding RWKV-LM names converts, an fla directory exports). What both refuse is raised as the more telling of the two
errors (one line, naming the path).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.display import human_bytes, human_count
from fla.rwkv7_convert.formats.readers import open_checkpoint
from fla.rwkv7_convert.formats.state_file import FLA_STATE_KEY, has_state, read_state_file
from fla.rwkv7_convert.hub.model_card import fuse_norm_line, runs_fused
from fla.rwkv7_convert.mapping.adapter_plan import AdapterFile, read_adapter
from fla.rwkv7_convert.mapping.config import Dims
from fla.rwkv7_convert.mapping.table import BLINKDL_STATE_KEY

SCHEMA = 1  # the version of Inspection.to_dict's keys; raised when a key changes meaning or goes away
EVIDENCE_SHOWN = 8  # names per layout in the dict (the count is given too); the text shows 3


@dataclass
class Inspection:
    path: str
    direction: str  # 'convert' (BlinkDL -> fla directory) or 'export' (fla directory -> BlinkDL)
    format: str  # what the input is read as: 'pth', 'safetensors', 'hf-directory'
    dims: Dims
    parameters: int
    tensors: int  # the stored tensors that carry over
    dtypes: dict[str, dict[str, int]]  # stored dtype -> {'tensors': n, 'parameters': m}
    output_dtype: str
    output_bytes: int
    fuse_norm: bool  # fla's fused norms: what the conversion writes into config.json, or what the directory's says
    layouts: list[dict] = field(default_factory=list)  # {'name', 'kind', 'who', 'evidence', 'evidence_count'}
    dropped: list[dict] = field(default_factory=list)  # {'name', 'why'}: stored, not carried over
    added: list[dict] = field(default_factory=list)  # {'name', 'why'}: written without a stored source
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # a tuned initial state: {'names', 'layers', 'shape', 'dtype', 'file'} as stored (BlinkDL [H, V, K] in a merge,
    # fla's [H, K, V] in a directory's state file); None when there is none
    state: dict | None = None

    def to_dict(self) -> dict:
        """A stable dict for scripts (`rwkv7-inspect --json`): the keys of SCHEMA."""
        return {'schema': SCHEMA, 'ok': True, 'path': self.path, 'direction': self.direction, 'format': self.format,
                'layouts': self.layouts, 'sizes': dict(vars(self.dims)), 'head_size': self.dims.N,
                'parameters': self.parameters, 'tensors': self.tensors, 'dtypes': self.dtypes,
                'output': {'dtype': self.output_dtype, 'bytes': self.output_bytes}, 'fuse_norm': self.fuse_norm,
                'dropped': self.dropped, 'added': self.added, 'state': self.state, 'notes': self.notes,
                'warnings': self.warnings}

    def lines(self) -> list[str]:
        """About a dozen lines for people."""
        d = self.dims
        what = {'convert': 'a BlinkDL RWKV-7 checkpoint: rwkv7-convert turns it into an fla directory',
                'export': 'an fla RWKV-7 directory: rwkv7-export turns it into a BlinkDL checkpoint'}[self.direction]
        out = [f'{self.path}: {what} (read as {self.format})']
        for x in self.layouts:
            shown = ', '.join(x['evidence'][:3]) + (f', ... ({x["evidence_count"]} in all)'
                                                    if x['evidence_count'] > 3 else '')
            out.append(f'layout: {x["name"]} ({x["kind"]}), shown by {shown}')
        if not self.layouts:
            side = 'RWKV-LM' if self.direction == 'convert' else 'fla'
            out.append(f'layout: canonical {side} names and shapes (no other layout\'s signature)')
        out.append(f'sizes: vocab V={d.V}, hidden C={d.C}, layers L={d.L}, heads H={d.H} of head size N={d.N}, '
                   f'FFN F={d.F}')
        out.append(f'LoRA ranks: decay Dw={d.Dw}, a Da={d.Da}, value Dv={d.Dv}, gate Dg={d.Dg}')
        out.append(f'parameters: {human_count(self.parameters)} ({self.parameters:,}) in {self.tensors} tensors')
        out.append('stored dtypes: ' + ', '.join(f'{k} {v["tensors"]} tensors ({human_count(v["parameters"])})'
                                                 for k, v in self.dtypes.items()))
        out.append(f'would write: {human_bytes(self.output_bytes)} of weights in {self.output_dtype}'
                   + (' and its tuned state' if self.state else ''))
        out.append(('norms (the config.json it would write; --fuse-norm chooses): ' if self.direction == 'convert'
                    else 'norms (its config.json): ') + fuse_norm_line(self.fuse_norm))
        if self.state:
            st = self.state
            out.append(f'tuned initial state: {st["layers"]} blocks of {st["shape"]} {st["dtype"]} ({st["names"]}, in '
                       f'{st["file"]})')
        for what, items in (('dropped', self.dropped), ('added', self.added)):
            if items:
                whys = {}
                for item in items:
                    whys.setdefault(item['why'], []).append(item['name'])
                out += [f'{what}: {", ".join(names)} ({why})' for why, names in whys.items()]
        out += [f'note: {n}' for n in self.notes]
        out += [f'warning: {w}' for w in self.warnings]
        out.append('refused: nothing in names, shapes or config; tensor data (NaN/Inf) is checked only when converting')
        return out


BARE_STATE = 'RWKV state-tuning file without its base model'  # the refusal (refusals.REFUSALS) inspect describes instead


@dataclass
class BareState:
    """A bare tuned-state file (RWKV-PEFT's state tuning: blocks.N.att.time_state only, no weights), which converts
    only against its base model's directory (rwkv7-convert --base)."""

    path: str
    format: str
    names: str  # the pattern, e.g. blocks.N.att.time_state
    layers: int
    shape: list[int]  # one layer's, as stored: [H, V, K] (BlinkDL's orientation)
    dtype: str
    nbytes: int

    def to_dict(self) -> dict:
        state = {'names': self.names, 'layers': self.layers, 'shape': self.shape, 'dtype': self.dtype,
                 'file': Path(self.path).name}
        return {'schema': SCHEMA, 'ok': True, 'path': self.path, 'direction': 'state', 'format': self.format,
                'head_size': self.shape[-1], 'heads': self.shape[0], 'state': state, 'bytes': self.nbytes}

    def lines(self) -> list[str]:
        h, n = self.shape[0], self.shape[-1]
        return [f'{self.path}: a bare tuned-state file (state tuning), no model weights (read as {self.format})',
                f'tuned initial state: {self.layers} blocks of {self.shape} {self.dtype} ({self.names}, '
                f'[head, value, key]): a model of {self.layers} layers, {h} heads of head size {n} (hidden {h * n}), '
                f'{human_bytes(self.nbytes)}',
                f'convert: rwkv7-convert --rwkv7 {self.path} --base BASE_OUTDIR --output STATE_OUTDIR, BASE_OUTDIR '
                'being its base model converted (its sizes are checked against this state)']


def _bare_state(path: str, refusal: ConversionError) -> BareState:
    with open_checkpoint(path) as ckpt:
        tree = ckpt.tree if isinstance(ckpt.tree, dict) else {}
        refs = [(n, r) for n, r in tree.items() if BLINKDL_STATE_KEY.match(re.sub(r'^.*?(?=blocks\.|init_state\.)', '', n))]
        if not refs:  # wrapped or prefixed beyond a flat dict: the refusal says what to do
            raise refusal
        name, first = refs[0]
        return BareState(path, ckpt.kind, re.sub(r'\.\d+\.', '.N.', name), len(refs), list(first.shape), first.dtype,
                         sum(ref.nbytes for _, ref in refs))


def _layouts(found) -> list[dict]:
    return [{'name': x.name, 'kind': x.kind.value, 'who': x.who, 'evidence': list(hits[:EVIDENCE_SHOWN]),
             'evidence_count': len(hits)} for x, hits in found]


def _dtypes(refs) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for ref in refs:
        row = out.setdefault(ref.dtype, {'tensors': 0, 'parameters': 0})
        row['tensors'] += 1
        row['parameters'] += ref.numel
    return dict(sorted(out.items()))


def _blinkdl(path: str, head_size: int | None) -> Inspection:
    result = convert_to_fla(path, None, head_size=head_size, dry_run=True)
    plan = result.plan
    return Inspection(
        path, 'convert', result.source_format, plan.dims, plan.num_parameters, len(plan.kept),
        _dtypes(e.source for e in plan.kept), result.dtype, result.bytes_written, runs_fused(result.config),
        _layouts(plan.layouts),
        dropped=[{'name': e.source.name, 'why': e.rule.note or 'not carried over'} for e in plan.dropped],
        notes=plan.notes[2:],  # the first two are the sizes, shown on their own lines
        state=_merge_state(plan.states, Path(path).name))


def _merge_state(entries, file: str) -> dict | None:
    if not entries:
        return None
    first = entries[0]
    return {'names': first.source.name.replace('.0.', '.N.'), 'layers': len(entries),
            'shape': list(first.source.shape), 'dtype': first.source.dtype, 'file': file}


def _directory_state(path: str) -> dict | None:
    if not has_state(path):
        return None
    sf = read_state_file(path)
    sf.close()
    return {'names': FLA_STATE_KEY.format(i='N'), 'layers': len(sf.layers), 'shape': list(sf.layers[0].shape),
            'dtype': sf.dtype, 'file': sf.path.name}


def _fla(path: str) -> Inspection:
    result = convert_from_fla(path, None, dry_run=True)
    plan = result.plan
    sources = {e.fla: e.source for e in plan.entries if e.source is not None}  # a tied head is the embedding's copy
    return Inspection(
        path, 'export', 'hf-directory', plan.dims, plan.num_parameters, len(sources), _dtypes(sources.values()),
        result.dtype, result.bytes_written, runs_fused(plan.config), _layouts(plan.layouts),
        added=[{'name': e.blinkdl, 'why': e.note} for e in plan.entries if e.source is None],
        notes=plan.notes[2:], warnings=list(plan.warnings), state=_directory_state(path))


ADAPTER_REFUSAL = 'RWKV-PEFT adapter without its base model'  # the refusal (refusals.REFUSALS) inspect describes instead


@dataclass
class AdapterInspection:
    """An RWKV-PEFT adapter file described: method, rank, targets, trained parts, what its merge needs."""

    path: str
    adapter: AdapterFile

    def to_dict(self) -> dict:
        a = self.adapter
        m = a.method
        return {'schema': SCHEMA, 'ok': True, 'path': self.path, 'direction': 'adapter',
                'adapter': {'method': m.name, 'or': a.others, 'formula': m.formula, 'rank': a.ranks,
                            'targets': sorted(a.factors), 'trained': sorted(a.trained), 'needs': m.needs or None,
                            'peft': m.peft or None, 'peft_note': m.peft_note}}

    def lines(self) -> list[str]:
        return [f'{self.path}: an RWKV-PEFT adapter: rwkv7-convert --rwkv7 BASE.pth --adapter {Path(self.path).name} '
                'merges it (or --adapter-format peft)', *self.adapter.describe()]


def inspect_adapter(path: str | os.PathLike) -> AdapterInspection:
    """Describe an adapter file from its names and shapes (the method told without the options a merge needs)."""
    shown = os.fspath(path)
    with open_checkpoint(shown) as ckpt:
        return AdapterInspection(shown, read_adapter(ckpt.tree, shown, choose=False))


def refused(error: ConversionError, path: str | os.PathLike) -> dict:
    """The dict `--json` prints when the input is refused: the same keys on every failure."""
    return {'schema': SCHEMA, 'ok': False, 'path': os.fspath(path), 'error': error.one_line(),
            'error_type': type(error).__name__, 'refusal': error.refusal.variant if error.refusal is not None else None}


def inspect(path: str | os.PathLike, *, head_size: int | None = None) -> Inspection | BareState:
    """Describe `path` (a BlinkDL .pth / .safetensors file, an fla directory, or a Hugging Face directory holding
    RWKV-LM names) from its direction's dry run; a bare tuned-state file as a `BareState`. Raises the ConversionError
    that direction would (one line, naming the path) when it would refuse the input."""
    shown = os.fspath(path)
    if not Path(shown).is_dir():
        try:
            return _blinkdl(shown, head_size)
        except ConversionError as e:
            variant = e.refusal.variant if e.refusal is not None else None
            if variant == ADAPTER_REFUSAL:
                return inspect_adapter(shown)
            if variant != BARE_STATE:
                raise
            return _bare_state(shown, e)
    try:  # a directory is either direction's: the one whose plan takes it
        return _blinkdl(shown, head_size)
    except ConversionError as e:
        to_fla_error = e
    try:
        return _fla(shown)
    except ConversionError as e:
        raise _more_telling(to_fla_error, e) from None


def _more_telling(to_fla: ConversionError, to_blinkdl: ConversionError) -> ConversionError:
    """Both directions refused a directory: the error of the direction it belongs to. A refusal that says the input
    is the other direction's (`Refusal.other_direction`) points to the other error; else a concrete problem (a key
    report, an unreadable file: no refusal) tells more than a refusal, which may only mean "not my kind of input";
    else the export's (directories are mostly fla's)."""
    def other(e: ConversionError) -> bool:
        return e.refusal is not None and e.refusal.other_direction

    if other(to_blinkdl) or other(to_fla):
        return to_fla if other(to_blinkdl) else to_blinkdl
    if to_blinkdl.refusal is not None and to_fla.refusal is None:
        return to_fla
    return to_blinkdl


__all__ = ['SCHEMA', 'AdapterInspection', 'BareState', 'Inspection', 'inspect', 'inspect_adapter', 'refused']
