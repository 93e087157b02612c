"""verify: a clean conversion passes; deliberately corrupted conversions fail, pinpointed to layer and sub-step."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rwkv7_factory import Goose, make_state_dict, save
from safetensors.torch import load_file, save_file

from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError, refusal_exit_codes
from fla.rwkv7_convert.proof.verify import verify

REPO = Path(__file__).resolve().parents[2]
# w_rank == hidden, so a transposed decay LoRA factor still has the right shape and loads
SHAPE = Goose(vocab=128, hidden=128, layers=3, head_size=64, w_rank=128)
# head size 32: the converter writes fla eps 2e-5 (ln_x exact), which the calibrated verdict must accept
SHAPE_N32 = Goose(vocab=96, hidden=64, layers=3, head_size=32, w_rank=64)
SHAPES = {'C128-N64-L3': SHAPE, 'C64-N32-L3': SHAPE_N32}
SHAPES_N: dict = {}  # converted directory -> its head size
STEP_KEYS = ['ln0'] + [f'blocks.{i}.{m}' for i in range(3) for m in ('att', 'ffn')] + ['ln_out']


def _convert(converted_model, shape):
    made = converted_model(shape, torch.float32, seed=2)
    SHAPES_N[made.dir] = shape.head_size
    return made.source, made.dir


@pytest.fixture(scope='module', params=[pytest.param(k, id=k) for k in SHAPES])
def converted_any(request, converted_model):
    return _convert(converted_model, SHAPES[request.param])


@pytest.fixture(scope='module')
def converted(converted_model):
    return _convert(converted_model, SHAPE)


def corrupt(converted, tmp_path, edit_weights=None, edit_config=None) -> Path:
    source, out = converted
    bad = tmp_path / 'bad'
    bad.mkdir()
    for f in out.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    if edit_weights:
        weights = load_file(bad / 'model.safetensors')
        edit_weights(weights)
        save_file({k: v.contiguous() for k, v in weights.items()}, bad / 'model.safetensors', metadata={'format': 'pt'})
    if edit_config:
        config = json.loads((bad / 'config.json').read_text())
        edit_config(config)
        (bad / 'config.json').write_text(json.dumps(config))
    return bad


def swap(weights, a, b):
    weights[a], weights[b] = weights[b].clone(), weights[a].clone()


def test_clean_conversion_passes_at_every_step(converted_any):
    source, out = converted_any
    report = verify(source, out, tokens=20, per_layer=True)
    assert report.passed and report.first_divergence is None, report.render()
    assert [key for key, _ in report.exact.steps] == STEP_KEYS
    assert all(err <= 1e-13 for _, err in report.exact.steps), report.render()  # float64 rounding, nothing more
    assert report.exact.logits.max_abs <= 1e-12 and report.exact.logits.top1 == 1.0
    # the formula difference is measured and named, never judged: the l2-norm eps (fuse_norm), the eps at N != 64
    keys = sorted({d.key for d in report.exact.differences})
    assert keys == (['fuse_norm'] if SHAPES_N[out] == 64 else ['fuse_norm', 'norm_eps'])
    assert 0 < report.exact.formula.rel_rms < 1e-3 and report.kernels is None


CORRUPTIONS = [
    pytest.param(lambda w: swap(w, 'model.layers.1.attn.k_k', 'model.layers.1.attn.k_a'), None, 'blocks.1.att',
                 id='swapped-k_k-k_a'),
    pytest.param(lambda w: w.__setitem__('model.layers.2.attn.w_lora.lora.0.weight',
                                         w['model.layers.2.attn.w_lora.lora.0.weight'].t()), None, 'blocks.2.att',
                 id='transposed-lora'),
    pytest.param(lambda w: [swap(w, f'model.layers.1.ffn.{n}', f'model.layers.2.ffn.{n}')
                            for n in ('x_k', 'key.weight', 'value.weight')], None, 'blocks.1.ffn', id='wrong-layer-index'),
    pytest.param(None, lambda c: c.__setitem__('norm_eps', 1e-2), 'ln0', id='wrong-eps'),
]


@pytest.mark.parametrize('edit_weights, edit_config, where', CORRUPTIONS)
def test_corruption_is_pinpointed(converted_any, tmp_path, edit_weights, edit_config, where):
    source, _ = converted_any
    bad = corrupt(converted_any, tmp_path, edit_weights, edit_config)
    report = verify(source, bad, tokens=20, per_layer=True)
    assert not report.passed and not report.exact.passed, report.render()
    assert report.exact.logits.rel_rms > 1e-6  # a wrong tensor is orders of magnitude beyond the bound (1e-9)
    assert report.first_divergence == where, report.render()
    keys = [key for key, _ in report.exact.steps]
    for _, err in report.exact.steps[: keys.index(where)]:
        assert err <= 1e-13  # everything before the corrupted step agrees to float64 rounding
    assert 'the models part first at' in report.render()


@pytest.mark.parametrize('edit_weights, edit_config, where', [CORRUPTIONS[0], CORRUPTIONS[3]])
def test_corruption_is_named_without_per_layer(converted, tmp_path, edit_weights, edit_config, where):
    """Sub-steps are compared anyway (streaming has them for free): a FAIL always says where."""
    source, _ = converted
    report = verify(source, corrupt(converted, tmp_path, edit_weights, edit_config), tokens=20)
    assert not report.passed and report.first_divergence == where
    assert f'({where})' in report.render() and 'per sub-step' not in report.render()
    assert report.verdict_line().startswith("FAIL: fla's float64 error is ") and report.verdict_line().endswith(
        "this directory does not compute the file's function") and report.verdict_line() in report.render()
    assert '  what to do: convert the file again' in report.render()


def test_cli_exit_status_and_table(converted, tmp_path):
    source, out = converted
    script = REPO / 'utils' / 'verify_rwkv7.py'
    ok = subprocess.run([sys.executable, str(script), '--rwkv7', str(source), '--model', str(out), '--tokens', '16'],
                        capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    assert 'relative RMS' in ok.stdout and 'PASS' in ok.stdout and 'fla modules in float64' in ok.stdout
    bad = corrupt(converted, tmp_path, lambda w: swap(w, 'model.layers.0.attn.k_k', 'model.layers.0.attn.k_a'))
    fail = subprocess.run([sys.executable, str(script), '--rwkv7', str(source), '--model', str(bad), '--tokens', '16',
                           '--per-layer'], capture_output=True, text=True, timeout=600)
    assert fail.returncode == 1 and 'FAIL' in fail.stdout and 'layer 0, time mix' in fail.stdout


def test_cli_torch_wkv_backend_from_the_light_start(converted, tmp_path):
    """--device cpu-torch from the script (fla a light namespace until verify needs it): PASS, and the stand-ins'
    float32 accuracy reported apart, named as what ran."""
    source, out = converted
    ok = run_verify_cli('--rwkv7', str(source), '--model', str(out), '--tokens', '8', '--device', 'cpu-torch')
    assert ok.returncode == 0, ok.stderr
    assert "kernels' accuracy (not the conversion's verdict): fla modules, torch wkv" in ok.stdout and 'PASS' in ok.stdout


def test_reference_state_gives_prefill_then_decode(converted):
    """The reference the verifier trusts: one pass equals prefill then token-by-token decode."""
    from fla.rwkv7_convert.proof.reference import RWKV7Reference
    from fla.rwkv7_convert.proof.verify import load_blinkdl_weights
    source, _ = converted
    ref = RWKV7Reference(load_blinkdl_weights(source))
    tokens = torch.randint(0, SHAPE.vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    whole, _ = ref(tokens)
    logits, state = ref(tokens[:, :5])
    pieces = [logits]
    for t in range(5, 12):
        logits, state = ref(tokens[:, t:t + 1], state)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-12)


def test_streaming_matches_the_whole_model_reference(converted):
    """The layer-by-layer reference equals RWKV7Reference on the whole state dict, bit for bit in float64."""
    from fla.rwkv7_convert.proof.reference import RWKV7Reference
    from fla.rwkv7_convert.proof.variant import BLINKDL
    from fla.rwkv7_convert.proof.verify import (
        ConvertedDir,
        Lane,
        Side,
        SourceFile,
        StreamingPair,
        exact_side,
        load_blinkdl_weights,
    )
    source, out = converted
    toks = torch.randint(0, SHAPE.vocab, (2, 9), generator=torch.Generator().manual_seed(1))
    with SourceFile(source) as src, ConvertedDir(out) as d:
        lanes = [Lane('blinkdl', 'float64', BLINKDL), Lane('calibration', 'float32', BLINKDL)]
        pair = StreamingPair(src, d, device='cpu', lanes=lanes, progress=None,
                             sides=[exact_side('cpu', 5), Side('kernels', 'float32', 5, exact_side('cpu', 5).running)])
        (ref64, ref32), (got64, got32), state = pair.run(toks[:, :4])
        (more64, _), (more_fla, _), _ = pair.run(toks[:, 4:], state)  # the carried state continues the sequence
    whole, _ = RWKV7Reference(load_blinkdl_weights(source))(toks)
    torch.testing.assert_close(torch.cat([ref64, more64], 1), whole, rtol=0, atol=1e-12)
    assert ref32.dtype == torch.float32 and 0 < (ref32.double() - ref64).abs().max() < 1e-4
    assert got64.dtype == torch.float64 and got32.dtype == torch.float32
    # fla in float64 is BlinkDL's function up to the l2-norm eps (fuse_norm), and far closer than float32 rounding
    assert (torch.cat([got64, more_fla], 1) - whole).abs().max() < 1e-6 < (got32.double() - ref64).abs().max() * 1e3
    assert all(p.is_meta for b in pair.blocks for p in b.parameters())  # no fla layer stays resident


def test_at_most_one_layer_of_weights_is_alive(converted, monkeypatch):
    """Tensors read from either file are dropped before the next layer's are read."""
    import weakref

    from fla.rwkv7_convert.proof import verify as v
    alive, peak = weakref.WeakSet(), [0]

    def tracked(load):
        def wrapper(self, *args, **kwargs):
            t = load(self, *args, **kwargs)
            alive.add(t)
            peak[0] = max(peak[0], len(alive))
            return t
        return wrapper

    monkeypatch.setattr(v.SourceFile, 'load', tracked(v.SourceFile.load))
    monkeypatch.setattr(v.ConvertedDir, 'load', tracked(v.ConvertedDir.load))
    source, out = converted
    assert verify(source, out, tokens=6).passed
    per_layer = len(v.SourceFile(source).plan.entries) // SHAPE.layers  # ~ one layer's tensors per file
    assert 0 < peak[0] <= 2 * per_layer + 4, peak[0]


