#!/usr/bin/env python
"""Prefill and decode speed of a converted RWKV-7 model in fla, against the project's plain-PyTorch reference (GPU only).

For each size (released shapes, random weights) it writes an RWKV-LM bf16 checkpoint with the generator of
tests/rwkv7_factory.py, converts it with utils/convert_to_rwkv7.py (harness.prepare_size), loads the result with fla's
RWKV7ForCausalLM (bf16) and measures, median of --repeats after warm-up, CUDA-synchronized:

  prefill   tokens/s of one forward over a [B, T] prompt (logits of the last position only)
  TTFT      time to first token: prompt ids on the host -> forward -> greedy token back on the host, B = 1
  decode    tokens/s of greedy one-token steps through the cache, for each batch in --decode-batch

for fla's two kernels, for BlinkDL's own `rwkv` package on the same GPU and file (RWKV_V7_ON=1, its CUDA wkv
kernel with RWKV_CUDA_ON=1 where it builds, else its torch ops; batch 1 only, as that package runs), and for
`fla.rwkv7_convert.proof.reference.RWKV7Reference` (one token at a time, --ref-dtype).

Warm-up discipline (the same as benchmarks/gpu_parity.py, but with real autotuning, since these are speed
numbers): every call shape that is timed runs --warmup times first, outside the timed region, so Triton compiles
and autotunes each kernel once there; that one-off cost is reported as `warmup_s`, never mixed into the medians.
fla 0.6.0's RWKV7Attention ignores `config.attn_mode` in its forward: it runs `chunk_rwkv7` for calls of 64 or
more tokens (or with grad enabled) and `fused_mul_recurrent_rwkv7` below that. So "chunk" prefill is one call
over the prompt, and "fused_recurrent" prefill feeds the prompt through the cache in 63-token pieces; decode
(one token per call) is the recurrent kernel in both. A logits check against the reference guards the numbers.

    python benchmarks/benchmark_forward.py                       # 0.1B and 1.5B
    python benchmarks/benchmark_forward.py --sizes 0.1B --prefill-len 4096 --json fwd.json

Without a CUDA device it prints 'skipped: no CUDA device' and exits 0 (`--cpu-smoke` runs a tiny shape on the
CPU through Triton's interpreter, recurrent kernel only, to check the script itself).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import md_table, prepare_size, say

# torch, triton and fla are imported inside the functions: --cpu-smoke must select Triton's interpreter before any of
# them is imported, and without CUDA the script says "skipped" without paying for them.


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def use_triton_interpreter() -> None:
    """CPU smoke test only: Triton's interpreter, with an autotuner that does not time configs."""
    if 'triton' in sys.modules:
        raise RuntimeError('triton was imported before the interpreter could be selected')
    os.environ['TRITON_INTERPRET'] = '1'
    os.environ['FLA_CACHE_RESULTS'] = '0'
    from triton.runtime import autotuner

    def equal_times(self, *args, config, **meta):
        return [1.0, 1.0, 1.0]

    autotuner.Autotuner._bench = equal_times


class Timer:
    def __init__(self, device):
        import torch
        self.torch, self.cuda = torch, device.type == 'cuda'
        self.warmup_s = 0.0

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def median(self, fn, repeats: int, warmup: int = 1, setup=None) -> float:
        """Median seconds of fn(); `setup()` runs before each call, untimed (e.g. a fresh cache).

        The warm-up calls (compile + autotune on the first) are timed apart and added to `self.warmup_s`."""
        self.sync()
        t = time.perf_counter()
        for _ in range(warmup):
            arg = setup() if setup else None
            fn(arg) if setup else fn()
        self.sync()
        self.warmup_s += time.perf_counter() - t
        times = []
        for _ in range(repeats):
            arg = setup() if setup else None
            self.sync()
            t = time.perf_counter()
            fn(arg) if setup else fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)


# ----------------------------------------------------------------------------------------------------- fla side

