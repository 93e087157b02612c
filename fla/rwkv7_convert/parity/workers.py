"""A parity plan (parity.make_plan) run in worker processes under a time budget, then judged cell by cell.

The work folder (the caller writes each case's two model files through `prepare`; this module writes the rest):

  <case>/model.pth, <case>/fla/   the BlinkDL checkpoint and its conversion; <case>/READY once both are there
  <case>/state.pth, <case>/fla-state/   for a case with state layouts: a bare time_state file and its conversion
  plan.json                       the cases the workers run
  <case>/truth-<layout>.pt        float64 truths, handed from the truth worker to the precision workers
  results-<worker>.jsonl          one measured row per cell; <worker>.log its log

On the CPU one worker does everything. On a GPU the truths and each precision run in their own processes,
compiling in parallel on the CPU cores while the truth worker computes the float64 references: TRITON_F32_DEFAULT
is read when a kernel is compiled and is not part of Triton's in-process cache key, so float32-IEEE gets its own
process and Triton cache folder (parity.runtime_env). At the deadline workers are stopped; cells they did not
finish are reported as 'not run'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch

from fla.rwkv7_convert.parity.matrix import (
    KERNELS,
    Case,
    cell_ids,
    judge_row,
    layout_inputs,
    load_reference,
    load_tuned,
    measure,
    reference_logits,
    run_kernel,
    timed,
)
from fla.rwkv7_convert.parity.process import runtime_env, select_runtime
from fla.rwkv7_convert.proof.verdict import matmul_precision, rel_rms, storage_dtype
from fla.rwkv7_convert.runtime.loading import load_fla_model

# the folder that holds fla/rwkv7_convert: on the workers' PYTHONPATH, so they run this very code
PACKAGE_ROOT = Path(__file__).resolve().parents[3]
# fla's import says on a CPU-only machine that Triton falls back to the CPU: expected here, not news
_WORKER = ("import sys, warnings; warnings.filterwarnings('ignore', message='Triton is not supported on current platform'); "
           'from fla.rwkv7_convert.parity.workers import worker_main; sys.exit(worker_main())')


def case_paths(workdir: Path, case: Case) -> tuple[Path, Path]:
    """(the BlinkDL checkpoint, the converted directory) of `case` in the work folder."""
    d = Path(workdir) / case.name
    return d / 'model.pth', d / 'fla'


def case_state_paths(workdir: Path, case: Case) -> tuple[Path, Path]:
    """(the bare time_state file, the directory of its conversion) of `case`: its state layouts start from them."""
    d = Path(workdir) / case.name
    return d / 'state.pth', d / 'fla-state'


def wait_for(path: Path, deadline: float, what: str) -> None:
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(f'gave up waiting for {what}')
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------- worker process

def worker_main(argv: list[str] | None = None) -> int:
    """One process: the float64 truths ('truth') and/or the cells of one or more precisions."""
    p = argparse.ArgumentParser(prog='parity worker')
    p.add_argument('--name', required=True)
    p.add_argument('--roles', required=True, help="comma-separated: 'truth' and/or precisions")
    p.add_argument('--workdir', type=Path, required=True)
    p.add_argument('--deadline', type=float, required=True)
    p.add_argument('--t0', type=float, required=True)
    p.add_argument('--cpu', action='store_true')
    args = p.parse_args(argv)
    device = select_runtime(args.cpu)  # before fla's models are imported
    roles, workdir, deadline = args.roles.split(','), args.workdir, args.deadline
    cases = [Case.from_dict(c) for c in json.loads((workdir / 'plan.json').read_text())['cases']]
    results = open(workdir / f'results-{args.name}.jsonl', 'a', buffering=1)

    def log(msg: str) -> None:
        print(f'[{args.name} {time.time() - args.t0:6.1f}s] {msg}', file=sys.stderr, flush=True)

    for case in cases:
        source, model_dir = case_paths(workdir, case)
        wait_for(source.parent / 'READY', deadline, f'{case.name} to be converted')
        truths = {}
        tuned = load_tuned(source, model_dir, *case_state_paths(workdir, case)) if any(
            lay.state for lay in case.layouts) else (None, None)
        # per layout: (the reference's state, fla's) or none
        states = {lay.name: tuned if lay.state else (None, None) for lay in case.layouts}

        if 'truth' in roles:
            with matmul_precision('float32'):
                ref = load_reference(source, model_dir, torch.float64, device)
                for layout in case.layouts:
                    inputs = layout_inputs(case, layout, ref.vocab)
                    truth, seconds = timed(device, reference_logits, ref, layout, inputs, device, states[layout.name][0])
                    if len(roles) > 1:
                        truths[layout.name] = truth
                    else:
                        tmp = source.parent / f'truth-{layout.name}.pt.partial'
                        torch.save(truth.cpu(), tmp)
                        os.replace(tmp, source.parent / f'truth-{layout.name}.pt')
                    log(f'{case.name} {layout.name}: float64 truth in {seconds:.1f}s')
            del ref
        for precision in [r for r in roles if r != 'truth']:
            dtype = storage_dtype(precision)
            with matmul_precision(precision):
                ref = load_reference(source, model_dir, dtype, device)
                t = time.time()
                model = load_fla_model(model_dir, dtype=dtype, device=device)
                log(f'{case.name}: fla model loaded in {time.time() - t:.1f}s')
                for layout in case.layouts:
                    inputs = layout_inputs(case, layout, ref.vocab)
                    mine, ref_s = timed(device, reference_logits, ref, layout, inputs, device, states[layout.name][0])
                    # fla runs before the truth is awaited: the truth worker computes it meanwhile
                    got = {kernel: run_kernel(model, layout, inputs, kernel, device, states[layout.name][1])
                           for kernel in layout.kernels}
                    if layout.name in truths:
                        truth = truths[layout.name]
                    else:
                        path = source.parent / f'truth-{layout.name}.pt'
                        wait_for(path, deadline, f'the truth of {case.name} {layout.name}')
                        truth = torch.load(path, weights_only=True).to(device)
                    ref_error = rel_rms(mine, truth)
                    for kernel, (logits, timing) in got.items():
                        row = {'case': case.name, 'layout': layout.name, 'kernel': kernel, 'precision': precision,
                               'ref_error': ref_error, 'ref_s': round(ref_s, 3), **timing}
                        if logits is not None:
                            row.update(measure(logits, truth))
                        results.write(json.dumps(row) + '\n')
                        log(f'{case.name} {layout.name} {kernel} {precision}: '
                            + (f'fla {row["fla_error"]:.2e} ref {ref_error:.2e}' if 'error' not in row else row['error'])
                            + f' (fla {row["fla_s"]:.1f}s, ref {ref_s:.1f}s)')
                    del truth, mine, got
                del model, ref
            if device.type == 'cuda':
                torch.cuda.empty_cache()
        del truths
    return 0


# --------------------------------------------------------------------------------------------- parent process

def run_matrix(cases: list[Case], precisions, workdir: Path, *, cpu: bool, deadline: float, t0: float,
               prepare: Callable[[Case, Path, Path], None], split: bool = False, say=print) -> dict:
    """Start the workers, `prepare(case, source, model_dir)` each case meanwhile (then mark it READY), wait for
    the workers until `deadline`, stop them; returns prepare_s, workers (rc < 0: stopped), matrix_s and the log."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'plan.json').write_text(json.dumps({'cases': [asdict(c) for c in cases]}))
    groups = {'all': ('truth', *precisions)} if cpu and not split else {'truth': ('truth',), **{p: (p,) for p in precisions}}
    procs, logs = {}, {}
    for name, roles in groups.items():
        env = {k: v for k, v in os.environ.items() if k != 'TRITON_F32_DEFAULT'}
        env.update(runtime_env(cpu, name), PYTHONUNBUFFERED='1')
        path = [x for x in env.get('PYTHONPATH', '').split(os.pathsep) if x]
        env['PYTHONPATH'] = os.pathsep.join([str(PACKAGE_ROOT), *path])
        if 'TRITON_F32_DEFAULT' in env:  # compiled with other float32 dots: a Triton cache of its own
            env['TRITON_CACHE_DIR'] = str(workdir / 'triton-ieee')
        logs[name] = open(workdir / f'{name}.log', 'w')
        cmd = [sys.executable, '-c', _WORKER, '--name', name, '--roles', ','.join(roles), '--workdir', str(workdir),
               '--deadline', str(deadline), '--t0', str(t0)] + (['--cpu'] if cpu else [])
        procs[name] = subprocess.Popen(cmd, env=env, stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True)

    prepared, ended = {}, {}
    try:
        for case in cases:  # while the workers import and compile
            t = time.time()
            source, model_dir = case_paths(workdir, case)
            source.parent.mkdir(parents=True, exist_ok=True)
            prepare(case, source, model_dir)
            (source.parent / 'READY').write_text('ok')
            prepared[case.name] = time.time() - t
            say(f'[parent {time.time() - t0:6.1f}s] {case.name}: generated and converted in {prepared[case.name]:.1f}s')
        while any(pr.poll() is None for pr in procs.values()) and time.time() < deadline:
            for n, pr in procs.items():
                if pr.poll() is not None and n not in ended:
                    ended[n] = time.time() - t0
            if procs.get('truth') is not None and procs['truth'].poll() not in (None, 0):
                break  # nothing can be judged without the truths
            time.sleep(0.5)
    finally:
        stop(procs)
        for f in logs.values():
            f.close()
    return {'prepare_s': prepared, 'matrix_s': time.time() - t0,
            'workers': {n: {'rc': pr.returncode, 'ended_s': ended.get(n, time.time() - t0)} for n, pr in procs.items()},
            'log': '\n'.join(f'===== {n}\n' + (workdir / f'{n}.log').read_text(errors='replace') for n in procs)}


