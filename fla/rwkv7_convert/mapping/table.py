"""The one name table between BlinkDL's RWKV-LM checkpoints and fla's RWKV7ForCausalLM, read in both directions.

Each `Rule` names one canonical RWKV-LM tensor, its fla counterpart, its shape in symbols and a reversible `Op`
that turns the BlinkDL tensor into the fla one (`op.reverse` goes back). Naming variants met in practice are not
extra rows: they are `ALIASES`, normalizations applied before lookup (training-wrapper prefixes, squeezed
vectors, a flat `r_k`). Checkpoints of other architectures are recognised by `REFUSALS` and refused with a reason.

To support a new naming variant, add one row to `ALIASES` (or `PREFIXES`) or `RULES`, and one test in
tests/mapping/test_table.py; `docs/mapping.md` is generated from this module (`python -m fla.rwkv7_convert.mapping.docs`).

Symbols: V vocab, C hidden size, H heads, N head size (C = H*N), F FFN width, Dw/Da/Dv/Dg the LoRA ranks.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
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


# ---------------------------------------------------------------------------------------------------------- sizes

SIZES = {'V': 'the vocabulary size', 'C': 'the hidden size', 'H': 'the head count', 'N': 'the head size',
         'F': 'the FFN width', 'Dw': 'the decay LoRA rank', 'Da': 'the a LoRA rank', 'Dv': 'the value LoRA rank',
         'Dg': 'the gate LoRA rank'}


def bind_sizes(shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Every size symbol bound from the rows' symbolic shapes: each canonical RWKV-LM tensor present votes for the
    values its shape gives its symbols, and each symbol takes the value most tensors agree on (so one broken tensor
    shows up as mis-shaped instead of hiding the model's size). Used by both directions: the fla side passes its
    tensors under their RWKV-LM names, in RWKV-LM shapes (`rule.op.reverse`). Unused rows (block 0's v0/v1/v2)
    vote only for symbols no used row binds; a flat `r_k` binds nothing (its N needs --head-size)."""
    used: dict[str, Counter] = {}
    unused: dict[str, Counter] = {}
    for name, shape in shapes.items():
        found = lookup_blinkdl(name)
        if found is None or found[0].names(found[1])[0] != name:
            continue
        rule = found[0]
        symbols = rule.shape.split(',')
        if rule.shape == '1,1,C':
            shape = canonical_shape(rule, shape, None) or shape
        if len(shape) != len(symbols):
            continue
        votes = used if rule.fla is not None else unused
        for symbol, value in zip(symbols, shape):
            if not symbol.isdigit():
                votes.setdefault(symbol, Counter())[value] += 1
    return {s: (used.get(s) or unused[s]).most_common(1)[0][0] for s in SIZES if s in used or s in unused}


# ----------------------------------------------------------------------------------------------------- provenance


@dataclass(frozen=True)
class Source:
    """Where a layout was read from: a file of a public repository at one commit (verified there)."""

    repo: str
    path: str
    commit: str
    what: str = ''  # what that file shows

    def __str__(self) -> str:
        what = f': {self.what}' if self.what else ''
        return f'{self.repo} `{self.path}` @ {self.commit[:12]}{what}'


# -------------------------------------------------------------------------------------------------------- aliases

