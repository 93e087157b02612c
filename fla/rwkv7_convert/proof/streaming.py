"""The reference and fla, walked one layer at a time over the same tokens (StreamingPair), and verify's progress bar.

Only one layer's weights are in memory: the reference (reference.py, float64 plus the precision under test) and
fla's `RWKV7Block`s read their tensors from the two files (files.py) layer by layer, carrying `v_first` and each
layer's recurrent state; fla's blocks are built on the meta device and given their weights with `assign=True`, then
sent back to meta. The embedding is read for the rows the tokens use, the head a slice of the vocabulary at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from fla.rwkv7_convert.errors import ConfigError
from fla.rwkv7_convert.proof.files import ConvertedDir, SourceFile, to_torch

HEAD_ROWS = 8192  # vocabulary rows of the head held at once
# the sizes fla builds from config.json, defaults included, and the symbols the file has them under
FLA_SIZES = (('hidden_size', 'C'), ('num_hidden_layers', 'L'), ('head_dim', 'N'), ('num_heads', 'H'), ('vocab_size', 'V'),
             ('decay_low_rank_dim', 'Dw'), ('a_low_rank_dim', 'Da'), ('v_low_rank_dim', 'Dv'),
             ('gate_low_rank_dim', 'Dg'))


def _check_fla_config(config, raw: dict, dims, shown: str) -> None:
    """What fla builds from config.json, with its defaults for missing keys, is the file's model: without
    num_hidden_layers fla builds 24 layers (from_pretrained leaves the extra ones random), without vocab_size 32000."""
    from dataclasses import asdict
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
        from fla.rwkv7_convert.formats.display import progress_bar
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


class StreamingPair:
    """The reference (float64, plus optional `lanes` in other precisions) and fla, walked one layer at a time over
    the same tokens. `state` carries both sides' recurrent states, so a later call continues the sequence. With
    `initial` (state_pair.TunedStates) both start from a tuned state: every reference lane from the source's
    [H, V, K] tensors, fla from the converted [H, K, V] ones (proof.states.seeded_cache), token shifts zero."""

    def __init__(self, src: SourceFile, out: ConvertedDir, *, device: str, dtype: str, precision: str | None,
                 piece: int, progress: Progress | None = None, initial=None):
        import torch

        from fla.rwkv7_convert.mapping.config import norm_eps_for
        from fla.rwkv7_convert.proof.loading import ensure_real_fla, fla_init_skipped
        from fla.rwkv7_convert.proof.reference import RWKV7Reference
        from fla.rwkv7_convert.proof.verdict import storage_dtype
        ensure_real_fla()
        import warnings

        from fla.models import RWKV7Config
        from fla.models.rwkv7.modeling_rwkv7 import RWKV7Block
        from fla.modules import LayerNorm
        warnings.filterwarnings('ignore', message='According to Bo')  # fla's per-layer port warning: our job

        self.src, self.out, self.device, self.piece = src, out, torch.device(device), piece
        self.initial = initial
        self.fla_dtype = getattr(torch, dtype)
        self.progress = progress or Progress(0, True)
        d = src.plan.dims
        self.dims = d
        # fla's eps for this head size (config.norm_eps_for; BlinkDL's exactly for N = 64): the reference checks the
        # conversion, and the config's eps is what the converter chose from the file, not read from the directory
        eps = norm_eps_for(d.N)
        self.precision = precision
        dtypes = [torch.float64] + ([storage_dtype(precision)] if precision else [])
        self.refs = [RWKV7Reference.empty(vocab=d.V, hidden=d.C, layers=d.L, head_size=d.N, dtype=t,
                                          ln_x_eps=d.N * eps, norm_eps=eps) for t in dtypes]
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

    def zero_state(self, batch: int):
        return {'ref': [r.zero_state(batch) for r in self.refs], 'fla': [None] * self.dims.L}

    def start_state(self, batch: int):
        """Where a sequence starts: the tuned state (`initial`) if there is one, else zeros. A fresh one each call:
        fla's cache is consumed by the run it seeds."""
        if self.initial is None:
            return self.zero_state(batch)
        from fla.rwkv7_convert.proof.states import seeded_cache
        cache = seeded_cache(self.initial.fla, batch, self.device)  # one Cache: block i reads and updates its layer i
        return {'ref': [r.tuned_state(self.initial.blinkdl, batch, self.device) for r in self.refs],
                'fla': [cache] * self.dims.L}

    def run(self, ids, state=None, on_step=None):
        """Logits [B, T, V] of each reference lane and of fla for `ids` [B, T] after `state` (default: start_state);
        returns (ref logits list, fla logits, new state). `on_step(key, [reference values...], fla value)` sees the
        residual stream after every sub-step as soon as both sides have it (compared there, not kept)."""
        import torch
        from fla.models.cache_utils import Cache

        from fla.rwkv7_convert.proof.verdict import matmul_precision
        state = state or self.start_state(ids.shape[0])
        new = {'ref': [type(s)([], [], []) for s in state['ref']], 'fla': []}
        dev, p = self.device, self.progress

        def lane(k):  # the float32 lane of a 'tf32' run computes its matmuls in TF32, like fla's chunk kernel
            return matmul_precision('tf32' if self.precision == 'tf32' and k > 0 else 'float32')

        p.stage('embedding')
        rows = self._rows(self.src.raw('emb.weight'), ids)
        ln0 = [self.src.load(f'blocks.0.ln0.{n}') for n in ('weight', 'bias')]
        xs = [r.embed(rows.to(dev), tuple(r.shaped('ln0', t).to(dev) for t in ln0)) for r in self.refs]
        ln0_ref, v_firsts = list(xs), [None] * len(self.refs)
        fla_rows = self._rows(self.out.raw('model.embeddings.weight'), ids).to(dev, self.fla_dtype)
        x = fla_rows
        v_first = torch.zeros_like(x)
        p.advance()

        for i in range(self.dims.L):
            p.stage(f'layer {i + 1}/{self.dims.L}')
            names = [f'blocks.{i}.{n}' for n in self.refs[0].block_names(i)]
            weights = {n: self.src.load(n) for n in names}
            outs = []
            for k, r in enumerate(self.refs):
                params = {n.split('.', 2)[2]: r.shaped(n, t).to(dev) for n, t in weights.items()}
                with lane(k):
                    x_att, xs[k], v_firsts[k], layer_state = r.block(i, params, xs[k], v_firsts[k],
                                                                     state['ref'][k].layer(i))
                new['ref'][k].append(layer_state)
                outs.append(x_att)
                del params
            del weights
            block = self._load_block(i)
            x_att, x, v_first, cache = self._fla_block(block, x, v_first, state['fla'][i], Cache)
            new['fla'].append(cache)
            self.blocks[i] = block.to('meta')
            if on_step is not None:
                if i == 0:
                    on_step('ln0', ln0_ref, self._ln0_fla)
                on_step(f'blocks.{i}.att', outs, x_att)
                on_step(f'blocks.{i}.ffn', xs, x)
            p.advance()

        p.stage('head')
        ln_out = [self.src.load(f'ln_out.{n}') for n in ('weight', 'bias')]
        finals = [r.final(xs[k], tuple(r.shaped('ln_out', t).to(dev) for t in ln_out)) for k, r in enumerate(self.refs)]
        self.norm.load_state_dict({'weight': self.out.load('model.norm.weight', self.fla_dtype, dev),
                                   'bias': self.out.load('model.norm.bias', self.fla_dtype, dev)}, assign=True)
        with torch.no_grad():
            fla_final = self.norm(x)
        self.norm.to('meta')
        if on_step is not None:
            on_step('ln_out', finals, fla_final)
        ref_chunks = [[] for _ in self.refs]
        for w in self._head_chunks(self.src.raw('head.weight')):
            for k, r in enumerate(self.refs):
                with lane(k):
                    ref_chunks[k].append(torch.nn.functional.linear(finals[k], w.to(dev, r.dtype)))
        ref_logits = [torch.cat(chunks, -1) for chunks in ref_chunks]
        fla_logits = torch.cat([torch.nn.functional.linear(fla_final, w.to(dev, self.fla_dtype))
                                for w in self._head_chunks(self.out.raw(self.out.head))], -1)
        p.advance()
        return ref_logits, fla_logits, new

    @staticmethod
    def _rows(raw, ids):
        """The embedding rows of `ids` [B, T] -> [B, T, C] float, reading the matrix once and keeping only those."""
        data, dtype = raw
        picked = data[ids.reshape(-1).numpy()]
        return to_torch(picked, dtype).reshape(*ids.shape, data.shape[1])

    @staticmethod
    def _head_chunks(raw) -> Iterator:
        data, dtype = raw
        for start in range(0, data.shape[0], HEAD_ROWS):
            yield to_torch(data[start:start + HEAD_ROWS], dtype)

    def _load_block(self, i: int):
        prefix = f'model.layers.{i}.'
        block = self.blocks[i]
        sd = {name[len(prefix):]: self.out.load(name, self.fla_dtype, self.device)
              for name in self.out.refs if name.startswith(prefix)}
        try:
            block.load_state_dict(sd, assign=True, strict=True)
        except RuntimeError as e:  # shapes config.json gives fla that the tensors do not have
            raise ConfigError(f'layer {i}: fla\'s RWKV7Block built from config.json does not take the tensors '
                              f'{prefix}* ({" ".join(str(e).split())})', str(self.out.path)) from e
        return block.eval()

    def _fla_block(self, block, x, v_first, cache, cache_cls):
        """fla's block over all tokens, in pieces through its cache; (x after the time mix, x after the block,
        v_first, cache)."""
        import torch
        captured = []

        def after_att(module, args, output):  # fla fuses the residual add into ffn_norm: (normed, residual)
            captured.append(output[1] if isinstance(output, tuple) else args[0])

        if block.layer_idx == 0:
            pre = block.pre_norm.register_forward_hook(lambda m, a, o: self._ln0_parts.append(o))
            self._ln0_parts = []
        hook = block.ffn_norm.register_forward_hook(after_att)
        cache = cache if cache is not None else cache_cls.from_legacy_cache(None)
        T = x.shape[1]
        n = math.ceil(T / self.piece)
        outs, vfs = [], []
        try:
            with torch.no_grad():
                for k, start in enumerate(range(0, T, self.piece)):
                    self.progress.piece(f'layer {block.layer_idx}', k + 1, n)
                    h, _, cache, vf = block(x[:, start:start + self.piece], past_key_values=cache, use_cache=True,
                                            v_first=v_first[:, start:start + self.piece])
                    outs.append(h)
                    vfs.append(vf)
        finally:
            hook.remove()
            if block.layer_idx == 0:
                pre.remove()
        if block.layer_idx == 0:
            self._ln0_fla = torch.cat(self._ln0_parts, 1)
        return torch.cat(captured, 1), torch.cat(outs, 1), torch.cat(vfs, 1), cache

