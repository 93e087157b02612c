"""What a verification found: the statistics of one comparison, every sub-step's, and the Report with its rendering.

Nothing here runs a model; `compare` turns two tensors into a Comparison, with verdict.rel_rms as its error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from fla.rwkv7_convert.proof.verdict import EXACT_BOUND, calibration, rel_rms

# torch is imported inside the functions that use it: the command line imports this module, and a conversion never
# pays for torch (~2 s: the `import torch` row of benchmarks/benchmark_convert.py; tests/test_commands.py checks).

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
    fla: Comparison  # fla's kernels against the float64 reference
    ref: Comparison  # the reference in the precision under test against float64
    judgement: object  # verdict.Judgement


@dataclass
class Exact:
    """The conversion's verdict: fla's own modules in float64 (`backend`) against the float64 reference of the
    function config.json configures (variant.fla_variant), at the logits and after every sub-step, within
    verdict.EXACT_BOUND; plus how far that function is from BlinkDL's (`formula`, with the `differences` named) and
    the config.json values no conversion of the file writes (`config_problems`: a FAIL, named)."""

    logits: Comparison
    steps: list[tuple[str, float]]  # (sub-step, fla's relative RMS error there), in forward order
    backend: str
    device: str
    differences: list = field(default_factory=list)  # variant.Difference
    formula: Comparison | None = None  # the reference of fla's function against BlinkDL's; None when they are one
    config_problems: list[str] = field(default_factory=list)

    @property
    def bound(self) -> float:
        return EXACT_BOUND

    @property
    def first_divergence(self) -> str | None:
        return next((key for key, err in self.steps if not err <= self.bound), None)  # NaN: diverged

    @property
    def passed(self) -> bool:
        return self.logits.rel_rms <= self.bound and self.first_divergence is None and not self.config_problems

    def lines(self, per_layer: bool) -> list[str]:
        c = self.logits
        lines = [f'  {"exact proof":<24}{self.backend} on {self.device}, against the float64 reference of the function '
                 'config.json configures',
                 f'  {"logits":<24}relative RMS {c.rel_rms:.3e} (bound {self.bound:.0e}), max |Δlogit| {c.max_abs:.3e}, '
                 f'top-1 {100 * c.top1:.1f}%']
        if per_layer:
            lines.append(f'  {"per sub-step (rel RMS)":<24}{"fla float64":>12}')
            lines += [f'  {key:<24}{err:>12.3e}' + ('  <- first divergence' if key == self.first_divergence else '')
                      for key, err in self.steps]
        if self.formula is None:
            lines.append(f'  {"formula":<24}fla\'s function is BlinkDL\'s (no constant differs)')
        else:
            f = self.formula
            lines.append(f'  {"formula":<24}fla\'s function differs from BlinkDL\'s by relative RMS {f.rel_rms:.3e} '
                         f'(max |Δlogit| {f.max_abs:.3e}, top-1 {100 * f.top1:.1f}%) on these tokens, from:')
            lines += [f'    - {d.render()}' for d in self.differences]
        return lines


@dataclass
class Kernels:
    """fla's kernels in the precision under test (`backend`: interpreted, compiled, or the stand-ins in float32):
    their accuracy, calibrated against the reference's own error in that precision (verdict.CALIBRATION). A report
    on the kernels' rounding, never the conversion's verdict (that is Exact)."""

    backend: str
    device: str
    dtype: str
    precision: str  # what the calibration is for: float32, tf32, bfloat16, float16
    logits: Comparison  # the kernels against the float64 reference
    reference: Comparison  # the reference in `precision` against float64
    judgement: object  # verdict.Judgement on the logits
    steps: list[Step] = field(default_factory=list)

    @property
    def within(self) -> bool:
        return self.judgement.passed

    @property
    def first_divergence(self) -> str | None:
        return next((s.key for s in self.steps if not s.judgement.passed), None)

    def lines(self, per_layer: bool) -> list[str]:
        c, r, j = self.logits, self.reference, self.judgement
        cal = calibration(self.precision)
        lines = [f'  kernels\' accuracy (not the conversion\'s verdict): {self.backend} on {self.device}, {self.dtype}; '
                 f'calibrated against the reference in {self.precision}',
                 f'  {"logits":<24}{"kernels":>12}{"ref-" + self.precision:>16}']
        lines += [f'  {name:<24}{a:>12}{b:>16}' for name, a, b in (
            ('relative RMS error', f'{c.rel_rms:.3e}', f'{r.rel_rms:.3e}'),
            ('max |Δlogit|', f'{c.max_abs:.3e}', f'{r.max_abs:.3e}'),
            ('mean |Δlogit|', f'{c.mean_abs:.3e}', f'{r.mean_abs:.3e}'),
            ('KL(ref64‖x)', f'{c.kl:.3e}', f'{r.kl:.3e}'),
            ('top-1 agreement', f'{100 * c.top1:.1f}%', f'{100 * r.top1:.1f}%'))]
        lines.append(f'  {"ratio kernels / reference":<24}{j.ratio:>10.2f}   calibration: {cal.factor:g} x ref + '
                     f'{cal.floor:.0e} = {j.bound:.3e}')
        if per_layer:
            lines.append(f'  {"per sub-step (rel RMS)":<24}{"kernels":>12}{"ref-" + self.precision:>16}{"ratio":>9}')
            lines += [f'  {s.key:<24}{s.fla.rel_rms:>12.3e}{s.ref.rel_rms:>16.3e}{s.judgement.ratio:>9.2f}'
                      + ('  <- first past the calibration' if s.key == self.first_divergence else '') for s in self.steps]
        lines.append('  ' + self.summary())
        return lines

    def summary(self) -> str:
        j = self.judgement
        if not math.isfinite(j.fla_error):
            return f'kernels: not finite (NaN or Inf) in {self.precision}: fla\'s kernels, not the conversion'
        said = (f'{j.ratio:.3g} times the reference\'s own error in {self.precision}' if j.ref_error > 0
                else f'{j.fla_error:.3g} (relative RMS) where the reference\'s own is 0')
        if j.passed:
            return f'kernels: within calibration ({said})'
        where = f', first past it at {self.first_divergence}' if self.first_divergence else ''
        return (f'kernels: {said}, past the calibration ({calibration_text(self.precision)}){where}: the kernels\' '
                'rounding on these weights, not the conversion (the exact proof judges that); docs/verification.md '
                'names which kernel dominates (the fused LayerNorm, on ill-conditioned weights)')


def calibration_text(precision: str) -> str:
    cal = calibration(precision)
    return f'{cal.factor:g}x + {cal.floor:.0e}'


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
    batch: int
    tokens: int
    exact: Exact  # the verdict
    kernels: Kernels | None = None  # with a kernels backend (--device cpu, cpu-torch, cuda)
    per_layer: bool = False  # show every step
    notes: list[str] = field(default_factory=list)
    perplexity: Perplexity | None = None  # with --text
    state: object = None  # state_pair.TunedStates: both sides ran from a tuned initial state
    state_problems: list[str] = field(default_factory=list)  # its direct check: a converted state that is not the source's

    @property
    def passed(self) -> bool:
        return self.exact.passed and not self.state_problems

    @property
    def first_divergence(self) -> str | None:
        return self.exact.first_divergence

    def render(self, source_name: str | None = None, model_name: str | None = None) -> str:
        """The report as text; the model card passes names for the two files (no local paths published)."""
        source, model = source_name or self.source, model_name or self.model
        lines = [f'verify {source} (reference) vs {model} (fla), {self.batch} x {self.tokens} tokens',
                 *([f'  {"initial state":<24}' + self.state.describe(
                     source_name and Path(self.state.source).name, model_name and Path(self.state.converted).name)]
                   if self.state is not None else [])]
        lines += self.exact.lines(self.per_layer)
        if self.perplexity is not None:
            lines.append(f'  {self.perplexity.render()}')
        lines.append(self.verdict_line())
        lines += [f'  state: {p}' for p in self.state_problems]
        lines += [f'  config: {p}' for p in self.exact.config_problems]
        if not self.passed:
            if self.exact.first_divergence:
                lines.append(f'  the models part first at {describe_step(self.exact.first_divergence)}')
            lines.append('  what to do: convert the file again (the directory may have been changed or damaged); check '
                         'that this is the file that was converted' + ('' if self.per_layer else
                                                                      '; --per-layer shows every sub-step'))
        if self.kernels is not None:
            lines += self.kernels.lines(self.per_layer)
        lines += [f'  note: {n}' for n in self.notes]
        return '\n'.join(lines)

    def verdict_line(self) -> str:
        """The verdict in one line, as `verify -q` prints it: PASS or FAIL, fla's float64 error against the function
        it runs and the bound, how far that function is from BlinkDL's, and a kernels' summary when they ran."""
        e = self.exact
        err = e.logits.rel_rms
        if e.passed:
            err_at = f'fla\'s float64 error is {err:.2e}'
        elif e.first_divergence and e.logits.rel_rms <= e.bound:
            err_at = f'at {e.first_divergence} fla\'s float64 error is {dict(e.steps)[e.first_divergence]:.2e}'
        elif math.isfinite(err):
            err_at = f'fla\'s float64 error is {err:.2e}'
        else:
            err_at = 'fla\'s float64 logits are not finite (NaN or Inf)'
        bound = f' (bound {e.bound:.0e}) against the float64 reference' if math.isfinite(err) else ''
        said = f'{err_at}{bound} on {e.device}'
        if self.state is not None:
            said += ', from the tuned initial state'
        formula = ('; fla\'s function is BlinkDL\'s' if e.formula is None else
                   f'; fla\'s function differs from BlinkDL\'s by {e.formula.rel_rms:.1e} '
                   f'({", ".join(sorted({d.key for d in e.differences}))})')
        kernels = f'; {self.kernels.summary()}' if self.kernels is not None else ''
        if self.passed:
            return f'PASS: {said}{formula}{kernels}'
        where = f', first at {e.first_divergence}' if e.first_divergence else ''
        if e.config_problems and e.logits.rel_rms <= e.bound and not e.first_divergence:
            return f'FAIL: {said}, but {e.config_problems[0]}'
        state = ''
        if self.state_problems:  # named in the one line -q prints too
            more = len(self.state_problems) - 1
            state = f'; {self.state_problems[0]}' + (f' (and {more} more layer(s))' if more else '')
        if e.passed:  # the logits agree, the stored state does not
            return f'FAIL: {said}, but the converted state is not the source\'s{state}'
        return f"FAIL: {said}{where}: this directory does not compute the file's function{state}"


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

    got, want = got.double().cpu(), want.double().cpu()
    diff = got - want
    logp_ref, logp_got = torch.log_softmax(want, -1), torch.log_softmax(got, -1)
    kl = (logp_ref.exp() * (logp_ref - logp_got)).sum(-1).mean().item()
    top1 = (got.argmax(-1) == want.argmax(-1)).double().mean().item()
    return Comparison(diff.abs().max().item(), diff.abs().mean().item(), rel_rms(got, want), kl, top1)
