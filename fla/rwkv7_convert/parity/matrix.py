"""The GPU parity matrix: converted RWKV-7 checkpoints in fla's Triton kernels against the float64 reference.

One cell is one (model, token layout, kernel, precision), the layout from zero states or from a tuned initial state:

  truth      the reference in float64 on the device, computed once per (model, layout) by the matrix and reused by
             every precision and kernel
  ref_error  rel. RMS of the reference run in the cell's precision against the truth: float32 with IEEE matmuls;
             'tf32' = float32 inside verdict.matmul_precision('tf32'); bf16/fp16 with the wkv state in float32 as
             BlinkDL runs them
  fla_error  rel. RMS of fla's logits against the truth
  verdict    verdict.judge(fla_error, ref_error, precision); float32 (IEEE dots) cells must also reach rel. RMS
             <= IEEE_BAR (conversion exactness)

fla 0.6.0 picks its kernel per call: chunk for >= 64 tokens or with grad enabled, fused_recurrent below 64 tokens
without grad. So 'chunk' cells make one call over the sequence (grad enabled when it is shorter than 64);
'fused_recurrent' cells feed it through the cache in pieces of <= RECURRENT_MAX_TOKENS tokens (no grad).

State cells (`Layout.state`): both sides start every sequence from a tuned initial state, the reference from the
BlinkDL time_state file ([H, V, K] per layer), fla from its conversion ([H, K, V], runtime.state_cache.initial_cache);
token layouts and prefill-then-decode only (a left-padded row would run its padding through the state; a packed
batch would need one state per sequence). The T257-state cells run the chunk kernel in one call of 257 tokens and
the recurrent one in pieces of 63.

`run_cell` runs one cell in this process (after `select_runtime`); `workers.py` runs a whole plan in worker
processes under a time budget. TRITON_F32_DEFAULT is read when a kernel is compiled and is not part of Triton's
in-process kernel cache key, so float32-IEEE cells need a process of their own on a GPU (`runtime_env`, in
process.py with the device set-up and the autotuner patch).
Nothing here imports triton or fla's models at module level (torch does not import triton): the runtime is chosen
first.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from fla.rwkv7_convert.parity.process import check_process_precision
from fla.rwkv7_convert.proof.files import ConvertedDir, SourceFile, load_blinkdl_weights
from fla.rwkv7_convert.proof.reference import RWKV7Reference
from fla.rwkv7_convert.proof.state_pair import load_states
from fla.rwkv7_convert.proof.verdict import judge, matmul_precision, rel_rms, storage_dtype
from fla.rwkv7_convert.runtime.device import RECURRENT_MAX_TOKENS
from fla.rwkv7_convert.runtime.loading import load_fla_model
from fla.rwkv7_convert.runtime.state_cache import initial_cache

KERNELS = ('chunk', 'fused_recurrent')
GPU_PRECISIONS = ('float32', 'tf32', 'bfloat16', 'float16')
IEEE_BAR = 1e-4  # the conversion-exactness bar for float32 with IEEE dots
RELEASED = {'0.1B': (768, 12), '1.5B': (2048, 24)}  # (hidden, layers) of the released shapes in the GPU plan


# ------------------------------------------------------------------------------------------------------ the plan

@dataclass(frozen=True)
class Layout:
    name: str
    kind: str  # tokens | leftpad | decode | varlen
    lengths: tuple[int, ...]  # tokens: (T,); leftpad/varlen: one per sequence; decode: (prefill, steps)
    batch: int = 1
    kernels: tuple[str, ...] = KERNELS
    state: bool = False  # every sequence starts from the case's tuned initial state (the module docstring)

    def __post_init__(self):
        if self.state and self.kind not in ('tokens', 'decode'):
            raise ValueError(f'layout {self.name}: a tuned initial state runs with tokens or decode layouts, not {self.kind}')

    @property
    def tokens(self) -> int:
        """Positions compared (one per token of every sequence)."""
        if self.kind == 'tokens':
            return self.batch * self.lengths[0]
        if self.kind == 'decode':
            return self.batch * sum(self.lengths)
        return sum(self.lengths)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # goose (tests/rwkv7_factory, trained-like values) | released (benchmark_convert's generator)
    size: str = ''  # released: '0.1B', '1.5B'
    vocab: int = 0
    hidden: int = 0
    layers: int = 0
    head_size: int = 64
    layouts: tuple[Layout, ...] = ()

    @property
    def shape(self) -> str:
        dims = f'C{self.hidden} L{self.layers} N{self.head_size} V{self.vocab}'
        return f'{self.size} ({dims})' if self.kind == 'released' else dims

    @classmethod
    def from_dict(cls, d: dict) -> Case:
        """The inverse of dataclasses.asdict (JSON lists back to tuples)."""
        layouts = tuple(Layout(**{**lay, 'lengths': tuple(lay['lengths']), 'kernels': tuple(lay['kernels'])})
                        for lay in d['layouts'])
        return cls(**{**d, 'layouts': layouts})


def make_plan(cpu: bool, quick: bool = False, only: str | None = None) -> tuple[list[Case], tuple[str, ...]]:
    """(cases, precisions), restricted to the layouts named in `only` (comma-separated) if given."""
    cases, precisions = _full_plan(cpu, quick)
    if only:
        keep = set(only.split(','))
        cases = [replace(c, layouts=tuple(lay for lay in c.layouts if lay.name in keep)) for c in cases]
        cases = [c for c in cases if c.layouts]
    return cases, precisions


def _full_plan(cpu: bool, quick: bool) -> tuple[list[Case], tuple[str, ...]]:
    """GPU: the issue's matrix. CPU: what Triton's interpreter runs in CI in seconds."""
    if cpu:
        # the interpreter runs every Triton program in numpy: few, short sequences (CI has 2 cores)
        rec = ('fused_recurrent',)
        layouts = tuple(Layout(f'T{t}', 'tokens', (t,), 2, rec) for t in (1, 9)) + (
            Layout('leftpad', 'leftpad', (9, 4), kernels=rec),
            Layout('decode', 'decode', (5, 3), 2, rec),
            Layout('varlen', 'varlen', (6, 1, 3), kernels=rec),
            Layout('T9-state', 'tokens', (9,), 2, rec, state=True),
            Layout('decode-state', 'decode', (5, 3), 2, rec, state=True),
        )
        return [Case('N64', 'goose', vocab=256, hidden=128, layers=2, head_size=64, layouts=layouts)], ('float32',)
    lengths = (1, 63, 64, 257) if quick else (1, 63, 64, 257, 1024, 4096)
    layouts = tuple(Layout(f'T{t}', 'tokens', (t,), 2) for t in lengths) + (
        Layout('leftpad', 'leftpad', (257, 200, 64)),
        Layout('decode', 'decode', (256, 44), 2),
        Layout('varlen57', 'varlen', (30, 1, 17, 9)),  # < 64 tokens: both kernels (chunk with grad)
        Layout('varlen268', 'varlen', (100, 37, 130, 1), kernels=('chunk',)),  # >= 64: fla only runs chunk
        # from a tuned state: chunk in one call of 257 (>= 64), recurrent in pieces of 63; prefill then decode
        Layout('T257-state', 'tokens', (257,), 2, state=True),
        Layout('decode-state', 'decode', (256, 44), 2, state=True),
    )
    cases = [Case(f'N{n}', 'goose', vocab=1024, hidden=256, layers=3, head_size=n, layouts=layouts)
             for n in (64, 32, 128)]
    if not quick:
        cases += [Case(s, 'released', size=s, vocab=65536, hidden=RELEASED[s][0], layers=RELEASED[s][1],
                       layouts=(Layout('T2048', 'tokens', (2048,), 1),)) for s in ('0.1B', '1.5B')]
    return cases, GPU_PRECISIONS


def cell_ids(cases: list[Case], precisions) -> list[tuple[str, str, str, str]]:
    return [(c.name, lay.name, k, p) for c in cases for lay in c.layouts for p in precisions for k in lay.kernels]


# ---------------------------------------------------------------------------------------- inputs and logits

def layout_inputs(case: Case | str, layout: Layout, vocab: int) -> dict:
    """Token ids (and mask / cu_seqlens) of a layout; the same in every process (seeded by the names)."""
    name = case if isinstance(case, str) else case.name
    gen = torch.Generator().manual_seed(zlib.crc32(f'{name}/{layout.name}'.encode()))
    if layout.kind == 'tokens':
        return {'ids': torch.randint(0, vocab, (layout.batch, layout.lengths[0]), generator=gen)}
    if layout.kind == 'decode':
        return {'ids': torch.randint(0, vocab, (layout.batch, sum(layout.lengths)), generator=gen)}
    if layout.kind == 'leftpad':
        T = max(layout.lengths)
        ids = torch.zeros(len(layout.lengths), T, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, n in enumerate(layout.lengths):
            ids[b, T - n:] = torch.randint(0, vocab, (n,), generator=gen)
            mask[b, T - n:] = 1
        return {'ids': ids, 'mask': mask}
    if layout.kind == 'varlen':
        ids = torch.randint(0, vocab, (1, sum(layout.lengths)), generator=gen)
        bounds = [0]
        for n in layout.lengths:
            bounds.append(bounds[-1] + n)
        return {'ids': ids, 'cu_seqlens': torch.tensor(bounds, dtype=torch.int32)}
    raise ValueError(f'layout {layout.name}: unknown kind {layout.kind!r}; expected tokens, leftpad, decode or varlen')


def load_reference(source: str | os.PathLike, model_dir: str | os.PathLike, dtype, device):
    """The reference on the BlinkDL file, with the eps the converted model carries (for N = 64 exactly BlinkDL's)."""

    cfg = json.loads((Path(model_dir) / 'config.json').read_text())
    # the float32 weights live only while the reference takes its copy (1.5B: 6 GB per worker on the GPU)
    weights = {k: v.to(device) for k, v in load_blinkdl_weights(source).items()}
    return RWKV7Reference(weights, dtype=dtype, norm_eps=cfg['norm_eps'], ln_x_eps=cfg['norm_eps'] * cfg['head_dim'])


def load_tuned(source, model_dir, state, model_state) -> tuple[list, object]:
    """A case's tuned initial state, both sides, read and checked as verify reads them (state_pair.load_states):
    (the source's per layer [H, V, K], the converted [L, H, K, V] float32). The direct check's findings are not
    raised here: the cell is judged by its logits, as any other (a transposed state fails them by orders)."""

    with SourceFile(source) as src, ConvertedDir(model_dir) as out:
        tuned = load_states(src, out, state=state, model_state=model_state)
    if tuned is None:
        raise ValueError(f'{source}: no tuned state to start from (state={state!r}, model_state={model_state!r})')
    return tuned.blinkdl, torch.stack(tuned.fla)


def reference_logits(ref, layout: Layout, inputs: dict, device, state=None):
    """The reference's logits at every compared position, [positions, vocab] (sequences run one by one); with
    `state` (per layer [H, V, K], BlinkDL's orientation) every sequence starts from it."""
    ids = inputs['ids'].to(device)
    if state is not None and layout.kind not in ('tokens', 'decode'):
        raise ValueError(f'layout {layout.name}: a tuned initial state runs with tokens or decode layouts')

    def run(part):
        if state is not None:
            return ref(part, ref.tuned_state(state, part.shape[0], device))[0]
        # a zero state made on `device` (not under `with torch.device`, whose mode costs ~30% more per op)
        s = ref.zero_state(part.shape[0])
        s = type(s)(*[[t.to(device) for t in ts] for ts in (s.att_x_prev, s.wkv, s.ffn_x_prev)])
        return ref(part, s)[0]

    if layout.kind in ('tokens', 'decode'):
        return run(ids).reshape(-1, ref.vocab)
    if layout.kind == 'leftpad':
        T = ids.shape[1]
        return torch.cat([run(ids[b:b + 1, T - n:])[0] for b, n in enumerate(layout.lengths)])
    bounds = inputs['cu_seqlens'].tolist()
    return torch.cat([run(ids[:, s:e])[0] for s, e in zip(bounds[:-1], bounds[1:])])


def fla_layout_logits(model, layout: Layout, inputs: dict, kernel: str, device, state=None):
    """fla's logits at the same positions, through the kernel named (see the module docstring); with `state`
    ([L, H, K, V], fla's orientation) every sequence starts from it."""
    ids = inputs['ids'].to(device)
    start = None
    if state is not None:
        if layout.kind not in ('tokens', 'decode'):
            raise ValueError(f'layout {layout.name}: a tuned initial state runs with tokens or decode layouts')
        start = initial_cache(model, state, batch_size=ids.shape[0], device=device)
    mask = inputs.get('mask')
    mask = mask.to(device) if mask is not None else None
    vocab = model.config.vocab_size

    def call(part, cache=None, grad=False, use_cache=True, **kw):
        with torch.set_grad_enabled(grad):
            out = model(input_ids=part, past_key_values=cache, use_cache=use_cache, return_dict=False, **kw)
        return out[0].detach(), (out[1] if use_cache else None)

    def whole_or_pieces(part, cache=None, upto=None):
        """One call (chunk; grad enabled under 64 tokens so fla takes chunk) or recurrent pieces of <= 63."""
        T = part.shape[1]
        if kernel == 'chunk':
            kw = {'attention_mask': mask[:, :upto]} if mask is not None else {}
            return call(part, cache, grad=T < 64, **kw)
        outs = []
        for s in range(0, T, RECURRENT_MAX_TOKENS):
            e = min(T, s + RECURRENT_MAX_TOKENS)
            # fla reads the last `len(piece)` columns of the mask: pass the mask up to the piece's end
            kw = {'attention_mask': mask[:, :e]} if mask is not None else {}
            logits, cache = call(part[:, s:e], cache, **kw)
            outs.append(logits)
        return torch.cat(outs, 1), cache

    if layout.kind == 'tokens':
        return whole_or_pieces(ids, start)[0].reshape(-1, vocab)
    if layout.kind == 'leftpad':
        logits = whole_or_pieces(ids)[0]
        T = ids.shape[1]
        return torch.cat([logits[b, T - n:] for b, n in enumerate(layout.lengths)])
    if layout.kind == 'decode':
        prefill = layout.lengths[0]
        logits, cache = whole_or_pieces(ids[:, :prefill], start)
        steps = [logits]
        for t in range(prefill, ids.shape[1]):
            logits, cache = call(ids[:, t:t + 1], cache)
            steps.append(logits)
        return torch.cat(steps, 1).reshape(-1, vocab)
    # varlen: one packed call; fla runs chunk for >= 64 tokens or with grad, recurrent otherwise
    total = ids.shape[1]
    if kernel == 'fused_recurrent' and total >= 64:
        raise ValueError('fla runs a packed batch of >= 64 tokens only through its chunk kernel')
    cu = inputs['cu_seqlens'].to(device)
    return call(ids, grad=kernel == 'chunk' and total < 64, use_cache=False, cu_seqlens=cu)[0].reshape(-1, vocab)


def timed(device, fn, *args):
    """(fn(*args), seconds), with the device synchronised so the seconds are the work's."""
    t = time.time()
    out = fn(*args)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return out, time.time() - t


def run_kernel(model, layout: Layout, inputs: dict, kernel: str, device, state=None) -> tuple[object, dict]:
    """(fla's logits or None, the row's fla_s and, if the call failed, its error) for one kernel."""
    t = time.time()
    try:
        logits, fla_s = timed(device, fla_layout_logits, model, layout, inputs, kernel, device, state)
    except Exception as e:  # noqa: BLE001 - a failing cell is a result, not the end of the run
        return None, {'error': f'{type(e).__name__}: {e}'[:300], 'fla_s': round(time.time() - t, 3)}
    return logits, {'fla_s': round(fla_s, 3)}


def measure(logits, truth) -> dict:
    """fla's logits against the float64 truth: rel. RMS (judged), max |diff| and top-1 agreement (reported)."""
    return {'fla_error': rel_rms(logits, truth), 'max_abs': (logits.double() - truth).abs().max().item(),
            'top1': (logits.argmax(-1) == truth.argmax(-1)).double().mean().item()}


# ------------------------------------------------------------------------------------------------- the verdict

@dataclass(frozen=True)
class Cell:
    """One judged cell; `as_dict()` leaves out what does not apply (an error has no fla_error, ...)."""

    case: str
    layout: str
    kernel: str
    precision: str
    status: str  # PASS | FAIL | error | reference non-finite | not run
    passed: bool
    fla_error: float | None = None
    ref_error: float | None = None
    max_abs: float | None = None
    top1: float | None = None
    fla_s: float | None = None
    ref_s: float | None = None
    bound: float | None = None
    ratio: float | None = None
    verdict: str | None = None
    error: str | None = None
    why: str | None = None

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        return {**{k: v for k, v in d.items() if k not in ('passed', 'status')}, 'passed': d['passed'],
                'status': d['status']}  # the report's order: the verdict last


def judge_row(row: dict) -> Cell:
    """A measured row (case, layout, kernel, precision, ref_error and fla_error or error, ...) judged by
    verdict.judge; float32 (IEEE dots) must also reach IEEE_BAR."""

    key = {k: row[k] for k in ('case', 'layout', 'kernel', 'precision')}
    if 'error' in row:
        return Cell(**key, status='error', passed=False, error=row['error'], ref_error=row['ref_error'])
    measured = {k: row[k] for k in ('fla_error', 'ref_error')}
    if not math.isfinite(row['ref_error']):  # e.g. fp16 overflowing in the reference itself: nothing to judge by
        return Cell(**key, **measured, status='reference non-finite', passed=False)
    measured.update({k: row[k] for k in ('max_abs', 'top1', 'fla_s', 'ref_s') if k in row})
    j = judge(row['fla_error'], row['ref_error'], row['precision'])
    exact = row['precision'] != 'float32' or row['fla_error'] <= IEEE_BAR
    passed = j.passed and exact
    why = None if exact else f'float32 (IEEE) above the exactness bar {IEEE_BAR:.0e}'
    return Cell(**key, **measured, bound=j.bound, ratio=j.ratio, verdict=j.render(), why=why, passed=passed,
                status='PASS' if passed else 'FAIL')


def run_cell(model_dir: str | os.PathLike, source: str | os.PathLike, layout: Layout, kernel: str, precision: str,
             *, case: str = 'cell', device=None, state: str | os.PathLike | None = None,
             model_state: str | os.PathLike | None = None) -> Cell:
    """One cell in this process: the converted `model_dir` in fla against the reference on the BlinkDL `source`.

    Call `select_runtime` first (or run under tests/conftest.py's interpreter). `case` names the cell and seeds
    its tokens; `device` defaults to CUDA where there is one. A state layout (`layout.state`) starts from a tuned
    state: the source's own (a merge) or `state` (a bare time_state file), fla from `model_dir`'s state file or
    `model_state`.
    """

    if kernel not in layout.kernels:
        raise ValueError(f'layout {layout.name}: kernel {kernel!r} is not one of its kernels {layout.kernels}')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    check_process_precision(precision, device)
    dtype = storage_dtype(precision)
    ref_state, fla_state = load_tuned(source, model_dir, state, model_state) if layout.state else (None, None)
    with matmul_precision('float32'):
        ref = load_reference(source, model_dir, torch.float64, device)
        inputs = layout_inputs(case, layout, ref.vocab)
        truth = reference_logits(ref, layout, inputs, device, ref_state)
        del ref
    with matmul_precision(precision):
        ref = load_reference(source, model_dir, dtype, device)
        mine, ref_s = timed(device, reference_logits, ref, layout, inputs, device, ref_state)
        del ref
        model = load_fla_model(model_dir, dtype=dtype, device=device)
        logits, row = run_kernel(model, layout, inputs, kernel, device, fla_state)
        if logits is not None:
            row.update(measure(logits, truth))
    return judge_row({**row, 'case': case, 'layout': layout.name, 'kernel': kernel, 'precision': precision,
                      'ref_error': rel_rms(mine, truth), 'ref_s': round(ref_s, 3)})
