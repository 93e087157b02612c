"""Proof by logits: the converted fla model against the pure-PyTorch reference run on the original BlinkDL file.

One layer in memory. The reference (reference.py) streams the source checkpoint through the converter's own lazy
reader and plan; fla's `RWKV7Block`s run one at a time on tensors read from the finished output directory (never
the converter's memory), `v_first` and each layer's cache carried along. Both see the same tokens; activations for
all tokens are kept, weights for one layer (plus the rows of the embedding the tokens use, and the head a slice of
the vocabulary at a time).

The verdict is calibrated (verdict.py): the reference runs in float64 (the truth) and in the precision under test;
fla passes when its error against float64 is within a documented factor of the reference's own error in that
precision. KL(ref‖fla) and top-1 agreement are reported, not judged. The residual stream after every sub-step is
compared as well; `per_layer` shows and judges each, and a failing run always names where the models part first.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fla.rwkv7_convert.errors import ConversionError

# The same default for verify_rwkv7.py and the converter's --verify (its --verify-tokens default; a test keeps the
# two equal). On the CPU 48 tokens are two pieces (CPU_PIECE), so the cache between calls is exercised too.
DEFAULT_TOKENS = 48
CPU_PIECE = 32
HEAD_ROWS = 8192  # vocabulary rows of the head held at once
GREEDY_MAX_PARAMS = 5e8  # --verify's greedy tokens re-read the model for every token: only for small models
DTYPES = ('float32', 'bfloat16', 'float16')
SUBSTEP_NAMES = {'ln0': 'ln0 (embedding LayerNorm)', 'att': 'time mix (attention)', 'ffn': 'channel mix (FFN)',
                 'ln_out': 'final LayerNorm'}


@dataclass
class Comparison:
    max_abs: float
    mean_abs: float
    rel_rms: float
    kl: float
    top1: float


@dataclass
class Step:
    key: str  # 'ln0', 'blocks.{i}.att', 'blocks.{i}.ffn', 'ln_out'
    fla: Comparison  # fla against the float64 reference
    ref: Comparison  # the reference in the precision under test against float64
    judgement: object  # verdict.Judgement


@dataclass
class Report:
    source: str
    model: str
    device: str
    dtype: str
    precision: str  # what the verdict is calibrated for: float32, tf32, bfloat16, float16
    batch: int
    tokens: int
    logits: Comparison  # fla against the float64 reference
    reference: Comparison  # the reference in `precision` against float64
    judgement: object  # verdict.Judgement on the logits
    steps: list[Step] = field(default_factory=list)  # residual stream after every sub-step, in forward order
    per_layer: bool = False  # judge and show every step
    first_divergence: str | None = None  # first step whose judgement fails
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.judgement.passed and not (self.per_layer and self.first_divergence)

    def render(self) -> str:
        from fla.rwkv7_convert.proof.verdict import calibration
        c, r, j = self.logits, self.reference, self.judgement
        cal = calibration(self.precision)
        lines = [f'verify {self.source} (reference: float64, and {self.precision} for calibration) vs {self.model} '
                 f'(fla, {self.device}, {self.dtype}), {self.batch} x {self.tokens} tokens',
                 f'  {"logits":<24}{"fla":>12}{"ref-" + self.precision:>16}']
        lines += [f'  {name:<24}{a:>12}{b:>16}' for name, a, b in (
            ('relative RMS error', f'{c.rel_rms:.3e}', f'{r.rel_rms:.3e}'),
            ('max |Δlogit|', f'{c.max_abs:.3e}', f'{r.max_abs:.3e}'),
            ('mean |Δlogit|', f'{c.mean_abs:.3e}', f'{r.mean_abs:.3e}'),
            ('KL(ref64‖x)', f'{c.kl:.3e}', f'{r.kl:.3e}'),
            ('top-1 agreement', f'{100 * c.top1:.1f}%', f'{100 * r.top1:.1f}%'))]
        lines.append(f'  {"ratio fla / reference":<24}{j.ratio:>12.2f}   bound: {cal.factor:g} x ref + {cal.floor:.0e} '
                     f'= {j.bound:.3e}')
        if self.per_layer:
            lines.append(f'  {"per sub-step (rel RMS)":<24}{"fla":>12}{"ref-" + self.precision:>16}{"ratio":>9}')
            for s in self.steps:
                mark = '  <- first divergence' if s.key == self.first_divergence else ''
                lines.append(f'  {s.key:<24}{s.fla.rel_rms:>12.3e}{s.ref.rel_rms:>16.3e}{s.judgement.ratio:>9.2f}'
                             f'{mark}')
        verdict = 'PASS' if self.passed else 'FAIL'
        lines.append(f'  {"verdict":<24}{verdict:>12}   (fla within {cal.factor:g}x the error of the reference in '
                     f'{self.precision} on {self.device}: {cal.why})')
        if self.first_divergence and not self.passed:
            lines.append(f'  the models part first at {describe_step(self.first_divergence)}')
        lines += [f'  note: {n}' for n in self.notes]
        return '\n'.join(lines)


def describe_step(key: str) -> str:
    if key.startswith('blocks.'):
        _, layer, part = key.split('.')
        return f'layer {layer}, {SUBSTEP_NAMES[part]} ({key})'
    return f'{SUBSTEP_NAMES[key]} ({key})'


def compare(got, want) -> Comparison:
    """Statistics of `got` against the reference `want` (last dim = classes for KL/top-1)."""
    import torch
    got, want = got.double().cpu(), want.double().cpu()
    diff = got - want
    rel = (diff.pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-30)).item()
    logp_ref, logp_got = torch.log_softmax(want, -1), torch.log_softmax(got, -1)
    kl = (logp_ref.exp() * (logp_ref - logp_got)).sum(-1).mean().item()
    top1 = (got.argmax(-1) == want.argmax(-1)).double().mean().item()
    return Comparison(diff.abs().max().item(), diff.abs().mean().item(), rel, kl, top1)


def load_blinkdl_weights(source: str | os.PathLike, head_size: int | None = None) -> dict:
    """The whole source checkpoint as canonical RWKV-LM names -> float torch tensors (for small models and tests;
    `verify` streams instead)."""
    with SourceFile(source, head_size) as src:
        return {name: src.load(name) for name in src.entries}


# ------------------------------------------------------------------------------------------- the two files


class SourceFile:
    """The BlinkDL checkpoint, one tensor at a time, through the converter's reader and plan (canonical names and
    RWKV-LM shapes; float32, or float64 when stored so)."""

    def __init__(self, path: str | os.PathLike, head_size: int | None = None):
        from fla.rwkv7_convert.formats.readers import open_checkpoint
        from fla.rwkv7_convert.mapping.plan import make_plan
        self.path = str(path)
        self.ckpt = open_checkpoint(path)
        try:
            self.plan = make_plan(self.ckpt.tree, self.path, head_size=head_size)
        except BaseException:
            self.ckpt.close()
            raise
        self.entries = {e.blinkdl: e for e in self.plan.entries}

    def __enter__(self) -> SourceFile:
        return self

    def __exit__(self, *exc) -> None:
        self.ckpt.close()

    def load(self, name: str):
        e = self.entries[name]
        return _to_torch(e.source.load(), e.source.dtype).reshape(e.canonical_shape)

    def raw(self, name: str):
        e = self.entries[name]
        return e.source.load().reshape(e.canonical_shape), e.source.dtype


class ConvertedDir:
    """The converted directory: config.json and the safetensors shards, one tensor at a time through the same reader
    (plain reads, no memory mapping whose touched pages would stay resident)."""

    def __init__(self, model_dir: str | os.PathLike):
        from fla.rwkv7_convert.formats.readers import open_checkpoint
        self.path = Path(model_dir)
        shown = str(model_dir)
        if not self.path.is_dir():
            what = 'no such directory' if not self.path.exists() else 'not a directory'
            raise ConversionError(f'--model {shown}: {what}; expected the converted Hugging Face directory')
        config = self.path / 'config.json'
        try:
            self.config = json.loads(config.read_text(encoding='utf-8'))
        except FileNotFoundError:
            raise ConversionError('no config.json: not a converted model directory', shown) from None
        except (OSError, ValueError) as e:
            raise ConversionError(f'unreadable config.json ({e})', shown) from None
        index = self.path / 'model.safetensors.index.json'
        if index.exists():
            shards = sorted(set(json.loads(index.read_text(encoding='utf-8'))['weight_map'].values()))
        elif (self.path / 'model.safetensors').exists():
            shards = ['model.safetensors']
        else:
            raise ConversionError('no model.safetensors or model.safetensors.index.json', shown)
        self.ckpts, self.refs, self.where = [], {}, {}
        try:
            for shard in shards:
                ckpt = open_checkpoint(self.path / shard)
                self.ckpts.append(ckpt)
                for name, ref in ckpt.tree.items():
                    self.refs[name], self.where[name] = ref, str(self.path / shard)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for c in self.ckpts:
            c.close()

    def __enter__(self) -> ConvertedDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load(self, name: str, dtype, device):
        ref = self.refs[name]
        return _to_torch(ref.load(), ref.dtype).reshape(ref.shape).to(device=device, dtype=dtype)


def _to_torch(data, dtype: str):
    import torch

    from fla.rwkv7_convert.formats.dtypes import to_float32
    return torch.from_numpy(data if dtype == 'F64' else to_float32(data, dtype))


_CONFIG_DIMS = (('hidden_size', 'C'), ('num_hidden_layers', 'L'), ('head_dim', 'N'), ('vocab_size', 'V'),
                ('intermediate_size', 'F'), ('decay_low_rank_dim', 'Dw'), ('a_low_rank_dim', 'Da'),
                ('v_low_rank_dim', 'Dv'), ('gate_low_rank_dim', 'Dg'))


def check_pair(src: SourceFile, out: ConvertedDir) -> None:
    """Before any compute: the directory's config and tensor shapes are the ones the source file converts to.
    One line naming both files and the first disagreement."""
    from dataclasses import asdict
    dims = asdict(src.plan.dims)
    problems = []
    for key, symbol in _CONFIG_DIMS:
        if key in out.config and out.config[key] != dims[symbol]:
            problems.append(f'config.json {key} = {out.config[key]}, but the file has {symbol} = {dims[symbol]}')
    expected = {e.fla: e for e in src.plan.kept}
    for name, e in expected.items():
        if name not in out.refs:
            problems.append(f'{name} (from {e.blinkdl}) is missing')
        elif tuple(out.refs[name].shape) != tuple(e.fla_shape):
            problems.append(f'{name} is {list(out.refs[name].shape)} in {Path(out.where[name]).name}, but '
                            f'{e.blinkdl} {list(e.source.shape)} converts to {list(e.fla_shape)}')
    problems += [f'{name} is not in the file' for name in sorted(set(out.refs) - set(expected))]
    if problems:
        more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
        raise ConversionError(f'{out.path} does not match {src.path}: {problems[0]}{more}')


# ------------------------------------------------------------------------------------------------- progress


class Progress:
    """A bar on stderr (terminals only, not with quiet): loading, each layer, each piece."""

    def __init__(self, total: int, quiet: bool):
        self.bar = None
        if quiet or not sys.stderr.isatty():
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, desc='verify', unit='step', file=sys.stderr, leave=False)

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
    the same tokens. `state` carries both sides' recurrent states, so a later call continues the sequence."""

    def __init__(self, src: SourceFile, out: ConvertedDir, *, device: str, dtype: str, precision: str | None,
                 piece: int, progress: Progress | None = None):
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
        self.config = RWKV7Config.from_pretrained(str(out.path))
        with torch.device('meta'), fla_init_skipped():
            self.blocks = [RWKV7Block(self.config, i) for i in range(d.L)]
            self.norm = (LayerNorm if self.config.fuse_norm else torch.nn.LayerNorm)(
                d.C, bias=self.config.norm_bias, eps=self.config.norm_eps)

    def zero_state(self, batch: int):
        return {'ref': [r.zero_state(batch) for r in self.refs], 'fla': [None] * self.dims.L}

    def run(self, ids, state=None, on_step=None):
        """Logits [B, T, V] of each reference lane and of fla for `ids` [B, T] after `state`; returns
        (ref logits list, fla logits, new state). `on_step(key, [reference values...], fla value)` sees the residual
        stream after every sub-step as soon as both sides have it (compared there, not kept)."""
        import torch
        from fla.models.cache_utils import Cache

        from fla.rwkv7_convert.proof.verdict import matmul_precision
        state = state or self.zero_state(ids.shape[0])
        new = {'ref': [type(s)([], [], []) for s in state['ref']], 'fla': []}
        dev, p = self.device, self.progress

        def lane(k):  # the float32 lane of a 'tf32' run computes its matmuls in TF32, like fla's chunk kernel
            return matmul_precision('tf32' if self.precision == 'tf32' and k > 0 else 'float32')

        p.stage('embedding')
        rows = self._rows(self.src.raw('emb.weight'), ids)
        ln0 = [self.src.load(f'blocks.0.ln0.{n}') for n in ('weight', 'bias')]
        xs = [r.embed(rows.to(dev), tuple(r.shaped('ln0', t).to(dev) for t in ln0)) for r in self.refs]
        ln0_ref, v_firsts = list(xs), [None] * len(self.refs)
        fla_rows = self._rows(self._raw_out('model.embeddings.weight'), ids).to(dev, self.fla_dtype)
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
                                for w in self._head_chunks(self._raw_out('lm_head.weight'))], -1)
        p.advance()
        return ref_logits, fla_logits, new

    def _raw_out(self, name: str):
        ref = self.out.refs[name]
        return ref.load().reshape(ref.shape), ref.dtype

    @staticmethod
    def _rows(raw, ids):
        """The embedding rows of `ids` [B, T] -> [B, T, C] float, reading the matrix once and keeping only those."""
        data, dtype = raw
        picked = data[ids.reshape(-1).numpy()]
        return _to_torch(picked, dtype).reshape(*ids.shape, data.shape[1])

    @staticmethod
    def _head_chunks(raw) -> Iterator:
        data, dtype = raw
        for start in range(0, data.shape[0], HEAD_ROWS):
            yield _to_torch(data[start:start + HEAD_ROWS], dtype)

    def _load_block(self, i: int):
        prefix = f'model.layers.{i}.'
        block = self.blocks[i]
        sd = {name[len(prefix):]: self.out.load(name, self.fla_dtype, self.device)
              for name in self.out.refs if name.startswith(prefix)}
        block.load_state_dict(sd, assign=True, strict=True)
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


