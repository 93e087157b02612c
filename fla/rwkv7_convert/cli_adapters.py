"""The command-line flags and bodies of fine-tunes (RWKV-PEFT adapters), for cli.py's convert and export commands:
convert's --adapter, --pissa-init, --lora-alpha, --adapter-format (convert/adapters.py), export's --peft-adapter
(convert/peft_export.py). Part of the cli: nothing in the library imports it."""

from __future__ import annotations

import argparse

from fla.rwkv7_convert.convert.adapters import AdapterSpec
from fla.rwkv7_convert.convert.peft_export import EXPORT_FORMS, export_adapter
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.display import human_bytes


def adapter_flags(p: argparse.ArgumentParser, Once: type[argparse.Action], verify: bool = False) -> None:
    """convert's flags (verify's: the adapter, not the output form); `Once` is cli.Once (store, refusing a second
    occurrence)."""
    g = p.add_argument_group('fine-tunes (RWKV-PEFT adapters)', (
        'IN is the base model of an RWKV-PEFT adapter (LoRA, PiSSA, DiSHA Bone or Bat, with its trained full '
        'tensors): ' + ('the reference runs on IN with the adapter merged as RWKV-PEFT\'s merge scripts do (OUTDIR '
                        'is the merged conversion), or with --peft exactly.' if verify else
                        'merged as RWKV-PEFT\'s merge scripts do, or written as a PEFT adapter (OUTDIR/peft) beside '
                        'the converted base. rwkv7-inspect ADAPTER.pth describes an adapter.')))
    g.add_argument('--adapter', action=Once, metavar='ADAPTER.pth', help='the adapter file (rwkv-N.pth of the run)')
    g.add_argument('--pissa-init', action=Once, metavar='INIT.pth', help='PiSSA\'s init_pissa.pth of the same run')
    g.add_argument('--lora-alpha', type=float, action=Once, metavar='A',
                   help='a LoRA\'s alpha (the training\'s lora_config "lora_alpha"; the file does not keep it)')
    if verify:
        g.add_argument('--peft', action=Once, metavar='ADAPTER_DIR',
                       help='OUTDIR is the converted base and ADAPTER_DIR its PEFT adapter (convert --adapter-format '
                            'peft writes OUTDIR/peft): fla runs with the adapter loaded by peft, whole, against IN with '
                            'the adapter merged exactly in float64')
        return
    g.add_argument('--adapter-format', default='merged', action=Once, choices=('merged', 'peft'),
                   help='merged (default): the merged model; peft: the base model and OUTDIR/peft, a Hugging Face '
                        'PEFT adapter (LoRA, MiSS)')


def adapter_spec(args: argparse.Namespace):
    form = getattr(args, 'adapter_format', 'merged')
    if args.adapter is None:
        given = [f for f, v in (('--pissa-init', args.pissa_init), ('--lora-alpha', args.lora_alpha)) if v is not None]
        if given or form != 'merged':
            raise ConversionError(f'{(given or ["--adapter-format"])[0]} needs --adapter ADAPTER.pth')
        return None
    return AdapterSpec(args.adapter, args.pissa_init, args.lora_alpha, form)


def export_adapter_flags(p: argparse.ArgumentParser, Once: type[argparse.Action]) -> None:
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
