"""The name table: coverage of fla's parameters, reversibility, lookups, and every accepted naming variant."""

from pathlib import Path

import numpy as np
import pytest
import torch
from rwkv7_factory import Goose, add_prefix, flatten_r_k, make_state_dict, save, squeeze_vectors, to_st

from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.formats.readers import open_checkpoint
from fla.rwkv7_convert.mapping.config import fla_config
from fla.rwkv7_convert.mapping.engine import expected_blinkdl, lookup_blinkdl, lookup_fla, strip_prefixes
from fla.rwkv7_convert.mapping.ops import SQUEEZE, TRANSPOSE
from fla.rwkv7_convert.mapping.plan import make_plan
from fla.rwkv7_convert.mapping.refusals import REFUSALS
from fla.rwkv7_convert.mapping.schema import Kind, Side
from fla.rwkv7_convert.mapping.table import LAYOUTS, PREFIXES, RULES, SHAPE_ALIASES, WRAPPER_KEYS


def meta_model_shapes(dims) -> dict[str, tuple[int, ...]]:
    # fla's models (with triton, transformers) cost seconds of import: only the tests that build one pay it
    from fla.models import RWKV7Config, RWKV7ForCausalLM

    from fla.rwkv7_convert.runtime.loading import fla_init_skipped
    with torch.device('meta'), fla_init_skipped():
        model = RWKV7ForCausalLM(RWKV7Config(**{k: v for k, v in fla_config(dims, 'F32').items()
                                                if k not in ('architectures', 'model_type', 'dtype')}))
    return {n: tuple(p.shape) for n, p in model.state_dict().items()}


@pytest.mark.parametrize('shape', [
    pytest.param(Goose(layers=1), id='L1'),
    pytest.param(Goose(layers=3, head_size=32), id='L3-N32'),
    pytest.param(Goose(hidden=256, layers=2, head_size=128, ffn=384, w_rank=16, a_rank=48, v_rank=8, g_rank=64),
                 id='L2-N128-odd-ranks'),
])
@pytest.mark.parametrize('layer0_v', [True, False], ids=['layer0-v', 'no-layer0-v'])
def test_table_covers_exactly_the_fla_model(tmp_path, shape, layer0_v):
    path = save(make_state_dict(shape, layer0_v=layer0_v), tmp_path / 'm.pth')
    with open_checkpoint(path) as ckpt:
        plan = make_plan(ckpt.tree, str(path))
    produced = {e.fla: e.fla_shape for e in plan.kept}
    assert produced == meta_model_shapes(plan.dims)
    assert len(plan.dropped) == (3 if layer0_v else 0)


def test_rows_are_unique_and_reversible():
    blinkdl = [(r.blinkdl, r.layers) for r in RULES]
    fla = [r.fla for r in RULES if r.fla]
    assert len(set(blinkdl)) == len(blinkdl)
    assert len(set(fla)) == len(fla)
    rng = np.random.default_rng(0)
    for op, shape in ((TRANSPOSE, (3, 5)), (SQUEEZE, (1, 1, 7)), (SQUEEZE.reverse, (7,))):
        data = rng.standard_normal(shape).astype(np.float32)
        there = op.apply(data)
        assert there.shape == op.shape(shape)
        back = op.reverse.apply(there)
        assert back.shape == shape and np.array_equal(back, data)
        assert op.reverse.reverse == op


@pytest.mark.parametrize('num_layers', [1, 4])
def test_lookups_are_inverse(num_layers):
    for name, rule, layer in expected_blinkdl(num_layers):
        assert lookup_blinkdl(name) == (rule, layer)
        blinkdl_name, fla_name = rule.names(layer)
        assert blinkdl_name == name
        if fla_name is not None:
            assert lookup_fla(fla_name) == (rule, layer)
    assert lookup_blinkdl('blocks.0.att.v1')[0].fla is None
    assert lookup_blinkdl('blocks.2.att.v1')[0].fla == 'model.layers.{i}.attn.v_lora.lora.0.weight'
    assert lookup_blinkdl('blocks.0.attn.v1') is None  # fla's old converter's typo: never a real name
    assert lookup_fla('model.layers.0.attn.v_lora.lora.0.weight') is None  # layer 0 has no v_lora in fla


@pytest.mark.parametrize('name, expected', [
    pytest.param('_orig_mod.emb.weight', 'emb.weight', id='compile'),
    pytest.param('module.blocks.0.ln0.weight', 'blocks.0.ln0.weight', id='ddp'),
    pytest.param('_forward_module.head.weight', 'head.weight', id='lightning'),
    pytest.param('module._orig_mod.module.ln_out.bias', 'ln_out.bias', id='nested'),
    pytest.param('blocks.0.module.x', 'blocks.0.module.x', id='inner-not-stripped'),
    # the guarded layout prefixes: stripped only where an RWKV-LM name follows
    pytest.param('model.blocks.0.att.r_k', 'blocks.0.att.r_k', id='lightning-model'),
    pytest.param('module.model.emb.weight', 'emb.weight', id='ddp-then-lightning'),
    pytest.param('rwkv7.head.weight', 'head.weight', id='hf-rwkv7'),
    pytest.param('model.layers.0.attn.r_k', 'model.layers.0.attn.r_k', id='fla-name-kept'),
    pytest.param('model.embeddings.weight', 'model.embeddings.weight', id='guarded'),
])
def test_strip_prefixes(name, expected):
    assert strip_prefixes(name) == expected


