"""The Python API (fla.rwkv7_convert.api): light to import, typed and documented, errors naming the path, and the
same results as the commands. No fla forward runs here (verify's own tests run it)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from helpers import script_env

from fla.rwkv7_convert import api
from fla.rwkv7_convert.cli.convert import build_to_fla_parser
from fla.rwkv7_convert.cli.export import build_from_fla_parser
from fla.rwkv7_convert.cli.inspect import build_inspect_parser
from fla.rwkv7_convert.cli.verify import build_verify_parser
from fla.rwkv7_convert.convert import inspection, to_blinkdl, to_fla, tuned_state
from fla.rwkv7_convert.proof import verify as proof_verify

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / 'examples' / 'rwkv7-goose-mini.pth'
FUNCTIONS = ('convert_to_fla', 'convert_from_fla', 'verify', 'inspect', 'load_model', 'generate')


def test_importing_the_api_pulls_no_heavy_module():
    """After the commands' light start, `import fla.rwkv7_convert.api` imports neither torch nor fla's models,
    triton or transformers (verify imports them when it runs)."""
    code = ('import sys\n'
            'import rwkv7_convert_entry\n'
            'rwkv7_convert_entry.light_fla()\n'
            'import fla.rwkv7_convert.api\n'
            "print(sorted(m for m in ('fla.models', 'triton', 'transformers', 'torch') if m in sys.modules))\n")
    env = script_env()
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]'


@pytest.mark.parametrize('name', [pytest.param(n, id=n) for n in FUNCTIONS])
def test_each_function_is_typed_and_documented(name):
    f = getattr(api, name)
    hints = typing.get_type_hints(f)
    params = [p for p in f.__code__.co_varnames[:f.__code__.co_argcount + f.__code__.co_kwonlyargcount]]
    assert 'return' in hints and all(p in hints for p in params), (name, set(params) - set(hints))
    assert f.__doc__ and len(f.__doc__.split()) > 30 and name in api.__all__


@pytest.fixture(scope='module')
def dirs(tmp_path_factory, converted_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('api')
    (root / 'empty').mkdir()
    return {'empty': root / 'empty', 'model': converted_model(BUNDLED).dir, 'root': root}


def _cases(d: dict[str, Path]) -> list[tuple]:
    missing = d['root'] / 'missing.pth'
    # (function, args, the path the message must name)
    return [
        (api.convert_to_fla, (missing, d['root'] / 'o1'), missing),
        (api.convert_from_fla, (d['root'] / 'missing-dir', d['root'] / 'o.pth'), d['root'] / 'missing-dir'),
        (api.verify, (missing, d['model']), missing),
        (api.verify, (BUNDLED, d['root'] / 'missing-dir'), d['root'] / 'missing-dir'),
        (api.inspect, (missing,), missing),
        # a directory where a file is expected, a file where a directory is
        (api.convert_to_fla, (d['empty'], d['root'] / 'o2'), d['empty']),
        (api.convert_from_fla, (BUNDLED, d['root'] / 'o.pth'), BUNDLED),
        (api.verify, (d['empty'], d['model']), d['empty']),
        (api.verify, (BUNDLED, BUNDLED), BUNDLED),
        (api.inspect, (d['empty'],), d['empty']),
    ]


def test_errors_name_the_path_in_their_message(dirs):
    for f, args, shown in _cases(dirs):
        with pytest.raises(api.ConversionError) as e:
            f(*args)
        assert str(shown) in str(e.value) and '\n' not in str(e.value), (f.__name__, args, str(e.value))
    assert sorted(p.name for p in dirs['root'].iterdir()) == ['empty']  # nothing written (the model is the session's)


def test_a_round_trip_through_the_api(dirs, tmp_path):
    info = api.inspect(BUNDLED)
    assert (info.direction, info.dims.L, info.dims.N, info.parameters) == ('convert', 2, 64, 586880)
    result = api.convert_to_fla(BUNDLED, tmp_path / 'm', precision='fp32', tokenizer='none')
    assert result.dtype == 'F32' and result.output == tmp_path / 'm' and 'model.safetensors' in result.files
    assert api.inspect(tmp_path / 'm').to_dict()['dtypes'] == {'F32': {'tensors': 69, 'parameters': 586880}}
    back = api.convert_from_fla(tmp_path / 'm', tmp_path / 'back.safetensors', precision='bfloat16')
    assert (back.fmt, back.dtype) == ('safetensors', 'BF16')
    assert api.inspect(back.output).to_dict()['sizes'] == info.to_dict()['sizes']


def test_dry_runs_write_nothing_and_bad_precision_is_one_line(tmp_path):
    assert api.convert_to_fla(BUNDLED, tmp_path / 'm', dry_run=True).bytes_written > 0
    assert not any(tmp_path.iterdir())
    with pytest.raises(api.ConversionError, match='precision: .*int8'):
        api.convert_to_fla(BUNDLED, tmp_path / 'm', precision='int8')


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='the CPU without the interpreter')
def test_verify_on_a_cpu_without_the_interpreter_variables_runs_torch_wkv_and_names_the_api_fix(dirs, monkeypatch):
    """A script that imported fla (triton with it) and set no variables: auto takes the torch stand-ins and PASSes;
    device='cpu' cannot, and says device='cpu-torch', never a command-line flag or an import order."""
    assert 'triton' in sys.modules
    monkeypatch.delenv('TRITON_INTERPRET')
    report = api.verify(BUNDLED, dirs['model'], tokens=8)
    assert report.passed and 'torch wkv' in report.render()
    with pytest.raises(api.ConversionError, match=r"device='cpu-torch'.*TRITON_INTERPRET=1 FLA_CACHE_RESULTS=0") as e:
        api.verify(BUNDLED, dirs['model'], device='cpu')
    assert '\n' not in str(e.value) and '--' not in str(e.value) and str(dirs['model']) in str(e.value)


# One signature per entry point. api.py defines a function only where its implementation's signature is not the public
# one; each such wrapper: (its implementation, the implementation's parameters the API leaves out, the API's own).
WRAPPERS = {
    'convert_to_fla': (to_fla.convert_to_fla, {'on_start', 'on_tensor'}, set()),
    'convert_from_fla': (to_blinkdl.convert_from_fla, {'on_start', 'on_tensor'}, set()),
    'convert_state': (tuned_state.convert_state, {'on_tensor'}, set()),
    'export_state': (tuned_state.export_state, {'dims'}, set()),
    'verify': (proof_verify.verify, set(), {'adapter'}),
    'inspect': (inspection.inspect, set(), set()),
}
WHY_LEFT_OUT = {
    'on_start': "the command line's progress bar (cli/flags.py progress_callbacks)",
    'on_tensor': "the command line's progress bar and --verbose lines",
    'dims': "the model a state must fit, when the caller has read it already (convert's own use)",
    'adapter': 'the reference on source + an RWKV-PEFT adapter (convert/adapters.py, which proof/ may not import)',
}


def _params(f) -> dict[str, tuple]:
    return {p.name: (p.kind, p.default) for p in inspect.signature(f).parameters.values()}


def test_each_api_function_is_its_implementation_or_a_wrapper_with_the_same_parameters():
    functions = [n for n in api.__all__ if inspect.isfunction(getattr(api, n))]
    assert set(WRAPPERS) <= set(functions)
    for name in functions:
        f = getattr(api, name)
        if name not in WRAPPERS:
            assert f.__module__ != api.__name__, f'{name} is defined in api.py: re-export it, or list it in WRAPPERS'
            continue
        implementation, left_out, own = WRAPPERS[name]
        theirs, ours = _params(implementation), _params(f)
        assert (left_out | own) <= set(WHY_LEFT_OUT), name
        assert set(ours) - own == set(theirs) - left_out, (name, set(ours) ^ set(theirs))
        for p in set(ours) - own:
            assert ours[p] == theirs[p], f'api.{name}({p}): kind and default {ours[p]}, the implementation {theirs[p]}'


# Every command-line flag is a parameter of its command's API functions (by its name, or renamed here), or the
# command line's own, with why.
COMMANDS = {
    'convert': (build_to_fla_parser, (api.convert_to_fla, api.convert_state)),
    'export': (build_from_fla_parser, (api.convert_from_fla, api.export_state, api.export_adapter)),
    'verify': (build_verify_parser, (api.verify,)),
    'inspect': (build_inspect_parser, (api.inspect,)),
}
RENAMED = {'rwkv7': 'source', 'model': 'model_dir', 'peft_adapter': 'adapter_dir', 'peft_export': 'form'}
ADAPTER_FIELDS = {'adapter', 'pissa_init', 'lora_alpha', 'adapter_format'}  # the AdapterSpec given as `adapter`
CLI_ONLY = {
    'quiet': 'what the command prints (verify(quiet=...) is the library default True: no progress lines)',
    'verbose': 'a line per tensor and tracebacks',
    'json': "inspect's output form (Inspection.to_dict() is the API's)",
    'verify': 'convert, then verify (two API calls)',
    'verify_tokens': "convert --verify's `tokens` of verify",
    'max_tokens': "with --text, verify's `tokens`",
    'state_only': 'export_state instead of convert_from_fla',
    'peft': "verify(adapter=AdapterSpec(..., form='peft')) reads OUTDIR/peft; the flag names the directory",
}
DEFAULT_DIFFERS = {'quiet', 'fuse_norm'}  # the flag's 'true'/'false' is config.json's bool


@pytest.mark.parametrize('command', [pytest.param(c, id=c) for c in COMMANDS])
def test_every_flag_is_an_api_parameter_or_the_command_lines_own(command):
    build, functions = COMMANDS[command]
    params = {}
    for f in functions:
        params.update(_params(f))
    for action in build()._actions:
        dest = action.dest
        if dest == 'help' or dest in CLI_ONLY:
            continue
        if dest in ADAPTER_FIELDS:
            assert 'adapter' in params, (command, dest)
            continue
        name = RENAMED.get(dest, dest)
        assert name in params, f'{command}: --{dest.replace("_", "-")} is no parameter of {functions}; add it there'
        _, default = params[name]
        if action.default is not None and dest not in DEFAULT_DIFFERS and default is not inspect.Parameter.empty:
            assert action.default == default, f'{command}: --{dest} defaults to {action.default!r}, the API to {default!r}'
