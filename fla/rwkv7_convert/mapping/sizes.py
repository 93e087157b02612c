"""A model's sizes read from its tensors' shapes, the same way for both plans (plan.py, export_plan.py): every
canonical tensor votes for the values of its shape's symbols (bind_sizes), the votes become Dims (dims_from), and each
size no tensor can tell is one problem of the key report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict

from fla.rwkv7_convert.errors import KeyMismatchError
from fla.rwkv7_convert.mapping.config import Dims
from fla.rwkv7_convert.mapping.engine import canonical_shape, lookup_blinkdl
from fla.rwkv7_convert.mapping.ops import Shape
from fla.rwkv7_convert.mapping.schema import Target
from fla.rwkv7_convert.mapping.table import SIZES


def bind_sizes(shapes: Mapping[str, Shape]) -> dict[str, int]:
    """Every size symbol bound from the rows' symbolic shapes: each canonical RWKV-LM tensor present votes for the
    values its shape gives its symbols, and each symbol takes the value most tensors agree on (so one broken tensor
    shows up as mis-shaped instead of hiding the model's size). Used by both directions: the fla side passes its
    tensors under their RWKV-LM names, in RWKV-LM shapes (`rule.reverse`). Unused rows (block 0's v0/v1/v2)
    vote only for symbols no used row binds; a flat `r_k` binds nothing (its N needs --head-size)."""
    used: dict[str, Counter] = {}
    unused: dict[str, Counter] = {}
    for name, shape in shapes.items():
        found = lookup_blinkdl(name)
        if found is None or found[0].names(found[1])[0] != name or found[0].target is not Target.WEIGHTS:
            continue  # a tuned state is checked against the model's sizes, never defines them
        rule = found[0]
        symbols = rule.shape.split(',')
        shape = canonical_shape(rule, shape, None) or shape
        if len(shape) != len(symbols):
            continue
        votes = used if rule.fla is not None else unused
        for symbol, value in zip(symbols, shape):
            if not symbol.isdigit():
                votes.setdefault(symbol, Counter())[value] += 1
    return {s: (used.get(s) or unused[s]).most_common(1)[0][0] for s in SIZES if s in used or s in unused}


# Where each size is read, by canonical RWKV-LM name (bind_sizes reads every tensor of that size; these are named
# when none can tell): Dv from block 1 on, since block 0's value LoRA is unused.
SIZE_SOURCES = {'V': 'emb.weight', 'C': 'emb.weight', 'H': 'blocks.0.att.r_k', 'N': 'blocks.0.att.r_k',
                'F': 'blocks.0.ffn.key.weight', 'Dw': 'blocks.0.att.w1', 'Da': 'blocks.0.att.a1', 'Dv': 'blocks.1.att.v1',
                'Dg': 'blocks.0.att.g1'}


def dims_from(shapes: Mapping[str, Shape], L: int, path: str, *, problems: Iterable[str] = (),
              known: Mapping[str, int] | None = None, shown: Callable[[str], str] = str, default_Dv: int = 32) -> Dims:
    """The sizes of a model of L layers, for both plans: bound from its tensors under their canonical RWKV-LM names
    in RWKV-LM shapes (bind_sizes; the export passes fla's tensors through their rules' reverse), `known`
    sizes taking precedence (the BlinkDL side's head sizes, from a flat r_k and --head-size). Each size that cannot be
    read is one problem, naming the tensor as `shown` names it on the input's side; they are raised with `problems`
    (the caller's so far) in one KeyMismatchError. A one-layer model has no used value LoRA: Dv is then `default_Dv`
    unless block 0's unused copy tells."""
    problems = list(problems)
    sizes = {**bind_sizes(shapes), **(known or {})}
    for symbol, name in SIZE_SOURCES.items():
        if symbol not in sizes and not (symbol == 'Dv' and L <= 1):
            found = f'RWKV-LM shape {list(shapes[name])}' if name in shapes else 'missing'
            problems.append(f'cannot read {SIZES[symbol]} from {shown(name)} ({found}) or any tensor of that size')
    dims = Dims(L=L, **{s: sizes.get(s, default_Dv if s == 'Dv' else 0) for s in SIZE_SOURCES})
    if dims.H and dims.N and dims.C and dims.H * dims.N != dims.C:
        problems.append(f'{shown(SIZE_SOURCES["N"])} is {dims.H}x{dims.N} = {dims.H * dims.N}, expected H*N = hidden '
                        f'size {dims.C}')
    if problems:
        raise KeyMismatchError(problems, path)
    empty = [f'{k} = 0' for k, v in asdict(dims).items() if v <= 0]
    if empty:  # fla cannot build a model with an empty dimension; the config would divide by it
        raise KeyMismatchError([f'zero-sized model dimension(s) read from the shapes: {", ".join(empty)}'], path)
    return dims
