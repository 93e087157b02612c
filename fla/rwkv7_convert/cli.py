"""The one command-line module: convert (BlinkDL -> fla), export (fla -> BlinkDL), verify and inspect.

Every failure is one line on stderr and exit status 1 (argparse's errors too; an interrupt 128 + the signal). The
flags the commands share are declared once, as argparse parents. The utils/*.py scripts call main_to_fla,
main_from_fla and main_verify; the console scripts (rwkv7_convert_entry.py) call run_command; `python -m
fla.rwkv7_convert` (and `-m fla.rwkv7_convert.cli`) call main, which dispatches on the command's name. Nothing in the
library imports this module (tests/test_architecture.py checks it)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fla.rwkv7_convert import __version__
from fla.rwkv7_convert.cli_adapters import adapter_flags, adapter_spec, export_adapter_body, export_adapter_flags
from fla.rwkv7_convert.convert.adapters import adapter_notes, check_adapter_record, reference_source
from fla.rwkv7_convert.convert.inspection import export_plan_lines, inspect, plan_lines, refused
from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.convert.tuned_state import convert_state, export_state
from fla.rwkv7_convert.errors import ConversionError, KeyMismatchError
from fla.rwkv7_convert.formats.display import human_bytes, human_count, progress_bar
from fla.rwkv7_convert.formats.dtypes import TORCH_NAME, output_precision
from fla.rwkv7_convert.formats.safetensors_writer import parse_size
from fla.rwkv7_convert.formats.states import STATE_FILE
from fla.rwkv7_convert.formats.writers import WRITERS
from fla.rwkv7_convert.hub.model_card import write_model_card
from fla.rwkv7_convert.mapping.config import DEFAULT_FUSE_NORM
from fla.rwkv7_convert.mapping.schema import Side
from fla.rwkv7_convert.mapping.table import LAYOUTS, PREFIXES, WRAPPER_KEYS
from fla.rwkv7_convert.proof.verify import BACKENDS, CHOICES, DEFAULT_TOKENS, DTYPES, verify
from fla.rwkv7_convert.runtime.device import RECURRENT_MAX_TOKENS

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for `yes | head`: the reader left, not an error


class Once(argparse.Action):
    """store, but refuse a second occurrence: `--precision bf16 ... --precision fp32` is a mistake, not an override."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault('_given_once', set())
        if self.dest in seen:
            parser.error(f'{option_string} given more than once; give it once')
        seen.add(self.dest)
        setattr(namespace, self.dest, values)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (`error: ...`, as every other failure of these commands) and exit status 1
    (argparse's is 2; docs/export.md promises 1 for every failure); no abbreviations (`--out` is not `--output`), and
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
        self.exit(1, f'error: {message} (see {self.prog} --help)\n')


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (`... --dry-run | head -2`): stop without a message, as `cat` or `yes` do.

    stdout is pointed at /dev/null so that Python's final flush at exit does not raise the same error again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that the same cleanup runs (scratch output removed)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _ours(handler) -> bool:
    """Handlers the command may replace: the defaults, and the quiet start-up handler (rwkv7_convert_entry.py)."""
    return handler in (signal.SIG_DFL, signal.default_int_handler) or getattr(handler, 'outside_the_command', False)


@contextmanager
def _termination_as_interrupt() -> Iterator[None]:
    """While converting, SIGINT is Ctrl-C (KeyboardInterrupt) and SIGTERM/SIGHUP unwind like it instead of killing
    the process mid-write (signals a caller chose to ignore, such as SIGHUP under nohup, stay ignored)."""
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, 'SIGHUP', None)) if s is not None]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in sigs}
    for s, handler in previous.items():
        if _ours(handler):
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else _raise_terminated)
    try:
        yield
    finally:
        for s, handler in previous.items():
            if _ours(handler):
                signal.signal(s, handler)


# What an interrupted command says after `interrupted (SIGINT): `; the converters' output is atomic
CONVERT_INTERRUPTED = ('no partial output was left (the output is as it was, or the complete new one if the interrupt '
                       'came after it was in place)')


