#!/usr/bin/env python
"""Mutation testing of the name table: does a slip in mapping/table.py (or BlinkDL's eps in mapping/config.py) get
past the tests, and does `verify` pass the wrong model it makes?

Each slip is applied to a copy of the table in a fresh child process (the module objects are patched before the
rest of the package imports them; the file on disk is never edited), then:
  tests   the chosen fast subset (TESTS below) runs in that child with the slip applied: caught if any test fails
          (the failing tests are named; tests/mapping/test_docs.py fails on any change of the table, since
          docs/mapping.md no longer matches, so it is listed apart);
  verify  a small model (tests/rwkv7_factory.py, in the layout the slip touches) is converted with the slipped
          table, then verified against its source with the slip still applied (device cpu-torch): caught when
          verify FAILs or refuses, or when the slipped converter refuses the file (no model made).
The parent converts each source with the real table too: "wrong model" says whether the slipped conversion
differs from the right one (config.json or any tensor).

    python benchmarks/mutation.py                        # every slip; prints the markdown table
    python benchmarks/mutation.py --write-docs           # ... and writes it into docs/verification.md
    python benchmarks/mutation.py --slips rc4a-decay-aaaaa,rules-x_r-x_k --no-tests   # a few, verify only

The package is imported inside the functions: a child must patch the table before anything of fla imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import REPO, md_table, say, write_between_markers
from rwkv7_factory import Goose, add_prefix, make_state_dict, save, write_layout

TESTS = ['tests/mapping', 'tests/convert/test_layouts.py']
DOCS_TEST = 'tests/mapping/test_docs.py'


# --------------------------------------------------------------------------------------------------------- the slips
# Each patch receives the module objects table and config (imported, nothing else of the package yet).

def _layout(table, name: str, first=(), op_of: dict | None = None) -> None:
    """Layout `name` with renames `first` tried before its own (the first match wins), or its renames' ops swapped."""
    layouts = list(table.LAYOUTS)
    i = next(j for j, x in enumerate(layouts) if x.name == name)
    renames = tuple(dataclasses.replace(r, op=op_of.get(r.pattern, r.op)) for r in layouts[i].renames) if op_of else \
        layouts[i].renames
    layouts[i] = dataclasses.replace(layouts[i], renames=tuple(first) + renames)
    table.LAYOUTS = tuple(layouts)


def _renames(table, layout: str, a: str, a_to: str, b: str, b_to: str) -> None:
    _layout(table, layout, first=(table._block(a, a_to), table._block(b, b_to)))


def _swap_rules(table, a: str, b: str) -> None:
    """Rows `a` and `b` (RWKV-LM templates) exchange their fla names: two same-shaped tensors swapped."""
    rules = list(table.RULES)
    ia, ib = (next(i for i, r in enumerate(rules) if r.blinkdl == n) for n in (a, b))
    rules[ia], rules[ib] = (dataclasses.replace(rules[ia], fla=rules[ib].fla),
                            dataclasses.replace(rules[ib], fla=rules[ia].fla))
    table.RULES = tuple(rules)


def _rule_op(table, name: str, op) -> None:
    table.RULES = tuple(dataclasses.replace(r, op=op) if r.blinkdl == name else r for r in table.RULES)


def _identity():
    from fla.rwkv7_convert.mapping.ops import IDENTITY
    return IDENTITY


@dataclasses.dataclass(frozen=True)
class Slip:
    key: str
    what: str
    layout: str  # the file the verify run converts: 'canonical', 'orig_mod' or a tests/rwkv7_factory.py writer
    patch: object


