"""fla / Hugging Face RWKV-7 -> BlinkDL export (convert/to_blinkdl.py): layouts, refusals and output, some of them as
the command reports them.

The .pth writer and the atomic file are tested in tests/formats/, the exported logits in tests/proof/test_export_logits.py,
the export command's dry run and torch-free start in tests/test_cli.py.

Round trips in both directions, over random shapes, are in test_roundtrip.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import call_main
from rwkv7_factory import Goose, make_state_dict
from safetensors.torch import load_file, save_file

from fla.rwkv7_convert.cli.export import main_from_fla
from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla, plan_export
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import (
    ConfigError,
    KeyMismatchError,
    NonFiniteError,
    NotACheckpointError,
    OutputExistsError,
    UnsupportedVariantError,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = Goose(vocab=64, hidden=64, layers=2, head_size=32, w_rank=16, a_rank=8, v_rank=24, g_rank=32, ffn=96)


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.fixture(scope='module')
def hf_dir(converted_model) -> Path:
    """A small fla directory made by the forward converter from an RWKV-LM-format state dict."""
    return converted_model(SMALL, torch.bfloat16, seed=3).dir


def _copy_dir(src: Path, dst: Path, config: dict | None = None, tensors=None) -> Path:
    """A copy of an HF dir with config.json updated by `config` and tensors rewritten by `tensors(dict) -> dict`."""
    dst.mkdir(parents=True)
    cfg = json.loads((src / 'config.json').read_text())
    cfg.update(config or {})
    (dst / 'config.json').write_text(json.dumps(cfg))
    sd = load_file(src / 'model.safetensors')
    if tensors:
        sd = tensors(sd)
    save_file(sd, dst / 'model.safetensors', metadata={'format': 'pt'})
    return dst


# ------------------------------------------------------------------------------------------------------- exporting

def test_export_loads_in_torch_and_rwkv_shapes(hf_dir, tmp_path):
    out = tmp_path / 'model.pth'
    result = convert_from_fla(hf_dir, out)
    assert result.fmt == 'pth' and result.dtype == 'BF16'
    sd = torch.load(out, weights_only=True, mmap=True)
    C, H, N = SMALL.hidden, SMALL.heads, SMALL.head_size
    assert sd['blocks.0.att.r_k'].shape == (H, N)
    for name in ('att.x_r', 'att.w0', 'att.a0', 'att.k_k', 'att.k_a', 'ffn.x_k'):
        assert sd[f'blocks.1.{name}'].shape == (1, 1, C), name
    assert sd['blocks.1.att.w1'].shape == (C, SMALL.w_rank) and sd['blocks.1.att.v2'].shape == (SMALL.v_rank, C)
    # layer-0 placeholders: zeros in RWKV-LM's shapes, and nothing else is new
    assert {k: tuple(sd[k].shape) for k in sd if re.fullmatch(r'blocks\.0\.att\.v\d', k)} == {
        'blocks.0.att.v0': (1, 1, C), 'blocks.0.att.v1': (C, SMALL.v_rank), 'blocks.0.att.v2': (SMALL.v_rank, C)}
    assert all(not sd[f'blocks.0.att.v{j}'].any() for j in range(3))
    assert all(t.dtype == torch.bfloat16 for t in sd.values())
    assert list(sd)[0] == 'emb.weight' and list(sd)[-1] == 'head.weight'


def test_no_layer0_v_precision_and_safetensors(hf_dir, tmp_path):
    out = tmp_path / 'model.safetensors'
    result = convert_from_fla(hf_dir, out, layer0_v=False, precision='fp32')
    assert result.fmt == 'safetensors'
    sd = load_file(out)
    assert not any(re.fullmatch(r'blocks\.0\.att\.v\d', k) for k in sd)
    assert all(t.dtype == torch.float32 for t in sd.values())
    src = load_file(hf_dir / 'model.safetensors')
    assert torch.equal(sd['emb.weight'], src['model.embeddings.weight'].float())
    # --format overrides the suffix
    convert_from_fla(hf_dir, tmp_path / 'other.bin', fmt='pth')
    assert set(torch.load(tmp_path / 'other.bin', weights_only=True)) == set(sd) | {f'blocks.0.att.v{j}' for j in range(3)}


def test_sharded_input(hf_dir, tmp_path):
    """model-0000k-of-0000n.safetensors + index, as save_pretrained writes large models."""
    sharded = tmp_path / 'sharded'
    convert_to_fla(convert_from_fla(hf_dir, tmp_path / 'a.pth').output, sharded, max_shard_size='40KB', tokenizer='none')
    assert len(list(sharded.glob('model-*.safetensors'))) > 2
    convert_from_fla(sharded, tmp_path / 'b.pth')
    assert (tmp_path / 'a.pth').read_bytes() == (tmp_path / 'b.pth').read_bytes()


def test_tied_embeddings_are_copied(hf_dir, tmp_path):
    def drop_head(sd):
        sd.pop('lm_head.weight')
        return sd
    tied = _copy_dir(hf_dir, tmp_path / 'tied', {'tie_word_embeddings': True}, drop_head)
    convert_from_fla(tied, tmp_path / 'out.pth')
    sd = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert torch.equal(sd['head.weight'], sd['emb.weight'])
    assert any('copy of emb.weight' in n for n in plan_export(tied).notes)


def test_fla_v1_x_x_is_split(hf_dir, tmp_path):
    def stack(sd):
        for i in range(SMALL.layers):
            parts = [sd.pop(f'model.layers.{i}.attn.x_{c}').reshape(-1) for c in 'rwkvag']
            sd[f'model.layers.{i}.attn.x_x'] = torch.stack(parts)
        return sd
    old = _copy_dir(hf_dir, tmp_path / 'v1', tensors=stack)
    convert_from_fla(old, tmp_path / 'old.pth')
    convert_from_fla(hf_dir, tmp_path / 'new.pth')
    assert (tmp_path / 'old.pth').read_bytes() == (tmp_path / 'new.pth').read_bytes()


def test_pytorch_model_bin_and_bare_model_names(hf_dir, tmp_path):
    """Older HF saves (pytorch_model.bin) and a bare RWKV7Model's names (no `model.`) read like model.safetensors."""
    convert_from_fla(hf_dir, tmp_path / 'ref.pth')
    sd = load_file(hf_dir / 'model.safetensors')
    legacy = tmp_path / 'legacy'
    legacy.mkdir()
    (legacy / 'config.json').write_text((hf_dir / 'config.json').read_text())
    torch.save(sd, legacy / 'pytorch_model.bin')
    convert_from_fla(legacy, tmp_path / 'legacy.pth')
    bare = _copy_dir(hf_dir, tmp_path / 'bare', tensors=lambda sd: {k.removeprefix('model.'): v for k, v in sd.items()})
    convert_from_fla(bare, tmp_path / 'bare.pth')
    ref = (tmp_path / 'ref.pth').read_bytes()
    assert (tmp_path / 'legacy.pth').read_bytes() == ref and (tmp_path / 'bare.pth').read_bytes() == ref


