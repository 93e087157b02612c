"""The one name table between BlinkDL's RWKV-LM checkpoints and fla's RWKV7ForCausalLM, read in both directions:
the rules, the normalizations and the layouts. Declarations only (their types are in schema.py, the predicates in
predicates.py, the ops in ops.py); engine.py executes them, nothing else. The table's other declarations are
refusals.py (REFUSALS: the inputs refused, in order) and adapter_methods.py (ADAPTER_METHODS: RWKV-PEFT's methods).

- `RULES`: each canonical RWKV-LM tensor, its fla counterpart, its shape in symbols and the `Op` that turns the
  BlinkDL tensor into the fla one (its `reverse`, which every converted rule must have, goes back).
- Normalizations, executed before lookup: wrapper prefixes of every name (`PREFIXES`), wrapper keys of nested state
  dicts (`WRAPPER_KEYS`), stored shapes accepted for a canonical one (`SHAPE_ALIASES`); an absent optional tensor is
  `optional=True` on its rule.
- `LAYOUTS`: the ways files are stored in practice, each detected by its own predicate (`detect`, over names and
  shapes) and brought to canonical names and shapes by its `Rename`s (read one way only: no reverse needed).

What to add:
- a naming, prefix or orientation variant: one `Layout` in LAYOUTS (who writes it, the `Source` you verified, a
  `detect` predicate only files in that layout satisfy, one `Rename` per stored name with the `Op` that makes it
  canonical), plus one writer in `LAYOUT_WRITERS` (or `FLA_LAYOUT_WRITERS`) of tests/rwkv7_factory.py;
- a new wrapper prefix of every name: one entry in PREFIXES; a new stored shape of a canonical one: one ShapeAlias;
- a family to refuse: refusals.py; a fine-tuning method: adapter_methods.py;
then regenerate docs/mapping.md: `python -m fla.rwkv7_convert.mapping.docs > docs/mapping.md`.

Symbols: V vocab, C hidden size, H heads, N head size (C = H*N), F FFN width, Dw/Da/Dv/Dg the LoRA ranks.
"""

from __future__ import annotations

import re

from fla.rwkv7_convert.formats.state_file import FLA_STATE_KEY
from fla.rwkv7_convert.mapping.ops import IDENTITY, SQUEEZE, SWAP_LAST_TWO, TRANSPOSE, Op, Orient, Reshape, Shape
from fla.rwkv7_convert.mapping.predicates import NamePattern, Transposed
from fla.rwkv7_convert.mapping.schema import Kind, Layout, Rename, Rule, Scope, ShapeAlias, Side, Source, Target

ALL, FIRST, REST, GLOBAL = Scope.ALL, Scope.FIRST, Scope.REST, Scope.GLOBAL

# ---------------------------------------------------------------------------------------------------------- rules


def _lora(letter: str, target: str, layers: Scope = ALL, bias: bool = True) -> list[Rule]:
    rank = {'w': 'Dw', 'a': 'Da', 'v': 'Dv', 'g': 'Dg'}[letter]
    base = f'model.layers.{{i}}.attn.{target}.lora'
    rows = [
        Rule(f'blocks.{{i}}.att.{letter}1', f'{base}.0.weight', f'C,{rank}', TRANSPOSE, layers),
        Rule(f'blocks.{{i}}.att.{letter}2', f'{base}.2.weight', f'{rank},C', TRANSPOSE, layers),
    ]
    if bias:
        rows.insert(0, Rule(f'blocks.{{i}}.att.{letter}0', f'{base}.2.bias', '1,1,C', SQUEEZE, layers))
    return rows


RWKV_PEFT = 'JL-er/RWKV-PEFT'
RWKV_PEFT_COMMIT = '5b8aac9cbed9474fb9f13332ffe9bd1aa377b7d2'
_BLOCK_REPO = 'RWKV/RWKV-block'
_STATE_NOTE = ('a tuned initial wkv state (state tuning): written to rwkv7_state.safetensors, not to the weights, in its '
               'stored dtype whatever --precision says (fla keeps the state in float32); every block has one or none')
