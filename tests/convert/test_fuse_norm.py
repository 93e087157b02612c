"""config.json's `fuse_norm`, the converter's choice (--fuse-norm, fuse_norm=): written, loaded by fla as written, said
in the card, --dry-run and inspect, verified, and exported back either way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fla.rwkv7_convert.convert.inspection import inspect
from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.hub.model_card import CARD_FILE, fuse_norm_line, runs_fused
from fla.rwkv7_convert.mapping.config import DEFAULT_FUSE_NORM

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / 'examples' / 'rwkv7-goose-mini.pth'
VALUES = [pytest.param(True, id='fused'), pytest.param(False, id='unfused')]


@pytest.fixture(scope='module')
def converted(converted_model) -> dict[bool, Path]:
    return {value: converted_model(BUNDLED, fuse_norm=value).dir for value in (True, False)}


def test_the_default_is_the_one_constant_and_fla_s_own():
    from fla.models import RWKV7Config
    result = convert_to_fla(BUNDLED, None, dry_run=True)
    assert result.config['fuse_norm'] is DEFAULT_FUSE_NORM is True  # issue #29: kept fla's default, see mapping.config
    assert RWKV7Config().fuse_norm is DEFAULT_FUSE_NORM


@pytest.mark.parametrize('value', VALUES)
def test_config_json_holds_the_choice_and_fla_builds_those_norms(converted, value):
    from fla.models import RWKV7Config, RWKV7ForCausalLM
    from fla.modules import LayerNorm
    config = json.loads((converted[value] / 'config.json').read_text())
    assert config['fuse_norm'] is value
    loaded = RWKV7Config.from_pretrained(converted[value])
    assert loaded.fuse_norm is value
    with torch.device('meta'):
        model = RWKV7ForCausalLM(loaded)
    fused = (LayerNorm, torch.nn.LayerNorm)
    assert isinstance(model.model.norm, fused[0] if value else fused[1])
    assert type(model.model.layers[0].attn.g_norm).__module__.startswith('fla.' if value else 'torch.')


@pytest.mark.parametrize('value', VALUES)
def test_both_verify_pass_on_the_torch_backend(converted, value):
    from fla.rwkv7_convert.proof.verify import verify
    report = verify(BUNDLED, converted[value], device='cpu-torch', tokens=16)
    assert report.passed, report.render()


@pytest.mark.parametrize('value', VALUES)
def test_both_export_back_to_the_source_tensors(converted, value, tmp_path):
    back = convert_from_fla(converted[value], tmp_path / 'back.pth', layer0_v=False).output
    source = torch.load(BUNDLED, map_location='cpu', weights_only=True)
    again = torch.load(back, map_location='cpu', weights_only=True)
    assert set(again) == {k for k in source if not re.match(r'blocks\.0\.att\.v[012]$', k)}  # no model uses them
    for name, t in again.items():
        assert t.dtype == source[name].dtype and torch.equal(t, source[name].reshape(t.shape)), name


@pytest.mark.parametrize('value', VALUES)
def test_the_card_and_inspect_say_which_and_what_it_costs(converted, value):
    line = fuse_norm_line(value)
    assert line.startswith(f'fuse_norm: {str(value).lower()} (')
    assert ('2e-9 relative logits' in line) is value and ("BlinkDL's function exactly" in line) is not value
    assert f'Norms: {line}.' in (converted[value] / CARD_FILE).read_text()
    found = inspect(converted[value])
    assert found.direction == 'export' and found.to_dict()['fuse_norm'] is value
    assert f'norms (its config.json): {line}' in found.lines()


def test_inspect_of_a_file_says_what_the_conversion_would_write():
    found = inspect(BUNDLED)
    assert found.to_dict()['fuse_norm'] is DEFAULT_FUSE_NORM
    assert any(x.startswith('norms (the config.json it would write; --fuse-norm chooses): fuse_norm: ')
               for x in found.lines())


@pytest.mark.parametrize('config, fused', [
    pytest.param({}, True, id='absent-fla-default'),
    pytest.param({'fuse_norm': False}, False, id='false'),
    pytest.param({'fuse_norm': 'false'}, True, id='string-false-is-truthy-in-fla'),
    pytest.param({'fuse_norm': 0}, False, id='zero'),
])
def test_runs_fused_reads_config_json_as_fla_does(config, fused):
    from fla.models import RWKV7Config
    assert runs_fused(config) is fused
    assert bool(RWKV7Config(**config).fuse_norm) is fused
