"""The commands by name: the console scripts (rwkv7-convert, rwkv7-export, rwkv7-verify, rwkv7-inspect), `python -m
fla.rwkv7_convert COMMAND` and inspect.

The console scripts exist only once the package is pip-installed, and the development venv's editable install may
be of another checkout, so they are tested as pip's wrapper runs them: `from rwkv7_convert_entry import convert;
sys.exit(convert())` in a fresh process from this checkout, plus setup.py's entry_points resolved against that
module. `python -m fla.rwkv7_convert` runs in subprocesses (each pays fla's own import: seconds, so few of them)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import script_env

from fla.rwkv7_convert.cli.convert import main_to_fla
from fla.rwkv7_convert.cli.dispatch import COMMANDS, CONSOLE_SCRIPTS, main, run_command
from fla.rwkv7_convert.cli.export import main_from_fla
from fla.rwkv7_convert.cli.inspect import main_inspect
from fla.rwkv7_convert.convert.inspection import SCHEMA
from fla.rwkv7_convert.errors import EXIT_USAGE, NotACheckpointError, UnsupportedVariantError
from fla.rwkv7_convert.mapping.schema import Side
from fla.rwkv7_convert.mapping.table import LAYOUTS

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / 'examples' / 'rwkv7-goose-mini.pth'
HEAVY = ('torch', 'triton', 'transformers', 'fla.models')


def python(*args, cwd=REPO) -> subprocess.CompletedProcess:
    env = script_env()
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])  # this checkout, not an install
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.fixture(scope='module')
def fla_dir(converted_model) -> Path:
    return converted_model(BUNDLED).dir


# ------------------------------------------------------------------------------------------ console scripts

def _entry_points() -> dict[str, str]:
    """setup.py's console_scripts, read by running setup.py with setuptools.setup replaced."""
    import runpy

    import setuptools
    seen = {}
    original = setuptools.setup
    setuptools.setup = lambda **kw: seen.update(kw)
    try:
        runpy.run_path(str(REPO / 'setup.py'))
    finally:
        setuptools.setup = original
    assert 'rwkv7_convert_entry' in seen['py_modules']
    return dict(tuple(x.strip() for x in line.split('=')) for line in seen['entry_points']['console_scripts'])


def test_setup_declares_one_console_script_per_command_each_resolving():
    scripts = _entry_points()
    assert set(scripts) == set(CONSOLE_SCRIPTS.values())
    sys.path.insert(0, str(REPO))
    try:
        import rwkv7_convert_entry as entry
    finally:
        sys.path.remove(str(REPO))
    for name, script in CONSOLE_SCRIPTS.items():
        module, func = scripts[script].split(':')
        assert (module, func) == ('rwkv7_convert_entry', name) and callable(getattr(entry, func)), script
        assert getattr(entry, func).__doc__.startswith(f'{script}:'), script  # the function is that command's


# as pip's generated wrapper runs an entry point, then what it imported
_WRAPPER = '''
import json, sys
sys.argv = [{prog!r}, *{args!r}]
from rwkv7_convert_entry import {func}
try:
    code = {func}()
except SystemExit as e:
    code = e.code
print(json.dumps({{'code': code, 'heavy': [m for m in {heavy!r} if m in sys.modules],
                  'light': getattr(sys.modules['fla'], '__light_stub__', False)}}), file=sys.stderr)
'''


def _console(script: str, *args) -> tuple[int, str, list[str], bool]:
    scripts = _entry_points()
    func = scripts[script].split(':')[1]
    r = python('-c', _WRAPPER.format(prog=script, args=[str(a) for a in args], func=func, heavy=HEAVY))
    *err, last = r.stderr.strip().splitlines() or ['']
    assert r.returncode == 0 and last.startswith('{'), r.stderr  # the probe ran to its end
    probe = json.loads(last)
    return probe['code'], r.stdout + '\n'.join(err), probe['heavy'], probe['light']