_STATE_EVIDENCE = (
    Source(RWKV_PEFT, 'rwkvt/rwkv7/att.py', RWKV_PEFT_COMMIT, 'self.time_state = nn.Parameter(torch.zeros(H, N, N)): '
           'float32, saved as trained'),
    Source(RWKV_PEFT, 'rwkvt/operator/rwkvop.py', RWKV_PEFT_COMMIT, 's = s.transpose(1, 2) before '
           'chunk_rwkv7(initial_state=s): time_state is [head, value, key], fla\'s initial_state [head, key, value]'),
    Source(RWKV_PEFT, 'merge/merge_state.py', RWKV_PEFT_COMMIT, 'w[k] = w_state[k]: a merge is the base dict plus time_state'),
    Source('BlinkDL/ChatRWKV', 'rwkv_pip_package/src/rwkv/model.py', '965e40b85288a91c94c02bfa56adc3ce0fa20a82',
           'RWKV_x070_TMix_one: state[i*3+1] [H, N, N] float32, used as `state @ r` ([value, key])'),
)
_LAYER0_V = 'created by RWKV-LM training for every block but never used in block 0 (v_first is taken there)'

RULES: tuple[Rule, ...] = (
    Rule('emb.weight', 'model.embeddings.weight', 'V,C', layers=GLOBAL),
    Rule('blocks.{i}.ln0.weight', 'model.layers.{i}.pre_norm.weight', 'C', layers=FIRST),
    Rule('blocks.{i}.ln0.bias', 'model.layers.{i}.pre_norm.bias', 'C', layers=FIRST),
    Rule('blocks.{i}.ln1.weight', 'model.layers.{i}.attn_norm.weight', 'C'),
    Rule('blocks.{i}.ln1.bias', 'model.layers.{i}.attn_norm.bias', 'C'),
    *[Rule(f'blocks.{{i}}.att.x_{c}', f'model.layers.{{i}}.attn.x_{c}', '1,1,C') for c in 'rwkvag'],
    *_lora('w', 'w_lora'),
    *_lora('a', 'a_lora'),
    *_lora('v', 'v_lora', layers=REST),
    *[Rule(f'blocks.{{i}}.att.v{j}', None, s, layers=FIRST, optional=True, note=_LAYER0_V)
      for j, s in (('0', '1,1,C'), ('1', 'C,Dv'), ('2', 'Dv,C'))],
    *_lora('g', 'g_lora', bias=False),
    Rule('blocks.{i}.att.k_k', 'model.layers.{i}.attn.k_k', '1,1,C', SQUEEZE),
    Rule('blocks.{i}.att.k_a', 'model.layers.{i}.attn.k_a', '1,1,C', SQUEEZE),
    Rule('blocks.{i}.att.r_k', 'model.layers.{i}.attn.r_k', 'H,N'),
    Rule('blocks.{i}.att.receptance.weight', 'model.layers.{i}.attn.r_proj.weight', 'C,C'),
    Rule('blocks.{i}.att.key.weight', 'model.layers.{i}.attn.k_proj.weight', 'C,C'),
    Rule('blocks.{i}.att.value.weight', 'model.layers.{i}.attn.v_proj.weight', 'C,C'),
    Rule('blocks.{i}.att.output.weight', 'model.layers.{i}.attn.o_proj.weight', 'C,C'),
    Rule('blocks.{i}.att.ln_x.weight', 'model.layers.{i}.attn.g_norm.weight', 'C'),
    Rule('blocks.{i}.att.ln_x.bias', 'model.layers.{i}.attn.g_norm.bias', 'C'),
    Rule('blocks.{i}.ln2.weight', 'model.layers.{i}.ffn_norm.weight', 'C'),
    Rule('blocks.{i}.ln2.bias', 'model.layers.{i}.ffn_norm.bias', 'C'),
    Rule('blocks.{i}.ffn.x_k', 'model.layers.{i}.ffn.x_k', '1,1,C', SQUEEZE),
    Rule('blocks.{i}.ffn.key.weight', 'model.layers.{i}.ffn.key.weight', 'F,C'),
    Rule('blocks.{i}.ffn.value.weight', 'model.layers.{i}.ffn.value.weight', 'C,F'),
    Rule('blocks.{i}.att.time_state', FLA_STATE_KEY, 'H,N,N', SWAP_LAST_TWO, optional=True,
         note=_STATE_NOTE, target=Target.STATE, evidence=_STATE_EVIDENCE),
    Rule('ln_out.weight', 'model.norm.weight', 'C', layers=GLOBAL),
    Rule('ln_out.bias', 'model.norm.bias', 'C', layers=GLOBAL),
    Rule('head.weight', 'lm_head.weight', 'V,C', layers=GLOBAL),
)

