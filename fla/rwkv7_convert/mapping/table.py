"""The one name table between BlinkDL's RWKV-LM checkpoints and fla's RWKV7ForCausalLM, read in both directions.
Declarations only (their types are in schema.py, the ops in ops.py); engine.py executes them, nothing else.

- `RULES`: each canonical RWKV-LM tensor, its fla counterpart, its shape in symbols and the `Op` that turns the
  BlinkDL tensor into the fla one (its `reverse`, which every converted rule must have, goes back).
- Normalizations, executed before lookup: wrapper prefixes of every name (`PREFIXES`), wrapper keys of nested state
  dicts (`WRAPPER_KEYS`), stored shapes accepted for a canonical one (`SHAPE_ALIASES`); an absent optional tensor is
  `optional=True` on its rule.
- `LAYOUTS`: the ways files are stored in practice, each detected by its own predicate (`detect`, over names and
  shapes) and brought to canonical names and shapes by its `Rename`s.
- `REFUSALS`: the one ordered registry of inputs refused with a reason, by stage (file < names < shapes < config);
  the first that applies wins.

What to add:
- a naming, prefix or orientation variant: one `Layout` in LAYOUTS (who writes it, the `Source` you verified, a
  `detect` predicate only files in that layout satisfy, one `Rename` per stored name with the `Op` that makes it
  canonical), plus one writer in `LAYOUT_WRITERS` (or `FLA_LAYOUT_WRITERS`) of tests/rwkv7_factory.py;
- a new wrapper prefix of every name: one entry in PREFIXES; a new stored shape of a canonical one: one ShapeAlias;
- a family to refuse: one `Refusal` at its place in REFUSALS (its stage; before any entry its inputs also match
  that should not win), plus one case in `REFUSED` of tests/test_errors.py (or REFUSALS of
  tests/convert/test_to_blinkdl.py for an fla input);
then regenerate docs/mapping.md: `python -m fla.rwkv7_convert.mapping.docs > docs/mapping.md`.

Symbols: V vocab, C hidden size, H heads, N head size (C = H*N), F FFN width, Dw/Da/Dv/Dg the LoRA ranks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from fla.rwkv7_convert.errors import ConfigError
from fla.rwkv7_convert.formats.readers import MAGICS
from fla.rwkv7_convert.mapping import adapter_ops
from fla.rwkv7_convert.mapping.ops import (
    DROP_UNIT_DIMS,
    IDENTITY,
    SQUEEZE,
    SWAP_LAST_TWO,
    TRANSPOSE,
    Op,
    Orient,
    Shape,
    Split,
)
from fla.rwkv7_convert.mapping.schema import (
    Absent,
    AdapterMethod,
    ConfigTest,
    Factor,
    FirstBytes,
    Kind,
    Layout,
    MixedLayouts,
    NamePattern,
    PeftTensor,
    Refusal,
    Rename,
    Rule,
    Scope,
    ShapeAlias,
    ShapeTest,
    Side,
    Source,
    Stage,
    Target,
    Transposed,
    Unreadable,
)

ALL, FIRST, REST, GLOBAL = Scope.ALL, Scope.FIRST, Scope.REST, Scope.GLOBAL
BLINKDL, FLA, ADAPTER = frozenset({Side.BLINKDL}), frozenset({Side.FLA}), frozenset({Side.ADAPTER})

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


_PEFT = 'JL-er/RWKV-PEFT'
_PEFT_COMMIT = '5b8aac9cbed9474fb9f13332ffe9bd1aa377b7d2'
_BLOCK_REPO = 'RWKV/RWKV-block'
_STATE_NOTE = ('a tuned initial wkv state (state tuning): written to rwkv7_state.safetensors, not to the weights, in its '
               'stored dtype whatever --precision says (fla keeps the state in float32); every block has one or none')
_STATE_EVIDENCE = (
    Source(_PEFT, 'rwkvt/rwkv7/att.py', _PEFT_COMMIT, 'self.time_state = nn.Parameter(torch.zeros(H, N, N)): float32, '
           'saved as trained'),
    Source(_PEFT, 'rwkvt/operator/rwkvop.py', _PEFT_COMMIT, 's = s.transpose(1, 2) before chunk_rwkv7(initial_state=s): '
           'time_state is [head, value, key], fla\'s initial_state [head, key, value]'),
    Source(_PEFT, 'merge/merge_state.py', _PEFT_COMMIT, 'w[k] = w_state[k]: a merge is the base dict plus time_state'),
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
    Rule('blocks.{i}.att.time_state', 'model.layers.{i}.attn.initial_state', 'H,N,N', SWAP_LAST_TWO, optional=True,
         note=_STATE_NOTE, target=Target.STATE, evidence=_STATE_EVIDENCE),
    Rule('ln_out.weight', 'model.norm.weight', 'C', layers=GLOBAL),
    Rule('ln_out.bias', 'model.norm.bias', 'C', layers=GLOBAL),
    Rule('head.weight', 'lm_head.weight', 'V,C', layers=GLOBAL),
)

SIZES = {'V': 'the vocabulary size', 'C': 'the hidden size', 'H': 'the head count', 'N': 'the head size',
         'F': 'the FFN width', 'Dw': 'the decay LoRA rank', 'Da': 'the a LoRA rank', 'Dv': 'the value LoRA rank',
         'Dg': 'the gate LoRA rank'}

# --------------------------------------------------------------------------------------------------------- adapters
# RWKV-PEFT fine-tunes (`--adapter`): per target weight, the factors of one method, merged by its formula
# (adapter_ops.py, the same torch operations as RWKV-PEFT's merge scripts); every other tensor of the adapter file is
# a trained full tensor (a canonical name of RULES) that replaces the base's, as those scripts do (`w[k] = w_lora[k]`).

_HF_PEFT = 'huggingface/peft'
_HF_PEFT_COMMIT = '5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40'
_RWKV_PEFT_TARGETS = Source(_PEFT, 'rwkvt/rwkv7/att.py', _PEFT_COMMIT,
                            'receptance, key, value, output = make_linear_att(C, C); ffn.py: key, value = '
                            'make_linear_ffn(...): the six linears an adapter may replace')
_PEFT_RWKV7 = Source(_HF_PEFT, 'src/peft/utils/constants.py', _HF_PEFT_COMMIT,
                     '"rwkv7": r_proj, k_proj, v_proj, o_proj, key, value (LoRA and MiSS target modules)')

# The target weights an adapter may attach to: RWKV-LM names of RULES (their fla modules are PEFT's targets).
ADAPTER_TARGETS: tuple[str, ...] = tuple(f'blocks.{{i}}.{t}.weight' for t in (
    'att.receptance', 'att.key', 'att.value', 'att.output', 'ffn.key', 'ffn.value'))

# Where RWKV-PEFT keeps a LoRA's alpha (the file does not): said by the refusal of a LoRA merge without --lora-alpha.
LORA_ALPHA_HOME = ('RWKV-PEFT keeps alpha outside the file: the training command\'s --lora_config "lora_alpha" '
                   '(default 32) and merge/merge.py\'s --lora_alpha (default 16) or merge_lora.py\'s first argument')

ADAPTER_METHODS: tuple[AdapterMethod, ...] = (
    AdapterMethod(
        'LoRA', (Factor('lora_A', 'r,in'), Factor('lora_B', 'out,r')), ('lora_B', 1), 'W += B @ A * (alpha / r)',
        adapter_ops.lora, '--lora-alpha', 'LoRA',
        'LoraConfig(r, lora_alpha = alpha): lora_A.weight [r, in] and lora_B.weight [out, r] as stored (PEFT scales '
        'by lora_alpha / r too)',
        (Source(_PEFT, 'merge/merge_lora.py', _PEFT_COMMIT, 'lora_r = w[lora_B].shape[1]; '
                'w[k] += w[lora_B] @ w[lora_A] * (lora_alpha / lora_r), lora_alpha from the command line'),
         Source(_PEFT, 'rwkvt/peft/rwkvLinear.py', _PEFT_COMMIT, 'LoraLinear: lora_A [r, in_features], lora_B '
                '[out_features, r], scaling = alpha / r'),
         Source(_HF_PEFT, 'src/peft/tuners/lora/layer.py', _HF_PEFT_COMMIT, 'self.scaling[adapter_name] = lora_alpha / r'),
         _RWKV_PEFT_TARGETS, _PEFT_RWKV7),
        peft_type='LORA', peft_tensors=(PeftTensor('lora_A.weight', (('lora_A', 1),)),
                                        PeftTensor('lora_B.weight', (('lora_B', 1),))), peft_alpha='alpha'),
    AdapterMethod(
        'PiSSA', (Factor('lora_A', 'r,in'), Factor('lora_B', 'out,r'), Factor('init_lora_A', 'r,in', init_file=True),
                  Factor('init_lora_B', 'out,r', init_file=True)), ('lora_B', 1),
        'W = bf16(W - B0 @ A0); W += B @ A', adapter_ops.pissa, '--pissa-init', 'LoRA',
        'a LoRA of rank 2r: lora_A = [A; A0], lora_B = [B, -B0], lora_alpha = 2r (scale 1), as PEFT converts its own '
        'PiSSA to LoRA; the merge rounds W - B0 @ A0 to bfloat16 first, the PEFT form does not',
        (Source(_PEFT, 'merge/merge.py', _PEFT_COMMIT, "init keys 'model.' + prefix + '.init_lora_A'/'_B'; "
                'w[k] = (w[k] - B0 @ A0).to(dtype=torch.bfloat16); w[k] += w[lora_B] @ w[lora_A]'),
         Source(_PEFT, 'rwkvt/peft/peft_loading.py', _PEFT_COMMIT, "init_pissa.pth: init_dict[f'{name}.init_lora_A'] "
                '= m.lora_A.data for each module of model.named_modules() (names start with model.)'),
         Source(_HF_PEFT, 'src/peft/peft_model.py', _HF_PEFT_COMMIT, 'path_initial_model_for_weight_conversion: '
                'peft_config.r *= 2; lora_alpha *= 2 (PiSSA saved as a LoRA of twice the rank)')),
        note='the merged target weights are bfloat16 whatever the base\'s dtype, as RWKV-PEFT\'s merge writes them',
        peft_type='LORA', peft_tensors=(PeftTensor('lora_A.weight', (('lora_A', 1), ('init_lora_A', 1)), 0),
                                        PeftTensor('lora_B.weight', (('lora_B', 1), ('init_lora_B', -1)), 1)),
        peft_alpha='rank'),
    AdapterMethod(
        'DiSHA Bone', (Factor('disha', 'r,out'),), ('disha', 0), 'W[o, j*r + i] += disha[i, o]', adapter_ops.bone, '',
        'MiSS', 'MissConfig(r, init_weights=True): miss_block [r, out] is disha as stored; PEFT\'s MiSS is the same '
        'operation (a last partial block of columns included)',
        (Source(_PEFT, 'merge/merge_disha.py', _PEFT_COMMIT, 'dim == 2: r, b = disha.shape; W.reshape(-1, in // r, r)'
                '.permute(1, 2, 0) + disha, a remainder of in % r columns gets disha.T[:, :last]'),
         Source(_PEFT, 'rwkvt/peft/rwkvLinear.py', _PEFT_COMMIT, 'BoneLinear: disha = zeros(r, out_features)'),
         Source(_HF_PEFT, 'src/peft/tuners/miss/layer.py', _HF_PEFT_COMMIT, 'miss_block zeros(r, out_features); '
                'get_delta_weight_miss: the same block sum'), _PEFT_RWKV7),
        peft_type='MISS', peft_tensors=(PeftTensor('miss_block', (('disha', 1),)),)),
    AdapterMethod(
        'DiSHA Bat', (Factor('disha', 'in/r,r,r'),), ('disha', 1), 'W[a, b] += W[a, b] @ disha[b] + disha[b] (r x r '
        'blocks)', adapter_ops.bat, '', '',
        'PEFT\'s MiSS "bat" keeps one block per output block ([out/r, r, r]), RWKV-PEFT\'s Bat one per input block '
        '([in/r, r, r]): not the same operation, so only the merged form carries it',
        (Source(_PEFT, 'merge/merge_disha.py', _PEFT_COMMIT, "dim == 3: rearrange(W, '(a r1) (b r2) -> a b r1 r2') "
                '@ disha + disha, added to W'),
         Source(_PEFT, 'rwkvt/peft/rwkvLinear.py', _PEFT_COMMIT, 'BatLinear: disha = zeros(in_features // r, r, r)'),
         Source(_HF_PEFT, 'src/peft/tuners/miss/layer.py', _HF_PEFT_COMMIT, 'reset_bat_parameters: zeros(out_features '
                '// r, r, r); W.reshape(out // r, r, in // r, r).permute(2, 0, 1, 3) @ miss_block'))),
)

# What RWKV-PEFT saves besides the factors: full tensors of the parameters it trained.
TRAINED_EVIDENCE = (
    Source(_PEFT, 'rwkvt/lightning_train/trainer.py', _PEFT_COMMIT, 'on_train_epoch_end keeps names containing a '
           'train_parts entry, the method\'s name (lora, disha), and emb/head/ln when trained from scratch'),
    Source(_PEFT, 'rwkvt/args_type.py', _PEFT_COMMIT, 'train_parts default ["time", "ln"]: in RWKV-7 every LayerNorm '
           '(ln0, ln1, ln2, ln_x, ln_out) and time_state'),
    Source(_PEFT, 'merge/merge_lora.py', _PEFT_COMMIT, 'for k in w_lora: w[k] = w_lora[k] (a trained tensor replaces '
           'the base\'s)'),
)
# Trained full tensors PEFT carries as `modules_to_save`: the fla modules (the last part of the name) whose every
# parameter is a rule's tensor; a trained tensor of another module (x_*, w0, r_k, ...) has no PEFT form.
PEFT_MODULES: dict[str, tuple[str, ...]] = {
    'pre_norm': ('weight', 'bias'), 'attn_norm': ('weight', 'bias'), 'ffn_norm': ('weight', 'bias'),
    'g_norm': ('weight', 'bias'), 'norm': ('weight', 'bias'), 'embeddings': ('weight',), 'lm_head': ('weight',)}
PEFT_MODULES_EVIDENCE = Source(_HF_PEFT, 'src/peft/utils/other.py', _HF_PEFT_COMMIT,
                               'ModulesToSaveWrapper: a whole module copied and trained; saved under its own name')

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


_RWKV_LM = 'BlinkDL/RWKV-LM'
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
    _block(r'att\.time_faaaa', 'att.r_k', DROP_UNIT_DIMS),  # stored [1,1,H,N]
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
_ST_RENAMES = (_block(r'att\.([wavg]1)', r'att.\2', Orient(0)), _block(r'att\.([wavg]2)', r'att.\2', Orient(1)))
_TOP = r'(?:emb|blocks|ln_out|head)\.'

LAYOUTS: tuple[Layout, ...] = (
    Layout(
        'rc4a training names', Side.BLINKDL, Kind.NAMES,
        'RWKV-LM `RWKV-v5/src/model.py` (x070) from 2024-11-23 until the rename of 2024-11-29',
        (Source(_RWKV_LM, 'RWKV-v5/src/model.py', '69bb58521462382c10fb61939272d95fefb8df23',
                'introduces these names with the final x070 equations ("change all to rwkv-7-rc4a")'),
         Source(_RWKV_LM, 'RWKV-v5/src/model.py', '348e56eca683609e92a77256587bea5b23a512c3',
                '"better names": a pure rename to x_*, w0.., k_k, k_a, r_k; the forward pass is unchanged')),
        NamePattern(r'^blocks\.\d+\.att\.(time_aaaaa|time_misc_kkk|mv_w1)$'), _RC4A_TRAIN_RENAMES,
        'time_faaaa is [1,1,H,N], reshaped to r_k [H,N]; the CUDA kernel change in between (wkv7.cu) only '
        'stopped caching v in registers'),
    Layout(
        'rc4a demo names', Side.BLINKDL, Kind.NAMES,
        'RWKV-LM `RWKV-v7/rwkv_v7_demo.py` of the rc4a release (it loads files in these names strictly)',
        (Source(_RWKV_LM, 'RWKV-v7/rwkv_v7_demo.py', '218a94cf373a04bd906e7a234134227ac03c2641',
                'rwkv-7 release ("rc4a"): xx_*, ww_*, aa_*, vv_*, gg_*, kk_s, ka_s, rk_s'),
         Source(_RWKV_LM, 'RWKV-v7/rwkv_v7_demo.py', '02bc67aa1e509ee55bb5de74b17b62437605ab77',
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
        Transposed(_ST_RENAMES), _ST_RENAMES,
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
        (Rename(r'model\.layers\.(\d+)\.attn\.x_x', tuple(rf'model.layers.\1.attn.x_{c}' for c in 'rwkvag'), Split(6)),),
        'row order r, w, k, v, a, g'),
)

# ------------------------------------------------------------------------------------------------------- refusals


def _package_dump(shapes: Mapping[str, Shape]) -> list[str]:
    """Signs of `torch.save(model.z)` from BlinkDL's `rwkv` package: empty tensors, `head` stored [C,V]."""
    hits = [n for n, s in shapes.items() if 0 in s]
    emb, head = shapes.get('emb.weight'), shapes.get('head.weight')
    if emb and head and len(emb) == 2 and emb[0] != emb[1] and head == (emb[1], emb[0]):
        hits.append('head.weight [C,V]')
    return hits


