"""The predicates of table's declarations: when a layout or a refusal applies, decided over the names, the shapes and
config.json an input shows (`Seen`). Each says in `describe` what it tests (docs/mapping.md prints it)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fla.rwkv7_convert.mapping.ops import TRANSPOSE, Orient, Shape, UnaryOp
from fla.rwkv7_convert.mapping.schema import Kind, Predicate, Rename, Seen


@dataclass(frozen=True)
class NamePattern(Predicate):
    """Names matching `pattern` (re.search), optionally only those stored with `rank` dims; with `only`, every name
    must match; `also` must match some name too; `unless` no name."""

    pattern: str
    rank: int | None = None
    only: bool = False
    also: str = ''
    unless: str = ''

    def hits(self, seen: Seen) -> list[str]:
        names = list(seen.shapes)
        pattern = re.compile(self.pattern)
        hits = [n for n in names if pattern.search(n) and (self.rank is None or len(seen.shapes[n]) == self.rank)]
        if not hits or (self.only and len(hits) != len(names)):
            return []
        if self.also and not any(re.search(self.also, n) for n in names):
            return []
        if self.unless and any(re.search(self.unless, n) for n in names):
            return []
        return hits

    def describe(self) -> str:
        text = f'`{self.pattern}`' + (f' stored with {self.rank} dims' if self.rank else '')
        text += f' and `{self.also}`' if self.also else ''
        text += ' (only when every key matches)' if self.only else ''
        return text + (f', unless `{self.unless}`' if self.unless else '')


@dataclass(frozen=True)
class Absent(Predicate):
    """No name matches `pattern`; the hit is a sample of the names there are."""

    pattern: str
    what: str

    def hits(self, seen: Seen) -> list[str]:
        names = list(seen.shapes)
        return [] if any(re.search(self.pattern, n) for n in names) else [', '.join(names[:4])]

    def describe(self) -> str:
        return f'no {self.what}'


@dataclass(frozen=True)
class ShapeTest(Predicate):
    """A function of the names and shapes; its docstring describes it."""

    test: Callable[[Mapping[str, Shape]], list[str]]

    def hits(self, seen: Seen) -> list[str]:
        return self.test(seen.shapes)

    def describe(self) -> str:
        return ' '.join((self.test.__doc__ or '').split())


@dataclass(frozen=True)
class ConfigTest(Predicate):
    """A function of config.json giving the message's details ([] when it passes); its docstring describes it."""

    test: Callable[[Mapping], list[str]]

    def hits(self, seen: Seen) -> list[str]:
        return self.test(seen.config) if seen.config is not None else []

    def describe(self) -> str:
        return ' '.join((self.test.__doc__ or '').split())


def oriented(renames: tuple[Rename, ...], shapes: Mapping[str, Shape]) -> tuple[int, dict[str, UnaryOp | None]] | None:
    """(C, name -> the op each `Orient` rename chooses from its stored shape, None where the shape cannot tell), or
    None when the renames hold no Orient or C cannot be read."""
    chosen = [r for r in renames if isinstance(r.op, Orient)]
    if not chosen or (C := chosen[0].op.size(shapes)) is None:
        return None
    ops = {}
    for name, shape in shapes.items():
        rename = next((r for r in chosen if r.match(name)), None)
        if rename is not None:
            ops[name] = rename.op.choose(shape, C)
    return C, ops


@dataclass(frozen=True)
class Transposed(Predicate):
    """Every tensor the renames' `Orient` applies to whose shape can tell is stored the other way (at least one):
    one factor transposed in an otherwise canonical file is a broken file, left for the shape check."""

    renames: tuple[Rename, ...]

    def hits(self, seen: Seen) -> list[str]:
        found = oriented(self.renames, seen.shapes)
        if found is None:
            return []
        ops = found[1]
        flips = [n for n, op in ops.items() if op is TRANSPOSE]
        readable = [n for n, op in ops.items() if op is not None]
        return flips if flips and len(flips) == len(readable) else []

    def describe(self) -> str:
        name, axis = next(r.op.size_from for r in self.renames if isinstance(r.op, Orient))
        return ('every tensor named by its renames whose shape can tell (C from `' + name + f'` axis {axis}) stored '
                'the other way, at least one')


@dataclass(frozen=True)
class Unreadable(Predicate):
    """A file that `Transposed` recognises, with a factor whose orientation no shape can tell (`[C,C]`); the hits
    are C and that factor."""

    renames: tuple[Rename, ...]

    def hits(self, seen: Seen) -> list[str]:
        if not Transposed(self.renames).hits(seen):
            return []
        C, ops = oriented(self.renames, seen.shapes)
        unclear = [n for n, op in ops.items() if op is None]
        return [str(C), unclear[0]] if unclear else []

    def describe(self) -> str:
        return 'a file in that layout with a factor stored `[C,C]`'


@dataclass(frozen=True)
class MixedLayouts(Predicate):
    """More than one naming layout detected; the hits name the first two with a name each shows."""

    def hits(self, seen: Seen) -> list[str]:
        found = [(x, h) for x, h in seen.layouts if x.kind is Kind.NAMES]
        return [f'{x.name} ({h[0]})' for x, h in found[:2]] if len(found) > 1 else []

    def describe(self) -> str:
        return 'the signatures of two naming layouts'


@dataclass(frozen=True)
class FirstBytes(Predicate):
    """Decided by formats.readers.open_checkpoint from the file's first bytes, before any name is read (formats
    cannot import mapping); listed here so the registry shows every stage."""

    recognised: str

    def hits(self, seen: Seen) -> list[str]:
        return []

    def describe(self) -> str:
        return self.recognised
