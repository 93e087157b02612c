"""export (rwkv7-export, utils/convert_from_fla_rwkv7.py): an fla / Hugging Face directory -> a BlinkDL RWKV-LM
checkpoint; with --state-only its tuned state alone, with --peft-adapter a PEFT adapter as RWKV-PEFT's (or merged)."""

from __future__ import annotations

import argparse
import sys

from fla.rwkv7_convert.cli.flags import (
    Once,
    Parser,
    layouts_help,
    loudness_flags,
    precision_arg,
    progress_callbacks,
    state_summary,
    writing_flags,
)
from fla.rwkv7_convert.cli.process import run_cli
from fla.rwkv7_convert.convert.peft_export import EXPORT_FORMS, export_adapter
from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.tuned_state import export_state
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.display import human_bytes, human_count
from fla.rwkv7_convert.formats.dtypes import TORCH_NAME
from fla.rwkv7_convert.formats.state_file import STATE_FILE
from fla.rwkv7_convert.formats.writers import WRITERS
from fla.rwkv7_convert.mapping.schema import Side


def build_from_fla_parser(prog: str = 'convert_from_fla_rwkv7.py') -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description='Convert an fla / Hugging Face RWKV-7 model directory (config.json + model.safetensors or shards) '
                    "into a BlinkDL RWKV-LM checkpoint that RWKV-LM and BlinkDL's rwkv package load.",
        epilog=layouts_help(Side.FLA),
        parents=[writing_flags('OUT'), loudness_flags()])
    p.add_argument('--model', required=True, action=Once, metavar='HF_DIR',
                   help='Hugging Face directory of an RWKV7ForCausalLM')
    p.add_argument('--output', required=True, action=Once, metavar='OUT.pth', help='output file (written atomically)')
    p.add_argument('--format', default=None, action=Once, choices=tuple(WRITERS), dest='fmt',
                   help='; '.join(f'{w.name}: {w.what}' for w in WRITERS.values()) + '; default: by the suffix of OUT, '
                        'else pth')
    p.add_argument('--no-layer0-v', dest='layer0_v', action='store_false',
                   help='omit the layer-0 att.v0/v1/v2 placeholders (zeros; RWKV-LM training creates them, no model '
                        'uses them)')
    tuned = p.add_argument_group('tuned initial states (state tuning)', (
        f'A directory carrying a tuned state ({STATE_FILE}) exports as a state-tuned merge: its state after the '
        'weights as blocks.N.att.time_state [H, V, K], as RWKV-PEFT\'s merge/merge_state.py writes it.'))
    mode = tuned.add_mutually_exclusive_group()
    mode.add_argument('--drop-state', action='store_true', help='export the weights alone, without the tuned state')
    mode.add_argument('--state-only', action='store_true',
                      help=f'write the tuned state alone, as RWKV-PEFT\'s state file; HF_DIR may then be a state '
                           f'directory (convert --base\'s output) or a {STATE_FILE} file')
    export_adapter_flags(p)
    return p


def _export_state_body(args: argparse.Namespace) -> int:
    if args.precision:
        raise ConversionError('--precision does not apply with --state-only: the state keeps its dtype (bit for bit)')
    result = export_state(args.model, args.output, fmt=args.fmt, force=args.force,
                          allow_nonfinite=args.allow_nonfinite, dry_run=args.dry_run)
    return state_summary(args, result, f'({result.fmt})',
                         f'exported the tuned state of {args.model} -> {args.output}: {result.fmt}')


def _export_body(args: argparse.Namespace) -> int:
    if args.peft_adapter is not None:
        return export_adapter_body(args)
    if args.state_only:
        return _export_state_body(args)
    precision = precision_arg(args)
    on_start, report, close = progress_callbacks(args)
    try:
        result = convert_from_fla(args.model, args.output, precision=precision, fmt=args.fmt, force=args.force,
                                  layer0_v=args.layer0_v, allow_nonfinite=args.allow_nonfinite, dry_run=args.dry_run,
                                  drop_state=args.drop_state, on_start=on_start, on_tensor=report)
    finally:
        close()
    plan = result.plan
    if not args.quiet:
        for warning in plan.warnings:
            print(f'warning: {warning}', file=sys.stderr)
    if args.dry_run:
        print('\n'.join(plan.lines()))
        print(f'dry run: would write {human_bytes(result.bytes_written)} ({result.fmt}) to {args.output}; '
              'nothing written')
        return 0
    if not args.quiet:
        d = plan.dims
        print(f'exported {args.model} -> {args.output}: RWKV-7, {d.L} layers, hidden {d.C}, head size {d.N}, '
              f'vocab {d.V}, {human_count(plan.num_parameters)} params, {TORCH_NAME[result.dtype]}, {result.fmt}, '
              f'{human_bytes(result.bytes_written)} in {result.seconds:.1f} s')
    return 0


def main_from_fla(argv: list[str] | None = None, prog: str = 'convert_from_fla_rwkv7.py') -> int:
    args = build_from_fla_parser(prog).parse_args(argv)
    return run_cli(_export_body, args)


def export_adapter_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('fine-tunes (PEFT adapters)', (
        'HF_DIR is the converted base model of a Hugging Face PEFT adapter (LoRA, or MiSS = RWKV-PEFT\'s DiSHA Bone; '
        'trained LayerNorms, embeddings and head as modules_to_save): exported as an RWKV-PEFT adapter .pth (its '
        'names and orientations; the alpha its merge needs is printed) or merged into the exported base.'))
    g.add_argument('--peft-adapter', action=Once, metavar='ADAPTER_DIR',
                   help='the PEFT adapter directory (adapter_config.json, adapter_model.safetensors)')
    g.add_argument('--peft-export', default='rwkv-peft', action=Once, choices=EXPORT_FORMS,
                   help='rwkv-peft (default): the adapter as RWKV-PEFT writes it; merged: the merged BlinkDL checkpoint')


def export_adapter_body(args: argparse.Namespace) -> int:
    if args.precision or args.state_only or args.drop_state or not args.layer0_v:
        flag = next(f for f, on in (('--precision', args.precision), ('--state-only', args.state_only),
                                    ('--drop-state', args.drop_state), ('--no-layer0-v', not args.layer0_v)) if on)
        raise ConversionError(f'{flag} does not apply with --peft-adapter (tensors keep their dtypes, bit for bit)')
    result = export_adapter(args.model, args.peft_adapter, args.output, form=args.peft_export, fmt=args.fmt,
                            force=args.force, dry_run=args.dry_run)
    if args.dry_run or not args.quiet:
        for line in result.lines():
            print(f'  {line}' if args.dry_run else line)
    if args.dry_run:
        print(f'dry run: would write {human_bytes(result.bytes_written)} ({result.fmt}) to {args.output}; '
              'nothing written')
    elif not args.quiet:
        what = 'the merged model' if result.form == 'merged' else 'an RWKV-PEFT adapter'
        print(f'exported {args.peft_adapter} on {args.model} -> {args.output}: {what}, {result.fmt}, '
              f'{human_bytes(result.bytes_written)} in {result.seconds:.1f} s')
    return 0