def run_cli(body: Callable[[argparse.Namespace], int], args: argparse.Namespace,
            interrupted: str = CONVERT_INTERRUPTED) -> int:
    """Run `body`, turning every expected failure into one line on stderr (`interrupted`: what Ctrl-C left)."""
    try:
        with _termination_as_interrupt():
            return body(args)  # a body may set args.interrupted: what an interrupt from then on leaves
    except ConversionError as e:
        print(f'error: {e.one_line()}', file=sys.stderr)
        if getattr(args, 'verbose', False):
            if isinstance(e, KeyMismatchError):
                print(e.full_report(), file=sys.stderr)
            traceback.print_exc()
        return e.exit_code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        print(f'interrupted ({signal.Signals(signum).name}): {getattr(args, "interrupted", interrupted)}', file=sys.stderr)
        return 128 + signum
    except OSError as e:
        where = f'{e.filename}: ' if e.filename else ''
        print(f'error: {where}{e.strerror or e} (nothing was written; any existing output is untouched)', file=sys.stderr)
        if getattr(args, 'verbose', False):
            traceback.print_exc()
        return 1


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
def _loudness_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    loud = p.add_mutually_exclusive_group()
    loud.add_argument('--quiet', '-q', action='store_true', help='print errors only')
    loud.add_argument('--verbose', '-v', action='store_true', help='print each tensor; tracebacks on errors')
    return p


def _writing_flags(what: str) -> argparse.ArgumentParser:
    """Both converters: how the output is written. `what` names the output in the help ('OUTDIR', 'OUT')."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument('--precision', default=None, action=Once, metavar='P',
                   help='float32/fp32, bfloat16/bf16, float16/fp16, or keep (the default): each tensor\'s stored dtype')
    p.add_argument('--force', action='store_true', help=f'replace an existing {what} (only once the new one is complete)')
    p.add_argument('--allow-nonfinite', action='store_true', help='convert tensors holding NaN/Inf instead of refusing')
    p.add_argument('--dry-run', action='store_true', help='print the detected model and the mapping; write nothing')
    return p


def _head_size_flag() -> argparse.ArgumentParser:
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


def build_to_fla_parser(prog: str = 'convert_to_rwkv7.py') -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description='Convert a BlinkDL RWKV-7 checkpoint (.pth or .safetensors, RWKV-LM names) into a Hugging Face '
                    'directory that fla.models.RWKV7ForCausalLM loads.', epilog=layouts_help(Side.BLINKDL),
        parents=[_writing_flags('OUTDIR'), _head_size_flag(), _loudness_flags()])
    p.add_argument('--rwkv7', required=True, action=Once, metavar='IN',
                   help='BlinkDL RWKV-7 state dict (.pth or .safetensors)')
    p.add_argument('--output', required=True, action=Once, metavar='OUTDIR',
                   help='output directory (created atomically)')
    p.add_argument('--max-shard-size', default='5GB', action=Once,
                   help='largest safetensors shard with its unit, e.g. 5GB, 500MB or 2GiB (default 5GB)')
    p.add_argument('--tokenizer', default='auto', action=Once, metavar='world|none|auto|PATH',
                   help='auto (default): RWKV World tokenizer when the vocabulary has 65536 rows; or a tokenizer '
                        'file/folder to copy')
    tuned = p.add_argument_group('tuned initial states (state tuning)', (
        'A state-tuned merge (blocks.N.att.time_state or init_state.N.wkv beside the weights) converts with its state: '
        'OUTDIR/rwkv7_state.safetensors, fla\'s [H, K, V] per layer; config.json and the weights are the base '
        'model\'s. A bare state file converts against its base model\'s converted directory: --rwkv7 STATE.pth '
        '--base BASE_OUTDIR --output STATE_OUTDIR (the state file alone).'))
    tuned.add_argument('--base', action=Once, metavar='BASE_OUTDIR',
                       help='IN is a bare state file tuned for the model converted in BASE_OUTDIR (read, never written)')
    tuned.add_argument('--drop-state', action='store_true',
                       help='convert a state-tuned merge\'s weights alone, without its tuned state')
    p.add_argument('--fuse-norm', choices=('true', 'false'), default=None, action=Once,
                   help=f'config.json\'s fuse_norm (default {str(DEFAULT_FUSE_NORM).lower()}): true, fla\'s fused '
                        'Triton norms; false, torch\'s, BlinkDL\'s function exactly (docs/verification.md)')
    adapter_flags(p, Once)
    p.add_argument('--verify', action='store_true',
                   help='after converting, compare logits of the fla model with the reference on the source file')
    p.add_argument('--verify-tokens', type=int, default=DEFAULT_TOKENS, action=Once, metavar='N',
                   help=f'tokens for --verify (default {DEFAULT_TOKENS}, as verify_rwkv7.py)')
    return p


def precision_arg(args: argparse.Namespace) -> str | None:
    return output_precision(args.precision, '--precision')


def progress_callbacks(args: argparse.Namespace):
    """(on_start, on_tensor, close): a progress bar, or with --verbose one line per tensor written."""
    on_start, on_tensor, close = _progress(args.quiet)
    if args.verbose:
        def on_tensor(name, nbytes):
            print(f'  wrote {name} ({human_bytes(nbytes)})', file=sys.stderr)
    return on_start, on_tensor, close


def _state_body(args: argparse.Namespace) -> int:
    """convert --base: a bare state file against its base model's directory."""
    given = (('--verify', args.verify), ('--drop-state', args.drop_state), ('--precision', args.precision),
             ('--tokenizer', args.tokenizer != 'auto'), ('--fuse-norm', args.fuse_norm is not None),
             ('--adapter', args.adapter is not None))
    flag = next((f for f, on in given if on), None)
    if flag:
        raise ConversionError(f'{flag} does not apply with --base (a bare state converts alone, in its stored dtype); '
                              'verify it with verify_rwkv7.py --rwkv7 BASE.pth --state STATE.pth --model BASE_OUTDIR '
                              '--model-state STATE_OUTDIR')
    _, verbose_tensor, _ = progress_callbacks(args)
    result = convert_state(args.rwkv7, args.output, args.base, force=args.force, allow_nonfinite=args.allow_nonfinite,
                           dry_run=args.dry_run, on_tensor=verbose_tensor if args.verbose else None)
    return _state_summary(args, result, 'of tuned state', f'converted {args.rwkv7} -> {args.output}/{STATE_FILE}: '
                                                          f'{len(result.entries)} layers')


