"""The Python API: convert, export, verify and inspect RWKV-7 checkpoints from a script, as the commands do.

    from fla.rwkv7_convert.api import convert_from_fla, convert_to_fla, inspect, verify

    info = inspect('model.pth')                  # writes nothing; info.lines() for people, info.to_dict() for JSON
    result = convert_to_fla('model.pth', 'out/model', precision='bf16')
    report = verify('model.pth', 'out/model')    # report.passed, print(report.render())
    convert_from_fla('out/model', 'back.pth')
    model, tokenizer = load_model('out/model')   # device='auto': cuda on a GPU, else 'cpu-torch' (float32)
    print(generate(model, tokenizer, 16, prompt='Hello'))

Tuned states (state tuning): a state-tuned merge converts with its state (out/model/rwkv7_state.safetensors); a bare
state file converts against its base model's directory, and goes back as RWKV-PEFT's file:

    convert_state('state.pth', 'out/state', base='out/model')      # out/state/rwkv7_state.safetensors
    print(generate(model, tokenizer, 16, prompt='Hello', state='out/state'))
    cache = initial_cache(model, 'out/state', batch_size=4)      # past_key_values for model(...) / model.generate
    export_state('out/state', 'state_back.pth')                  # blocks.N.att.time_state [H, V, K], bit for bit

Fine-tunes: `convert_to_fla(..., adapter=AdapterSpec('rwkv-7.pth', alpha=16))` merges an RWKV-PEFT adapter (or, with
`form='peft'`, writes it beside the base as a PEFT adapter); `export_adapter(model_dir, peft_dir, 'adapter.pth')`
writes a PEFT adapter of a converted model back as RWKV-PEFT's.

One signature per entry point: the functions defined below wrap their implementations only to give them this
documented, path-typed signature (the implementations also take the command line's progress hooks), and
tests/test_api.py checks each wrapper's parameters against its implementation's (names, kinds, defaults) and every
command-line flag against them; the others are the implementations themselves, re-exported.

Every refusal is a `ConversionError` (errors.py: NotACheckpointError, UnsupportedVariantError, KeyMismatchError,
OutputExistsError, NonFiniteError, ConfigError) whose message is one line naming the path, as the commands print it,
and whose `exit_code` is the commands' exit status for it. Importing this module imports neither torch nor fla's
models, triton or transformers (verify imports them when it runs). Note that `import fla.rwkv7_convert...` imports
the `fla` package first, and fla's own __init__ imports its models (seconds); a script that wants the fast start of
the commands calls `rwkv7_convert_entry.light_fla()` before its first `import fla...` (the console commands do).
"""

from __future__ import annotations

import os
from pathlib import Path

from fla.rwkv7_convert.convert.adapters import AdapterSpec, check_adapter_record, reference_source
from fla.rwkv7_convert.convert.inspection import BareState, Inspection
from fla.rwkv7_convert.convert.inspection import inspect as _inspect
from fla.rwkv7_convert.convert.peft_adapter import PEFT_DIR
from fla.rwkv7_convert.convert.peft_export import AdapterExport, export_adapter
from fla.rwkv7_convert.convert.to_blinkdl import ExportResult
from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla as _convert_from_fla
from fla.rwkv7_convert.convert.to_fla import DEFAULT_MAX_SHARD_SIZE, Result
from fla.rwkv7_convert.convert.to_fla import convert_to_fla as _convert_to_fla
from fla.rwkv7_convert.convert.tuned_state import StateResult
from fla.rwkv7_convert.convert.tuned_state import convert_state as _convert_state
from fla.rwkv7_convert.convert.tuned_state import export_state as _export_state
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.mapping.config import DEFAULT_FUSE_NORM
from fla.rwkv7_convert.proof.peft_form import verify_peft
from fla.rwkv7_convert.proof.verify import DEFAULT_TOKENS, Report
from fla.rwkv7_convert.proof.verify import verify as _verify
from fla.rwkv7_convert.runtime.device import interpreter_ready
from fla.rwkv7_convert.runtime.run import generate, load_model
from fla.rwkv7_convert.runtime.state_cache import initial_cache, load_initial_state

