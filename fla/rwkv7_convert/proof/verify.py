"""Proof by logits: the converted fla model against the pure-PyTorch reference run on the original BlinkDL file.

One layer in memory. The reference (reference.py) streams the source checkpoint through the converter's own lazy
reader and plan; fla's `RWKV7Block`s run one at a time on tensors read from the finished output directory (never
the converter's memory), `v_first` and each layer's cache carried along (streaming.py). Both see the same tokens;
activations for all tokens are kept, weights for one layer (plus the rows of the embedding the tokens use, and the
head a slice of the vocabulary at a time).

The verdict is exact (verdict.EXACT_BOUND): fla's own modules run in float64, with torch stand-ins for the kernels
they launch (runtime/torch_wkv.py), against the float64 reference of the function config.json configures (variant.py), so
a correct conversion agrees to float64 rounding and a wrong tensor does not, with no calibration. The residual
stream after every sub-step is judged as well, and a failing run names where the models part first. How far the
configured function is from BlinkDL's is measured on the same tokens and named by config key, never called a broken
directory. fla's kernels (interpreted, compiled, or the stand-ins in float32) may run beside it for a separate,
calibrated report of their accuracy (verdict.CALIBRATION): never the verdict.

`verify` is the entry point (the command line, the converter's --verify and tests call it). The parts: files.py
(the two files, the pair check, the check of the recorded source), streaming.py (the pair walked layer by layer),
backends.py (where fla runs: the --device choices), report.py (the Report, its rendering and the perplexity on a
text). Their names stay importable from here.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.state_file import has_state
from fla.rwkv7_convert.proof.backends import BACKENDS, CHOICES, EXACT, Backend, backend_for, cpu_threads
from fla.rwkv7_convert.proof.files import ConvertedDir, SourceCheck, SourceFile, check_pair, load_blinkdl_weights
from fla.rwkv7_convert.proof.report import (
    SUBSTEP_NAMES,
    Comparison,
    Exact,
    Kernels,
    Perplexity,
    Report,
    Step,
    compare,
    describe_step,
    perplexity,
)
from fla.rwkv7_convert.proof.state_pair import TunedStates, load_states
from fla.rwkv7_convert.proof.streaming import HEAD_ROWS, Lane, Progress, Side, StreamingPair
from fla.rwkv7_convert.proof.variant import (
    BLINKDL,
    config_problems,
    differences,
    fla_variant,
    narrowed,
    storage_difference,
)
from fla.rwkv7_convert.proof.verdict import judge, rel_rms
from fla.rwkv7_convert.runtime.torch_wkv import installed

# torch and transformers are imported inside the functions: the command line imports this module on its light path

__all__ = ['BACKENDS', 'CHOICES', 'DEFAULT_TOKENS', 'DTYPES', 'HEAD_ROWS', 'SUBSTEP_NAMES', 'Backend',
           'Comparison', 'ConvertedDir', 'Exact', 'Kernels', 'Lane', 'Perplexity', 'Side',
           'Progress', 'Report', 'SourceCheck', 'SourceFile', 'Step',
           'StreamingPair', 'TunedStates', 'load_states',
           'backend_for', 'check_pair', 'check_run', 'compare', 'describe_step', 'load_blinkdl_weights', 'perplexity',
           'precision_for', 'prepare', 'verify']

# The same default for verify_rwkv7.py and the converter's --verify (its --verify-tokens default; a test keeps the
# two equal).
DEFAULT_TOKENS = 48
GREEDY_MAX_PARAMS = 5e8  # --verify's greedy tokens re-read the model for every token: only for small models
DTYPES = ('float32', 'bfloat16', 'float16')


def precision_for(device: str, dtype: str, piece: int) -> str:
    """What a run on `device` computes in for `piece` tokens per fla call (backends.Backend.precision)."""
    return backend_for(device).precision(dtype, piece)


def check_run(device: str | Backend, dtype: str, piece: int | None, tokens: int, batch: int) -> int:
    """Refuse from the arguments alone what cannot work, before any file is read (the backend's own checks last;
    whether its device is there, Backend.prepare tells once the files are checked); returns the piece size."""
    if dtype not in DTYPES:
        raise ConversionError(f'--dtype: {dtype!r} is not one of {", ".join(DTYPES)}')
    backend = device if isinstance(device, Backend) else backend_for(device)
    if tokens < 1 or batch < 1:
        raise ConversionError(f'--tokens {tokens} / --batch {batch}: both must be at least 1')
    return backend.check(dtype, piece, tokens)


def prepare(device: str) -> None:
    """The backend's set-up before anything imports triton (the interpreter on the CPU)."""
    backend_for(device).prepare()


