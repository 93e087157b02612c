"""The flags the commands share, declared once (argparse parents and the fine-tune group), the argparse behaviour
they all have (Once, Parser: one-line errors, no abbreviations), and what they share in printing: progress, the
precision flag, the tuned-state summary."""

from __future__ import annotations

import argparse
import sys

from fla.rwkv7_convert.convert.adapters import AdapterSpec
from fla.rwkv7_convert.errors import EXIT_USAGE, ConversionError
from fla.rwkv7_convert.formats.display import human_bytes, progress_bar
from fla.rwkv7_convert.formats.dtypes import output_precision
from fla.rwkv7_convert.mapping.schema import Side
from fla.rwkv7_convert.mapping.table import LAYOUTS, PREFIXES, WRAPPER_KEYS


class Once(argparse.Action):
    """store, but refuse a second occurrence: `--precision bf16 ... --precision fp32` is a mistake, not an override."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault('_given_once', set())
        if self.dest in seen:
            parser.error(f'{option_string} given more than once; give it once')
        seen.add(self.dest)
        setattr(namespace, self.dest, values)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (`error: ...`, as every other failure of these commands) and argparse's exit
    status, errors.EXIT_USAGE; no abbreviations (`--out` is not `--output`), and
    an unknown flag is named before any missing one (`--outptu` is not "required: --output")."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        argv = sys.argv[1:] if args is None else list(args)
        flags = [a.split('=', 1)[0] for a in argv[:argv.index('--') if '--' in argv else None] if a.startswith('--')]
        unknown = [f for f in flags if f != '--' and f not in self._option_string_actions]
        if unknown:
            self.error(f'unrecognized arguments: {" ".join(unknown)}')
        return super().parse_known_args(argv, namespace)

    def error(self, message):
        self.exit(EXIT_USAGE, f'error: {message} (see {self.prog} --help)\n')


def _progress(quiet: bool):
    """(on_start, on_tensor, close) for a byte progress bar on stderr, shown on terminals only."""
    state = {}

    def on_start(plan, total):
        state['bar'] = progress_bar(total, 'converting', 'B', quiet)

    def on_tensor(name, nbytes):
        if state.get('bar') is not None:
            state['bar'].update(nbytes)

    def close():
        if state.get('bar') is not None:
            state['bar'].close()
    return on_start, on_tensor, close


# The flags the three commands share, declared once and given to each parser as an argparse parent.
def loudness_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    loud = p.add_mutually_exclusive_group()
    loud.add_argument('--quiet', '-q', action='store_true', help='print errors only')
    loud.add_argument('--verbose', '-v', action='store_true', help='print each tensor; tracebacks on errors')
    return p


def writing_flags(what: str) -> argparse.ArgumentParser:
    """Both converters: how the output is written. `what` names the output in the help ('OUTDIR', 'OUT')."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument('--precision', default=None, action=Once, metavar='P',
                   help='float32/fp32, bfloat16/bf16, float16/fp16, or keep (the default): each tensor\'s stored dtype')
    p.add_argument('--force', action='store_true', help=f'replace an existing {what} (only once the new one is complete)')
    p.add_argument('--allow-nonfinite', action='store_true', help='convert tensors holding NaN/Inf instead of refusing')
    p.add_argument('--dry-run', action='store_true', help='print the detected model and the mapping; write nothing')
    return p


def head_size_flag() -> argparse.ArgumentParser:
    """Reading a BlinkDL file (convert, verify): N is needed only when att.r_k is stored flat."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument('--head-size', type=int, default=None, action=Once,
                   help='head size N, needed only when att.r_k is stored flat (otherwise read from r_k)')
    return p


def layouts_help(side: Side) -> str:
    """The layouts a direction accepts, from table.LAYOUTS (and the wrappers, for BlinkDL files): for --help."""
    names = '; '.join(x.name for x in LAYOUTS if x.side is side)
    if side is Side.FLA:
        return f'Accepted besides fla\'s current names: {names}. Rules and evidence: docs/mapping.md.'
    return (f'Accepted layouts besides RWKV-LM\'s names, detected from names and shapes: {names}; wrapper prefixes '
            f'{", ".join(PREFIXES)}; wrapper keys {", ".join(WRAPPER_KEYS)}. Rules and evidence: docs/mapping.md.')


def precision_arg(args: argparse.Namespace) -> str | None:
    return output_precision(args.precision, '--precision')


def progress_callbacks(args: argparse.Namespace):
    """(on_start, on_tensor, close): a progress bar, or with --verbose one line per tensor written."""
    on_start, on_tensor, close = _progress(args.quiet)
    if args.verbose:
        def on_tensor(name, nbytes):
            print(f'  wrote {name} ({human_bytes(nbytes)})', file=sys.stderr)
    return on_start, on_tensor, close


def state_summary(args: argparse.Namespace, result, what: str, done: str) -> int:
    """What convert --base and export --state-only print: the notes (indented under --dry-run), then the dry run's
    line or the summary line `done`, with the bytes and seconds."""
    if args.dry_run or not args.quiet:
        for note in result.notes:
            print(f'  {note}' if args.dry_run else note)
    if args.dry_run:
        print(f'dry run: would write {human_bytes(result.bytes_written)} {what} to {args.output}; nothing written')
    elif not args.quiet:
        print(f'{done}, {human_bytes(result.bytes_written)} in {result.seconds:.1f} s')
    return 0


def adapter_flags(p: argparse.ArgumentParser, verify: bool = False) -> None:
    """The fine-tune (RWKV-PEFT adapter) flags: convert's, or verify's (the adapter, not the output form)."""
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
