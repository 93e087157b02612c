"""The report's words: a verdict line that says what PASS and FAIL mean, what to do on a FAIL, and the perplexity
on a text computed as exp(mean NLL). Reports built by hand: no model runs here."""

from __future__ import annotations

import math

import pytest
import torch

from fla.rwkv7_convert.proof.report import Comparison, Perplexity, Report, Step, perplexity
from fla.rwkv7_convert.proof.verdict import judge

REF = 5e-7


def report(fla_error: float, steps: list[tuple[str, float]] = (), per_layer: bool = False) -> Report:
    def comparison(err):
        return Comparison(err, err, err, 0.0, 1.0)
    made = [Step(key, comparison(err), comparison(REF), judge(err, REF, 'float32')) for key, err in steps]
    r = Report('m.pth', 'out', 'cpu', 'float32', 'float32', 1, 8, comparison(fla_error), comparison(REF),
               judge(fla_error, REF, 'float32'), steps=made, per_layer=per_layer)
    r.first_divergence = next((s.key for s in made if not s.judgement.passed), None)
    return r


def test_pass_says_how_far_fla_is_from_the_reference():
    r = report(REF * 1.02)
    assert r.passed
    assert r.verdict_line() == ("PASS: fla's error is 1.02 times the reference's own in float32 on cpu (bound 8x + "
                                '2e-06)')
    text = r.render()
    assert text.splitlines()[-1] == r.verdict_line() and 'what to do' not in text and 'part first' not in text


def test_fail_says_what_it_means_where_and_what_to_do():
    r = report(0.08, [('ln0', REF), ('blocks.0.att', 0.09), ('blocks.0.ffn', 0.1)])
    assert not r.passed
    line = r.verdict_line()
    assert line == ("FAIL: fla's error is 1.6e+05 times the reference's own in float32 on cpu (bound 8x + 2e-06): "
                    "this directory does not compute the file's function")
    lines = r.render().splitlines()
    at = lines.index(line)
    assert lines[at + 1] == '  the models part first at layer 0, time mix (attention) (blocks.0.att)'
    assert lines[at + 2].startswith('  what to do: convert the file again') and 'is the file that was converted' in \
        lines[at + 2] and '--per-layer' in lines[at + 2]
    assert 'within' not in r.render()  # the old wording read like a pass


def test_per_layer_fail_with_agreeing_logits_names_the_sub_step():
    r = report(REF, [('ln0', REF), ('blocks.0.att', 1e-3)], per_layer=True)
    assert r.judgement.passed and not r.passed
    assert r.verdict_line().startswith("FAIL: at blocks.0.att fla's error is 2e+03 times the reference's own")
    assert '--per-layer' not in r.render().splitlines()[-1]  # it was given


@pytest.mark.parametrize(('fla', 'ref', 'says'), [
    pytest.param(math.nan, REF, "fla's error is not finite", id='nan'),
    pytest.param(0.3, 0.0, "fla's error is 0.3 (relative RMS) where the reference's own is 0", id='reference-exact'),
])
def test_fail_lines_without_a_ratio(fla, ref, says):
    r = report(REF)
    r.judgement = judge(fla, ref, 'float32')
    assert r.verdict_line().startswith(f'FAIL: {says}') and '\n' not in r.verdict_line()


def test_perplexity_is_exp_mean_nll_of_each_next_token():
    logits = torch.randn(2, 6, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    nll = [-torch.log_softmax(logits[b, t], -1)[ids[b, t + 1]].item() for b in range(2) for t in range(5)]
    hits = [int(logits[b, t].argmax()) == int(ids[b, t + 1]) for b in range(2) for t in range(5)]
    ppl, top1 = perplexity(logits, ids)
    assert ppl == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-12)
    assert top1 == sum(hits) / len(hits)


def test_the_perplexity_line():
    p = Perplexity('t.txt', 16, 123.456, 123.457, 0.25, 0.25)
    assert p.render() == ('perplexity on t.txt (16 tokens, token 0 first): reference 123.456, fla 123.457 (top-1 '
                          'next-token agreement: reference 25.0%, fla 25.0%)')
