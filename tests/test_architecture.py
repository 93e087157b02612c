"""The package's layering (docs/architecture.md), read from the source: every import of every module, including
the ones inside functions, parsed with ast. Each folder may import only the folders below it, nothing imports the
CLI, and the module graph has no cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'fla' / 'rwkv7_convert'
ROOT = 'fla.rwkv7_convert'

# part -> the parts it may import (besides itself). '' is the package root (__version__) and errors.py.
ALLOWED = {
    '': set(),
    'formats': {''},
    'mapping': {'', 'formats'},
    'hub': {'', 'formats'},
    'convert': {'', 'formats', 'mapping', 'hub'},
    # running fla's model (loading, the interpreter and its guard, the torch stand-ins, generate, the state cache):
    # below the proof, which runs fla through it; it never imports the proof
    'runtime': {'', 'formats'},
    'proof': {'', 'formats', 'mapping', 'runtime'},
    # the GPU parity harness, for tests and benchmarks: on top of the proof, and no part of the library imports it
    'parity': {'', 'runtime', 'proof'},
    'api': {'', 'formats', 'mapping', 'hub', 'convert', 'runtime', 'proof'},
    'cli': {'', 'formats', 'mapping', 'hub', 'convert', 'runtime', 'proof'},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix('')
    parts = [p for p in rel.parts if p != '__init__']
    return '.'.join([ROOT, *parts])


def part_of(module: str) -> str:
    """'fla.rwkv7_convert.formats.dtypes' -> 'formats'; the root, errors.py -> ''; cli/ and __main__.py (`python -m
    fla.rwkv7_convert`, which only calls cli.dispatch.main) -> 'cli'."""
    rest = module[len(ROOT) + 1:].split('.') if module != ROOT else []
    if not rest or rest[0] == 'errors':
        return ''
    return 'cli' if rest[0] == '__main__' else rest[0]


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Our modules that `path` imports anywhere (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports pkg.mod when that is a module of ours, else a name of pkg
            names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in known else node.module for a in node.names]
        else:
            assert not (isinstance(node, ast.ImportFrom) and node.level), f'{path}: relative import; use {ROOT}.…'
            continue
        found |= {n for n in names if n == ROOT or n.startswith(ROOT + '.')}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    g = {}
    for name, path in mods.items():
        deps = imports_of(path, known)
        unknown = deps - known
        assert not unknown, f'{name} imports {sorted(unknown)}, which do not exist'
        g[name] = deps - {name}
    return g


def test_every_folder_is_a_known_part():
    parts = {part_of(m) for m in modules()}
    assert parts <= set(ALLOWED), f'parts without a rule in ALLOWED: {sorted(parts - set(ALLOWED))}'
    for folder in (p for p in PACKAGE.iterdir() if p.is_dir() and p.name != '__pycache__' and p.name != 'data'):
        assert (folder / '__init__.py').is_file(), f'{folder.name}/ has no __init__.py'


def test_each_part_imports_only_the_parts_below_it():
    bad = []
    for name, deps in graph().items():
        for dep in deps:
            mine, theirs = part_of(name), part_of(dep)
            if theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f'{name} -> {dep} ({mine or "root"} may not import {theirs or "root"})')
    assert not bad, 'imports against the layering (docs/architecture.md):\n  ' + '\n  '.join(sorted(bad))


def test_nothing_imports_the_cli():
    """Only __main__.py (of the cli part itself) calls into cli/; no library module does."""
    g = graph()
    assert not [n for n, deps in g.items() if any(part_of(d) == 'cli' for d in deps) and part_of(n) != 'cli']
    assert f'{ROOT}.cli.dispatch' in g[f'{ROOT}.__main__']


def test_nothing_in_the_library_imports_the_parity_harness():
    """parity/ is a harness for tests and benchmarks (they import it), not a layer the library stands on."""
    users = sorted(n for n, deps in graph().items() for d in deps if part_of(d) == 'parity' and part_of(n) != 'parity')
    assert not users, f'library modules import the parity harness: {users}'


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n: str):
        state[n] = 1
        stack.append(n)
        for d in sorted(g[n]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)


def test_setup_lists_every_package():
    setup = (REPO / 'setup.py').read_text(encoding='utf-8')
    packages = {module_name(p) for p in PACKAGE.rglob('__init__.py')}
    listed = {ROOT} | {f'{ROOT}.{p}' for p in re.findall(r"'(\w+)'", setup.split('for p in', 1)[1].split(')', 1)[0])}
    assert packages == listed, f'setup.py: missing {sorted(packages - listed)}, extra {sorted(listed - packages)}'


def test_architecture_doc_shows_the_graph():
    """docs/architecture.md's import graph names every part's allowed imports as this test enforces them."""
    doc = (REPO / 'docs' / 'architecture.md').read_text(encoding='utf-8')
    for part, allowed in ALLOWED.items():
        if not part:
            continue
        line = f'{part} -> ' + (', '.join(sorted(a or 'errors' for a in allowed)) or '(nothing)')
        assert line in doc, f'docs/architecture.md lacks the line {line!r}'


# The reference's own reading of the source (issue 29): it must not reach the converter's table, even through another
# module, or a slip in the table would make the reference wrong the same way as the converter.
INDEPENDENT = (f'{ROOT}.proof.source_reader', f'{ROOT}.proof.source_layouts')


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in g[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


@pytest.mark.parametrize('module', INDEPENDENT)
def test_the_reference_reader_never_reaches_the_table(module):
    """The reader imports, directly or through anything it imports, only errors, formats and itself."""
    bad = sorted(m for m in reachable(graph(), module) if part_of(m) not in ('', 'formats') and m not in INDEPENDENT)
    assert not bad, f'{module} reaches {bad}: the reference must read the source without the converter\'s table'
    doc = (REPO / 'docs' / 'architecture.md').read_text(encoding='utf-8')
    line = 'proof.source_reader, proof.source_layouts -> errors, formats (never mapping, not even through proof)'
    assert line in doc, f'docs/architecture.md lacks the line {line!r}'


def test_the_checker_sees_every_kind_of_import(tmp_path):
    """An import inside a function, `from pkg import module` and a plain `import` all count."""
    src = tmp_path / 'm.py'
    src.write_text('import fla.rwkv7_convert.cli\n'
                   'def f():\n'
                   '    from fla.rwkv7_convert.formats import atomic\n'
                   '    from fla.rwkv7_convert.mapping.table import RULES\n')
    known = set(modules())
    assert imports_of(src, known) == {f'{ROOT}.cli', f'{ROOT}.formats.atomic', f'{ROOT}.mapping.table'}
