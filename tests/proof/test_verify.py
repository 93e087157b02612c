"""verify: a clean conversion passes; deliberately corrupted conversions fail, pinpointed to layer and sub-step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rwkv7_factory import Goose, make_state_dict, save
from safetensors.torch import load_file, save_file

from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.proof.verify import verify

REPO = Path(__file__).resolve().parents[2]
# w_rank == hidden, so a transposed decay LoRA factor still has the right shape and loads
SHAPE = Goose(vocab=128, hidden=128, layers=3, head_size=64, w_rank=128)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('verify')
    source = save(make_state_dict(SHAPE, seed=2), tmp / 'm.pth')
    convert_to_fla(source, tmp / 'out', tokenizer='none')
    return source, tmp / 'out'


def corrupt(converted, tmp_path, edit_weights=None, edit_config=None) -> Path:
    source, out = converted
    bad = tmp_path / 'bad'
    bad.mkdir()
    for f in out.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    if edit_weights:
        weights = load_file(bad / 'model.safetensors')
        edit_weights(weights)
        save_file({k: v.contiguous() for k, v in weights.items()}, bad / 'model.safetensors', metadata={'format': 'pt'})
    if edit_config:
        config = json.loads((bad / 'config.json').read_text())
        edit_config(config)
        (bad / 'config.json').write_text(json.dumps(config))
    return bad


def swap(weights, a, b):
    weights[a], weights[b] = weights[b].clone(), weights[a].clone()


def test_clean_conversion_passes_at_every_step(converted):
    source, out = converted
    report = verify(source, out, tokens=20, per_layer=True)
    assert report.passed and report.first_divergence is None
    assert [k for k, _ in report.steps] == ['ln0', 'blocks.0.att', 'blocks.0.ffn', 'blocks.1.att', 'blocks.1.ffn',
                                            'blocks.2.att', 'blocks.2.ffn', 'ln_out']
    assert report.logits.max_abs <= 1e-4 and report.logits.top1 == 1.0


CORRUPTIONS = [
    pytest.param(lambda w: swap(w, 'model.layers.1.attn.k_k', 'model.layers.1.attn.k_a'), None, 'blocks.1.att',
                 id='swapped-k_k-k_a'),
    pytest.param(lambda w: w.__setitem__('model.layers.2.attn.w_lora.lora.0.weight',
                                         w['model.layers.2.attn.w_lora.lora.0.weight'].t()), None, 'blocks.2.att',
                 id='transposed-lora'),
    pytest.param(lambda w: [swap(w, f'model.layers.1.ffn.{n}', f'model.layers.2.ffn.{n}')
                            for n in ('x_k', 'key.weight', 'value.weight')], None, 'blocks.1.ffn', id='wrong-layer-index'),
    pytest.param(None, lambda c: c.__setitem__('norm_eps', 1e-2), 'ln0', id='wrong-eps'),
]


@pytest.mark.parametrize('edit_weights, edit_config, where', CORRUPTIONS)
def test_corruption_is_pinpointed(converted, tmp_path, edit_weights, edit_config, where):
    source, _ = converted
    bad = corrupt(converted, tmp_path, edit_weights, edit_config)
    report = verify(source, bad, tokens=20, per_layer=True)
    assert not report.passed
    assert report.first_divergence == where, report.render()
    before = dict(report.steps)
    for key, _ in report.steps[: [k for k, _ in report.steps].index(where)]:
        assert before[key].rel_rms <= 1e-5  # everything before the corrupted step still agrees
    assert 'the models part first at' in report.render()


def test_cli_exit_status_and_table(converted, tmp_path):
    source, out = converted
    script = REPO / 'utils' / 'verify_rwkv7.py'
    ok = subprocess.run([sys.executable, str(script), '--rwkv7', str(source), '--model', str(out), '--tokens', '16'],
                        capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    assert 'relative RMS error' in ok.stdout and 'PASS' in ok.stdout
    bad = corrupt(converted, tmp_path, lambda w: swap(w, 'model.layers.0.attn.k_k', 'model.layers.0.attn.k_a'))
    fail = subprocess.run([sys.executable, str(script), '--rwkv7', str(source), '--model', str(bad), '--tokens', '16',
                           '--per-layer'], capture_output=True, text=True, timeout=600)
    assert fail.returncode == 1 and 'FAIL' in fail.stdout and 'layer 0, time mix' in fail.stdout


def test_reference_state_gives_prefill_then_decode(converted):
    """The reference the verifier trusts: one pass equals prefill then token-by-token decode."""
    from fla.rwkv7_convert.proof.reference import RWKV7Reference
    from fla.rwkv7_convert.proof.verify import load_blinkdl_weights
    source, _ = converted
    ref = RWKV7Reference(load_blinkdl_weights(source))
    tokens = torch.randint(0, SHAPE.vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    whole, _ = ref(tokens)
    logits, state = ref(tokens[:, :5])
    pieces = [logits]
    for t in range(5, 12):
        logits, state = ref(tokens[:, t:t + 1], state)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-12)
