"""The table's RWKV-PEFT fine-tuning methods (`--adapter`), declarations only (their type, AdapterMethod, is in
schema.py; adapter_plan.py reads a file against them): per target weight, the factors of one method, merged by its
formula (adapter_ops.py, the same torch operations as RWKV-PEFT's merge scripts); every other tensor of the adapter
file is a trained full tensor (a canonical name of table.RULES) that replaces the base's, as those scripts do
(`w[k] = w_lora[k]`).

A new method: one `AdapterMethod` in ADAPTER_METHODS (factors, rank, its merge in adapter_ops.py written from the
trainer's merge script, the option it needs, its PEFT form, the `Source`s); then regenerate docs/mapping.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from fla.rwkv7_convert.mapping import adapter_ops
from fla.rwkv7_convert.mapping.ops import Shape
from fla.rwkv7_convert.mapping.schema import AdapterMethod, Factor, PeftTensor, Source
from fla.rwkv7_convert.mapping.table import RWKV_PEFT, RWKV_PEFT_COMMIT

HF_PEFT = 'huggingface/peft'
HF_PEFT_COMMIT = '5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40'
_RWKV_PEFT_TARGETS = Source(RWKV_PEFT, 'rwkvt/rwkv7/att.py', RWKV_PEFT_COMMIT,
                            'receptance, key, value, output = make_linear_att(C, C); ffn.py: key, value = '
                            'make_linear_ffn(...): the six linears an adapter may replace')
_PEFT_RWKV7 = Source(HF_PEFT, 'src/peft/utils/constants.py', HF_PEFT_COMMIT,
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
        (Source(RWKV_PEFT, 'merge/merge_lora.py', RWKV_PEFT_COMMIT, 'lora_r = w[lora_B].shape[1]; '
                'w[k] += w[lora_B] @ w[lora_A] * (lora_alpha / lora_r), lora_alpha from the command line'),
         Source(RWKV_PEFT, 'rwkvt/peft/rwkvLinear.py', RWKV_PEFT_COMMIT, 'LoraLinear: lora_A [r, in_features], lora_B '
                '[out_features, r], scaling = alpha / r'),
         Source(HF_PEFT, 'src/peft/tuners/lora/layer.py', HF_PEFT_COMMIT, 'self.scaling[adapter_name] = lora_alpha / r'),
         _RWKV_PEFT_TARGETS, _PEFT_RWKV7),
        peft_type='LORA', peft_tensors=(PeftTensor('lora_A.weight', (('lora_A', 1),)),
                                        PeftTensor('lora_B.weight', (('lora_B', 1),))), peft_alpha='alpha'),
    AdapterMethod(
        'PiSSA', (Factor('lora_A', 'r,in'), Factor('lora_B', 'out,r'), Factor('init_lora_A', 'r,in', init_file=True),
                  Factor('init_lora_B', 'out,r', init_file=True)), ('lora_B', 1),
        'W = bf16(W - B0 @ A0); W += B @ A', adapter_ops.pissa, '--pissa-init', 'LoRA',
        'a LoRA of rank 2r: lora_A = [A; A0], lora_B = [B, -B0], lora_alpha = 2r (scale 1), as PEFT converts its own '
        'PiSSA to LoRA; the merge rounds W - B0 @ A0 to bfloat16 first, the PEFT form does not',
        (Source(RWKV_PEFT, 'merge/merge.py', RWKV_PEFT_COMMIT, "init keys 'model.' + prefix + '.init_lora_A'/'_B'; "
                'w[k] = (w[k] - B0 @ A0).to(dtype=torch.bfloat16); w[k] += w[lora_B] @ w[lora_A]'),
         Source(RWKV_PEFT, 'rwkvt/peft/peft_loading.py', RWKV_PEFT_COMMIT, "init_pissa.pth: init_dict[f'{name}.init_lora_A'] "
                '= m.lora_A.data for each module of model.named_modules() (names start with model.)'),
         Source(HF_PEFT, 'src/peft/peft_model.py', HF_PEFT_COMMIT, 'path_initial_model_for_weight_conversion: '
                'peft_config.r *= 2; lora_alpha *= 2 (PiSSA saved as a LoRA of twice the rank)')),
        note='the merged target weights are bfloat16 whatever the base\'s dtype, as RWKV-PEFT\'s merge writes them',
        peft_type='LORA', peft_tensors=(PeftTensor('lora_A.weight', (('lora_A', 1), ('init_lora_A', 1)), 0),
                                        PeftTensor('lora_B.weight', (('lora_B', 1), ('init_lora_B', -1)), 1)),
        peft_alpha='rank'),
    AdapterMethod(
        'DiSHA Bone', (Factor('disha', 'r,out'),), ('disha', 0), 'W[o, j*r + i] += disha[i, o]', adapter_ops.bone, '',
        'MiSS', 'MissConfig(r, init_weights=True): miss_block [r, out] is disha as stored; PEFT\'s MiSS is the same '
        'operation (a last partial block of columns included)',
        (Source(RWKV_PEFT, 'merge/merge_disha.py', RWKV_PEFT_COMMIT, 'dim == 2: r, b = disha.shape; W.reshape(-1, in // r, r)'
                '.permute(1, 2, 0) + disha, a remainder of in % r columns gets disha.T[:, :last]'),
         Source(RWKV_PEFT, 'rwkvt/peft/rwkvLinear.py', RWKV_PEFT_COMMIT, 'BoneLinear: disha = zeros(r, out_features)'),
         Source(HF_PEFT, 'src/peft/tuners/miss/layer.py', HF_PEFT_COMMIT, 'miss_block zeros(r, out_features); '
                'get_delta_weight_miss: the same block sum'), _PEFT_RWKV7),
        peft_type='MISS', peft_tensors=(PeftTensor('miss_block', (('disha', 1),)),)),
    AdapterMethod(
        'DiSHA Bat', (Factor('disha', 'in/r,r,r'),), ('disha', 1), 'W[a, b] += W[a, b] @ disha[b] + disha[b] (r x r '
        'blocks)', adapter_ops.bat, '', '',
        'PEFT\'s MiSS "bat" keeps one block per output block ([out/r, r, r]), RWKV-PEFT\'s Bat one per input block '
        '([in/r, r, r]): not the same operation, so only the merged form carries it',
        (Source(RWKV_PEFT, 'merge/merge_disha.py', RWKV_PEFT_COMMIT, "dim == 3: rearrange(W, '(a r1) (b r2) -> a b r1 r2') "
                '@ disha + disha, added to W'),
         Source(RWKV_PEFT, 'rwkvt/peft/rwkvLinear.py', RWKV_PEFT_COMMIT, 'BatLinear: disha = zeros(in_features // r, r, r)'),
         Source(HF_PEFT, 'src/peft/tuners/miss/layer.py', HF_PEFT_COMMIT, 'reset_bat_parameters: zeros(out_features '
                '// r, r, r); W.reshape(out // r, r, in // r, r).permute(2, 0, 1, 3) @ miss_block'))),
)

# What RWKV-PEFT saves besides the factors: full tensors of the parameters it trained.
TRAINED_EVIDENCE = (
    Source(RWKV_PEFT, 'rwkvt/lightning_train/trainer.py', RWKV_PEFT_COMMIT, 'on_train_epoch_end keeps names containing a '
           'train_parts entry, the method\'s name (lora, disha), and emb/head/ln when trained from scratch'),
    Source(RWKV_PEFT, 'rwkvt/args_type.py', RWKV_PEFT_COMMIT, 'train_parts default ["time", "ln"]: in RWKV-7 every LayerNorm '
           '(ln0, ln1, ln2, ln_x, ln_out) and time_state'),
    Source(RWKV_PEFT, 'merge/merge_lora.py', RWKV_PEFT_COMMIT, 'for k in w_lora: w[k] = w_lora[k] (a trained tensor replaces '
           'the base\'s)'),
)
# Trained full tensors PEFT carries as `modules_to_save`: the fla modules (the last part of the name) whose every
# parameter is a rule's tensor; a trained tensor of another module (x_*, w0, r_k, ...) has no PEFT form.
PEFT_MODULES: dict[str, tuple[str, ...]] = {
    'pre_norm': ('weight', 'bias'), 'attn_norm': ('weight', 'bias'), 'ffn_norm': ('weight', 'bias'),
    'g_norm': ('weight', 'bias'), 'norm': ('weight', 'bias'), 'embeddings': ('weight',), 'lm_head': ('weight',)}
PEFT_MODULES_EVIDENCE = Source(HF_PEFT, 'src/peft/utils/other.py', HF_PEFT_COMMIT,
                               'ModulesToSaveWrapper: a whole module copied and trained; saved under its own name')

# an adapter factor beside a target weight: `<target>.<suffix>` (PiSSA's init file holds the init_ ones)
ADAPTER_FACTOR = re.compile(r'^(?P<target>.+)\.(?P<suffix>lora_A|lora_B|init_lora_A|init_lora_B|disha)$')


def adapter_method_of(signature: frozenset[tuple[str, int]]) -> list[AdapterMethod]:
    """The methods whose adapter-file factors are exactly `signature` ((suffix, ndim) pairs): LoRA and PiSSA share."""
    return [m for m in ADAPTER_METHODS if m.signature() == signature]


def mixed_methods(shapes: Mapping[str, Shape]) -> list[str]:
    """Factors of two methods in one adapter file (LoRA's lora_A/B beside disha, or Bone's [r, out] disha beside
    Bat's [in/r, r, r])."""
    kinds: dict[str, str] = {}
    for name, shape in shapes.items():
        m = ADAPTER_FACTOR.match(name)
        if m and not m['suffix'].startswith('init_'):
            found = [x.name for x in ADAPTER_METHODS if (m['suffix'], len(shape)) in x.signature()]
            kinds.setdefault(' or '.join(dict.fromkeys(found)) or f'{m["suffix"]} of {len(shape)} dims', name)
    return [f'{kind} ({name})' for kind, name in kinds.items()] if len(kinds) > 1 else []
