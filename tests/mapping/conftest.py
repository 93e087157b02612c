"""tests/mapping: the name table, its ops and refusals, checked against fla's parameters and the docs.

These tests read no converted model; state dicts come from tests/rwkv7_factory.py. Fixtures that more than one
module here needs belong in this file."""
