"""Where fla's side of a verification runs: one Backend per `--device`, the one place a new one goes.

A backend says what it is called in the report, what it refuses from the arguments alone before any file is read
(`check`), what it sets up, or refuses, once the files are found to be a pair and before fla or triton are imported
(`prepare`: the interpreter on the CPU, the device's presence), how many tokens it feeds fla per call by default,
and which precision the verdict is calibrated for (verdict.py). A new backend is a subclass registered in
BACKENDS; the command line's `--device` choices are BACKENDS' keys, and verify.verify takes it by that name (or
the instance itself).
"""

from __future__ import annotations

import contextlib
import os
import sys

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.runtime import device as runtime  # called as runtime.use_interpreter(): benchmarks wrap it there
from fla.rwkv7_convert.runtime.device import RECURRENT_MAX_TOKENS
from fla.rwkv7_convert.runtime.torch_wkv import installed

# torch is imported inside the functions: the command line imports this module on its light path (~1.3 s for torch)


class Backend:
    """What runs fla's RWKV7Block during a verification, and what that means for the run.

    Every verification runs the exact proof (fla's modules in float64 with the torch stand-ins, on this backend's
    device: the verdict); a backend with `kernels` also runs fla's kernels in the precision under test beside it, for
    the kernels' accuracy report (calibrated, never the conversion's verdict)."""

    device = ''  # torch device type, and the --device name
    name = ''  # shown in the report
    fast = False  # runs at the speed of the arithmetic (no interpreter): benchmarks/benchmark_verify.py runs 7.2B with it
    kernels = True  # runs fla's kernels for the accuracy report beside the exact proof
    not_float32 = ''  # why a --dtype other than float32 is refused here (the refusal's rest); '' where any dtype runs

    def check(self, dtype: str, piece: int | None, tokens: int) -> int:
        """Refuse what cannot work here from the arguments alone (one line, nothing imported or read); returns the
        piece size to feed fla. By default: the dtype (`not_float32`), then a piece below 1."""
        self.refuse_dtype(dtype)
        return self.piece_at_least_one(piece, tokens)

    def refuse_dtype(self, dtype: str) -> None:
        if self.not_float32 and dtype != 'float32':
            raise ConversionError(f'--dtype {dtype}{self.not_float32}')

    def prepare(self) -> None:
        """Set up what must come before fla or triton are imported; refuse (one line) where the device cannot run."""

    def default_piece(self, tokens: int) -> int:
        """On the CPU as many tokens per fla call as its recurrent path takes (fewer interpreted launches; the cache
        between calls is exercised from 64 tokens on, and by the tests that set a smaller piece); elsewhere the whole
        sequence."""
        return RECURRENT_MAX_TOKENS if self.device == 'cpu' else tokens

    def piece_at_least_one(self, piece: int | None, tokens: int) -> int:
        """The piece to feed fla: `piece`, or the default for `tokens`; refused below 1 (one line)."""
        piece = self.default_piece(tokens) if piece is None else piece
        if piece < 1:
            raise ConversionError(f'--piece {piece}: must be at least 1')
        return piece

    def precision(self, dtype: str, piece: int) -> str:
        """What the run computes in (verdict.PRECISIONS), for `piece` tokens per fla call."""
        return dtype

    def running(self):
        """A context the fla side runs inside (the torch stand-ins for TorchWkv); nothing by default."""
        return contextlib.nullcontext()

    def choose(self, dims, piece: int | None) -> Backend:
        """The backend that runs for a model of `dims` (formats dims: L, C, ...): itself, except for Auto."""
        return self


