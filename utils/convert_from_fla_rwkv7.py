#!/usr/bin/env python
"""Convert an fla / Hugging Face RWKV-7 directory back into a BlinkDL RWKV-LM checkpoint (.pth or .safetensors).

    python utils/convert_from_fla_rwkv7.py --model hf/model --output model.pth
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bootstrap import light_fla  # noqa: E402

light_fla()

from fla.rwkv7_convert.cli.export import main_from_fla  # noqa: E402

if __name__ == '__main__':
    sys.exit(main_from_fla())
