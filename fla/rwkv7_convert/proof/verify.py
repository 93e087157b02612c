"""Proof by logits: the converted fla model against the pure-PyTorch reference run on the original BlinkDL file.

The reference (reference.py, float64, BlinkDL's eps) reads the source checkpoint; fla's RWKV7ForCausalLM reads the
finished output directory, never the converter's memory. Both see the same tokens. The report gives max and mean
|Δlogit|, the relative RMS error, KL(ref‖fla), top-1 agreement and a verdict against TOLERANCES. With
`per_layer`, the residual stream after every sub-step is compared too and the first place where the two models
part is named: a swapped, mis-transposed or misplaced tensor shows up at its layer and sub-step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from fla.rwkv7_convert.errors import ConversionError


@dataclass(frozen=True)
class Tolerance:
    rel_rms: float  # RMS(fla - ref) / RMS(ref), on logits and on every traced sub-step
    kl: float  # mean over tokens of KL(softmax(ref) || softmax(fla))
    top1: float  # fraction of tokens whose argmax agrees
    why: str


# Against the float64 reference. fp32 is limited by float32 rounding through the layers (measured ~5e-7 on the
# CPU); the bound leaves room for GPU kernels that reassociate sums and for N != 64, where fla's LayerNorm eps is
# 64e-5/N instead of 1e-5 (measured <= 4e-5). bf16/fp16 carry 8/11 mantissa bits through every layer: their
# bounds admit that rounding but not a wrong tensor, which moves the relative error to order 1.
TOLERANCES = {
    'float32': Tolerance(1e-4, 1e-6, 0.99, 'float32 rounding; GPU reassociation; eps 64e-5/N for N != 64'),
    'float16': Tolerance(2e-2, 2e-3, 0.95, '11-bit mantissa through every layer'),
    'bfloat16': Tolerance(6e-2, 2e-2, 0.90, '8-bit mantissa through every layer'),
}
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
class Report:
    source: str
    model: str
    device: str
    dtype: str
    batch: int
    tokens: int
    logits: Comparison
    tolerance: Tolerance
    steps: list[tuple[str, Comparison]] = field(default_factory=list)  # per-layer trace, in forward order
    first_divergence: str | None = None

    @property
    def passed(self) -> bool:
        t, c = self.tolerance, self.logits
        return c.rel_rms <= t.rel_rms and c.kl <= t.kl and c.top1 >= t.top1 and self.first_divergence is None

    def render(self) -> str:
        c, t = self.logits, self.tolerance
        rows = [
            ('max |Δlogit|', f'{c.max_abs:.3e}', ''),
            ('mean |Δlogit|', f'{c.mean_abs:.3e}', ''),
            ('relative RMS error', f'{c.rel_rms:.3e}', f'<= {t.rel_rms:.0e}'),
            ('KL(ref‖fla)', f'{c.kl:.3e}', f'<= {t.kl:.0e}'),
            ('top-1 agreement', f'{100 * c.top1:.1f}%', f'>= {100 * t.top1:.0f}%'),
        ]
        lines = [f'verify {self.source} (reference, float64) vs {self.model} (fla, {self.device}, {self.dtype}), '
                 f'{self.batch} x {self.tokens} tokens',
                 f'  {"metric":<22}{"value":>12}  tolerance']
        lines += [f'  {name:<22}{value:>12}  {tol}' for name, value, tol in rows]
        if self.steps:
            lines.append(f'  {"per sub-step":<22}{"rel RMS":>12}  max |Δ|')
            for name, comp in self.steps:
                mark = '  <- first divergence' if name == self.first_divergence else ''
                lines.append(f'  {name:<22}{comp.rel_rms:>12.3e}  {comp.max_abs:.3e}{mark}')
        verdict = 'PASS' if self.passed else 'FAIL'
        lines.append(f'  {"verdict":<22}{verdict:>12}  ({t.why})')
        if self.first_divergence:
            lines.append(f'  the models part first at {describe_step(self.first_divergence)}')
        return '\n'.join(lines)


def describe_step(key: str) -> str:
    if key.startswith('blocks.'):
        _, layer, part = key.split('.')
        return f'layer {layer}, {SUBSTEP_NAMES[part]} ({key})'
    return f'{SUBSTEP_NAMES[key]} ({key})'


def compare(got, want) -> Comparison:
    """Statistics of fla's values `got` against the reference `want` (last dim = classes for KL/top-1)."""
    import torch
    got, want = got.double(), want.double()
    diff = got - want
    rel = (diff.pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-30)).item()
    logp_ref, logp_got = torch.log_softmax(want, -1), torch.log_softmax(got, -1)
    kl = (logp_ref.exp() * (logp_ref - logp_got)).sum(-1).mean().item()
    top1 = (got.argmax(-1) == want.argmax(-1)).double().mean().item()
    return Comparison(diff.abs().max().item(), diff.abs().mean().item(), rel, kl, top1)


