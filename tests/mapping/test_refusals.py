"""The one ordered registry of refusals (refusals.REFUSALS): stages in the order file < names < shapes < config, and an
input that two refusals match is refused by the first in order, whether they share a stage or not. (Each refusal
on its own is tested in tests/test_errors.py and tests/convert/test_to_blinkdl.py.)"""

from __future__ import annotations

import pytest
from rwkv7_factory import Goose, make_state_dict

from fla.rwkv7_convert.errors import ConfigError, ConversionError, KeyMismatchError, UnsupportedVariantError
from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.formats.readers import MAGICS, open_checkpoint
from fla.rwkv7_convert.mapping.engine import first_refusal
from fla.rwkv7_convert.mapping.plan import make_plan
from fla.rwkv7_convert.mapping.refusals import REFUSALS
from fla.rwkv7_convert.mapping.schema import Seen, Side, Stage

SHAPE = Goose(vocab=64, hidden=32, layers=2, head_size=16, w_rank=8, a_rank=8, v_rank=8, g_rank=8)
C, V = SHAPE.hidden, SHAPE.vocab


def shapes(**changes) -> dict[str, tuple[int, ...]]:
    """A canonical model's names and shapes, with `changes` (None removes a name)."""
    out = {k: tuple(v.shape) for k, v in make_state_dict(SHAPE).items()}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def transposed_factors(**changes) -> dict[str, tuple[int, ...]]:
    """A web-rwkv / ai00 `.st` file's shapes: every LoRA factor stored transposed."""
    out = shapes(**changes)
    return {k: (v[::-1] if k.split('.')[-1] in ('w1', 'w2', 'a1', 'a2', 'v1', 'v2', 'g1', 'g2') else v)
            for k, v in out.items()}


def test_stages_are_in_order_and_the_registry_follows_them():
    assert [s.value for s in Stage] == ['file', 'names', 'shapes', 'config']
    assert [s.rank for s in Stage] == [0, 1, 2, 3]
    ranks = [f.stage.rank for f in REFUSALS]
    assert ranks == sorted(ranks)
    assert {f.stage for f in REFUSALS} == set(Stage)


def test_the_file_stage_lists_what_the_readers_refuse_by_their_bytes():
    assert [f.variant for f in REFUSALS if f.stage is Stage.FILE] == [m.what for m in MAGICS]


SHAPE_DUMP = {'head.weight': (C, V)}  # the rwkv package's runtime form: head stored [C,V]
# (side, what the input holds, the refusal that must win, one it also matches)
TWO_MATCHES = [
    pytest.param(Side.BLINKDL, Seen(shapes(**{'blocks.0.qkv.emm.weight': (V, C)})), 'RWKV-8 hybrid', 'RWKV-7b "DEA"',
                 id='names-names'),
    pytest.param(Side.BLINKDL, Seen(shapes(**{'blocks.0.att.key.lora_A': (8, C)})),
                 'RWKV-PEFT adapter without its base model', 'unmerged LoRA of another trainer', id='names-names-adapters'),
    pytest.param(Side.ADAPTER, Seen({'blocks.0.att.key.init_lora_A': (8, C), 'blocks.0.att.key.disha': (8, C),
                                     'blocks.0.att.value.lora_A': (8, C)}),
                 'PiSSA init file given as the adapter', 'adapter mixing methods', id='names-names-adapter-side'),
    pytest.param(Side.BLINKDL, Seen(shapes(**SHAPE_DUMP, **{'blocks.0.att.key.lora_A': (8, C)})),
                 'RWKV-PEFT adapter without its base model', 'in-memory dump of BlinkDL\'s `rwkv` package',
                 id='names-shapes'),
    pytest.param(Side.BLINKDL, Seen(shapes(**SHAPE_DUMP, **{'blocks.0.ln0.weight': None, 'blocks.0.ln0.bias': None})),
                 'ln0 folded into emb', 'in-memory dump of BlinkDL\'s `rwkv` package', id='names-shapes-ln0'),
    pytest.param(Side.BLINKDL, Seen(transposed_factors(**SHAPE_DUMP, **{'blocks.1.att.w1': (C, C)})),
                 'web-rwkv / ai00 `.st` whose LoRA rank equals C', 'in-memory dump of BlinkDL\'s `rwkv` package',
                 id='shapes-shapes'),
    pytest.param(Side.FLA, Seen(shapes(), config={'model_type': 'rwkv6', 'hidden_size': C}),
                 'RWKV-LM names given to the export', 'another model type', id='names-config'),
    pytest.param(Side.FLA, Seen({'model.embeddings.weight': (V, C)}, config={'model_type': 'rwkv6', 'attn': {'layers': [0]},
                                                                          'hidden_size': C}),
                 'another model type', 'fla hybrid with attention layers', id='config-config'),
    pytest.param(Side.FLA, Seen({'model.embeddings.weight': (V, C)}, config={'model_type': 'rwkv7', 'hidden_size': 0,
                                                                          'attn': {'layers': [0]}}),
                 'config without a hidden size', 'fla hybrid with attention layers', id='config-config-error'),
]


