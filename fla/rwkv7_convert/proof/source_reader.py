"""The reference's own reading of a BlinkDL checkpoint: canonical RWKV-LM names and BlinkDL's shapes, written here as
literals, without the converter's table (nothing here imports fla.rwkv7_convert.mapping).

verify must not read the source through the code it proves: a wrong rule in mapping/table.py would make the
converter and the reference wrong alike, and the logits would agree. So the reference reads the file through this
module (the bytes through formats/, the hardened lazy readers; names and layouts through source_layouts.py), and
proof/files.py compares this reading with the converter's plan before any compute: the same stored key, the same
op (as stored / transposed) and the same canonical shape for every canonical tensor.

BlinkDL's names and shapes: RWKV-LM RWKV-v7/train_temp/src/model.py (RWKV_Tmix_x070, RWKV_CMix_x070) and
RWKV-v7/rwkv_v7_demo.py; `[1,1,C]` vectors may be stored with any unit dims (`[C]`), r_k `[H,N]` may be stored
`[1,1,H,N]` (rc4a) or flat `[C]` (then the head size must be given).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.checkpoint import TensorRef
from fla.rwkv7_convert.formats.dtypes import to_float32
from fla.rwkv7_convert.formats.readers import open_checkpoint
from fla.rwkv7_convert.proof.source_layouts import STATE, WRAPPERS, canonical_name, strip_wrapper_prefixes

# torch is imported inside the functions that use it: the command line imports this module, and a conversion never
# pays for torch (~2 s: the `import torch` row of benchmarks/benchmark_convert.py; tests/test_commands.py checks).

# BlinkDL's shapes, literally (RWKV-LM RWKV-v7/train_temp/src/model.py): V vocab, C hidden, H heads, N head size,
# F FFN width, Dw/Da/Dv/Dg the LoRA ranks.
GLOBAL_SHAPES: dict[str, tuple] = {
    'emb.weight': ('V', 'C'), 'ln_out.weight': ('C',), 'ln_out.bias': ('C',), 'head.weight': ('V', 'C'),
}
BLOCK_SHAPES: dict[str, tuple] = {
    'ln1.weight': ('C',), 'ln1.bias': ('C',), 'ln2.weight': ('C',), 'ln2.bias': ('C',),
    **{f'att.x_{c}': (1, 1, 'C') for c in 'rwkvag'},
    'att.w0': (1, 1, 'C'), 'att.w1': ('C', 'Dw'), 'att.w2': ('Dw', 'C'),
    'att.a0': (1, 1, 'C'), 'att.a1': ('C', 'Da'), 'att.a2': ('Da', 'C'),
    'att.v0': (1, 1, 'C'), 'att.v1': ('C', 'Dv'), 'att.v2': ('Dv', 'C'),
    'att.g1': ('C', 'Dg'), 'att.g2': ('Dg', 'C'),
    'att.k_k': (1, 1, 'C'), 'att.k_a': (1, 1, 'C'), 'att.r_k': ('H', 'N'),
    'att.receptance.weight': ('C', 'C'), 'att.key.weight': ('C', 'C'), 'att.value.weight': ('C', 'C'),
    'att.output.weight': ('C', 'C'), 'att.ln_x.weight': ('C',), 'att.ln_x.bias': ('C',),
    'ffn.x_k': (1, 1, 'C'), 'ffn.key.weight': ('F', 'C'), 'ffn.value.weight': ('C', 'F'),
}
FIRST_BLOCK_SHAPES: dict[str, tuple] = {'ln0.weight': ('C',), 'ln0.bias': ('C',)}
LAYER0_UNUSED = ('att.v0', 'att.v1', 'att.v2')  # RWKV-LM training creates them for block 0; never read there
# LoRA factors: which axis holds C in RWKV-LM (x @ w1 @ w2: factor 1 is [C,D], factor 2 [D,C])
FACTOR_C_AXIS = {f'att.{c}{j}': 0 if j == '1' else 1 for c in 'wavg' for j in '12'}
MAX_WRAPPERS = 8

_BLOCK = re.compile(r'^blocks\.(0|[1-9][0-9]*)\.(.+)$')


@dataclass(frozen=True)
class Stored:
    """One canonical tensor as the reference reads it: the stored key (its path through wrapper containers), whether
    it is stored transposed, and the canonical shape it is reshaped to."""

    path: tuple[str, ...]
    ref: TensorRef
    transposed: bool
    shape: tuple[int, ...]

    @property
    def origin(self) -> str:
        how = ' transposed' if self.transposed else ''
        return f'{"/".join(self.path)} {list(self.ref.shape)}{how}'

    def load(self) -> np.ndarray:
        """The carrier array (bf16 as uint16 bit patterns) in the canonical orientation and shape."""
        data = self.ref.load().reshape(self.ref.shape)
        if self.transposed:
            data = np.ascontiguousarray(data.T)
        return data.reshape(self.shape)


@dataclass
class Reading:
    """The whole file as the reference reads it: canonical name -> Stored, the sizes, and what it did not read."""

    path: str
    tensors: dict[str, Stored]
    dims: dict[str, int]
    unknown: list[str] = field(default_factory=list)  # stored keys that are no RWKV-7 tensor
    states: list[str] = field(default_factory=list)  # tuned states: read by proof/state_pair.py
    layouts: set[str] = field(default_factory=set)


def _fail(shown: str, what: str) -> ConversionError:
    return ConversionError(f'the reference\'s reader: {what}', shown)


def _holds_tensors(node: Mapping, depth: int = 0) -> bool:
    return depth < MAX_WRAPPERS and any(isinstance(v, TensorRef) or (isinstance(v, Mapping) and _holds_tensors(v, depth + 1))
                                        for v in node.values())


def unwrap(tree: object, shown: str) -> tuple[tuple[str, ...], Mapping]:
    """The flat state dict inside `tree` and the wrapper keys on the way to it."""
    path: tuple[str, ...] = ()
    while isinstance(tree, Mapping) and not any(isinstance(v, TensorRef) for v in tree.values()):
        inner = [k for k in WRAPPERS if isinstance(tree.get(k), Mapping)]
        # the container that holds tensors wins over an empty or tensor-less one beside it
        inner = next((k for k in inner if _holds_tensors(tree[k])), inner[0] if inner else None)
        if inner is None or len(path) >= MAX_WRAPPERS:
            break
        path, tree = path + (inner,), tree[inner]
    if not isinstance(tree, Mapping):
        raise _fail(shown, f'holds a {type(tree).__name__}, expected a state dict')
    return path, tree


def _names(flat: Mapping, path: tuple[str, ...], shown: str, reading: Reading) -> dict[str, tuple[tuple, TensorRef, bool]]:
    """Canonical name -> (stored path, ref, transposed by its layout), every stored key normalised on its own."""
    out: dict[str, tuple[tuple, TensorRef, bool]] = {}
    for key, ref in flat.items():
        if not isinstance(key, str) or not isinstance(ref, TensorRef):
            raise _fail(shown, f'{key!r} is not a named tensor')
        bare = strip_wrapper_prefixes(key)
        if STATE.match(bare):
            reading.states.append(key)
            continue
        name, transposed, layout = canonical_name(bare)
        if layout:
            reading.layouts.add(layout)
        if name in out:
            raise _fail(shown, f'{name} is stored twice ({"/".join(out[name][0])} and {"/".join(path + (key,))})')
        out[name] = (path + (key,), ref, transposed)
    return out


def _unit_dims(shape: tuple[int, ...], tail: int) -> bool:
    return len(shape) >= tail and all(d == 1 for d in shape[:-tail])


def _dims(named: dict, shown: str, head_size: int | None) -> dict[str, int]:
    """V, C, L, H, N, F and the LoRA ranks from the canonical tensors' stored shapes."""
    def shape(name: str) -> tuple[int, ...]:
        if name not in named:
            raise _fail(shown, f'{name} is missing')
        return tuple(named[name][1].shape)

    emb = shape('emb.weight')
    if len(emb) != 2:
        raise _fail(shown, f'emb.weight is {list(emb)}, expected [V, C]')
    V, C = emb
    blocks = {int(m.group(1)) for n in named if (m := _BLOCK.match(n))}
    L = max(blocks) + 1 if blocks else 0
    r_k = shape('blocks.0.att.r_k')
    if len(r_k) >= 2 and _unit_dims(r_k, 2):
        H, N = r_k[-2:]
    elif len(r_k) == 1 and head_size:
        H, N = r_k[0] // head_size, head_size
    else:
        raise _fail(shown, f'blocks.0.att.r_k is {list(r_k)}: cannot read the head size (flat r_k needs --head-size)')

    def rank(name: str) -> int:
        s = shape(name)
        if len(s) != 2 or C not in s:
            raise _fail(shown, f'{name} is {list(s)}, expected [C, rank] or its transpose with C = {C}')
        return s[1] if s[0] == C else s[0]

    v_from = 'blocks.1.att.v1' if L > 1 else 'blocks.0.att.v1'
    Dv = rank(v_from) if v_from in named else 0
    return {'V': V, 'C': C, 'L': L, 'H': H, 'N': N, 'F': shape('blocks.0.ffn.key.weight')[0],
            'Dw': rank('blocks.0.att.w1'), 'Da': rank('blocks.0.att.a1'), 'Dv': Dv, 'Dg': rank('blocks.0.att.g1')}


