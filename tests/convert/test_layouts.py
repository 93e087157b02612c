"""Every layout of table.LAYOUTS, written as its producer writes it (rwkv7_factory.write_layout), converts to exactly
the canonical model: the same tensors bit for bit as the canonical file, and logits that match the float64
reference. The fla-side layouts (older fla versions) export to the same RWKV-LM file as today's fla layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fla_cpu import fla_logits
from rwkv7_factory import FLA_LAYOUT_WRITERS, LAYOUT_WRITERS, Goose, make_state_dict, save, write_layout
from safetensors.torch import load_file, save_file

from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.formats.readers import open_checkpoint
from fla.rwkv7_convert.proof.reference import RWKV7Reference
from fla.rwkv7_convert.proof.verify import compare
from fla.rwkv7_convert.runtime.loading import load_fla_model

# N = 64, so fla's eps equal BlinkDL's; ranks differ from C, so .st orientation is readable from shapes
SHAPE = Goose(vocab=64, hidden=128, layers=2, head_size=64, w_rank=16, a_rank=32, v_rank=8, g_rank=24)
NOTES = {'rc4a-train': 'rc4a training names', 'rc4a-demo': 'rc4a demo names', 'lightning': '`model.` prefix',
         'st': '.st', 'hf-rwkv7-prefix': '`rwkv7.` prefix', 'hf-model-prefix-sharded': '`model.` prefix',
         'hf-transformers-rwkv': 'transformers-rwkv Rwkv7 port',
         'hf-rwkv-block': 'Hugging Face directory (RWKV7ForCausalLM, RWKV7Model'}


def _tensors(out: Path) -> dict[str, tuple]:
    with open_checkpoint(out / 'model.safetensors') as ckpt:
        return {n: (r.shape, r.dtype, r.load().tobytes()) for n, r in ckpt.tree.items()}


@pytest.mark.parametrize('layout', [pytest.param(x, id=x) for x in LAYOUT_WRITERS])
def test_layout_converts_to_the_canonical_tensors(tmp_path, layout):
    sd = make_state_dict(SHAPE, dtype=torch.bfloat16, seed=1)
    path, meant = write_layout(layout, sd, tmp_path)
    canonical = convert_to_fla(save(meant, tmp_path / 'canonical.pth'), tmp_path / 'a', tokenizer='none')
    result = convert_to_fla(path, tmp_path / 'b', tokenizer='none')
    assert _tensors(tmp_path / 'b') == _tensors(tmp_path / 'a')
    assert result.plan.dims == canonical.plan.dims
    assert any(NOTES[layout] in n for n in result.plan.notes), result.plan.notes


@pytest.mark.parametrize('layout', [pytest.param(x, id=x) for x in LAYOUT_WRITERS])
def test_layout_parity_with_the_reference(tmp_path, layout):
    sd = make_state_dict(SHAPE, dtype=torch.float32, seed=2)
    path, meant = write_layout(layout, sd, tmp_path)
    convert_to_fla(path, tmp_path / 'out', tokenizer='none', precision='F32')
    model = load_fla_model(tmp_path / 'out', dtype=torch.float32)
    tokens = torch.randint(0, SHAPE.vocab, (1, 12), generator=torch.Generator().manual_seed(5))
    got = fla_logits(model, tokens).double()
    want = RWKV7Reference({k: v.float() for k, v in meant.items()}, dtype=torch.float64)(tokens)[0]
    result = compare(got, want)
    assert result.max_abs <= 1e-4 and result.top1 == 1.0, result


def _fla_dir(tmp_path: Path, sd: dict, name: str, edit=None) -> Path:
    """A converted fla directory, its weights rewritten by `edit` (an older fla layout)."""
    base = tmp_path / 'fla'
    if not base.exists():
        convert_to_fla(save(sd, tmp_path / 'src.pth'), base, tokenizer='none')
    if edit is None:
        return base
    out = tmp_path / name
    out.mkdir()
    (out / 'config.json').write_text((base / 'config.json').read_text())
    save_file({k: v.contiguous() for k, v in edit(load_file(base / 'model.safetensors')).items()},
              str(out / 'model.safetensors'), metadata={'format': 'pt'})
    return out


@pytest.mark.parametrize('layout', [pytest.param(x, id=x) for x in FLA_LAYOUT_WRITERS])
def test_fla_layout_exports_the_canonical_file(tmp_path, layout):
    sd = make_state_dict(SHAPE, dtype=torch.float32, seed=3)
    today = convert_from_fla(_fla_dir(tmp_path, sd, 'today'), tmp_path / 'today.pth')
    old = convert_from_fla(_fla_dir(tmp_path, sd, layout, FLA_LAYOUT_WRITERS[layout]), tmp_path / 'old.pth')
    a, b = torch.load(today.output, weights_only=True), torch.load(old.output, weights_only=True)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert any(layout.split('-')[1] in n.replace('January 2025', 'jan2025') for n in old.plan.notes), old.plan.notes
    # parity: the exported file computes the canonical model's logits
    tokens = torch.randint(0, SHAPE.vocab, (1, 10), generator=torch.Generator().manual_seed(6))
    got = RWKV7Reference(b, dtype=torch.float64)(tokens)[0]
    assert torch.equal(got, RWKV7Reference(sd, dtype=torch.float64)(tokens)[0])


def test_hf_directory_with_fla_names_is_refused_with_the_export_hint(tmp_path):
    from fla.rwkv7_convert.errors import UnsupportedVariantError
    base = _fla_dir(tmp_path, make_state_dict(SHAPE, seed=4), 'x')
    assert json.loads((base / 'config.json').read_text())['model_type'] == 'rwkv7'
    with pytest.raises(UnsupportedVariantError, match='already in fla.s naming; rwkv7-export'):
        convert_to_fla(base, tmp_path / 'again')
