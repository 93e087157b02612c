"""The dispatcher: the commands by name (COMMANDS), their console scripts (CONSOLE_SCRIPTS, setup.py's entry_points),
run_command (what rwkv7_convert_entry.py's console scripts call) and main, `python -m fla.rwkv7_convert COMMAND`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from fla.rwkv7_convert import __version__
from fla.rwkv7_convert.cli.convert import main_to_fla
from fla.rwkv7_convert.cli.export import main_from_fla
from fla.rwkv7_convert.cli.inspect import main_inspect
from fla.rwkv7_convert.cli.verify import main_verify
from fla.rwkv7_convert.errors import EXIT_USAGE

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
    """Dispatch `COMMAND [ARGS]`; without a command or with an unknown one, the usage on stderr and EXIT_USAGE."""
    argv = sys.argv[1:] if argv is None else list(argv)
    first = argv[0] if argv else None
    if first in COMMANDS:
        return run_command(first, argv[1:], prog=f'{prog} {first}')
    if first in ('-h', '--help', '--version'):
        print(usage(prog) if first != '--version' else f'rwkv7_convert {__version__}')
        return 0
    print(usage(prog), file=sys.stderr)
    print('error: ' + (f'unknown command {first!r}' if argv else 'no command given'), file=sys.stderr)
    return EXIT_USAGE