def verify(source, model_dir, *, device: str | Backend = 'auto', dtype: str = 'float32', tokens: int = DEFAULT_TOKENS,
           text: str | None = None, batch: int = 1, per_layer: bool = False, piece: int | None = None, seed: int = 0,
           head_size: int | None = None, quiet: bool = True, greedy: int = 0, check_source: bool = True,
           state=None, model_state=None, drop_state: bool = False) -> Report:
    """Prove the converted directory computes the source file's function; see the module docstring.

    The verdict is the exact proof: fla's own modules in float64 (the torch stand-ins for its kernels) against the
    float64 reference of the function config.json configures, within verdict.EXACT_BOUND at the logits and after
    every sub-step; the report also measures how far that function is from BlinkDL's and names each config key
    that makes them differ (variant.py). `device` names the kernels whose accuracy is reported beside it in `dtype`
    (backends.CHOICES: 'cpu' interpreted, 'cpu-torch' the stand-ins in float32, 'cuda' compiled; calibrated, never
    the verdict) or is a Backend; 'auto' runs the exact proof alone on the CPU, and on a GPU both, there. With
    `greedy` > 0 the report's notes also hold that many greedy tokens from both models after token 0. With `text`
    (a file) the tokens are token 0 and the text's, and the report holds both models' perplexity on it. Everything
    refused (unreadable or hostile files, a directory that is not the source's conversion, a run the backend cannot
    do) is a one-line ConversionError before any compute; that includes a directory whose rwkv7_convert.json records
    another source file (size, then sha256) unless `check_source` is False.

    Tuned states (state_pair.py): a source that carries them (a state-tuned merge), or a bare state file `state`
    beside the base model `source`, is verified from its state: the reference from the source's, fla from the
    converted one (the directory's rwkv7_state.safetensors, or `model_state`, a directory or file), after a direct
    check that the converted state is the source's transposed per head (a mismatch FAILs, named). `drop_state`:
    both from zero states, whatever the files carry."""
    backend = device if isinstance(device, Backend) else backend_for(device)
    asked, piece = piece, check_run(backend, dtype, piece, tokens, batch)
    with SourceFile(source, head_size) as src, ConvertedDir(model_dir) as out:
        check_pair(src, out)
        if backend.choose(src.plan.dims, asked) is not backend:  # --device auto: from the source's shape
            backend = backend.choose(src.plan.dims, asked)
            piece = backend.check(dtype, asked, tokens)
        tuned = load_states(src, out, state=state, model_state=model_state, drop_state=drop_state)
        origin = SourceCheck(src, out, check_source)  # the sizes now; the sha256 on a thread, while we prepare
        progress = None
        try:
            backend.prepare()  # a refused pair costs no torch or triton import
            ids = _tokens(model_dir, src.plan.dims.V, tokens, text, batch, seed)
            origin.finish()  # before any compute
            progress = Progress(src.plan.dims.L + 2, quiet)
            run = _Run(src, out, backend, dtype, piece, ids, progress, tuned)
            report = run.report(per_layer)
            if tuned is not None:
                report.state, report.state_problems = tuned, list(tuned.problems)
            elif drop_state and (src.states or state is not None or model_state is not None or has_state(out.path)):
                report.notes.append('tuned initial states ignored (--drop-state): the weights verified from zero states')
            if text is not None and ids.shape[1] > 1:  # a next token to predict
                (ref_ppl, ref_top1), (fla_ppl, fla_top1) = perplexity(run.want, ids), perplexity(run.got, ids)
                report.perplexity = Perplexity(text, ids.shape[1], ref_ppl, fla_ppl, ref_top1, fla_top1)
            report.notes += [origin.note] if origin.note else []
            if src.plan.dims.N != 64:
                report.notes.append(f'head size {src.plan.dims.N}: fla ties ln_x\'s eps to the LayerNorms\' (head_dim x '
                                    'norm_eps); the conversion keeps ln_x exact, so the LayerNorm eps differs from '
                                    'BlinkDL\'s 1e-5 (docs/verification.md: eps for head sizes other than 64)')
            if out.tied:
                report.notes.append('config.json ties the embeddings: fla\'s head is model.embeddings.weight (any stored '
                                    'lm_head.weight is not what fla loads), judged against the file\'s head.weight')
            if greedy:
                report.notes.append(_greedy_note(run.pair, out, greedy))
        finally:
            origin.cancel()
            if progress is not None:
                progress.close()
    return report