# ---------------------------------------------------------------------------------------------------- verify


def precision_for(device: str, dtype: str, piece: int) -> str:
    """What the run computes in: fla's chunk kernel (>= 64 tokens a call) takes float32 dots in TF32 on a GPU unless
    TRITON_F32_DEFAULT=ieee; its recurrent kernel and the CPU interpreter compute IEEE float32."""
    if dtype == 'float32' and device == 'cuda' and piece >= 64 and os.environ.get('TRITON_F32_DEFAULT') != 'ieee':
        return 'tf32'
    return dtype


def check_run(device: str, dtype: str, piece: int | None, tokens: int, batch: int) -> int:
    """Refuse what cannot work before anything is loaded; returns the piece size."""
    if dtype not in DTYPES:
        raise ConversionError(f'--dtype: {dtype!r} is not one of {", ".join(DTYPES)}')
    if device not in ('cpu', 'cuda'):
        raise ConversionError(f'--device: {device!r} is not cpu or cuda')
    if tokens < 1 or batch < 1:
        raise ConversionError(f'--tokens {tokens} / --batch {batch}: both must be at least 1')
    if device == 'cpu':
        from fla.rwkv7_convert.proof.runtime import RECURRENT_MAX_TOKENS
        if dtype != 'float32':
            raise ConversionError(f'--dtype {dtype} on the CPU: fla runs there through Triton\'s interpreter, which '
                                  'computes with numpy (no bfloat16) and returns NaN; use float32, or --device cuda')
        piece = CPU_PIECE if piece is None else piece
        if not 1 <= piece <= RECURRENT_MAX_TOKENS:
            raise ConversionError(f'--piece {piece}: on the CPU fla only runs pieces of 1..{RECURRENT_MAX_TOKENS} tokens')
        return piece
    import torch
    if not torch.cuda.is_available():
        raise ConversionError('--device cuda: no CUDA device is available')
    return piece or tokens


