"""What a converted directory holds for the Hugging Face hub and for llama.cpp: its model card, a path-free record of
the source, and config keys that llama.cpp reads and fla ignores."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rwkv7_factory import Goose, make_state_dict, save

from fla.rwkv7_convert import __version__
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.hub.model_card import CARD_FILE, write_model_card
from fla.rwkv7_convert.mapping.config import BLINKDL_LN_X_EPS, BLINKDL_NORM_EPS

REPO = Path(__file__).resolve().parents[2]
LLAMACPP_KEYS = ('head_size', 'layer_norm_epsilon')


def llamacpp_reads(config: dict) -> tuple[int, float]:
    """(head size, LayerNorm eps) as llama.cpp's convert_hf_to_gguf.py (Rwkv7Model.set_gguf_parameters) reads them:
    `head_size` and `layer_norm_epsilon` as a pair, else fla's `head_dim` and `norm_eps`. Its ln_x GroupNorm eps is
    64e-5 whatever the config says (src/models/rwkv7-base.cpp), so this eps is the only one it takes from us."""
    try:
        return config['head_size'], config['layer_norm_epsilon']
    except KeyError:
        return config['head_dim'], config['norm_eps']


def without(config: dict, *keys: str) -> dict:
    return {k: v for k, v in config.items() if k not in keys}


@pytest.fixture(scope='module')
def converted(tmp_path_factory) -> dict[int, Path]:
    """fp32 conversions of 2-layer models for head sizes 32, 64 and 128."""
    root = tmp_path_factory.mktemp('heads')
    out = {}
    for n in (32, 64, 128):
        src = save(make_state_dict(Goose(hidden=128, head_size=n, vocab=300), seed=n), root / f'n{n}.pth')
        out[n] = convert_to_fla(src, root / f'n{n}', precision='F32').output
    return out


@pytest.mark.parametrize('n', [32, 64, 128])
def test_llamacpp_takes_blinkdls_layernorm_eps_for_every_head_size(converted, n):
    config = json.loads((converted[n] / 'config.json').read_text())
    assert llamacpp_reads(config) == (n, BLINKDL_NORM_EPS) == (n, 1e-5)
    # fla's keys stay what fla needs: ln_x exact (head_dim * norm_eps = 64e-5)
    assert config['head_dim'] == n and config['head_dim'] * config['norm_eps'] == pytest.approx(BLINKDL_LN_X_EPS)
    # without the pair llama.cpp would take fla's norm_eps, which is 1e-5 only for head size 64
    assert (llamacpp_reads(without(config, *LLAMACPP_KEYS))[1] == 1e-5) == (n == 64)


@pytest.mark.parametrize('n', [32, 128])
def test_fla_computes_the_same_with_without_and_with_absurd_llamacpp_keys(converted, tmp_path, n):
    """fla ignores head_size and layer_norm_epsilon on every path it takes from config.json to logits: absurd values
    change nothing, and the config it builds (and saves again) has the same fla values."""
    import fla_cpu
    from transformers import AutoConfig

    from fla.rwkv7_convert.runtime.loading import load_fla_model

    variants = {}
    for name, extra in (('ours', None), ('without', {}), ('absurd', {'head_size': 7, 'layer_norm_epsilon': 0.5})):
        d = tmp_path / name
        shutil.copytree(converted[n], d)
        config = json.loads((d / 'config.json').read_text())
        if extra is not None:
            config = {**without(config, *LLAMACPP_KEYS), **extra}
            (d / 'config.json').write_text(json.dumps(config))
        variants[name] = d
    tokens = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(n))
    logits = {name: fla_cpu.fla_logits(load_fla_model(d, dtype=torch.float32), tokens) for name, d in variants.items()}
    assert torch.equal(logits['ours'], logits['without']) and torch.equal(logits['ours'], logits['absurd'])
    configs = {name: AutoConfig.from_pretrained(d).to_dict() for name, d in variants.items()}
    fla_view = {name: without(c, *LLAMACPP_KEYS, '_name_or_path') for name, c in configs.items()}
    assert fla_view['ours'] == fla_view['without'] == fla_view['absurd']
    model = load_fla_model(variants['ours'], dtype=torch.float32)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm) or hasattr(m, 'eps')} <= {
        BLINKDL_LN_X_EPS / n, BLINKDL_LN_X_EPS}  # every norm fla builds takes norm_eps (or head_dim * norm_eps)


def test_fla_and_transformers_source_never_read_the_llamacpp_keys():
    """The behavioural test above covers loading and the forward pass; this covers every other path (generation,
    cache, init, save): no module of fla, nor transformers' config, model and generation code, reads either key."""
    import re

    import transformers

    import fla

    reads = re.compile(r"""config\.(head_size|layer_norm_epsilon)\b|['"](head_size|layer_norm_epsilon)['"]""")
    trf = Path(transformers.__file__).parent
    files = [f for root in fla.__path__ for f in Path(root).rglob('*.py') if 'rwkv7_convert' not in f.parts]
    files += [trf / 'configuration_utils.py', trf / 'modeling_utils.py', *(trf / 'generation').rglob('*.py')]
    assert len(files) > 100 and any(f.name == 'modeling_rwkv7.py' for f in files)
    hits = [f'{f}: {m.group(0)}' for f in files for m in reads.finditer(f.read_text(encoding='utf-8'))]
    assert not hits, hits