def _converted(path, head_size=None) -> dict[str, tuple]:
    """fla name -> (shape, dtype, bytes) of the converted safetensors, converted by the real pipeline."""
    out = Path(path).with_suffix('.out')
    convert_to_fla(path, out, head_size=head_size, tokenizer='none')
    with open_checkpoint(out / 'model.safetensors') as ckpt:
        return {name: (ref.shape, ref.dtype, ref.load().tobytes()) for name, ref in ckpt.tree.items()}


LAYER0_V = ('blocks.0.att.v0', 'blocks.0.att.v1', 'blocks.0.att.v2')
VARIANTS = [
    pytest.param(lambda sd: sd, {}, id='canonical'),
    *[pytest.param(lambda sd, p=p: add_prefix(sd, p), {}, id=f'prefix-{p.strip("._")}') for p in PREFIXES],
    pytest.param(lambda sd: add_prefix(add_prefix(sd, '_orig_mod.'), 'module.'), {}, id='prefix-nested'),
    pytest.param(lambda sd: {('module.' if i % 2 else '') + k: v for i, (k, v) in enumerate(sd.items())}, {},
                 id='prefix-mixed'),
    pytest.param(squeeze_vectors, {}, id='vectors-[C]'),
    pytest.param(lambda sd: {k: (v.reshape(1, -1) if v.dim() == 3 else v) for k, v in sd.items()}, {}, id='vectors-[1,C]'),
    pytest.param(flatten_r_k, {'head_size': 64}, id='r_k-flat'),
    pytest.param(lambda sd: {k: v for k, v in sd.items() if k not in LAYER0_V}, {}, id='no-layer0-v'),
    pytest.param(lambda sd: {'state_dict': sd, 'epoch': 3}, {}, id='wrapped-state_dict'),
    pytest.param(lambda sd: {'module': add_prefix(sd, '_orig_mod.')}, {}, id='wrapped-module'),
    pytest.param(lambda sd: {k: (v.t().contiguous().t() if v.dim() == 2 else v) for k, v in sd.items()}, {},
                 id='non-contiguous-storage'),
]


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
@pytest.mark.parametrize('variant, kwargs', VARIANTS)
def test_every_variant_converts_to_the_same_tensors(tmp_path, variant, kwargs, suffix):
    sd = make_state_dict(Goose(layers=2), dtype=torch.bfloat16)
    reference = _converted(save(sd, tmp_path / 'canonical.pth'))
    changed = variant(dict(sd))
    if suffix == '.safetensors' and not all(isinstance(v, torch.Tensor) for v in changed.values()):
        pytest.skip('safetensors holds a flat mapping of tensors only')
    if suffix == '.safetensors':
        changed = {k: v.contiguous() for k, v in changed.items()}
    assert _converted(save(changed, tmp_path / f'variant{suffix}'), **kwargs) == reference


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=['fp32', 'fp16', 'bf16', 'fp64'])
def test_stored_dtype_is_kept_bit_for_bit(tmp_path, dtype):
    sd = make_state_dict(Goose(layers=1), dtype=dtype)
    out = _converted(save(sd, tmp_path / 'm.pth'))
    emb = out['model.embeddings.weight']
    as_bytes = sd['emb.weight'].contiguous().view(torch.uint8).numpy().tobytes()
    assert emb[2] == as_bytes
    w1 = out['model.layers.0.attn.w_lora.lora.0.weight']
    assert w1[2] == sd['blocks.0.att.w1'].t().contiguous().view(torch.uint8).numpy().tobytes()


def test_normalizations_are_documented():
    # every normalization says what it accepts and where it comes from; docs are generated from them (test_docs.py)
    assert all(a.variant and a.canonical and a.where for a in SHAPE_ALIASES)
    assert all(PREFIXES.values()) and all(WRAPPER_KEYS.values())
    assert {a.canonical for a in SHAPE_ALIASES} <= {r.shape for r in RULES}


def test_layouts_and_refusals_say_who_and_where():
    """Every layout names who writes it, and every layout verified against a writer's code cites repo, path and a
    full commit; names are unique. (That each layout's rules are right is proved in tests/convert/test_layouts.py.)"""
    assert len({x.name for x in LAYOUTS}) == len(LAYOUTS)
    unverified = {'Hugging Face `rwkv7.` prefix', 'fla bare RWKV7Model'}
    for x in LAYOUTS:
        assert x.who and x.detect.describe() and isinstance(x.kind, Kind) and isinstance(x.side, Side), x.name
        assert x.evidence or x.name in unverified, x.name
        assert all(len(e.commit) == 40 and e.repo.count('/') == 1 and e.path for e in x.evidence), x.name
    assert all(f.variant and f.reason for f in REFUSALS)
    assert len({f.variant for f in REFUSALS}) == len(REFUSALS)


def test_layouts_are_told_by_their_predicates_not_by_a_file_name():
    """A `.st` file's content under any name is read as that layout: only its shapes show it."""
    sd = to_st(make_state_dict(Goose(layers=2, w_rank=16, a_rank=24, v_rank=8, g_rank=40)))
    refs = {k: TensorRef(k, tuple(v.shape), 'F16', loader=lambda: None) for k, v in sd.items()}
    plan = make_plan(refs, 'model.safetensors')
    assert any('web-rwkv / ai00 `.st`: 16 tensor(s) stored transposed' in n for n in plan.notes), plan.notes
    w1 = next(e for e in plan.entries if e.blinkdl == 'blocks.0.att.w1')
    assert w1.source.shape == (128, 16) and w1.fla_shape == (16, 128)
