"""tests/runtime: running fla's model on a converted directory (loading, the CPU interpreter and its guard, the torch
stand-ins, load_model and generate, the tuned-state cache).

From the root conftest: `converted_model` (the session's cache of small converted models: read-only, copy before
changing); plain helpers from tests/helpers.py. Fixtures that more than one module here needs belong in this file."""
