"""Proof by logits: the converted fla model against the pure-PyTorch reference run on the original BlinkDL file.

One layer in memory. The reference (reference.py) streams the source checkpoint through the converter's own lazy
reader and plan; fla's `RWKV7Block`s run one at a time on tensors read from the finished output directory (never
the converter's memory), `v_first` and each layer's cache carried along (streaming.py). Both see the same tokens;
activations for all tokens are kept, weights for one layer (plus the rows of the embedding the tokens use, and the
head a slice of the vocabulary at a time).

The verdict is calibrated (verdict.py): the reference runs in float64 (the truth) and in the precision under test;
fla passes when its error against float64 is within a documented factor of the reference's own error in that
precision. KL(ref‖fla) and top-1 agreement are reported, not judged. The residual stream after every sub-step is
compared as well; `per_layer` shows and judges each, and a failing run always names where the models part first.

`verify` is the entry point (the command line, the converter's --verify and tests call it). The parts: files.py
(the two files, the pair check, the check of the recorded source), streaming.py (the pair walked layer by layer),
backends.py (where fla runs: the --device choices), report.py (the Report, its rendering and the perplexity on a
text). Their names stay importable from here.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.states import has_state
from fla.rwkv7_convert.proof.backends import BACKENDS, CHOICES, CPU_PIECE, Backend, backend_for
from fla.rwkv7_convert.proof.files import ConvertedDir, SourceCheck, SourceFile, check_pair, load_blinkdl_weights
from fla.rwkv7_convert.proof.report import (
    SUBSTEP_NAMES,
    Comparison,
    Perplexity,
    Report,
    Step,
    compare,
    describe_step,
    perplexity,
)
from fla.rwkv7_convert.proof.state_pair import TunedStates, load_states
from fla.rwkv7_convert.proof.streaming import HEAD_ROWS, Progress, StreamingPair

__all__ = ['BACKENDS', 'CHOICES', 'CPU_PIECE', 'DEFAULT_TOKENS', 'DTYPES', 'HEAD_ROWS', 'SUBSTEP_NAMES', 'Backend',
           'Comparison', 'ConvertedDir', 'Perplexity', 'Progress', 'Report', 'SourceCheck', 'SourceFile', 'Step',
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
    """Compare the converted directory with the reference on the source file; see the module docstring.

    `device` names a backend (backends.CHOICES: 'auto', 'cpu', 'cpu-torch', 'cuda') or is one; 'auto' picks one from
    the source's shape (backends.Auto). With `greedy` > 0 the report's notes
    also hold that many greedy tokens from both models after token 0. With `text` (a file) the tokens are token 0
    and the text's, and the report holds both models' perplexity on it. Everything refused (unreadable or hostile
    files, a directory that is not the source's conversion, a run the backend cannot do) is a one-line
    ConversionError before any compute; that includes a directory whose rwkv7_convert.json records another source
    file (size, then sha256) unless `check_source` is False.

    Tuned states (state_pair.py): a source that carries them (a state-tuned merge), or a bare state file `state`
    beside the base model `source`, is verified from its state: the reference from the source's, fla from the
    converted one (the directory's rwkv7_state.safetensors, or `model_state`, a directory or file), after a direct
    check that the converted state is the source's transposed per head (a mismatch FAILs, named). `drop_state`:
    both from zero states, whatever the files carry."""
    backend = device if isinstance(device, Backend) else backend_for(device)
    asked, piece = piece, check_run(backend, dtype, piece, tokens, batch)
    from fla.rwkv7_convert.proof.verdict import judge
    with SourceFile(source, head_size) as src, ConvertedDir(model_dir) as out:
        check_pair(src, out)
        if backend.choose(src.plan.dims, asked) is not backend:  # --device auto: from the source's shape
            backend = backend.choose(src.plan.dims, asked)
            piece = backend.check(dtype, asked, tokens)
        tuned = load_states(src, out, state=state, model_state=model_state, drop_state=drop_state)
        origin = SourceCheck(src, out, check_source)  # the sizes now; the sha256 on a thread, while we prepare
        progress = None
        scope = ExitStack()
        try:
            backend.prepare()  # a refused pair costs no torch or triton import
            scope.enter_context(backend.running())  # the torch stand-ins for cpu-torch, restored in `finally`
            ids = _tokens(model_dir, src.plan.dims.V, tokens, text, batch, seed)
            origin.finish()  # before any compute
            precision = backend.precision(dtype, min(piece, ids.shape[1]))
            progress = Progress(src.plan.dims.L + 2, quiet)
            pair = StreamingPair(src, out, device=backend.device, dtype=dtype, precision=precision, piece=piece,
                                 progress=progress, initial=tuned)
            steps: list[Step] = []

            def on_step(key, refs, fla_value):
                f, r = compare(fla_value, refs[0]), compare(refs[1], refs[0])
                steps.append(Step(key, f, r, judge(f.rel_rms, r.rel_rms, precision)))

            (want, ref_p), got, _ = pair.run(ids, on_step=on_step)
            report = _report(src, out, backend, dtype, precision, ids, want, ref_p, got, steps, per_layer)
            if tuned is not None:
                report.state, report.state_problems = tuned, list(tuned.problems)
            elif drop_state and (src.states or state is not None or model_state is not None or has_state(out.path)):
                report.notes.append('tuned initial states ignored (--drop-state): the weights verified from zero states')
            if text is not None and ids.shape[1] > 1:  # a next token to predict
                (ref_ppl, ref_top1), (fla_ppl, fla_top1) = perplexity(want, ids), perplexity(got, ids)
                report.perplexity = Perplexity(text, ids.shape[1], ref_ppl, fla_ppl, ref_top1, fla_top1)
            report.notes += [origin.note] if origin.note else []
            if greedy:
                report.notes.append(_greedy_note(pair, out, greedy))
        finally:
            scope.close()
            origin.cancel()
            if progress is not None:
                progress.close()
    return report


def _report(src, out, backend, dtype, precision, ids, want, ref_p, got, steps, per_layer) -> Report:
    from fla.rwkv7_convert.proof.verdict import judge
    fla_c, ref_c = compare(got, want), compare(ref_p, want)
    report = Report(src.path, str(out.path), backend.device, dtype, precision, ids.shape[0], ids.shape[1], fla_c,
                    ref_c, judge(fla_c.rel_rms, ref_c.rel_rms, precision), steps=steps, per_layer=per_layer,
                    backend=backend.name)
    report.first_divergence = next((s.key for s in steps if not s.judgement.passed), None)
    if src.plan.dims.N != 64:
        from fla.rwkv7_convert.mapping.config import norm_eps_for
        report.notes.append(f'head size {src.plan.dims.N}: judged with the eps the converter wrote (LayerNorm '
                            f'{norm_eps_for(src.plan.dims.N):.3g}, ln_x 64e-5); BlinkDL keeps LayerNorm eps 1e-5 '
                            '(README: eps for head sizes other than 64)')
    if out.tied:
        report.notes.append('config.json ties the embeddings: fla\'s head is model.embeddings.weight (any stored '
                            'lm_head.weight is not what fla loads), judged against the file\'s head.weight')
    return report


def _greedy_note(pair: StreamingPair, out: ConvertedDir, steps: int) -> str:
    """Greedy continuations of token 0 by the reference and by fla, each through its own recurrent state."""
    import torch
    if pair.src.plan.num_parameters > GREEDY_MAX_PARAMS:
        return (f'greedy tokens skipped: each token re-reads all {pair.src.plan.num_parameters / 1e9:.1f}B parameters '
                '(streaming); the logits above are the proof')
    pair.refs, pair.precision = pair.refs[:1], None
    sides = []
    for side in (0, 1):
        ids, state, picked = torch.tensor([[0]]), None, []
        for _ in range(steps):
            (ref,), got, state = pair.run(ids, state)
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
    import warnings

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