def prepare(device: str) -> None:
    """Triton's CPU interpreter for fla when running on the CPU (before anything imports triton)."""
    if device == 'cpu':
        from fla.rwkv7_convert.proof.runtime import use_interpreter
        use_interpreter()


def verify(source, model_dir, *, device: str = 'cpu', dtype: str = 'float32', tokens: int = DEFAULT_TOKENS,
           text: str | None = None, batch: int = 1, per_layer: bool = False, piece: int | None = None, seed: int = 0,
           head_size: int | None = None, quiet: bool = True, greedy: int = 0) -> Report:
    """Compare the converted directory with the reference on the source file; see the module docstring.
    With `greedy` > 0 the report's notes also hold that many greedy tokens from both models after token 0."""
    piece = check_run(device, dtype, piece, tokens, batch)
    prepare(device)
    from fla.rwkv7_convert.proof.verdict import judge
    with SourceFile(source, head_size) as src, ConvertedDir(model_dir) as out:
        check_pair(src, out)
        ids = _tokens(model_dir, src.plan.dims.V, tokens, text, batch, seed)
        precision = precision_for(device, dtype, min(piece, ids.shape[1]))
        progress = Progress(src.plan.dims.L + 2, quiet)
        try:
            pair = StreamingPair(src, out, device=device, dtype=dtype, precision=precision, piece=piece,
                                 progress=progress)
            steps: list[Step] = []

            def on_step(key, refs, fla_value):
                f, r = compare(fla_value, refs[0]), compare(refs[1], refs[0])
                steps.append(Step(key, f, r, judge(f.rel_rms, r.rel_rms, precision)))

            (want, ref_p), got, _ = pair.run(ids, on_step=on_step)
            report = _report(src, out, device, dtype, precision, ids, want, ref_p, got, steps, per_layer)
            if greedy:
                report.notes.append(_greedy_note(pair, out, greedy))
        finally:
            progress.close()
    return report