# Each config.json check assumes the ones before it passed (hidden_size is a positive integer from its entry on).

def _model_type(cfg: Mapping) -> list[str]:
    """`model_type` other than "rwkv7"."""
    model_type = cfg.get('model_type')
    if model_type == 'rwkv7':
        return []
    hint = {'rwkv': ' (Hugging Face RWKV-4)', 'rwkv6': ' (RWKV-6)', 'rwkv5': ' (RWKV-5)'}.get(str(model_type), '')
    return [f'{model_type!r}{hint}']


def _hidden_size(cfg: Mapping) -> list[str]:
    """`hidden_size` not a positive integer."""
    C = cfg.get('hidden_size')
    return [] if isinstance(C, int) and C > 0 else [repr(C)]


def _attn(cfg: Mapping) -> list[str]:
    """`attn` set (hybrid softmax-attention layers)."""
    if not cfg.get('attn'):
        return []
    layers = cfg['attn'].get('layers') if isinstance(cfg['attn'], dict) else None
    return [f'attn is set (hybrid softmax-attention layers {layers}); RWKV-LM has no attention layers']


def _hidden_act(cfg: Mapping) -> list[str]:
    """`hidden_act` other than sqrelu."""
    if cfg.get('hidden_act', 'sqrelu') == 'sqrelu':
        return []
    return [f'hidden_act is {cfg["hidden_act"]!r}; RWKV-LM\'s channel mix is relu(x)^2 (sqrelu)']


