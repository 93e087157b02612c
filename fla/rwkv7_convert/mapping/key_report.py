"""The one key report of both directions: unexpected tensors (with the closest known name) and missing ones, worded
the same whichever side is read. Mis-shaped tensors are reported where the shape is checked, in the same list; the
whole list is raised as one KeyMismatchError."""

from __future__ import annotations

import difflib


def shown_name(name: str) -> str:
    """A name as the report prints it: quoted when it holds whitespace or unprintable characters."""
    return name if name.isprintable() and not any(c.isspace() for c in name) else repr(name)


def unexpected_tensors(unknown: list[str], known: list[str]) -> list[str]:
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f' (closest known name: {close[0]})' if close else ''
        problems.append(f'unexpected tensor {shown_name(name)}{hint}')
    return problems


def missing_tensor(name: str, shape: tuple[int, ...] | list[int]) -> str:
    return f'missing tensor {name} [{",".join(map(str, shape))}]'
