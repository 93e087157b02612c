"""The two readings of the source compared before any compute: the converter's plan (mapping.plan.make_plan, the
table) and the reference's own reader (source_reader.py, no table). For every canonical tensor both must take the
same stored key, with the same op (as stored / transposed) and the same canonical shape; one name either reading has
and the other not is a disagreement too. No tensor is loaded: the plan runs on a copy of the file's tree whose
loaders remember their stored key (`tagged_tree`), and each plan entry's loader is followed back to that key
(`trace`), collecting the ops on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.checkpoint import TensorRef

MAX_DEPTH = 16  # deeper containers are left alone: the plan refuses them (more than 8 wrappers)


class Tagged:
    """A tensor's loader that knows the key path it was stored under."""

    __slots__ = ('path', 'inner')

    def __init__(self, path: tuple, inner):
        self.path, self.inner = path, inner

    def __call__(self):
        return self.inner()


def tagged_tree(tree: object, path: tuple = (), depth: int = 0) -> object:
    """`tree` with every TensorRef's loader wrapped in a Tagged (same names, shapes, dtypes and data)."""
    if isinstance(tree, TensorRef):
        return TensorRef(tree.name, tree.shape, tree.dtype, Tagged(path, tree.loader), tree.spanner)
    if isinstance(tree, Mapping) and depth < MAX_DEPTH:
        return {k: tagged_tree(v, path + (k,), depth + 1) for k, v in tree.items()}
    return tree


def trace(ref: TensorRef) -> tuple[tuple | None, str]:
    """(stored key path, 'as stored' / 'transposed' / the ops' names) of a plan entry's tensor: its loader followed
    back through the ops the plan wrapped around it (engine.with_op closes over `ref` and `op`)."""
    loader, transposes, others = ref.loader, 0, []
    for _ in range(MAX_DEPTH):
        if isinstance(loader, Tagged):
            break
        code, cells = getattr(loader, '__code__', None), getattr(loader, '__closure__', None) or ()
        free = dict(zip(code.co_freevars, cells)) if code is not None else {}
        if 'ref' not in free or 'op' not in free:
            return None, f'an untraceable loader {loader!r}'
        op = free['op'].cell_contents
        if not getattr(op, 'bytes_unchanged', False):  # a reshape keeps the element order; the shape is compared
            if type(op).__name__ == 'Transpose':
                transposes += 1
            else:
                others.append(str(op))
        loader = free['ref'].cell_contents.loader
    else:
        return None, 'a chain of ops too long to follow'
    how = ' + '.join(others) if others else 'transposed' if transposes % 2 else 'as stored'
    return loader.path, how


def _describe(side: tuple | None) -> str:
    if side is None:
        return 'nothing'
    path, how, shape = side
    where = '/'.join(map(str, path)) if path else '?'
    return f'{where!r} {how} as {list(shape)}'


SIZES = ('V', 'C', 'L', 'H', 'N', 'F', 'Dw', 'Da', 'Dg')


def disagreements(plan, reading) -> list[str]:
    """Every canonical tensor and size the two readings see differently, one phrase each."""
    table = {}
    for e in plan.entries:
        path, how = trace(e.source)
        table[e.blinkdl] = (path, how, tuple(e.canonical_shape))
    own = {n: (s.path, 'transposed' if s.transposed else 'as stored', s.shape) for n, s in reading.tensors.items()}
    problems = [f'{name}: the converter\'s table reads {_describe(table.get(name))}, the reference\'s reader '
                f'{_describe(own.get(name))}'
                for name in sorted(set(table) | set(own), key=_order) if table.get(name) != own.get(name)]
    dims = asdict(plan.dims)
    sizes = SIZES + (('Dv',) if dims['L'] > 1 else ())  # one block: the value LoRA is unused and may be absent
    problems += [f'size {s}: the converter\'s table reads {dims[s]}, the reference\'s reader {reading.dims[s]}'
                 for s in sizes if dims[s] != reading.dims.get(s)]
    return problems


def _order(name: str) -> tuple:
    parts = name.split('.')
    return (0, int(parts[1]), name) if parts[0] == 'blocks' and parts[1].isdigit() else (1, 0, name)


def check_readings(plan, reading, shown: str) -> None:
    """Refuse (one line naming the file, the first canonical tensor and both origins) when the readings differ."""
    problems = disagreements(plan, reading)
    if problems:
        more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
        raise ConversionError(f'the source is read two ways and they disagree on {problems[0]}{more}: a wrong rule in '
                              'the converter\'s table (mapping/table.py) or in the reference\'s reader '
                              '(proof/source_layouts.py); the conversion cannot be trusted', shown)
