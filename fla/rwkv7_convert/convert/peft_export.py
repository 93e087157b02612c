"""The way back: a Hugging Face PEFT adapter trained on a converted fla model, exported as an RWKV-PEFT adapter `.pth`
(names and orientations as RWKV-PEFT's trainer writes them, the alpha its merge needs stated) or as the merged
BlinkDL checkpoint (RWKV-PEFT's merge of that adapter into the exported base, as convert's `--adapter` merges).

The names come from the table's rules read backwards (`lookup_fla`): a PEFT key `base_model.model.<fla module>.lora_A
.weight` is `<RWKV-LM target>.lora_A`, `.miss_block` is `.disha` (PEFT's default MiSS is RWKV-PEFT's Bone), every
other key (`modules_to_save`) a trained full tensor turned back by its rule's reverse op. Nothing is instantiated:
each tensor is read when it is written.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from fla.rwkv7_convert import __version__
from fla.rwkv7_convert.convert.to_blinkdl import _producer, plan_export
from fla.rwkv7_convert.errors import ConversionError, KeyMismatchError, UnsupportedVariantError
from fla.rwkv7_convert.formats.atomic import atomic_file, check_target_file
from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.formats.hf_directory import read_config, read_json_object
from fla.rwkv7_convert.formats.outputs import OutTensor
from fla.rwkv7_convert.formats.readers import open_checkpoint, open_hf_directory
from fla.rwkv7_convert.formats.writers import writer_for
from fla.rwkv7_convert.mapping.adapter_methods import ADAPTER_METHODS, ADAPTER_TARGETS, LORA_ALPHA_HOME
from fla.rwkv7_convert.mapping.adapter_plan import AdapterFile, check_base, merged_tensors
from fla.rwkv7_convert.mapping.engine import lookup_fla
from fla.rwkv7_convert.mapping.export_plan import make_export_plan
from fla.rwkv7_convert.mapping.schema import AdapterMethod

PEFT_PREFIX = 'base_model.model.'
EXPORT_FORMS = ('rwkv-peft', 'merged')


@dataclass
class AdapterExport:
    output: Path | None
    adapter: AdapterFile
    form: str
    fmt: str
    bytes_written: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        a = self.adapter
        out = [f'{a.method.name} rank {", ".join(map(str, a.ranks))} on {len(a.factors)} weights, '
               f'{len(a.trained)} trained full tensors']
        if a.method.needs == '--lora-alpha' and self.form == 'rwkv-peft':
            out.append(f'alpha {a.alpha:g}: RWKV-PEFT\'s merge needs it (merge/merge_lora.py {a.alpha:g} ..., or '
                       f'rwkv7-convert --adapter ... --lora-alpha {a.alpha:g}); the .pth does not keep it')
        return out


def _config(adapter_dir: Path) -> dict:
    return read_json_object(adapter_dir / 'adapter_config.json', 'a PEFT adapter config')


# PEFT's forms that are an RWKV-PEFT method exactly (every PEFT tensor a factor as stored), by peft_type
_INVERTIBLE = {m.peft_type: m for m in ADAPTER_METHODS if m.peft_invertible}
# the values each config key may have for that equality (LoRA: W + B A alpha / r, one alpha, any rank per target;
# MiSS: Bone's block sum, whatever its initialization was)
_EQUAL_ONLY_IF = {'LORA': {'use_rslora': (False, None), 'use_dora': (False, None), 'alpha_pattern': ({}, None),
                           'fan_in_fan_out': (False, None), 'bias': ('none', None)},
                  'MISS': {'init_weights': (True, False, None), 'bias': ('none', None)}}


def _method(cfg: dict, shown: str) -> tuple[AdapterMethod, float | None]:
    """The RWKV-PEFT method equal to this PEFT configuration, and its alpha; one line for what has none."""
    kind = cfg.get('peft_type')
    method = _INVERTIBLE.get(kind)
    if method is None:
        raise UnsupportedVariantError(f'peft_type {kind!r} has no RWKV-PEFT form (' + ', '.join(
            f'{k} = {m.name}' for k, m in _INVERTIBLE.items()) + ' have one)', shown)
    unequal = [f'{k}={cfg.get(k)!r}' for k, ok in _EQUAL_ONLY_IF[kind].items() if cfg.get(k) not in ok]
    if unequal:
        raise UnsupportedVariantError(f'a {kind} adapter with {", ".join(unequal)} has no RWKV-PEFT form ({method.name} '
                                      f'is {method.formula}); merge it in peft instead', shown)
    return method, float(cfg['lora_alpha']) if method.peft_alpha == 'alpha' else None


def _reversed(ref: TensorRef, name: str, rule) -> TensorRef:
    op = rule.reverse
    return TensorRef(name, op.shape(tuple(ref.shape)), ref.dtype, lambda: op.apply(ref.load().reshape(ref.shape)))


def read_peft_adapter(stack: ExitStack, adapter_dir: str | os.PathLike) -> AdapterFile:
    """A PEFT adapter directory as an RWKV-PEFT adapter (its factors and trained tensors under RWKV-LM names)."""
    adapter_dir = Path(adapter_dir)
    shown = str(adapter_dir)
    method, alpha = _method(_config(adapter_dir), shown)
    suffixes = {f'.{t.suffix}': t.parts[0][0] for t in method.peft_tensors}  # '.lora_A.weight' -> 'lora_A'
    weights = adapter_dir / 'adapter_model.safetensors'
    tree = stack.enter_context(open_checkpoint(weights)).tree
    factors: dict[str, dict[str, TensorRef]] = {}
    trained, problems = {}, []
    for key, ref in tree.items():
        rest = key.removeprefix(PEFT_PREFIX)
        suffix = next((s for s in suffixes if rest.endswith(s)), None)
        fla = rest.removesuffix(suffix) + '.weight' if suffix else rest
        found = lookup_fla(fla) if key.startswith(PEFT_PREFIX) else None
        if found is None or found[0].names(found[1])[1] != fla:
            problems.append(f'unexpected tensor {key} (not a {PEFT_PREFIX}<fla name> of an RWKV-7 model)')
            continue
        blinkdl = found[0].names(found[1])[0]
        if suffix is None:
            trained[blinkdl] = _reversed(ref, blinkdl, found[0])
        elif found[0].blinkdl not in ADAPTER_TARGETS:
            problems.append(f'{key}: an adapter on {blinkdl}, which RWKV-PEFT never adapts (only '
                            f'{", ".join(t.split("}.")[1] for t in ADAPTER_TARGETS)})')
        else:
            name = f'{blinkdl.removesuffix(".weight")}.{suffixes[suffix]}'
            factors.setdefault(blinkdl, {})[suffixes[suffix]] = ref.renamed(name)
    if problems:
        raise KeyMismatchError(problems, shown)
    return AdapterFile(shown, method, factors, trained, alpha)


def _base_refs(stack: ExitStack, base_dir: str | os.PathLike) -> dict[str, TensorRef]:
    """The base directory's export plan as tensors under RWKV-LM names (each read and turned back when loaded)."""
    base_dir = Path(base_dir)
    plan_export(base_dir)  # the export's own refusals and key report first
    ckpt = stack.enter_context(open_hf_directory(base_dir))
    plan = make_export_plan(read_config(base_dir), ckpt.tree, str(base_dir), weight_files=ckpt.files)
    return {e.blinkdl: TensorRef(e.blinkdl, tuple(e.shape), e.dtype, _producer(e, False, str(base_dir)))
            for e in plan.entries}