_TRAIN, _DEMO = 'rc4a training names', 'rc4a demo names'
SLIPS = (
    Slip('rc4a-decay-aaaaa', 'rc4a training names: `time_decay` <-> `time_aaaaa`', 'rc4a-train',
         lambda t, c: _renames(t, _TRAIN, r'att\.time_decay', 'att.a0', r'att\.time_aaaaa', 'att.w0')),
    Slip('rc4a-maa-r-k', 'rc4a training names: `time_maa_r` <-> `time_maa_k`', 'rc4a-train',
         lambda t, c: _renames(t, _TRAIN, r'att\.time_maa_r', 'att.x_k', r'att\.time_maa_k', 'att.x_r')),
    Slip('rc4a-demo-kk-ka', 'rc4a demo names: `kk_s` <-> `ka_s`', 'rc4a-demo',
         lambda t, c: _renames(t, _DEMO, r'att\.kk_s', 'att.k_a', r'att\.ka_s', 'att.k_k')),
    Slip('eps-ln-x', '`BLINKDL_LN_X_EPS` 64e-5 -> 1e-5 (mapping/config.py)', 'canonical',
         lambda t, c: setattr(c, 'BLINKDL_LN_X_EPS', 1e-5)),
    Slip('rules-x_r-x_k', 'RULES: `att.x_r` <-> `att.x_k` (two [1,1,C] vectors)', 'canonical',
         lambda t, c: _swap_rules(t, 'blocks.{i}.att.x_r', 'blocks.{i}.att.x_k')),
    Slip('rules-k_k-k_a', 'RULES: `att.k_k` <-> `att.k_a`', 'canonical',
         lambda t, c: _swap_rules(t, 'blocks.{i}.att.k_k', 'blocks.{i}.att.k_a')),
    Slip('rules-r-k', 'RULES: `receptance.weight` <-> `key.weight` (two [C,C] matrices)', 'canonical',
         lambda t, c: _swap_rules(t, 'blocks.{i}.att.receptance.weight', 'blocks.{i}.att.key.weight')),
    Slip('rules-w1-op', 'RULES: `att.w1` transpose dropped (identity)', 'canonical',
         lambda t, c: _rule_op(t, 'blocks.{i}.att.w1', _identity())),
    Slip('trwkv-op', 'transformers-rwkv layout: the transpose of `att.[wavg][12].weight` dropped', 'hf-transformers-rwkv',
         lambda t, c: _layout(t, 'transformers-rwkv Rwkv7 port', op_of={r'blocks\.(\d+)\.att\.([wavg][12])\.weight':
                                                                          _identity()})),
    Slip('prefix-orig-mod', 'PREFIXES: `_orig_mod.` dropped', 'orig_mod',
         lambda t, c: setattr(t, 'PREFIXES', {k: v for k, v in t.PREFIXES.items() if k != '_orig_mod.'})),
)
BY_KEY = {s.key: s for s in SLIPS}


def apply_slip(key: str) -> None:
    """Patch the table's module objects in this process, before anything else of the package is imported."""
    late = [m for m in ('engine', 'plan', 'export_plan') if f'fla.rwkv7_convert.mapping.{m}' in sys.modules]
    assert not late, f'too late to patch the table: mapping.{late[0]} has read it already'
    from fla.rwkv7_convert.mapping import config, table
    BY_KEY[key].patch(table, config)


# -------------------------------------------------------------------------------------------------------- the child

class _Failures:
    def __init__(self):
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(report.nodeid)


def child_tests(key: str) -> dict:
    import pytest
    import torch
    if not torch.cuda.is_available():  # as tests/conftest.py does, but before apply_slip imports fla (and triton)
        os.environ.setdefault('TRITON_INTERPRET', '1')
        os.environ.setdefault('FLA_CACHE_RESULTS', '0')
    apply_slip(key)
    plugin = _Failures()
    os.chdir(REPO)
    code = pytest.main(['-q', '-p', 'no:cacheprovider', '--no-header', *TESTS], plugins=[plugin])
    return {'code': int(code), 'failed': plugin.failed}


def child_verify(key: str, source: str, out: str) -> dict:
    apply_slip(key)
    from fla.rwkv7_convert.api import convert_to_fla, verify
    from fla.rwkv7_convert.errors import ConversionError
    try:
        convert_to_fla(source, out, tokenizer='none')
    except ConversionError as e:
        return {'converted': False, 'verdict': 'convert refused', 'why': e.one_line()}
    try:
        report = verify(source, out, device='cpu-torch')
    except Exception as e:  # verify refusing (ConversionError) or failing to run fla on the directory at all
        why = e.one_line() if isinstance(e, ConversionError) else f'{type(e).__name__}: {e}'
        return {'converted': True, 'verdict': 'refused', 'why': why}
    return {'converted': True, 'verdict': 'PASS' if report.passed else 'FAIL', 'why': report.verdict_line()}


# ------------------------------------------------------------------------------------------------------- the parent

def _run_child(args: list[str], timeout: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / 'tests'), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith('{')), None)
    if line is None:
        raise RuntimeError(f'child {args} printed no result (rc {proc.returncode}): {proc.stderr[-2000:]}')
    return json.loads(line)


def write_sources(folder: Path) -> dict[str, Path]:
    """One small model in every layout the slips touch (tests/rwkv7_factory.py)."""
    sd = make_state_dict(Goose(vocab=96, hidden=64, layers=2, head_size=64, w_rank=16, a_rank=16, v_rank=16,
                               g_rank=16), seed=3)
    out = {'canonical': save(sd, folder / 'canonical.pth'), 'orig_mod': save(add_prefix(sd, '_orig_mod.'),
                                                                            folder / 'orig_mod.pth')}
    for layout in sorted({s.layout for s in SLIPS} - set(out)):
        (folder / layout).mkdir()
        out[layout] = write_layout(layout, sd, folder / layout)[0]
    return out


