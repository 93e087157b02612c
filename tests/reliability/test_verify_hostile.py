"""Reliability campaign, verify: the export campaign's hostile directories (tests/hostile/) given to `verify` as the
conversion of their source file.

The property (docs/reliability.md, section 6, with the counts): verify either refuses a directory before any compute
with one line, or computes a verdict: PASS only for the model transformers would load from the source's conversion;
never another exception, and no file outside the directory opened.
Reproduce: python -m pytest tests/reliability/test_verify_hostile.py -q
"""

from __future__ import annotations

import pytest
from hostile.directories import (
    BIN_ATTACKS,
    HOSTILE_CONFIGS,
    ODD_CONFIGS,
    RAW_CONFIG_PARAMS,
    RAW_CONFIGS,
    TWO_SOURCES,
    different_model,
    special_paths,
    write_dir,
)
from hostile.files import (
    ALL_INDEX_ATTACKS,
    EITHER,
    INDEX_PARAMS,
    LIES,
    cut_points,
    parent_as_model,
    safetensors_boundaries,
    sharded_dir,
    tell_lie,
)
from hostile.mutations import CAMPAIGN_CASES, mutated_case
from reliability_common import ODD_VERIFY, assert_refused_by_cli, library, refused, verify_tally

pytestmark = pytest.mark.usefixtures('verify_summary')  # the verify campaign's counts, printed


@pytest.mark.parametrize('edit', HOSTILE_CONFIGS)
def test_hostile_config_is_refused(tmp_path, hf, audit, no_compute, edit):
    model = write_dir(tmp_path / 'm', {**hf['config'], **edit}, hf['tensors'])
    refused(hf['source'], model, tmp_path, 'hostile config.json', next(iter(edit)))


@pytest.mark.parametrize('edit', ODD_CONFIGS)
def test_odd_config_is_verified_or_refused(tmp_path, hf, audit, edit, request):
    model = write_dir(tmp_path / 'm', {**hf['config'], **edit}, hf['tensors'])
    outcome, text = library(hf['source'], model, tmp_path)
    # a verdict or a refusal, but each value's outcome is pinned: docs/reliability.md publishes them (ODD_VERIFY's block)
    verify_tally(ODD_VERIFY, outcome, request.node.callspec.id)


@pytest.mark.parametrize('what', RAW_CONFIG_PARAMS)
def test_unreadable_config_is_refused(tmp_path, hf, audit, no_compute, what):
    model = write_dir(tmp_path / 'm', RAW_CONFIGS[what], hf['tensors'])
    refused(hf['source'], model, tmp_path, 'broken config.json', what)


# benign for the export, but not what fla loads as the source's conversion: other fla names and layouts; config keys
# fla reads with its own defaults where they are missing (a missing rank is fla's default rank) or values it refuses
NOT_THE_CONVERSION = {'fla_january_vectors', 'fused_x_x', 'bare_names', 'benign_config_keys', 'drop_cross_checked_key'}


@pytest.mark.parametrize('seed', range(CAMPAIGN_CASES))
def test_mutated_directory_is_judged_or_refused(tmp_path, hf, audit, seed):
    c, names = mutated_case(hf, seed)
    model = write_dir(tmp_path / 'm', c.config, c.sd, c.how, c.shard_sizes)
    outcome, text = library(hf['source'], model, tmp_path)
    if c.harmful:
        assert outcome != 'PASS', (c, text)
    elif not NOT_THE_CONVERSION & set(names):
        assert outcome == 'PASS', (c, text)  # the same model, sharded, as .bin, some tensors fp32, fewer config keys
    if outcome not in ('PASS', 'FAIL'):
        assert_refused_by_cli(hf['source'], model)
    verify_tally('mutated directories (seeded)', outcome, names)


