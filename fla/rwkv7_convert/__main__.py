"""`python -m fla.rwkv7_convert COMMAND [ARGS]`: convert, export, verify or inspect (cli.dispatch.main dispatches).

`-m` imports the `fla` package first, so this pays for fla's own __init__ (its models, triton, transformers: seconds);
the console scripts (rwkv7-convert, ...) and `python -m rwkv7_convert_entry` start without it."""

import sys

from fla.rwkv7_convert.cli.dispatch import main

if __name__ == '__main__':
    sys.exit(main())