PathLike = str | os.PathLike

__all__ = ['AdapterExport', 'AdapterSpec', 'BareState', 'ConversionError', 'ExportResult', 'Inspection', 'Report',
           'Result', 'StateResult', 'convert_from_fla', 'convert_state', 'convert_to_fla', 'export_adapter',
           'export_state', 'generate', 'initial_cache', 'inspect', 'load_initial_state', 'load_model', 'verify']


def convert_to_fla(source: PathLike, output: PathLike | None, *, precision: str | None = None, force: bool = False,
                   max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE, head_size: int | None = None,
                   tokenizer: str = 'auto', allow_nonfinite: bool = False, drop_state: bool = False,
                   fuse_norm: bool = DEFAULT_FUSE_NORM, adapter: AdapterSpec | None = None,
                   dry_run: bool = False) -> Result:
    """Convert a BlinkDL RWKV-7 checkpoint into a Hugging Face directory that fla's RWKV7ForCausalLM loads.

    source: a `.pth` or `.safetensors` file in any layout of docs/mapping.md (or a Hugging Face directory holding
        RWKV-LM names).
    output: the directory to create; it appears atomically, complete or not at all. A non-empty one is refused
        unless `force`. None (or `dry_run`) writes nothing and returns the plan.
    precision: 'bf16', 'fp16', 'fp32' (or 'bfloat16', 'F32', ...); None keeps each tensor's stored dtype.
    max_shard_size: the largest safetensors shard, with its unit ('5GB', '500MB') or in bytes.
    head_size: needed only when `att.r_k` is stored flat.
    tokenizer: 'auto' (the RWKV World tokenizer when the vocabulary has 65536 rows), 'world', 'none', or a path to
        copy tokenizer files from.
    allow_nonfinite: convert tensors holding NaN/Inf instead of refusing.
    drop_state: convert a state-tuned merge's weights alone. Without it a merge's tuned state (blocks.N.att.time_state,
        RWKV-block's init_state.N.wkv) is written to `output`/rwkv7_state.safetensors, in fla's [H, K, V] per layer.
    fuse_norm: config.json's `fuse_norm`. True (the default): fla's fused Triton norms, whose l2-norm eps differs
        from BlinkDL's by ~1e-9 relative logits in float64; False: torch's unfused norms, BlinkDL's function exactly
        (docs/verification.md, "fuse_norm: fused against unfused norms", has the float32 measurements).

    Returns a `Result`: `output`, `files`, `shards`, `bytes_written`, `dtype`, `seconds`, `config` (config.json's
    contents), and `plan` (`plan.dims`: the sizes; `plan.notes`: what was detected). Raises ConversionError (one
    line, naming the path).
    """
    return _convert_to_fla(source, output, precision=precision, force=force, max_shard_size=max_shard_size,
                           head_size=head_size, tokenizer=tokenizer, allow_nonfinite=allow_nonfinite,
                           drop_state=drop_state, fuse_norm=fuse_norm, adapter=adapter, dry_run=dry_run)