def test_truncated_model_safetensors_is_refused(tmp_path, hf, audit, no_compute):
    data = (hf['dir'] / 'model.safetensors').read_bytes()
    cuts = cut_points(data, safetensors_boundaries)
    model = write_dir(tmp_path / 'm', hf['config'], None)
    for cut in cuts:
        (model / 'model.safetensors').write_bytes(data[:cut])
        outcome, line = library(hf['source'], model, tmp_path)
        assert outcome == 'NotACheckpointError' and 'model.safetensors' in line, (cut, line)
        verify_tally('truncated model.safetensors', outcome)
    assert_refused_by_cli(hf['source'], model)
    assert len(cuts) > 100


@pytest.mark.parametrize('lie', LIES)
def test_lying_safetensors_header_is_refused(tmp_path, hf, audit, no_compute, lie):
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'])
    path = model / 'model.safetensors'
    tell_lie(path, lie)
    refused(hf['source'], model, tmp_path, 'lying safetensors headers', lie)


@pytest.mark.parametrize('attack', INDEX_PARAMS)
def test_broken_shard_index_is_refused_without_reading_outside(tmp_path, hf, audit, attack):
    model, index = sharded_dir(tmp_path, hf)
    parent_as_model(model)  # a name leading out of the directory finds real files to read there
    ALL_INDEX_ATTACKS[attack](model, index)
    outcome, text = library(hf['source'], model, tmp_path)
    if attack in EITHER:  # JSON keeps the later entry, as transformers reads the index: the same model
        assert outcome == 'PASS', text
    else:
        assert outcome not in ('PASS', 'FAIL'), text
        assert_refused_by_cli(hf['source'], model)
    verify_tally('broken shard indexes', outcome, attack)


@pytest.mark.parametrize('attack', BIN_ATTACKS)
def test_hostile_pytorch_model_bin_is_refused(tmp_path, hf, audit, no_compute, attack):
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'], 'bin')
    marker = tmp_path / 'pwned'
    BIN_ATTACKS[attack](model / 'pytorch_model.bin', marker)
    refused(hf['source'], model, tmp_path, 'hostile pytorch_model.bin', attack)
    assert not marker.exists()


def test_special_paths_are_refused(tmp_path, hf, audit, no_compute):
    for what, path in special_paths(tmp_path, hf).items():
        refused(hf['source'], path, tmp_path, 'special paths', what)


@pytest.mark.parametrize('loaded, stale', TWO_SOURCES)
def test_two_weight_sources_judge_the_one_transformers_loads(tmp_path, hf, audit, loaded, stale):
    """The model transformers loads passes; with the two swapped (the loaded one a different model), it fails."""
    for loaded_tensors, stale_tensors, want in ((hf['tensors'], different_model(hf), 'PASS'),
                                                (different_model(hf), hf['tensors'], 'FAIL')):
        case = tmp_path / want
        model = write_dir(case / 'm', hf['config'], loaded_tensors, loaded, [25])
        write_dir(case / 'stale', None, stale_tensors, stale, [25])
        for p in (case / 'stale').iterdir():
            if not (model / p.name).exists():
                p.rename(model / p.name)
        outcome, text = library(hf['source'], model, case)
        assert outcome == want, text
        which = 'the right model' if want == 'PASS' else 'another model'
        verify_tally('two weight sources at once', outcome, f'{loaded} holding {which} + {stale}')


def test_tied_embeddings_are_judged_as_fla_loads_them(tmp_path, hf, audit):
    """A config that ties the embeddings makes fla's head the embedding matrix, whatever lm_head.weight holds:
    judged so, the directory fails (the source's head is not its embeddings), stored head or not."""
    tied = {**hf['config'], 'tie_word_embeddings': True}
    for what, tensors in (('with the right lm_head.weight', hf['tensors']),
                          ('without lm_head.weight', {k: v for k, v in hf['tensors'].items() if k != 'lm_head.weight'})):
        model = write_dir(tmp_path / what.replace(' ', '-'), tied, tensors)
        outcome, text = library(hf['source'], model, tmp_path)
        assert outcome == 'FAIL' and 'ties the embeddings' in text, text
        verify_tally('tied embeddings', outcome, what)
