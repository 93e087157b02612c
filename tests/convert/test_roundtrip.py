"""Round trips through both converters are bit-exact, over random shapes, dtypes and file variants (hypothesis).

BlinkDL -> fla -> BlinkDL gives back every tensor (name, shape, dtype, bytes) after normalization: wrapper prefixes
stripped, vectors in RWKV-LM's `[1,1,C]`, `r_k` as `[H,N]`. Layer-0 `att.v0/v1/v2` are dropped on the way to fla
(no model uses them), so on the way back they are zeros of the same shapes, present iff they were.
fla -> BlinkDL -> fla gives back every tensor of a model made in fla (`RWKV7ForCausalLM(RWKV7Config(...))`).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rwkv7_factory import LAYOUT_WRITERS, Goose, add_prefix, flatten_r_k, make_state_dict, save, squeeze_vectors, write_layout
from safetensors.torch import load_file

from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.mapping.engine import lookup_blinkdl, strip_prefixes

DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}
LAYER0_V = re.compile(r'^blocks\.0\.att\.v[012]$')
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _hidden_and_head(draw) -> tuple[int, int]:
    head = draw(st.sampled_from([16, 32, 64]))
    return head * draw(st.integers(max(1, 32 // head), 256 // head)), head


@st.composite
def gooses(draw) -> Goose:
    C, N = _hidden_and_head(draw)
    rank = st.integers(1, 64)
    return Goose(vocab=draw(st.integers(2, 300)), hidden=C, layers=draw(st.integers(1, 3)), head_size=N,
                 ffn=draw(st.integers(1, 4 * C)), w_rank=draw(rank), a_rank=draw(rank), v_rank=draw(rank),
                 g_rank=draw(rank))


def _normalized(sd: dict[str, torch.Tensor], shape: Goose) -> dict[str, torch.Tensor]:
    """RWKV-LM's canonical form of a stored state dict: no prefixes, vectors [1,1,C], r_k [H,N]."""
    out = {}
    for name, t in sd.items():
        name = strip_prefixes(name)
        rule = lookup_blinkdl(name)[0]
        if rule.shape == '1,1,C':
            t = t.reshape(1, 1, -1)
        elif rule.shape == 'H,N':
            t = t.reshape(shape.heads, shape.head_size)
        out[name] = t
    return out


@FAST
@given(shape=gooses(), dtype=st.sampled_from(sorted(DTYPES)), mixed=st.booleans(), layer0_v=st.booleans(),
       squeezed=st.booleans(), flat_r_k=st.booleans(), prefix=st.sampled_from(['', '_orig_mod.', 'module._orig_mod.']),
       fmt=st.sampled_from(['pth', 'safetensors']), out_fmt=st.sampled_from(['pth', 'safetensors']),
       seed=st.integers(0, 2**16))
def test_blinkdl_fla_blinkdl(shape, dtype, mixed, layer0_v, squeezed, flat_r_k, prefix, fmt, out_fmt, seed):
    original = make_state_dict(shape, DTYPES[dtype], seed=seed, layer0_v=layer0_v)
    if mixed:  # a file whose tensors do not share one dtype: each keeps its own
        original = {k: (v.float() if i % 3 == 0 else v) for i, (k, v) in enumerate(original.items())}
    stored = squeeze_vectors(original) if squeezed else original
    stored = flatten_r_k(stored) if flat_r_k else stored
    stored = add_prefix(stored, prefix)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = save(stored, tmp / f'src.{fmt}')
        convert_to_fla(src, tmp / 'hf', tokenizer='none', head_size=shape.head_size if flat_r_k else None)
        back = convert_from_fla(tmp / 'hf', tmp / f'back.{out_fmt}', layer0_v=layer0_v).output
        result = torch.load(back, weights_only=True) if out_fmt == 'pth' else load_file(back)

    expected = _normalized(stored, shape)
    assert sorted(result) == sorted(original)
    for name, want in expected.items():
        got = result[name]
        assert got.shape == want.shape, name
        if LAYER0_V.match(name):  # dropped by the forward direction: zeros of the right shape come back
            assert not got.any() and (mixed or got.dtype == want.dtype), name
            continue
        assert got.dtype == want.dtype and _bits(got) == _bits(want), name


# ---------------------------------------------------------------------------------------------------------- fla side

@st.composite
def fla_configs(draw) -> dict:
    C, N = _hidden_and_head(draw)
    rank = st.integers(1, 64)
    return dict(hidden_size=C, head_dim=N, num_hidden_layers=draw(st.integers(1, 3)), vocab_size=draw(st.integers(2, 300)),
                intermediate_size=draw(st.one_of(st.none(), st.integers(1, 4 * C))),
                decay_low_rank_dim=draw(rank), a_low_rank_dim=draw(rank), v_low_rank_dim=draw(rank),
                gate_low_rank_dim=draw(rank), norm_eps=draw(st.sampled_from([1e-5, 64e-5 / N])))


