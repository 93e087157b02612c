"""Running a converted directory: load_model / generate (runtime/run.py) on both CPU paths, examples/generate.py, and
the World-vocabulary sample end to end (tokenizer, chat template, stop tokens). The README's blocks: test_readme.py."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fla.rwkv7_convert.api import ConversionError, convert_to_fla, generate, load_model
from fla.rwkv7_convert.hub.chat import TURN_END_TOKENS

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / 'examples' / 'rwkv7-goose-mini.pth'
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU path: the interpreter, float32')


def _env() -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    # `python` in the README's snippet is the interpreter running the tests
    env['PATH'] = os.pathsep.join([str(Path(sys.executable).parent), env.get('PATH', '')])
    return env


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def goose(tmp_path_factory) -> Path:
    """The bundled model converted to out/goose-mini, as the README's first command does."""
    root = tmp_path_factory.mktemp('run')
    convert_to_fla(BUNDLED, root / 'out' / 'goose-mini')
    return root


@pytest.fixture(scope='module')
def world(tmp_path_factory) -> Path:
    """The World-vocabulary sample, written by its example command and converted with --tokenizer world."""
    root = tmp_path_factory.mktemp('world')
    r = _run([sys.executable, str(REPO / 'examples' / 'make_goose_world.py'), '--output', 'world.pth'], root)
    assert r.returncode == 0, r.stderr
    convert_to_fla(root / 'world.pth', root / 'out', tokenizer='world')
    return root


@no_cuda
@pytest.mark.parametrize('dtype', [pytest.param(d, id=str(d)) for d in (torch.bfloat16, torch.float16, 'bf16')])
def test_half_precisions_are_refused_on_the_cpu_with_the_reason_and_the_fix(goose, dtype):
    with pytest.raises(ConversionError, match='numpy, which has no bfloat16.*dtype=float32.*GPU') as e:
        load_model(goose / 'out' / 'goose-mini', device='cpu', dtype=dtype)
    assert '\n' not in str(e.value) and 'goose-mini' in str(e.value)


@no_cuda
def test_without_the_interpreter_variables_the_cpu_runs_torch_stand_ins_with_the_interpreters_tokens(goose, monkeypatch):
    """A script that imported fla without TRITON_INTERPRET: load_model's default (auto) takes the torch stand-ins,
    which give the interpreted kernels' greedy tokens, also past 63 tokens a call; device='cpu' says the fix."""
    interpreted, _ = load_model(goose / 'out' / 'goose-mini', device='cpu')
    ids = torch.randint(0, 512, (1, 70), generator=torch.Generator().manual_seed(1))
    expected = generate(interpreted, ids, 4, eos_token_id=[])
    assert 'triton' in sys.modules
    monkeypatch.delenv('TRITON_INTERPRET')
    model, _ = load_model(goose / 'out' / 'goose-mini')
    assert getattr(model, 'rwkv7_torch_wkv', False) and model.dtype == torch.float32
    assert torch.equal(generate(model, ids, 4, eos_token_id=[]), expected)
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, 70, 512)  # one call of 70 tokens: no interpreter limit
    with pytest.raises(ConversionError, match=r"device='cpu-torch'.*TRITON_INTERPRET=1 FLA_CACHE_RESULTS=0") as e:
        load_model(goose / 'out' / 'goose-mini', device='cpu')
    assert '\n' not in str(e.value) and '--' not in str(e.value) and 'before importing' not in str(e.value)


def test_prompt_text_without_a_tokenizer_is_one_line_in_api_terms(goose):
    model, tokenizer = load_model(goose / 'out' / 'goose-mini')
    assert tokenizer is None
    with pytest.raises(ConversionError, match=r'no tokenizer.*pass token ids instead: generate\(model') as e:
        generate(model, tokenizer, 16, prompt='Hello', state=None)
    assert '\n' not in str(e.value)


def test_not_a_directory_and_unknown_devices_are_refused(goose, tmp_path):
    with pytest.raises(ConversionError, match='config.json is missing'):
        load_model(tmp_path)
    with pytest.raises(ConversionError, match="expected 'auto', 'cpu', 'cpu-torch' or 'cuda'"):
        load_model(goose / 'out' / 'goose-mini', device='tpu')
    if not torch.cuda.is_available():
        with pytest.raises(ConversionError, match="torch sees no CUDA device; use device='cpu-torch'"):
            load_model(goose / 'out' / 'goose-mini', device='cuda')


