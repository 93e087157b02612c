"""Reliability campaign, export direction (fla directory -> RWKV-LM file): hostile, odd and unreadable config.json
values, and the seeded campaign of mutated directories (tests/hostile/mutations.py).

The property (docs/reliability.md, section 4, with the counts): every input directory either exports to exactly the
canonical RWKV-LM file, or is refused with one line (a ConversionError; through the command line its error's exit
status and one `error: ` line) with the old output untouched and nothing left beside it.
Reproduce: python -m pytest tests/reliability/test_export_configs.py -q
"""

from __future__ import annotations

import pytest
from helpers import assert_one_line_error, call_main, leftovers
from hostile.directories import HOSTILE_CONFIGS, ODD_CONFIGS, RAW_CONFIG_PARAMS, RAW_CONFIGS, write_dir
from hostile.mutations import CAMPAIGN_CASES, mutated_case
from reliability_common import ODD_EXPORT, OLD, check_property, export_tally, read_pth

from fla.rwkv7_convert.cli.export import main_from_fla

pytestmark = pytest.mark.usefixtures('export_summary')  # the export campaign's counts, printed


@pytest.mark.parametrize('edit', HOSTILE_CONFIGS)
def test_hostile_config_is_refused(tmp_path, hf, edit):
    cfg = {**hf['config'], **edit}
    model = write_dir(tmp_path / 'm', cfg, hf['tensors'])
    outcome = check_property(model, tmp_path, hf['canonical'])
    assert outcome != 'exported', f'{edit} must be refused'
    export_tally('hostile config.json', outcome, next(iter(edit)))


@pytest.mark.parametrize('edit', ODD_CONFIGS)
def test_odd_config_exports_exactly_or_is_refused(tmp_path, hf, edit, request):
    model = write_dir(tmp_path / 'm', {**hf['config'], **edit}, hf['tensors'])
    outcome = check_property(model, tmp_path, hf['canonical'])
    # either is right, but each value's outcome is pinned: docs/reliability.md publishes them (ODD_EXPORT's block)
    export_tally(ODD_EXPORT, outcome, request.node.callspec.id)


@pytest.mark.parametrize('what', RAW_CONFIG_PARAMS)
def test_unreadable_config_is_a_one_line_error(tmp_path, hf, what):
    model = write_dir(tmp_path / 'm', RAW_CONFIGS[what], hf['tensors'])
    outcome = check_property(model, tmp_path, hf['canonical'])
    assert outcome != 'exported'
    code, _, err = call_main(main_from_fla, '--model', model, '--output', tmp_path / 'o.pth')
    assert_one_line_error(code, err)
    assert leftovers(tmp_path, 'm') == []
    export_tally('broken config.json (library + command line)', outcome, what)


@pytest.mark.parametrize('seed', range(CAMPAIGN_CASES))
def test_mutated_directories_export_exactly_or_are_refused(tmp_path, hf, seed):
    c, names = mutated_case(hf, seed)
    model = write_dir(tmp_path / 'm', c.config, c.sd, c.how, c.shard_sizes)
    outcome = check_property(model, tmp_path, hf['canonical'], precision=c.precision)
    if c.harmful:
        assert outcome != 'exported', c
    else:
        assert outcome == 'exported', (c, outcome)
    export_tally('mutated directories (seeded)', outcome, names)
    # the same directory through the command line: its error's exit status and one `error: ` line, or exit 0 and the same file
    out = tmp_path / 'cli.pth'
    out.write_bytes(OLD)
    code, _, err = call_main(main_from_fla, '--model', model, '--output', out, '--force', '-q',
                    *(['--precision', c.precision] if c.precision else []))
    if outcome == 'exported':
        assert code == 0 and err == '' and read_pth(out) == hf['canonical'], (code, err)
    else:
        assert_one_line_error(code, err)
        assert out.read_bytes() == OLD
    assert leftovers(tmp_path, 'm', 'cli.pth') == []