def _state_summary(args: argparse.Namespace, result, what: str, done: str) -> int:
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


def _convert_body(args: argparse.Namespace) -> int:
    if args.base is not None:
        return _state_body(args)
    precision = precision_arg(args)
    try:
        max_shard_size = parse_size(args.max_shard_size)
    except ValueError as e:
        raise ConversionError(f'--max-shard-size: {e}') from None
    on_start, verbose_tensor, close = progress_callbacks(args)
    try:
        result = convert_to_fla(
            args.rwkv7, args.output, precision=precision, force=args.force, max_shard_size=max_shard_size,
            head_size=args.head_size, tokenizer=args.tokenizer, allow_nonfinite=args.allow_nonfinite,
            drop_state=args.drop_state, adapter=adapter_spec(args), dry_run=args.dry_run, on_start=on_start,
            on_tensor=verbose_tensor, fuse_norm=DEFAULT_FUSE_NORM if args.fuse_norm is None else args.fuse_norm == 'true')
    finally:
        close()
    plan = result.plan
    if args.dry_run:
        print('\n'.join(plan_lines(plan, result, precision)))
        print(f'dry run: would write {human_bytes(result.bytes_written)} of weights to {args.output}; nothing written')
        return 0
    if not args.quiet:
        d, state = plan.dims, f', its tuned state in {STATE_FILE}' if plan.states else ''
        print(f'converted {args.rwkv7} -> {args.output}: RWKV-7, {d.L} layers, hidden {d.C}, head size {d.N}, '
              f'vocab {d.V}, {human_count(plan.num_parameters)} params, {TORCH_NAME[result.dtype]}, '
              f'{result.shards} shard(s){state}, {human_bytes(result.bytes_written)} in {result.seconds:.1f} s')
        for line in adapter_notes(result.adapter, args.adapter_format) if result.adapter else ():
            print(f'  {line}')
    if args.verify:
        args.interrupted = (f'verify stopped; the conversion was complete and is in place: {args.output} holds the '
                            'new model (its model card without a verdict)')
        with reference_source(args.rwkv7, adapter_spec(args)) as source:
            return verify_after_convert(source, args.output, tokens=args.verify_tokens, head_size=args.head_size,
                                        quiet=args.quiet)
    return 0