def convert_from_fla(model_dir: PathLike, output: PathLike | None, *, precision: str | None = None,
                     fmt: str | None = None, force: bool = False, layer0_v: bool = True, allow_nonfinite: bool = False,
                     drop_state: bool = False, dry_run: bool = False) -> ExportResult:
    """Export an fla / Hugging Face RWKV-7 directory as a BlinkDL RWKV-LM checkpoint.

    model_dir: a directory with config.json and model.safetensors (or shards and their index).
    output: the file to write, atomically; an existing one is refused unless `force`. None (or `dry_run`) writes
        nothing and returns the plan.
    precision: as for `convert_to_fla`.
    fmt: 'pth' (torch.save's format: what RWKV-LM and BlinkDL's rwkv package load) or 'safetensors'; None picks it
        by the output's suffix, else pth. A name carrying the other format's suffix is refused.
    layer0_v: write the unused layer-0 att.v0/v1/v2 as zeros, so that RWKV-LM loads the file strictly.
    drop_state: a directory carrying a tuned state exports as a state-tuned merge (its state after the weights, as
        blocks.N.att.time_state [H, V, K]); with drop_state the weights alone. export_state writes the state alone.

    Returns an `ExportResult`: `output`, `fmt`, `dtype`, `bytes_written`, `seconds`, `plan` (`plan.warnings`: what
    BlinkDL's runtimes compute differently, e.g. an eps). Raises ConversionError (one line, naming the path).
    """
    return _convert_from_fla(model_dir, output, precision=precision, fmt=fmt, force=force, layer0_v=layer0_v,
                             allow_nonfinite=allow_nonfinite, drop_state=drop_state, dry_run=dry_run)


def convert_state(source: PathLike, output: PathLike | None, base: PathLike, *, force: bool = False,
                  allow_nonfinite: bool = False, dry_run: bool = False) -> StateResult:
    """Convert a bare tuned-state file (RWKV-PEFT's `blocks.N.att.time_state`, or RWKV-block's `init_state.N.wkv`)
    tuned for the model converted in the directory `base` into the directory `output`, which then holds
    rwkv7_state.safetensors (fla's [H, K, V] per layer, the stored dtype) and its provenance; `base` is only read.
    Raises ConversionError (one line) for weights in `source`, a state of another model (layers, heads, head size),
    or anything else wrong with the files."""
    return _convert_state(source, output, base, force=force, allow_nonfinite=allow_nonfinite, dry_run=dry_run)


def export_state(state, output: PathLike | None, *, fmt: str | None = None, force: bool = False,
                 allow_nonfinite: bool = False, dry_run: bool = False) -> StateResult:
    """Write a tuned state in fla's layout as RWKV-PEFT's state file (`blocks.N.att.time_state` [H, V, K], its dtype
    kept: a round trip is bit for bit), which RWKV-PEFT and BlinkDL's `rwkv` package load.

    state: a converted directory or a state directory (holding rwkv7_state.safetensors), that file, or a
        [L, H, K, V] tensor (fla's orientation, e.g. a state trained with fla). A directory with config.json is
        checked to fit its model.
    fmt: 'pth' (default by suffix, else pth) or 'safetensors'.
    """
    return _export_state(state, output, fmt=fmt, force=force, allow_nonfinite=allow_nonfinite, dry_run=dry_run)