class CpuInterpreted(Backend):
    """fla's Triton kernels on the CPU through Triton's interpreter (runtime/device.py use_interpreter): only the recurrent
    kernel works there (< 64 tokens a call), and numpy computes it, in IEEE float32."""

    device = 'cpu'
    name = 'fla Triton kernels, interpreted'

    not_float32 = (' on the CPU: fla runs there through Triton\'s interpreter, which computes with numpy (no bfloat16) '
                   'and returns NaN; use float32, or --device cuda')

    def check(self, dtype: str, piece: int | None, tokens: int) -> int:
        self.refuse_dtype(dtype)
        piece = self.default_piece(tokens) if piece is None else piece
        if not 1 <= piece <= RECURRENT_MAX_TOKENS:
            raise ConversionError(f'--piece {piece}: on the CPU fla only runs pieces of 1..{RECURRENT_MAX_TOKENS} tokens')
        return piece

    def prepare(self) -> None:
        if os.environ.get('TRITON_INTERPRET') != '1' and ('triton' in sys.modules or runtime.cuda_available()):
            # the interpreter is chosen when triton is imported, and use_interpreter leaves a CUDA machine alone
            raise ConversionError("--device cpu: fla's kernels run on the CPU only through Triton's interpreter, and "
                                  'this process has triton imported or a CUDA device without it; set TRITON_INTERPRET=1 '
                                  'and FLA_CACHE_RESULTS=0 before starting Python, or use --device cuda')
        runtime.use_interpreter()


class TorchWkv(Backend):
    """fla's own modules (RWKV7Block, LoRAs, norms, FFN) on the CPU with every Triton kernel they launch replaced by
    a torch function of the same contract (runtime/torch_wkv.py) computing in float32 as the kernels do: their rounding
    without the kernels themselves (CpuInterpreted and Cuda run those). Torch uses every core this process may use."""

    device = 'cpu'
    name = 'fla modules, torch wkv'
    fast = True
    not_float32 = (' with --device cpu-torch: its verdicts are calibrated for the kernels\' float32 on the CPU; use '
                   'float32, or --device cuda')

    def running(self):
        return installed(threads=cpu_threads())


def cpu_threads() -> int:
    """The cores this process may run on (the interpreter is single-threaded Python; torch can use them all)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Exact(Backend):
    """The exact proof alone: fla's modules in float64 with the torch stand-ins (runtime/torch_wkv.py), against the float64
    reference of the function config.json configures. torch on the CPU, every core this process may use."""

    device = 'cpu'
    name = 'fla modules in float64, torch wkv'
    fast = True
    kernels = False
    not_float32 = (': the exact proof runs in float64; a precision is for the kernels\' accuracy report: name the '
                   'kernels with --device cpu, cpu-torch or cuda')

    def precision(self, dtype: str, piece: int) -> str:
        return 'float64'


class Auto(Backend):
    """The default: the exact proof, on the CPU (Exact), or with CUDA present on the GPU, beside the compiled
    kernels' accuracy report there (Cuda: it costs little on a GPU). Chosen before anything runs."""

    device = 'cpu'
    name = 'auto'
    kernels = False

    def check(self, dtype: str, piece: int | None, tokens: int) -> int:
        return (BACKENDS['cuda'] if _cuda_present() else EXACT).check(dtype, piece, tokens)

    def choose(self, dims, piece: int | None) -> Backend:
        return BACKENDS['cuda'] if _cuda_present() else EXACT


def _cuda_present() -> bool:
    if os.environ.get('TRITON_INTERPRET') == '1':
        return False
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
        if not runtime.cuda_available():
            raise ConversionError('--device cuda: no CUDA device is available')

    def precision(self, dtype: str, piece: int) -> str:
        """fla's chunk kernel (>= 64 tokens a call) takes float32 dots in TF32 unless TRITON_F32_DEFAULT=ieee; its
        recurrent kernel computes IEEE float32."""
        if dtype == 'float32' and piece >= 64 and os.environ.get('TRITON_F32_DEFAULT') != 'ieee':
            return 'tf32'
        return dtype


# the kernels whose accuracy a run reports beside the exact proof (--device)
BACKENDS: dict[str, Backend] = {'cpu': CpuInterpreted(), 'cpu-torch': TorchWkv(), 'cuda': Cuda()}
EXACT = Exact()  # the exact proof alone: what auto runs on the CPU
AUTO = Auto()  # not in BACKENDS (what benchmarks measure): it runs one of them
CHOICES = ['auto', *BACKENDS]  # --device


def backend_for(device: str) -> Backend:
    if device == 'auto':
        return AUTO
    try:
        return BACKENDS[device]
    except (KeyError, TypeError):
        raise ConversionError(f'--device: {device!r} is not one of {", ".join(CHOICES)}') from None
