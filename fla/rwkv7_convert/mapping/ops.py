"""The array transforms the table declares: each op turns stored tensors into canonical ones, and `reverse` is its
exact inverse (or None where there is none; nothing inherits "I am my own reverse"). A rule's op must have one (rules
are read both ways); a layout's rename is read one way only and needs none.

An op takes `inputs` arrays and gives `outputs` arrays (`run`, `shapes`); the one-to-one ops also offer `apply` and
`shape` on a single array. `shape`/`shapes` map shapes without touching data, so plans need no reads.
`bytes_unchanged` is True only for ops whose output holds exactly the input's bytes in the same order (identity and
one-to-one reshapes): the converter may then copy the stored bytes without loading them. tests/mapping/test_ops.py applies
every op and its reverse to random data.
"""

from __future__ import annotations

import math

import numpy as np

Shape = tuple[int, ...]


class Op:
    """A transform of `inputs` arrays into `outputs` arrays."""

    name = 'op'
    inputs = 1
    outputs = 1
    bytes_unchanged = False

    def run(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def shapes(self, shapes: tuple[Shape, ...]) -> tuple[Shape, ...]:
        raise NotImplementedError

    def fits(self, shape: Shape) -> bool:
        """Whether a stored tensor of `shape` is in this op's domain (a split needs the right height)."""
        return True

    @property
    def reverse(self) -> Op | None:
        """The exact inverse, or None when the op cannot be undone."""
        return None

    def __repr__(self) -> str:
        return self.name


class UnaryOp(Op):
    """A one-to-one op: `apply` one array, `shape` one shape."""

    def apply(self, data: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def shape(self, shape: Shape) -> Shape:
        raise NotImplementedError

    def run(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        (data,) = arrays
        return (self.apply(data),)

    def shapes(self, shapes: tuple[Shape, ...]) -> tuple[Shape, ...]:
        (shape,) = shapes
        return (self.shape(shape),)


class Identity(UnaryOp):
    name = 'identity'
    bytes_unchanged = True

    def apply(self, data: np.ndarray) -> np.ndarray:
        return data

    def shape(self, shape: Shape) -> Shape:
        return tuple(shape)

    @property
    def reverse(self) -> Op:
        return self


class Transpose(UnaryOp):
    """`[..., A, B]` -> `[..., B, A]`, its own reverse: a 2-D transpose (RWKV-LM stores LoRA factors as `x @ W`,
    nn.Linear as `W @ x`; TRANSPOSE) or, per head, a tuned wkv state (BlinkDL's `[H, V, K]` <-> fla's `[H, K, V]`;
    SWAP_LAST_TWO)."""

    def __init__(self, name: str = 'transpose'):
        self.name = name

    def apply(self, data: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.swapaxes(data, -1, -2))

    def fits(self, shape: Shape) -> bool:
        return len(shape) >= 2

    def shape(self, shape: Shape) -> Shape:
        return (*shape[:-2], shape[-1], shape[-2])

    @property
    def reverse(self) -> Op:
        return self


def _bind(pattern: str, shape: Shape) -> dict[str, int] | None:
    """The sizes `shape` gives the symbols of `pattern` ('1,1,C'), or None when it does not match it literally."""
    parts = pattern.split(',')
    if len(parts) != len(shape):
        return None
    sizes: dict[str, int] = {}
    for part, size in zip(parts, shape):
        if (int(part) if part.isdigit() else sizes.setdefault(part, size)) != size:
            return None
    return sizes


def _resolve(pattern: str, sizes: dict[str, int]) -> Shape:
    return tuple(int(p) if p.isdigit() else sizes[p] for p in pattern.split(','))


def _digits(pattern: str) -> int:
    return math.prod(int(p) for p in pattern.split(',') if p.isdigit())


class Reshape(UnaryOp):
    """The bytes as stored, seen in another shape: `source` -> `target`, both in symbols ('1,1,C' -> 'C'); with
    `outputs` > 1 cut into that many equal tensors of `target` (fla v1's x_x [6,C] -> six [1,1,C]), with `inputs` > 1
    the reverse: joined. Exact by construction: a shape fits only when it matches `source` literally (digits equal, a
    symbol one size throughout) and both sides hold the same symbols, so each output comes from one input only and
    `reverse` (target -> source) gives it back."""

    def __init__(self, source: str, target: str, *, inputs: int = 1, outputs: int = 1):
        def symbols(pattern: str) -> list[str]:
            return sorted(x for x in pattern.split(',') if not x.isdigit())
        same = symbols(source) == symbols(target) and _digits(source) * inputs == _digits(target) * outputs
        if not same or min(inputs, outputs) != 1:
            raise TypeError(f'reshape {source} -> {target}: not the same elements ({inputs} in, {outputs} out)')
        self.source, self.target, self.inputs, self.outputs = source, target, inputs, outputs
        self.bytes_unchanged = inputs == outputs == 1  # split or joined: new arrays, not the stored bytes
        if outputs > 1:
            self.name = f'split [{source}] -> {outputs} x [{target}]'
        elif inputs > 1:
            self.name = f'join {inputs} x [{source}] -> [{target}]'
        else:
            self.name = f'reshape [{source}] -> [{target}]'

    def fits(self, shape: Shape) -> bool:
        return _bind(self.source, tuple(shape)) is not None

    def shapes(self, shapes: tuple[Shape, ...]) -> tuple[Shape, ...]:
        bound = [_bind(self.source, tuple(s)) for s in shapes]
        if len(shapes) != self.inputs or None in bound or any(b != bound[0] for b in bound):
            raise ValueError(f'{self.name}: cannot take {[list(s) for s in shapes]}')
        return (_resolve(self.target, bound[0]),) * self.outputs

    def run(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        (shape,) = set(self.shapes(tuple(a.shape for a in arrays)))
        if self.inputs == self.outputs == 1:
            return (arrays[0].reshape(shape),)
        flat = np.concatenate([a.reshape(-1) for a in arrays])
        return tuple(np.ascontiguousarray(part.reshape(shape)) for part in np.split(flat, self.outputs))

    def apply(self, data: np.ndarray) -> np.ndarray:
        (out,) = self.run((data,))
        return out

    def shape(self, shape: Shape) -> Shape:
        (out,) = self.shapes((shape,))
        return out

    @property
    def reverse(self) -> Op:
        return Reshape(self.target, self.source, inputs=self.outputs, outputs=self.inputs)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((self.source, self.target, self.inputs, self.outputs))


class Orient:
    """Not an op but the choice of one, per tensor, from its stored shape: a LoRA factor stored in either orientation.
    RWKV-LM's orientation has C on axis `c_axis` (`[C,D]` for factor 1, `[D,C]` for factor 2); C is read from
    `size_from` (a tensor name and axis). `choose` gives IDENTITY or TRANSPOSE, or None when the shape cannot tell
    (`[C,C]`)."""

    def __init__(self, c_axis: int, size_from: tuple[str, int] = ('emb.weight', 1)):
        self.c_axis, self.size_from = c_axis, size_from
        self.name = f'transpose when stored {"[D,C]" if c_axis == 0 else "[C,D]"}'

    def size(self, shapes: dict[str, Shape]) -> int | None:
        """C, from the tensor `size_from` names; None when that tensor is missing or not 2-D."""
        name, axis = self.size_from
        shape = shapes.get(name)
        return shape[axis] if shape is not None and len(shape) == 2 else None

    def choose(self, shape: Shape, C: int) -> UnaryOp | None:
        """The op that brings `shape` to RWKV-LM's orientation. Shapes that fit neither are left for the shape check
        to report (IDENTITY)."""
        if len(shape) != 2:
            return IDENTITY
        if shape == (C, C):
            return None
        if shape[self.c_axis] == C:
            return IDENTITY
        return TRANSPOSE if shape[1 - self.c_axis] == C else IDENTITY

    def __repr__(self) -> str:
        return self.name


IDENTITY, TRANSPOSE = Identity(), Transpose()
SQUEEZE = Reshape('1,1,C', 'C')  # fla keeps RWKV-LM's [1,1,C] vectors flat
SWAP_LAST_TWO = Transpose('per-head transpose [H,V,K] -> [H,K,V]')