SIZES = {'V': 'the vocabulary size', 'C': 'the hidden size', 'H': 'the head count', 'N': 'the head size',
         'F': 'the FFN width', 'Dw': 'the decay LoRA rank', 'Da': 'the a LoRA rank', 'Dv': 'the value LoRA rank',
         'Dg': 'the gate LoRA rank'}

# --------------------------------------------------------------------------------------------------- normalizations

# Wrappers that prefix every name, stripped repeatedly (so `module._orig_mod.` works too), and who adds them.
# (`model.` is a layout below: it is stripped only before a top-level RWKV-LM name, since fla's names start with it.)
PREFIXES: dict[str, str] = {'_orig_mod.': 'torch.compile', 'module.': 'DDP / DeepSpeed',
                            '_forward_module.': 'Lightning / FSDP wrappers'}

# Keys of containers around the state dict (`{"state_dict": {...}}`), unwrapped in this order of preference.
WRAPPER_KEYS: dict[str, str] = {'state_dict': 'Lightning and RWKV-LM training checkpoints',
                                'module': 'DeepSpeed checkpoints', 'model': 'training scripts saving {"model": ...}'}


def _unit_dims(shape: Shape, head_size: int | None) -> Shape | None:
    return (1, 1, shape[-1]) if len(shape) >= 1 and all(d == 1 for d in shape[:-1]) else None