def main_to_fla(argv: list[str] | None = None, prog: str = 'convert_to_rwkv7.py') -> int:
    args = build_to_fla_parser(prog).parse_args(argv)
    return run_cli(_convert_body, args)


def verify_after_convert(source, model_dir, *, tokens: int = DEFAULT_TOKENS, head_size: int | None = None,
                         quiet: bool = False) -> int:
    """The converter's --verify: the same `verify` as verify_rwkv7.py (plus greedy tokens for small models); the
    finished directory's model card then records the verdict. The directory's source record was written from
    this file a moment ago: not hashed again. `quiet`: the verdict line only."""
    report = verify(source, model_dir, tokens=tokens, head_size=head_size, quiet=quiet, greedy=8, check_source=False)
    print(report.verdict_line() if quiet else report.render())
    write_model_card(Path(model_dir), (bool(report.passed), report.render(source_name=Path(source).name, model_name='.')))
    return 0 if report.passed else 1


def build_verify_parser(prog: str = 'verify_rwkv7.py') -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=(
        'Prove a converted fla model computes the original BlinkDL checkpoint\'s function, one layer in memory at a '
        'time: fla\'s own modules in float64 against the float64 pure-PyTorch reference of the function config.json '
        'configures (PASS within 1e-9 relative RMS), with how far that function is from BlinkDL\'s named by config '
        'key. Exit status 0 only on PASS.'),
        parents=[_head_size_flag(), _loudness_flags()])
    p.add_argument('--rwkv7', required=True, action=Once, metavar='IN', help='the BlinkDL checkpoint that was converted')
    p.add_argument('--model', required=True, action=Once, metavar='OUTDIR', help='the converted Hugging Face directory')
    p.add_argument('--device', default='auto', action=Once, choices=CHOICES,
                   help='the verdict is always the exact proof (fla\'s modules in float64 against the float64 '
                        'reference); --device also reports the accuracy of fla\'s kernels in --dtype, beside it: '
                        + '; '.join(f'{k}: {b.name}' for k, b in BACKENDS.items())
                        + '; auto (default): the exact proof alone on the CPU, on a GPU both there')
    p.add_argument('--dtype', default='float32', action=Once, choices=DTYPES,
                   help='the precision of the kernels\' accuracy report (default float32; bfloat16/float16 need '
                        '--device cuda)')
    what = p.add_mutually_exclusive_group()
    what.add_argument('--tokens', type=int, default=DEFAULT_TOKENS, action=Once, metavar='N',
                      help=f'N random tokens (default {DEFAULT_TOKENS})')
    what.add_argument('--text', metavar='FILE', action=Once, help='tokens of this text file (needs a tokenizer in OUTDIR)')
    p.add_argument('--max-tokens', type=int, default=256, action=Once, help='with --text, use at most this many tokens')
    p.add_argument('--batch', type=int, default=1, action=Once, metavar='B', help='sequences per batch (default 1)')
    p.add_argument('--per-layer', action='store_true', help='judge and show every sub-step (a failing run always '
                   'names the first divergence)')
    p.add_argument('--piece', type=int, default=None, action=Once,
                   help=f'feed tokens in pieces of this size through the cache (default: {RECURRENT_MAX_TOKENS} on the CPU, '
                        'which fla needs (< 64); the whole sequence on CUDA, i.e. the chunk kernel for >= 64 tokens)')
    p.add_argument('--seed', type=int, default=0, action=Once)
    tuned = p.add_argument_group('tuned initial states (state tuning)', (
        'A state-tuned merge given as IN (blocks.N.att.time_state beside the weights) is verified from its state: the '
        'reference from it, fla from OUTDIR/rwkv7_state.safetensors, after checking that this is the state transposed '
        'per head ([key, value], fla\'s orientation). A bare RWKV-PEFT state file: --rwkv7 BASE.pth --state STATE.pth '
        '--model BASE_OUTDIR --model-state STATE_OUTDIR.'))
    tuned.add_argument('--state', action=Once, metavar='STATE.pth',
                       help='a bare state file (blocks.N.att.time_state only) that IN, its base model, runs from')
    tuned.add_argument('--model-state', action=Once, metavar='STATE_DIR',
                       help='the converted state (a directory holding rwkv7_state.safetensors, or the file); default: '
                            "OUTDIR's own")
    tuned.add_argument('--drop-state', action='store_true',
                       help='verify the weights alone, both sides from zero states, whatever the files carry (for a '
                            'merge converted with --drop-state)')
    adapter_flags(p, Once, verify=True)
    p.add_argument('--any-source', dest='check_source', action='store_false',
                   help="verify even when OUTDIR's rwkv7_convert.json records a source file other than IN (by size "
                        'or sha256); by default that is refused before any compute')
    return p