def test_export_reads_the_folder_as_before(converted, tmp_path):
    from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla

    plain = tmp_path / 'plain'
    shutil.copytree(converted[128], plain)
    config = json.loads((plain / 'config.json').read_text())
    (plain / 'config.json').write_text(json.dumps(without(config, *LLAMACPP_KEYS)))
    a = convert_from_fla(converted[128], tmp_path / 'a.pth')
    b = convert_from_fla(plain, tmp_path / 'b.pth')
    assert a.plan.warnings == b.plan.warnings and a.plan.notes == b.plan.notes
    assert (tmp_path / 'a.pth').read_bytes() == (tmp_path / 'b.pth').read_bytes()


@pytest.fixture(scope='module')
def small(tmp_path_factory) -> Path:
    return save(make_state_dict(Goose(layers=2), dtype=torch.bfloat16, seed=3), tmp_path_factory.mktemp('src') / 'goose.pth')


def _text_files(d: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding='utf-8') for p in d.iterdir() if p.suffix in ('.json', '.md', '.txt', '.jinja')}


def test_card_and_provenance_name_the_source_without_paths(tmp_path, small):
    out = convert_to_fla(small, tmp_path / 'out').output
    meta = json.loads((out / 'rwkv7_convert.json').read_text())
    data = small.read_bytes()
    assert meta['source'] == {'name': 'goose.pth', 'bytes': len(data), 'sha256': hashlib.sha256(data).hexdigest(),
                              'format': 'pth'}
    assert meta['converter'] == f'rwkv7_convert {__version__}'
    card = (out / CARD_FILE).read_text()
    for fact in ('goose.pth', f'{len(data):,} bytes', hashlib.sha256(data).hexdigest(), f'rwkv7_convert {__version__}',
                 'import fla', '2 × 128', '2 × 64', 'did not run', 'library_name: transformers'):
        assert fact in card, fact
    # nothing that would be published with the folder names where it was made
    for name, text in _text_files(out).items():
        for local in (str(small.parent), str(tmp_path), str(Path.cwd())):
            assert local not in text, (name, local)


def test_the_same_file_converts_to_the_same_directory(tmp_path, small):
    a = convert_to_fla(small, tmp_path / 'a').output
    b = convert_to_fla(small, tmp_path / 'b').output
    assert {p.name: p.read_bytes() for p in a.iterdir()} == {p.name: p.read_bytes() for p in b.iterdir()}


@pytest.mark.parametrize('passed', [pytest.param(True, id='pass'), pytest.param(False, id='fail')])
def test_card_rewritten_with_a_verify_result_changes_nothing_else(tmp_path, small, passed):
    out = convert_to_fla(small, tmp_path / 'out').output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_model_card(out, (passed, 'verify goose.pth vs .\n  verdict   X'))
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys()  # no temporary file left behind
    assert {k: v for k, v in after.items() if k != CARD_FILE} == {k: v for k, v in before.items() if k != CARD_FILE}
    card = after[CARD_FILE].decode()
    assert f'**{"PASS" if passed else "FAIL"}**' in card and 'verdict   X' in card and 'did not run' not in card


def test_verify_result_lands_in_the_card(tmp_path, small):
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, str(REPO / 'utils' / 'convert_to_rwkv7.py'), '--rwkv7', str(small), '--output',
                        str(out), '--verify', '--verify-tokens', '16', '--precision', 'fp32', '-q'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(r.stdout.splitlines()) == 1 and r.stdout.startswith("PASS: fla's float64 error is "), r.stdout  # -q: verdict
    card = (out / CARD_FILE).read_text()  # the whole report all the same
    assert '`--verify` after converting: **PASS**' in card and 'relative RMS' in card and 'exact proof' in card
    assert str(tmp_path) not in card and str(small.parent) not in card
    plain = convert_to_fla(small, tmp_path / 'plain', precision='F32').output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != CARD_FILE} == {
        p.name: p.read_bytes() for p in plain.iterdir() if p.name != CARD_FILE}


def test_world_model_card_gives_the_tokenizer_provenance_and_licence(tmp_path):
    from fla.rwkv7_convert.hub.chat import TURN_END_TOKENS
    src = save(make_state_dict(Goose(vocab=65536, hidden=64, layers=2, head_size=32), dtype=torch.bfloat16),
               tmp_path / 'world.pth')
    out = convert_to_fla(src, tmp_path / 'out').output
    card = (out / CARD_FILE).read_text()
    for fact in ('rwkv_vocab_v20230424', 'Apache License 2.0', 'BlinkDL', 'TRIE_TOKENIZER', 'apply_chat_template',
                 'AutoTokenizer'):
        assert fact in card, fact
    assert json.loads((out / 'generation_config.json').read_text())['eos_token_id'] == [0, *TURN_END_TOKENS]
    meta = json.loads((out / 'rwkv7_convert.json').read_text())
    assert meta['tokenizer'] == 'world' and 'tokenizer.json' in meta['tokenizer_files']