REFUSALS = [
    pytest.param({'model_type': 'rwkv6'}, UnsupportedVariantError, 'model_type', id='model_type'),
    pytest.param({'attn': {'layers': [1], 'num_heads': 2}}, UnsupportedVariantError, 'attention', id='hybrid-attn'),
    pytest.param({'hidden_act': 'swish'}, UnsupportedVariantError, 'hidden_act', id='hidden_act'),
    pytest.param({'norm_first': False}, UnsupportedVariantError, 'ln0', id='norm_first'),
    pytest.param({'norm_bias': False}, UnsupportedVariantError, 'norm_bias', id='norm_bias'),
    pytest.param({'value_dim': 128}, UnsupportedVariantError, 'value_dim', id='value_dim'),
    pytest.param({'value_dim': [64, 128]}, UnsupportedVariantError, 'value_dim', id='value_dim-list'),
    pytest.param({'head_dim': 24, 'num_heads': 2}, UnsupportedVariantError, 'head_dim 24 x num_heads 2', id='heads'),
    pytest.param({'vocab_size': 65}, KeyMismatchError, 'vocab_size is 65 but the tensors say 64', id='config-vs-tensors'),
    pytest.param({'num_hidden_layers': 3}, KeyMismatchError, 'num_hidden_layers is 3', id='layers'),
]


@pytest.mark.parametrize('change, error, words', REFUSALS)
def test_refusals(hf_dir, tmp_path, change, error, words):
    bad = _copy_dir(hf_dir, tmp_path / 'bad', change)
    with pytest.raises(error, match=words):
        convert_from_fla(bad, tmp_path / 'out.pth')
    code, _, err = call_main(main_from_fla, '--model', str(bad), '--output', str(tmp_path / 'out.pth'))
    assert code == error.exit_code and err.count('\n') == 1 and err.startswith('error: ') and words in err
    assert not any(tmp_path.glob('*.pth')) and not any(tmp_path.glob('.out.pth*'))


def _rename(old, new):
    return lambda sd: {(new if k == old else k): v for k, v in sd.items()}


TENSOR_PROBLEMS = [
    pytest.param(lambda sd: {k: v for k, v in sd.items() if k != 'model.layers.1.attn.k_k'},
                 'missing tensor model.layers.1.attn.k_k', id='missing'),
    pytest.param(_rename('model.layers.1.attn.k_k', 'model.layers.1.attn.k_kk'),
                 'unexpected tensor model.layers.1.attn.k_kk (closest known name: model.layers.1.attn.k_k)', id='unknown'),
    pytest.param(lambda sd: {**sd, 'model.layers.0.attn.v_lora.lora.2.bias': sd['model.layers.1.attn.v_lora.lora.2.bias'] + 0},
                 'unexpected tensor model.layers.0.attn.v_lora.lora.2.bias', id='layer0-v-lora'),
    pytest.param(lambda sd: {**sd, 'model.layers.1.attn.k_a': sd['model.layers.1.attn.k_a'][:32]},
                 'model.layers.1.attn.k_a has shape [32], expected [64]', id='shape'),
    pytest.param(lambda sd: {**sd, 'model.layers.1.attn.k_a': sd['model.layers.1.attn.k_a'].to(torch.int32)},
                 'dtype I32', id='dtype'),
]


