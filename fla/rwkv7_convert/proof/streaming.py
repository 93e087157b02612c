"""The reference and fla, walked one layer at a time over the same tokens (StreamingPair), and verify's progress bar.

Only one layer's weights are in memory: the reference's lanes (reference.py: the function fla runs in float64, BlinkDL's
function in float64 where config.json makes them differ, and fla's function in the kernels' precision for their
accuracy report) and fla's sides (its modules in float64 with the torch stand-ins: the exact proof; its kernels in
their precision) read their tensors from the two files (files.py) layer by layer, carrying `v_first` and each
layer's recurrent state; fla's blocks are built on the meta device and given their weights with `assign=True`, then
sent back to meta. The embedding is read for the rows the tokens use, the head a slice of the vocabulary at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass

from fla.rwkv7_convert.errors import ConfigError
from fla.rwkv7_convert.formats.display import progress_bar
from fla.rwkv7_convert.formats.dtypes import TORCH_NAME
from fla.rwkv7_convert.proof.files import ConvertedDir, SourceFile, to_torch
from fla.rwkv7_convert.proof.variant import Variant
from fla.rwkv7_convert.proof.verdict import matmul_precision, storage_dtype
from fla.rwkv7_convert.runtime.loading import ensure_real_fla, fla_init_skipped
from fla.rwkv7_convert.runtime.state_cache import seeded_cache

HEAD_ROWS = 8192  # vocabulary rows of the head held at once
# the sizes fla builds from config.json, defaults included, and the symbols the file has them under
FLA_SIZES = (('hidden_size', 'C'), ('num_hidden_layers', 'L'), ('head_dim', 'N'), ('num_heads', 'H'), ('vocab_size', 'V'),
             ('decay_low_rank_dim', 'Dw'), ('a_low_rank_dim', 'Da'), ('v_low_rank_dim', 'Dv'),
             ('gate_low_rank_dim', 'Dg'))


def _check_fla_config(config, raw: dict, dims, shown: str) -> None:
    """What fla builds from config.json, with its defaults for missing keys, is the file's model: without
    num_hidden_layers fla builds 24 layers (from_pretrained leaves the extra ones random), without vocab_size 32000."""
    want = asdict(dims)
    for key, symbol in FLA_SIZES:
        if symbol == 'Dv' and dims.L == 1:  # fla builds no value LoRA in layer 0 (it takes v_first there)
            continue
        got = getattr(config, key, None)
        if got != want[symbol]:
            how = '' if key in raw else ", fla's default: config.json does not have the key"
            raise ConfigError(f'config.json: fla builds {key} = {got!r}{how}, but the file has {symbol} = '
                              f'{want[symbol]}', shown)


# ------------------------------------------------------------------------------------------------- progress


class Progress:
    """A bar on stderr (terminals only, not with quiet): loading, each layer, each piece."""

    def __init__(self, total: int, quiet: bool):
        self.bar = progress_bar(total, 'verify', 'step', quiet)

    def stage(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f'verify: {what}')

    def piece(self, what: str, k: int, n: int) -> None:
        if self.bar is not None and n > 1:
            self.bar.set_postfix_str(f'piece {k}/{n}: {what}')

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------- the streaming pair


@dataclass(frozen=True)
class Lane:
    """One run of the reference: `name` ('exact': the function fla runs, float64; 'blinkdl': BlinkDL's function,
    float64; 'calibration': fla's function in the kernels' precision), its precision (verdict.PRECISIONS or
    'float64') and its constants (variant.Variant)."""

    name: str
    precision: str
    variant: Variant
    rounded: bool = True  # weights as the directory stores them (rounded where --precision narrowed them), or the file's


@dataclass(frozen=True)
class Side:
    """One run of fla's blocks: `name` ('exact' or 'kernels'), its dtype, tokens per fla call, and the context each
    call runs inside (the torch stand-ins for the exact proof; the backend's own for the kernels)."""

    name: str
    dtype: str
    piece: int
    running: Callable[[], AbstractContextManager]


class StreamingPair:
    """The reference `lanes` and fla's `sides`, walked one layer at a time over the same tokens. `state` carries
    every lane's and side's recurrent state, so a later call continues the sequence. With `initial`
    (state_pair.TunedStates) all start from a tuned state: every reference lane from the source's [H, V, K] tensors,
    fla from the converted [H, K, V] ones (runtime.state_cache.seeded_cache), token shifts zero."""

    def __init__(self, src: SourceFile, out: ConvertedDir, *, device: str, lanes: list[Lane], sides: list[Side],
                 progress: Progress | None = None, initial=None, rounding: dict[str, str] | None = None):
        # torch (and reference.py, which imports it) and fla's models only here: the command line imports this
        # module on its light path, and fla's models must come after the backend chose the interpreter
        import torch

        from fla.rwkv7_convert.proof.reference import RWKV7Reference

        ensure_real_fla()
        from fla.models import RWKV7Config
        from fla.models.rwkv7.modeling_rwkv7 import RWKV7Block
        from fla.modules import LayerNorm
        warnings.filterwarnings('ignore', message='According to Bo')  # fla's per-layer port warning: our job

        self.src, self.out, self.device = src, out, torch.device(device)
        self.lanes, self.sides, self.initial = list(lanes), list(sides), initial
        self.rounding = dict(rounding or {})  # canonical name -> the directory's narrower dtype (variant.narrowed)
        self.progress = progress or Progress(0, True)
        d = src.plan.dims
        self.dims = d
        self.refs = [RWKV7Reference.empty(vocab=d.V, hidden=d.C, layers=d.L, head_size=d.N, dtype=_dtype(lane.precision),
                                          **lane.variant.reference()) for lane in self.lanes]
        try:  # from the config.json ConvertedDir read and checked, not read again by transformers
            self.config = RWKV7Config.from_dict(dict(out.config))
            with torch.device('meta'), fla_init_skipped():
                self.blocks = [RWKV7Block(self.config, i) for i in range(d.L)]
                self.norm = (LayerNorm if self.config.fuse_norm else torch.nn.LayerNorm)(
                    d.C, bias=self.config.norm_bias, eps=self.config.norm_eps)
        except Exception as e:  # a value fla cannot build from (its own checks raise anything)
            raise ConfigError(f'config.json: fla cannot build RWKV7Block from it ({type(e).__name__}: {e})',
                              str(out.path)) from e
        _check_fla_config(self.config, out.config, d, str(out.path))

    def only(self, lanes: int, sides: int) -> StreamingPair:
        """The same pair with its first `lanes` reference lanes and `sides` fla sides (greedy tokens: exact only)."""
        self.lanes, self.refs, self.sides = self.lanes[:lanes], self.refs[:lanes], self.sides[:sides]
        return self

    def zero_state(self, batch: int):
        return {'ref': [r.zero_state(batch) for r in self.refs], 'fla': [[None] * self.dims.L for _ in self.sides]}

    def start_state(self, batch: int):
        """Where a sequence starts: the tuned state (`initial`) if there is one, else zeros. A fresh one each call:
        fla's cache is consumed by the run it seeds."""
        if self.initial is None:
            return self.zero_state(batch)
        # one Cache per side: block i reads and updates its layer i; the exact side keeps its state in float64
        caches = [seeded_cache(self.initial.fla, batch, self.device, _state_dtype(side.dtype)) for side in self.sides]
        return {'ref': [r.tuned_state(self.initial.blinkdl, batch, self.device) for r in self.refs],
                'fla': [[cache] * self.dims.L for cache in caches]}

    def run(self, ids, state=None, on_step=None):
        """Logits [B, T, V] of each reference lane and of each fla side for `ids` [B, T] after `state` (default:
        start_state); returns (ref logits list, fla logits list, new state). `on_step(key, [reference values...],
        [fla values...])` sees the residual stream after every sub-step as soon as all have it (compared there, not
        kept)."""
        import torch
        from fla.models.cache_utils import Cache
        state = state or self.start_state(ids.shape[0])
        new = {'ref': [type(s)([], [], []) for s in state['ref']], 'fla': [[] for _ in self.sides]}
        dev, p = self.device, self.progress

        p.stage('embedding')
        rows = self._rows(self.src.raw('emb.weight'), ids)
        ln0 = {n: self.src.load(n) for n in ('blocks.0.ln0.weight', 'blocks.0.ln0.bias')}
        xs = [r.embed(self._as_stored('emb.weight', rows, lane).to(dev),
                      tuple(r.shaped('ln0', self._as_stored(n, t, lane)).to(dev) for n, t in ln0.items()))
              for r, lane in zip(self.refs, self.lanes)]
        ln0_ref, v_firsts = list(xs), [None] * len(self.refs)
        fla_rows = self._rows(self.out.raw('model.embeddings.weight'), ids) if self.sides else None
        fx = [fla_rows.to(dev, _dtype(side.dtype)) for side in self.sides]
        fv = [torch.zeros_like(x) for x in fx]
        ln0_fla = [None] * len(self.sides)
        p.advance()

        for i in range(self.dims.L):
            p.stage(f'layer {i + 1}/{self.dims.L}')
            outs = self._reference_layer(i, xs, v_firsts, state['ref'], new['ref'])
            atts = []
            for k, side in enumerate(self.sides):
                block = self._load_block(i, _dtype(side.dtype))
                with side.running():
                    x_att, fx[k], fv[k], cache, ln0_fla[k] = self._fla_block(block, fx[k], fv[k], state['fla'][k][i],
                                                                            Cache, side.piece)
                self.blocks[i] = block.to('meta')
                new['fla'][k].append(cache)
                atts.append(x_att)
            if on_step is not None:
                if i == 0:
                    on_step('ln0', ln0_ref, ln0_fla)
                on_step(f'blocks.{i}.att', outs, atts)
                on_step(f'blocks.{i}.ffn', xs, fx)
            _release_freed()  # the layer's tensors are gone: give their pages back before the next layer
            p.advance()

        p.stage('head')
        ln_out = {n: self.src.load(n) for n in ('ln_out.weight', 'ln_out.bias')}
        finals = [r.final(xs[k], tuple(r.shaped('ln_out', self._as_stored(n, t, self.lanes[k])).to(dev)
                                       for n, t in ln_out.items())) for k, r in enumerate(self.refs)]
        fla_finals = [self._fla_norm(x, side) for x, side in zip(fx, self.sides)]
        if on_step is not None:
            on_step('ln_out', finals, fla_finals)
        ref_chunks, fla_chunks = [[] for _ in self.refs], [[] for _ in self.sides]
        for w in self._head_chunks(self.src.raw('head.weight')):
            widened: dict = {}  # lanes of one dtype that read the same values share one copy of the slice
            for k, (r, lane) in enumerate(zip(self.refs, self.lanes)):
                key = r.dtype, lane.rounded and bool(self.rounding)
                if key not in widened:
                    widened[key] = self._as_stored('head.weight', w, lane).to(dev, r.dtype)
                with self._lane(k):
                    ref_chunks[k].append(torch.nn.functional.linear(finals[k], widened[key]))
        for w in self._head_chunks(self.out.raw(self.out.head)) if self.sides else ():  # no fla side: nothing to read
            for k, side in enumerate(self.sides):
                fla_chunks[k].append(torch.nn.functional.linear(fla_finals[k], w.to(dev, _dtype(side.dtype))))
        p.advance()
        return [torch.cat(c, -1) for c in ref_chunks], [torch.cat(c, -1) for c in fla_chunks], new

    def _lane(self, k: int):
        """The calibration lane of a 'tf32' run computes its matmuls in TF32, like fla's chunk kernel; the rest IEEE."""
        return matmul_precision('tf32' if self.lanes[k].precision == 'tf32' else 'float32')

    def _reference_layer(self, i: int, xs: list, v_firsts: list, state: list, new: list) -> list:
        """Block i in every reference lane (its weights read once, shaped once per dtype); xs, v_firsts and `new`
        are updated in place; returns each lane's stream after the time mix."""
        names = [f'blocks.{i}.{n}' for n in self.refs[0].block_names(i)]
        weights = {n: self.src.load(n, native=True) for n in names}  # widened once, to each lane's dtype
        shaped: dict = {}
        outs = []
        for k, (r, lane) in enumerate(zip(self.refs, self.lanes)):
            key = r.dtype, lane.rounded and bool(self.rounding)  # lanes that read the same values share one copy
            if key not in shaped:
                shaped[key] = {n.split('.', 2)[2]: r.shaped(n, self._as_stored(n, t, lane)).to(self.device)
                               for n, t in weights.items()}
            with self._lane(k):
                x_att, xs[k], v_firsts[k], layer_state = r.block(i, shaped[key], xs[k], v_firsts[k],
                                                                 state[k].layer(i))
            new[k].append(layer_state)
            outs.append(x_att)
        return outs

    def _as_stored(self, name: str, t, lane: Lane):
        """The file's tensor `name` as the directory stores it (rounded to its narrower dtype) for a rounded lane."""
        to = self.rounding.get(name) if lane.rounded else None
        return t if to is None else t.to(_dtype(TORCH_NAME[to])).to(t.dtype)

    def _fla_norm(self, x, side: Side):
        import torch
        dtype = _dtype(side.dtype)
        self.norm.load_state_dict({'weight': self.out.load('model.norm.weight', dtype, self.device),
                                   'bias': self.out.load('model.norm.bias', dtype, self.device)}, assign=True)
        try:
            with torch.no_grad(), side.running():
                return self.norm(x)
        finally:
            self.norm.to('meta')

    @staticmethod
    def _rows(raw, ids):
        """The embedding rows of `ids` [B, T] -> [B, T, C] float, reading the matrix once and keeping only those."""
        data, dtype = raw
        picked = data[ids.reshape(-1).numpy()]
        return to_torch(picked, dtype).reshape(*ids.shape, data.shape[1])

    @staticmethod
    def _head_chunks(raw) -> Iterator:
        """HEAD_ROWS rows of the head at a time, in their stored dtype (each lane widens them once)."""
        data, dtype = raw
        for start in range(0, data.shape[0], HEAD_ROWS):
            yield to_torch(data[start:start + HEAD_ROWS], dtype, native=True)

    def _load_block(self, i: int, dtype):
        prefix = f'model.layers.{i}.'
        block = self.blocks[i]
        sd = {name[len(prefix):]: self.out.load(name, dtype, self.device)
              for name in self.out.refs if name.startswith(prefix)}
        try:
            block.load_state_dict(sd, assign=True, strict=True)
        except RuntimeError as e:  # shapes config.json gives fla that the tensors do not have
            raise ConfigError(f'layer {i}: fla\'s RWKV7Block built from config.json does not take the tensors '
                              f'{prefix}* ({" ".join(str(e).split())})', str(self.out.path)) from e
        return block.eval()

    def _fla_block(self, block, x, v_first, cache, cache_cls, piece: int):
        """fla's block over all tokens, in pieces through its cache; (x after the time mix, x after the block,
        v_first, cache, block 0's ln0 output or None)."""
        import torch
        captured, ln0 = [], []

        def after_att(module, args, output):  # fla fuses the residual add into ffn_norm: (normed, residual)
            captured.append(output[1] if isinstance(output, tuple) else args[0])

        hooks = [block.ffn_norm.register_forward_hook(after_att)]
        if block.layer_idx == 0:
            hooks.append(block.pre_norm.register_forward_hook(lambda m, a, o: ln0.append(o)))
        cache = cache if cache is not None else cache_cls.from_legacy_cache(None)
        T = x.shape[1]
        n = math.ceil(T / piece)
        outs, vfs = [], []
        try:
            with torch.no_grad():
                for k, start in enumerate(range(0, T, piece)):
                    self.progress.piece(f'layer {block.layer_idx}', k + 1, n)
                    h, _, cache, vf = block(x[:, start:start + piece], past_key_values=cache, use_cache=True,
                                            v_first=v_first[:, start:start + piece])
                    outs.append(h)
                    vfs.append(vf)
        finally:
            for hook in hooks:
                hook.remove()
        return (torch.cat(captured, 1), torch.cat(outs, 1), torch.cat(vfs, 1), cache,
                torch.cat(ln0, 1) if ln0 else None)


def _dtype(precision: str):
    """The torch dtype a lane or side holds its tensors in ('float64', or verdict.storage_dtype's)."""
    import torch

    return torch.float64 if precision == 'float64' else storage_dtype(precision)


def _release_freed() -> None:
    """Hand the C heap's free memory back to the OS (glibc's malloc_trim). Tensors under glibc's mmap threshold, which
    grows as large blocks are freed, come from the heap: a layer's float64 and float32 copies of different sizes leave
    free space there that the next layer's sizes may not reuse, and RSS would climb layer by layer (2.9B with a
    kernels' report: 4.5 GiB without this). Nothing where there is no glibc."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def _state_dtype(precision: str):
    """fla keeps its recurrent state in float32; the exact side in float64."""
    import torch
    return torch.float64 if precision == 'float64' else torch.float32
