"""The exact proof of an adapter carried as a Hugging Face PEFT adapter (convert --adapter-format peft): fla's model
on the converted base with the PEFT adapter loaded by peft itself, against the reference on the base checkpoint with
the RWKV-PEFT adapter merged, both in float64.

The reference's file is the base with the adapter merged in float64 without rounding (mapping.adapter_ops.exact: the
merge scripts' formulas, less PiSSA's rounding to bf16, which its script adds and a PEFT LoRA does not compute), written
to a scratch float64 .pth and read by the reference's own reader like any source. fla's side is
`PeftModel.from_pretrained(load_fla_model(base, float64), adapter_dir)` with the torch stand-ins: the whole model, not
streamed layer by layer (peft attaches to the model), so it is refused above PEFT_MAX_PARAMS; the merged form is
verified at any size. The adapter directory is read through formats/ first (its config a JSON object, its tensors a
safetensors file), so a hostile directory is one line before peft opens it.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from pathlib import Path

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.dtypes import FLOATING
from fla.rwkv7_convert.formats.hf_directory import read_json_object
from fla.rwkv7_convert.formats.outputs import OutTensor
from fla.rwkv7_convert.formats.readers import open_checkpoint
from fla.rwkv7_convert.formats.writers import WRITERS
from fla.rwkv7_convert.mapping.adapter_ops import exact
from fla.rwkv7_convert.mapping.adapter_plan import check_base, from_torch, read_adapter, to_torch
from fla.rwkv7_convert.mapping.plan import normalize_names, unwrap_state_dict
from fla.rwkv7_convert.proof.backends import cpu_threads
from fla.rwkv7_convert.proof.files import ConvertedDir, SourceFile, check_pair
from fla.rwkv7_convert.proof.report import Exact, Report, compare
from fla.rwkv7_convert.proof.streaming import Lane, Progress, StreamingPair
from fla.rwkv7_convert.proof.variant import BLINKDL, config_problems, differences, fla_variant
from fla.rwkv7_convert.proof.verify import DEFAULT_TOKENS, EXACT, _tokens, _transformers_quiet
from fla.rwkv7_convert.runtime.loading import load_fla_model
from fla.rwkv7_convert.runtime.torch_wkv import installed

# torch and peft are imported inside the functions: peft is optional (a one-line error without it) and torch costs
# seconds where the command line imports this module

PEFT_MAX_PARAMS = 2e9  # the whole model in float64 (16 GB at 2B) on the CPU: larger ones verify the merged form
CONFIG_FILE, WEIGHTS_FILE = 'adapter_config.json', 'adapter_model.safetensors'


def write_exact_merge(source: str | os.PathLike, adapter: str | os.PathLike, pissa_init: str | os.PathLike | None,
                      alpha: float | None, output: str | os.PathLike) -> Path:
    """The base checkpoint `source` with the adapter merged in float64, unrounded, as a float64 .pth at `output`."""

    shown = os.fspath(source)
    with ExitStack() as stack:
        ckpt = stack.enter_context(open_checkpoint(source))
        init = stack.enter_context(open_checkpoint(pissa_init)).tree if pissa_init is not None else None
        found = read_adapter(stack.enter_context(open_checkpoint(adapter)).tree, os.fspath(adapter), init_tree=init,
                             init_shown=os.fspath(pissa_init) if pissa_init is not None else None, alpha=alpha)
        base, _ = unwrap_state_dict(ckpt.tree, shown)
        base, _, _ = normalize_names(base)
        check_base(found, base, shown)
        refs = {**base, **found.trained}
        merge = exact(found.method.merge)

        def widened(name):
            def load():
                t = to_torch(refs[name]).double()
                if name in found.factors:
                    t = merge(t, {k: to_torch(r).double() for k, r in found.factors[name].items()}, found.alpha)
                return from_torch(t, 'F64')
            return load
        out = [OutTensor(n, tuple(r.shape), 'F64', widened(n)) for n, r in refs.items() if r.dtype in FLOATING]
        WRITERS['pth'].write(output, out, {}, None)
    return Path(output)


def check_adapter_dir(adapter_dir: str | os.PathLike) -> None:
    """A PEFT adapter directory as peft will read it: a JSON object naming a peft_type, and a safetensors file that
    our reader opens (one line naming the file otherwise)."""
    folder = Path(adapter_dir)
    data = read_json_object(folder / CONFIG_FILE, 'a PEFT adapter config')
    if not isinstance(data.get('peft_type'), str):
        raise ConversionError('not a PEFT adapter config: expected a JSON object with a peft_type', str(folder / CONFIG_FILE))
    with open_checkpoint(folder / WEIGHTS_FILE):
        pass


def peft_logits(model_dir, adapter_dir, ids):
    """Logits [B, T, V] of fla's model on `model_dir` with the PEFT adapter loaded, in float64, on the CPU with the
    torch stand-ins in float64 (the exact proof's fla side, whole)."""
    import torch

    try:
        from peft import PeftModel
    except ImportError as e:
        raise ConversionError('verifying a PEFT adapter needs the peft package (pip install peft)') from e
    with installed(threads=cpu_threads()), torch.no_grad(), _transformers_quiet():
        model = load_fla_model(model_dir, dtype=torch.float64, device='cpu')
        model.rwkv7_torch_wkv = True  # cpu_guard: the stand-ins run here, none of the interpreter's limits apply
        model = PeftModel.from_pretrained(model, str(adapter_dir)).double().eval()
        return model(ids).logits


def verify_peft(source, model_dir, adapter_dir, adapter, *, pissa_init=None, alpha: float | None = None,
                tokens: int = DEFAULT_TOKENS, seed: int = 0, head_size: int | None = None, quiet: bool = True):
    """The exact proof of `model_dir` (the converted base) with the PEFT adapter `adapter_dir`, against `source` (the
    base checkpoint) with the RWKV-PEFT `adapter` merged exactly; a Report (see the module docstring)."""
    check_adapter_dir(adapter_dir)
    with tempfile.TemporaryDirectory(prefix='rwkv7-exact-merge-') as scratch:
        merged = write_exact_merge(source, adapter, pissa_init, alpha, Path(scratch) / 'merged.pth')
        with SourceFile(merged, head_size) as src, ConvertedDir(model_dir) as out:
            check_pair(src, out)
            d = src.plan.dims
            if src.plan.num_parameters > PEFT_MAX_PARAMS:
                raise ConversionError(f'{src.plan.num_parameters / 1e9:.1f}B parameters: the PEFT form is verified '
                                      f'with the whole model in float64 (up to {PEFT_MAX_PARAMS / 1e9:g}B); verify '
                                      'the merged form (--adapter-format merged) instead', str(adapter_dir))
            ids = _tokens(model_dir, d.V, tokens, None, 1, seed)
            variant = fla_variant(out.config, d.N)
            found = differences(variant, d.N)
            lanes = [Lane('exact', 'float64', variant)] + ([Lane('blinkdl', 'float64', BLINKDL)] if found else [])
            progress = Progress(d.L + 2, quiet)
            try:
                refs, _, _ = StreamingPair(src, out, device='cpu', lanes=lanes, sides=[], progress=progress).run(ids)
            finally:
                progress.close()
            got = peft_logits(model_dir, adapter_dir, ids)
            logits = compare(got, refs[0])
            exact = Exact(logits, [('logits', logits.rel_rms)], f'{EXACT.name}, the PEFT adapter loaded by peft',
                          'cpu', found, compare(refs[1], refs[0]) if found else None, config_problems(out.config, d.N))
    report = Report(str(source), str(model_dir), ids.shape[0], ids.shape[1], exact)
    report.notes.append(f'fine-tune: {Path(adapter_dir).name} (PEFT) on the converted base, against {Path(adapter).name} '
                        'merged into the base exactly in float64 (RWKV-PEFT\'s formulas, without their rounding); fla '
                        'ran whole, not layer by layer, so no sub-step is compared')
    return report
