"""The kinds of declaration the table (table.py, refusals.py, adapter_methods.py) is made of: rules, layouts,
renames, shape aliases, refusals, adapter methods, and what predicates look at (`Seen`, `Predicate`; the predicates
themselves are predicates.py). Data types and their own small methods only; what walks them is engine.py.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fla.rwkv7_convert.errors import ConversionError, UnsupportedVariantError
from fla.rwkv7_convert.mapping.ops import IDENTITY, Op, Orient, Shape, UnaryOp


class Side(enum.Enum):
    """Who writes the names of an input: the direction a layout or a refusal belongs to."""

    BLINKDL = 'RWKV-LM input (convert_to_rwkv7.py)'
    FLA = 'fla input (convert_from_fla_rwkv7.py)'
    ADAPTER = 'RWKV-PEFT adapter (--adapter)'


class Scope(enum.Enum):
    """Which blocks a rule has a tensor in."""

    ALL = 'all blocks'
    FIRST = 'block 0 only'
    REST = 'blocks 1..L-1'
    GLOBAL = 'not per block'


class Kind(enum.Enum):
    """How a layout combines with others: prefix and orientation layouts with any, naming layouts exclude each other."""

    PREFIX = 'prefix'
    NAMES = 'names'
    ORIENTATION = 'orientation'
    DIRECTORY = 'directory'  # a Hugging Face directory whose weights need no rule beyond reading the directory


class Stage(enum.Enum):
    """When a refusal is decided, in this order: from the file's first bytes (formats.readers), its names, its
    shapes, its config.json. Within a stage, REFUSALS' order; the first refusal that applies wins."""

    FILE = 'file'
    NAMES = 'names'
    SHAPES = 'shapes'
    CONFIG = 'config'

    @property
    def rank(self) -> int:
        return list(Stage).index(self)


class Target(enum.Enum):
    """Which file of a converted directory a rule's fla tensor is written to."""

    WEIGHTS = 'the weights (model.safetensors)'
    STATE = 'the tuned state (rwkv7_state.safetensors)'


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


# ------------------------------------------------------------------------------------------------------------ rules

@dataclass(frozen=True)
class Rule:
    blinkdl: str  # canonical RWKV-LM name; '{i}' is the block index
    fla: str | None  # fla's name; None: in RWKV-LM files but unused by the model, so not converted
    shape: str  # canonical RWKV-LM shape, in symbols
    op: UnaryOp = IDENTITY  # BlinkDL tensor -> fla tensor; `reverse` goes back
    layers: Scope = Scope.ALL
    optional: bool = False
    note: str = ''
    target: Target = Target.WEIGHTS  # STATE: a tuned initial state, in a file of its own (formats/state_file.py)
    evidence: tuple[Source, ...] = ()  # where its orientation and dtype were read (as the layouts cite theirs)

    def applies_to(self, layer: int | None) -> bool:
        if self.layers is Scope.GLOBAL:
            return layer is None
        if layer is None:
            return False
        return self.layers is Scope.ALL or (self.layers is Scope.FIRST) == (layer == 0)

    def names(self, layer: int | None) -> tuple[str, str | None]:
        fmt = {} if layer is None else {'i': layer}
        return self.blinkdl.format(**fmt), (self.fla.format(**fmt) if self.fla else None)

    @property
    def reverse(self) -> UnaryOp:
        """fla tensor -> BlinkDL tensor (every converted rule has one: engine.check_table)."""
        back = self.op.reverse
        if back is None:
            raise TypeError(f'rule {self.blinkdl}: {self.op!r} has no reverse')
        return back


@dataclass(frozen=True)
class ShapeAlias:
    """A stored shape accepted for a rule's canonical shape: `normalize(stored, head_size)` is the canonical shape, or
    None when this alias cannot explain `stored`."""

    canonical: str  # the rules' symbolic shape it applies to
    variant: str
    where: str
    normalize: Callable[[Shape, int | None], Shape | None]


# ---------------------------------------------------------------------------------------------------------- layouts

@dataclass(frozen=True)
class Rename:
    """One stored name (a regex, matched in full after the wrapper prefixes are gone) and what it becomes: a
    canonical name (`\\1` refers to groups), several (`op` splits the tensor, one output each), or None (dropped).
    `op` turns the stored tensor into the canonical one (an `Orient` chooses it per tensor from the shape)."""

    pattern: str
    to: str | tuple[str, ...] | None
    op: Op | Orient = IDENTITY

    def match(self, name: str) -> list[str | None] | None:
        """The canonical name(s) `name` becomes ([None]: dropped), or None when this rename does not match."""
        m = re.fullmatch(self.pattern, name)
        if m is None:
            return None
        if self.to is None:
            return [None]
        return [m.expand(t) for t in (self.to if isinstance(self.to, tuple) else (self.to,))]


@dataclass(frozen=True)
class Seen:
    """What the predicates look at: names -> stored shapes, the naming layouts detected (with the names that show
    them) and config.json where the input has one."""

    shapes: Mapping[str, Shape]
    layouts: tuple[tuple[Layout, tuple[str, ...]], ...] = ()
    config: Mapping | None = None