def _report(src, out, device, dtype, precision, ids, want, ref_p, got, steps, per_layer) -> Report:
    from fla.rwkv7_convert.proof.verdict import judge
    fla_c, ref_c = compare(got, want), compare(ref_p, want)
    report = Report(src.path, str(out.path), device, dtype, precision, ids.shape[0], ids.shape[1], fla_c, ref_c,
                    judge(fla_c.rel_rms, ref_c.rel_rms, precision), steps=steps, per_layer=per_layer)
    report.first_divergence = next((s.key for s in steps if not s.judgement.passed), None)
    if src.plan.dims.N != 64:
        from fla.rwkv7_convert.mapping.config import norm_eps_for
        report.notes.append(f'head size {src.plan.dims.N}: judged with the eps the converter wrote (LayerNorm '
                            f'{norm_eps_for(src.plan.dims.N):.3g}, ln_x 64e-5); BlinkDL keeps LayerNorm eps 1e-5 '
                            '(README: eps for head sizes other than 64)')
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
    import torch
    if text is None:
        return torch.randint(0, vocab, (batch, count), generator=torch.Generator().manual_seed(seed))
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise ConversionError(f'--text needs a tokenizer in the model directory ({type(e).__name__}: {e})') from e
    with open(text, encoding='utf-8') as f:
        ids = tokenizer(f.read())['input_ids'][:count]
    if not ids:
        raise ConversionError('the text encodes to no tokens', text)
    return torch.tensor([ids] * batch)


def _decode(model_dir, ids: list[int]) -> str:
    if not os.path.exists(os.path.join(model_dir, 'tokenizer.json')):
        return ''
    from transformers import AutoTokenizer
    return f' = {AutoTokenizer.from_pretrained(str(model_dir)).decode(ids)!r}'