class FlaRunner:
    def __init__(self, model, kernel: str):
        # late: fla is imported by now (the model is built), and importing the package earlier would import triton
        # before --cpu-smoke selects the interpreter
        from fla.rwkv7_convert.runtime.device import RECURRENT_MAX_TOKENS
        self.model, self.kernel, self.piece = model, kernel, RECURRENT_MAX_TOKENS  # fla's recurrent kernel: < 64 tokens

    def _call(self, ids, cache, keep):
        logits, cache = self.model(input_ids=ids, past_key_values=cache, use_cache=True, return_dict=False,
                                   logits_to_keep=keep)[:2]
        return logits, cache

    def prefill(self, ids, cache=None):
        """Logits of the last position and the cache after `ids` [B, T]."""
        if self.kernel == 'chunk':  # one call; fla runs it with chunk_rwkv7 when it has 64 tokens or more
            return self._call(ids, cache, 1)
        logits = None
        for s in range(0, ids.shape[1], self.piece):
            logits, cache = self._call(ids[:, s:s + self.piece], cache, 1)
        return logits, cache

    def step(self, tok, cache):
        return self._call(tok, cache, 1)

    def logits(self, ids):
        """Full logits [B, T, V] (recurrent pieces, so any T works) for the accuracy check."""
        import torch

        outs, cache = [], None
        for s in range(0, ids.shape[1], self.piece):
            out, cache = self._call(ids[:, s:s + self.piece], cache, 0)
            outs.append(out)
        return torch.cat(outs, 1)


class RefRunner:
    def __init__(self, ref):
        self.ref = ref

    def prefill(self, ids, state=None):
        logits, state = self.ref.forward(ids, state)
        return logits[:, -1:], state

    def step(self, tok, state):
        return self.ref.forward(tok, state)


class RwkvPackageRunner:
    """BlinkDL's `rwkv` package (RWKV-7 path) on the same checkpoint: one sequence at a time."""

    max_batch = 1

    def __init__(self, model):
        self.model = model

    def prefill(self, ids, state=None):
        logits, state = self.model.forward(ids[0].tolist(), state)
        return logits.view(1, 1, -1), state

    def step(self, tok, state):
        logits, state = self.model.forward(int(tok), state)
        return logits.view(1, 1, -1), state

    def logits(self, ids):
        return self.model.forward(ids[0].tolist(), None, full_output=True)[0].unsqueeze(0)


def load_rwkv_package(src: Path, dtype: str):
    """(model, label): BlinkDL's package with its CUDA kernel (RWKV_CUDA_ON=1), or its torch ops if that fails
    to build. It turns TF32 and cudnn.benchmark on at import: the previous settings come back afterwards."""
    import torch
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    strategy = f'cuda {dict(bfloat16="bf16", float16="fp16", float32="fp32")[dtype]}'
    os.environ['RWKV_V7_ON'] = '1'
    os.environ.setdefault('RWKV_JIT_ON', '1')
    label = 'rwkv package, CUDA kernel'
    try:
        try:
            os.environ['RWKV_CUDA_ON'] = '1'
            rwkv_model = importlib.import_module('rwkv.model')
        except Exception as e:  # noqa: BLE001 - the package compiles its kernel at import; report and fall back
            say(f'  rwkv package: CUDA kernel did not build ({type(e).__name__}: {str(e)[:200]}); torch ops instead')
            sys.modules.pop('rwkv.model', None)
            os.environ['RWKV_CUDA_ON'] = '0'
            rwkv_model = importlib.import_module('rwkv.model')
            label = 'rwkv package, torch ops'
        model = rwkv_model.RWKV(model=str(src.with_suffix('')), strategy=strategy)
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved
    return model, f'{label} {strategy}'