def _norm_first(cfg: Mapping) -> list[str]:
    """`norm_first` false (no pre_norm after the embedding)."""
    if cfg.get('norm_first', True) is True:
        return []
    return ['norm_first is false, so the model has no pre_norm after the embedding; RWKV-LM always applies ln0']


def _norm_bias(cfg: Mapping) -> list[str]:
    """`norm_bias` false (LayerNorms without bias)."""
    if cfg.get('norm_bias', True) is True:
        return []
    return ['norm_bias is false (LayerNorms without bias); RWKV-LM\'s LayerNorms always have one']


def _value_dim(cfg: Mapping) -> list[str]:
    """`value_dim` other than hidden_size (for any layer)."""
    value_dim, C = cfg.get('value_dim'), cfg['hidden_size']
    if value_dim is None or all(v == C for v in (value_dim if isinstance(value_dim, list) else [value_dim])):
        return []
    return [f'value_dim is {value_dim} but hidden_size is {C}; RWKV-LM\'s values are as wide as the model']


def _heads(cfg: Mapping) -> list[str]:
    """`head_dim` x `num_heads` (either one derived from the other) other than hidden_size."""
    C, head_dim, num_heads = cfg['hidden_size'], cfg.get('head_dim'), cfg.get('num_heads')
    if head_dim is None and num_heads:
        head_dim = C // num_heads
    if num_heads is None and head_dim:
        num_heads = C // head_dim
    if head_dim and num_heads and head_dim * num_heads == C:
        return []
    return [f'head_dim {cfg.get("head_dim")} x num_heads {cfg.get("num_heads")} != hidden_size {C}']