def exact_side(device: str, piece: int) -> Side:
    """fla's modules in float64 with the torch stand-ins (torch_wkv.installed): the exact proof."""
    threads = cpu_threads() if device == 'cpu' else None
    return Side('exact', 'float64', piece, lambda: installed(threads=threads))


class _Run:
    """One pass over the files: the reference lanes (fla's function in float64; BlinkDL's where they differ; fla's
    function in the kernels' precision when kernels run) and fla's sides (exact; kernels), compared step by step."""

    def __init__(self, src, out, backend: Backend, dtype: str, piece: int, ids, progress, tuned):
        d = src.plan.dims
        self.src, self.out, self.backend, self.dtype, self.ids = src, out, backend, dtype, ids
        variant = fla_variant(out.config, d.N)
        self.differences, self.config_problems = differences(variant, d.N), config_problems(out.config, d.N)
        stored = {e.blinkdl: e.source.dtype for e in src.plan.kept}
        rounding = narrowed([(e.blinkdl, e.source.dtype, out.refs[e.fla].dtype) for e in src.plan.kept
                             if e.fla in out.refs])
        if out.tied and 'head.weight' in stored:  # fla's head is the embedding, as the directory stores it
            rounding.pop('head.weight', None)
            rounding.update(narrowed([('head.weight', stored['head.weight'], out.refs['model.embeddings.weight'].dtype)]))
        self.differences += [x for x in [storage_difference(rounding, stored)] if x is not None]
        lanes, sides = [Lane('exact', 'float64', variant)], [exact_side(backend.device, piece)]
        if self.differences:
            lanes.append(Lane('blinkdl', 'float64', BLINKDL, rounded=False))
        self.precision = None
        if backend.kernels:
            self.precision = backend.precision(dtype, min(piece, ids.shape[1]))
            lanes.append(Lane('calibration', self.precision, variant))
            sides.append(Side('kernels', dtype, piece, backend.running))
        self.pair = StreamingPair(src, out, device=backend.device, lanes=lanes, sides=sides, progress=progress,
                                  initial=tuned, rounding=rounding)
        self.exact_steps: list[tuple[str, float]] = []
        self.kernel_steps: list[Step] = []
        refs, flas, _ = self.pair.run(ids, on_step=self._on_step)
        self.want, self.got = refs[0], flas[0]
        self.refs, self.flas = refs, flas

    def _on_step(self, key, refs, flas):
        self.exact_steps.append((key, rel_rms(flas[0], refs[0])))
        if self.precision is not None:
            f, r = compare(flas[1], refs[0]), compare(refs[-1], refs[0])
            self.kernel_steps.append(Step(key, f, r, judge(f.rel_rms, r.rel_rms, self.precision)))

    def report(self, per_layer: bool) -> Report:
        exact = Exact(compare(self.got, self.want), self.exact_steps, EXACT.name, self.backend.device,
                      self.differences, compare(self.refs[1], self.want) if self.differences else None,
                      self.config_problems)
        kernels = None
        if self.precision is not None:
            k, r = compare(self.flas[1], self.want), compare(self.refs[-1], self.want)
            kernels = Kernels(self.backend.name, self.backend.device, self.dtype, self.precision, k, r,
                              judge(k.rel_rms, r.rel_rms, self.precision), self.kernel_steps)
        return Report(self.src.path, str(self.out.path), self.ids.shape[0], self.ids.shape[1], exact, kernels,
                      per_layer=per_layer)


