"""verify with an adapter (`--adapter`, `--lora-alpha`, `--pissa-init`): the reference runs on the base with the
adapter merged by RWKV-PEFT's formulas, fla on the merged directory; a wrong alpha FAILs by logits, and is refused by
name before any compute when the directory records another (its rwkv7_convert.json)."""

from __future__ import annotations

import pytest
from rwkv7_factory import Goose, make_state_dict, save
from rwkv_peft_factory import make_adapter

from fla.rwkv7_convert.cli.convert import main_to_fla
from fla.rwkv7_convert.cli.verify import main_verify
from fla.rwkv7_convert.errors import ConversionError

SHAPE = Goose(hidden=128, layers=2)
RUN = ['--device', 'cpu-torch', '--tokens', '8', '--quiet']


@pytest.fixture
def lora(tmp_path):
    base = make_state_dict(SHAPE)
    adapter, _ = make_adapter(base, SHAPE, 'lora', rank=8, train_parts=('ln', 'x_'))
    save(base, tmp_path / 'base.pth')
    save(adapter, tmp_path / 'adapter.pth')
    argv = ['--rwkv7', str(tmp_path / 'base.pth'), '--adapter', str(tmp_path / 'adapter.pth'), '--lora-alpha', '16',
            '--output', str(tmp_path / 'merged'), '--tokenizer', 'none', '--quiet']
    assert main_to_fla(argv) == 0
    return tmp_path


def _verify(tmp_path, alpha: str, *extra: str) -> int:
    return main_verify(['--rwkv7', str(tmp_path / 'base.pth'), '--adapter', str(tmp_path / 'adapter.pth'),
                        '--lora-alpha', alpha, '--model', str(tmp_path / 'merged'), *RUN, *extra])


def test_the_merge_passes_against_the_reference_on_base_plus_adapter(lora, capsys):
    assert _verify(lora, '16') == 0
    assert capsys.readouterr().out.startswith('PASS')


def test_a_wrong_alpha_fails_by_logits(lora, capsys):
    assert _verify(lora, '32', '--any-source') == 1
    assert capsys.readouterr().out.startswith('FAIL')


def test_a_wrong_alpha_is_refused_by_the_directory_record(lora, capsys):
    assert _verify(lora, '32') == 1
    assert 'records alpha 16.0, not --lora-alpha 32.0' in capsys.readouterr().err


def test_verify_without_the_adapter_fails(lora, capsys):
    """The base alone is not the merged directory's function."""
    assert main_verify(['--rwkv7', str(lora / 'base.pth'), '--model', str(lora / 'merged'), *RUN, '--any-source']) == 1
    assert capsys.readouterr().out.startswith('FAIL')


def test_the_api_verifies_with_an_adapter(lora):
    from fla.rwkv7_convert.api import AdapterSpec, verify
    spec = AdapterSpec(lora / 'adapter.pth', alpha=16.0)
    assert verify(lora / 'base.pth', lora / 'merged', device='cpu-torch', tokens=8, adapter=spec).passed
    with pytest.raises(ConversionError, match='records alpha 16.0, not --lora-alpha 8.0'):
        verify(lora / 'base.pth', lora / 'merged', device='cpu-torch', tokens=8, adapter=AdapterSpec(spec.path, alpha=8.0))
