"""The one name table between BlinkDL's RWKV-LM checkpoints and fla's RWKV7ForCausalLM, read in both directions.

Each `Rule` names one canonical RWKV-LM tensor, its fla counterpart, its shape in symbols and a reversible `Op`
that turns the BlinkDL tensor into the fla one (`op.reverse` goes back). Naming variants met in practice are not
extra rows: they are `ALIASES`, normalizations applied before lookup (training-wrapper prefixes, squeezed
vectors, a flat `r_k`). Checkpoints of other architectures are recognised by `REFUSALS` and refused with a reason.

To support a new naming variant, add one row to `ALIASES` (or `PREFIXES`) or `RULES`, and one test in
tests/test_table.py; `docs/mapping.md` is generated from this module (`python -m fla.rwkv7_convert.docs`).

Symbols: V vocab, C hidden size, H heads, N head size (C = H*N), F FFN width, Dw/Da/Dv/Dg the LoRA ranks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# ------------------------------------------------------------------------------------------------------------ ops


class Op:
    """A reversible array transform; `shape` maps shapes without touching data so plans need no reads."""

    name = 'identity'

    def apply(self, data: np.ndarray) -> np.ndarray:
        return data

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    @property
    def reverse(self) -> Op:
        return self

    def __repr__(self) -> str:
        return self.name


class Transpose(Op):
    """A 2-D transpose: RWKV-LM stores LoRA factors as `x @ W`, nn.Linear as `W @ x`."""

    name = 'transpose'

    def apply(self, data: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(data.T)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(shape))


class Squeeze(Op):
    """`[1, 1, C]` -> `[C]`; the reverse is `Unsqueeze`."""

    name = 'squeeze [1,1,C] -> [C]'

    def apply(self, data: np.ndarray) -> np.ndarray:
        return data.reshape(self.shape(data.shape))

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (int(np.prod(shape)),)

    @property
    def reverse(self) -> Op:
        return UNSQUEEZE


class Unsqueeze(Op):
    name = 'unsqueeze [C] -> [1,1,C]'

    def apply(self, data: np.ndarray) -> np.ndarray:
        return data.reshape(self.shape(data.shape))

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (1, 1, int(np.prod(shape)))

    @property
    def reverse(self) -> Op:
        return SQUEEZE


IDENTITY, TRANSPOSE, SQUEEZE, UNSQUEEZE = Op(), Transpose(), Squeeze(), Unsqueeze()

# ---------------------------------------------------------------------------------------------------------- rules

ALL, FIRST, REST, GLOBAL = 'all blocks', 'block 0 only', 'blocks 1..L-1', 'not per block'


@dataclass(frozen=True)
class Rule:
    blinkdl: str  # canonical RWKV-LM name; '{i}' is the block index
    fla: str | None  # fla's name; None: in RWKV-LM files but unused by the model, so not converted
    shape: str  # canonical RWKV-LM shape, in symbols
    op: Op = IDENTITY  # BlinkDL tensor -> fla tensor; op.reverse goes back
    layers: str = ALL
    optional: bool = False
    note: str = ''

    def applies_to(self, layer: int | None) -> bool:
        if self.layers == GLOBAL:
            return layer is None
        if layer is None:
            return False
        return self.layers == ALL or (self.layers == FIRST) == (layer == 0)

    def names(self, layer: int | None) -> tuple[str, str | None]:
        fmt = {} if layer is None else {'i': layer}
        return self.blinkdl.format(**fmt), (self.fla.format(**fmt) if self.fla else None)


def _lora(letter: str, target: str, layers: str = ALL, bias: bool = True) -> list[Rule]:
    rank = {'w': 'Dw', 'a': 'Da', 'v': 'Dv', 'g': 'Dg'}[letter]
    base = f'model.layers.{{i}}.attn.{target}.lora'
    rows = [
        Rule(f'blocks.{{i}}.att.{letter}1', f'{base}.0.weight', f'C,{rank}', TRANSPOSE, layers),
        Rule(f'blocks.{{i}}.att.{letter}2', f'{base}.2.weight', f'{rank},C', TRANSPOSE, layers),
    ]
    if bias:
        rows.insert(0, Rule(f'blocks.{{i}}.att.{letter}0', f'{base}.2.bias', '1,1,C', SQUEEZE, layers))
    return rows


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
    Rule('ln_out.weight', 'model.norm.weight', 'C', layers=GLOBAL),
    Rule('ln_out.bias', 'model.norm.bias', 'C', layers=GLOBAL),
    Rule('head.weight', 'lm_head.weight', 'V,C', layers=GLOBAL),
)

_BLOCK = re.compile(r'^blocks\.(\d+)\.(.+)$')
_FLA_BLOCK = re.compile(r'^model\.layers\.(\d+)\.(.+)$')


def _index(key) -> dict[str, list[Rule]]:
    out: dict[str, list[Rule]] = {}
    for rule in RULES:
        k = key(rule)
        if k is not None:
            out.setdefault(k, []).append(rule)
    return out


# per-block rules by name suffix (one suffix may have rows for block 0 and for the other blocks), global by name
_BY_BLINKDL = _index(lambda r: r.blinkdl.removeprefix('blocks.{i}.') if r.layers != GLOBAL else None)
_BY_BLINKDL_GLOBAL = _index(lambda r: r.blinkdl if r.layers == GLOBAL else None)
_BY_FLA = _index(lambda r: r.fla.removeprefix('model.layers.{i}.') if r.fla and r.layers != GLOBAL else None)
_BY_FLA_GLOBAL = _index(lambda r: r.fla if r.fla and r.layers == GLOBAL else None)


def _find(pattern: re.Pattern, per_block: dict, global_: dict, name: str) -> tuple[Rule, int | None] | None:
    m = pattern.match(name)
    layer, candidates = (None, global_.get(name, [])) if m is None else (int(m.group(1)), per_block.get(m.group(2), []))
    return next(((rule, layer) for rule in candidates if rule.applies_to(layer)), None)


def lookup_blinkdl(name: str) -> tuple[Rule, int | None] | None:
    """The rule and block index for a canonical RWKV-LM name, or None when no row matches."""
    return _find(_BLOCK, _BY_BLINKDL, _BY_BLINKDL_GLOBAL, name)


def lookup_fla(name: str) -> tuple[Rule, int | None] | None:
    """The rule and layer index for an fla parameter name, or None."""
    return _find(_FLA_BLOCK, _BY_FLA, _BY_FLA_GLOBAL, name)


def expected_blinkdl(num_layers: int, *, with_optional: bool = True) -> list[tuple[str, Rule, int | None]]:
    """Every canonical RWKV-LM name of an L-block model, in RWKV-LM's order."""
    out = []
    for rule in RULES:
        if rule.optional and not with_optional:
            continue
        for layer in ([None] if rule.layers == GLOBAL else range(num_layers)):
            if rule.applies_to(layer):
                out.append((rule.names(layer)[0], rule, layer))
    order = {'emb': 0, 'blocks': 1, 'ln_out': 2, 'head': 3}
    return sorted(out, key=lambda t: (order[t[0].split('.')[0]], t[2] or 0))


