#!/usr/bin/env python
"""Compare a converted fla model with the reference run on the original BlinkDL checkpoint; exit 0 only on PASS.

    python utils/verify_rwkv7.py --rwkv7 model.pth --model out/model [--per-layer] [--device cuda --dtype bfloat16]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bootstrap import light_fla  # noqa: E402

light_fla()

from fla.rwkv7_convert.cli.verify import main_verify  # noqa: E402

if __name__ == '__main__':
    sys.exit(main_verify())
