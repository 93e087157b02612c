"""The two files a verification reads: the BlinkDL checkpoint (SourceFile) and the converted directory (ConvertedDir),
one tensor at a time, and the check that they are a pair before any compute (check_pair).

The directory is read through the export's own hardened reader (formats.hf_directory.read_config and
formats.readers.open_hf_directory, as convert/to_blinkdl.py opens it), and refused where the export refuses it
(mapping.export_plan.refuse_fla_input: refusals.REFUSALS on its names, shapes and config.json): the weight source
transformers loads (model.safetensors before an index), shard names that are plain file names in the directory,
an index that is a JSON object with a weight_map, no tensor in two shards or in another shard than the index says.
Every refusal is one line naming the file and the key.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.dtypes import FLOATING
from fla.rwkv7_convert.formats.hf_directory import read_config
from fla.rwkv7_convert.formats.provenance import PROVENANCE_FILE, FileDigest, read_source_record
from fla.rwkv7_convert.formats.readers import open_checkpoint, open_hf_directory
from fla.rwkv7_convert.mapping.config import size_mismatches
from fla.rwkv7_convert.mapping.export_plan import refuse_fla_input
from fla.rwkv7_convert.mapping.plan import make_plan
from fla.rwkv7_convert.proof.source_agree import check_readings, tagged_tree
from fla.rwkv7_convert.proof.source_reader import read_tree
from fla.rwkv7_convert.proof.state_pair import find_states

# torch is imported inside the functions that use it: the command line imports this module, and a conversion never
# pays for torch (~2 s: the `import torch` row of benchmarks/benchmark_convert.py; tests/test_commands.py checks).


def load_blinkdl_weights(source: str | os.PathLike, head_size: int | None = None) -> dict:
    """The whole source checkpoint as canonical RWKV-LM names -> float torch tensors, as the reference reads it (for
    small models and tests; `verify` streams instead)."""
    with SourceFile(source, head_size) as src:
        return {name: src.load(name) for name in src.reading.tensors}


def to_torch(data, dtype: str, native: bool = False):
    """A carrier array from a reader as a float torch tensor: float64 kept, everything else float32; with `native`,
    in its stored dtype (bf16 and fp16 too), for a caller that widens it once to what it computes in (torch's
    widening is exact, and one pass on every core instead of numpy's two on one)."""
    import numpy as np
    import torch
    t = torch.from_numpy(data.view(np.int16)).view(torch.bfloat16) if dtype == 'BF16' else torch.from_numpy(data)
    return t if native or t.dtype == torch.float64 else t.to(torch.float32)


class SourceFile:
    """The BlinkDL checkpoint, one tensor at a time, read twice: the reference's tensors come through its own reader
    (proof/source_reader.py: canonical names and BlinkDL's shapes without the converter's table), and the converter's
    plan (mapping.plan.make_plan: its refusals, sizes, fla names and shapes for check_pair) must agree with that
    reading on every stored key, op and shape before any compute (proof/source_agree.py). Tensors are float32, or
    float64 when stored so. A state-tuned merge's weights are planned without its tuned states (as --drop-state
    converts them), which `states` holds: layer -> (name, TensorRef), empty for a plain checkpoint (state_pair.py
    reads and checks them)."""

    def __init__(self, path: str | os.PathLike, head_size: int | None = None):
        self.path = str(path)
        self.ckpt = open_checkpoint(path)
        try:  # the plan first: its refusals name what a file is; then the reference's own reading, compared
            self.plan = make_plan(tagged_tree(self.ckpt.tree), self.path, head_size=head_size, drop_state=True)
            self.states = find_states(self.ckpt.tree, self.path)
            self.reading = read_tree(self.ckpt.tree, self.path, head_size)
            check_readings(self.plan, self.reading, self.path)
        except BaseException:
            self.ckpt.close()
            raise
        self.entries = {e.blinkdl: e for e in self.plan.entries}

    def __enter__(self) -> SourceFile:
        return self

    def __exit__(self, *exc) -> None:
        self.ckpt.close()

    def load(self, name: str, native: bool = False):
        """The reference's tensor `name`: float32 (float64 when stored so), or with `native` in its stored dtype."""
        s = self.reading.tensors[name]
        return to_torch(s.load(), s.ref.dtype, native).reshape(s.shape)

    def raw(self, name: str):
        s = self.reading.tensors[name]
        return s.load(), s.ref.dtype


class ConvertedDir:
    """The converted directory: config.json and its weight files, opened as the export opens them (see the module
    docstring), then one tensor at a time (plain reads, no memory mapping whose touched pages would stay resident)."""

    def __init__(self, model_dir: str | os.PathLike):
        self.path = Path(model_dir)
        shown = str(model_dir)
        self.config = read_config(self.path)
        self.ckpt = open_hf_directory(self.path)
        try:  # what the export refuses (names, shapes, what fla would build but no BlinkDL file converts to)
            refuse_fla_input(self.config, self.ckpt.tree, shown)
        except BaseException:
            self.ckpt.close()
            raise
        self.refs = self.ckpt.tree
        self.files = self.ckpt.files
        self.where = {name: str(self.path / f) for name, f in self.ckpt.origins.items()}
        # transformers ties lm_head to the embeddings when the config says so, whatever lm_head.weight holds
        self.tied = bool(self.config.get('tie_word_embeddings'))
        self.head = 'model.embeddings.weight' if self.tied else 'lm_head.weight'

    def close(self) -> None:
        self.ckpt.close()

    def __enter__(self) -> ConvertedDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load(self, name: str, dtype, device):
        ref = self.refs[name]
        return to_torch(ref.load(), ref.dtype, native=True).reshape(ref.shape).to(device=device, dtype=dtype)

    def raw(self, name: str):
        ref = self.refs[name]
        return ref.load().reshape(ref.shape), ref.dtype


def check_pair(src: SourceFile, out: ConvertedDir) -> None:
    """Before any compute: the directory's config and tensor shapes are the ones the source file converts to.
    One line naming both files and the first disagreement."""
    problems = [f'config.json {key} = {value!r}, but the file has {symbol} = {size}'
                for key, value, symbol, size in size_mismatches(out.config, asdict(src.plan.dims))]
    expected = {e.fla: e for e in src.plan.kept}
    if out.tied:  # fla takes the head from the embeddings; a stored lm_head.weight is not read
        expected.pop('lm_head.weight', None)
    for name, e in expected.items():
        if name not in out.refs:
            problems.append(f'{name} (from {e.blinkdl}) is missing')
        elif tuple(out.refs[name].shape) != tuple(e.fla_shape):
            problems.append(f'{name} is {list(out.refs[name].shape)} in {Path(out.where[name]).name}, but '
                            f'{e.blinkdl} {list(e.source.shape)} converts to {list(e.fla_shape)}')
        elif out.refs[name].dtype not in FLOATING:
            problems.append(f'{name} is {out.refs[name].dtype} in {Path(out.where[name]).name}, not a floating-point '
                            f'dtype ({", ".join(FLOATING)})')
    ignored = {'lm_head.weight'} if out.tied else set()
    problems += [f'{name} is not in the file' for name in sorted(set(out.refs) - set(expected) - ignored)]
    if problems:
        more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
        raise ConversionError(f'{out.path} does not match {src.path}: {problems[0]}{more}')


class SourceCheck:
    """Before any compute: the directory is the conversion of this very file, by the converter's record
    (formats.provenance: rwkv7_convert.json's source size and sha256).

    The sizes are compared at once (a mismatch is refused without hashing); the sha256 is then computed on a thread
    while verify prepares the backend and the tokens, and `finish()` compares it before the first layer runs. No
    readable record (another tool's directory, a hostile or broken file): nothing is checked, and `note` says why.
    With `enabled=False` only the free size comparison runs, and a mismatch is a note instead of a refusal."""

    def __init__(self, src: SourceFile, out: ConvertedDir, enabled: bool = True):
        self.src, self.out, self.note = src, out, None
        self.digest: FileDigest | None = None
        self.record, why = read_source_record(out.path)
        if self.record is None:
            self.note = f'source file not checked against the directory: {why}'
            return
        digest = FileDigest(src.path, src.ckpt.files, start=False)
        size = digest.size
        self.recorded = f'its {PROVENANCE_FILE} records {self._named()}{self.record.bytes:,} bytes'
        if size != self.record.bytes:
            self._refuse(f'{self.recorded}, and {src.path} has {size:,} bytes', enabled)
        elif enabled:
            self.digest = digest
            digest.start()

    def _named(self) -> str:
        name = self.record.name
        return f'{name[:120]!r}, ' if name else ''

    def _refuse(self, what: str, enabled: bool) -> None:
        if enabled:
            raise ConversionError(f'{self.out.path} was not converted from {self.src.path}: {what} (--any-source, or '
                                  'check_source=False, verifies anyway)')
        self.note = f'not the recorded source (verified anyway): {what}'

    def finish(self) -> None:
        """Wait for the sha256 and refuse a mismatch (one line naming both files and both digests)."""
        if self.digest is None:
            return
        digest, self.digest = self.digest, None
        try:
            got = digest.result()
        except OSError as e:
            raise ConversionError(f'cannot read {self.src.path} to hash it ({e.strerror or e})') from e
        if got != self.record.sha256:
            self._refuse(f'{self.recorded} with sha256 {self.record.sha256}, and {self.src.path} has sha256 {got}',
                         True)

    def cancel(self) -> None:
        if self.digest is not None:
            self.digest.cancel()