def expected_names(L: int) -> dict[str, tuple]:
    """Every canonical tensor of an L-block model with its shape in symbols (block 0's v0/v1/v2 included)."""
    out = {'emb.weight': GLOBAL_SHAPES['emb.weight']}
    for i in range(L):
        if i == 0:
            out.update({f'blocks.0.{n}': s for n, s in FIRST_BLOCK_SHAPES.items()})
        out.update({f'blocks.{i}.{n}': s for n, s in BLOCK_SHAPES.items()})
    out.update({n: s for n, s in GLOBAL_SHAPES.items() if n != 'emb.weight'})
    return out


def _fits(stored: tuple[int, ...], want: tuple[int, ...], symbols: tuple, head_size: int | None) -> bool:
    """A stored shape the canonical one reads as (a reshape that keeps the element order)."""
    if stored == want:
        return True
    if symbols == (1, 1, 'C'):  # vectors: [C], [1,C], [1,1,C]
        return _unit_dims(stored, 1) and stored[-1] == want[-1]
    if symbols == ('H', 'N'):  # r_k: [1,1,H,N] (rc4a's time_faaaa), or flat [C] with the head size given
        return (_unit_dims(stored, 2) and stored[-2:] == want) or (stored == (want[0] * want[1],) and bool(head_size))
    return False