def run_verify_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / 'utils' / 'verify_rwkv7.py'), *args], capture_output=True,
                          text=True, timeout=600)


def test_mismatched_pair_is_one_line_before_any_compute(converted, tmp_path):
    source, _ = converted
    other = save(make_state_dict(SHAPE.but(hidden=64, head_size=32), seed=2), tmp_path / 'other.pth')
    convert_to_fla(other, tmp_path / 'other', tokenizer='none')
    with pytest.raises(ConversionError, match=r'does not match .*m\.pth: config.json hidden_size = 64, but the file has '
                                              r'C = 128'):
        verify(source, tmp_path / 'other')
    r = run_verify_cli('--rwkv7', str(source), '--model', str(tmp_path / 'other'), '--tokens', '4')
    assert r.returncode in refusal_exit_codes() and r.stdout == '' and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(tmp_path / 'other') in r.stderr and str(source) in r.stderr and 'Traceback' not in r.stderr


def test_a_tensor_of_the_wrong_shape_is_named(converted, tmp_path):
    source, _ = converted
    name = 'model.layers.1.attn.a_lora.lora.0.weight'
    bad = corrupt(converted, tmp_path, lambda w: w.__setitem__(name, w[name][:16].clone()))
    with pytest.raises(ConversionError, match=rf'{name} is \[16, 128\] in model.safetensors, but blocks.1.att.a1 '):
        verify(source, bad)


