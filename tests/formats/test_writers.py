"""The registry of output formats: every writer round-trips through our readers, is picked by its declared suffix,
and a format added to the registry is what the export direction and --format use, with no other change."""

from __future__ import annotations

import numpy as np
import pytest

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats import writers
from fla.rwkv7_convert.formats.outputs import OutTensor, Writer
from fla.rwkv7_convert.formats.readers import open_checkpoint

ARRAYS = {
    'emb.weight': (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5, 'F32'),
    'blocks.0.att.x_r': (np.array([0x3F80, 0xBF80, 0x7F80], dtype=np.uint16).reshape(1, 1, 3), 'BF16'),
    'ln_out.bias': (np.linspace(-2, 2, 7, dtype=np.float16), 'F16'),
}


def _tensors() -> list[OutTensor]:
    return [OutTensor(k, a.shape, d, (lambda a=a: a)) for k, (a, d) in ARRAYS.items()]


@pytest.mark.parametrize('name', [pytest.param(n, id=n) for n in writers.WRITERS])
def test_every_writer_round_trips_through_the_readers(tmp_path, name):
    w = writers.WRITERS[name]
    path = tmp_path / f'out{w.suffixes[0]}'
    seen = []
    w.write(path, _tensors(), {'format': 'pt'}, lambda t: seen.append(t.name))
    assert seen == list(ARRAYS)
    ckpt = open_checkpoint(path)
    try:
        assert set(ckpt.tree) == set(ARRAYS)
        for key, (a, dtype) in ARRAYS.items():
            ref = ckpt.tree[key]
            assert ref.dtype == dtype and tuple(ref.shape) == a.shape
            assert ref.load().tobytes() == a.tobytes()
    finally:
        ckpt.close()


@pytest.mark.parametrize('name', [pytest.param(n, id=n) for n in writers.WRITERS])
def test_a_writer_is_picked_by_its_declared_suffix_or_by_name(name):
    w = writers.WRITERS[name]
    for suffix in w.suffixes:
        assert writers.writer_for(f'model{suffix}', None) is w
        assert writers.suffix_warning(f'model{suffix}', w) is None
    assert writers.writer_for('model.bin', name) is w
    assert writers.suffix_warning('model.bin', w).startswith('model.bin does not end in ')


@pytest.mark.parametrize('name', [pytest.param(n, id=n) for n in writers.WRITERS])
def test_a_format_asked_for_under_another_formats_suffix_is_refused(name):
    """`--format safetensors --output x.pth` would put safetensors bytes where torch.load is expected: refused in one
    line naming the file and the name to use; a suffix no format declares (.bin) is only warned about."""
    w = writers.WRITERS[name]
    others = [(o, s) for o in writers.WRITERS.values() if o is not w for s in o.suffixes]
    assert others
    for other, suffix in others:
        with pytest.raises(ConversionError) as e:
            writers.writer_for(f'out/model{suffix}', name)
        assert e.value.one_line().startswith(f'out/model{suffix}: ends in {suffix}, the {other.name} format')
        assert f'name it out/model{w.suffixes[0]}' in e.value.one_line()
    assert writers.writer_for('model.bin', name) is w


def test_no_suffix_gives_the_default_and_an_unknown_format_is_refused():
    assert writers.writer_for('model', None) is writers.WRITERS[writers.DEFAULT]
    with pytest.raises(ConversionError, match="unknown format 'gguf'; expected one of: pth, safetensors"):
        writers.writer_for('model.gguf', 'gguf')


def test_a_registered_format_is_what_the_export_and_the_cli_use(tmp_path, monkeypatch, converted_model):
    """Adding a format is one Writer and one registry entry: export and --format pick it up unchanged."""
    # torch and the converter cost seconds of import; the other tests of formats/ need neither
    import torch
    from rwkv7_factory import Goose

    from fla.rwkv7_convert.cli.export import main_from_fla
    from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla

    written = {}

    def write(path, tensors, metadata, on_tensor):
        written.update({t.name: t.produce().copy() for t in tensors})
        path.write_bytes(b'npz-ish')

    fake = Writer('toy', ('.toy',), 'a toy format for this test', write)
    monkeypatch.setitem(writers.WRITERS, 'toy', fake)
    model = converted_model(Goose(vocab=61, hidden=64, layers=1, head_size=32), torch.float32, seed=3).dir
    result = convert_from_fla(model, tmp_path / 'out.toy')
    assert result.fmt == 'toy' and (tmp_path / 'out.toy').read_bytes() == b'npz-ish'
    assert 'emb.weight' in written and 'head.weight' in written
    assert main_from_fla(['--model', str(model), '--output', str(tmp_path / 'cli.bin'), '--format', 'toy', '-q']) == 0