@pytest.mark.parametrize('script', [pytest.param(s, id=s) for s in ('rwkv7-convert', 'rwkv7-export', 'rwkv7-verify',
                                                                     'rwkv7-inspect')])
def test_console_script_help_starts_without_fla_init_and_names_itself(script):
    """The fast start: fla stays a light namespace (no fla.models, triton, transformers, torch imported)."""
    code, out, heavy, light = _console(script, '--help')
    assert code == 0 and out.startswith(f'usage: {script} ') and heavy == [] and light


def test_console_inspect_json_runs_light(fla_dir):
    code, out, heavy, light = _console('rwkv7-inspect', fla_dir, '--json')
    assert code == 0 and heavy == [] and light
    assert json.loads(out)['direction'] == 'export'


def test_console_convert_and_export_run_light(tmp_path):
    code, _, heavy, _ = _console('rwkv7-convert', '--rwkv7', BUNDLED, '--output', tmp_path / 'out', '-q',
                                 '--tokenizer', 'none')
    assert code == 0 and heavy == [] and (tmp_path / 'out' / 'model.safetensors').is_file()
    code, _, heavy, _ = _console('rwkv7-export', '--model', tmp_path / 'out', '--output', tmp_path / 'back.pth', '-q')
    assert code == 0 and heavy == [] and (tmp_path / 'back.pth').is_file()


# ---------------------------------------------------------------------------------------- python -m dispatch

def test_python_m_without_a_command_prints_the_usage_and_exits_2():
    r = python('-m', 'fla.rwkv7_convert')
    assert r.returncode == EXIT_USAGE and r.stdout == ''
    assert all(f'\n  {name} ' in r.stderr for name in COMMANDS), r.stderr
    assert r.stderr.strip().splitlines()[-1] == 'error: no command given'


def test_the_cli_package_has_no_main_of_its_own():
    """`python -m fla.rwkv7_convert.cli` (when cli was one module) imported it and did nothing. The package has no
    __main__ of its own, so Python refuses `-m` on it (a package without __main__ "cannot be directly executed"),
    never a silent exit 0; the one dispatcher is `python -m fla.rwkv7_convert`. Checked by spec: running it would
    only time Python's own refusal after fla's 8-second import."""
    assert importlib.util.find_spec('fla.rwkv7_convert.cli').submodule_search_locations  # a package
    assert importlib.util.find_spec('fla.rwkv7_convert.cli.__main__') is None
    assert importlib.util.find_spec('fla.rwkv7_convert.__main__') is not None