def _verify_body(args) -> int:
    spec = adapter_spec(args)
    if args.peft is not None and spec is None:
        raise ConversionError('--peft needs --adapter ADAPTER.pth: the RWKV-PEFT adapter it was converted from')
    if spec is not None and args.check_source:
        check_adapter_record(args.model, spec)
    if args.peft is not None:
        return _verify_peft(args, spec)
    try:
        with reference_source(args.rwkv7, spec) as source:
            return _verify_source(args, source)
    except OSError as e:  # verify writes nothing: not the converter's "nothing was written" line
        raise ConversionError(f'{e.filename + ": " if e.filename else ""}{e.strerror or e}') from e


def _verify_source(args, source: str) -> int:
    # with an adapter the directory records the base as its source, the reference runs on the merge: not compared
    check_source = args.check_source and args.adapter is None
    try:
        report = verify(source, args.model, device=args.device, dtype=args.dtype,
                        tokens=args.max_tokens if args.text else args.tokens, text=args.text, batch=args.batch,
                        per_layer=args.per_layer, piece=args.piece, seed=args.seed, head_size=args.head_size,
                        quiet=args.quiet, check_source=check_source, state=args.state,
                        model_state=args.model_state, drop_state=args.drop_state)
    except OSError as e:  # verify writes nothing: not the converter's "nothing was written" line
        raise ConversionError(f'{e.filename + ": " if e.filename else ""}{e.strerror or e}') from e
    print(report.verdict_line() if args.quiet else report.render())
    return 0 if report.passed else 1


def _verify_peft(args, spec) -> int:
    from fla.rwkv7_convert.proof.peft_form import verify_peft
    report = verify_peft(args.rwkv7, args.model, args.peft, spec.path, pissa_init=spec.pissa_init, alpha=spec.alpha,
                         tokens=args.tokens, seed=args.seed, head_size=args.head_size, quiet=args.quiet)
    print(report.verdict_line() if args.quiet else report.render())
    return 0 if report.passed else 1


def main_verify(argv: list[str] | None = None, prog: str = 'verify_rwkv7.py') -> int:
    args = build_verify_parser(prog).parse_args(argv)
    return run_cli(_verify_body, args, interrupted='verify stopped; nothing was written')


# fla / Hugging Face directory -> BlinkDL RWKV-LM checkpoint (the reverse direction)

def build_from_fla_parser(prog: str = 'convert_from_fla_rwkv7.py') -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description='Convert an fla / Hugging Face RWKV-7 model directory (config.json + model.safetensors or shards) '
                    "into a BlinkDL RWKV-LM checkpoint that RWKV-LM and BlinkDL's rwkv package load.",
        epilog=layouts_help(Side.FLA),
        parents=[_writing_flags('OUT'), _loudness_flags()])
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
    export_adapter_flags(p, Once)
    return p


