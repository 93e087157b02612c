"""verify --peft: an RWKV-PEFT adapter converted to a Hugging Face PEFT adapter (convert --adapter-format peft), proven
exactly: fla with the adapter loaded by peft, in float64, against the base checkpoint with the RWKV-PEFT adapter merged
in float64 without rounding (proof/peft_form.py). A wrong alpha, another base or a broken adapter directory does not
pass."""

from __future__ import annotations

import pytest
import torch
from helpers import call_main
from rwkv7_factory import Goose, make_state_dict, save
from rwkv_peft_factory import make_adapter

from fla.rwkv7_convert.cli.verify import main_verify
from fla.rwkv7_convert.convert.adapters import AdapterSpec
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.proof.peft_form import verify_peft

pytest.importorskip('peft')

SHAPE = Goose(hidden=128, layers=2)
METHODS = {'lora': 16.0, 'pissa': None, 'bone': None}


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('peft-form')
    base = make_state_dict(SHAPE, seed=5)
    save(base, tmp / 'base.pth')
    save(make_state_dict(SHAPE, seed=6), tmp / 'other.pth')  # another model of the same size
    made = {}
    for method, alpha in METHODS.items():
        adapter, init = make_adapter(base, SHAPE, method, rank=8, train_parts=('ln',), dtype=torch.float32)
        save(adapter, tmp / f'{method}.pth')
        init_path = save(init, tmp / f'{method}-init.pth') if init is not None else None
        convert_to_fla(tmp / 'base.pth', tmp / method, tokenizer='none',
                       adapter=AdapterSpec(tmp / f'{method}.pth', pissa_init=init_path, alpha=alpha, form='peft'))
        made[method] = (tmp / f'{method}.pth', init_path, alpha)
    return tmp, made


@pytest.mark.parametrize('method', [pytest.param(m, id=m) for m in METHODS])
def test_the_peft_form_is_the_exact_merge(converted, method):
    tmp, made = converted
    adapter, init, alpha = made[method]
    report = verify_peft(tmp / 'base.pth', tmp / method, tmp / method / 'peft', adapter, pissa_init=init, alpha=alpha,
                         tokens=16)
    assert report.passed and report.exact.logits.rel_rms < 1e-12, report.render()
    assert 'PEFT adapter loaded by peft' in report.render() and 'merged into the base exactly' in report.render()


def test_a_wrong_alpha_fails(converted):
    tmp, made = converted
    adapter, _, _ = made['lora']
    report = verify_peft(tmp / 'base.pth', tmp / 'lora', tmp / 'lora' / 'peft', adapter, alpha=8.0, tokens=16)
    assert not report.passed and report.exact.logits.rel_rms > 1e-4, report.render()


def test_another_base_fails(converted):
    tmp, made = converted
    adapter, _, alpha = made['lora']
    report = verify_peft(tmp / 'other.pth', tmp / 'lora', tmp / 'lora' / 'peft', adapter, alpha=alpha, tokens=16)
    assert not report.passed and report.verdict_line().startswith('FAIL: '), report.render()


def test_the_command_line(converted):
    tmp, made = converted
    adapter, _, alpha = made['lora']
    code, out, err = call_main(main_verify, '--rwkv7', tmp / 'base.pth', '--model', tmp / 'lora', '--peft',
                               tmp / 'lora' / 'peft', '--adapter', adapter, '--lora-alpha', alpha, '--tokens', 8, '-q')
    assert code == 0 and out.startswith("PASS: fla's float64 error is ") and err == '', (out, err)
    code, out, err = call_main(main_verify, '--rwkv7', tmp / 'base.pth', '--model', tmp / 'lora', '--peft',
                               tmp / 'lora' / 'peft')
    assert code == 1 and out == '' and err.strip().splitlines() == [
        'error: --peft needs --adapter ADAPTER.pth: the RWKV-PEFT adapter it was converted from'], err


@pytest.mark.parametrize('config', [
    pytest.param('[1, 2]', id='not-an-object'),
    pytest.param('{"r": 8}', id='no-peft-type'),
    pytest.param('{', id='not-json'),
])
def test_a_broken_adapter_directory_is_one_line_before_peft_reads_it(converted, tmp_path, config):
    tmp, made = converted
    adapter, _, alpha = made['lora']
    broken = tmp_path / 'peft'
    broken.mkdir()
    (broken / 'adapter_config.json').write_text(config)
    (broken / 'adapter_model.safetensors').write_bytes((tmp / 'lora' / 'peft' / 'adapter_model.safetensors').read_bytes())
    with pytest.raises(ConversionError, match='adapter_config.json: not a PEFT adapter config'):
        verify_peft(tmp / 'base.pth', tmp / 'lora', broken, adapter, alpha=alpha, tokens=4)