def _flat_r_k(shape: Shape, head_size: int | None) -> Shape | None:
    if len(shape) != 1:
        return shape
    return (shape[0] // head_size, head_size) if head_size and shape[0] % head_size == 0 else None


SHAPE_ALIASES: tuple[ShapeAlias, ...] = (
    ShapeAlias('1,1,C', 'vectors stored `[C]` (or any shape with C elements and unit dims)',
               'x_*, w0, a0, v0, k_k, k_a, ffn.x_k: exporters and the rwkv package squeeze them', _unit_dims),
    ShapeAlias('H,N', '`att.r_k` stored flat `[C]`', 'needs --head-size, since N cannot be read from a flat r_k',
               _flat_r_k),
)

# ---------------------------------------------------------------------------------------------------------- layouts


def _block(old: str, new: str, op: Op | Orient = IDENTITY) -> Rename:
    return Rename(rf'blocks\.(\d+)\.{old}', rf'blocks.\1.{new}', op)


RWKV_LM = 'BlinkDL/RWKV-LM'
_RC4A_TRAIN_RENAMES = (
    _block(r'att\.time_maa_([rwkvag])', r'att.x_\2'),
    _block(r'att\.time_decay', 'att.w0'),
    _block(r'att\.time_decay_w([12])', r'att.w\2'),
    _block(r'att\.time_aaaaa', 'att.a0'),
    _block(r'att\.time_aaa_w([12])', r'att.a\2'),
    _block(r'att\.time_misc_v', 'att.v0'),
    _block(r'att\.mv_w([12])', r'att.v\2'),
    _block(r'att\.gate_w([12])', r'att.g\2'),
    _block(r'att\.time_misc_kkk', 'att.k_k'),
    _block(r'att\.time_misc_a', 'att.k_a'),
    _block(r'att\.time_faaaa', 'att.r_k', Reshape('1,1,H,N', 'H,N')),  # as RWKV-LM stored it
    _block(r'att\.time_faaaa', 'att.r_k'),  # any other shape: left to the shape check (the first rename that fits wins)
    _block(r'ffn\.time_maa_k', 'ffn.x_k'),
)
_RC4A_DEMO_RENAMES = (
    _block(r'att\.xx_([rwkvag])', r'att.x_\2'),
    _block(r'att\.ww_b', 'att.w0'),
    _block(r'att\.ww_w([12])', r'att.w\2'),
    _block(r'att\.aa_b', 'att.a0'),
    _block(r'att\.aa_w([12])', r'att.a\2'),
    _block(r'att\.vv_b', 'att.v0'),
    _block(r'att\.vv_w([12])', r'att.v\2'),
    _block(r'att\.gg_w([12])', r'att.g\2'),
    _block(r'att\.kk_s', 'att.k_k'),
    _block(r'att\.ka_s', 'att.k_a'),
    _block(r'att\.rk_s', 'att.r_k'),
    _block(r'ffn\.xx_k', 'ffn.x_k'),
)
# RWKV-LM's orientation: factor 1 is [C,D] (C on axis 0), factor 2 [D,C]
ST_RENAMES = (_block(r'att\.([wavg]1)', r'att.\2', Orient(0)), _block(r'att\.([wavg]2)', r'att.\2', Orient(1)))
_TOP = r'(?:emb|blocks|ln_out|head)\.'

LAYOUTS: tuple[Layout, ...] = (
    Layout(
        'rc4a training names', Side.BLINKDL, Kind.NAMES,
        'RWKV-LM `RWKV-v5/src/model.py` (x070) from 2024-11-23 until the rename of 2024-11-29',
        (Source(RWKV_LM, 'RWKV-v5/src/model.py', '69bb58521462382c10fb61939272d95fefb8df23',
                'introduces these names with the final x070 equations ("change all to rwkv-7-rc4a")'),
         Source(RWKV_LM, 'RWKV-v5/src/model.py', '348e56eca683609e92a77256587bea5b23a512c3',
                '"better names": a pure rename to x_*, w0.., k_k, k_a, r_k; the forward pass is unchanged')),
        NamePattern(r'^blocks\.\d+\.att\.(time_aaaaa|time_misc_kkk|mv_w1)$'), _RC4A_TRAIN_RENAMES,
        'time_faaaa is [1,1,H,N], reshaped to r_k [H,N]; the CUDA kernel change in between (wkv7.cu) only '
        'stopped caching v in registers'),
    Layout(
        'rc4a demo names', Side.BLINKDL, Kind.NAMES,
        'RWKV-LM `RWKV-v7/rwkv_v7_demo.py` of the rc4a release (it loads files in these names strictly)',
        (Source(RWKV_LM, 'RWKV-v7/rwkv_v7_demo.py', '218a94cf373a04bd906e7a234134227ac03c2641',
                'rwkv-7 release ("rc4a"): xx_*, ww_*, aa_*, vv_*, gg_*, kk_s, ka_s, rk_s'),
         Source(RWKV_LM, 'RWKV-v7/rwkv_v7_demo.py', '02bc67aa1e509ee55bb5de74b17b62437605ab77',
                '"better names": a pure rename to today\'s names')),
        NamePattern(r'^blocks\.\d+\.att\.(ww_b|kk_s|rk_s|xx_r)$'), _RC4A_DEMO_RENAMES),
    Layout(
        'Lightning / HF `model.` prefix', Side.BLINKDL, Kind.PREFIX,
        'a raw Lightning checkpoint state dict (RWKV-LM / RWKV-PEFT trainers keep the RWKV module as `model`), '
        'Hugging Face ports that nest BlinkDL names under `model.`',
        (Source('JL-er/RWKV-PEFT', 'rwkvt/lightning_train/light_rwkv.py', '5b8aac9cbed9474fb9f13332ffe9bd1aa377b7d2',
                'the LightningModule holds the RWKV model as self.model, so its state_dict names start with model.'),
         Source('JL-er/RWKV-PEFT', 'rwkvt/lightning_train/trainer.py', '5b8aac9cbed9474fb9f13332ffe9bd1aa377b7d2',
                'its own .pth saves strip "model."; a raw Lightning checkpoint keeps it')),
        NamePattern(rf'^model\.{_TOP}'), (Rename(rf'model\.({_TOP}.+)', r'\1'),),
        'stripped only before emb., blocks., ln_out. or head.: fla\'s own names also start with model.'),
    Layout(
        'Hugging Face `rwkv7.` prefix', Side.BLINKDL, Kind.PREFIX,
        'Hugging Face ports that keep BlinkDL names under the module name `rwkv7.` (reported for transformers\' own '
        'rwkv7 port; not verified against its code here: the rule is guarded like `model.`)', (),
        NamePattern(rf'^rwkv7\.{_TOP}'), (Rename(rf'rwkv7\.({_TOP}.+)', r'\1'),),
        'stripped only before emb., blocks., ln_out. or head.'),
    Layout(
        'transformers-rwkv Rwkv7 port', Side.BLINKDL, Kind.NAMES,
        'rwkv-rs/transformers-rwkv (a transformers fork with an RWKV-7 port): BlinkDL names under `model.`, '
        '`model.embeddings.weight`, LoRA factors as nn.Linear (`att.w1.weight` = w1 transposed), `head.weight`',
        (Source('rwkv-rs/transformers-rwkv', 'src/transformers/models/rwkv7/convert_rwkv7_checkpoint_to_hf.py',
                '9b08710f0eda66ccecba21b81c3675c2a2c1c968', 'model.embeddings.weight; low-rank factors transposed'),
         Source('rwkv-rs/transformers-rwkv', 'src/transformers/models/rwkv7/modeling_rwkv7.py',
                '9b08710f0eda66ccecba21b81c3675c2a2c1c968', 'self.w1 = nn.Linear(hidden_size, decay_low_rank_dim)')),
        NamePattern(r'^blocks\.\d+\.att\.[wavg][12]\.weight$'),
        (Rename(r'model\.embeddings\.weight', 'emb.weight'),
         _block(r'att\.([wavg][12])\.weight', r'att.\2', TRANSPOSE)),
        'the guarded `model.` prefix is stripped first (layout above)'),
    Layout(
        'RWKV-block Hugging Face builder', Side.BLINKDL, Kind.DIRECTORY,
        'RWKV/RWKV-block `hf_builder`: a Hugging Face directory (architectures RWKV7ForCausalLM, RWKV7Model; '
        'model_type rwkv7, as fla writes too) holding BlinkDL names unchanged, plus `init_state.N.wkv` when '
        'state-tuned',
        (Source('RWKV/RWKV-block', 'hf_builder/hf_builder.py', '060d03ac87762620eeaa568a5438952e7a309d33',
                'RWKV7Model(config).load_state_dict(state_dict); save_pretrained'),
         Source('RWKV/RWKV-block', 'rwkv_block/v7_goose/model/rwkv7_goose_model.py',
                '060d03ac87762620eeaa568a5438952e7a309d33', 'emb, blocks, ln_out, head; init_state ParameterList')),
        NamePattern(r'^emb\.weight$'), (),
        'read as any Hugging Face directory (formats.readers.open_hf_directory); told from fla\'s by its weight names, not '
        'model_type; init_state.N.wkv is a tuned state (layout "RWKV-block tuned state")'),
    Layout(
        'RWKV-block tuned state', Side.BLINKDL, Kind.NAMES,
        'RWKV/RWKV-block models trained with `init_wkv_state`: the tuned state as `init_state.N.wkv` beside the '
        'BlinkDL names (a .pth of its state_dict, or its Hugging Face builder\'s directory)',
        (Source(_BLOCK_REPO, 'rwkv_block/v7_goose/model/rwkv7_goose_model.py', '8f6cbfef8e392019017a41be051a9b7f70c613c6',
                'init_state[i]["wkv"] = nn.Parameter(torch.zeros(C // head_size, head_size, head_size)), float32; '
                'get_init_state hands it to every block as its wkv state'),
         Source(_BLOCK_REPO, 'rwkv_block/v7_goose/model/rwkv7_goose_model.py', '060d03ac87762620eeaa568a5438952e7a309d33',
                'init_state ParameterList {"wkv": [C // 64, 64, 64]}; its default backends index the wkv state '
                '[value, key], as RWKV-LM\'s kernels do')),
        NamePattern(r'^init_state\.\d+\.wkv$'), (Rename(r'init_state\.(\d+)\.wkv', r'blocks.\1.att.time_state'),),
        'the same state as RWKV-PEFT\'s att.time_state, under another name'),
    Layout(
        'web-rwkv / ai00 `.st`', Side.BLINKDL, Kind.ORIENTATION,
        'ai00_server and web-rwkv convert scripts: safetensors, every tensor fp16, LoRA factors w1 w2 a1 a2 v1 v2 g1 '
        'g2 transposed',
        (Source('Ai00-X/ai00_server', 'assets/scripts/convert_safetensors.py', '5ff7a6a926b2b210c5e161fc7b3ebf9723ab0a1d',
                'transpose_names w1 w2 a1 a2 g1 g2 v1 v2; .half(); metadata {"format": "pt"} like any safetensors'),),
        Transposed(ST_RENAMES), ST_RENAMES,
        'told from its shapes alone (the file name and metadata are no different from any safetensors): each factor\'s '
        'orientation is read from its shape; refused when a factor is [C,C] (the shape cannot tell), read as canonical '
        'when every factor is. fp16 is what that format keeps: converting it gives the fp16 model, not the original '
        'bf16/fp32 one',
        caveat='such files keep fp16, so this converts the fp16 model, not the original weights'),
    Layout(
        'fla bare RWKV7Model', Side.FLA, Kind.PREFIX,
        'fla `RWKV7Model.save_pretrained` (no lm_head): names without `model.`', (),
        NamePattern(r'^(embeddings|layers|norm)\.'), (Rename(r'((?:embeddings|layers|norm)\..+)', r'model.\1'),)),
    Layout(
        'fla January 2025', Side.FLA, Kind.NAMES,
        'fla 0.1 RWKV-7 (added 2025-01-19): k_k, k_a and ffn.x_k stored [1,1,C]; every layer has a v_lora',
        (Source('fla-org/flash-linear-attention', 'fla/layers/rwkv7.py', '7f8c169f52c59f559be19a624c106e37a47b041d',
                'k_k, k_a [1,1,C]; v_lora built for layer 0 too'),
         Source('fla-org/flash-linear-attention', 'fla/models/rwkv7/modeling_rwkv7.py',
                '7f8c169f52c59f559be19a624c106e37a47b041d', 'ffn.x_k [1,1,C]')),
        # today's fla has the same names; only the [1,1,C] shape tells
        NamePattern(r'^model\.layers\.\d+\.(attn\.k_k|attn\.k_a|ffn\.x_k)$', rank=3),
        (Rename(r'(model\.layers\.\d+\.(?:attn\.k_k|attn\.k_a|ffn\.x_k))', r'\1', SQUEEZE),
         Rename(r'model\.layers\.0\.attn\.v_lora\..+', None)),
        'layer-0 v_lora is unused and dropped'),
    Layout(
        'fla v1 fused `x_x`', Side.FLA, Kind.NAMES,
        'fla from 2025-01-20 to 2025-04-09: the six mixing vectors stacked as attn.x_x [6,C]',
        (Source('fla-org/flash-linear-attention', 'fla/layers/rwkv7.py', '845112af30e9b7d0ce15d8e0909b1c896bca1b35',
                'x_x = nn.Parameter(torch.empty(6, hidden_size))'),
         Source('fla-org/flash-linear-attention', 'fla/layers/rwkv7.py', '6b673e6bbdda92ddb34029c70299eb6d008a178f',
                'split back into x_r ... x_g')),
        NamePattern(r'^model\.layers\.\d+\.attn\.x_x$'),
        (Rename(r'model\.layers\.(\d+)\.attn\.x_x', tuple(rf'model.layers.\1.attn.x_{c}' for c in 'rwkvag'),
                Reshape('6,C', '1,1,C', outputs=6)),),
        'row order r, w, k, v, a, g'),
)

# The BlinkDL-side names of a tuned state (formats.state_file has fla's): RWKV-PEFT's rule name and RWKV-block's
# (the layout "RWKV-block tuned state" renames the second to the first).
BLINKDL_STATE_KEY = re.compile(r'^(blocks\.\d+\.att\.time_state|init_state\.\d+\.wkv)$')