@pytest.mark.parametrize(('args', 'says'), [
    pytest.param(['--model', '/nonexistent/out'], 'error: /nonexistent/out: no such directory', id='missing-model'),
    pytest.param(['--device', 'cpu', '--dtype', 'bfloat16'], 'no bfloat16', id='bf16-on-cpu'),
    pytest.param(['--device', 'cpu', '--dtype', 'float16'], 'returns NaN', id='fp16-on-cpu'),
    pytest.param(['--device', 'cpu', '--piece', '64'], 'pieces of 1..63 tokens', id='piece-too-long-for-cpu'),
    pytest.param(['--dtype', 'bfloat16'], 'the exact proof runs in float64', id='bf16-auto'),
    pytest.param(['--device', 'cpu-torch', '--dtype', 'float16'], 'with --device cpu-torch', id='fp16-torch-wkv'),
    pytest.param(['--piece', '0'], '--piece 0: must be at least 1', id='piece-zero-auto'),
])
def test_refusals_are_one_line_and_up_front(converted, args, says):
    source, out = converted
    given = dict(zip(args[::2], args[1::2]))
    given.setdefault('--model', str(out))
    r = run_verify_cli('--rwkv7', str(source), *[x for kv in given.items() for x in kv])
    assert r.returncode in refusal_exit_codes() and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'nothing was written' not in r.stderr and 'Repo id' not in r.stderr


