"""BlinkDL RWKV-LM checkpoint -> fla Hugging Face directory, streamed tensor by tensor into an atomic output."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fla.rwkv7_convert import __version__
from fla.rwkv7_convert.convert.adapters import AdapterSpec, adapter_notes, adapter_provenance, merged_tree, open_adapter
from fla.rwkv7_convert.convert.peft_adapter import peft_tensors
from fla.rwkv7_convert.convert.tuned_state import state_provenance, state_tensor
from fla.rwkv7_convert.errors import ConversionError, NonFiniteError
from fla.rwkv7_convert.formats.atomic import atomic_directory, check_target, clean_stale, write_json
from fla.rwkv7_convert.formats.checkpoint import RawSpan, check_span
from fla.rwkv7_convert.formats.dtypes import CARRIER, cast, is_finite, output_precision
from fla.rwkv7_convert.formats.outputs import OutTensor
from fla.rwkv7_convert.formats.provenance import PROVENANCE_FILE, FileDigest
from fla.rwkv7_convert.formats.readers import open_checkpoint
from fla.rwkv7_convert.formats.safetensors_writer import INDEX_FILE, parse_size, write_safetensors, write_sharded
from fla.rwkv7_convert.formats.state_file import METADATA as STATE_METADATA
from fla.rwkv7_convert.formats.state_file import STATE_FILE
from fla.rwkv7_convert.hub.chat import generation_config
from fla.rwkv7_convert.hub.model_card import write_model_card
from fla.rwkv7_convert.hub.tokenizer import WORLD_VOCAB_SIZE, is_world_vocab, token_id_span, write_world_tokenizer
from fla.rwkv7_convert.mapping.config import DEFAULT_FUSE_NORM, fla_config
from fla.rwkv7_convert.mapping.engine import directory_layouts
from fla.rwkv7_convert.mapping.plan import Entry, Plan, make_plan
from fla.rwkv7_convert.mapping.schema import Scope, Side
from fla.rwkv7_convert.mapping.table import RULES

DEFAULT_MAX_SHARD_SIZE = '5GB'


@dataclass
class Result:
    output: Path | None
    plan: Plan
    files: list[str] = field(default_factory=list)
    shards: int = 0  # weight files written (model.safetensors, or the shards an index lists)
    seconds: float = 0.0
    bytes_written: int = 0
    dtype: str = ''
    source_format: str = ''  # what the input was read as: 'pth', 'safetensors', 'hf-directory'
    state_file: str | None = None  # the tuned state's file (formats/state_file.py), when the source carried one
    adapter: object | None = None  # the RWKV-PEFT adapter merged or carried (mapping.adapter_plan.AdapterFile)
    config: dict = field(default_factory=dict)  # the config.json written (or, in a dry run, that would be)


def _fla_order(entry: Entry) -> tuple:
    # fla's module order: embeddings, then layer by layer in table order, then the final norm and head
    rank = RULES.index(entry.rule)
    if entry.rule.layers is Scope.GLOBAL:
        return (0 if entry.rule.blinkdl == 'emb.weight' else 2, 0, rank)
    return (1, entry.layer, rank)


def _nonfinite(entry: Entry, shown: str) -> NonFiniteError:
    return NonFiniteError(f'{entry.source.name} holds NaN or Inf values; pass --allow-nonfinite to convert anyway', shown)


def _out_tensor(entry: Entry, out_dtype: str, allow_nonfinite: bool, shown: str) -> OutTensor:
    src_dtype = entry.source.dtype

    def produce() -> np.ndarray:
        data = entry.source.load().reshape(entry.canonical_shape)
        if not allow_nonfinite and not is_finite(data, src_dtype):
            raise _nonfinite(entry, shown)
        return np.ascontiguousarray(cast(entry.rule.op.apply(data), src_dtype, out_dtype))

    def check(span: RawSpan, view: memoryview) -> None:
        check_span(span, view)
        if not allow_nonfinite and not is_finite(np.frombuffer(view, CARRIER[src_dtype]), src_dtype):
            raise _nonfinite(entry, shown)

    # ops that keep the bytes (identity, reshapes: op.bytes_unchanged) with no cast: the output bytes are the input
    # bytes (> 99% of a model), copied without being loaded
    same_bytes = entry.rule.op.bytes_unchanged and out_dtype == src_dtype
    return OutTensor(entry.fla, entry.fla_shape, out_dtype, produce,
                     raw=entry.source.span if same_bytes else None, check=check)


def convert_to_fla(
    source: str | os.PathLike,
    output: str | os.PathLike | None,
    *,
    precision: str | None = None,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    head_size: int | None = None,
    tokenizer: str = 'auto',
    allow_nonfinite: bool = False,
    drop_state: bool = False,
    adapter: AdapterSpec | None = None,
    fuse_norm: bool = DEFAULT_FUSE_NORM,
    dry_run: bool = False,
    on_start: Callable[[Plan, int], None] | None = None,
    on_tensor: Callable[[str, int], None] | None = None,
) -> Result:
    """Convert `source` (.pth or .safetensors, or a Hugging Face directory, in any layout of table.LAYOUTS) into the
    Hugging Face directory `output`.

    `precision` is a safetensors dtype name ('BF16', 'F16', 'F32') or an alias ('bf16', 'fp32', ...; formats.dtypes
    .output_precision), or None to keep each tensor's stored dtype.
    With `dry_run` nothing is written and the plan is returned. `on_start(plan, total_bytes)` and
    `on_tensor(name, nbytes)` report progress. A state-tuned merge's tuned states go to the
    state file (formats/state_file.py: rwkv7_state.safetensors); `drop_state` converts the weights alone. `fuse_norm`:
    config.json's, fla's fused norms (True) or torch's (mapping.config.DEFAULT_FUSE_NORM says why the default).
    `adapter`: an RWKV-PEFT adapter of `source`, merged as RWKV-PEFT's merge scripts do (form 'merged'), or written as
    a PEFT adapter directory beside the unmerged base (form 'peft': OUTDIR/peft, convert/peft_adapter.py).
    """
    start = time.perf_counter()
    shown = str(source)
    precision = output_precision(precision)
    limit = parse_size(max_shard_size)
    if output is not None and not dry_run:
        clean_stale(Path(output).absolute())  # what killed runs left, also when this run stops at the next line
        check_target(Path(output).absolute(), force, protect=(source, *_files(adapter)))  # before reading anything
    with open_checkpoint(source) as ckpt, ExitStack() as stack:
        tree = ckpt.tree
        fine_tune = open_adapter(stack, adapter) if adapter is not None else None
        if fine_tune is not None and adapter.form == 'merged':
            tree = merged_tree(ckpt.tree, fine_tune, shown)
        plan = make_plan(tree, shown, head_size=head_size, drop_state=drop_state)
        peft = None
        if fine_tune is not None:
            plan.notes[2:2] = adapter_notes(fine_tune, adapter.form)
            if adapter.form == 'peft':
                peft = peft_tensors(fine_tune, plan, shown)  # refused here, before anything is written
        check_tokenizer_choice(tokenizer, plan.dims.V, shown)  # before anything is written
        if ckpt.kind == 'hf-directory':  # told apart by its weight names (the plan), not by model_type
            arch = ', '.join(map(str, ckpt.config.get('architectures') or [])) or 'no architectures in config.json'
            plan.notes.append(f'Hugging Face directory ({arch}): weights from {", ".join(ckpt.files)}')
            plan.layouts += directory_layouts(ckpt.tree, Side.BLINKDL)
        kept = sorted(plan.kept, key=_fla_order)
        emb_dtype = next(e.source.dtype for e in kept if e.blinkdl == 'emb.weight')
        model_dtype = precision or emb_dtype
        tensors = [_out_tensor(e, precision or e.source.dtype, allow_nonfinite, shown) for e in kept]
        states = [state_tensor(e, allow_nonfinite, shown) for e in plan.states]
        total = sum(t.nbytes for t in tensors + states)
        total += sum(t.nbytes for t in peft.tensors) if peft else 0
        result = Result(None, plan, dtype=model_dtype, bytes_written=total, source_format=ckpt.kind,
                        state_file=STATE_FILE if states else None, adapter=fine_tune,
                        config=fla_config(plan.dims, model_dtype, fuse_norm=fuse_norm))
        if dry_run or output is None:
            return result
        if on_start:
            on_start(plan, total)
        metadata = {'format': 'pt', 'converted_by': f'rwkv7_convert {__version__}', 'source': Path(source).name}
        digest = FileDigest(source, ckpt.files)  # on a thread, while the tensors are copied
        with atomic_directory(output, force=force, protect=(source, *_files(adapter))) as scratch:
            files = write_sharded(scratch, tensors, limit, metadata,
                                  on_tensor=(lambda t: on_tensor(t.name, t.nbytes)) if on_tensor else None)
            result.shards = sum(1 for f in files if f != INDEX_FILE)
            if states:  # a file of its own: config.json and the weights stay what every loader reads
                write_safetensors(scratch / STATE_FILE, states, {**STATE_METADATA, 'source': Path(source).name},
                                  on_tensor=(lambda t: on_tensor(t.name, t.nbytes)) if on_tensor else None)
                files.append(STATE_FILE)
            tokenizer_files = write_tokenizer(scratch, tokenizer, plan.dims.V)
            world = tokenizer_kind(tokenizer, plan.dims.V)
            write_json(scratch / 'config.json', result.config)
            write_json(scratch / 'generation_config.json', generation_config(chat=world == 'world'))
            files += ['config.json', 'generation_config.json', *tokenizer_files]
            # names, sizes and digests only: the folder may be published, local paths must not be
            write_json(scratch / PROVENANCE_FILE, {
                'converter': f'rwkv7_convert {__version__}',
                'source': {'name': Path(source).name, 'bytes': digest.size, 'sha256': digest.result(),
                           'format': ckpt.kind, **({'files': ckpt.files} if ckpt.kind == 'hf-directory' else {})},
                'stored_dtypes': plan.stored_dtypes,
                'precision': model_dtype if precision else 'kept as stored',
                'parameters': plan.num_parameters,
                'tokenizer': world,
                'tokenizer_files': tokenizer_files,
                'dropped': [e.blinkdl for e in plan.dropped],
                **({'state': state_provenance(plan.states)} if states else {}),
                **({'adapter': adapter_provenance(fine_tune, adapter)} if fine_tune is not None else {}),
                'notes': plan.notes,
            })
            files.append(PROVENANCE_FILE)
            write_model_card(scratch)
            files.append('README.md')
            if peft is not None:
                files += peft.write(scratch, on_tensor=(lambda t: on_tensor(t.name, t.nbytes)) if on_tensor else None)
    result.output = Path(output)
    result.files = files
    result.seconds = time.perf_counter() - start
    return result


def _files(adapter: AdapterSpec | None) -> tuple[str, ...]:
    return adapter.files() if adapter is not None else ()


def check_tokenizer_choice(choice: str, vocab_size: int, shown: str) -> None:
    """A tokenizer whose ids do not fit the embedding (--tokenizer world on another vocabulary, or a PATH holding more
    tokens than the model has rows) would pair ids with the wrong text, or with no row at all."""
    if choice == 'world' and not is_world_vocab(vocab_size):
        raise ConversionError(f'--tokenizer world: the model has {vocab_size} embedding rows, the RWKV World tokenizer '
                              f'needs {WORLD_VOCAB_SIZE}; use --tokenizer none or a tokenizer PATH', shown)
    if choice not in ('auto', 'world', 'none'):
        need = token_id_span(choice)
        if need is not None and need > vocab_size:
            raise ConversionError(f'--tokenizer {choice}: the model has {vocab_size} embedding rows, this tokenizer '
                                  f'has token ids up to {need - 1}; use --tokenizer none or a tokenizer of this model',
                                  shown)


def tokenizer_kind(choice: str, vocab_size: int) -> str:
    """What write_tokenizer writes for this choice: 'world', 'none' or 'copied'."""
    if choice == 'auto':
        return 'world' if is_world_vocab(vocab_size) else 'none'
    return choice if choice in ('world', 'none') else 'copied'


def write_tokenizer(outdir: Path, choice: str, vocab_size: int) -> list[str]:
    """'auto' writes the RWKV World tokenizer when the vocabulary is World-sized; 'world', 'none' or a path."""
    if choice == 'none':
        return []
    if choice == 'auto':
        return write_world_tokenizer(outdir) if is_world_vocab(vocab_size) else []
    if choice == 'world':
        return write_world_tokenizer(outdir)
    return _copy_tokenizer(Path(choice), outdir)


# chat_template.jinja: where transformers 5's save_pretrained puts the chat template
_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja',
                    'rwkv_vocab_v20230424.txt')


def _copy_tokenizer(path: Path, outdir: Path) -> list[str]:
    sources = [path] if path.is_file() else [path / n for n in _TOKENIZER_FILES if (path / n).is_file()]
    if not sources:
        raise ConversionError(f'no tokenizer files found (expected one of {", ".join(_TOKENIZER_FILES)})', str(path))
    for s in sources:
        shutil.copyfile(s, outdir / s.name)
    return [s.name for s in sources]
