"""Where fla's side of a verification runs: one Backend per `--device`, the one place a new one goes.

A backend says what it is called in the report, what it refuses from the arguments alone before any file is read
(`check`), what it sets up, or refuses, once the files are found to be a pair and before fla or triton are imported
(`prepare`: the interpreter on the CPU, the device's presence), how many tokens it feeds fla per call by default,
and which precision the verdict is calibrated for (verdict.py). A new backend is a subclass registered in
BACKENDS; the command line's `--device` choices are BACKENDS' keys, and verify.verify takes it by that name (or
the instance itself).
"""

from __future__ import annotations

import os

from fla.rwkv7_convert.errors import ConversionError

# On the CPU as many tokens per fla call as its recurrent path takes (runtime.RECURRENT_MAX_TOKENS): fewer interpreted
# launches. The cache between calls is exercised from 64 tokens on, and by the tests that set a smaller piece
# (tests/proof/test_verify.py, test_interpreter.py).
CPU_PIECE = 63


class Backend:
    """What runs fla's RWKV7Block during a verification, and what that means for the run."""

    device = ''  # torch device type, and the --device name
    name = ''  # shown in the report
    fast = False  # runs at the speed of the arithmetic (no interpreter): benchmarks/benchmark_verify.py runs 7.2B with it

    def check(self, dtype: str, piece: int | None, tokens: int) -> int:
        """Refuse what cannot work here from the arguments alone (one line, nothing imported or read); returns the
        piece size to feed fla."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Set up what must come before fla or triton are imported; refuse (one line) where the device cannot run."""

    def default_piece(self, tokens: int) -> int:
        return tokens

    def precision(self, dtype: str, piece: int) -> str:
        """What the run computes in (verdict.PRECISIONS), for `piece` tokens per fla call."""
        return dtype


class CpuInterpreted(Backend):
    """fla's Triton kernels on the CPU through Triton's interpreter (runtime.use_interpreter): only the recurrent
    kernel works there (< 64 tokens a call), and numpy computes it, in IEEE float32."""

    device = 'cpu'
    name = 'fla Triton kernels, interpreted'

    def check(self, dtype: str, piece: int | None, tokens: int) -> int:
        from fla.rwkv7_convert.proof.runtime import RECURRENT_MAX_TOKENS
        if dtype != 'float32':
            raise ConversionError(f'--dtype {dtype} on the CPU: fla runs there through Triton\'s interpreter, which '
                                  'computes with numpy (no bfloat16) and returns NaN; use float32, or --device cuda')
        piece = self.default_piece(tokens) if piece is None else piece
        if not 1 <= piece <= RECURRENT_MAX_TOKENS:
            raise ConversionError(f'--piece {piece}: on the CPU fla only runs pieces of 1..{RECURRENT_MAX_TOKENS} tokens')
        return piece

    def prepare(self) -> None:
        import sys

        from fla.rwkv7_convert.proof.runtime import cuda_available, use_interpreter
        if os.environ.get('TRITON_INTERPRET') != '1' and ('triton' in sys.modules or cuda_available()):
            # the interpreter is chosen when triton is imported, and use_interpreter leaves a CUDA machine alone
            raise ConversionError("--device cpu: fla's kernels run on the CPU only through Triton's interpreter, and "
                                  'this process has triton imported or a CUDA device without it; set TRITON_INTERPRET=1 '
                                  'and FLA_CACHE_RESULTS=0 before starting Python, or use --device cuda')
        use_interpreter()

    def default_piece(self, tokens: int) -> int:
        return CPU_PIECE


class Cuda(Backend):
    """fla's Triton kernels compiled for a CUDA device: the whole sequence in one call by default, so fla's chunk
    kernel runs from 64 tokens on."""

    device = 'cuda'
    name = 'fla Triton kernels, CUDA'

    def check(self, dtype: str, piece: int | None, tokens: int) -> int:
        return piece or self.default_piece(tokens)

    def prepare(self) -> None:
        from fla.rwkv7_convert.proof.runtime import cuda_available
        if not cuda_available():
            raise ConversionError('--device cuda: no CUDA device is available')

    def precision(self, dtype: str, piece: int) -> str:
        """fla's chunk kernel (>= 64 tokens a call) takes float32 dots in TF32 unless TRITON_F32_DEFAULT=ieee; its
        recurrent kernel computes IEEE float32."""
        if dtype == 'float32' and piece >= 64 and os.environ.get('TRITON_F32_DEFAULT') != 'ieee':
            return 'tf32'
        return dtype


BACKENDS: dict[str, Backend] = {b.device: b for b in (CpuInterpreted(), Cuda())}


def backend_for(device: str) -> Backend:
    try:
        return BACKENDS[device]
    except (KeyError, TypeError):
        raise ConversionError(f'--device: {device!r} is not one of {", ".join(BACKENDS)}') from None
