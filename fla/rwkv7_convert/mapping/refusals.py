"""The table's one ordered registry of inputs refused with a reason (REFUSALS), by stage (file < names < shapes <
config); the first that applies wins (engine.first_refusal). Declarations only: their type, Refusal, is in schema.py,
the predicates that decide them in predicates.py.

A family to refuse: one `Refusal` at its place in REFUSALS (its stage; before any entry its inputs also match that
should not win), plus one case in `REFUSED` of tests/test_errors.py (or REFUSALS of tests/convert/test_to_blinkdl.py
for an fla input); then regenerate docs/mapping.md.
"""

from __future__ import annotations

from collections.abc import Mapping

from fla.rwkv7_convert.errors import ConfigError
from fla.rwkv7_convert.formats.readers import MAGICS
from fla.rwkv7_convert.mapping.adapter_methods import ADAPTER_FACTOR, HF_PEFT, HF_PEFT_COMMIT, mixed_methods
from fla.rwkv7_convert.mapping.ops import Shape
from fla.rwkv7_convert.mapping.predicates import (
    Absent,
    ConfigTest,
    FirstBytes,
    MixedLayouts,
    NamePattern,
    ShapeTest,
    Unreadable,
)
from fla.rwkv7_convert.mapping.schema import Refusal, Side, Source, Stage
from fla.rwkv7_convert.mapping.table import BLINKDL_STATE_KEY, RWKV_LM, RWKV_PEFT, RWKV_PEFT_COMMIT, ST_RENAMES

BLINKDL, FLA, ADAPTER = frozenset({Side.BLINKDL}), frozenset({Side.FLA}), frozenset({Side.ADAPTER})


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
            evidence=(Source(HF_PEFT, 'src/peft/utils/save_and_load.py', HF_PEFT_COMMIT,
                             'adapter_model.safetensors: base_model.model.<module>.lora_A.weight, .miss_block'),)),
    Refusal('RWKV-PEFT adapter without its base model', Stage.NAMES, BLINKDL,
            NamePattern(r'\.(lora_[AB]|init_lora_[AB]|disha)$'),
            'convert it with the model it was trained on: --rwkv7 BASE.pth --adapter ADAPTER.pth (LoRA also '
            '--lora-alpha A, PiSSA --pissa-init init_pissa.pth); rwkv7-inspect describes the adapter',
            message='holds RWKV-PEFT adapter tensors ({hits}), not a model: {reason}',
            evidence=(Source(RWKV_PEFT, 'rwkvt/lightning_train/trainer.py', RWKV_PEFT_COMMIT, 'an adapter file keeps the '
                             'factors and the trained parts only'),
                      Source(RWKV_PEFT, 'merge/merge_pissa.py', RWKV_PEFT_COMMIT, "'.init_lora_A' / '.init_lora_B'"),
                      Source(RWKV_PEFT, 'rwkvt/peft/rwkvLinear.py', RWKV_PEFT_COMMIT, 'self.disha = nn.Parameter(...)'))),
    Refusal('unmerged LoRA of another trainer', Stage.NAMES, BLINKDL, NamePattern(r'(^|\.)lora_[AB](\.|$)|\.lora\.(A|B)$'),
            'merge the adapter into its base model with the tool that trained it, then convert the merged file'),
    Refusal('PiSSA init file given as the adapter', Stage.NAMES, ADAPTER, NamePattern(r'\.init_lora_[AB]$'),
            'give it as --pissa-init and the trained adapter (rwkv-N.pth) as --adapter',
            message='holds PiSSA\'s initial factors ({hits}: init_pissa.pth), not the trained adapter: {reason}',
            evidence=(Source(RWKV_PEFT, 'rwkvt/peft/peft_loading.py', RWKV_PEFT_COMMIT, "torch.save(init_dict, "
                             "f'{args.proj_dir}/init_pissa.pth')"),)),
    Refusal('adapter without adapter tensors', Stage.NAMES, ADAPTER, Absent(ADAPTER_FACTOR.pattern, 'adapter factors'),
            'a model converts as --rwkv7, a bare tuned state with --base',
            message='holds no adapter factors (lora_A, lora_B, disha; keys: {0}, ...): not an RWKV-PEFT adapter; '
                    '{reason}'),
    Refusal('adapter mixing methods', Stage.NAMES, ADAPTER, ShapeTest(mixed_methods),
            'RWKV-PEFT trains one method per run (--peft lora, pissa or disha with one mode): merge them one at a '
            'time, each on the result of the last',
            message='mixes adapter methods in one file ({0} and {1}): {reason}',
            evidence=(Source(RWKV_PEFT, 'rwkvt/peft/rwkvLinear.py', RWKV_PEFT_COMMIT, 'make_linear_att: LoRA if r > 0, '
                             'else Bone or Bat by DiSHA_CONFIG["mode"]: one kind for every linear'),)),
    Refusal('RWKV-7 preview (x070 rc2-rc4)', Stage.NAMES, BLINKDL, NamePattern(
        r'^blocks\.\d+\.att\.(time_maa_x|time_maa_w[12]|time_kkk_w[12]|mk_w[12]|ma_w[12]|mv_w|time_misc_k|time_aaa)$',
        also=r'^blocks\.\d+\.att\.(a0|a1|time_aaaaa|time_aaa|time_aaa_w1)$'),
            'its time mix is not the released x070 (token-shift LoRA time_maa_x/time_maa_w1, extra LoRAs time_kkk_w1, '
            'mk_w1, ma_w1, a per-head value gate); fla runs only the released x070: use a released RWKV-7 model',
            evidence=(Source(RWKV_LM, 'RWKV-v7/rwkv_v7_demo.py', 'c453b42656baa206cf5e9441482c97448c0d221a', 'rc4'),
                      Source(RWKV_LM, 'RWKV-v5/src/model.py', '6b44d244e60143635c073507a4db4808b1731a32',
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
            NamePattern(BLINKDL_STATE_KEY.pattern, only=True),
            'convert it against its base model\'s converted directory: --base BASE_OUTDIR (the state alone is written, '
            'to rwkv7_state.safetensors)',
            message='holds only tuned initial states ({hits}), no model weights: {reason}',
            evidence=(Source(RWKV_PEFT, 'rwkvt/rwkv7/att.py', RWKV_PEFT_COMMIT, 'time_state [H,N,N]'),)),
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
    Refusal('web-rwkv / ai00 `.st` whose LoRA rank equals C', Stage.SHAPES, BLINKDL, Unreadable(ST_RENAMES),
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