def _norm_eps(cfg: Mapping) -> list[str]:
    """`norm_eps` not a floating-point number."""
    eps = cfg.get('norm_eps', 0.0)
    if isinstance(eps, (int, float)):
        try:  # an int beyond float's range (10**400) is a number too, but not one an eps can be
            float(eps)
            return []
        except OverflowError:
            pass
    return [repr(eps)]


# an adapter factor beside a target weight: `<target>.<suffix>` (PiSSA's init file holds the init_ ones)
ADAPTER_FACTOR = re.compile(r'^(?P<target>.+)\.(?P<suffix>lora_A|lora_B|init_lora_A|init_lora_B|disha)$')


def adapter_method_of(signature: frozenset[tuple[str, int]]) -> list[AdapterMethod]:
    """The methods whose adapter-file factors are exactly `signature` ((suffix, ndim) pairs): LoRA and PiSSA share."""
    return [m for m in ADAPTER_METHODS if m.signature() == signature]


def _mixed_methods(shapes: Mapping[str, Shape]) -> list[str]:
    """Factors of two methods in one adapter file (LoRA's lora_A/B beside disha, or Bone's [r, out] disha beside
    Bat's [in/r, r, r])."""
    kinds: dict[str, str] = {}
    for name, shape in shapes.items():
        m = ADAPTER_FACTOR.match(name)
        if m and not m['suffix'].startswith('init_'):
            found = [x.name for x in ADAPTER_METHODS if (m['suffix'], len(shape)) in x.signature()]
            kinds.setdefault(' or '.join(dict.fromkeys(found)) or f'{m["suffix"]} of {len(shape)} dims', name)
    return [f'{kind} ({name})' for kind, name in kinds.items()] if len(kinds) > 1 else []


