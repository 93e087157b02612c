"""tests/convert: the conversions themselves (both directions, layouts, adapters, tuned states, tokenizers).

Their converted models come from the root conftest's session cache (`converted_model`: read-only, copy before
changing); plain helpers (running a command in this process or a script in a child, one-line refusals) from
tests/helpers.py, and the models' state dicts from tests/rwkv7_factory.py. Fixtures that more than one module here
needs belong in this file."""
