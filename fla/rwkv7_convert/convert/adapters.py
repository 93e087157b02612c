"""RWKV-PEFT fine-tunes on conversion: an adapter (LoRA, PiSSA, DiSHA Bone or Bat, with its trained full tensors)
merged into its base model's tensors as RWKV-PEFT's merge scripts do (mapping/adapter_plan.py; convert_to_fla's
`adapter`), or carried as a Hugging Face PEFT adapter directory (write_peft_adapter, convert/peft_adapter.py).

Nothing here instantiates a model: each merged tensor is computed when the writer reaches it, from its target weight
and that target's factors.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.outputs import OutTensor
from fla.rwkv7_convert.formats.provenance import PROVENANCE_FILE, FileDigest
from fla.rwkv7_convert.formats.readers import open_checkpoint
from fla.rwkv7_convert.formats.writers import WRITERS
from fla.rwkv7_convert.mapping.adapter_plan import AdapterFile, merged_tensors, read_adapter
from fla.rwkv7_convert.mapping.plan import normalize_names, unwrap_state_dict

ADAPTER_FORMATS = ('merged', 'peft', 'both')


@dataclass(frozen=True)
class AdapterSpec:
    """What `--adapter` names: the RWKV-PEFT adapter file, PiSSA's init file, a LoRA's alpha, and what to write:
    'merged' (the merged model), 'peft' (the base model and a PEFT adapter directory beside it) or 'both'."""

    path: str | os.PathLike
    pissa_init: str | os.PathLike | None = None
    alpha: float | None = None
    form: str = 'merged'

    def files(self) -> tuple[str, ...]:
        return tuple(os.fspath(p) for p in (self.path, self.pissa_init) if p is not None)


def open_adapter(stack: ExitStack, spec: AdapterSpec) -> AdapterFile:
    """The adapter (and init) file opened on `stack` and read against the table: one line on any refusal."""
    if spec.form not in ADAPTER_FORMATS:
        raise ConversionError(f'--adapter-format {spec.form!r}: expected one of {", ".join(ADAPTER_FORMATS)}')
    shown = os.fspath(spec.path)
    tree = stack.enter_context(open_checkpoint(spec.path)).tree
    init_tree = stack.enter_context(open_checkpoint(spec.pissa_init)).tree if spec.pissa_init is not None else None
    return read_adapter(tree, shown, init_tree=init_tree,
                        init_shown=os.fspath(spec.pissa_init) if spec.pissa_init is not None else None, alpha=spec.alpha)


def merged_tree(base_tree: object, adapter: AdapterFile, base_shown: str) -> dict:
    """The base checkpoint's tensors (unwrapped, wrapper prefixes stripped) with the adapter merged in."""
    tensors, _ = unwrap_state_dict(base_tree, base_shown)
    tensors, _, _ = normalize_names(tensors)  # duplicates are reported by the plan, which reads the base again
    return merged_tensors(adapter, tensors, base_shown)


def adapter_notes(adapter: AdapterFile, form: str = 'merged') -> list[str]:
    """The dry run's and the summary's lines about a merge (or, form 'peft', about the PEFT adapter written)."""
    m = adapter.method
    alpha = f', alpha {adapter.alpha:g} (scale {adapter.alpha / adapter.ranks[0]:g})' if adapter.alpha is not None else ''
    head = f'adapter {Path(adapter.path).name}: {m.name} rank {", ".join(map(str, adapter.ranks))}{alpha} on ' \
           f'{len(adapter.factors)} weights'
    if form == 'peft':
        return [f'{head}, written as a PEFT {m.peft} adapter to OUTDIR/peft beside the unmerged base ({m.peft_note})',
                f'adapter trained full tensors: {len(adapter.trained)}, as PEFT modules_to_save']
    lines = [f'{head}, merged as {m.formula}',
             f'adapter trained full tensors: {len(adapter.trained)}, in place of the base\'s']
    if m.note:
        lines.append(f'adapter: {m.note}')
    return lines


def adapter_provenance(adapter: AdapterFile, spec: AdapterSpec) -> dict:
    """rwkv7_convert.json's record of the adapter: names, sizes and digests (no local paths), method and options."""
    def record(path) -> dict:
        digest = FileDigest(path)
        return {'name': Path(path).name, 'bytes': digest.size, 'sha256': digest.result()}

    out = {**record(spec.path), 'method': adapter.method.name, 'rank': adapter.ranks, 'targets': len(adapter.factors),
           'trained': sorted(adapter.trained), 'form': spec.form}
    if adapter.alpha is not None:
        out['alpha'] = adapter.alpha
    if spec.pissa_init is not None:
        out['init'] = record(spec.pissa_init)
    return out


def write_merged_checkpoint(source: str | os.PathLike, spec: AdapterSpec, output: str | os.PathLike) -> Path:
    """The base checkpoint `source` with the adapter merged, as the BlinkDL .pth RWKV-PEFT's merge script saves
    (canonical names, in the base's order, the new names after): what verify's reference runs on."""
    shown = os.fspath(source)
    with open_checkpoint(source) as ckpt, ExitStack() as stack:
        merged = merged_tree(ckpt.tree, open_adapter(stack, spec), shown)
        out = [OutTensor(r.name, tuple(r.shape), r.dtype, r.load) for r in merged.values()]
        WRITERS['pth'].write(output, out, {}, None)
    return Path(output)


def check_adapter_record(model_dir: str, spec: AdapterSpec) -> None:
    """The directory's rwkv7_convert.json records this adapter (sha256) and alpha: a directory converted without it,
    with another adapter or another alpha is refused before any compute (--any-source skips this)."""
    try:
        record = json.loads((Path(model_dir) / PROVENANCE_FILE).read_text(encoding='utf-8')).get('adapter')
    except (OSError, ValueError, AttributeError):
        record = None
    if not isinstance(record, dict):
        raise ConversionError(f'{PROVENANCE_FILE} records no adapter: this directory was not converted with --adapter '
                              f'{Path(spec.path).name} (--any-source verifies anyway)', model_dir)
    if record.get('sha256') != FileDigest(spec.path).result():
        raise ConversionError(f'{PROVENANCE_FILE} records the adapter {record.get("name")} (sha256 '
                              f'{str(record.get("sha256"))[:12]}...), not {spec.path} (--any-source verifies anyway)',
                              model_dir)
    if record.get('alpha') != spec.alpha:
        raise ConversionError(f'{PROVENANCE_FILE} records alpha {record.get("alpha")}, not --lora-alpha {spec.alpha} '
                              '(--any-source verifies anyway)', model_dir)


@contextmanager
def reference_source(source: str, spec: AdapterSpec | None) -> Iterator[str]:
    """verify's reference file: `source` itself, or with an adapter the merge RWKV-PEFT's scripts would save, written
    to a scratch folder for the run (removed after)."""
    if spec is None:
        yield source
        return
    if spec.form != 'merged':
        raise ConversionError('--verify with --adapter-format peft: after converting, run rwkv7-verify --rwkv7 BASE '
                              '--adapter ADAPTER --model OUTDIR --peft OUTDIR/peft (fla with the PEFT adapter loaded, '
                              'proven exactly), or convert the merged form with --verify')
    with tempfile.TemporaryDirectory(prefix='rwkv7-merged-') as scratch:
        yield str(write_merged_checkpoint(source, spec, Path(scratch) / Path(source).name))
