#!/usr/bin/env python
"""GPU parity matrix: converted RWKV-7 checkpoints in fla's Triton kernels against the float64 reference, in one go.

Every model here is written in RWKV-LM's format, converted with this project's converter, and loaded from the
converted directory (fla) and from the original file (reference). The engine is the library's
(fla.rwkv7_convert.parity.matrix: the plan, one cell, the verdict; parity.workers: the worker processes and
the budget); this driver builds the models, runs it, and writes the report.

Cells: kernel (chunk, fused_recurrent) x precision (float32 with IEEE dots, float32 as users run it = TF32 dots,
bf16, fp16) x head size 32/64/128 x T 1, 63, 64, 257, 1024, 4096 (batch 2), plus left padding (rows of
different lengths, attention_mask), prefill then cached one-token decode, packed batches of different lengths
(cu_seqlens), from a tuned initial state (T257-state: chunk in one call, recurrent in pieces of 63; decode-state:
prefill then decode; the reference from a time_state file, fla from its conversion), and the released 0.1B and
1.5B shapes (random weights) at T = 2048; then
`utils/verify_rwkv7.py --device cuda --dtype bfloat16` on the 1.5B shape, timed. To fit one cold GPU session
(<= 6 minutes): Triton's autotuner keeps the first config that fits, untimed (parity, not speed); every precision
compiles in its own worker process while the truth worker computes the float64 references; at the --budget
deadline workers are stopped and unfinished cells reported as such.

    python benchmarks/gpu_parity.py --out OUT          # on a GPU: the full matrix (docs/benchmarks.md)
    python benchmarks/gpu_parity.py --cpu --out OUT    # CI: Triton's interpreter, tiny shapes, recurrent, fp32

Writes OUT/gpu_parity.json and OUT/gpu_parity.md, prints the table; exit 0 only when every planned cell ran
and passed (and the timed verify passed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
for p in (REPO, REPO / 'tests', REPO / 'utils', HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _bootstrap import light_fla  # noqa: E402

light_fla()  # the parent converts and judges: fla's models (and triton) are for the workers only

from fla.rwkv7_convert.parity.matrix import make_plan  # noqa: E402
from fla.rwkv7_convert.parity.process import select_runtime  # noqa: E402
from fla.rwkv7_convert.parity.workers import device_name, judge_cells, markdown, run_matrix, versions  # noqa: E402

CORRUPTIONS = ('swap-kk-ka', 'transpose-state')


def prepare(case, source: Path, model_dir: Path, corrupt: str | None = None) -> None:
    """Write the RWKV-LM checkpoint and convert it with the project's converter; for a case with state layouts also
    a tuned state as RWKV-PEFT saves it (a bare time_state file, [H, V, K] per layer) and its conversion."""
    import torch

    from fla.rwkv7_convert.convert.to_fla import convert_to_fla

    if case.kind == 'released':
        from rwkv7_factory import Goose, write_checkpoint
        write_checkpoint(Goose.rwkv_lm(case.hidden, case.layers, case.vocab, case.head_size), source)
    else:
        from rwkv7_factory import Goose, make_state_dict
        shape = Goose(vocab=case.vocab, hidden=case.hidden, layers=case.layers, head_size=case.head_size)
        torch.save(make_state_dict(shape, dtype=torch.float32, seed=zlib.crc32(case.name.encode())), source)
    convert_to_fla(source, model_dir, force=True, tokenizer='none')
    if any(lay.state for lay in case.layouts):
        from rwkv7_factory import make_tuned_state, time_states, write_state_conversion

        from fla.rwkv7_convert.parity.workers import case_state_paths
        state, state_dir = case_state_paths(source.parent.parent, case)
        torch.save(time_states(make_tuned_state(shape, seed=zlib.crc32(f'{case.name}/state'.encode()))), state)
        # the converter writes bare states later (issue 21): the state file is written as formats/state_file.py says
        write_state_conversion(state, state_dir, transposed=corrupt != 'transpose-state')
    if corrupt == 'swap-kk-ka':
        corrupt_conversion(model_dir, corrupt)


def corrupt_conversion(out: Path, how: str) -> None:
    """A deliberately wrong conversion, for proving that the verdict catches one (tests only)."""
    from safetensors.torch import load_file, save_file
    if how != 'swap-kk-ka':
        raise ValueError(f'unknown corruption {how!r}')
    for shard in sorted(out.glob('*.safetensors')):
        sd = load_file(str(shard))
        kk, ka = 'model.layers.0.attn.k_k', 'model.layers.0.attn.k_a'
        if kk in sd and ka in sd:
            sd[kk], sd[ka] = sd[ka].clone(), sd[kk].clone()
            save_file(sd, str(shard), metadata={'format': 'pt'})
            return
    raise RuntimeError(f'{out}: layer 0 k_k/k_a not found')


def verify_cli(argv: list[str]) -> int:
    """utils/verify_rwkv7.py as a user runs it, but with the parity runs' autotune discipline (first fitting
    config, untimed): with fla's default autotuning a cold 1.5B run spends minutes benchmarking configs."""
    import runpy
    if 'cuda' in argv:  # on the CPU verify chooses Triton's interpreter itself, before triton is imported
        select_runtime(cpu=False)
    sys.argv = ['verify_rwkv7.py', *argv]
    runpy.run_path(str(REPO / 'utils' / 'verify_rwkv7.py'), run_name='__main__')  # exits with its status
    return 0