def test_a_long_prompt_goes_through_the_cache_in_pieces_and_greedy_picks_the_argmax(goose):
    """70 prompt tokens: one call would be refused on the CPU (cpu_guard, 64 or more); generate cuts it in pieces."""
    from fla.rwkv7_convert.runtime.device import fla_logits
    model, tokenizer = load_model(goose / 'out' / 'goose-mini')
    assert tokenizer is None and (model.dtype == torch.float32 or torch.cuda.is_available())
    ids = torch.randint(0, 512, (1, 70), generator=torch.Generator().manual_seed(0))
    out = generate(model, ids, 1, eos_token_id=[])
    assert out.shape == (1, 71) and torch.equal(out[:, :70], ids)
    assert int(out[0, -1]) == int(fla_logits(model, ids)[0, -1].argmax())
    with pytest.raises(ConversionError, match=r'token ids must be in 0\.\.511'):
        generate(model, [1, 2, 600], 1)


def test_the_world_sample_is_reproducible_and_its_help_writes_nothing(world, tmp_path):
    # the same name: torch.save records the file's stem inside the zip
    r = _run([sys.executable, str(REPO / 'examples' / 'make_goose_world.py'), '--output', 'world.pth'], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'world.pth').read_bytes() == (world / 'world.pth').read_bytes()
    assert (tmp_path / 'world.pth').stat().st_size < 20e6
    examples = sorted(p.name for p in (REPO / 'examples').iterdir())
    for script in ('make_goose_world.py', 'generate.py'):
        r = _run([sys.executable, str(REPO / 'examples' / script), '--help'], tmp_path)
        assert r.returncode == 0 and 'usage:' in r.stdout, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['world.pth']
    assert sorted(p.name for p in (REPO / 'examples').iterdir()) == examples


def test_the_world_sample_loads_with_its_tokenizer_chat_template_and_stop_tokens(world):
    model, tokenizer = load_model(world / 'out')
    assert tokenizer is not None and model.get_input_embeddings().weight.shape[0] == 65536
    rendered = tokenizer.apply_chat_template([{'role': 'user', 'content': 'Hello'}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == 'User: Hello\n\nAssistant:'
    config = json.loads((world / 'out' / 'generation_config.json').read_text())
    assert config['eos_token_id'] == [0, *TURN_END_TOKENS]
    assert list(model.generation_config.eos_token_id) == [0, *TURN_END_TOKENS]
    # text in, text out: the chat turn through the template, greedy, the new tokens decoded
    text = generate(model, tokenizer, 2, prompt='Hello', chat=True)
    ids = tokenizer.apply_chat_template([{'role': 'user', 'content': 'Hello'}], add_generation_prompt=True,
                                        return_tensors='pt', return_dict=True)['input_ids']
    assert isinstance(text, str) and text == tokenizer.decode(generate(model, ids, 2)[0, ids.shape[1]:],
                                                              skip_special_tokens=True)
    with pytest.raises(ConversionError, match='prompt='):
        generate(model, tokenizer, 2)


def test_generate_py_chats_with_the_world_sample_end_to_end(world):
    """Random weights write noise: the structure is checked, not the text."""
    from transformers import AutoTokenizer
    r = _run([sys.executable, str(REPO / 'examples' / 'generate.py'), '--model', 'out', '--prompt', 'Hello', '--chat',
              '--max-new-tokens', '3', '--json'], world)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    tokenizer = AutoTokenizer.from_pretrained(world / 'out')
    chat = tokenizer.apply_chat_template([{'role': 'user', 'content': 'Hello'}], add_generation_prompt=True)
    assert out['prompt_ids'] == list(getattr(chat, 'input_ids', chat))
    new = out['new_ids']
    assert 1 <= len(new) <= 3 and all(0 <= i < 65536 for i in new)
    assert not any(i in (0, *TURN_END_TOKENS) for i in new[:-1])  # a stop token ends the reply
    assert out['text'] == tokenizer.decode(new, skip_special_tokens=True)


def test_generate_py_says_in_one_line_when_a_prompt_has_no_tokenizer(goose):
    r = _run([sys.executable, str(REPO / 'examples' / 'generate.py'), '--model', 'out/goose-mini', '--prompt', 'hi'],
             goose)
    assert r.returncode == 1 and re.search(r'error: .*goose-mini: the directory has no tokenizer', r.stderr), r.stderr


@no_cuda
def test_generate_py_device_cuda_on_a_cpu_gives_the_command_line_fix(goose):
    r = _run([sys.executable, str(REPO / 'examples' / 'generate.py'), '--model', 'out/goose-mini', '--ids', '1,2',
              '--device', 'cuda'], goose)
    assert r.returncode == 1 and r.stderr.count('\n') == 1, r.stderr
    assert '--device cpu-torch' in r.stderr and 'device=' not in r.stderr