def test_converter_verify_uses_the_same_default_token_count():
    from fla.rwkv7_convert.cli.convert import build_to_fla_parser
    from fla.rwkv7_convert.cli.verify import build_verify_parser
    from fla.rwkv7_convert.proof.verify import DEFAULT_TOKENS
    converter = build_to_fla_parser().parse_args(['--rwkv7', 'a', '--output', 'b', '--verify'])
    verifier = build_verify_parser().parse_args(['--rwkv7', 'a', '--model', 'b'])
    assert converter.verify_tokens == verifier.tokens == DEFAULT_TOKENS


@pytest.mark.parametrize(('device', 'dtype', 'piece', 'ieee', 'want'), [
    pytest.param('cpu', 'float32', 32, False, 'float32', id='cpu'),
    pytest.param('cuda', 'float32', 1024, False, 'tf32', id='cuda-chunk-tf32'),
    pytest.param('cuda', 'float32', 1024, True, 'float32', id='cuda-chunk-ieee'),
    pytest.param('cuda', 'float32', 32, False, 'float32', id='cuda-recurrent'),
    pytest.param('cuda', 'bfloat16', 1024, False, 'bfloat16', id='cuda-bf16'),
])
def test_precision_under_test(monkeypatch, device, dtype, piece, ieee, want):
    from fla.rwkv7_convert.proof.verify import precision_for
    if ieee:
        monkeypatch.setenv('TRITON_F32_DEFAULT', 'ieee')
    else:
        monkeypatch.delenv('TRITON_F32_DEFAULT', raising=False)
    assert precision_for(device, dtype, piece) == want


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize('quiet', [pytest.param(False, id='terminal'), pytest.param(True, id='quiet')])
def test_progress_on_a_terminal_only(converted, monkeypatch, quiet):
    source, out = converted
    err = _Terminal()
    monkeypatch.setattr(sys, 'stderr', err)
    assert verify(source, out, tokens=3, piece=2, quiet=quiet).passed
    shown = err.getvalue()
    if quiet:
        assert shown == ''
    else:  # loading, each layer, each piece
        assert 'verify: embedding' in shown and 'verify: layer 3/3' in shown and 'verify: head' in shown
        assert 'piece 2/2' in shown