def _oriented(name: str, stored: tuple[int, ...], C: int) -> bool:
    """Whether a LoRA factor is stored transposed (web-rwkv / ai00 `.st`: Ai00-X/ai00_server
    assets/scripts/convert_safetensors.py @ 5ff7a6a9 transposes w1 w2 a1 a2 g1 g2 v1 v2): read from its shape, C on
    the wrong axis. A [C,C] factor cannot tell and is read as stored."""
    axis = FACTOR_C_AXIS[name.split('.', 2)[2]]
    return len(stored) == 2 and stored[0] != stored[1] and stored[axis] != C and stored[1 - axis] == C


def read_tree(tree: object, shown: str, head_size: int | None = None) -> Reading:
    """The reference's reading of an opened checkpoint's tree (names and shapes only; nothing is loaded)."""
    path, flat = unwrap(tree, shown)
    reading = Reading(shown, {}, {})
    named = _names(flat, path, shown, reading)
    dims = reading.dims = _dims(named, shown, head_size)
    expected = expected_names(dims['L'])
    problems = []
    for name, (where, ref, transposed) in named.items():
        symbols = expected.get(name)
        if symbols is None:
            reading.unknown.append('/'.join(where))
            continue
        want = tuple(s if isinstance(s, int) else dims[s] for s in symbols)
        stored = tuple(ref.shape)
        shape = stored[::-1] if transposed else stored  # as its layout reads it (nn.Linear factors)
        if name.split('.', 2)[-1] in FACTOR_C_AXIS and name.startswith('blocks.') and _oriented(name, shape, dims['C']):
            transposed, shape = not transposed, shape[::-1]
        if not _fits(shape, want, symbols, head_size):
            problems.append(f'{name} ({"/".join(where)}) is {list(stored)}, expected {list(want)} '
                            f'[{",".join(map(str, symbols))}]')
            continue
        reading.tensors[name] = Stored(where, ref, transposed, want)
    optional = {f'blocks.0.{n}' for n in LAYER0_UNUSED}
    missing = [n for n in expected if n not in named and n not in optional]
    problems += [f'{n} is missing' for n in missing]
    if problems:
        more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
        raise _fail(shown, problems[0] + more)
    return reading


def to_torch(data: np.ndarray, dtype: str):
    """A carrier array as a float torch tensor: float64 kept, everything else float32."""
    import torch

    return torch.from_numpy(data if dtype == 'F64' else to_float32(data, dtype))


def load_source_weights(source: str | os.PathLike, head_size: int | None = None) -> dict:
    """The whole checkpoint as the reference reads it (canonical names -> float torch tensors), for small models and
    the known-answer fixtures; refuses a file with tensors it does not know."""
    with open_checkpoint(source) as ckpt:
        reading = read_tree(ckpt.tree, str(source), head_size)
        if reading.unknown:
            raise _fail(str(source), f'{reading.unknown[0]} is no RWKV-7 tensor')
        return {n: to_torch(s.load(), s.ref.dtype).reshape(s.shape) for n, s in reading.tensors.items()}
