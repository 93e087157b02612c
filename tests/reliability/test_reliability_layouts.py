"""A deterministic mutation campaign over the layouts met in practice (table.LAYOUTS, rwkv7_factory.write_layout).

Each case writes a small model in one layout, applies one seeded mutation to the stored tensors (none, transposing
one matrix, dropping a key, duplicating one under a wrapper prefix, renaming one tensor into another layout's name,
casting one tensor to fp64), converts it, and checks the only two acceptable outcomes: the output equals the
canonical conversion of what the file means, tensor for tensor and byte for byte, or the file is refused with a
one-line ConversionError naming it. Anything else (a different model, a crash, a multi-line error) fails. The tally
is printed (pytest -s). Square matrices (`[C,C]` projections) transposed are not mutated: no shape can show that, so
no converter can refuse it; see docs/mapping.md.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest
from rwkv7_factory import LAYOUT_WRITERS, Goose, make_state_dict, save, write_layout

from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats.readers import open_checkpoint

SHAPE = Goose(vocab=96, hidden=64, layers=2, head_size=32, w_rank=16, a_rank=8, v_rank=24, g_rank=32)
RANK_IS_C = SHAPE.but(w_rank=64)  # for the .st case whose orientation cannot be read
SEED = 20261127
ROUNDS = 3  # each (layout, mutation) pair this many times, with fresh seeded choices
# one tensor as today's RWKV-LM, the rc4a training code and the rc4a demo call it
SPELLINGS = (('att.x_r', 'att.time_maa_r', 'att.xx_r'), ('att.k_k', 'att.time_misc_kkk', 'att.kk_s'),
             ('att.w1', 'att.time_decay_w1', 'att.ww_w1'), ('att.r_k', 'att.time_faaaa', 'att.rk_s'))


def _transpose_one(rng: random.Random, stored: dict) -> tuple[dict, str]:
    names = sorted(k for k, v in stored.items() if v.dim() == 2 and v.shape[0] != v.shape[1])
    name = rng.choice(names)
    return {**stored, name: stored[name].t().contiguous()}, name


def _drop_one(rng: random.Random, stored: dict) -> tuple[dict, str]:
    name = rng.choice(sorted(stored))
    return {k: v for k, v in stored.items() if k != name}, name


def _duplicate_one(rng: random.Random, stored: dict) -> tuple[dict, str]:
    name = rng.choice(sorted(stored))
    return {**stored, 'module.' + name: stored[name].clone()}, name


def _other_layout_name(rng: random.Random, stored: dict) -> tuple[dict, str]:
    """One tensor renamed to how another layout calls it: a file mixing layouts."""
    spelled = {s: group for group in SPELLINGS for s in group}
    candidates = sorted(k for k in stored if '.'.join(k.split('.')[-2:]) in spelled)
    name = rng.choice(candidates)
    suffix = '.'.join(name.split('.')[-2:])
    new = name[: -len(suffix)] + rng.choice([s for s in spelled[suffix] if s != suffix])
    return {(new if k == name else k): v for k, v in stored.items()}, f'{name} -> {new}'


def _cast_one(rng: random.Random, stored: dict) -> tuple[dict, str]:
    name = rng.choice(sorted(stored))
    return {**stored, name: stored[name].double()}, name


MUTATIONS = {'none': None, 'transpose-one': _transpose_one, 'drop-one': _drop_one, 'duplicate-one': _duplicate_one,
             'other-layout-name': _other_layout_name, 'cast-one-fp64': _cast_one}


def _tensors(path: Path) -> dict[str, tuple]:
    with open_checkpoint(path / 'model.safetensors') as ckpt:
        return {n: (r.shape, r.load().astype('float64').tobytes()) for n, r in ckpt.tree.items()}


def _run(tmp: Path, layout: str, shape: Goose, mutation: str, rng: random.Random) -> str:
    sd = make_state_dict(shape, seed=rng.randrange(1000))
    what = []

    def edit(stored):
        if MUTATIONS[mutation] is None:
            return stored
        changed, detail = MUTATIONS[mutation](rng, stored)
        what.append(detail)
        return changed

    case = tmp / f'{layout}-{mutation}-{rng.randrange(10**9)}'
    case.mkdir()
    path, meant = write_layout(layout, sd, case, edit=edit)
    try:
        convert_to_fla(path, case / 'out', tokenizer='none', precision='F32')
    except ConversionError as e:
        line = e.one_line()
        assert '\n' not in line and line.startswith(str(path)), line
        return 'refused'
    ref_dir = case / 'canonical'
    convert_to_fla(save(meant, case / 'canonical.pth'), ref_dir, tokenizer='none', precision='F32')
    assert _tensors(case / 'out') == _tensors(ref_dir), f'{layout} / {mutation} ({what}) converted to another model'
    return 'exact'


# what each mutation may lead to; 'exact' for a mutation that changes the model would be a silent wrong conversion,
# which the tensor comparison above already fails
ALLOWED = {'none': {'exact'}, 'transpose-one': {'exact', 'refused'}, 'drop-one': {'exact', 'refused'},
           'duplicate-one': {'refused'}, 'other-layout-name': {'exact', 'refused'}, 'cast-one-fp64': {'exact'}}


def test_layout_mutation_campaign(tmp_path, capsys):
    rng = random.Random(SEED)
    tally: Counter = Counter()
    for _ in range(ROUNDS):
        for layout in LAYOUT_WRITERS:
            for mutation in MUTATIONS:
                outcome = _run(tmp_path, layout, SHAPE, mutation, rng)
                assert outcome in ALLOWED[mutation], (layout, mutation, outcome)
                tally[layout, mutation, outcome] += 1
    # a .st file whose rank equals C: the orientation of that factor is unreadable, so it must be refused
    tally['st', 'rank == C', _run(tmp_path, 'st', RANK_IS_C, 'none', rng)] += 1
    assert tally['st', 'rank == C', 'refused'] == 1
    with capsys.disabled():
        print('\nlayout mutation campaign:')
        for (layout, mutation, outcome), n in sorted(tally.items()):
            print(f'  {layout:26s} {mutation:18s} {outcome:8s} {n}')
        totals = Counter(o for (_, _, o) in tally.elements())
        print('  total: ' + ', '.join(f'{o} {n}' for o, n in sorted(totals.items())))


@pytest.mark.parametrize('layout', [pytest.param(x, id=x) for x in LAYOUT_WRITERS])
def test_transposed_ffn_matrix_is_never_converted(tmp_path, layout):
    """A non-square matrix transposed is refused in every layout (its shape shows it), never converted."""
    def edit(stored):
        name = next(k for k in sorted(stored) if re.search(r'blocks\.1\.ffn\.key\.weight$', k))
        return {**stored, name: stored[name].t().contiguous()}
    path, _ = write_layout(layout, make_state_dict(SHAPE), tmp_path, edit=edit)
    with pytest.raises(ConversionError, match=r'blocks\.1\.ffn\.key\.weight has shape \[64, 256\], expected \[256, 64\]'):
        convert_to_fla(path, tmp_path / 'out', tokenizer='none')