def verify(source: PathLike, model_dir: PathLike, *, device: str = 'auto', dtype: str = 'float32',
           tokens: int = DEFAULT_TOKENS, text: PathLike | None = None, batch: int = 1, per_layer: bool = False,
           piece: int | None = None, seed: int = 0, head_size: int | None = None, quiet: bool = True, greedy: int = 0,
           check_source: bool = True, state: PathLike | None = None, model_state: PathLike | None = None,
           drop_state: bool = False, adapter: AdapterSpec | None = None) -> Report:
    """Prove a conversion by logits: fla's model on `model_dir` against the float64 reference on `source`.

    The verdict is the exact proof: fla's own modules in float64 (torch stand-ins for its kernels) against the
    float64 reference of the function config.json configures; the report names how far that is from BlinkDL's.
    device: the kernels whose accuracy is reported beside it (calibrated, never the verdict): 'auto' (default: none
        on the CPU, the exact proof alone, needing no environment variables; on a GPU the compiled kernels), 'cpu'
        (fla's Triton kernels under Triton's interpreter; float32, pieces under 64 tokens), 'cpu-torch' (the stand-ins
        in float32, as the kernels round) or 'cuda'.
    dtype: the kernels' precision: 'float32', 'bfloat16' or 'float16' (the last two on CUDA).
    tokens / text: `tokens` random token ids, or the tokens of the file `text` (needs the directory's tokenizer).
    per_layer: judge every sub-step, not only the logits (a failing run always names where the two part).
    piece: feed the tokens in pieces of this size through the cache (default: on the CPU pieces under 64 tokens, as
        fla's kernels need there; on CUDA the whole sequence, the chunk kernel for >= 64 tokens).
    greedy: also report that many greedy tokens from both models after token 0 (the converter's --verify uses 8).
    check_source: refuse, before any compute, a `model_dir` whose rwkv7_convert.json records a source file other
        than `source` (by size, then sha256); False verifies anyway. With an adapter it checks the directory's record
        of the adapter instead (the directory's source is the base, the reference runs on the merge).
    state / model_state: a bare RWKV-PEFT state file beside the base model `source`, and its conversion (a directory
    holding rwkv7_state.safetensors, or the file; default: the one in `model_dir`). A state-tuned merge as `source`
    needs neither: both sides start from their tuned states, checked to be the same state first.
    drop_state: verify the weights alone, both sides from zero states.
    adapter: `model_dir` is `source` converted with this RWKV-PEFT adapter merged (AdapterSpec): the reference runs on
        `source` with the adapter merged by RWKV-PEFT's formulas; `model_dir`'s record of the adapter (sha256, alpha)
        is checked first. With `adapter.form == 'peft'`, `model_dir` is the converted base and `model_dir/peft` its
        PEFT adapter: fla runs with it loaded by peft, whole, against `source` with the adapter merged exactly in
        float64 (proof/peft_form.py; `tokens`, `seed`, `head_size`, `quiet` apply).

    Returns the `Report`: `passed`, `render()` for the text the command prints. Needs torch and fla (imported when
    it runs, not with this module). Raises ConversionError before any compute for files that are not a pair.
    """
    if device == 'cpu':
        if not interpreter_ready():
            raise ConversionError("device='cpu' runs fla's Triton kernels through Triton's CPU interpreter, which must be "
                                  'chosen before triton is imported, and this process has imported it (import fla does); '
                                  "use device='cpu-torch' or 'auto' (fla's modules with torch stand-ins for the kernels), "
                                  'or start Python with TRITON_INTERPRET=1 FLA_CACHE_RESULTS=0', os.fspath(model_dir))
    if adapter is not None and check_source:
        check_adapter_record(os.fspath(model_dir), adapter)
    if adapter is not None and adapter.form == 'peft':
        return verify_peft(source, model_dir, Path(model_dir) / PEFT_DIR, adapter.path, pissa_init=adapter.pissa_init,
                           alpha=adapter.alpha, tokens=tokens, seed=seed, head_size=head_size, quiet=quiet)
    with reference_source(os.fspath(source), adapter) as reference:
        return _verify(reference, model_dir, device=device, dtype=dtype, tokens=tokens,
                       text=os.fspath(text) if text is not None else None, batch=batch, per_layer=per_layer,
                       piece=piece, seed=seed, head_size=head_size, quiet=quiet, greedy=greedy,
                       check_source=check_source and adapter is None, state=os.fspath(state) if state is not None else None,
                       model_state=os.fspath(model_state) if model_state is not None else None, drop_state=drop_state)


def inspect(path: PathLike, *, head_size: int | None = None) -> Inspection | BareState:
    """What a BlinkDL file or an fla directory holds and what converting it would do; writes nothing.

    Returns an `Inspection`: `direction` ('convert' or 'export'), `layouts` (each with the names that show it),
    `dims` (V, C, L, H, N, F and the LoRA ranks), `parameters`, `dtypes` (tensors and parameters per stored dtype),
    `dropped` / `added` (with why), `notes`, `warnings`; `lines()` for people and `to_dict()` for JSON (the keys of
    `rwkv7-inspect --json`). A bare tuned-state file (no weights) is a `BareState`: its layers, heads, head size,
    dtype and how to convert it (against its base model's directory). Raises the ConversionError converting it would
    (one line, naming the path).
    """
    return _inspect(path, head_size=head_size)
