"""The converter as a user runs it: a fresh process, its exit status, what it prints and what it leaves on disk."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import call_main, script_env
from rwkv7_factory import Goose, make_state_dict, save

from fla.rwkv7_convert.cli import flags as cli_flags
from fla.rwkv7_convert.cli.convert import build_to_fla_parser
from fla.rwkv7_convert.cli.export import build_from_fla_parser, main_from_fla
from fla.rwkv7_convert.cli.verify import build_verify_parser
from fla.rwkv7_convert.errors import EXIT_USAGE, NonFiniteError, NotACheckpointError, OutputExistsError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'utils' / 'convert_to_rwkv7.py'


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    env = script_env()
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    return save(make_state_dict(Goose(layers=2), dtype=torch.bfloat16), tmp_path_factory.mktemp('ckpt') / 'goose.pth')


def test_converts_and_prints_one_summary_line(tmp_path, checkpoint):
    out = tmp_path / 'out'
    r = run('--rwkv7', checkpoint, '--output', out, '--tokenizer', 'none')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'converted {checkpoint} -> {out}: RWKV-7, 2 layers, hidden 128')
    assert 'bfloat16' in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'generation_config.json',
                                                     'model.safetensors', 'rwkv7_convert.json']
    config = json.loads((out / 'config.json').read_text())
    assert (config['num_heads'], config['head_dim'], config['eos_token_id'], config['pad_token_id']) == (2, 64, 0, 0)
    assert (config['head_size'], config['layer_norm_epsilon']) == (64, 1e-5)  # what llama.cpp reads first
    assert config['bos_token_id'] is None and config['dtype'] == 'bfloat16'
    assert json.loads((out / 'generation_config.json').read_text())['eos_token_id'] == 0


def test_config_loads_in_transformers_as_fla_would_build_it(tmp_path, checkpoint):
    from fla.models import RWKV7Config
    from transformers import AutoConfig

    import fla  # noqa: F401
    out = tmp_path / 'out'
    assert run('--rwkv7', checkpoint, '--output', out, '--tokenizer', 'none', '-q').returncode == 0
    loaded = AutoConfig.from_pretrained(out)
    assert isinstance(loaded, RWKV7Config)
    assert (loaded.hidden_size, loaded.num_hidden_layers, loaded.head_dim, loaded.num_heads) == (128, 2, 64, 2)
    assert (loaded.decay_low_rank_dim, loaded.a_low_rank_dim, loaded.v_low_rank_dim, loaded.gate_low_rank_dim) == (32,) * 4
    assert loaded.intermediate_size == 512 and loaded.vocab_size == 256 and loaded.value_dim == [128, 128]
    assert loaded.eos_token_id == 0 and loaded.pad_token_id == 0 and loaded.bos_token_id is None


def test_quiet_prints_nothing_and_verbose_lists_tensors(tmp_path, checkpoint):
    r = run('--rwkv7', checkpoint, '--output', tmp_path / 'q', '--tokenizer', 'none', '--quiet')
    assert r.returncode == 0 and r.stdout == '' and r.stderr == ''
    r = run('--rwkv7', checkpoint, '--output', tmp_path / 'v', '--tokenizer', 'none', '--verbose')
    assert r.returncode == 0 and 'wrote model.layers.1.attn.w_lora.lora.0.weight' in r.stderr


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, checkpoint):
    out = tmp_path / 'out'
    r = run('--rwkv7', checkpoint, '--output', out, '--dry-run')
    assert r.returncode == 0, r.stderr
    assert 'RWKV-7 "Goose", 2 layer(s), hidden 128, 2 heads of 64' in r.stdout
    assert '"num_heads": 2' in r.stdout
    assert 'blocks.1.att.w1 [128, 32] BF16 -> model.layers.1.attn.w_lora.lora.0.weight [32, 128] BF16 (transpose)' in r.stdout
    assert 'blocks.0.att.v0 [1, 1, 128] BF16 -> (dropped' in r.stdout
    assert '"fuse_norm": true' in r.stdout and '\nnorms: fuse_norm: true (fla\'s fused Triton norms;' in r.stdout
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_fuse_norm_false_is_shown_by_the_dry_run_and_written(tmp_path, checkpoint):
    r = run('--rwkv7', checkpoint, '--output', tmp_path / 'dry', '--dry-run', '--fuse-norm', 'false')
    assert r.returncode == 0, r.stderr
    assert '"fuse_norm": false' in r.stdout and "\nnorms: fuse_norm: false (torch's unfused" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    r = run('--rwkv7', checkpoint, '--output', tmp_path / 'out', '--tokenizer', 'none', '-q', '--fuse-norm', 'false')
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / 'out' / 'config.json').read_text())['fuse_norm'] is False
    assert "Norms: fuse_norm: false (torch's unfused" in (tmp_path / 'out' / 'README.md').read_text()


def test_existing_output_is_refused_then_replaced_with_force(tmp_path, checkpoint):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'precious.txt').write_text('keep me')
    r = run('--rwkv7', checkpoint, '--output', out, '--tokenizer', 'none')
    assert r.returncode == OutputExistsError.exit_code
    assert r.stderr.strip() == f'error: {out}: exists and is not empty; pass --force to replace it'
    assert (out / 'precious.txt').read_text() == 'keep me'
    r = run('--rwkv7', checkpoint, '--output', out, '--tokenizer', 'none', '--force', '-q')
    assert r.returncode == 0, r.stderr
    assert not (out / 'precious.txt').exists() and (out / 'model.safetensors').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']  # old copy and scratch folders are gone


def test_empty_output_directory_is_fine(tmp_path, checkpoint):
    out = tmp_path / 'out'
    out.mkdir()
    assert run('--rwkv7', checkpoint, '--output', out, '--tokenizer', 'none', '-q').returncode == 0
    assert (out / 'model.safetensors').exists()


def test_failed_conversion_keeps_the_old_model_and_leaves_no_scratch(tmp_path, checkpoint):
    out = tmp_path / 'out'
    assert run('--rwkv7', checkpoint, '--output', out, '--tokenizer', 'none', '-q').returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    sd = make_state_dict(Goose(layers=2))
    sd['head.weight'][0, 0] = float('inf')  # the last tensor written: fails after the shard is mostly written
    bad = save(sd, tmp_path / 'bad.pth')
    r = run('--rwkv7', bad, '--output', out, '--tokenizer', 'none', '--force')
    assert r.returncode == NonFiniteError.exit_code
    assert r.stderr.strip() == (f'error: {bad}: head.weight holds NaN or Inf values; pass --allow-nonfinite to convert '
                                'anyway')
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bad.pth', 'out']


@pytest.mark.parametrize('args, message', [
    pytest.param(['--precision', 'int8'], "--precision: unknown precision 'int8'", id='bad-precision'),
    pytest.param(['--max-shard-size', 'lots'], "cannot read size 'lots'", id='bad-shard-size'),
    # a bare number would be bytes: 69 shards for a small model, never what was meant
    pytest.param(['--max-shard-size', '5'], "--max-shard-size: size '5' has no unit", id='shard-size-without-unit'),
    pytest.param(['--max-shard-size', '0GB'], "size '0GB' is not positive", id='shard-size-zero'),
    pytest.param(['--precision', 'bf16', '--precision', 'fp32'], '--precision given more than once', id='repeated-precision'),
    pytest.param(['--output', 'elsewhere'], '--output given more than once', id='repeated-output'),
    pytest.param(['--tokenizer', 'none', '--tokenizer', 'world'], '--tokenizer given more than once', id='repeated-tokenizer'),
    pytest.param(['--tokenizer', 'world'], '--tokenizer world: the model has 256 embedding rows, the RWKV World '
                 'tokenizer needs 65536', id='world-tokenizer-on-256-rows'),
    pytest.param(['--fuse-norm', 'yes'], "--fuse-norm: invalid choice: 'yes'", id='fuse-norm-not-a-choice'),
    pytest.param(['--fuse-norm', 'true', '--fuse-norm', 'false'], '--fuse-norm given more than once',
                 id='repeated-fuse-norm'),
])
def test_bad_flags_are_one_line_errors(tmp_path, checkpoint, args, message):
    r = run('--rwkv7', checkpoint, '--output', tmp_path / 'out', *args, cwd=tmp_path)
    assert r.returncode != 0
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr
    assert r.stdout == '' and sorted(p.name for p in tmp_path.iterdir()) == []


def test_repeated_options_are_refused_by_the_export_script_too(tmp_path):
    script = REPO / 'utils' / 'convert_from_fla_rwkv7.py'
    r = subprocess.run([sys.executable, str(script), '--model', 'a', '--model', 'b', '--output', tmp_path / 'o.pth'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == EXIT_USAGE and r.stderr.strip().splitlines() == [
        'error: --model given more than once; give it once (see convert_from_fla_rwkv7.py --help)']


def test_closed_pipe_ends_quietly(tmp_path, checkpoint):
    """`--dry-run | head -2`: once the reader is gone, no "Broken pipe" error, and the status a shell gives `yes | head`."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already left: the first write fails, however small the output
    env = script_env()
    try:
        r = subprocess.run([sys.executable, str(SCRIPT), '--rwkv7', checkpoint, '--output', tmp_path / 'out', '--dry-run'],
                           stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(write_end)
    assert r.stderr == '' and r.returncode == 128 + 13  # 128 + SIGPIPE
    assert not (tmp_path / 'out').exists()


def test_bad_input_is_one_line_without_traceback_unless_verbose(tmp_path):
    bad = tmp_path / 'notes.pth'
    bad.write_text('not a model')
    r = run('--rwkv7', bad, '--output', tmp_path / 'out')
    assert r.returncode == NotACheckpointError.exit_code
    assert r.stderr.strip() == f'error: {bad}: not a PyTorch zip (.pth) or safetensors file'
    r = run('--rwkv7', bad, '--output', tmp_path / 'out', '--verbose')
    assert r.returncode == NotACheckpointError.exit_code and 'Traceback' in r.stderr


@pytest.mark.parametrize('precision, dtype', [('fp32', torch.float32), ('bfloat16', torch.bfloat16), ('fp16', torch.float16)])
def test_precision_casts_like_torch(tmp_path, checkpoint, precision, dtype):
    from safetensors.torch import load_file
    out = tmp_path / 'out'
    assert run('--rwkv7', checkpoint, '--output', out, '--precision', precision, '--tokenizer', 'none', '-q').returncode == 0
    weights = load_file(out / 'model.safetensors')
    source = torch.load(checkpoint, weights_only=True)
    assert all(t.dtype == dtype for t in weights.values())
    assert torch.equal(weights['model.embeddings.weight'], source['emb.weight'].to(dtype))
    assert torch.equal(weights['model.layers.1.attn.a_lora.lora.2.weight'], source['blocks.1.att.a2'].t().to(dtype))
    assert json.loads((out / 'config.json').read_text())['dtype'] == str(dtype).removeprefix('torch.')


def test_sharded_output_has_a_valid_index(tmp_path, checkpoint):
    from safetensors import safe_open
    out = tmp_path / 'out'
    r = run('--rwkv7', checkpoint, '--output', out, '--max-shard-size', '300KB', '--tokenizer', 'none')
    assert r.returncode == 0, r.stderr
    index = json.loads((out / 'model.safetensors.index.json').read_text())
    shards = sorted(set(index['weight_map'].values()))
    assert len(shards) >= 3 and shards[0] == f'model-00001-of-{len(shards):05d}.safetensors'
    total, names = 0, set()
    for shard in shards:
        with safe_open(out / shard, 'pt') as f:
            names |= set(f.keys())
            total += sum(f.get_tensor(k).numel() * 2 for k in f.keys())
    assert names == set(index['weight_map']) and total == index['metadata']['total_size']


def test_stale_scratch_of_a_killed_run_is_cleaned(tmp_path, checkpoint):
    # a scratch folder whose process no longer exists, as a SIGKILLed conversion leaves it
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    stale = tmp_path / f'.out.tmp-{dead.stdout.strip()}-deadbeef'
    stale.mkdir()
    (stale / 'model.safetensors').write_bytes(b'half')
    assert run('--rwkv7', checkpoint, '--output', tmp_path / 'out', '--tokenizer', 'none', '-q').returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_conversion_does_not_import_fla_models_or_torch(tmp_path, checkpoint):
    code = (f'import sys; sys.argv = ["x", "--rwkv7", {str(checkpoint)!r}, "--output", {str(tmp_path / "o")!r}, "-q"]; '
            f'sys.path.insert(0, {str(REPO / "utils")!r}); import runpy; '
            f'runpy.run_path({str(SCRIPT)!r}, run_name="not_main"); '
            'from fla.rwkv7_convert.cli.convert import main_to_fla; assert main_to_fla(sys.argv[1:]) == 0; '
            'heavy = [m for m in ("torch", "triton", "transformers", "fla.models") if m in sys.modules]; '
            'assert not heavy, heavy')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------ the export command (fla -> BlinkDL)

EXPORT_SHAPE = Goose(vocab=64, hidden=64, layers=2, head_size=32, w_rank=16, a_rank=8, v_rank=24, g_rank=32, ffn=96)


@pytest.fixture(scope='module')
def hf_dir(converted_model) -> Path:
    """A small fla directory made by the forward converter, for the export command to read."""
    return converted_model(EXPORT_SHAPE, torch.bfloat16, seed=3).dir


def test_dry_run_writes_nothing(hf_dir, tmp_path):
    code, out, _ = call_main(main_from_fla, '--model', str(hf_dir), '--output', str(tmp_path / 'o.pth'), '--dry-run')
    assert code == 0 and 'model.layers.1.attn.w_lora.lora.0.weight [16, 64] BF16 -> blocks.1.att.w1 [64, 16] BF16' in out
    assert '(placeholder) -> blocks.0.att.v1 [64, 24] BF16' in out and not any(tmp_path.iterdir())


def test_script_is_torch_free(hf_dir, tmp_path):
    """The script converts without importing torch or fla's own package, and reports failures in one line."""
    probe = ('import runpy, sys\n'
             'sys.argv = ["convert_from_fla_rwkv7.py", *sys.argv[1:]]\n'
             'try:\n'
             '    runpy.run_path("utils/convert_from_fla_rwkv7.py", run_name="__main__")\n'
             'except SystemExit as e:\n'
             '    print("heavy:", sorted(m for m in ("torch", "fla.models", "transformers") if m in sys.modules))\n'
             '    sys.exit(e.code)\n')
    out = tmp_path / 'o.pth'
    run = subprocess.run([sys.executable, '-c', probe, '--model', str(hf_dir), '--output', str(out), '--quiet'],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == 'heavy: []' and out.is_file()
    run = subprocess.run([sys.executable, 'utils/convert_from_fla_rwkv7.py', '--model', str(hf_dir), '--output',
                          str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == OutputExistsError.exit_code
    assert run.stderr == f'error: {out}: exists; pass --force to replace it\n'


def test_shared_flags_are_declared_once_for_the_three_commands():
    """-q/-v, --precision, --force, --allow-nonfinite, --dry-run and --head-size: one declaration each (argparse
    parents), present on every command that takes them."""
    def flags(parser) -> set[str]:
        return {s for action in parser._actions for s in action.option_strings}
    to_fla, from_fla, verify = build_to_fla_parser(), build_from_fla_parser(), build_verify_parser()
    for parser in (to_fla, from_fla, verify):
        assert {'-q', '--quiet', '-v', '--verbose'} <= flags(parser)
    for parser in (to_fla, from_fla):
        assert {'--precision', '--force', '--allow-nonfinite', '--dry-run'} <= flags(parser)
    assert '--head-size' in flags(to_fla) and '--head-size' in flags(verify)
    source = ''.join(p.read_text(encoding='utf-8') for p in Path(cli_flags.__file__).parent.glob('*.py'))
    for flag in ('--quiet', '--verbose', '--precision', '--force', '--allow-nonfinite', '--dry-run', '--head-size'):
        assert source.count(f"add_argument('{flag}'") == 1, flag