# Wrappers that prefix every name: torch.compile, DDP/DeepSpeed, Lightning/FSDP. Stripped repeatedly, so nested
# combinations such as `module._orig_mod.` work too. (`model.` is a layout below: it is stripped only before a
# top-level RWKV-LM name, since fla's own names start with `model.` too.)
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
    """`name` without wrapper prefixes (PREFIXES, any number, any order) and without the guarded prefixes of the
    prefix layouts (`model.`, `rwkv7.`: only before a top-level RWKV-LM name; see LAYOUTS)."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
        for layout in LAYOUTS:
            if layout.side == BLINKDL_SIDE and layout.kind == 'prefix':
                found = next((t for r in layout.renames if (t := r.targets(name))), None)
                if found:
                    name, changed = found[0][0], True
    return name


def prefix_layout(prefix: str) -> Layout | None:
    """The prefix layout a stripped prefix belongs to (None for the wrapper PREFIXES)."""
    return next((x for x in LAYOUTS if x.side == BLINKDL_SIDE and x.kind == 'prefix'
                 and any(r.targets(prefix + 'emb.weight') for r in x.renames)), None)


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


# -------------------------------------------------------------------------------------------------------- layouts


class Orient(Op):
    """A LoRA factor stored in either orientation, told apart by its shape: `[C,D]` is RWKV-LM's, `[D,C]` is
    transposed. Resolved per tensor once C is known (`for_shape`); ambiguous when D == C."""

    name = 'transpose when stored [D,C]'

    def for_shape(self, shape: tuple[int, ...], factor: int, C: int) -> Op | None:
        """The op that brings `shape` to RWKV-LM's orientation (factor 1 is `[C,D]`, factor 2 `[D,C]`); None when
        the shape cannot tell (`[C,C]`). Shapes that fit neither are left for the shape check to report."""
        if len(shape) != 2:
            return IDENTITY
        if shape == (C, C):
            return None
        at = 0 if factor == 1 else 1  # where C sits in RWKV-LM's orientation
        if shape[at] == C:
            return IDENTITY
        return TRANSPOSE if shape[1 - at] == C else IDENTITY


class Row(Op):
    """Row `j` of a stacked `[n, C]` tensor as a `[1,1,C]` vector (fla v1's `x_x` holds six mixing vectors)."""

    def __init__(self, j: int, n: int):
        self.j, self.n = j, n
        self.name = f'row {j} of [{n},C] -> [1,1,C]'

    def apply(self, data: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(data.reshape(self.n, -1)[self.j].reshape(1, 1, -1))

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (1, 1, int(np.prod(shape)) // self.n)


class Matrix(Op):
    """`[1,1,H,N]` -> `[H,N]`: leading unit dims dropped (rc4a's time_faaaa); bytes unchanged."""

    name = 'reshape [1,1,H,N] -> [H,N]'

    def apply(self, data: np.ndarray) -> np.ndarray:
        return data.reshape(self.shape(data.shape))

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[-2:]) if len(shape) > 2 and all(d == 1 for d in shape[:-2]) else tuple(shape)


ORIENT, MATRIX = Orient(), Matrix()
BLINKDL_SIDE, FLA_SIDE = 'RWKV-LM input (convert_to_rwkv7.py)', 'fla input (convert_from_fla_rwkv7.py)'


@dataclass(frozen=True)
class Rename:
    """One stored name (a regex, matched in full after the wrapper prefixes are gone) and what it becomes: a
    canonical name (`\\1` refers to groups), several (a row split), or None (dropped). `op` turns the stored tensor
    into the canonical one; the forward and the reverse direction then share the `Rule` rows."""

    pattern: str
    to: str | tuple[str, ...] | None
    op: Op = IDENTITY

    def targets(self, name: str) -> list[tuple[str | None, Op]] | None:
        m = re.fullmatch(self.pattern, name)
        if m is None:
            return None
        if self.to is None:
            return [(None, self.op)]
        if isinstance(self.to, tuple):
            return [(m.expand(t), Row(j, len(self.to))) for j, t in enumerate(self.to)]
        return [(m.expand(self.to), self.op)]


@dataclass(frozen=True)
class Layout:
    """A way RWKV-7 weights are stored in practice, as the rules that bring it to the canonical names and shapes.

    A file is in this layout when one of its names matches `signature` (or `sniff` says so from the shapes). Layouts
    of kind 'names' rename tensors and exclude each other; 'prefix' and 'orientation' layouts combine with any."""

    name: str
    side: str
    kind: str  # 'names', 'prefix' or 'orientation'
    who: str
    evidence: tuple[Source, ...]
    signature: str
    renames: tuple[Rename, ...]
    note: str = ''

    def matches(self, names: list[str]) -> list[str]:
        pattern = re.compile(self.signature)
        return [n for n in names if pattern.search(n)]


def _block(old: str, new: str, op: Op = IDENTITY) -> Rename:
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
    _block(r'att\.time_faaaa', 'att.r_k', MATRIX),  # stored [1,1,H,N]
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
_TOP = r'(?:emb|blocks|ln_out|head)\.'

LAYOUTS: tuple[Layout, ...] = (
    Layout(
        'rc4a training names', BLINKDL_SIDE, 'names',
        'RWKV-LM `RWKV-v5/src/model.py` (x070) from 2024-11-23 until the rename of 2024-11-29',
        (Source(_RWKV_LM, 'RWKV-v5/src/model.py', '69bb58521462382c10fb61939272d95fefb8df23',
                'introduces these names with the final x070 equations ("change all to rwkv-7-rc4a")'),
         Source(_RWKV_LM, 'RWKV-v5/src/model.py', '348e56eca683609e92a77256587bea5b23a512c3',
                '"better names": a pure rename to x_*, w0.., k_k, k_a, r_k; the forward pass is unchanged')),
        r'^blocks\.\d+\.att\.(time_aaaaa|time_misc_kkk|mv_w1)$', _RC4A_TRAIN_RENAMES,
        'time_faaaa is [1,1,H,N], reshaped to r_k [H,N]; the CUDA kernel change in between (wkv7.cu) only '
        'stopped caching v in registers'),
    Layout(
        'rc4a demo names', BLINKDL_SIDE, 'names',
        'RWKV-LM `RWKV-v7/rwkv_v7_demo.py` of the rc4a release (it loads files in these names strictly)',
        (Source(_RWKV_LM, 'RWKV-v7/rwkv_v7_demo.py', '218a94cf373a04bd906e7a234134227ac03c2641',
                'rwkv-7 release ("rc4a"): xx_*, ww_*, aa_*, vv_*, gg_*, kk_s, ka_s, rk_s'),
         Source(_RWKV_LM, 'RWKV-v7/rwkv_v7_demo.py', '02bc67aa1e509ee55bb5de74b17b62437605ab77',
                '"better names": a pure rename to today\'s names')),
        r'^blocks\.\d+\.att\.(ww_b|kk_s|rk_s|xx_r)$', _RC4A_DEMO_RENAMES),
    Layout(
        'Lightning / HF `model.` prefix', BLINKDL_SIDE, 'prefix',
        'a raw Lightning checkpoint state dict (RWKV-LM / RWKV-PEFT trainers keep the RWKV module as `model`), '
        'Hugging Face ports that nest BlinkDL names under `model.`',
        (Source('JL-er/RWKV-PEFT', 'rwkvt/lightning_train/light_rwkv.py', '5b8aac9cbed9474fb9f13332ffe9bd1aa377b7d2',
                'the LightningModule holds the RWKV model as self.model, so its state_dict names start with model.'),
         Source('JL-er/RWKV-PEFT', 'rwkvt/lightning_train/trainer.py', '5b8aac9cbed9474fb9f13332ffe9bd1aa377b7d2',
                'its own .pth saves strip "model."; a raw Lightning checkpoint keeps it')),
        rf'^model\.{_TOP}', (Rename(rf'model\.({_TOP}.+)', r'\1'),),
        'stripped only before emb., blocks., ln_out. or head.: fla\'s own names also start with model.'),
    Layout(
        'Hugging Face `rwkv7.` prefix', BLINKDL_SIDE, 'prefix',
        'Hugging Face ports that keep BlinkDL names under the module name `rwkv7.` (reported for transformers\' own '
        'rwkv7 port; not verified against its code here: the rule is guarded like `model.`)', (),
        rf'^rwkv7\.{_TOP}', (Rename(rf'rwkv7\.({_TOP}.+)', r'\1'),),
        'stripped only before emb., blocks., ln_out. or head.'),
    Layout(
        'transformers-rwkv Rwkv7 port', BLINKDL_SIDE, 'names',
        'rwkv-rs/transformers-rwkv (a transformers fork with an RWKV-7 port): BlinkDL names under `model.`, '
        '`model.embeddings.weight`, LoRA factors as nn.Linear (`att.w1.weight` = w1 transposed), `head.weight`',
        (Source('rwkv-rs/transformers-rwkv', 'src/transformers/models/rwkv7/convert_rwkv7_checkpoint_to_hf.py',
                '9b08710f0eda66ccecba21b81c3675c2a2c1c968', 'model.embeddings.weight; low-rank factors transposed'),
         Source('rwkv-rs/transformers-rwkv', 'src/transformers/models/rwkv7/modeling_rwkv7.py',
                '9b08710f0eda66ccecba21b81c3675c2a2c1c968', 'self.w1 = nn.Linear(hidden_size, decay_low_rank_dim)')),
        r'^blocks\.\d+\.att\.[wavg][12]\.weight$',
        (Rename(r'model\.embeddings\.weight', 'emb.weight'),
         _block(r'att\.([wavg][12])\.weight', r'att.\2', TRANSPOSE)),
        'the guarded `model.` prefix is stripped first (layout above)'),
    Layout(
        'RWKV-block Hugging Face builder', BLINKDL_SIDE, 'directory',
        'RWKV/RWKV-block `hf_builder`: a Hugging Face directory (architectures RWKV7ForCausalLM, RWKV7Model; '
        'model_type rwkv7, as fla writes too) holding BlinkDL names unchanged, plus `init_state.N.wkv` when '
        'state-tuned',
        (Source('RWKV/RWKV-block', 'hf_builder/hf_builder.py', '060d03ac87762620eeaa568a5438952e7a309d33',
                'RWKV7Model(config).load_state_dict(state_dict); save_pretrained'),
         Source('RWKV/RWKV-block', 'rwkv_block/v7_goose/model/rwkv7_goose_model.py',
                '060d03ac87762620eeaa568a5438952e7a309d33', 'emb, blocks, ln_out, head; init_state ParameterList')),
        r'^emb\.weight$', (),
        'read as any Hugging Face directory (formats.readers.open_hf_directory); told from fla\'s by its weight names, not '
        'model_type; init_state.N.wkv is a tuned state (refused, or dropped with --drop-state)'),
    Layout(
        'web-rwkv / ai00 `.st`', BLINKDL_SIDE, 'orientation',
        'ai00_server and web-rwkv convert scripts: safetensors, every tensor fp16, LoRA factors w1 w2 a1 a2 v1 v2 g1 '
        'g2 transposed',
        (Source('Ai00-X/ai00_server', 'assets/scripts/convert_safetensors.py', '5ff7a6a926b2b210c5e161fc7b3ebf9723ab0a1d',
                'transpose_names w1 w2 a1 a2 g1 g2 v1 v2; .half()'),),
        r'^blocks\.\d+\.att\.[wavg][12]$', (_block(r'att\.([wavg][12])', r'att.\2', ORIENT),),
        'each factor\'s orientation is read from its shape; refused by name when C equals its rank (the shape cannot '
        'tell). fp16 is what that format keeps: converting it gives the fp16 model, not the original bf16/fp32 one'),
    Layout(
        'fla bare RWKV7Model', FLA_SIDE, 'prefix',
        'fla `RWKV7Model.save_pretrained` (no lm_head): names without `model.`', (),
        r'^(embeddings|layers|norm)\.', (Rename(r'((?:embeddings|layers|norm)\..+)', r'model.\1'),)),
    Layout(
        'fla January 2025', FLA_SIDE, 'names',
        'fla 0.1 RWKV-7 (added 2025-01-19): k_k, k_a and ffn.x_k stored [1,1,C]; every layer has a v_lora',
        (Source('fla-org/flash-linear-attention', 'fla/layers/rwkv7.py', '7f8c169f52c59f559be19a624c106e37a47b041d',
                'k_k, k_a [1,1,C]; v_lora built for layer 0 too'),
         Source('fla-org/flash-linear-attention', 'fla/models/rwkv7/modeling_rwkv7.py',
                '7f8c169f52c59f559be19a624c106e37a47b041d', 'ffn.x_k [1,1,C]')),
        r'^model\.layers\.\d+\.(attn\.k_k|attn\.k_a|ffn\.x_k)$',
        (Rename(r'(model\.layers\.\d+\.(?:attn\.k_k|attn\.k_a|ffn\.x_k))', r'\1', SQUEEZE),
         Rename(r'model\.layers\.0\.attn\.v_lora\..+', None)),
        'signature needs the [1,1,C] shape (see layout_hits); layer-0 v_lora is unused and dropped'),
    Layout(
        'fla v1 fused `x_x`', FLA_SIDE, 'names',
        'fla from 2025-01-20 to 2025-04-09: the six mixing vectors stacked as attn.x_x [6,C]',
        (Source('fla-org/flash-linear-attention', 'fla/layers/rwkv7.py', '845112af30e9b7d0ce15d8e0909b1c896bca1b35',
                'x_x = nn.Parameter(torch.empty(6, hidden_size))'),
         Source('fla-org/flash-linear-attention', 'fla/layers/rwkv7.py', '6b673e6bbdda92ddb34029c70299eb6d008a178f',
                'split back into x_r ... x_g')),
        r'^model\.layers\.\d+\.attn\.x_x$',
        (Rename(r'model\.layers\.(\d+)\.attn\.x_x', tuple(rf'model.layers.\1.attn.x_{c}' for c in 'rwkvag')),),
        'row order r, w, k, v, a, g'),
)


def layout_hits(layout: Layout, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The names that show a file is in `layout` (its signature, plus the shape the signature stands for)."""
    hits = layout.matches(list(shapes))
    if layout.name == 'fla January 2025':  # same names as today's fla; only the [1,1,C] shape tells
        hits = [n for n in hits if len(shapes[n]) == 3]
    return hits


# ------------------------------------------------------------------------------------------------------- refusals


def _package_dump(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Signs of `torch.save(model.z)` from BlinkDL's `rwkv` package: empty tensors, `head` stored [C,V]."""
    hits = [n for n, s in shapes.items() if 0 in s]
    emb, head = shapes.get('emb.weight'), shapes.get('head.weight')
    if emb and head and len(emb) == 2 and emb[0] != emb[1] and head == (emb[1], emb[0]):
        hits.append('head.weight [C,V]')
    return hits


@dataclass(frozen=True)
class Refusal:
    """A family of files fla's RWKV7ForCausalLM cannot run (or that are no model); matched on normalized names
    (after the layouts' renames), whole key set. The message says what the file is and what to use instead."""

    variant: str
    pattern: str
    reason: str
    only: bool = False  # refuse only when every key matches (state-tuning files)
    also: str = ''  # a second pattern that must match some key too
    unless: str = ''  # no key may match this (an RWKV-7 file with one stray old name is a key problem, not RWKV-6)
    shapes: Callable[[dict[str, tuple[int, ...]]], list[str]] | None = None  # hits found from shapes instead
    evidence: tuple[Source, ...] = ()

    def hits(self, shapes: dict[str, tuple[int, ...]]) -> list[str]:
        names = list(shapes)
        if self.shapes is not None:
            return self.shapes(shapes)
        pattern = re.compile(self.pattern)
        hits = [n for n in names if pattern.search(n)]
        if not hits or (self.only and len(hits) != len(names)):
            return []
        if self.also and not any(re.search(self.also, n) for n in names):
            return []
        if self.unless and any(re.search(self.unless, n) for n in names):
            return []
        return hits


_PEFT = 'JL-er/RWKV-PEFT'
_PEFT_COMMIT = '5b8aac9cbed9474fb9f13332ffe9bd1aa377b7d2'
STATE_TENSOR = re.compile(r'^(blocks\.\d+\.att\.time_state|init_state\.\d+\.wkv)$')

REFUSALS: tuple[Refusal, ...] = (
    Refusal('PiSSA adapter', r'\.init_lora_[AB]$',
            'it holds the initial PiSSA factors, not a model; merge it into its base model with RWKV-PEFT\'s '
            'merge/merge_pissa.py, then convert the merged file',
            evidence=(Source(_PEFT, 'merge/merge_pissa.py', _PEFT_COMMIT, "'.init_lora_A' / '.init_lora_B'"),)),
    Refusal('DiSHA adapter', r'\.disha$',
            'it holds DiSHA adapter blocks, not a model; merge it with RWKV-PEFT\'s merge/merge_disha.py, then convert '
            'the merged file',
            evidence=(Source(_PEFT, 'rwkvt/peft/rwkvLinear.py', _PEFT_COMMIT, 'self.disha = nn.Parameter(...)'),)),
    Refusal('unmerged LoRA adapter', r'(^|\.)lora_[AB](\.|$)|\.lora\.(A|B)$',
            'merge the adapter into its base model first (RWKV-PEFT\'s merge/merge_lora.py), then convert the merged '
            'file'),
    Refusal('RWKV-7 preview (x070 rc2-rc4)',
            r'^blocks\.\d+\.att\.(time_maa_x|time_maa_w[12]|time_kkk_w[12]|mk_w[12]|ma_w[12]|mv_w|time_misc_k|time_aaa)$',
            'its time mix is not the released x070 (token-shift LoRA time_maa_x/time_maa_w1, extra LoRAs time_kkk_w1, '
            'mk_w1, ma_w1, a per-head value gate); fla runs only the released x070: use a released RWKV-7 model',
            also=r'^blocks\.\d+\.att\.(a0|a1|time_aaaaa|time_aaa|time_aaa_w1)$',
            evidence=(Source(_RWKV_LM, 'RWKV-v7/rwkv_v7_demo.py', 'c453b42656baa206cf5e9441482c97448c0d221a', 'rc4'),
                      Source(_RWKV_LM, 'RWKV-v5/src/model.py', '6b44d244e60143635c073507a4db4808b1731a32',
                             'mv_w [C,H], time_aaa, time_misc_k'))),
    Refusal('in-memory dump of BlinkDL\'s `rwkv` package', '',
            'torch.save(model.z) keeps the package\'s runtime form: matrices and head transposed for x @ W, ln0 folded '
            'into emb.weight, empty layer-0 v0/v1/v2; that cannot be undone exactly: convert the .pth the package '
            'loaded', shapes=_package_dump),
    Refusal('RWKV7-Qwen2 hybrid', r'^model\.layers\.\d+\.self_attn\.(x_[rwkvag]|w[012]|k_k|k_a|r_k)$',
            'RWKV-7 time mixing inside a Qwen2 transformer is a different model from fla\'s RWKV7ForCausalLM; run it '
            'with the modeling code it ships with'),
    Refusal('RWKV-7a "DeepEmbed"', r'^blocks\.\d+\.ffn\.(s_emb(_x)?\.weight|s[012])$',
            'its channel mix multiplies by a per-token deep embedding that fla\'s RWKV7ForCausalLM does not have'),
    Refusal('RWKV-8 hybrid', r'^blocks\.\d+\.qkv\.emm',
            'it mixes an RWKV-8 embedding branch (qkv.emm, enn) into the time mix, which fla cannot run'),
    Refusal('RWKV-7b "DEA"', r'^blocks\.\d+\.qkv\.',
            'it adds a softmax attention branch (qkv.*) beside the RWKV-7 time mix, which fla cannot run'),
    Refusal('RWKV-8', r'^blocks\.\d+\.ffn\.enn\.',
            'its channel mix is gated by a per-token embedding (ffn.enn), a different architecture'),
    Refusal('RWKV-6 or older', r'^blocks\.\d+\.att\.(time_decay|time_faaaa|time_first|time_mix_\w+|time_maa_\w+)$',
            'this is an RWKV-4/5/6 checkpoint; fla has separate models (RWKV6ForCausalLM) and converters for those',
            unless=r'^blocks\.\d+\.att\.(r_k|k_k)$'),
    Refusal('RWKV state-tuning file', STATE_TENSOR.pattern,
            'it holds only tuned initial states, not model weights; load it beside its base model', only=True),
    Refusal('state-tuned merge', STATE_TENSOR.pattern,
            'tuned initial states (att.time_state from RWKV-PEFT\'s merge/merge_state.py, or RWKV-block\'s '
            'init_state.N.wkv) sit beside the weights, and fla\'s '
            'RWKV7ForCausalLM has no initial-state parameter; pass --drop-state to convert the weights alone (the '
            'tuned state is lost), or convert the base model',
            evidence=(Source(_PEFT, 'merge/merge_state.py', _PEFT_COMMIT, 'w[k] = w_state[k]'),
                      Source(_PEFT, 'rwkvt/rwkv7/att.py', _PEFT_COMMIT, 'time_state [H,N,N]'))),
    Refusal('fla / Hugging Face RWKV-7 state dict', r'^(model\.(layers|embeddings)\.|lm_head\.)',
            'it is already in fla\'s naming; use utils/convert_from_fla_rwkv7.py to go back to RWKV-LM format'),
)