def run_verify(case, workdir: Path, cpu: bool, timeout: float) -> dict:
    d = workdir / case.name
    cmd = [sys.executable, str(HERE), '--verify-cli', '--rwkv7', str(d / 'model.pth'), '--model', str(d / 'fla')]
    cmd += ['--device', 'cpu', '--dtype', 'float32'] if cpu else ['--device', 'cuda', '--dtype', 'bfloat16']
    shown = f'python utils/verify_rwkv7.py --rwkv7 <{case.name}.pth> --model <{case.name} converted> ' + ' '.join(cmd[-4:])
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1.0))
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 'timeout', (e.stdout or b'').decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
    return {'case': case.name, 'command': shown, 'rc': rc,
            'autotune': 'Triton interpreter' if cpu else 'first fitting config, untimed',
            'wall_s': time.time() - t, 'output': out[-3000:]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, default=Path('out/gpu-parity'), help='folder for gpu_parity.json/.md')
    p.add_argument('--cpu', action='store_true', help='CI mode: Triton interpreter, tiny shapes, recurrent, fp32')
    p.add_argument('--quick', action='store_true', help='GPU: T <= 257 and no released shapes')
    p.add_argument('--budget', type=float, default=None,
                   help='seconds for the matrix before workers are stopped (default 265 on a GPU, 240 with --cpu)')
    p.add_argument('--verify-timeout', type=float, default=70.0, help='seconds for the timed verify_rwkv7.py run')
    p.add_argument('--only', default=None, metavar='LAYOUTS', help='only these layouts, e.g. T64,decode,T2048')
    p.add_argument('--no-verify', action='store_true', help='skip the timed utils/verify_rwkv7.py run')
    p.add_argument('--corrupt', choices=CORRUPTIONS, default=None, help='corrupt every conversion (tests only)')
    p.add_argument('--workdir', type=Path, default=None)
    p.add_argument('--keep', action='store_true', help='keep the work folder (checkpoints, conversions, truths)')
    p.add_argument('--split', action='store_true', help=argparse.SUPPRESS)  # --cpu with the GPU's worker layout
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--verify-cli']:  # internal: the timed verify run
        return verify_cli(argv[1:])
    args = parse_args(argv)
    t0 = time.time()
    if not args.cpu:
        import torch
        if not torch.cuda.is_available():
            print('skipped: no CUDA device (use --cpu for the interpreter path)')
            return 0
    budget = args.budget if args.budget is not None else (240.0 if args.cpu else 265.0)
    cases, precisions = make_plan(args.cpu, args.quick, args.only)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix='rwkv7-gpu-parity-'))
    args.out.mkdir(parents=True, exist_ok=True)
    run = run_matrix(cases, precisions, workdir, cpu=args.cpu, deadline=t0 + budget, t0=t0, split=args.split,
                     prepare=lambda case, src, out: prepare(case, src, out, args.corrupt),
                     say=lambda msg: print(msg, flush=True))
    (args.out / 'gpu_parity_workers.log').write_text(run['log'])

    cells = judge_cells(cases, precisions, workdir)
    verify = None
    # on the CPU verify_rwkv7.py is covered by its own tests (and costs a minute there): GPU runs only
    verify_case = next((c for c in cases if c.name == '1.5B'), None)
    if not args.no_verify and verify_case is not None and verify_case.name in run['prepare_s']:
        verify = run_verify(verify_case, workdir, args.cpu, args.verify_timeout)

    v = versions()
    report = {
        'device': device_name(args.cpu), 'mode': 'cpu' if args.cpu else ('gpu-quick' if args.quick else 'gpu'),
        'versions': v, 'versions_line': ', '.join(f'{k} {val}' for k, val in v.items() if val),
        'budget_s': budget, 'matrix_s': run['matrix_s'], 'wall_s': time.time() - t0, 'prepare_s': run['prepare_s'],
        'workers': run['workers'], 'precisions': list(precisions), 'corrupt': args.corrupt,
        'cases': [asdict(c) for c in cases], 'cells': cells, 'verify': verify,
        'passed_cells': sum(c['passed'] for c in cells),
    }
    report['passed'] = report['passed_cells'] == len(cells) and (verify is None or verify['rc'] == 0)
    (args.out / 'gpu_parity.json').write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (args.out / 'gpu_parity.md').write_text(table + '\n')
    print(table)
    if verify:
        print(verify['output'][-1500:])
    print(f'{"PASS" if report["passed"] else "FAIL"}: {report["passed_cells"]}/{len(cells)} cells; '
          f'matrix {run["matrix_s"]:.0f}s, total {report["wall_s"]:.0f}s; results in {args.out}')
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report['passed'] else 1


if __name__ == '__main__':
    sys.exit(main())