def export_adapter(base_dir: str | os.PathLike, adapter_dir: str | os.PathLike, output: str | os.PathLike | None, *,
                   form: str = 'rwkv-peft', fmt: str | None = None, force: bool = False,
                   dry_run: bool = False) -> AdapterExport:
    """The PEFT adapter `adapter_dir` of the converted model `base_dir` as an RWKV-PEFT adapter (`form` 'rwkv-peft')
    or merged into the exported base ('merged'), written atomically to `output` (.pth, or .safetensors by `fmt`)."""
    start = time.perf_counter()
    if form not in EXPORT_FORMS:
        raise ConversionError(f'--adapter-format {form!r}: the export writes one of {", ".join(EXPORT_FORMS)}')
    writer = writer_for(output, fmt)
    protect = tuple(p for d in (base_dir, adapter_dir) for p in Path(d).glob('*') if p.is_file())
    if output is not None and not dry_run:
        check_target_file(Path(output).absolute(), force, protect)
    with ExitStack() as stack:
        adapter = read_peft_adapter(stack, adapter_dir)
        base = _base_refs(stack, base_dir)
        if form == 'merged':
            refs = list(merged_tensors(adapter, base, str(base_dir)).values())
        else:
            check_base(adapter, base, str(base_dir))
            refs = [r for f in adapter.factors.values() for r in f.values()] + list(adapter.trained.values())
        out = [OutTensor(r.name, tuple(r.shape), r.dtype, r.load) for r in refs]
        result = AdapterExport(None, adapter, form, writer.name, sum(t.nbytes for t in out))
        if dry_run or output is None:
            return result
        with atomic_file(output, force=force, protect=protect) as scratch:
            metadata = {'format': 'pt', 'converted_by': f'rwkv7_convert {__version__}',
                        'source': f'{Path(base_dir).name} + {Path(adapter_dir).name}'}
            writer.write(scratch, out, metadata, None)
    result.output, result.seconds = Path(output), time.perf_counter() - start
    return result


__all__ = ['AdapterExport', 'EXPORT_FORMS', 'LORA_ALPHA_HOME', 'export_adapter', 'read_peft_adapter']
