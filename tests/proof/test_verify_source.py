"""verify refuses, before any compute, a directory whose rwkv7_convert.json records another source file (by size
first, without hashing; then by sha256), goes on with check_source=False / --any-source, and prints one line
with -q. Only the last two tests run fla (tiny, 4 tokens)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from helpers import call_main
from rwkv7_factory import Goose, make_state_dict, save

from fla.rwkv7_convert.cli.verify import main_verify
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats import provenance
from fla.rwkv7_convert.formats.provenance import PROVENANCE_FILE
from fla.rwkv7_convert.proof.files import ConvertedDir, SourceCheck, SourceFile
from fla.rwkv7_convert.proof.verify import verify

SHAPE = Goose(vocab=96, hidden=64, layers=1, head_size=64, w_rank=16, a_rank=16, v_rank=16, g_rank=16)


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict:
    """a.pth (float32 holding bf16 values) converted to out/; b.pth the same model stored in bf16 (another size,
    the same function); c.pth another model of a.pth's size."""
    tmp = tmp_path_factory.mktemp('source')
    sd = make_state_dict(SHAPE, torch.bfloat16, seed=4)
    a = save({k: v.float() for k, v in sd.items()}, tmp / 'a.pth')
    b = save(sd, tmp / 'b.pth')
    c = save({k: v.float() for k, v in make_state_dict(SHAPE, torch.bfloat16, seed=5).items()}, tmp / 'c.pth')
    assert a.stat().st_size == c.stat().st_size != b.stat().st_size
    convert_to_fla(a, tmp / 'out', tokenizer='none')
    return {'a': a, 'b': b, 'c': c, 'out': tmp / 'out'}


@pytest.fixture
def no_hashing(monkeypatch):
    def hashed(self):
        raise AssertionError('the source was hashed')
    monkeypatch.setattr(provenance.FileDigest, 'start', hashed)


def test_a_file_of_another_size_is_refused_without_hashing(files, no_compute, no_hashing):
    size_a, size_b = files['a'].stat().st_size, files['b'].stat().st_size
    with pytest.raises(ConversionError) as e:
        verify(files['b'], files['out'])
    assert e.value.one_line() == (f"{files['out']} was not converted from {files['b']}: its {PROVENANCE_FILE} records "
                                  f"'a.pth', {size_a:,} bytes, and {files['b']} has {size_b:,} bytes (--any-source, "
                                  'or check_source=False, verifies anyway)')
    code, out, err = call_main(main_verify, '--rwkv7', files['b'], '--model', files['out'], '--tokens', 4)
    assert code == 1 and out == '' and err == f'error: {e.value.one_line()}\n', (code, out, err)


def test_a_file_of_the_same_size_is_refused_by_its_sha256(files, no_compute):
    want, got = (hashlib.sha256(files[k].read_bytes()).hexdigest() for k in ('a', 'c'))
    with pytest.raises(ConversionError, match=rf"records 'a.pth', [\d,]+ bytes with sha256 {want}, and .*c\.pth has "
                                              rf'sha256 {got} \(--any-source'):
        verify(files['c'], files['out'])
    code, out, err = call_main(main_verify, '--rwkv7', files['c'], '--model', files['out'], '--tokens', 4)
    assert code == 1 and out == '' and len(err.splitlines()) == 1 and 'was not converted from' in err, err


def test_no_readable_record_is_a_note_not_a_refusal(files, tmp_path, no_hashing):
    out = tmp_path / 'out'
    out.mkdir()
    for f in files['out'].iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    for content, why in ((None, f'the directory has no {PROVENANCE_FILE}'), (b'{', f'{PROVENANCE_FILE} is not JSON')):
        (out / PROVENANCE_FILE).unlink(missing_ok=True)
        if content is not None:
            (out / PROVENANCE_FILE).write_bytes(content)
        with SourceFile(files['c']) as src, ConvertedDir(out) as d:
            check = SourceCheck(src, d)
            check.finish()  # nothing to wait for, nothing refused
        assert check.note.startswith('source file not checked against the directory: ' + why), check.note


def test_the_recorded_source_is_hashed_and_passes(files, monkeypatch):
    started, start = [], provenance.FileDigest.start
    monkeypatch.setattr(provenance.FileDigest, 'start', lambda self: started.append(self.paths) or start(self))
    with SourceFile(files['a']) as src, ConvertedDir(files['out']) as d:
        check = SourceCheck(src, d)
        check.finish()  # the real sha256 of a.pth, equal to the record
    assert check.note is None and started == [[files['a']]]


def test_any_source_verifies_anyway_and_says_so(files):
    """b.pth is a.pth's model in another dtype: refused by default, PASS when asked to go on, with a note."""
    code, out, err = call_main(main_verify, '--rwkv7', files['b'], '--model', files['out'], '--tokens', 4, '--any-source')
    assert code == 0 and err == '', (code, err)
    assert out.splitlines()[-2].startswith('PASS: ') and out.splitlines()[-1].startswith(
        "  note: not the recorded source (verified anyway): its rwkv7_convert.json records 'a.pth'"), out


def test_quiet_prints_the_verdict_line_only(files):
    code, out, err = call_main(main_verify, '--rwkv7', files['a'], '--model', files['out'], '--tokens', 4, '-q')
    assert code == 0 and err == '' and len(out.splitlines()) == 1, (out, err)
    assert out.startswith("PASS: fla's float64 error is ") and '(bound 1e-09) against the float64 reference on cpu' in out, out
