#!/usr/bin/env python
"""Convert a BlinkDL RWKV-7 checkpoint (.pth or .safetensors) into a Hugging Face directory for fla.

    python utils/convert_to_rwkv7.py --rwkv7 model.pth --output out/model
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bootstrap import light_fla  # noqa: E402

light_fla()

from fla.rwkv7_convert.cli.convert import main_to_fla  # noqa: E402

if __name__ == '__main__':
    sys.exit(main_to_fla())
