"""rwkv7_convert.json's source record read back without trusting it, and the sha256 computed on a thread."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from fla.rwkv7_convert.formats.provenance import (
    PROVENANCE_FILE,
    RECORD_MAX_BYTES,
    FileDigest,
    SourceRecord,
    read_source_record,
)

SHA = 'ab' * 32
GOOD = {'converter': 'rwkv7_convert 0', 'source': {'name': 'm.pth', 'bytes': 1234, 'sha256': SHA, 'format': 'pth'}}


def test_the_converters_record_is_read(tmp_path):
    (tmp_path / PROVENANCE_FILE).write_text(json.dumps(GOOD))
    assert read_source_record(tmp_path) == (SourceRecord(1234, SHA, 'm.pth'), '')


def _write(what: str, path):
    """Put something hostile where the record belongs."""
    if what == 'missing':
        return
    if what == 'fifo':
        os.mkfifo(path)  # a blocking open would hang verify
    elif what == 'directory':
        path.mkdir()
    elif what == 'symlink to /dev/zero':
        path.symlink_to('/dev/zero')  # endless bytes
    elif what == 'dangling symlink':
        path.symlink_to(path.parent / 'nowhere')
    elif what == 'huge':
        with open(path, 'wb') as f:
            f.truncate(RECORD_MAX_BYTES + 1)
    else:
        path.write_bytes(RAW[what])


RAW = {
    'empty': b'',
    'not JSON': b'{"source": ',
    'not UTF-8': b'{"source": "\xff\xfe"}',
    'deeply nested': b'[' * 100_000 + b']' * 100_000,
    'a huge integer': b'{"source": {"bytes": 1' + b'0' * 5000 + b', "sha256": "' + SHA.encode() + b'"}}',
    'a list': b'[1, 2]',
    'no source': json.dumps({'converter': 'x'}).encode(),
    'source a string': json.dumps({'source': 'm.pth'}).encode(),
    'bytes a string': json.dumps({'source': {'bytes': '1234', 'sha256': SHA}}).encode(),
    'bytes a bool': json.dumps({'source': {'bytes': True, 'sha256': SHA}}).encode(),
    'bytes negative': json.dumps({'source': {'bytes': -1, 'sha256': SHA}}).encode(),
    'sha256 too short': json.dumps({'source': {'bytes': 1, 'sha256': 'abc'}}).encode(),
    'sha256 upper case junk': json.dumps({'source': {'bytes': 1, 'sha256': 'Z' * 64}}).encode(),
}
HOSTILE = ['missing', 'fifo', 'directory', 'symlink to /dev/zero', 'dangling symlink', 'huge', *RAW]


@pytest.mark.parametrize('what', [pytest.param(w, id=w.replace(' ', '-')) for w in HOSTILE])
def test_anything_else_is_no_record_with_a_reason(tmp_path, what):
    _write(what, tmp_path / PROVENANCE_FILE)
    record, why = read_source_record(tmp_path)
    assert record is None and why and '\n' not in why, why
    assert PROVENANCE_FILE in why


def test_a_name_that_is_not_a_string_is_left_out(tmp_path):
    (tmp_path / PROVENANCE_FILE).write_text(json.dumps({'source': {'bytes': 3, 'sha256': SHA, 'name': ['x']}}))
    assert read_source_record(tmp_path) == (SourceRecord(3, SHA, ''), '')


def test_digest_of_a_file_and_of_a_directorys_files(tmp_path):
    a, b = tmp_path / 'a.bin', tmp_path / 'b.bin'
    a.write_bytes(b'x' * (9 << 20))  # more than one 8 MiB chunk
    b.write_bytes(b'tail')
    assert FileDigest(a).result() == hashlib.sha256(a.read_bytes()).hexdigest()
    both = FileDigest(tmp_path, ['a.bin', 'b.bin'], start=False)
    assert both.size == (9 << 20) + 4
    both.start()
    assert both.result() == hashlib.sha256(a.read_bytes() + b'tail').hexdigest()


def test_a_cancelled_digest_stops_and_says_so(tmp_path):
    a = tmp_path / 'a.bin'
    a.write_bytes(b'x' * (17 << 20))
    digest = FileDigest(a, start=False)
    digest.cancel()  # before the first chunk: it must not hash the file
    digest.start()
    with pytest.raises(RuntimeError, match='cancelled'):
        digest.result()


def test_an_unreadable_file_is_raised_in_the_callers_thread(tmp_path):
    with pytest.raises(FileNotFoundError):
        FileDigest(tmp_path / 'nope').result()
