"""verify from tuned initial states: fla started from the converted state against the reference (and BlinkDL's rwkv
package) started from the original.

Orientation, read from the writers' and loaders' code: RWKV-PEFT's `blocks.N.att.time_state` is [H, value, key]
(JL-er/RWKV-PEFT @5b8aac9c rwkvt/operator/rwkvop.py: `s = s.transpose(1, 2)` before fla's chunk_rwkv7, whose
initial_state is [N, H, K, V]); BlinkDL's rwkv package keeps state[i*3+1] as [H, V, K] float32 and starts from it as
it is (BlinkDL/ChatRWKV @965e40b8 rwkv_pip_package/src/rwkv/model.py, RWKV_x070_TMix_one: `state * w.view(H,1,N) +
state @ ab + v.view(H,N,1) @ k.view(H,1,N)`, `state @ r`); state[i*3+0] and [i*3+2] are the token shifts, zeros at
the start. ChatRWKV's API_DEMO_CHAT.py transposes a loaded state before handing it to the package: a loader carried
over from RWKV-6, whose package state is [K, V]; for v7 it disagrees with the trainer, so we do not follow it (the
package seeded that way computes another function: asserted below).

The directories are the converter's own: the merge converted with its state (rwkv7_state.safetensors beside the
weights), the bare state converted against its base model's directory (convert --base). Hostile variants (a state
written untransposed) are written through formats/state_file.py (rwkv7_factory.write_state_conversion).
Tiny models (C128, N64, L2), a few tokens: fla runs in Triton's interpreter.
"""

from __future__ import annotations

import shutil

import blinkdl_rwkv
import pytest
import torch
from helpers import call_main
from rwkv7_factory import Goose, make_state_dict, make_tuned_state, save, time_states, write_state_conversion

from fla.rwkv7_convert.cli.verify import main_verify
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.convert.tuned_state import convert_state
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.state_file import STATE_FILE
from fla.rwkv7_convert.proof.files import ConvertedDir, SourceFile
from fla.rwkv7_convert.proof.reference import RWKV7Reference
from fla.rwkv7_convert.proof.state_pair import load_states
from fla.rwkv7_convert.proof.verify import verify

SHAPE = Goose(vocab=97, hidden=128, layers=2, head_size=64)  # N = 64: fla's eps is BlinkDL's, for the package
TOKENS = 12


@pytest.fixture(scope='module')
def tuned(tmp_path_factory) -> dict:
    """A state-tuned merge and its conversion; the same model as base weights plus a bare state file, and theirs."""
    root = tmp_path_factory.mktemp('tuned')
    sd = make_state_dict(SHAPE, seed=2)
    state = make_tuned_state(SHAPE)
    merge = save({**sd, **time_states(state)}, root / 'merge.pth')
    assert convert_to_fla(merge, root / 'merged', tokenizer='none').state_file == STATE_FILE
    base, bare = save(sd, root / 'base.pth'), save(time_states(state), root / 'state.pth')
    convert_to_fla(base, root / 'base', tokenizer='none')
    convert_state(bare, root / 'state', root / 'base')
    return {'root': root, 'sd': sd, 'state': state, 'merge': merge, 'merged': root / 'merged', 'base': base,
            'base_dir': root / 'base', 'bare': bare, 'state_dir': root / 'state'}


def test_a_state_tuned_merge_verifies_from_its_state(tuned):
    report = verify(tuned['merge'], tuned['merged'], tokens=TOKENS, per_layer=True)
    text = report.render()
    assert report.passed and report.state is not None and not report.state_problems, text
    assert 'initial state' in text and 'blocks.N.att.time_state' in text and STATE_FILE in text, text
    assert report.verdict_line().startswith('PASS: ') and 'from the tuned initial state' in report.verdict_line()
    assert report.exact.logits.rel_rms < 1e-12, text  # float64 rounding, as from zero states


def test_a_bare_state_verifies_beside_its_base_model(tuned):
    code, out, err = call_main(main_verify, '--rwkv7', tuned['base'], '--state', tuned['bare'], '--model', tuned['base_dir'],
                               '--model-state', tuned['state_dir'], '--tokens', TOKENS, '-q')
    assert code == 0 and out.startswith('PASS: ') and 'from the tuned initial state' in out and err == '', (out, err)


def _package_logits(theirs, ids: list[int], wkv: torch.Tensor) -> torch.Tensor:
    """BlinkDL's package from wkv [L, H, V, K] as its own state list: (att shift, wkv, ffn shift) per layer."""
    C = SHAPE.hidden
    state = []
    for s in wkv:
        state += [torch.zeros(C), s.float().clone(), torch.zeros(C)]
    return theirs.forward(ids, state, full_output=True)[0].double()


def test_blinkdl_package_seeded_with_the_original_state_agrees(tuned):
    """The oracle: BlinkDL's rwkv package (cpu fp32) on the merge file itself (it loads the time_state tensors beside
    the weights and never reads them), seeded with the original time_state as its own state, against the reference
    from the same state (tight) and fla from the converted state."""
    from fla.rwkv7_convert.runtime.device import fla_logits
    from fla.rwkv7_convert.runtime.loading import load_fla_model
    from fla.rwkv7_convert.runtime.state_cache import initial_cache, load_initial_state

    theirs = blinkdl_rwkv.rwkv_package_model(str(tuned['merge'])[:-len('.pth')])
    ids = torch.randint(0, SHAPE.vocab, (1, TOKENS), generator=torch.Generator().manual_seed(3))
    package = _package_logits(theirs, ids[0].tolist(), tuned['state'])
    ref = RWKV7Reference(tuned['sd'])
    want = ref(ids, ref.tuned_state(list(tuned['state']), 1))[0][0]
    assert (package - want).abs().max().item() <= 1e-4

    model = load_fla_model(tuned['merged'], dtype=torch.float32, device='cpu')
    cache = initial_cache(model, load_initial_state(tuned['merged']), batch_size=1)
    got = fla_logits(model, ids, cache=cache)[0].double()
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(got, package) < 1e-5 and (got - package).abs().max().item() <= 1e-4
    # the state matters, and API_DEMO_CHAT.py's transposed loading is another function
    assert rel(ref(ids)[0][0], package) > 1e-2
    assert rel(_package_logits(theirs, ids[0].tolist(), tuned['state'].transpose(-1, -2)), package) > 1e-2