def test_main_usage_unknown_command_and_help(capsys):
    assert main([]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert all(f'\n  {name} ' in err for name in COMMANDS)
    assert main(['convret']) == EXIT_USAGE
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: unknown command 'convret'"
    assert main(['--help']) == 0 and 'commands:' in capsys.readouterr().out


def test_main_passes_the_rest_to_the_command(fla_dir, capsys):
    assert main(['inspect', str(fla_dir)]) == 0
    assert capsys.readouterr().out.startswith(f'{fla_dir}: an fla RWKV-7 directory')
    with pytest.raises(SystemExit) as e:
        main(['export', '--help'])
    assert e.value.code == 0 and capsys.readouterr().out.startswith('usage: python -m fla.rwkv7_convert export ')


# ------------------------------------------------------------------------------------------- every failure exits 1

@pytest.mark.parametrize('argv', [pytest.param(['--no-such-flag'], id='unknown-flag'),
                                  pytest.param([], id='missing-required')])
@pytest.mark.parametrize('name', [pytest.param(n, id=n) for n in COMMANDS])
def test_argparse_errors_exit_usage_in_one_line(name, argv, capsys):
    """A mistyped command line exits with argparse's status (errors.EXIT_USAGE), its one line naming --help."""
    with pytest.raises(SystemExit) as e:
        run_command(name, argv)
    err = capsys.readouterr().err
    assert e.value.code == EXIT_USAGE and len(err.strip().splitlines()) == 1, err
    assert err.startswith('error: ') and err.rstrip().endswith(f'(see {CONSOLE_SCRIPTS[name]} --help)')


# ------------------------------------------------------------------------------------------------------- --help

def _help(name: str, capsys) -> str:
    with pytest.raises(SystemExit):
        run_command(name, ['--help'])
    return ' '.join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize('name, side', [pytest.param('convert', Side.BLINKDL, id='convert'),
                                        pytest.param('export', Side.FLA, id='export')])
def test_help_names_every_layout_of_its_side_from_the_table(name, side, capsys):
    text = _help(name, capsys)
    assert 'docs/mapping.md' in text
    names = [x.name for x in LAYOUTS if x.side is side]
    assert names and all(n in text for n in names), [n for n in names if n not in text]
    other = [x.name for x in LAYOUTS if x.side is not side]
    assert not any(n in text for n in other)


# ------------------------------------------------------------------------------------------------------ inspect

def test_inspect_a_blinkdl_file_in_about_a_dozen_lines(capsys):
    assert main_inspect([str(BUNDLED)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert 8 <= len(lines) <= 15, lines
    text = '\n'.join(lines)
    assert lines[0].startswith(f'{BUNDLED}: a BlinkDL RWKV-7 checkpoint')
    assert 'vocab V=512, hidden C=128, layers L=2, heads H=2 of head size N=64, FFN F=512' in text
    assert 'stored dtypes: BF16 69 tensors' in text and 'dropped: blocks.0.att.v0, blocks.0.att.v1, blocks.0.att.v2' in text


def test_inspect_json_is_a_stable_dict(fla_dir, capsys):
    for path, direction in ((BUNDLED, 'convert'), (fla_dir, 'export')):
        assert main_inspect([str(path), '--json']) == 0
        got = json.loads(capsys.readouterr().out)
        assert set(got) == {'schema', 'ok', 'path', 'direction', 'format', 'layouts', 'sizes', 'head_size', 'parameters',
                            'tensors', 'dtypes', 'output', 'fuse_norm', 'dropped', 'added', 'state', 'notes', 'warnings'}
        assert got['fuse_norm'] is True  # the converter's default, and what the export's directory holds
        assert got['state'] is None  # no tuned state (tests/convert/test_tuned_state.py has one)
        assert (got['schema'], got['ok'], got['direction'], got['head_size']) == (SCHEMA, True, direction, 64)
        assert set(got['sizes']) == {'V', 'C', 'L', 'H', 'N', 'F', 'Dw', 'Da', 'Dv', 'Dg'}
        assert got['parameters'] == sum(v['parameters'] for v in got['dtypes'].values()) == 586880
    assert [x['name'] for x in got['added']] == [f'blocks.0.att.v{j}' for j in range(3)]  # the export's placeholders


def test_inspect_shows_a_layout_and_the_names_that_show_it(tmp_path, capsys):
    import torch
    from rwkv7_factory import Goose, make_state_dict, write_layout
    path, _ = write_layout('rc4a-train', make_state_dict(Goose(layers=2), dtype=torch.float32), tmp_path)
    assert main_inspect([str(path), '--json']) == 0
    layouts = json.loads(capsys.readouterr().out)['layouts']
    assert [x['name'] for x in layouts] == ['rc4a training names'] and layouts[0]['kind'] == 'names'
    assert 'blocks.0.att.time_aaaaa' in layouts[0]['evidence'] and layouts[0]['evidence_count'] >= 2
    assert main_inspect([str(path)]) == 0
    assert 'layout: rc4a training names (names), shown by blocks.0.att.time_aaaaa' in capsys.readouterr().out


def test_inspect_of_a_refused_file_is_one_line_and_its_exit_status_and_json_says_so(tmp_path, capsys):
    import torch
    from rwkv7_factory import save
    sd = {'emb.weight': torch.zeros(256, 128), 'blocks.0.att.receptance.lora.A': torch.zeros(8, 128)}  # unmerged LoRA
    path = save(sd, tmp_path / 'lora.pth')
    assert main_inspect([str(path)]) == UnsupportedVariantError.exit_code
    out, err = capsys.readouterr()
    assert out == '' and len(err.strip().splitlines()) == 1 and err.startswith(f'error: {path}: ')
    assert 'merge' in err
    assert main_inspect([str(path), '--json']) == UnsupportedVariantError.exit_code
    got = json.loads(capsys.readouterr().out)
    assert (got['ok'], got['refusal'], got['error_type']) == (False, 'unmerged LoRA of another trainer',
                                                                'UnsupportedVariantError')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['lora.pth']  # nothing written


def test_inspect_describes_a_bare_state_file_and_how_to_convert_it(tmp_path, capsys):
    import torch
    from rwkv7_factory import save
    path = save({f'blocks.{i}.att.time_state': torch.zeros(2, 64, 64) for i in range(3)}, tmp_path / 'state.pth')
    assert main_inspect([str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f'{path}: a bare tuned-state file (state tuning), no model weights (read as pth)'
    assert '3 blocks of [2, 64, 64] F32 (blocks.N.att.time_state' in lines[1] and '2 heads of head size 64' in lines[1]
    assert f'rwkv7-convert --rwkv7 {path} --base BASE_OUTDIR' in lines[2]
    assert main_inspect([str(path), '--json']) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got['ok'], got['direction'], got['head_size'], got['heads']) == (True, 'state', 64, 2)
    assert got['state'] == {'names': 'blocks.N.att.time_state', 'layers': 3, 'shape': [2, 64, 64], 'dtype': 'F32',
                            'file': 'state.pth'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['state.pth']  # nothing written


# -------------------------------------------------------------------------------------- the user's path in errors

@pytest.mark.parametrize('target', [pytest.param('/proc/x', id='proc'), pytest.param('/dev/null/x', id='file-as-folder')])
def test_an_uncreatable_output_is_named_as_given_not_by_its_scratch_name(target, fla_dir, capsys):
    assert main_to_fla(['--rwkv7', str(BUNDLED), '--output', target, '-q']) == 1
    assert main_from_fla(['--model', str(fla_dir), '--output', f'{target}.pth', '-q']) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(': ')[:2] for line in lines] == [['error', target], ['error', f'{target}.pth']], lines
    assert not any('.tmp-' in line for line in lines), lines


def test_an_unreadable_input_names_its_path(capsys):
    assert main_to_fla(['--rwkv7', '/proc/self/mem', '--output', '/nonexistent-dir/x', '-q']) == NotACheckpointError.exit_code
    err = capsys.readouterr().err
    assert err.startswith('error: /proc/self/mem: ') and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------ --format against the suffix

@pytest.mark.parametrize('fmt, name', [pytest.param('safetensors', 'x.pth', id='safetensors-as-pth'),
                                       pytest.param('pth', 'x.safetensors', id='pth-as-safetensors')])
def test_a_format_under_the_other_formats_suffix_is_refused(fmt, name, fla_dir, tmp_path, capsys):
    out = tmp_path / name
    assert main_from_fla(['--model', str(fla_dir), '--output', str(out), '--format', fmt]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {out}: ends in {out.suffix}') and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())


# -------------------------------------------------------------------------------------- the example's generator

def test_make_goose_mini_help_writes_nothing():
    before = (hashlib.sha256(BUNDLED.read_bytes()).hexdigest(), BUNDLED.stat().st_mtime_ns, sorted(BUNDLED.parent.iterdir()))
    r = python(REPO / 'examples' / 'make_goose_mini.py', '--help')
    assert r.returncode == 0 and r.stdout.startswith('usage: ') and '--output' in r.stdout, r.stderr
    assert (hashlib.sha256(BUNDLED.read_bytes()).hexdigest(), BUNDLED.stat().st_mtime_ns,
            sorted(BUNDLED.parent.iterdir())) == before
