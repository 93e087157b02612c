"""tests/hub's fixtures: the World tokenizer as we write it (its folder, loaded by transformers) and rwkv's
TRIE_TOKENIZER, the reference its ids are compared with. Session-scoped: both are read-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from fla.rwkv7_convert.hub import tokenizer as world


@pytest.fixture(scope='session')
def outdir(tmp_path_factory) -> Path:
    """A folder holding the World tokenizer's files, as the converter writes them."""
    out = tmp_path_factory.mktemp('world')
    world.write_world_tokenizer(out)
    return out


@pytest.fixture(scope='session')
def hf(outdir):
    from transformers import AutoTokenizer  # transformers takes seconds to import: only where a test needs it

    return AutoTokenizer.from_pretrained(str(outdir))


@pytest.fixture(scope='session')
def reference():
    """rwkv's TRIE_TOKENIZER on the same vocabulary (the tests that use it skip where rwkv is not installed)."""
    rwkv_tokenizer = pytest.importorskip('rwkv.rwkv_tokenizer')
    return rwkv_tokenizer.TRIE_TOKENIZER(str(world.VOCAB_PATH))