def stop(procs: dict) -> None:
    for p in procs.values():
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:  # it ended meanwhile
                pass
    for p in procs.values():
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def judge_cells(cases: list[Case], precisions, workdir: Path) -> list[dict]:
    """Every planned cell, judged from the workers' result files ('not run' where none was written)."""
    found = {}
    for f in sorted(Path(workdir).glob('results-*.jsonl')):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                found[(r['case'], r['layout'], r['kernel'], r['precision'])] = r
    shapes = {c.name: c for c in cases}
    layouts = {(c.name, lay.name): lay for c in cases for lay in c.layouts}
    cells = []
    for key in cell_ids(cases, precisions):
        case, layout = shapes[key[0]], layouts[key[:2]]
        cell = {'case': key[0], 'shape': case.shape, 'layout': key[1], 'kind': layout.kind,
                'lengths': list(layout.lengths), 'batch': layout.batch, 'state': layout.state, 'kernel': key[2],
                'precision': key[3]}
        r = found.get(key)
        cell.update(judge_row(r).as_dict() if r is not None else {'status': 'not run', 'passed': False})
        cells.append(cell)
    return cells


# --------------------------------------------------------------------------------------------------- the report

def versions() -> dict:
    out = {'python': platform.python_version()}
    for name in ('torch', 'triton', 'flash-linear-attention', 'fla-core', 'transformers', 'rwkv'):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out['cuda'] = torch.version.cuda
    return out