def _fla_model(config: dict, dtype: torch.dtype, seed: int):
    """An RWKV7ForCausalLM made in fla, every parameter random so that every byte is checked.

    fla's own initialization is skipped: it is slow (Python loops per channel) and, in fla 0.6.0 under
    transformers 5, divides by `num_hidden_layers - 1`, so a one-layer model cannot be built with it.
    """
    from fla.layers.rwkv7 import RWKV7Attention
    from fla.models import RWKV7Config, RWKV7ForCausalLM
    from fla.models.rwkv7.modeling_rwkv7 import RWKV7FeedForward
    from transformers.initialization import no_init_weights

    skip = lambda *args: None
    with no_init_weights(), mock.patch.object(RWKV7Attention, '_initialize_weights', skip), \
            mock.patch.object(RWKV7FeedForward, '_initialize_weights', skip):
        model = RWKV7ForCausalLM(RWKV7Config(**config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return model.to(dtype)


def _hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob('*.safetensors')):
        out.update(load_file(f))
    return out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=fla_configs(), dtype=st.sampled_from(sorted(DTYPES)), shard=st.sampled_from([None, '20KB']),
       via=st.sampled_from(['pth', 'safetensors']), seed=st.integers(0, 2**16))
def test_fla_blinkdl_fla(config, dtype, shard, via, seed):
    model = _fla_model(config, DTYPES[dtype], seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model.save_pretrained(tmp / 'src', max_shard_size=shard or '5GB')
        exported = convert_from_fla(tmp / 'src', tmp / f'model.{via}').output
        convert_to_fla(exported, tmp / 'back', tokenizer='none')
        original, back = _hf_tensors(tmp / 'src'), _hf_tensors(tmp / 'back')
        cfg_src = json.loads((tmp / 'src' / 'config.json').read_text())
        cfg_back = json.loads((tmp / 'back' / 'config.json').read_text())
    assert sorted(back) == sorted(original)
    for name, want in original.items():
        got = back[name]
        assert got.shape == want.shape and got.dtype == want.dtype and _bits(got) == _bits(want), name
    # the forward direction writes its own config, which must describe the same model
    for key in ('hidden_size', 'head_dim', 'num_heads', 'num_hidden_layers', 'vocab_size', 'decay_low_rank_dim',
                'a_low_rank_dim', 'gate_low_rank_dim', 'value_dim', 'norm_first', 'norm_bias', 'hidden_act'):
        assert cfg_back[key] == cfg_src[key], key
    assert cfg_back['intermediate_size'] == original['model.layers.0.ffn.key.weight'].shape[0]
    # with one layer there is no v_lora: the rank travels in the shapes of the layer-0 placeholders
    assert cfg_back['v_low_rank_dim'] == cfg_src['v_low_rank_dim']


def test_fla_blinkdl_fla_loads_and_matches(tmp_path):
    """The round-tripped directory loads in fla and computes what the original computes."""
    import fla_cpu
    from fla.models import RWKV7ForCausalLM
    config = dict(hidden_size=64, head_dim=32, num_hidden_layers=2, vocab_size=50, decay_low_rank_dim=16,
                  a_low_rank_dim=16, v_low_rank_dim=8, gate_low_rank_dim=16, norm_eps=2e-5)
    model = _fla_model(config, torch.float32, seed=0)
    with torch.no_grad():  # random N(0,1) vectors make decays and gates extreme; keep them tame
        for name, p in model.named_parameters():
            if p.dim() == 1 or name.endswith(('x_r', 'x_w', 'x_k', 'x_v', 'x_a', 'x_g')):
                p.mul_(0.3)
    model.save_pretrained(tmp_path / 'src')
    convert_from_fla(tmp_path / 'src', tmp_path / 'model.pth')
    convert_to_fla(tmp_path / 'model.pth', tmp_path / 'back', tokenizer='none')
    tokens = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(1))
    a = fla_cpu.fla_logits(RWKV7ForCausalLM.from_pretrained(tmp_path / 'src').eval(), tokens)
    b = fla_cpu.fla_logits(RWKV7ForCausalLM.from_pretrained(tmp_path / 'back').eval(), tokens)
    assert torch.equal(a, b)


@pytest.mark.parametrize('layout', [pytest.param(x, id=x) for x in LAYOUT_WRITERS])
def test_every_layout_round_trips_to_the_canonical_file(tmp_path, layout):
    """A file in any layout -> fla -> RWKV-LM gives back the canonical names, shapes, dtypes and bits."""
    sd = make_state_dict(Goose(vocab=50, hidden=64, layers=2, head_size=32, w_rank=16, a_rank=8, v_rank=24, g_rank=40),
                         torch.bfloat16, seed=9)
    path, meant = write_layout(layout, sd, tmp_path)
    convert_to_fla(path, tmp_path / 'hf', tokenizer='none')
    back = torch.load(convert_from_fla(tmp_path / 'hf', tmp_path / 'back.pth').output, weights_only=True)
    assert sorted(back) == sorted(meant)
    for name, want in meant.items():
        if LAYER0_V.match(name):
            assert not back[name].any() and back[name].shape == want.shape, name
        else:
            assert back[name].dtype == want.dtype and _bits(back[name]) == _bits(want), name
