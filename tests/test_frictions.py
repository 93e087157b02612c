"""The smaller frictions a new user met (issue 30), one test each: flags taken exactly and typos named, one error
prefix, messages that name the command to use, a bare state file described, the state file in the summary, what an
interrupt after the conversion leaves, the samples' files git-ignored and their noise stated, the tokenizer without
fla's warning."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fla.rwkv7_convert.api import convert_to_fla
from fla.rwkv7_convert.cli import convert as cli_convert
from fla.rwkv7_convert.cli.convert import main_to_fla
from fla.rwkv7_convert.cli.dispatch import COMMANDS, main, run_command
from fla.rwkv7_convert.errors import EXIT_USAGE, NotACheckpointError, UnsupportedVariantError
from fla.rwkv7_convert.formats.state_file import STATE_FILE

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / 'examples' / 'rwkv7-goose-mini.pth'


def _fails(argv: list[str], capsys, name: str = 'convert') -> str:
    with pytest.raises(SystemExit) as e:
        run_command(name, argv)
    err = capsys.readouterr().err
    assert e.value.code == EXIT_USAGE and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize('flag', [pytest.param('--out', id='out'), pytest.param('--outp', id='outp')])
def test_abbreviated_flags_are_refused_not_guessed(flag, tmp_path, capsys):
    err = _fails(['--rwkv7', str(BUNDLED), flag, str(tmp_path / 'o')], capsys)
    assert f'unrecognized arguments: {flag}' in err and not (tmp_path / 'o').exists()
    err = _fails(['--rwkv7', str(BUNDLED), '--output', str(tmp_path / 'o'), '--forc'], capsys)
    assert 'unrecognized arguments: --forc' in err


@pytest.mark.parametrize('name', [pytest.param(n, id=n) for n in COMMANDS if n != 'inspect'])
def test_a_mistyped_flag_is_named_before_a_missing_one(name, capsys):
    required = {'convert': ['--rwkv7', 'x.pth'], 'export': ['--model', 'd'], 'verify': ['--rwkv7', 'x.pth']}[name]
    err = _fails([*required, '--outptu', 'o', '--model=m' if name == 'verify' else '-q'], capsys, name)
    assert 'unrecognized arguments: --outptu' in err and 'required' not in err


def test_every_failure_has_one_error_prefix(tmp_path, capsys):
    bad = tmp_path / 'notes.pth'
    bad.write_text('not a model')
    assert main_to_fla(['--rwkv7', str(bad), '--output', str(tmp_path / 'o')]) == NotACheckpointError.exit_code
    conversion = capsys.readouterr().err
    argparse_error = _fails(['--rwkv7', str(bad)], capsys)
    assert main(['convret']) == EXIT_USAGE
    dispatch = capsys.readouterr().err.strip().splitlines()[-1]
    assert all(line.startswith('error: ') for line in (conversion, argparse_error, dispatch)), (conversion,
                                                                                                 argparse_error, dispatch)


def test_an_fla_directory_given_to_convert_names_rwkv7_export(tmp_path, capsys):
    convert_to_fla(BUNDLED, tmp_path / 'fla', tokenizer='none')
    sd = {'model.embeddings.weight': torch.zeros(256, 128), 'model.layers.0.attn.r_k': torch.zeros(2, 64)}
    torch.save(sd, tmp_path / 'fla.pth')
    code = main_to_fla(['--rwkv7', str(tmp_path / 'fla.pth'), '--output', str(tmp_path / 'o')])
    assert code == UnsupportedVariantError.exit_code
    err = capsys.readouterr().err
    assert 'rwkv7-export --model' in err and 'utils/' not in err, err


def test_precision_keep_is_in_the_help_and_works(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_command('convert', ['--help'])
    assert 'keep (the default)' in ' '.join(capsys.readouterr().out.split())
    assert main_to_fla(['--rwkv7', str(BUNDLED), '--output', str(tmp_path / 'o'), '--precision', 'keep']) == 0
    assert ', bfloat16, ' in capsys.readouterr().out


def test_a_merges_summary_line_names_the_state_file(tmp_path, capsys, user_env):
    r = subprocess.run([sys.executable, str(REPO / 'examples' / 'make_tuned_state.py')], cwd=tmp_path, env=user_env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and sorted(p.name for p in tmp_path.iterdir()) == ['merged.pth', 'state.pth'], r.stderr
    assert main_to_fla(['--rwkv7', str(tmp_path / 'merged.pth'), '--output', str(tmp_path / 'm')]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f'its tuned state in {STATE_FILE}' in line and (tmp_path / 'm' / STATE_FILE).is_file()
    assert main_to_fla(['--rwkv7', str(tmp_path / 'merged.pth'), '--output', str(tmp_path / 'd'), '--drop-state']) == 0
    assert STATE_FILE not in capsys.readouterr().out


def test_an_interrupt_during_verify_says_the_new_conversion_is_in_place(tmp_path, capsys, monkeypatch):
    out = tmp_path / 'o'
    convert_to_fla(BUNDLED, out, tokenizer='none')  # the old model, replaced by --force

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_convert, 'verify_after_convert', interrupted)
    assert main_to_fla(['--rwkv7', str(BUNDLED), '--output', str(out), '--force', '--verify', '-q']) == 130
    err = capsys.readouterr().err
    assert err.startswith('interrupted (SIGINT): verify stopped; the conversion was complete and is in place: ')
    assert str(out) in err and 'or the complete new one' not in err and (out / 'config.json').is_file()
    monkeypatch.setattr(cli_convert, 'convert_to_fla', interrupted)  # before the output is in place: the old promise
    assert main_to_fla(['--rwkv7', str(BUNDLED), '--output', str(out), '--force', '--verify', '-q']) == 130
    assert 'the output is as it was' in capsys.readouterr().err


@pytest.mark.skipif(shutil.which('git') is None or not (REPO / '.git').exists(), reason='not a git checkout')
def test_the_files_the_readme_writes_are_git_ignored():
    written = ['world.pth', 'state.pth', 'merged.pth', 'back.pth', 'state_back.pth', 'out/goose-mini/config.json']
    r = subprocess.run(['git', 'check-ignore', *written], cwd=REPO, capture_output=True, text=True)
    assert r.stdout.split() == written, r.stdout + r.stderr


def test_the_world_sample_says_its_text_is_noise(tmp_path, user_env):
    r = subprocess.run([sys.executable, str(REPO / 'examples' / 'make_goose_world.py'), '--output', 'w.pth'],
                       cwd=tmp_path, env=user_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'random weights: its generated text is gibberish by design' in r.stdout, r.stderr


def test_the_tokenizer_loads_without_fla_and_without_a_warning_as_the_readme_says(tmp_path, user_env):
    """AutoTokenizer reads config.json first (model type rwkv7, unknown to transformers until `import fla`) and
    warns; the class tokenizer_config.json names loads the same tokenizer without a word."""
    sd = {k: v for k, v in torch.load(BUNDLED, weights_only=True).items()}
    sd['emb.weight'] = torch.zeros(65536, 128, dtype=sd['emb.weight'].dtype)
    sd['head.weight'] = torch.zeros(65536, 128, dtype=sd['head.weight'].dtype)
    torch.save(sd, tmp_path / 'w.pth')
    convert_to_fla(tmp_path / 'w.pth', tmp_path / 'w', tokenizer='world')
    code = ('import sys\nfrom transformers import PreTrainedTokenizerFast\n'
            "t = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])\nprint(t('Hello')['input_ids'])\n"
            "print('fla' in sys.modules)\n")
    r = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'w')], env=user_env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stderr == '' and r.stdout.split('\n')[:2] == ['[33155]', 'False'], r.stderr
    assert 'PreTrainedTokenizerFast.from_pretrained' in (REPO / 'README.md').read_text()
    assert json.loads((tmp_path / 'w' / 'tokenizer_config.json').read_text())['tokenizer_class'] == 'PreTrainedTokenizerFast'


def test_the_quiet_twin_of_python_m_prints_no_fla_warning(user_env):
    """`python -m fla.rwkv7_convert` cannot skip fla's __init__ (nor the warning it prints without a GPU) before our
    code runs; the README names `python -m rwkv7_convert_entry`, which runs the same command without it."""
    r = subprocess.run([sys.executable, '-m', 'rwkv7_convert_entry', 'inspect', str(BUNDLED)], env=user_env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr == '' and r.stdout.startswith(f'{BUNDLED}: a BlinkDL RWKV-7 checkpoint')
    assert 'python -m rwkv7_convert_entry COMMAND' in (REPO / 'README.md').read_text()
