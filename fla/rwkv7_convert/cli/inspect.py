"""inspect (rwkv7-inspect): what a BlinkDL file or an fla directory holds and what converting it would do (the dry
run of its direction, described); writes nothing. --json: one object, also on failure."""

from __future__ import annotations

import argparse
import json

from fla.rwkv7_convert.cli.flags import Parser, head_size_flag, layouts_help
from fla.rwkv7_convert.cli.process import run_cli
from fla.rwkv7_convert.convert.inspection import inspect, refused
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.mapping.schema import Side


def build_inspect_parser(prog: str = 'rwkv7-inspect') -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=(
        'Describe a BlinkDL RWKV-7 checkpoint or an fla / Hugging Face directory without writing anything: the layout '
        'detected and the names that show it, the sizes, parameter count, stored dtypes, and what converting it would '
        'drop, add or refuse (the dry run of its direction; names, shapes and dtypes only).'),
        epilog=f'{layouts_help(Side.BLINKDL)} {layouts_help(Side.FLA)}', parents=[head_size_flag()])
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

