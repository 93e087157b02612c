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

    def running(self):
        """A context the fla side runs inside (the torch stand-ins for TorchWkv); nothing by default."""
        import contextlib
        return contextlib.nullcontext()

    def choose(self, dims, piece: int | None) -> Backend:
        """The backend that runs for a model of `dims` (formats dims: L, C, ...): itself, except for Auto."""
        return self


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


class TorchWkv(Backend):
    """fla's own modules (RWKV7Block, LoRAs, norms, FFN) on the CPU with every Triton kernel they launch replaced by
    a torch function of the same contract (torch_wkv.py): proves the conversion and fla's modules, not the Triton
    kernels themselves (CpuInterpreted and Cuda do). IEEE float32, torch using every core this process may use."""

    device = 'cpu'
    name = 'fla modules, torch wkv'
    fast = True

    def check(self, dtype: str, piece: int | None, tokens: int) -> int:
        if dtype != 'float32':
            raise ConversionError(f'--dtype {dtype} with --device cpu-torch: its verdicts are calibrated for the '
                                  'kernels\' float32 on the CPU; use float32, or --device cuda')
        piece = self.default_piece(tokens) if piece is None else piece
        if piece < 1:
            raise ConversionError(f'--piece {piece}: must be at least 1')
        return piece

    def default_piece(self, tokens: int) -> int:
        return CPU_PIECE  # what the interpreted backend feeds, so both run fla's recurrent path the same way

    def running(self):
        from fla.rwkv7_convert.proof.torch_wkv import installed
        return installed(threads=cpu_threads())


def cpu_threads() -> int:
    """The cores this process may run on (the interpreter is single-threaded Python; torch can use them all)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# --device auto on the CPU: the interpreted kernels (they prove the Triton kernels too) while a 16-token run of
# them stays around a minute on 2 cores, torch wkv above. Interpreted time grows with layers x heads (programs per
# kernel launch, launches per token): measured in README.md (benchmarks/benchmark_verify.py).
AUTO_MAX_LAYER_HEADS = 24 * 16  # 0.4B (24 layers x 16 heads): 31.6 s interpreted; 1.5B is 24 x 32


class Auto(Backend):
    """The default: CUDA where there is a device; on the CPU the interpreted kernels for models up to
    AUTO_MAX_LAYER_HEADS layers x heads (and for any --piece <= 63 the user sets below it), torch wkv above or for
    pieces longer than the interpreter takes. Chosen from the source's shape before anything runs."""

    device = 'cpu'
    name = 'auto'

    def check(self, dtype: str, piece: int | None, tokens: int) -> int:
        if dtype != 'float32' and not _cuda_present():  # on a GPU auto is cuda, which runs any dtype
            raise ConversionError(f'--dtype {dtype} with --device auto: on the CPU fla is verified in float32; use '
                                  'float32, or --device cuda')
        if piece is not None and piece < 1:
            raise ConversionError(f'--piece {piece}: must be at least 1')
        return self.default_piece(tokens) if piece is None else piece

    def default_piece(self, tokens: int) -> int:
        return CPU_PIECE

    def choose(self, dims, piece: int | None) -> Backend:
        from fla.rwkv7_convert.proof.runtime import RECURRENT_MAX_TOKENS
        if _cuda_present():
            return BACKENDS['cuda']
        from fla.rwkv7_convert.proof.runtime import interpreter_ready
        if not interpreter_ready():  # triton imported without TRITON_INTERPRET (a script's `import fla`): no interpreter
            return BACKENDS['cpu-torch']
        if (piece is not None and piece > RECURRENT_MAX_TOKENS) or dims.L * (dims.C // dims.N) > AUTO_MAX_LAYER_HEADS:
            return BACKENDS['cpu-torch']
        return BACKENDS['cpu']


def _cuda_present() -> bool:
    if os.environ.get('TRITON_INTERPRET') == '1':
        return False
    import sys
    torch = sys.modules.get('torch')
    if torch is None:
        import torch
    return torch.cuda.is_available()


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


BACKENDS: dict[str, Backend] = {'cpu': CpuInterpreted(), 'cpu-torch': TorchWkv(), 'cuda': Cuda()}
AUTO = Auto()  # not in BACKENDS (what benchmarks measure): it runs one of them
CHOICES = ['auto', *BACKENDS]  # --device


def backend_for(device: str) -> Backend:
    if device == 'auto':
        return AUTO
    try:
        return BACKENDS[device]
    except (KeyError, TypeError):
        raise ConversionError(f'--device: {device!r} is not one of {", ".join(CHOICES)}') from None
