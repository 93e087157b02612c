"""Lets the command-line scripts import `fla.rwkv7_convert` without first running fla's own `__init__.py`.

`import fla.<anything>` normally runs fla/__init__.py, which imports all of fla's models, triton and transformers:
about 5-10 s before the first byte is converted. Conversion needs none of them, so the scripts register `fla` as a
bare namespace over the same folders (the ones `pkgutil.extend_path` would find) while fla is not yet imported.
Nothing of fla is copied or replaced; `fla.rwkv7_convert.proof.loading.ensure_real_fla()` swaps in the real package
for steps that run fla's models.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def light_fla() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if 'fla' in sys.modules:
        return
    stub = types.ModuleType('fla')
    stub.__path__ = [str(Path(p) / 'fla') for p in sys.path if p and (Path(p) / 'fla').is_dir()]
    stub.__light_stub__ = True
    sys.modules['fla'] = stub
