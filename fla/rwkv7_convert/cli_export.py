"""Command line of the reverse direction: fla / Hugging Face RWKV-7 directory -> BlinkDL RWKV-LM checkpoint."""

from __future__ import annotations

import argparse
import sys

from fla.rwkv7_convert.cli import Once, Parser, _human_bytes, _human_count, precision_arg, progress_callbacks, run_cli
from fla.rwkv7_convert.formats.dtypes import TORCH_NAME


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog='convert_from_fla_rwkv7.py',
        description='Convert an fla / Hugging Face RWKV-7 model directory (config.json + model.safetensors or shards) '
                    "into a BlinkDL RWKV-LM checkpoint that RWKV-LM and BlinkDL's rwkv package load.")
    p.add_argument('--model', required=True, action=Once, metavar='HF_DIR',
                   help='Hugging Face directory of an RWKV7ForCausalLM')
    p.add_argument('--output', required=True, action=Once, metavar='OUT.pth', help='output file (written atomically)')
    p.add_argument('--precision', default=None, action=Once, metavar='P',
                   help="float32/fp32, bfloat16/bf16 or float16/fp16; default: keep each tensor's stored dtype")
    p.add_argument('--format', default=None, action=Once, choices=('pth', 'safetensors'), dest='fmt',
                   help='pth (torch.save, default) or safetensors; default: by the suffix of OUT')
    p.add_argument('--force', action='store_true', help='replace an existing OUT (only once the new file is complete)')
    p.add_argument('--no-layer0-v', dest='layer0_v', action='store_false',
                   help='omit the layer-0 att.v0/v1/v2 placeholders (zeros; RWKV-LM training creates them, no model '
                        'uses them)')
    p.add_argument('--allow-nonfinite', action='store_true', help='export tensors holding NaN/Inf instead of refusing')
    p.add_argument('--dry-run', action='store_true', help='print the detected model and the mapping; write nothing')
    loud = p.add_mutually_exclusive_group()
    loud.add_argument('--quiet', '-q', action='store_true', help='print errors only')
    loud.add_argument('--verbose', '-v', action='store_true', help='print each tensor; tracebacks on errors')
    return p


def _print_plan(plan, out=None) -> None:
    out = out or sys.stdout
    print('detected:', file=out)
    for note in plan.notes:
        print(f'  {note}', file=out)
    print('mapping (fla name [shape] dtype -> RWKV-LM name [shape] dtype):', file=out)
    for e in plan.entries:
        if e.source is None:
            print(f'  (placeholder) -> {e.blinkdl} {list(e.shape)} {e.dtype}: {e.note}', file=out)
            continue
        op = e.rule.op.reverse.name
        how = ', '.join(x for x in (e.note, '' if op == 'identity' else op) if x)
        print(f'  {e.fla} {list(e.source.shape)} {e.source.dtype} -> {e.blinkdl} {list(e.shape)} {e.dtype}'
              + (f' ({how})' if how else ''), file=out)


def _export_body(args: argparse.Namespace) -> int:
    from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
    precision = precision_arg(args)
    on_start, report, close = progress_callbacks(args)
    try:
        result = convert_from_fla(args.model, args.output, precision=precision, fmt=args.fmt, force=args.force,
                                  layer0_v=args.layer0_v, allow_nonfinite=args.allow_nonfinite, dry_run=args.dry_run,
                                  on_start=on_start, on_tensor=report)
    finally:
        close()
    plan = result.plan
    if not args.quiet:
        for warning in plan.warnings:
            print(f'warning: {warning}', file=sys.stderr)
    if args.dry_run:
        _print_plan(plan)
        print(f'dry run: would write {_human_bytes(result.bytes_written)} ({result.fmt}) to {args.output}; '
              'nothing written')
        return 0
    if not args.quiet:
        d = plan.dims
        print(f'exported {args.model} -> {args.output}: RWKV-7, {d.L} layers, hidden {d.C}, head size {d.N}, '
              f'vocab {d.V}, {_human_count(plan.num_parameters)} params, {TORCH_NAME[result.dtype]}, {result.fmt}, '
              f'{_human_bytes(result.bytes_written)} in {result.seconds:.1f} s')
    return 0


def main_from_fla(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(_export_body, args)