STATE_TENSOR = re.compile(r'^(blocks\.\d+\.att\.time_state|init_state\.\d+\.wkv)$')
_CANNOT = "config.json: {0}; BlinkDL's RWKV-7 cannot express this model"

REFUSALS: tuple[Refusal, ...] = (
    # ----- file: decided by formats.readers from the first bytes
    *[Refusal(f.what, Stage.FILE, BLINKDL, FirstBytes(f.recognised), f.instead,
              message='this is {variant}, not a PyTorch zip or safetensors file: {reason}') for f in MAGICS],
    # ----- names (after the layouts' renames)
    Refusal('file mixing layouts', Stage.NAMES, BLINKDL | FLA, MixedLayouts(),
            'a file holds one: re-save it from one training run',
            message='mixes two layouts, {0} and {1}; {reason}'),
    Refusal('Hugging Face PEFT adapter', Stage.NAMES, BLINKDL,
            NamePattern(r'\.(lora_[AB]\.weight|miss_block)$'),
            'it is an adapter for an fla model, not an RWKV-LM checkpoint; load it with peft onto its base model\'s '
            'converted directory (PeftModel.from_pretrained)',
            evidence=(Source(_HF_PEFT, 'src/peft/utils/save_and_load.py', _HF_PEFT_COMMIT,
                             'adapter_model.safetensors: base_model.model.<module>.lora_A.weight, .miss_block'),)),
    Refusal('RWKV-PEFT adapter without its base model', Stage.NAMES, BLINKDL,
            NamePattern(r'\.(lora_[AB]|init_lora_[AB]|disha)$'),
            'convert it with the model it was trained on: --rwkv7 BASE.pth --adapter ADAPTER.pth (LoRA also '
            '--lora-alpha A, PiSSA --pissa-init init_pissa.pth); rwkv7-inspect describes the adapter',
            message='holds RWKV-PEFT adapter tensors ({hits}), not a model: {reason}',
            evidence=(Source(_PEFT, 'rwkvt/lightning_train/trainer.py', _PEFT_COMMIT, 'an adapter file keeps the '
                             'factors and the trained parts only'),
                      Source(_PEFT, 'merge/merge_pissa.py', _PEFT_COMMIT, "'.init_lora_A' / '.init_lora_B'"),
                      Source(_PEFT, 'rwkvt/peft/rwkvLinear.py', _PEFT_COMMIT, 'self.disha = nn.Parameter(...)'))),
    Refusal('unmerged LoRA of another trainer', Stage.NAMES, BLINKDL, NamePattern(r'(^|\.)lora_[AB](\.|$)|\.lora\.(A|B)$'),
            'merge the adapter into its base model with the tool that trained it, then convert the merged file'),
    Refusal('PiSSA init file given as the adapter', Stage.NAMES, ADAPTER, NamePattern(r'\.init_lora_[AB]$'),
            'give it as --pissa-init and the trained adapter (rwkv-N.pth) as --adapter',
            message='holds PiSSA\'s initial factors ({hits}: init_pissa.pth), not the trained adapter: {reason}',
            evidence=(Source(_PEFT, 'rwkvt/peft/peft_loading.py', _PEFT_COMMIT, "torch.save(init_dict, "
                             "f'{args.proj_dir}/init_pissa.pth')"),)),
    Refusal('adapter without adapter tensors', Stage.NAMES, ADAPTER, Absent(ADAPTER_FACTOR.pattern, 'adapter factors'),
            'a model converts as --rwkv7, a bare tuned state with --base',
            message='holds no adapter factors (lora_A, lora_B, disha; keys: {0}, ...): not an RWKV-PEFT adapter; '
                    '{reason}'),
    Refusal('adapter mixing methods', Stage.NAMES, ADAPTER, ShapeTest(_mixed_methods),
            'RWKV-PEFT trains one method per run (--peft lora, pissa or disha with one mode): merge them one at a '
            'time, each on the result of the last',
            message='mixes adapter methods in one file ({0} and {1}): {reason}',
            evidence=(Source(_PEFT, 'rwkvt/peft/rwkvLinear.py', _PEFT_COMMIT, 'make_linear_att: LoRA if r > 0, '
                             'else Bone or Bat by DiSHA_CONFIG["mode"]: one kind for every linear'),)),
    Refusal('RWKV-7 preview (x070 rc2-rc4)', Stage.NAMES, BLINKDL, NamePattern(
        r'^blocks\.\d+\.att\.(time_maa_x|time_maa_w[12]|time_kkk_w[12]|mk_w[12]|ma_w[12]|mv_w|time_misc_k|time_aaa)$',
        also=r'^blocks\.\d+\.att\.(a0|a1|time_aaaaa|time_aaa|time_aaa_w1)$'),
            'its time mix is not the released x070 (token-shift LoRA time_maa_x/time_maa_w1, extra LoRAs time_kkk_w1, '
            'mk_w1, ma_w1, a per-head value gate); fla runs only the released x070: use a released RWKV-7 model',
            evidence=(Source(_RWKV_LM, 'RWKV-v7/rwkv_v7_demo.py', 'c453b42656baa206cf5e9441482c97448c0d221a', 'rc4'),
                      Source(_RWKV_LM, 'RWKV-v5/src/model.py', '6b44d244e60143635c073507a4db4808b1731a32',
                             'mv_w [C,H], time_aaa, time_misc_k'))),
    Refusal('RWKV7-Qwen2 hybrid', Stage.NAMES, BLINKDL,
            NamePattern(r'^model\.layers\.\d+\.self_attn\.(x_[rwkvag]|w[012]|k_k|k_a|r_k)$'),
            'RWKV-7 time mixing inside a Qwen2 transformer is a different model from fla\'s RWKV7ForCausalLM; run it '
            'with the modeling code it ships with'),
    Refusal('RWKV-7a "DeepEmbed"', Stage.NAMES, BLINKDL, NamePattern(r'^blocks\.\d+\.ffn\.(s_emb(_x)?\.weight|s[012])$'),
            'its channel mix multiplies by a per-token deep embedding that fla\'s RWKV7ForCausalLM does not have'),
    Refusal('RWKV-8 hybrid', Stage.NAMES, BLINKDL, NamePattern(r'^blocks\.\d+\.qkv\.emm'),
            'it mixes an RWKV-8 embedding branch (qkv.emm, enn) into the time mix, which fla cannot run'),
    Refusal('RWKV-7b "DEA"', Stage.NAMES, BLINKDL, NamePattern(r'^blocks\.\d+\.qkv\.'),
            'it adds a softmax attention branch (qkv.*) beside the RWKV-7 time mix, which fla cannot run'),
    Refusal('RWKV-8', Stage.NAMES, BLINKDL, NamePattern(r'^blocks\.\d+\.ffn\.enn\.'),
            'its channel mix is gated by a per-token embedding (ffn.enn), a different architecture'),
    Refusal('RWKV-6 or older', Stage.NAMES, BLINKDL, NamePattern(
        r'^blocks\.\d+\.att\.(time_decay|time_faaaa|time_first|time_mix_\w+|time_maa_\w+)$',
        unless=r'^blocks\.\d+\.att\.(r_k|k_k)$'),
            'this is an RWKV-4/5/6 checkpoint; fla has separate models (RWKV6ForCausalLM) and converters for those'),
    Refusal('RWKV state-tuning file without its base model', Stage.NAMES, BLINKDL,
            NamePattern(STATE_TENSOR.pattern, only=True),
            'convert it against its base model\'s converted directory: --base BASE_OUTDIR (the state alone is written, '
            'to rwkv7_state.safetensors)',
            message='holds only tuned initial states ({hits}), no model weights: {reason}',
            evidence=(Source(_PEFT, 'rwkvt/rwkv7/att.py', _PEFT_COMMIT, 'time_state [H,N,N]'),)),
    Refusal('fla / Hugging Face RWKV-7 state dict', Stage.NAMES, BLINKDL,
            NamePattern(r'^(model\.(layers|embeddings)\.|lm_head\.)'),
            'it is already in fla\'s naming; rwkv7-export --model DIR --output OUT.pth takes an fla directory back to '
            'RWKV-LM format',
            other_direction=True),
    Refusal('anything else', Stage.NAMES, BLINKDL,
            Absent(r'\.att\.(r_k|k_k)\Z', '`blocks.*.att.r_k` / `att.k_k` tensors'), 'not an RWKV-7 checkpoint',
            message='not an RWKV-7 checkpoint: no blocks.*.att.r_k / att.k_k tensors (keys: {0}, ...)'),
    Refusal('ln0 folded into emb', Stage.NAMES, BLINKDL,
            NamePattern(r'^emb\.weight\Z', unless=r'^blocks\.0\.ln0\.(weight|bias)\Z'),
            'no LayerNorm fla could add undoes the fold; convert the original file',
            message='blocks.0.ln0.weight/bias are missing: ln0 was probably folded into emb.weight (as BlinkDL\'s '
                    'runtimes do at load time); fla applies ln0 itself, and no LayerNorm can be added that undoes a fold, '
                    'so this file cannot be converted exactly; convert the original training checkpoint instead'),
    Refusal('RWKV-LM names given to the export', Stage.NAMES, FLA, NamePattern(r'^blocks\.', unless=r'^(model|layers)\.'),
            'nothing to convert', message='the weights already have RWKV-LM names (blocks.*); {reason}',
            other_direction=True),
    # ----- shapes
    Refusal('web-rwkv / ai00 `.st` whose LoRA rank equals C', Stage.SHAPES, BLINKDL, Unreadable(_ST_RENAMES),
            'the orientation of that factor cannot be read from its shape; convert the original RWKV-LM .pth',
            message='this is a web-rwkv / ai00 `.st` file whose LoRA rank equals the hidden size C = {0} ({1} is '
                    '[{0},{0}]), so {reason}'),
    Refusal('in-memory dump of BlinkDL\'s `rwkv` package', Stage.SHAPES, BLINKDL, ShapeTest(_package_dump),
            'torch.save(model.z) keeps the package\'s runtime form: matrices and head transposed for x @ W, ln0 folded '
            'into emb.weight, empty layer-0 v0/v1/v2; that cannot be undone exactly: convert the .pth the package '
            'loaded'),
    # ----- config.json (fla input)
    Refusal('another model type', Stage.CONFIG, FLA, ConfigTest(_model_type), 'fla\'s RWKV7ForCausalLM is "rwkv7"',
            message='config.json model_type is {0}, expected "rwkv7" (fla\'s RWKV7ForCausalLM)'),
    Refusal('config without a hidden size', Stage.CONFIG, FLA, ConfigTest(_hidden_size), 'expected a positive integer',
            message='config.json hidden_size is {0}, expected a positive integer', error=ConfigError),
    *[Refusal(variant, Stage.CONFIG, FLA, ConfigTest(test), 'BlinkDL\'s RWKV-7 cannot express this model',
              message=_CANNOT) for variant, test in (
        ('fla hybrid with attention layers', _attn), ('another activation', _hidden_act),
        ('model without pre_norm', _norm_first), ('LayerNorms without bias', _norm_bias),
        ('values wider or narrower than the model', _value_dim), ('heads that do not tile the hidden size', _heads))],
    Refusal('config with a non-numeric norm_eps', Stage.CONFIG, FLA, ConfigTest(_norm_eps),
            'expected a floating-point number', message='config.json norm_eps is {0}, {reason}', error=ConfigError),
)
