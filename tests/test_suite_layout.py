"""The test suite's own layout: test modules share code through helper modules and conftest.py files, never by
importing one another (a test module imported elsewhere runs its module-level code twice and ties two files' private
helpers together), and every test folder has its conftest.py."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TEST_MODULES = sorted(p for p in TESTS.rglob('test_*.py') if 'fixtures' not in p.parts)


def _imported(path: Path) -> set[str]:
    """Every module name `path` imports, at any depth (function-local imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add('.' * node.level + (node.module or ''))
            names |= {a.name for a in node.names if node.level}  # `from . import test_x`
    return names


def test_no_test_module_imports_another():
    stems = {p.stem for p in TEST_MODULES}
    found = {}
    for path in TEST_MODULES:
        bad = sorted(n for n in _imported(path) if set(n.lstrip('.').split('.')) & stems)
        if bad:
            found[str(path.relative_to(TESTS))] = bad
    assert not found, f'test modules importing test modules (move what they share to a helper or conftest.py): {found}'


def test_every_test_folder_has_a_conftest():
    folders = {p.parent for p in TEST_MODULES}
    assert sorted(str(f.relative_to(TESTS.parent)) for f in folders if not (f / 'conftest.py').is_file()) == []


def test_the_guard_sees_an_import_of_a_test_module(tmp_path):
    (tmp_path / 'test_a.py').write_text('import test_b\nfrom test_c import x\ndef f():\n    from .test_d import y\n')
    assert {'test_b', 'test_c', '.test_d'} <= _imported(tmp_path / 'test_a.py')
