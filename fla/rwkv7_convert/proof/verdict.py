"""Two judgements: the exact proof's bound (the conversion's verdict), and the calibrated kernels' accuracy.

The exact proof runs fla's own modules in float64 (torch stand-ins for its kernels) against the float64 reference of
the function config.json configures: a correct conversion agrees to float64 rounding, a wrong tensor is off by order
1e-3 or more. EXACT_BOUND sits in that measured gap (docs/verification.md: both sides recorded). No calibration.

The kernels' accuracy (fla's Triton kernels, or the stand-ins in float32, in the precision under test) is calibrated:

A fixed tolerance cannot tell "correct, with rounding that grows with width and depth" from "a tensor in the wrong
place". So the reference runs twice: in float64 (the truth) and in the precision under test (float32; float32 with
TF32 matmuls; bf16/fp16 as BlinkDL's runtime runs them: weights and activations in that dtype, wkv state in
float32). fla passes when its error against float64 is within `factor` times the reference's own error in that
precision, plus a small `floor` (relative RMS) for models so small that the reference's own error is ~0.
A wrong tensor moves fla's error to order 1, far above any such bound.

Errors are relative RMS: RMS(x - truth) / RMS(truth), fla's house measure.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

# torch is imported inside the functions that use it: the command line imports this module, and a conversion never
# pays for torch (~2 s: the `import torch` row of benchmarks/benchmark_convert.py; tests/test_commands.py checks).

# The exact proof: fla's float64 error (relative RMS against the float64 reference of the same function) above which
# the directory does not compute the file's function, at the logits and at every sub-step. Measured (docs/verification.md,
# benchmarks/benchmark_exact.py): correct conversions 0.1B-7.2B, trained-like and long-memory, both generators, at most
# ~1e-13; every corruption the suite knows at least ~1e-5. The bound is placed between, orders of magnitude from both.
EXACT_BOUND = 1e-9


# The precisions a run can be judged in. 'tf32' is float32 storage with TF32 dot products (fla's chunk kernels on a
# GPU by default; torch matmuls with allow_tf32); 'float32' means IEEE float32 dots throughout.
PRECISIONS = ('float32', 'tf32', 'bfloat16', 'float16')


@dataclass(frozen=True)
class Calibration:
    factor: float  # fla may lose at most this many times what the reference loses in the same precision ...
    floor: float  # ... plus this much relative RMS (models so small that the reference's own error is ~0)
    why: str


# Chosen from measurements across sizes, head sizes, dtypes and devices: see docs/verification.md.
CALIBRATION: dict[str, Calibration] = {
    'float32': Calibration(8.0, 2e-6, 'float32 rounding, which grows with width and depth'),
    'tf32': Calibration(8.0, 2e-5, 'TF32 dot products (10-bit mantissa) on top of float32 rounding'),
    'bfloat16': Calibration(3.0, 1e-3, '8-bit mantissa through every layer'),
    'float16': Calibration(3.0, 1e-4, '11-bit mantissa through every layer'),
}


@dataclass(frozen=True)
class Judgement:
    precision: str
    fla_error: float  # rel. RMS of fla against the float64 reference
    ref_error: float  # rel. RMS of the reference in `precision` against the float64 reference
    bound: float  # factor * ref_error + floor

    @property
    def passed(self) -> bool:
        return math.isfinite(self.fla_error) and self.fla_error <= self.bound

    @property
    def ratio(self) -> float:
        """fla's error over the reference's own: about 1 for a correct conversion, huge for a wrong tensor."""
        return self.fla_error / self.ref_error if self.ref_error > 0 else math.inf

    def render(self) -> str:
        return (f'fla {self.fla_error:.3e} vs reference-in-{self.precision} {self.ref_error:.3e} '
                f'(ratio {self.ratio:.2f}; bound {self.bound:.3e})')


def judge(fla_error: float, ref_error: float, precision: str) -> Judgement:
    """PASS when `fla_error <= factor * ref_error + floor` for `precision` (see CALIBRATION)."""
    c = calibration(precision)
    return Judgement(precision, float(fla_error), float(ref_error), c.factor * float(ref_error) + c.floor)


def calibration(precision: str) -> Calibration:
    try:
        return CALIBRATION[precision]
    except KeyError:
        raise ValueError(f'precision {precision!r} is not one of {", ".join(PRECISIONS)}') from None


def rel_rms(got, want) -> float:
    """RMS(got - want) / RMS(want), in float64."""
    got, want = got.double(), want.double()
    return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def storage_dtype(precision: str):
    """The torch dtype weights and activations are held in for `precision` (tf32 stores float32)."""
    import torch
    calibration(precision)
    return {'float32': torch.float32, 'tf32': torch.float32, 'bfloat16': torch.bfloat16,
            'float16': torch.float16}[precision]


@contextmanager
def matmul_precision(precision: str):
    """torch matmuls in TF32 inside the block for 'tf32', IEEE float32 otherwise; the previous setting comes back
    afterwards (BlinkDL's `rwkv` package turns TF32 on at import, so callers comparing in one process need this)."""
    import torch
    calibration(precision)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        tf32 = precision == 'tf32'
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