def _export_state_body(args: argparse.Namespace) -> int:
    if args.precision:
        raise ConversionError('--precision does not apply with --state-only: the state keeps its dtype (bit for bit)')
    result = export_state(args.model, args.output, fmt=args.fmt, force=args.force,
                          allow_nonfinite=args.allow_nonfinite, dry_run=args.dry_run)
    return _state_summary(args, result, f'({result.fmt})',
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
        print('\n'.join(export_plan_lines(plan)))
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


# inspect: what a file or directory holds and what converting it would do (the dry run, described)

def build_inspect_parser(prog: str = 'rwkv7-inspect') -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=(
        'Describe a BlinkDL RWKV-7 checkpoint or an fla / Hugging Face directory without writing anything: the layout '
        'detected and the names that show it, the sizes, parameter count, stored dtypes, and what converting it would '
        'drop, add or refuse (the dry run of its direction; names, shapes and dtypes only).'),
        epilog=f'{layouts_help(Side.BLINKDL)} {layouts_help(Side.FLA)}', parents=[_head_size_flag()])
    p.add_argument('path', metavar='FILE_OR_DIR', help='a .pth / .safetensors file, or a model directory')
    p.add_argument('--json', action='store_true', help='one JSON object on stdout (also on failure: "ok": false)')
    return p


def _inspect_body(args: argparse.Namespace) -> int:
    try:
        try:
            found = inspect(args.path, head_size=args.head_size)
        except OSError as e:  # inspect writes nothing: not the converter's "nothing was written" line
            raise ConversionError(f'{e.strerror or e}', e.filename or args.path) from e
    except ConversionError as e:
        if args.json:
            print(json.dumps(refused(e, args.path), indent=2))
        raise
    print(json.dumps(found.to_dict(), indent=2) if args.json else '\n'.join(found.lines()))
    return 0


def main_inspect(argv: list[str] | None = None, prog: str = 'rwkv7-inspect') -> int:
    args = build_inspect_parser(prog).parse_args(argv)
    return run_cli(_inspect_body, args)


# the commands by name: `python -m fla.rwkv7_convert COMMAND` and the console scripts (setup.py entry_points)

COMMANDS: dict[str, tuple[Callable[..., int], str]] = {
    'convert': (main_to_fla, 'BlinkDL checkpoint -> fla / Hugging Face directory (= utils/convert_to_rwkv7.py)'),
    'export': (main_from_fla, 'fla / Hugging Face directory -> BlinkDL checkpoint (= utils/convert_from_fla_rwkv7.py)'),
    'verify': (main_verify, 'logits of the directory against the reference on the source (= utils/verify_rwkv7.py)'),
    'inspect': (main_inspect, 'what a file or directory holds and what converting it would do; writes nothing'),
}
CONSOLE_SCRIPTS = {name: f'rwkv7-{name}' for name in COMMANDS}  # setup.py's entry_points (a test compares)


def run_command(name: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command `name` with `argv` (default sys.argv[1:]), its --help and errors under `prog`."""
    return COMMANDS[name][0](argv, prog=prog or CONSOLE_SCRIPTS[name])


def usage(prog: str) -> str:
    width = max(map(len, COMMANDS))
    return '\n'.join([f'usage: {prog} COMMAND [ARGS]   ({prog} COMMAND --help for its flags)', '', 'commands:',
                      *[f'  {n:<{width}}  {what} [{CONSOLE_SCRIPTS[n]}]' for n, (_, what) in COMMANDS.items()]])


def main(argv: list[str] | None = None, prog: str = 'python -m fla.rwkv7_convert') -> int:
    """Dispatch `COMMAND [ARGS]`; without a command or with an unknown one, the usage on stderr and exit 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:], prog=f'{prog} {argv[0]}')
    if argv[:1] in (['-h'], ['--help']):
        print(usage(prog))
        return 0
    if argv[:1] == ['--version']:
        print(f'rwkv7_convert {__version__}')
        return 0
    print(usage(prog), file=sys.stderr)
    print('error: ' + (f'unknown command {argv[0]!r}' if argv else 'no command given'), file=sys.stderr)
    return 1


if __name__ == '__main__':  # python -m fla.rwkv7_convert.cli
    sys.exit(main(prog='python -m fla.rwkv7_convert.cli'))