def bench_runner(runner, timer: Timer, args, vocab: int, device, prefill_len: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(1)
    timer.warmup_s = 0.0
    out = {}
    # host-side ids (the CPU generator needs device='cpu' inside a `with torch.device('cuda')` block)
    prompt = torch.randint(1, vocab, (args.prefill_batch, prefill_len), generator=gen, device='cpu')
    prompt_dev = prompt.to(device)
    t = timer.median(lambda: runner.prefill(prompt_dev), args.repeats, args.warmup)
    out['prefill_tokens'] = prefill_len
    out['prefill_batch'] = args.prefill_batch
    out['prefill_tok_s'] = args.prefill_batch * prefill_len / t
    out['prefill_s'] = t

    one = prompt[:1]

    def first_token():
        logits, _ = runner.prefill(one.to(device))
        return int(logits[0, -1].argmax())

    out['ttft_ms'] = 1e3 * timer.median(first_token, args.repeats, args.warmup)

    for b in args.decode_batch:
        if b > getattr(runner, 'max_batch', b):
            out[f'decode_b{b}_tok_s'] = out[f'decode_b{b}_ms_per_step'] = None  # the runner has no batches
            continue
        ctx = torch.randint(1, vocab, (b, args.decode_context), generator=gen, device='cpu').to(device)

        def fresh(ctx=ctx):
            logits, cache = runner.prefill(ctx)
            return logits[:, -1].argmax(-1, keepdim=True), cache

        def decode(start):
            tok, cache = start
            for _ in range(args.decode_tokens):
                logits, cache = runner.step(tok, cache)
                tok = logits[:, -1].argmax(-1, keepdim=True)
            return tok

        t = timer.median(decode, args.repeats, args.warmup, setup=fresh)
        out[f'decode_b{b}_tok_s'] = b * args.decode_tokens / t
        out[f'decode_b{b}_ms_per_step'] = 1e3 * t / args.decode_tokens
    out['warmup_s'] = timer.warmup_s  # compile + autotune, outside every timed region
    return out


# ------------------------------------------------------------------------------------------------------ driver

def bench_size(size: str, args, device) -> list[dict]:
    import torch
    from fla.models import RWKV7ForCausalLM

    from fla.rwkv7_convert.proof.reference import RWKV7Reference

    args.workdir.mkdir(parents=True, exist_ok=True)
    files = prepare_size(size, args.workdir)
    if files is None:
        raise SystemExit(f'{size}: not enough disk in {args.workdir}')
    src, model_dir = files
    timer = Timer(device)
    rows = []
    model_dtype = getattr(torch, args.dtype)
    model = RWKV7ForCausalLM.from_pretrained(str(model_dir), dtype=model_dtype).to(device).eval()
    vocab = model.config.vocab_size
    weights = torch.load(src, map_location=device, weights_only=True)
    ref_dtype = getattr(torch, args.ref_dtype)
    with torch.device(device):  # the reference makes its zero state on the default device
        ref = RWKV7Reference(weights, dtype=ref_dtype)
    del weights

    # accuracy guard: fla bf16 vs reference on a short sequence
    with torch.no_grad(), torch.device(device):
        ids = torch.randint(1, vocab, (1, args.check_tokens), generator=torch.Generator().manual_seed(2),
                            device='cpu').to(device)
        want = ref.forward(ids)[0].float()
        got = FlaRunner(model, 'fused_recurrent').logits(ids).float()
        err = ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()
    say(f'  {size}: fla {args.dtype} vs reference {args.ref_dtype}: RMS error ratio {err:.2e} over {args.check_tokens} tokens')

    kernels = ['fused_recurrent'] if args.cpu_smoke else ['chunk', 'fused_recurrent']
    with torch.no_grad(), torch.device(device):
        for kernel in kernels:
            model.config.attn_mode = kernel
            r = bench_runner(FlaRunner(model, kernel), timer, args, vocab, device, args.prefill_len)
            rows.append({'size': size, 'impl': f'fla {args.dtype}, {kernel}', 'err_vs_ref': err, **r})
            say(f'  {size} fla {kernel}: {_summary(r, args)}')
        del model
        if device.type == 'cuda':
            torch.cuda.empty_cache()
        if device.type == 'cuda' and not args.no_rwkv_package:
            try:
                package, label = load_rwkv_package(src, args.dtype)
            except Exception as e:  # noqa: BLE001 - the comparison is optional; say why it is missing
                say(f'  {size} rwkv package: not run ({type(e).__name__}: {str(e)[:200]})')
            else:
                runner = RwkvPackageRunner(package)
                with torch.no_grad():
                    got = runner.logits(ids).float()
                perr = ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()
                r = bench_runner(runner, timer, args, vocab, device, args.prefill_len)
                rows.append({'size': size, 'impl': label, 'err_vs_ref': perr, **r})
                say(f'  {size} {label}: {_summary(r, args)}')
                del package, runner
                torch.cuda.empty_cache()
        r = bench_runner(RefRunner(ref), timer, args, vocab, device, min(args.prefill_len, args.ref_prefill_len))
        rows.append({'size': size, 'impl': f'reference {args.ref_dtype}', 'err_vs_ref': 0.0, **r})
        say(f'  {size} reference: {_summary(r, args)}')
    return rows


def _summary(r: dict, args) -> str:
    dec = ', '.join(f'decode B={b} {r[f"decode_b{b}_tok_s"]:.0f} tok/s' for b in args.decode_batch
                    if r[f'decode_b{b}_tok_s'] is not None)
    return (f'prefill {r["prefill_tok_s"]:.0f} tok/s (T={r["prefill_tokens"]}), TTFT {r["ttft_ms"]:.1f} ms, {dec}; '
            f'warm-up {r["warmup_s"]:.1f} s')


def markdown(rows: list[dict], args, device_name: str) -> str:
    header = ['model', 'implementation', 'prefill tok/s (T)', 'TTFT ms (T)',
              *(f'decode B={b} tok/s (ms/step)' for b in args.decode_batch), 'warm-up s', 'RMS err vs ref']
    cells = [[r['size'], r['impl'], f'{r["prefill_tok_s"]:.0f} ({r["prefill_tokens"]})',
              f'{r["ttft_ms"]:.1f} ({r["prefill_tokens"]})',
              *(f'{r[f"decode_b{b}_tok_s"]:.0f} ({r[f"decode_b{b}_ms_per_step"]:.2f})'
                if r[f'decode_b{b}_tok_s'] is not None else '—' for b in args.decode_batch),
              f'{r["warmup_s"]:.1f}', f'{r["err_vs_ref"]:.1e}'] for r in rows]
    return '\n'.join([f'Device: {device_name}; prefill batch {args.prefill_batch}; decode {args.decode_tokens} steps '
                      f'after a {args.decode_context}-token context; median of {args.repeats}.', '',
                      *md_table(header, cells)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', default='0.1B,1.5B', help='comma-separated from 0.1B, 0.4B, 1.5B, 2.9B (default 0.1B,1.5B)')
    p.add_argument('--prefill-len', type=int, default=2048, help='prompt tokens for prefill and TTFT (default 2048)')
    p.add_argument('--prefill-batch', type=int, default=1)
    p.add_argument('--ref-prefill-len', type=int, default=256,
                   help='prompt tokens for the reference, which steps token by token (default 256)')
    p.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float16', 'float32'], help='fla model dtype')
    p.add_argument('--ref-dtype', default='float32', choices=['float32', 'float64', 'bfloat16'])
    p.add_argument('--decode-batch', default='1,8', help='batch sizes for decode (default 1,8)')
    p.add_argument('--decode-tokens', type=int, default=128, help='timed decode steps (default 128)')
    p.add_argument('--decode-context', type=int, default=64, help='tokens before decoding starts (default 64)')
    p.add_argument('--check-tokens', type=int, default=32, help='tokens for the logits check (default 32)')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--workdir', type=Path, default=Path(tempfile.gettempdir()) / 'rwkv7-bench-forward')
    p.add_argument('--keep', action='store_true', help='keep the generated checkpoints and converted models')
    p.add_argument('--json', type=Path, default=None)
    p.add_argument('--no-rwkv-package', action='store_true', help="skip BlinkDL's rwkv package comparison")
    p.add_argument('--cpu-smoke', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.decode_batch = [int(b) for b in args.decode_batch.split(',') if b.strip()]

    if args.cpu_smoke:
        use_triton_interpreter()
        args.sizes, args.prefill_len, args.ref_prefill_len = 'tiny', 70, 8
        args.decode_tokens, args.decode_context, args.check_tokens = 3, 4, 8
        args.repeats, args.warmup = 1, 0
        args.dtype = 'float32'  # Triton's interpreter emulates bf16 poorly
    elif not cuda_available():
        print('skipped: no CUDA device')
        return 0

    import torch
    from fla.models import RWKV7ForCausalLM  # noqa: F401  (fail early, before generating anything)

    device = torch.device('cpu' if args.cpu_smoke else 'cuda')
    device_name = 'CPU (Triton interpreter smoke test)' if args.cpu_smoke else torch.cuda.get_device_name()

    rows = []
    try:
        for size in [s.strip() for s in args.sizes.split(',') if s.strip()]:
            rows += bench_size(size, args, device)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print(markdown(rows, args, device_name))
    if args.json:
        args.json.write_text(json.dumps({'device': device_name, 'args': {k: str(v) for k, v in vars(args).items()},
                                         'rows': rows}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