@pytest.mark.parametrize('edit, words', TENSOR_PROBLEMS)
def test_tensor_problems(hf_dir, tmp_path, edit, words):
    bad = _copy_dir(hf_dir, tmp_path / 'bad', tensors=edit)
    with pytest.raises(KeyMismatchError) as e:
        convert_from_fla(bad, tmp_path / 'out.pth')
    assert words in str(e.value)


def test_not_a_model_dir(hf_dir, tmp_path):
    with pytest.raises(NotACheckpointError, match='no such directory'):
        convert_from_fla(tmp_path / 'nope', tmp_path / 'out.pth')
    with pytest.raises(NotACheckpointError, match='is a file'):
        convert_from_fla(hf_dir / 'model.safetensors', tmp_path / 'out.pth')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ConfigError, match='no config.json'):
        convert_from_fla(tmp_path / 'empty', tmp_path / 'out.pth')
    (tmp_path / 'empty' / 'config.json').write_text((hf_dir / 'config.json').read_text())
    with pytest.raises(NotACheckpointError, match='no weights'):
        convert_from_fla(tmp_path / 'empty', tmp_path / 'out.pth')
    blink = tmp_path / 'blink'
    blink.mkdir()
    (blink / 'config.json').write_text((hf_dir / 'config.json').read_text())
    save_file(make_state_dict(SMALL), blink / 'model.safetensors')
    with pytest.raises(UnsupportedVariantError, match='already have RWKV-LM names'):
        convert_from_fla(blink, tmp_path / 'out.pth')


def test_eps_warning(hf_dir, tmp_path):
    """BlinkDL's ln_x eps is 64e-5 for every head size, fla's head_dim * norm_eps: a mismatch is one warning line."""
    ln_x = _copy_dir(hf_dir, tmp_path / 'ln_x', {'norm_eps': 1e-5})  # head size 32: fla's ln_x eps is 32e-5
    code, _, err = call_main(main_from_fla, '--model', str(ln_x), '--output', str(tmp_path / 'a.pth'))
    assert code == 0 and err.count('\n') == 1 and err.startswith('warning: ') and 'head_dim*norm_eps = 0.00032' in err
    code, _, err = call_main(main_from_fla, '--model', str(ln_x), '--output', str(tmp_path / 'b.pth'), '--quiet')
    assert code == 0 and err == ''
    ln = _copy_dir(hf_dir, tmp_path / 'ln', {'norm_eps': 2e-5})  # 32 * 2e-5 = 64e-5, but LayerNorms now 2e-5
    assert plan_export(ln).warnings == [
        'fla runs this model with LayerNorm eps 2e-05 (RWKV-LM: 1e-05); BlinkDL\'s runtimes use their fixed eps, so '
        'logits will differ slightly (weights are exported exactly)']


def test_force_and_existing_output(hf_dir, tmp_path):
    out = tmp_path / 'out.pth'
    out.write_bytes(b'precious')
    code, _, err = call_main(main_from_fla, '--model', str(hf_dir), '--output', str(out))
    assert code == OutputExistsError.exit_code and 'exists; pass --force' in err and out.read_bytes() == b'precious'
    code, stdout, _ = call_main(main_from_fla, '--model', str(hf_dir), '--output', str(out), '--force')
    assert code == 0 and stdout.startswith(f'exported {hf_dir} -> {out}: RWKV-7, 2 layers')
    assert 'emb.weight' in torch.load(out, weights_only=True)
    (tmp_path / 'dir.pth').mkdir()
    code, _, err = call_main(main_from_fla, '--model', str(hf_dir), '--output', str(tmp_path / 'dir.pth'), '--force')
    assert code == OutputExistsError.exit_code and 'not a regular file' in err


def test_failure_mid_write_leaves_old_output(hf_dir, tmp_path):
    def poison(sd):
        sd['model.layers.1.ffn.value.weight'][0, 0] = float('nan')
        return sd
    bad = _copy_dir(hf_dir, tmp_path / 'nan', tensors=poison)
    out = tmp_path / 'out.pth'
    out.write_bytes(b'precious')
    with pytest.raises(NonFiniteError, match='model.layers.1.ffn.value.weight holds NaN'):
        convert_from_fla(bad, out, force=True)
    assert out.read_bytes() == b'precious' and sorted(p.name for p in tmp_path.iterdir()) == ['nan', 'out.pth']
    convert_from_fla(bad, out, force=True, allow_nonfinite=True)
    assert torch.load(out, weights_only=True)['blocks.1.ffn.value.weight'][0, 0].isnan()