# -------------------------------------------------------------------------------------------------------- aliases

# Wrappers that prefix every name: torch.compile, DDP/DeepSpeed, Lightning/FSDP. Stripped repeatedly, so nested
# combinations such as `module._orig_mod.` work too.
PREFIXES: tuple[str, ...] = ('_orig_mod.', 'module.', '_forward_module.')


@dataclass(frozen=True)
class Alias:
    """A naming or shape variant that is normalized to the canonical RWKV-LM form before lookup."""

    variant: str
    canonical: str
    where: str


ALIASES: tuple[Alias, ...] = (
    *[Alias(f'`{p}<name>`', '`<name>`', 'prefix from ' + w, ) for p, w in zip(
        PREFIXES, ('torch.compile', 'DDP / DeepSpeed', 'Lightning / FSDP wrappers'))],
    Alias('vectors stored `[C]` (or any shape with C elements and unit dims)', '`[1,1,C]`',
          'x_*, w0, a0, v0, k_k, k_a, ffn.x_k: exporters and the rwkv package squeeze them'),
    Alias('`att.r_k` stored flat `[C]`', '`[H,N]`', 'needs --head-size, since N cannot be read from a flat r_k'),
    Alias('layer-0 `att.v0/v1/v2` absent', 'absent (dropped anyway)', 'files not saved by RWKV-LM training'),
    Alias('wrapped state dict `{"state_dict": ...}`, `{"module": ...}`, `{"model": ...}`', 'the inner dict',
          'training checkpoints'),
    Alias('any floating storage dtype (bf16, fp16, fp32, fp64), mixed or not', 'kept unless --precision',
          'every tensor'),
)

WRAPPER_KEYS = ('state_dict', 'module', 'model')


def strip_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def canonical_shape(rule: Rule, shape: tuple[int, ...], head_size: int | None) -> tuple[int, ...] | None:
    """The canonical RWKV-LM shape of a stored tensor under the aliases; None when no alias explains it."""
    if rule.shape == '1,1,C':
        if len(shape) >= 1 and all(d == 1 for d in shape[:-1]):
            return (1, 1, shape[-1])
        return None
    if rule.shape == 'H,N' and len(shape) == 1:
        if head_size and shape[0] % head_size == 0:
            return (shape[0] // head_size, head_size)
        return None
    return shape


# ------------------------------------------------------------------------------------------------------- refusals


@dataclass(frozen=True)
class Refusal:
    """A family of checkpoints fla's RWKV7ForCausalLM cannot run; matched on normalized names, whole key set."""

    variant: str
    pattern: str
    reason: str
    only: bool = False  # refuse only when every key matches (state-tuning files)


REFUSALS: tuple[Refusal, ...] = (
    Refusal('unmerged LoRA / PiSSA adapter', r'(^|\.)lora_[AB](\.|$)|\.lora\.(A|B)$',
            'merge the adapter into its base model first (RWKV-PEFT ships a merge script), then convert the merged file'),
    Refusal('RWKV-7a "DeepEmbed"', r'^blocks\.\d+\.ffn\.(s_emb(_x)?\.weight|s[012])$',
            'its channel mix multiplies by a per-token deep embedding that fla\'s RWKV7ForCausalLM does not have'),
    Refusal('RWKV-7b "DEA"', r'^blocks\.\d+\.qkv\.',
            'it adds a softmax attention branch (qkv.*) beside the RWKV-7 time mix, which fla cannot run'),
    Refusal('RWKV-8', r'^blocks\.\d+\.ffn\.enn\.',
            'its channel mix is gated by a per-token embedding (ffn.enn), a different architecture'),
    Refusal('RWKV-6 or older', r'^blocks\.\d+\.att\.(time_decay|time_faaaa|time_first|time_mix_\w+|time_maa_\w+)$',
            'this is an RWKV-4/5/6 checkpoint; fla has separate models (RWKV6ForCausalLM) and converters for those'),
    Refusal('RWKV state-tuning file', r'^blocks\.\d+\.att\.time_state$',
            'it holds only tuned initial states, not model weights; load it beside its base model', only=True),
    Refusal('fla / Hugging Face RWKV-7 state dict', r'^(model\.(layers|embeddings)\.|lm_head\.)',
            'it is already in fla\'s naming; use utils/convert_from_fla_rwkv7.py to go back to RWKV-LM format'),
)