def same_model(a: Path, b: Path) -> bool:
    """The two converted directories hold the same config.json and the same tensors."""
    import torch
    from safetensors.torch import load_file
    if json.loads((a / 'config.json').read_text()) != json.loads((b / 'config.json').read_text()):
        return False
    ta = {k: v for f in sorted(a.glob('*.safetensors')) for k, v in load_file(str(f)).items()}
    tb = {k: v for f in sorted(b.glob('*.safetensors')) for k, v in load_file(str(f)).items()}
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def measure(slips: list[Slip], tests: bool, folder: Path) -> list[dict]:
    from fla.rwkv7_convert.api import convert_to_fla
    sources = write_sources(folder)
    right = {}
    for layout, src in sources.items():
        right[layout] = folder / f'right-{layout}'
        convert_to_fla(src, right[layout], tokenizer='none')
    rows = []
    for s in slips:
        t0 = time.time()
        out = folder / f'slipped-{s.key}'
        row = {'slip': s, **_run_child(['--child-verify', s.key, str(sources[s.layout]), str(out)], 600)}
        row['wrong'] = None if not row['converted'] else not same_model(out, right[s.layout])
        if tests:
            row['tests'] = _run_child(['--child-tests', s.key], 900)
        row['seconds'] = time.time() - t0
        rows.append(row)
        say(f'{s.key}: verify {row["verdict"]}, wrong model {row["wrong"]}, tests '
            f'{len(row["tests"]["failed"]) if tests else "-"} failed ({row["seconds"]:.0f} s)')
    return rows


def _tests_cell(row: dict) -> str:
    if 'tests' not in row:
        return 'not run'
    failed = row['tests']['failed']
    semantic = [f for f in failed if not f.startswith(DOCS_TEST)]
    if not failed:
        return 'no (all pass)'
    if not semantic:
        return 'only test_docs (docs/mapping.md stale)'
    first = semantic[0].split('::', 1)[-1]
    return f'yes: {len(semantic)} failed (`{first[:60]}`{", ..." if len(semantic) > 1 else ""})'


def _verify_cell(row: dict, folder: str) -> str:
    why = re.sub(r'\s+', ' ', row['why'].replace(folder + os.sep, '')).replace('|', '\\|')
    why = why if why.startswith(row['verdict']) else f'{row["verdict"]}: {why}'
    return why[:240] + ('...' if len(why) > 240 else '')


def table(rows: list[dict], folder: str) -> str:
    cells = []
    for r in rows:
        wrong = 'no model (convert refused)' if r['wrong'] is None else 'yes' if r['wrong'] else 'no (same model)'
        caught = 'yes' if r['verdict'] != 'PASS' else ('no (harmless)' if r['wrong'] is False else '**NO**')
        cells.append([r['slip'].what, r['slip'].layout, wrong, _tests_cell(r), caught, _verify_cell(r, folder)])
    passed_wrong = sum(1 for r in rows if r['verdict'] == 'PASS' and r['wrong'])
    return '\n'.join(md_table(['slip', 'file', 'wrong model made', 'tests catch it', 'verify catches it', 'verify says'],
                               cells) + ['', f'Wrong models passed by verify: **{passed_wrong}** of '
                                             f'{sum(1 for r in rows if r["wrong"])}.'])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--slips', help='comma-separated keys (default: all): ' + ', '.join(BY_KEY))
    p.add_argument('--no-tests', action='store_true', help='skip the test-suite column')
    p.add_argument('--write-docs', action='store_true',
                   help='write the table into docs/verification.md, between its mutation markers')
    p.add_argument('--json', help='also write the rows here')
    p.add_argument('--child-tests', help=argparse.SUPPRESS)
    p.add_argument('--child-verify', nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_tests:
        print(json.dumps(child_tests(a.child_tests)))
        return 0
    if a.child_verify:
        print(json.dumps(child_verify(*a.child_verify)))
        return 0
    slips = [BY_KEY[k] for k in a.slips.split(',')] if a.slips else list(SLIPS)
    with tempfile.TemporaryDirectory(prefix='rwkv7-mutation-') as tmp:
        rows = measure(slips, not a.no_tests, Path(tmp))
        text = table(rows, tmp)
    print(text)
    if a.json:
        Path(a.json).write_text(json.dumps([{**r, 'slip': r['slip'].key} for r in rows], indent=1))
    if a.write_docs:
        shown = ['--slips', a.slips] if a.slips else []
        command = ' '.join(['python benchmarks/mutation.py', *shown, *(['--no-tests'] if a.no_tests else []),
                            '--write-docs'])
        write_between_markers(REPO / 'docs' / 'verification.md', 'mutation',
                              f'Measured with `{command}` ({time.strftime("%Y-%m-%d")}):\n\n{text}')
    return 1 if any(r['verdict'] == 'PASS' and r['wrong'] for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
