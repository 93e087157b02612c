"""verify (rwkv7-verify, utils/verify_rwkv7.py): the converted directory's logits against the float64 reference on
the source; with an RWKV-PEFT adapter, against the source with the adapter merged (or, --peft, loaded by peft)."""

from __future__ import annotations

import argparse

from fla.rwkv7_convert.cli.flags import Once, Parser, adapter_flags, adapter_spec, head_size_flag, loudness_flags
from fla.rwkv7_convert.cli.process import run_cli
from fla.rwkv7_convert.convert.adapters import check_adapter_record, reference_source
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.proof.peft_form import verify_peft
from fla.rwkv7_convert.proof.verify import BACKENDS, CHOICES, DEFAULT_TOKENS, DTYPES, verify
from fla.rwkv7_convert.runtime.device import RECURRENT_MAX_TOKENS


def build_verify_parser(prog: str = 'verify_rwkv7.py') -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=(
        'Prove a converted fla model computes the original BlinkDL checkpoint\'s function, one layer in memory at a '
        'time: fla\'s own modules in float64 against the float64 pure-PyTorch reference of the function config.json '
        'configures (PASS within 1e-9 relative RMS), with how far that function is from BlinkDL\'s named by config '
        'key. Exit status 0 only on PASS.'),
        parents=[head_size_flag(), loudness_flags()])
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
    adapter_flags(p, verify=True)
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
    report = verify_peft(args.rwkv7, args.model, args.peft, spec.path, pissa_init=spec.pissa_init, alpha=spec.alpha,
                         tokens=args.tokens, seed=args.seed, head_size=args.head_size, quiet=args.quiet)
    print(report.verdict_line() if args.quiet else report.render())
    return 0 if report.passed else 1


def main_verify(argv: list[str] | None = None, prog: str = 'verify_rwkv7.py') -> int:
    args = build_verify_parser(prog).parse_args(argv)
    return run_cli(_verify_body, args, interrupted='verify stopped; nothing was written')