@pytest.mark.parametrize('side, seen, winner, loser', TWO_MATCHES)
def test_of_two_matching_refusals_the_first_in_order_wins(side, seen, winner, loser):
    by_name = {f.variant: f for f in REFUSALS}
    assert by_name[winner].when.hits(seen) and by_name[loser].when.hits(seen), 'the input must match both'
    assert list(REFUSALS).index(by_name[winner]) < list(REFUSALS).index(by_name[loser])
    assert by_name[winner].stage.rank <= by_name[loser].stage.rank
    refusal, _ = first_refusal(side, seen)
    assert refusal.variant == winner


def _refs(named: dict[str, tuple[int, ...]]) -> dict[str, TensorRef]:
    return {n: TensorRef(n, s, 'F32', loader=lambda: None) for n, s in named.items()}


def test_the_plan_raises_the_first_refusal_in_order():
    """The walk of plan.py runs the registry in its order: the names stage before the shapes stage."""
    with pytest.raises(UnsupportedVariantError, match='RWKV-PEFT adapter tensors'):
        make_plan(_refs(shapes(**SHAPE_DUMP, **{'blocks.0.att.key.lora_A': (8, C)})), 'm.pth')
    with pytest.raises(UnsupportedVariantError, match=r"in-memory dump of BlinkDL's `rwkv` package checkpoint \(head"):
        make_plan(_refs(shapes(**SHAPE_DUMP)), 'm.pth')


def test_a_refusal_raises_its_declared_error():
    found = first_refusal(Side.FLA, Seen({}, config={'model_type': 'rwkv7', 'hidden_size': -1}))
    assert found[0].error is ConfigError and found[0].text(found[1]) == 'config.json hidden_size is -1, expected a ' \
                                                                           'positive integer'


def test_the_error_names_the_refusal_that_raised_it():
    """`ConversionError.refusal` is declared (None unless a refusal raised it): inspect reads it, no getattr."""
    with pytest.raises(UnsupportedVariantError) as e:
        make_plan(_refs(shapes(**SHAPE_DUMP)), 'm.pth')
    assert e.value.refusal is next(f for f in REFUSALS if f.variant == "in-memory dump of BlinkDL's `rwkv` package")
    with pytest.raises(KeyMismatchError) as e:
        make_plan(_refs(shapes(**{'blocks.0.att.k_k': (3,)})), 'm.pth')
    assert e.value.refusal is None
    assert ConversionError('plain').refusal is None


@pytest.mark.parametrize('head, message', [
    pytest.param(b'GGUF\x03\x00\x00\x00', 'GGUF file', id='gguf'),
    pytest.param(b'\xa5\x67context\xa0', 'prefab', id='cbor-prefab'),
])
def test_the_file_stage_decides_by_bytes_not_by_name(tmp_path, head, message):
    """Named like a checkpoint, refused for what its first bytes are, before any name is read."""
    path = tmp_path / 'model.pth'
    path.write_bytes(head + bytes(64))
    with pytest.raises(UnsupportedVariantError, match=message):
        open_checkpoint(path)
