"""Reliability campaign, export direction (fla directory -> RWKV-LM file): broken weight files and shard indexes, two
weight sources at once, benign variants, hostile pytorch_model.bin files.

The property (docs/reliability.md, section 4, with the counts): every input directory either exports to exactly the
canonical RWKV-LM file, or is refused with one line (a ConversionError; through the command line its error's exit
status and one `error: ` line) with the old output untouched and nothing left beside it.
Reproduce: python -m pytest tests/reliability/test_export_files.py -q
"""

from __future__ import annotations

import shutil

import pytest
from hostile.directories import BIN_ATTACKS, TWO_SOURCES, different_model, write_dir
from hostile.files import (
    ALL_INDEX_ATTACKS,
    EITHER,
    INDEX_PARAMS,
    LIES,
    cut_points,
    safetensors_boundaries,
    sharded_dir,
    tell_lie,
)
from reliability_common import check_property, export_tally, read_pth

from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla

pytestmark = pytest.mark.usefixtures('export_summary')  # the export campaign's counts, printed


def test_truncated_model_safetensors_at_every_boundary_is_refused(tmp_path, hf):
    data = (hf['dir'] / 'model.safetensors').read_bytes()
    cuts = cut_points(data, safetensors_boundaries)
    model = write_dir(tmp_path / 'm', hf['config'], None)
    for cut in cuts:
        (model / 'model.safetensors').write_bytes(data[:cut])
        outcome = check_property(model, tmp_path, hf['canonical'])
        assert outcome == 'NotACheckpointError', (cut, outcome)
        export_tally('truncated model.safetensors', outcome)
    assert len(cuts) > 100


@pytest.mark.parametrize('lie', LIES)
def test_lying_safetensors_header_is_refused(tmp_path, hf, lie):
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'])
    path = model / 'model.safetensors'
    tell_lie(path, lie)
    outcome = check_property(model, tmp_path, hf['canonical'])
    assert outcome in ('NotACheckpointError', 'KeyMismatchError'), outcome  # I16: readable, but not floating point


@pytest.mark.parametrize('attack', INDEX_PARAMS)
def test_broken_shard_index_is_refused(tmp_path, hf, attack):
    model, index = sharded_dir(tmp_path, hf)
    assert len(set(index['weight_map'].values())) == 2
    ALL_INDEX_ATTACKS[attack](model, index)
    outcome = check_property(model, tmp_path, hf['canonical'])
    assert outcome in ('NotACheckpointError', 'KeyMismatchError') or attack in EITHER, outcome


def test_two_weight_formats_holding_the_same_model_export_exactly(tmp_path, hf):
    for what, stores in {'model.safetensors + pytorch_model.bin': ('single', 'bin'),
                         'model.safetensors + an index with shards': ('single', 'shards'),
                         'pytorch_model.bin + an index with shards': ('bin', 'shards')}.items():
        model = tmp_path / 'm'
        for i, how in enumerate(stores):
            write_dir(model if i == 0 else tmp_path / 'tmp', hf['config'], hf['tensors'], how, [25])
        for p in (tmp_path / 'tmp').iterdir():
            if p.name != 'config.json':
                p.rename(model / p.name)
        shutil.rmtree(tmp_path / 'tmp')
        outcome = check_property(model, tmp_path, hf['canonical'])
        assert outcome == 'exported'
        export_tally('two weight formats at once', outcome, f'{what}, same model')
        shutil.rmtree(model)


@pytest.mark.parametrize('loaded, stale', TWO_SOURCES)
def test_two_weight_sources_export_the_one_transformers_loads_or_are_refused(tmp_path, hf, loaded, stale):
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'], loaded, [25])
    write_dir(tmp_path / 'stale', None, different_model(hf), stale, [25])
    for p in (tmp_path / 'stale').iterdir():
        if not (model / p.name).exists():
            p.rename(model / p.name)
    shutil.rmtree(tmp_path / 'stale')
    outcome = check_property(model, tmp_path, hf['canonical'])
    export_tally('two weight formats at once', outcome, f'{loaded} + a different {stale}')


def test_tied_embeddings_export_as_the_untied_model(tmp_path, hf):
    """docs/export.md: tie_word_embeddings exports head.weight as a copy of emb.weight; the same file as the
    untied directory whose lm_head equals the embeddings."""
    untied = {**hf['tensors'], 'lm_head.weight': hf['tensors']['model.embeddings.weight'].clone()}
    ref = write_dir(tmp_path / 'untied', hf['config'], untied)
    convert_from_fla(ref, tmp_path / 'ref.pth')
    want = read_pth(tmp_path / 'ref.pth')
    (tmp_path / 'ref.pth').unlink()
    tied_sd = {k: v for k, v in hf['tensors'].items() if k != 'lm_head.weight'}
    tied = write_dir(tmp_path / 'tied', {**hf['config'], 'tie_word_embeddings': True}, tied_sd)
    assert check_property(tied, tmp_path, want) == 'exported'
    # a tied config with a stale lm_head.weight: fla ignores the stored head (it uses the embeddings); so does the export
    stale = write_dir(tmp_path / 'stale', {**hf['config'], 'tie_word_embeddings': True}, hf['tensors'])
    assert check_property(stale, tmp_path, want) == 'exported'
    export_tally('benign variants', 'exported', 'tied embeddings')
    export_tally('benign variants', 'exported', 'tied, with a stale lm_head.weight')


@pytest.mark.parametrize('precision', ['fp32', 'bf16', 'fp16'])
def test_stored_fp32_exports_like_bf16_with_precision(tmp_path, hf, precision):
    """The whole directory stored fp32 (the bf16 values widened) exports, with --precision, exactly as the bf16
    directory does with the same --precision."""
    convert_from_fla(hf['dir'], tmp_path / 'ref.pth', precision=precision)
    want = read_pth(tmp_path / 'ref.pth')
    (tmp_path / 'ref.pth').unlink()
    wide = write_dir(tmp_path / 'm', hf['config'], {k: v.float() for k, v in hf['tensors'].items()})
    assert check_property(wide, tmp_path, want, precision=precision) == 'exported'
    export_tally('benign variants', 'exported', f'stored fp32, --precision {precision}')


def test_fla_january_2025_layout_with_layer0_v_lora_exports_exactly(tmp_path, hf):
    sd = {k: (v.reshape(1, 1, -1) if k.endswith(('attn.k_k', 'attn.k_a', 'ffn.x_k')) else v)
          for k, v in hf['tensors'].items()}
    sd.update({k.replace('layers.1', 'layers.0'): v.clone() for k, v in hf['tensors'].items()
               if k.startswith('model.layers.1.attn.v_lora')})
    model = write_dir(tmp_path / 'm', hf['config'], sd)
    assert check_property(model, tmp_path, hf['canonical']) == 'exported'
    export_tally('benign variants', 'exported', 'fla January 2025 layout ([1,1,C] vectors, layer-0 v_lora)')


@pytest.mark.parametrize('attack', BIN_ATTACKS)
def test_hostile_pytorch_model_bin_is_refused(tmp_path, hf, attack):
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'], 'bin')
    marker = tmp_path / 'pwned'
    BIN_ATTACKS[attack](model / 'pytorch_model.bin', marker)
    outcome = check_property(model, tmp_path, hf['canonical'])
    assert outcome != 'exported' and not marker.exists(), outcome
    assert outcome == 'UnsafeCheckpointError' if 'os.system' in attack else outcome == 'NotACheckpointError', outcome
    export_tally('hostile pytorch_model.bin', outcome, attack)
