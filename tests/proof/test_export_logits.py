"""Proof of the export direction by logits: BlinkDL's rwkv package on the exported .pth against fla on the source."""

from __future__ import annotations

import torch
from blinkdl_rwkv import rwkv_package_model
from rwkv7_factory import Goose, make_state_dict

from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla

# --------------------------------------------------------------------------------------------------------- logits

def test_logits_rwkv_package_equals_fla(tmp_path):
    """The exported .pth, run by BlinkDL's rwkv package, gives the logits fla gives on the source directory."""
    import fla_cpu
    from fla.models import RWKV7ForCausalLM

    shape = Goose(vocab=96, hidden=128, layers=2, head_size=64)  # N = 64: fla's and BlinkDL's eps agree
    fla_cpu.fla_model(make_state_dict(shape, seed=7)).save_pretrained(tmp_path / 'src')
    assert convert_from_fla(tmp_path / 'src', tmp_path / 'model.pth').plan.warnings == []  # eps agree at N = 64
    tokens = torch.randint(0, shape.vocab, (40,), generator=torch.Generator().manual_seed(0))

    blinkdl = rwkv_package_model(tmp_path / 'model')
    expected, _ = blinkdl.forward(tokens.tolist(), None, full_output=True)
    model = RWKV7ForCausalLM.from_pretrained(tmp_path / 'src').float().eval()
    got = fla_cpu.fla_logits(model, tokens[None])[0]
    diff = (got - expected).abs().max().item()
    ratio = ((got - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()
    assert diff < 1e-4 and ratio < 1e-5, (diff, ratio)