def _greedy_note(pair: StreamingPair, out: ConvertedDir, steps: int) -> str:
    """Greedy continuations of token 0 by the reference and by fla (exact side), each through its own state."""
    import torch
    if pair.src.plan.num_parameters > GREEDY_MAX_PARAMS:
        return (f'greedy tokens skipped: each token re-reads all {pair.src.plan.num_parameters / 1e9:.1f}B parameters '
                '(streaming); the logits above are the proof')
    pair.only(lanes=1, sides=1)
    sides = []
    for side in (0, 1):
        ids, state, picked = torch.tensor([[0]]), None, []
        for _ in range(steps):
            (ref,), (got,), state = pair.run(ids, state)
            picked.append(int((ref if side == 0 else got)[0, -1].argmax()))
            ids = torch.tensor([picked[-1:]])
        sides.append(picked)
    ref_ids, fla_ids = sides
    same = 'same as the reference' if ref_ids == fla_ids else f'reference: {ref_ids}'
    return f'greedy tokens from fla after token 0: {fla_ids} ({same}){_decode(out.path, fla_ids)}'


def _tokens(model_dir, vocab: int, count: int, text: str | None, batch: int, seed: int):
    """`count` random ids, or token 0 and then the text's ids (at most `count` in all)."""
    import torch
    if text is None:
        return torch.randint(0, vocab, (batch, count), generator=torch.Generator().manual_seed(seed))
    tokenizer = _tokenizer(model_dir)
    try:
        with open(text, encoding='utf-8') as f:
            content = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f'--text: cannot read it as UTF-8 text ({getattr(e, "strerror", None) or e})', text) from e
    with _transformers_quiet():
        encoded = tokenizer(content)['input_ids']
    if not encoded:
        raise ConversionError('the text encodes to no tokens', text)
    # BlinkDL's convention: each document follows token 0, the end-of-text id, as RWKV-LM's LAMBADA evaluation
    # feeds it (BlinkDL/RWKV-LM, RWKV-v7/rwkv_v7_demo.py: the context is [0] and then the encoded text)
    return torch.tensor([[0, *encoded[:count - 1]]] * batch)


# what transformers reads a tokenizer from; a directory with none of them has no tokenizer
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'tokenizer.model', 'vocab.json', 'vocab.txt')


def _tokenizer(model_dir):
    """The directory's tokenizer, loaded without transformers' warnings reaching the user; one line when there is
    none or it does not load."""
    if not any(os.path.isfile(os.path.join(model_dir, f)) for f in TOKENIZER_FILES):
        raise ConversionError('--text: the directory has no tokenizer (convert with --tokenizer world for the RWKV '
                              'World vocabulary, or --tokenizer PATH; or verify on random ids with --tokens N)',
                              str(model_dir))
    from transformers import AutoTokenizer
    try:
        with _transformers_quiet():
            return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # whatever a tokenizer folder makes transformers raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise ConversionError(f'--text: the directory\'s tokenizer does not load ({type(e).__name__}: {first})',
                              str(model_dir)) from e


@contextmanager
def _transformers_quiet():
    """transformers' log lines and warnings off for the call, as they were afterwards: loading a tokenizer from a
    directory whose config says model_type rwkv7 logs "You are using a model of type rwkv7 to instantiate a model
    of type ...", which says nothing about the tokenizer."""
    from transformers.utils import logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            yield
    finally:
        logging.set_verbosity(level)


def _decode(model_dir, ids: list[int]) -> str:
    if not os.path.exists(os.path.join(model_dir, 'tokenizer.json')):
        return ''
    tokenizer = _tokenizer(model_dir)
    with _transformers_quiet():
        return f' = {tokenizer.decode(ids)!r}'