def device_name(cpu: bool) -> str:
    if cpu:
        return f'CPU ({platform.processor() or platform.machine()}), Triton interpreter'
    return torch.cuda.get_device_name()


def markdown(report: dict) -> str:
    cells, precisions = report['cells'], report['precisions']
    cols = [(k, p) for p in precisions for k in KERNELS if any(c['kernel'] == k and c['precision'] == p for c in cells)]
    label = {'float32': 'fp32 IEEE', 'tf32': 'fp32 TF32', 'bfloat16': 'bf16', 'float16': 'fp16'}
    short = {'chunk': 'chunk', 'fused_recurrent': 'recurrent'}
    lines = [f'Device: {report["device"]}; {report["versions_line"]}; wall {report["wall_s"]:.0f} s '
             f'(budget {report["budget_s"]:.0f} s); {report["passed_cells"]}/{len(cells)} cells pass.', '',
             'Each entry: fla rel. RMS vs float64 (ratio to the reference\'s own error in that precision); '
             '**FAIL** / not run marked; `-state` layouts start from a tuned initial state.', '',
             '| model | layout | ' + ' | '.join(f'{short[k]} {label[p]}' for k, p in cols) + ' |',
             '|---|---|' + '---|' * len(cols)]
    rows: dict[tuple[str, str], dict] = {}
    for c in cells:
        rows.setdefault((c['shape'], c['layout']), {})[(c['kernel'], c['precision'])] = c
    for (shape, layout), got in rows.items():
        entries = []
        for col in cols:
            c = got.get(col)
            if c is None:
                entries.append('—')
            elif c['status'] in ('PASS', 'FAIL'):
                mark = '' if c['passed'] else ' **FAIL**'
                entries.append(f'{c["fla_error"]:.1e} ({c["ratio"]:.1f}){mark}')
            else:
                entries.append(c['status'])
        lines.append(f'| {shape} | {layout} | ' + ' | '.join(entries) + ' |')
    v = report.get('verify')
    if v:
        lines += ['', f'`{v["command"]}`: exit {v["rc"]}, {v["wall_s"]:.1f} s wall.']
    return '\n'.join(lines)