def load_blinkdl_weights(source: str | os.PathLike, head_size: int | None = None) -> dict:
    """The source checkpoint as canonical RWKV-LM names -> float torch tensors, through the converter's own
    reader and aliases (prefixes stripped, vectors in RWKV-LM shapes)."""
    import torch

    from fla.rwkv7_convert.formats.dtypes import to_float32
    from fla.rwkv7_convert.formats.readers import open_checkpoint
    from fla.rwkv7_convert.mapping.plan import make_plan
    weights = {}
    with open_checkpoint(source) as ckpt:
        plan = make_plan(ckpt.tree, str(source), head_size=head_size)
        for e in plan.entries:
            data = e.source.load().reshape(e.canonical_shape)
            data = data if e.source.dtype == 'F64' else to_float32(data, e.source.dtype)
            weights[e.blinkdl] = torch.from_numpy(data)
    return weights


def _trace_fla(model, tokens, piece):
    """fla's logits and its residual stream after each sub-step, under the reference's trace keys."""
    import torch

    from fla.rwkv7_convert.proof.runtime import fla_logits
    captured: dict[str, list] = {}
    hooks = []

    def keep(key, pick):
        def hook(module, args, output):
            captured.setdefault(key, []).append(pick(args, output).detach())
        return hook

    layers = model.model.layers
    hooks.append(layers[0].pre_norm.register_forward_hook(keep('ln0', lambda a, o: o)))
    for i, layer in enumerate(layers):
        # fla fuses the residual add into ffn_norm: with a fused norm its output is (normed, residual)
        hooks.append(layer.ffn_norm.register_forward_hook(
            keep(f'blocks.{i}.att', lambda a, o: o[1] if isinstance(o, tuple) else a[0])))
        hooks.append(layer.register_forward_hook(keep(f'blocks.{i}.ffn', lambda a, o: o[0])))
    hooks.append(model.model.norm.register_forward_hook(keep('ln_out', lambda a, o: o[0] if isinstance(o, tuple) else o)))
    try:
        logits = fla_logits(model, tokens, piece=piece)
    finally:
        for h in hooks:
            h.remove()
    return logits, {k: torch.cat(v, dim=1) for k, v in captured.items()}


def load_pair(source, model_dir, *, device: str = 'cpu', dtype: str = 'float32', head_size: int | None = None):
    """(reference in float64 on the source file, fla model from the directory in `dtype` on `device`)."""
    from fla.rwkv7_convert.proof.runtime import use_interpreter
    if device == 'cpu':
        use_interpreter()
    import torch

    from fla.rwkv7_convert.proof.loading import load_fla_model
    from fla.rwkv7_convert.proof.reference import RWKV7Reference
    if dtype not in TOLERANCES:
        raise ConversionError(f'--dtype: {dtype!r} is not one of {", ".join(TOLERANCES)}')
    if device == 'cuda' and not torch.cuda.is_available():
        raise ConversionError('--device cuda: no CUDA device is available')
    reference = RWKV7Reference(load_blinkdl_weights(source, head_size), dtype=torch.float64)
    return reference, load_fla_model(model_dir, dtype=getattr(torch, dtype), device=device)


def verify(source, model_dir, *, device: str = 'cpu', dtype: str = 'float32', tokens: int = 64, text: str | None = None,
           batch: int = 1, per_layer: bool = False, piece: int | None = None, seed: int = 0,
           head_size: int | None = None, pair=None) -> Report:
    """Compare the converted directory with the reference on the source file; see the module docstring.
    `pair` is what `load_pair` returned for the same arguments, to reuse already loaded models."""
    reference, model = pair or load_pair(source, model_dir, device=device, dtype=dtype, head_size=head_size)
    ids = _tokens(model_dir, reference.vocab, tokens, text, batch, seed)

    trace: dict | None = {} if per_layer else None
    want, _ = reference.forward(ids, trace=trace)
    if per_layer:
        got, fla_steps = _trace_fla(model, ids, piece)
    else:
        from fla.rwkv7_convert.proof.runtime import fla_logits
        got, fla_steps = fla_logits(model, ids, piece=piece), {}
    tolerance = TOLERANCES[dtype]
    report = Report(str(source), str(model_dir), device, dtype, ids.shape[0], ids.shape[1], compare(got.cpu(), want),
                    tolerance)
    for key, ref_value in (trace or {}).items():
        comp = compare(fla_steps[key].cpu(), ref_value)
        report.steps.append((key, comp))
        if report.first_divergence is None and comp.rel_rms > tolerance.rel_rms:
            report.first_divergence = key
    return report


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


def greedy_tokens(reference, model, prompt_ids: list[int], steps: int = 8):
    """Greedy continuations of the prompt by the reference and by fla, each decoding through its own recurrent
    state/cache one token at a time."""
    import torch
    ref_ids, fla_ids = [], []
    logits, state = reference.forward(torch.tensor([prompt_ids]))
    for _ in range(steps):
        ref_ids.append(int(logits[0, -1].argmax()))
        logits, state = reference.forward(torch.tensor([ref_ids[-1:]]), state)
    device = next(model.parameters()).device
    cache, ids = None, torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(steps):
            logits, cache = model(input_ids=ids.to(device), past_key_values=cache, use_cache=True, return_dict=False)[:2]
            fla_ids.append(int(logits[0, -1].argmax()))
            ids = torch.tensor([fla_ids[-1:]])
    return ref_ids, fla_ids
