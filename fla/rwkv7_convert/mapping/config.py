"""Model dimensions (Dims; sizes.py reads them from tensor shapes), the fla config.json that reproduces BlinkDL's
numbers, and (export side) the notes and warnings of an fla config.json (what BlinkDL's RWKV-7 cannot express is
refused by refusals.REFUSALS).

Imports nothing of mapping/: benchmarks/mutation.py patches the table before the engine has read it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from fla.rwkv7_convert.formats.checkpoint import is_int
from fla.rwkv7_convert.formats.dtypes import TORCH_NAME

# BlinkDL's GroupNorm (`ln_x`) eps, the same for every head size; its LayerNorms use 1e-5.
BLINKDL_LN_X_EPS = 64e-5
BLINKDL_NORM_EPS = 1e-5

# fla's `fuse_norm` as the converter writes it into config.json (--fuse-norm; hub.model_card.fuse_norm_line says what
# each value means). True, fla's default and its GPU path: fla's fused Triton LayerNorm/GroupNorm (the residual add
# fused into ffn_norm) and its fused l2_norm for kk, whose +1e-6 inside the root is not BlinkDL's F.normalize: 2.3e-9
# relative logits in float64 on examples/rwkv7-goose-mini.pth (issue #29), 2.1-2.8e-9 at 0.1B-7.2B trained-like,
# 2.1-2.4e-6 on long-memory weights whose keys are small beside that eps. False: torch's nn.LayerNorm/nn.GroupNorm and
# F.normalize, BlinkDL's function exactly. Float32 rounding (the kernels' error over the float32 reference's, both
# against fla's own function in float64, docs/verification.md "fuse_norm"): 0.63-1.0 fused, 0.68-1.0 unfused, on the
# stand-ins and the interpreted kernels, trained-like and long-memory, 0.1B-2.9B: the fused kernels cost nothing here.
# Kept True: fla's own default and fused GPU kernels, a formula difference every verify report names. The GPU cost of
# False is not measured.
DEFAULT_FUSE_NORM = True


@dataclass(frozen=True)
class Dims:
    """An RWKV-7 model's sizes, in BlinkDL's symbols (see table.py)."""

    V: int
    C: int
    L: int
    H: int
    N: int
    F: int
    Dw: int
    Da: int
    Dv: int
    Dg: int

    def resolve(self, symbolic: str) -> tuple[int, ...]:
        """'C,Dw' -> (C, Dw)."""
        values = asdict(self)
        return tuple(int(part) if part.isdigit() else values[part] for part in symbolic.split(','))

    def notes(self, model: str) -> list[str]:
        """The two lines both plans' notes start with (inspect shows the sizes on lines of their own instead)."""
        return [f'{model}, {self.L} layer(s), hidden {self.C}, {self.H} heads of {self.N}, vocab {self.V}, FFN {self.F}',
                f'LoRA ranks: decay {self.Dw}, a {self.Da}, value {self.Dv}, gate {self.Dg}']


# The one map between BlinkDL's size symbols and the keys of fla's config.json, in both directions: fla_config writes
# them, the export plan checks a config.json against its tensors, verify checks a directory against its source file.
CONFIG_SIZES: tuple[tuple[str, str], ...] = (
    ('V', 'vocab_size'), ('C', 'hidden_size'), ('L', 'num_hidden_layers'), ('H', 'num_heads'), ('N', 'head_dim'),
    ('F', 'intermediate_size'), ('Dw', 'decay_low_rank_dim'), ('Da', 'a_low_rank_dim'), ('Dv', 'v_low_rank_dim'),
    ('Dg', 'gate_low_rank_dim'))


def config_sizes(dims: Dims) -> dict[str, int]:
    """The config.json keys that carry the sizes, with their values."""
    return {key: getattr(dims, symbol) for symbol, key in CONFIG_SIZES}


# fla's RWKV7Config derives these when they are null (from hidden_ratio, num_heads, head_dim); any other null size
# is not a size fla can build from
DERIVED_WHEN_NULL = frozenset({'intermediate_size', 'head_dim', 'num_heads'})


def size_mismatches(cfg: dict, sizes: dict[str, int]) -> list[tuple[str, object, str, int]]:
    """(key, config value, symbol, size) for each size known in `sizes` (symbol -> value; 0 = unknown) that a
    config.json key states otherwise, or as something other than an integer (fla builds its modules from these:
    32.0 or "32" is not 32 there); keys the config does not have, or leaves null for fla to derive, are not a
    mismatch."""
    def wrong(key: str, size: int) -> bool:
        if key not in cfg or (cfg[key] is None and key in DERIVED_WHEN_NULL):
            return False
        return not is_int(cfg[key]) or cfg[key] != size
    return [(key, cfg[key], symbol, sizes[symbol]) for symbol, key in CONFIG_SIZES
            if sizes.get(symbol) and wrong(key, sizes[symbol])]


