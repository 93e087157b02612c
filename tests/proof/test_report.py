"""The report's words: a verdict line that says what PASS and FAIL mean (the exact proof), how far fla's function is
from BlinkDL's, what to do on a FAIL, the kernels' accuracy kept apart from the verdict, and the perplexity on a text
computed as exp(mean NLL). Reports built by hand: no model runs here."""

from __future__ import annotations

import math

import pytest
import torch

from fla.rwkv7_convert.proof.report import Comparison, Exact, Kernels, Perplexity, Report, perplexity
from fla.rwkv7_convert.proof.variant import Difference
from fla.rwkv7_convert.proof.verdict import judge

REF = 5e-7
EXACT = 3e-16
L2 = Difference('kk l2-norm', 'fuse_norm', 'l2_norm', 'F.normalize', '"fuse_norm": false')


def comparison(err):
    return Comparison(err, err, err, 0.0, 1.0)


def report(fla_error: float, steps: list[tuple[str, float]] = (), per_layer: bool = False, *, formula: float | None = None,
           config: list[str] = (), kernels: float | None = None) -> Report:
    exact = Exact(comparison(fla_error), list(steps), 'fla modules in float64, torch wkv', 'cpu',
                  [L2] if formula is not None else [], None if formula is None else comparison(formula), list(config))
    made = None
    if kernels is not None:
        made = Kernels('fla Triton kernels, interpreted', 'cpu', 'float32', 'float32', comparison(kernels),
                       comparison(REF), judge(kernels, REF, 'float32'))
    return Report('m.pth', 'out', 1, 8, exact, made, per_layer=per_layer)


def test_pass_says_how_exact_and_how_far_from_blinkdl():
    r = report(EXACT, formula=2.3e-9)
    assert r.passed
    assert r.verdict_line() == ("PASS: fla's float64 error is 3.00e-16 (bound 1e-09) against the float64 reference on "
                                "cpu; fla's function differs from BlinkDL's by 2.3e-09 (fuse_norm)")
    text = r.render()
    assert 'what to do' not in text and 'part first' not in text
    assert '- kk l2-norm: fla l2_norm, BlinkDL F.normalize (config.json fuse_norm; "fuse_norm": false)' in text


def test_pass_without_a_formula_difference_says_so():
    r = report(EXACT)
    assert r.verdict_line().endswith("; fla's function is BlinkDL's") and "is BlinkDL's (no constant differs)" in r.render()


def test_fail_says_what_it_means_where_and_what_to_do():
    r = report(0.08, [('ln0', EXACT), ('blocks.0.att', 0.09), ('blocks.0.ffn', 0.1)])
    assert not r.passed
    line = r.verdict_line()
    assert line == ("FAIL: fla's float64 error is 8.00e-02 (bound 1e-09) against the float64 reference on cpu, first at "
                    "blocks.0.att: this directory does not compute the file's function")
    lines = r.render().splitlines()
    at = lines.index(line)
    assert lines[at + 1] == '  the models part first at layer 0, time mix (attention) (blocks.0.att)'
    assert lines[at + 2].startswith('  what to do: convert the file again') and 'is the file that was converted' in \
        lines[at + 2] and '--per-layer' in lines[at + 2]


def test_a_sub_step_past_the_bound_fails_even_with_agreeing_logits():
    r = report(EXACT, [('ln0', EXACT), ('blocks.0.att', 1e-6)], per_layer=True)
    assert not r.passed
    assert r.verdict_line().startswith("FAIL: at blocks.0.att fla's float64 error is 1.00e-06 (bound 1e-09)")
    assert '--per-layer' not in r.render()  # it was given


def test_a_config_value_no_conversion_writes_fails_named():
    problem = 'config.json norm_eps = 2e-05, but the file converts to 64e-5 / head_size = 1e-05'
    r = report(EXACT, config=[problem])
    assert not r.passed and r.verdict_line().endswith(f', but {problem}')
    assert f'  config: {problem}' in r.render().splitlines()


@pytest.mark.parametrize('err', [pytest.param(math.nan, id='nan'), pytest.param(math.inf, id='inf')])
def test_fail_lines_without_finite_logits(err):
    r = report(err, [('ln0', err)])
    assert not r.passed
    assert r.verdict_line().startswith("FAIL: fla's float64 logits are not finite") and '\n' not in r.verdict_line()


def test_kernels_past_their_calibration_never_fail_the_conversion():
    r = report(EXACT, kernels=REF * 12.8)
    assert r.passed and not r.kernels.within
    assert r.verdict_line().startswith('PASS: ')
    summary = r.kernels.summary()
    assert summary.startswith("kernels: 12.8 times the reference's own error in float32, past the calibration")
    assert 'not the conversion' in summary and 'convert the file again' not in r.render()
    assert "kernels' accuracy (not the conversion's verdict)" in r.render()


def test_kernels_within_calibration_say_so():
    r = report(EXACT, kernels=REF * 1.02)
    assert r.kernels.within and r.verdict_line().endswith("kernels: within calibration (1.02 times the reference's own "
                                                          'error in float32)')


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