def test_a_state_stored_untransposed_fails_and_is_named(tuned, tmp_path):
    model = tmp_path / 'm'
    shutil.copytree(tuned['merged'], model)
    write_state_conversion(tuned['merge'], model, transposed=False)
    code, out, err = call_main(main_verify, '--rwkv7', tuned['merge'], '--model', model, '--tokens', TOKENS)
    assert code == 1 and err == '', (code, err)
    verdict = next(line for line in out.splitlines() if line.startswith(('PASS', 'FAIL')))
    assert verdict.startswith("FAIL: fla's float64 error is "), out
    named = ('the initial state of layer 0 is stored transposed ([value, key], BlinkDL\'s orientation) where fla '
             'expects [key, value]')
    assert named in verdict and '(and 1 more layer(s))' in verdict, verdict
    assert 'state: the initial state of layer 1 is stored transposed' in out, out


def test_the_direct_check_names_a_state_that_is_another(tuned, tmp_path):
    """No compute: load_states alone. A state from another tuning run differs from the source's; the right one
    passes the check."""
    other = save(time_states(make_tuned_state(SHAPE, seed=9)), tmp_path / 'other.pth')
    write_state_conversion(other, tmp_path / 'other')
    with SourceFile(tuned['merge']) as src, ConvertedDir(tuned['merged']) as out:
        assert load_states(src, out).problems == []
        problems = load_states(src, out, model_state=tmp_path / 'other').problems
        assert load_states(src, out, drop_state=True) is None
    assert len(problems) == 2 and problems[0].startswith(
        f'the initial state of layer 0 ({STATE_FILE} model.layers.0.attn.initial_state) differs from the source\'s '
        '(blocks.0.att.time_state transposed per head): max |Δ| '), problems


def test_pairs_of_states_that_do_not_match_are_refused_in_one_line(tuned, tmp_path):
    """No compute: each refusal comes from load_states, before the streaming pair is built."""
    cases = {  # (source, model, kwargs) -> what the line must say
        'merge, directory without a state': (tuned['merge'], tuned['base_dir'], {}, 'probably converted with --drop-state'),
        'plain source, directory with a state': (tuned['base'], tuned['merged'], {}, 'give the state file it was '
                                                 'converted from with --state FILE'),
        'bare state, no converted state': (tuned['base'], tuned['base_dir'], {'state': tuned['bare']},
                                           'give its conversion with --model-state DIR'),
        'merge and --state': (tuned['merge'], tuned['merged'], {'state': tuned['bare']}, 'verify one state at a time'),
        'weights as --state': (tuned['base'], tuned['base_dir'], {'state': tuned['base'], 'model_state': tuned['state_dir']},
                               '--state: not a state file'),
    }
    wrong_heads = save(time_states(torch.zeros(2, 4, 32, 32)), tmp_path / 'heads.pth')
    cases['state of other heads'] = (tuned['base'], tuned['base_dir'], {'state': wrong_heads, 'model_state':
                                     tuned['state_dir']}, 'but the model has 2 heads of 64: expected [2, 64, 64]')
    three = save(time_states(make_tuned_state(SHAPE.but(layers=3))), tmp_path / 'three.pth')
    write_state_conversion(three, tmp_path / 'three')
    cases['converted state of 3 layers'] = (tuned['base'], tuned['base_dir'], {'state': tuned['bare'], 'model_state':
                                            tmp_path / 'three'}, '3 layer(s) of [2, 64, 64], but the model has 2')
    for what, (source, model, kwargs, says) in cases.items():
        with SourceFile(source) as src, ConvertedDir(model) as out, pytest.raises(ConversionError) as e:
            load_states(src, out, **kwargs)
        line = e.value.one_line()
        assert '\n' not in line and says in line, (what, line)


def test_drop_state_verifies_the_weights_alone(tuned):
    report = verify(tuned['merge'], tuned['base_dir'], tokens=4, drop_state=True, check_source=False)
    assert report.passed and report.state is None, report.render()
    assert any('--drop-state' in n for n in report.notes), report.notes


def test_generate_from_a_converted_state_follows_the_reference_from_the_original(tuned):
    """One call: load_model on the merge's directory, generate(state=) from its state file. The greedy tokens are
    those of the reference started from the original time_state (fed its own choices), and not those of zero states."""
    from fla.rwkv7_convert.api import generate, load_model

    model, _ = load_model(tuned['merged'])
    prompt = torch.randint(0, SHAPE.vocab, (2, 5), generator=torch.Generator().manual_seed(7))
    got = generate(model, prompt, 4, state=tuned['merged'], eos_token_id=[])
    ref = RWKV7Reference(tuned['sd'])
    ids = prompt
    for _ in range(4):  # the reference's greedy continuation from the tuned state
        logits = ref(ids, ref.tuned_state(list(tuned['state']), ids.shape[0]))[0]
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, ids), (got, ids)
    assert not torch.equal(generate(model, prompt, 4, eos_token_id=[]), got)  # the state changes what is generated
