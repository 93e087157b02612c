"""convert (rwkv7-convert, utils/convert_to_rwkv7.py): a BlinkDL checkpoint -> an fla / Hugging Face directory; with
--base, a bare tuned-state file against its base model's directory; with --verify, the proof and the model card's
verdict after converting."""

from __future__ import annotations

import argparse
from pathlib import Path

from fla.rwkv7_convert.cli.flags import (
    Once,
    Parser,
    adapter_flags,
    adapter_spec,
    head_size_flag,
    layouts_help,
    loudness_flags,
    precision_arg,
    progress_callbacks,
    state_summary,
    writing_flags,
)
from fla.rwkv7_convert.cli.process import run_cli
from fla.rwkv7_convert.convert.adapters import adapter_notes, reference_source
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.convert.tuned_state import convert_state
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.display import human_bytes, human_count
from fla.rwkv7_convert.formats.dtypes import TORCH_NAME
from fla.rwkv7_convert.formats.safetensors_writer import parse_size
from fla.rwkv7_convert.formats.state_file import STATE_FILE
from fla.rwkv7_convert.hub.model_card import fuse_norm_line, write_model_card
from fla.rwkv7_convert.mapping.config import DEFAULT_FUSE_NORM
from fla.rwkv7_convert.mapping.schema import Side
from fla.rwkv7_convert.proof.verify import DEFAULT_TOKENS, verify


def build_to_fla_parser(prog: str = 'convert_to_rwkv7.py') -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description='Convert a BlinkDL RWKV-7 checkpoint (.pth or .safetensors, RWKV-LM names) into a Hugging Face '
                    'directory that fla.models.RWKV7ForCausalLM loads.', epilog=layouts_help(Side.BLINKDL),
        parents=[writing_flags('OUTDIR'), head_size_flag(), loudness_flags()])
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
    adapter_flags(p)
    p.add_argument('--verify', action='store_true',
                   help='after converting, compare logits of the fla model with the reference on the source file')
    p.add_argument('--verify-tokens', type=int, default=DEFAULT_TOKENS, action=Once, metavar='N',
                   help=f'tokens for --verify (default {DEFAULT_TOKENS}, as verify_rwkv7.py)')
    return p


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
    return state_summary(args, result, 'of tuned state', f'converted {args.rwkv7} -> {args.output}/{STATE_FILE}: '
                                                         f'{len(result.entries)} layers')


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
        print('\n'.join(plan.lines(result.config, precision, fuse_norm_line(result.config['fuse_norm']))))
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

