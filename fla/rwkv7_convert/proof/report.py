"""What a verification found: the statistics of one comparison, every sub-step's, and the Report with its rendering.

Nothing here runs a model; `compare` turns two tensors into a Comparison, with verdict.rel_rms as its error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

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
class Perplexity:
    """Both models on a text (verify's --text), from the logits verify compares: perplexity = exp(mean NLL of each
    next token), and how often each model's top-1 is that next token."""

    text: str  # the file, as given
    tokens: int  # fed, token 0 included; tokens - 1 next tokens are predicted
    reference: float  # the float64 reference's perplexity
    fla: float
    reference_top1: float  # fraction of next tokens that are the reference's top-1
    fla_top1: float

    def render(self) -> str:
        return (f'perplexity on {self.text} ({self.tokens} tokens, token 0 first): reference {self.reference:.6g}, fla '
                f'{self.fla:.6g} (top-1 next-token agreement: reference {100 * self.reference_top1:.1f}%, fla '
                f'{100 * self.fla_top1:.1f}%)')


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
    backend: str = ''  # what ran fla (backends.Backend.name), e.g. 'fla Triton kernels, CUDA'
    perplexity: Perplexity | None = None  # with --text
    state: object = None  # state_pair.TunedStates: both sides ran from a tuned initial state
    state_problems: list[str] = field(default_factory=list)  # its direct check: a converted state that is not the source's

    @property
    def passed(self) -> bool:
        return self.judgement.passed and not (self.per_layer and self.first_divergence) and not self.state_problems

    def render(self, source_name: str | None = None, model_name: str | None = None) -> str:
        """The report as text; the model card passes names for the two files (no local paths published)."""
        from fla.rwkv7_convert.proof.verdict import calibration
        c, r, j = self.logits, self.reference, self.judgement
        cal = calibration(self.precision)
        source, model = source_name or self.source, model_name or self.model
        lines = [f'verify {source} (reference: float64, and {self.precision} for calibration) vs {model} '
                 f'(fla, {self.device}, {self.dtype}), {self.batch} x {self.tokens} tokens',
                 *([f'  {"backend":<24}{self.backend}'] if self.backend else []),
                 *([f'  {"initial state":<24}' + self.state.describe(
                     source_name and Path(self.state.source).name, model_name and Path(self.state.converted).name)]
                   if self.state is not None else []),
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
        if self.perplexity is not None:
            lines.append(f'  {self.perplexity.render()}')
        lines.append(self.verdict_line())
        lines += [f'  state: {p}' for p in self.state_problems]
        if not self.passed:
            if self.first_divergence:
                lines.append(f'  the models part first at {describe_step(self.first_divergence)}')
            lines.append('  what to do: convert the file again (the directory may have been changed or damaged); check '
                         'that this is the file that was converted' + ('' if self.per_layer else
                                                                      '; --per-layer shows every sub-step'))
        lines += [f'  note: {n}' for n in self.notes]
        return '\n'.join(lines)

    def verdict_line(self) -> str:
        """The verdict in one line, as `verify -q` prints it: PASS or FAIL, fla's error as a multiple of the
        reference's own in the same precision, and the bound."""
        from fla.rwkv7_convert.proof.verdict import calibration
        cal = calibration(self.precision)
        j, where = self.judgement, "fla's error"
        if j.passed and not self.passed:  # --per-layer: the logits agree, a sub-step does not
            j = next(s.judgement for s in self.steps if s.key == self.first_divergence)
            where = f"at {self.first_divergence} fla's error"
        if not math.isfinite(j.fla_error):
            times = f"{where} is not finite (NaN or Inf in fla's values)"
        elif j.ref_error > 0:
            times = f"{where} is {j.ratio:.3g} times the reference's own"
        else:  # tiny sub-steps can round to exactly nothing in the precision under test
            times = f"{where} is {j.fla_error:.3g} (relative RMS) where the reference's own is 0"
        said = f'{times} in {self.precision} on {self.device} (bound {cal.factor:g}x + {cal.floor:.0e})'
        if self.state is not None:
            said += ', from the tuned initial state'
        if self.passed:
            return f'PASS: {said}'
        state = ''
        if self.state_problems:  # named in the one line -q prints too
            more = len(self.state_problems) - 1
            state = f'; {self.state_problems[0]}' + (f' (and {more} more layer(s))' if more else '')
        if j.passed:  # the logits agree within the bound, the stored state does not
            return f'FAIL: {said}, but the converted state is not the source\'s{state}'
        return f"FAIL: {said}: this directory does not compute the file's function{state}"


def perplexity(logits, ids) -> tuple[float, float]:
    """(exp(mean NLL of ids[:, t + 1] under logits[:, t]), fraction of those next tokens that are the top-1)."""
    import torch
    logits, ids = logits[:, :-1].double().cpu(), ids[:, 1:].cpu()
    nll = -torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return math.exp(nll.mean().item()), (logits.argmax(-1) == ids).double().mean().item()


def describe_step(key: str) -> str:
    if key.startswith('blocks.'):
        _, layer, part = key.split('.')
        return f'layer {layer}, {SUBSTEP_NAMES[part]} ({key})'
    return f'{SUBSTEP_NAMES[key]} ({key})'


def compare(got, want) -> Comparison:
    """Statistics of `got` against the reference `want` (last dim = classes for KL/top-1)."""
    import torch

    from fla.rwkv7_convert.proof.verdict import rel_rms
    got, want = got.double().cpu(), want.double().cpu()
    diff = got - want
    logp_ref, logp_got = torch.log_softmax(want, -1), torch.log_softmax(got, -1)
    kl = (logp_ref.exp() * (logp_ref - logp_got)).sum(-1).mean().item()
    top1 = (got.argmax(-1) == want.argmax(-1)).double().mean().item()
    return Comparison(diff.abs().max().item(), diff.abs().mean().item(), rel_rms(got, want), kl, top1)