class Predicate:
    """When a layout or a refusal applies: `hits` are what shows it (names, or details for the message), [] if not."""

    def hits(self, seen: Seen) -> list[str]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Layout:
    """A way RWKV-7 weights are stored in practice, as the rules that bring it to the canonical names and shapes.

    A file is in this layout when `detect` has hits. Layouts of kind NAMES rename tensors and exclude each other;
    PREFIX and ORIENTATION layouts combine with any."""

    name: str  # for people: notes, messages, docs; never branched on
    side: Side
    kind: Kind
    who: str
    evidence: tuple[Source, ...]
    detect: Predicate
    renames: tuple[Rename, ...]
    note: str = ''
    caveat: str = ''  # added to the note a conversion prints when the layout is applied


# --------------------------------------------------------------------------------------------------------- refusals

@dataclass(frozen=True)
class Refusal:
    """A family of inputs fla's RWKV7ForCausalLM cannot run (or that are no model), and what to use instead.

    `when` decides from what `stage` sees (names after the layouts' renames, shapes, config.json); the message is
    `message` formatted with the variant, the reason, the hits (`{hits}`: the first two; `{0}`, `{1}`: each)."""

    variant: str
    stage: Stage
    sides: frozenset[Side]
    when: Predicate
    reason: str
    message: str = 'this is a {variant} checkpoint ({hits}): {reason}'
    error: type[ConversionError] = UnsupportedVariantError
    evidence: tuple[Source, ...] = field(default=())
    other_direction: bool = False  # the input is one the other direction takes (inspect then reads it that way)

    def text(self, hits: list[str]) -> str:
        return self.message.format(*hits, variant=self.variant, reason=self.reason, hits=', '.join(hits[:2]))


# --------------------------------------------------------------------------------------------------------- adapters

@dataclass(frozen=True)
class Factor:
    """One tensor of an adapter, stored as `<target>.<suffix>` beside or instead of a target weight [out, in]: its
    shape in the symbols `in`, `out`, `r` (and `in/r`, `out/r`), and the file it comes from."""

    suffix: str
    shape: str  # e.g. 'r,in'
    init_file: bool = False  # PiSSA's init_pissa.pth, not the trained adapter file

    def resolve(self, out: int, in_: int, r: int) -> tuple[int, ...] | None:
        """The shape for a target [out, in] and rank r; None when r does not divide a dimension the shape splits."""
        sizes = {'in': in_, 'out': out, 'r': r}
        dims = []
        for part in self.shape.split(','):
            top, _, below = part.partition('/')
            if below and sizes[top] % sizes[below]:
                return None
            dims.append(sizes[top] // sizes[below] if below else sizes[top])
        return tuple(dims)


@dataclass(frozen=True)
class PeftTensor:
    """One tensor of a method's PEFT form, per target: the adapter factors it is made of (suffix, sign), joined along
    `axis` when there are several (PiSSA's [A; A0], [B, -B0]); one factor with sign 1 is the factor as stored."""

    suffix: str  # after the module's name: 'lora_A.weight', 'miss_block'
    parts: tuple[tuple[str, int], ...]
    axis: int = 0

    @property
    def as_stored(self) -> bool:
        return len(self.parts) == 1 and self.parts[0][1] == 1


@dataclass(frozen=True)
class AdapterMethod:
    """An RWKV-PEFT fine-tuning method: the factors it stores per target weight, how its rank is read, the merge
    (adapter_ops.py) and what else the merge needs, and what PEFT (Hugging Face) holds that is equal to it."""

    name: str  # for people: messages, docs, inspect
    factors: tuple[Factor, ...]
    rank: tuple[str, int]  # (suffix, axis) the rank r is read from
    formula: str  # the merge, for docs and inspect
    merge: Callable  # adapter_ops: (W, factors by suffix, alpha) -> merged W (torch)
    needs: str  # '' or the option the merge needs besides the files: '--lora-alpha', '--pissa-init'
    peft: str  # the PEFT form ('' when PEFT has no equal form)
    peft_note: str  # how it is carried to PEFT, or why it cannot be
    evidence: tuple[Source, ...]
    note: str = ''
    peft_type: str = ''  # adapter_config.json's peft_type ('' when PEFT has no equal form)
    peft_tensors: tuple[PeftTensor, ...] = ()
    peft_alpha: str = ''  # LoRA's lora_alpha: 'alpha' (the merge's) or 'rank' (PEFT's rank: scale 1)

    @property
    def peft_rank_factor(self) -> int:
        """PEFT's rank over the method's (PiSSA's LoRA joins two factors)."""
        return len(self.peft_tensors[0].parts) if self.peft_tensors else 1

    @property
    def peft_invertible(self) -> bool:
        """Every PEFT tensor is a factor as stored: a PEFT adapter of this form comes back as this method exactly."""
        return bool(self.peft_tensors) and all(t.as_stored for t in self.peft_tensors)

    @property
    def adapter_factors(self) -> tuple[Factor, ...]:
        return tuple(f for f in self.factors if not f.init_file)

    def signature(self) -> frozenset[tuple[str, int]]:
        """(suffix, rank of its shape) of the factors in the adapter file: what tells a file's method."""
        return frozenset((f.suffix, len(f.shape.split(','))) for f in self.adapter_factors)
