"""The array transforms the table declares: each op turns stored tensors into canonical ones, and `reverse` is its
exact inverse (or None where there is none; nothing inherits "I am my own reverse").

An op takes `inputs` arrays and gives `outputs` arrays (`run`, `shapes`); the one-to-one ops also offer `apply` and
`shape` on a single array. `shape`/`shapes` map shapes without touching data, so plans need no reads.
`bytes_unchanged` is True only for ops whose output holds exactly the input's bytes in the same order (identity and
reshapes): the converter may then copy the stored bytes without loading them. tests/mapping/test_ops.py applies
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
    """A 2-D transpose: RWKV-LM stores LoRA factors as `x @ W`, nn.Linear as `W @ x`."""

    name = 'transpose'

    def apply(self, data: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(data.T)

    def shape(self, shape: Shape) -> Shape:
        return tuple(reversed(shape))

    @property
    def reverse(self) -> Op:
        return self


class SwapLastTwo(UnaryOp):
    """`[..., A, B]` -> `[..., B, A]`: a tuned wkv state per head, BlinkDL's `[H, V, K]` <-> fla's `[H, K, V]`."""

    name = 'per-head transpose [H,V,K] -> [H,K,V]'

    def apply(self, data: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.swapaxes(data, -1, -2))

    def fits(self, shape: Shape) -> bool:
        return len(shape) >= 2

    def shape(self, shape: Shape) -> Shape:
        return (*shape[:-2], shape[-1], shape[-2])

    @property
    def reverse(self) -> Op:
        return self


class Squeeze(UnaryOp):
    """`[1,1,C]` -> `[C]` (any shape is flattened); the reverse is `Unsqueeze`."""

    name = 'squeeze [1,1,C] -> [C]'
    bytes_unchanged = True

    def apply(self, data: np.ndarray) -> np.ndarray:
        return data.reshape(self.shape(data.shape))

    def shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    @property
    def reverse(self) -> Op:
        return UNSQUEEZE


class Unsqueeze(UnaryOp):
    """`[C]` -> `[1,1,C]`; the reverse is `Squeeze`."""

    name = 'unsqueeze [C] -> [1,1,C]'
    bytes_unchanged = True

    def apply(self, data: np.ndarray) -> np.ndarray:
        return data.reshape(self.shape(data.shape))

    def shape(self, shape: Shape) -> Shape:
        return (1, 1, math.prod(shape))

    @property
    def reverse(self) -> Op:
        return SQUEEZE


class DropUnitDims(UnaryOp):
    """`[1,1,H,N]` -> `[H,N]`: the leading unit dims dropped (rc4a's time_faaaa); other shapes are left alone."""

    name = 'reshape [1,1,H,N] -> [H,N]'
    bytes_unchanged = True

    def apply(self, data: np.ndarray) -> np.ndarray:
        return data.reshape(self.shape(data.shape))

    def shape(self, shape: Shape) -> Shape:
        return tuple(shape[-2:]) if len(shape) > 2 and all(d == 1 for d in shape[:-2]) else tuple(shape)

    @property
    def reverse(self) -> Op:
        return ADD_UNIT_DIMS


class AddUnitDims(UnaryOp):
    """`[H,N]` -> `[1,1,H,N]`; the reverse is `DropUnitDims`."""

    name = 'reshape [H,N] -> [1,1,H,N]'
    bytes_unchanged = True

    def apply(self, data: np.ndarray) -> np.ndarray:
        return data.reshape(self.shape(data.shape))

    def shape(self, shape: Shape) -> Shape:
        return (1, 1, *shape)

    @property
    def reverse(self) -> Op:
        return DROP_UNIT_DIMS


class Split(Op):
    """One stacked `[n,C]` tensor -> its `n` rows, each a `[1,1,C]` vector (fla v1's `x_x` holds six); the reverse
    is `Stack`."""

    def __init__(self, n: int):
        self.outputs = n
        self.name = f'split [{n},C] -> {n} x [1,1,C]'

    def fits(self, shape: Shape) -> bool:
        return len(shape) >= 1 and shape[0] == self.outputs

    def run(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        (data,) = arrays
        rows = data.reshape(self.outputs, -1)
        return tuple(np.ascontiguousarray(rows[j].reshape(1, 1, -1)) for j in range(self.outputs))

    def shapes(self, shapes: tuple[Shape, ...]) -> tuple[Shape, ...]:
        (shape,) = shapes
        return ((1, 1, math.prod(shape) // self.outputs),) * self.outputs

    @property
    def reverse(self) -> Op:
        return Stack(self.outputs)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.outputs == self.outputs

    def __hash__(self) -> int:
        return hash((type(self), self.outputs))


class Stack(Op):
    """`n` vectors of C elements -> one `[n,C]` tensor; the reverse is `Split`."""

    def __init__(self, n: int):
        self.inputs = n
        self.name = f'stack {n} x [1,1,C] -> [{n},C]'

    def run(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        assert len(arrays) == self.inputs, (len(arrays), self.inputs)
        return (np.ascontiguousarray(np.stack([a.reshape(-1) for a in arrays])),)

    def shapes(self, shapes: tuple[Shape, ...]) -> tuple[Shape, ...]:
        return ((self.inputs, math.prod(shapes[0])),)

    @property
    def reverse(self) -> Op:
        return Split(self.inputs)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.inputs == self.inputs

    def __hash__(self) -> int:
        return hash((type(self), self.inputs))


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


IDENTITY, TRANSPOSE, SQUEEZE, UNSQUEEZE = Identity(), Transpose(), Squeeze(), Unsqueeze()
DROP_UNIT_DIMS, ADD_UNIT_DIMS = DropUnitDims(), AddUnitDims()
SWAP_LAST_TWO = SwapLastTwo()
