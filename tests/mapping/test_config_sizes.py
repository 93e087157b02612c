"""The one sizes <-> config.json map: every size symbol has one key, fla_config writes them all, and a config.json
that states any size otherwise is caught by the same function both directions and verify use."""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest

from fla.rwkv7_convert.mapping.config import CONFIG_SIZES, DERIVED_WHEN_NULL, Dims, config_sizes, fla_config, size_mismatches

DIMS = Dims(V=61, C=64, L=2, H=2, N=32, F=96, Dw=8, Da=16, Dv=24, Dg=12)


def test_every_size_has_exactly_one_config_key():
    symbols = [s for s, _ in CONFIG_SIZES]
    keys = [k for _, k in CONFIG_SIZES]
    assert sorted(symbols) == sorted(f.name for f in fields(Dims)) and len(set(keys)) == len(keys)


def test_fla_config_states_every_size_and_agrees_with_itself():
    cfg = fla_config(DIMS, 'F32')
    assert config_sizes(DIMS).items() <= cfg.items()
    assert size_mismatches(cfg, asdict(DIMS)) == []


@pytest.mark.parametrize('symbol, key', [pytest.param(s, k, id=k) for s, k in CONFIG_SIZES])
def test_each_key_stated_otherwise_is_the_one_mismatch(symbol, key):
    cfg = fla_config(DIMS, 'F32')
    cfg[key] += 1
    assert size_mismatches(cfg, asdict(DIMS)) == [(key, cfg[key], symbol, getattr(DIMS, symbol))]
    assert size_mismatches(cfg, {**asdict(DIMS), symbol: 0}) == []  # a size the caller could not read: no claim
    del cfg[key]
    assert size_mismatches(cfg, asdict(DIMS)) == []  # a key the config leaves out: fla's default, not a mismatch


@pytest.mark.parametrize('value', [pytest.param(32.0, id='float'), pytest.param('32', id='string'),
                                   pytest.param(True, id='bool')])
def test_a_size_that_is_not_an_integer_is_a_mismatch(value):
    cfg = {**fla_config(DIMS, 'F32'), 'head_dim': value}
    assert size_mismatches(cfg, asdict(DIMS)) == [('head_dim', value, 'N', 32)]


@pytest.mark.parametrize('symbol, key', [pytest.param(s, k, id=k) for s, k in CONFIG_SIZES])
def test_null_is_a_mismatch_unless_fla_derives_the_size(symbol, key):
    cfg = {**fla_config(DIMS, 'F32'), key: None}
    expected = [] if key in DERIVED_WHEN_NULL else [(key, None, symbol, getattr(DIMS, symbol))]
    assert size_mismatches(cfg, asdict(DIMS)) == expected
