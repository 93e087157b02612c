"""Reliability campaign 1, mutated checkpoints: 500 hypothesis-style mutations of a valid checkpoint through the
library and 24 through the command line. Each converts to exactly the canonical model or is refused with a one-line
ConversionError subclass, the old output untouched. Its counts are the ones docs/reliability.md publishes.

Reproduce: python -m pytest tests/reliability/test_mutated_checkpoints.py -q
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from helpers import assert_one_line_error, leftovers, run_script
from hostile.checkpoints import Case, make_case, save_case
from reliability_common import (
    CLI,
    CLI_CASES,
    LIBRARY,
    LIBRARY_CASES,
    SCRIPT,
    assert_same_model,
    canonical,
    digest,
    make_old_model,
    read_model,
    tally,
)

from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError

pytestmark = pytest.mark.usefixtures('campaign_summary')  # the forward campaign's counts: printed, checked


def check_case(c: Case, src: Path, outcome_of) -> str:
    """Convert `src` over an existing model; returns 'converted' or the error class, asserting the property."""
    folder = src.parent
    out = folder / 'out'
    before = make_old_model(out)
    outcome, line = outcome_of(src, out)
    if outcome == 'converted':
        assert_same_model(read_model(out), canonical(c.base))
        assert not c.harmful, f'{c.harmful} should have been refused'
    else:
        assert c.harmful, f'a benign input was refused: {line}'
        assert digest(out) == before, 'a refused conversion changed the existing output'
    assert leftovers(folder, src.name, 'out') == []
    return outcome


def library_outcome(c: Case):
    def outcome_of(src: Path, out: Path) -> tuple[str, str]:
        try:
            convert_to_fla(src, out, precision=c.dtype, force=True, tokenizer='none', head_size=c.head_size)
        except ConversionError as e:
            line = e.one_line()
            assert type(e) is not ConversionError and line and '\n' not in line, (type(e), line)
            return type(e).__name__, line
        return 'converted', ''
    return outcome_of


def cli_outcome(c: Case):
    def outcome_of(src: Path, out: Path) -> tuple[str, str]:
        precision = {'F32': 'fp32', 'BF16': 'bf16'}[c.dtype]
        extra = [f'--head-size={c.head_size}'] if c.head_size is not None else []
        r = run_script(SCRIPT, '--rwkv7', src, '--output', out, '--force', '--tokenizer', 'none', '--precision', precision,
                       '-q', *extra)
        if r.returncode == 0:
            assert r.stderr == ''
            return 'converted', ''
        line = assert_one_line_error(r.returncode, r.stderr)
        return 'refused (one line)', line
    return outcome_of


# each seed is one mutated checkpoint, given to the library or, for the later seeds, to the command line
WAYS = ([pytest.param(LIBRARY, library_outcome, seed, id=f'library-{seed}') for seed in range(LIBRARY_CASES)]
        + [pytest.param(CLI, cli_outcome, seed, id=f'command-line-{seed}')
           for seed in range(LIBRARY_CASES, LIBRARY_CASES + CLI_CASES)])


@pytest.mark.parametrize('way, outcome_for, seed', WAYS)
def test_mutated_checkpoints_convert_exactly_or_are_refused(way, outcome_for, seed):
    c, fmt, names = make_case(seed)
    with tempfile.TemporaryDirectory() as d:
        src = save_case(c, fmt, Path(d))
        outcome = check_case(c, src, outcome_for(c))
    tally(way, outcome, names)
