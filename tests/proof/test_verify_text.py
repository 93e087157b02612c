"""verify --text: token 0 and then the text's ids through the directory's World tokenizer, both models' perplexity
from the logits verify compares, no transformers chatter on stderr, and one line when there is no tokenizer.
A tiny World-vocabulary model (65536 rows, hidden 64, one layer), ~16 tokens; two fla runs in all."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import call_main
from rwkv7_factory import Goose, make_state_dict, save

from fla.rwkv7_convert.cli.verify import main_verify
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.hub.tokenizer import VOCAB_PATH, WORLD_VOCAB_SIZE
from fla.rwkv7_convert.proof.verify import verify

REPO = Path(__file__).resolve().parents[2]
SHAPE = Goose(vocab=WORLD_VOCAB_SIZE, hidden=64, layers=1, head_size=64, w_rank=16, a_rank=16, v_rank=16, g_rank=16)
TEXT = 'The Eiffel tower is in Paris. 巴黎有埃菲尔铁塔。'
TOKENS = 16


@pytest.fixture(scope='module')
def world(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp('text')
    source = save(make_state_dict(SHAPE, seed=6), tmp / 'world.pth')
    convert_to_fla(source, tmp / 'world', tokenizer='world')
    convert_to_fla(source, tmp / 'none', tokenizer='none')
    (tmp / 'prompt.txt').write_text(TEXT, encoding='utf-8')
    return {'source': source, 'world': tmp / 'world', 'none': tmp / 'none', 'text': tmp / 'prompt.txt'}


def test_perplexity_of_both_models_with_token_0_first(world):
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    from fla.rwkv7_convert.proof.reference import RWKV7Reference
    from fla.rwkv7_convert.proof.verify import load_blinkdl_weights
    report = verify(world['source'], world['world'], text=str(world['text']), tokens=TOKENS)
    assert report.passed, report.render()
    # independently: BlinkDL's own tokenizer, token 0 first, the whole-model reference in float64
    ids = [0, *TRIE_TOKENIZER(str(VOCAB_PATH)).encode(TEXT)][:TOKENS]
    assert len(ids) == TOKENS == report.tokens
    logits, _ = RWKV7Reference(load_blinkdl_weights(world['source']))(torch.tensor([ids]))
    logp = torch.log_softmax(logits[0].double(), -1)
    nll = [-logp[t, ids[t + 1]].item() for t in range(TOKENS - 1)]
    top1 = sum(int(logp[t].argmax()) == ids[t + 1] for t in range(TOKENS - 1)) / (TOKENS - 1)
    p = report.perplexity
    assert p.tokens == TOKENS and p.text == str(world['text'])
    assert p.reference == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-9)
    assert p.fla == pytest.approx(p.reference, rel=1e-4)  # fla's logits agree to float32 rounding
    assert p.reference_top1 == top1 and p.fla_top1 == top1
    assert f'  perplexity on {world["text"]} ({TOKENS} tokens, token 0 first): reference ' in report.render()


def test_the_script_on_text_prints_no_transformers_warnings(world):
    """In a fresh process (transformers' logging set up as a user gets it): stderr holds nothing at all."""
    r = subprocess.run([sys.executable, str(REPO / 'utils' / 'verify_rwkv7.py'), '--rwkv7', str(world['source']),
                        '--model', str(world['world']), '--text', str(world['text']), '--max-tokens', str(TOKENS)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stderr == '', r.stderr
    assert 'perplexity on' in r.stdout and "PASS: fla's float64 error is" in r.stdout, r.stdout


def test_text_without_a_tokenizer_is_one_line_before_any_compute(world, no_compute):
    code, out, err = call_main(main_verify, '--rwkv7', world['source'], '--model', world['none'], '--text', world['text'])
    assert code == 1 and out == '', out
    assert err == (f"error: {world['none']}: --text: the directory has no tokenizer (convert with --tokenizer "
                              'world for the RWKV World vocabulary, or --tokenizer PATH; or verify on random ids with '
                              '--tokens N)\n')
