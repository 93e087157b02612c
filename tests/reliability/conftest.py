"""The reliability campaigns' fixtures: each campaign's summary (printed at the end of a module, counts checked
against docs/reliability.md when a whole block ran), the base fla directory the export and verify campaigns attack,
and verify's guards (the audit of opened files, no compute before a refusal).

A campaign's module asks for its summary with `pytestmark = pytest.mark.usefixtures(...)`: the summaries are not
autouse, so a module prints only its own campaign's counts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import reliability_common as common
import torch
from hostile.directories import BASE, ODD_CONFIGS, make_hf
from rwkv7_factory import make_tuned_state, save, time_states, write_state_conversion

from fla.rwkv7_convert.convert.to_fla import convert_to_fla


@pytest.fixture(scope='module')
def campaign_summary(request):
    """The forward campaign (mutated checkpoints, broken files, output safety): prints the counts so far, writes
    out/reliability-stats.json, and checks docs/reliability.md's block after a whole campaign."""
    yield
    common.print_summary(request, f'{Path(request.module.__file__).relative_to(common.REPO)} (counts so far)',
                         common.STATS)
    target = Path(os.environ.get('RELIABILITY_STATS', common.REPO / 'out' / 'reliability-stats.json'))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(common.STATS, indent=1, sort_keys=True, default=dict) + '\n')
    except OSError:
        pass
    common.check_published_counts()


def _odd_campaign_summary(request, campaign: str, stats: dict, section: str, **how):
    """Prints a campaign's counts so far; pins the outcome of each odd config.json value once all of them ran."""
    common.print_summary(request, f'{campaign}, {Path(request.module.__file__).name} (counts so far)', stats, **how)
    common.check_published_outcomes(stats, section, len(ODD_CONFIGS), f'odd config.json, {campaign}')


@pytest.fixture(scope='module')
def export_summary(request):
    yield
    _odd_campaign_summary(request, 'export', common.EXPORT_STATS, common.ODD_EXPORT, per_mutation=True)


@pytest.fixture(scope='module')
def verify_summary(request):
    yield
    _odd_campaign_summary(request, 'verify', common.VERIFY_STATS, common.ODD_VERIFY, total=True)


@pytest.fixture(scope='session')
def hf(tmp_path_factory, converted_model) -> dict:
    """The base fla directory the export and verify campaigns attack, its source file and canonical export; shared
    by the whole session, so read-only: a test that changes it copies it first."""
    made = converted_model(BASE, torch.bfloat16, seed=15)
    return make_hf(made.source, made.dir, tmp_path_factory.mktemp('hf'))


@pytest.fixture(scope='session')
def audit():
    """Every file this process tries to open while `reliability_common.opened()` records (an audit hook stays for
    good, so it is added once, and records nothing outside `opened()`)."""
    sys.addaudithook(common.record_opens)


@pytest.fixture(scope='session')
def tuned(tmp_path_factory, hf) -> dict:
    """A state-tuned merge of the base model (hf's source and a tuned state) converted with its state, in a folder of
    its own (`library` checks that nothing else in its parent is opened); and the bare state file with its converted
    state file (written through formats/state_file.py: no base directory here). Read-only, as `hf`."""
    root = tmp_path_factory.mktemp('tuned')
    state = make_tuned_state(BASE)
    merge = save({**torch.load(hf['source'], weights_only=True), **time_states(state)}, root / 'merge.pth')
    model = root / 'case' / 'model'
    convert_to_fla(merge, model, tokenizer='none')
    bare = save(time_states(state), root / 'state.pth')
    write_state_conversion(bare, root / 'state')
    return {'source': merge, 'dir': model, 'state': state, 'bare': bare, 'state_dir': root / 'state'}