def norm_eps_for(head_size: int) -> float:
    """fla's `norm_eps` for a BlinkDL model of head size N.

    fla uses `norm_eps` for every LayerNorm and `head_dim * norm_eps` for `ln_x`; BlinkDL uses 1e-5 and 64e-5, so
    both match only for N = 64. For other N we keep `ln_x` exact (norm_eps = 64e-5 / N) and let the LayerNorm eps
    move: measured on 3-layer models (tests/proof/test_reference.py), that is 20-200x closer in max |logit difference|
    than keeping the LayerNorms exact (N=32: 4.0e-4 vs 8.5e-2; N=128: 1.8e-4 vs 9.0e-3), because the per-head
    GroupNorm sees far smaller variances than the LayerNorms over the full residual stream.
    """
    return BLINKDL_LN_X_EPS / head_size


def fla_config(dims: Dims, dtype: str, *, fuse_norm: bool = DEFAULT_FUSE_NORM, max_position_embeddings: int = 4096) -> dict:
    """config.json for fla's RWKV7ForCausalLM, written directly so converting needs neither fla nor transformers;
    `fuse_norm`: fla's fused norms (True) or torch's, BlinkDL's function exactly (DEFAULT_FUSE_NORM)."""
    return {
        'architectures': ['RWKV7ForCausalLM'],
        'model_type': 'rwkv7',
        'attn_mode': 'chunk',
        **config_sizes(dims),
        'hidden_ratio': dims.F / dims.C,
        'hidden_act': 'sqrelu',
        'max_position_embeddings': max_position_embeddings,
        'norm_first': True,
        'norm_bias': True,
        'norm_eps': norm_eps_for(dims.N),
        # Read by llama.cpp's convert_hf_to_gguf.py (Rwkv7Model) before fla's head_dim/norm_eps, and only as a pair:
        # it takes layer_norm_epsilon for its LayerNorms and keeps ln_x at 64e-5 itself, so it is exact for every N.
        # fla and transformers ignore both keys (tests/convert/test_model_dir.py).
        'head_size': dims.N,
        'layer_norm_epsilon': BLINKDL_NORM_EPS,
        'attn': None,
        'use_cache': True,
        'value_dim': [dims.C] * dims.L,
        # RWKV vocabularies end text with token 0; there is no BOS token.
        'bos_token_id': None,
        'eos_token_id': 0,
        'pad_token_id': 0,
        'tie_word_embeddings': False,
        'initializer_range': 0.02,
        'fuse_norm': bool(fuse_norm),
        'fuse_cross_entropy': True,
        'fuse_linear_cross_entropy': False,
        'use_l2warp': True,
        'dtype': TORCH_NAME.get(dtype, 'float32'),
    }


# ------------------------------------------------------------- config.json of an fla directory (the export side)

def config_notes(cfg: dict) -> tuple[list[str], list[str]]:
    """(notes, warnings) of a config.json that passed the config-stage refusals (refusals.REFUSALS: model_type,
    hidden_size, attn, hidden_act, norms, value_dim, heads, a numeric norm_eps)."""
    C, head_dim, num_heads = cfg['hidden_size'], cfg.get('head_dim'), cfg.get('num_heads')
    if head_dim is None:
        head_dim = C // num_heads
    notes, warnings = [], []
    if cfg.get('tie_word_embeddings'):
        notes.append('tie_word_embeddings: head.weight written as a copy of emb.weight (RWKV-LM has a separate head)')
    eps = float(cfg.get('norm_eps', BLINKDL_NORM_EPS))
    off = []
    if not math.isclose(eps, BLINKDL_NORM_EPS, rel_tol=1e-6):
        off.append(f'LayerNorm eps {eps:g} (RWKV-LM: {BLINKDL_NORM_EPS:g})')
    if not math.isclose(head_dim * eps, BLINKDL_LN_X_EPS, rel_tol=1e-6):
        off.append(f'ln_x GroupNorm eps head_dim*norm_eps = {head_dim * eps:g} (BlinkDL: {BLINKDL_LN_X_EPS:g} for every '
                   'head size)')
    if off:
        warnings.append('fla runs this model with ' + ' and '.join(off) + "; BlinkDL's runtimes use their fixed eps, "
                        'so logits will differ slightly (weights are exported exactly)')
    return notes, warnings
