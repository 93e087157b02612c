"""Reliability campaign 2, broken files: truncated and zeroed files, safetensors headers that lie, hostile pickles,
special and unreadable files, outputs that must not be replaced. Each is a one-line error, nothing written.

Reproduce: python -m pytest tests/reliability/test_broken_files.py -q
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import as_nobody, assert_one_line_error, call_main, leftovers, run_script
from hostile.directories import rewrite_pickle
from hostile.files import cut_points, safetensors_boundaries, zip_boundaries
from reliability_common import (
    SCRIPT,
    assert_same_model,
    base_state_dict,
    canonical,
    digest,
    read_model,
    tally,
)
from rwkv7_factory import save

from fla.rwkv7_convert.cli.convert import main_to_fla
from fla.rwkv7_convert.convert.to_fla import convert_to_fla
from fla.rwkv7_convert.errors import ConversionError, NotACheckpointError

pytestmark = pytest.mark.usefixtures('campaign_summary')  # the forward campaign's counts: printed, checked

# ----------------------------------------------------------------------------------------------- 2. broken files

def convert_outcome(src: Path, out: Path, **kw) -> str:
    try:
        convert_to_fla(src, out, tokenizer='none', **kw)
    except ConversionError as e:
        assert '\n' not in e.one_line()
        return type(e).__name__
    return 'converted'


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_truncated_at_every_boundary_is_refused(tmp_path, fmt):
    src = save(base_state_dict(0), tmp_path / f'whole.{fmt}')
    data = src.read_bytes()
    cuts = cut_points(data, zip_boundaries if fmt == 'pth' else safetensors_boundaries)
    path = tmp_path / f'cut.{fmt}'
    for cut in cuts:
        path.write_bytes(data[:cut])
        outcome = convert_outcome(path, tmp_path / 'out')
        assert outcome == 'NotACheckpointError', (cut, outcome)
        tally(f'truncated {fmt} files', outcome)
    assert leftovers(tmp_path, src.name, path.name) == []
    assert len(cuts) > (100 if fmt == 'pth' else 50)


def test_pth_zeroed_at_every_boundary_is_refused_or_unchanged(tmp_path):
    """16 zero bytes written at each record boundary: headers, checksums and data are all covered, so the file is
    refused (zip structure, pickle, per-record CRC-32) or, where only padding was hit, converts exactly."""
    src = save(base_state_dict(0), tmp_path / 'whole.pth')
    data = src.read_bytes()
    want = canonical(0)
    path = tmp_path / 'zeroed.pth'
    for start in sorted({c + d for c in zip_boundaries(data) for d in (-5, 0) if 0 <= c + d < len(data)}):
        broken = bytearray(data)
        broken[start:start + 16] = bytes(len(broken[start:start + 16]))
        if broken == data:
            continue
        path.write_bytes(broken)
        out = tmp_path / 'out'
        outcome = convert_outcome(path, out, precision='F32')
        if outcome == 'converted':
            assert_same_model(read_model(out), want)
            shutil.rmtree(out)
        else:
            assert outcome == 'NotACheckpointError', (start, outcome)
        tally('zeroed .pth boundaries', outcome)


def edit_safetensors(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], 'little')
    header = json.loads(raw[8:8 + n])
    result = edit(header, raw[8 + n:])
    new_header, body = result if isinstance(result, tuple) else (header, raw[8 + n:])
    text = new_header if isinstance(new_header, bytes) else json.dumps(new_header).encode()
    path.write_bytes(len(text).to_bytes(8, 'little') + text + body)


def _first(header):
    return next(k for k in header if k != '__metadata__')


def _size(header) -> int:
    begin, end = header[_first(header)]['data_offsets']
    return end - begin


def _last(header) -> int:
    return max(v['data_offsets'][0] for k, v in header.items() if k != '__metadata__')


def _moved(header, which) -> dict:
    """The header with the byte ranges starting at offsets `which` accepts moved 8 bytes on."""
    return {k: v if k == '__metadata__' or not which(v['data_offsets'][0])
            else {**v, 'data_offsets': [o + 8 for o in v['data_offsets']]} for k, v in header.items()}


def _set(key, value, name=None):
    def edit(header, body):
        header[name or _first(header)][key] = value
    return edit


def _shift(delta):
    def edit(header, body):
        info = header[_first(header)]
        info['data_offsets'] = [info['data_offsets'][0], info['data_offsets'][1] + delta]
    return edit


LIES = {
    'size mismatch (range one element short)': _shift(-4),
    'range beyond the end of the file': lambda h, b: h[_first(h)].__setitem__(
        'data_offsets', [len(b) + 4 - _size(h), len(b) + 4]),
    'negative offset': _set('data_offsets', [-8, 4]),
    'unclaimed bytes before the first tensor': lambda h, b: (_moved(h, lambda o: True), bytes(8) + b),
    'unclaimed bytes between two tensors': lambda h, b: (_moved(h, lambda o: o >= _last(h)), b[:_last(h)] + bytes(8)
                                                         + b[_last(h):]),
    'bytes appended after the last tensor': lambda h, b: (h, b + b'trailing'),
    'a tensor listed twice': lambda h, b: (('{"' + _first(h) + '": ' + json.dumps(h[_first(h)]) + ', '
                                            + json.dumps(h)[1:]).encode(), b),
    'offsets as strings': _set('data_offsets', ['0', '4']),
    'offsets as floats': _set('data_offsets', [0.0, 4.0]),
    'offsets not a pair': _set('data_offsets', [0, 4, 8]),
    'negative dimension': _set('shape', [-1, 64]),
    'boolean dimension': _set('shape', [True, 64]),
    'dimension of 2**64': _set('shape', [2 ** 64, 0]),
    'dtype a list': _set('dtype', ['F32']),
    'unknown dtype': _set('dtype', 'F128'),
    'entry not an object': lambda h, b: h.__setitem__(_first(h), [1, 2]),
    'entry without dtype': lambda h, b: h[_first(h)].pop('dtype'),
    'header a JSON array': lambda h, b: (b'[1, 2, 3]', b),
    'header not JSON': lambda h, b: (b'{"emb.weight": {"dtype": "F32", ', b),
    'header nested 100000 deep': lambda h, b: (b'[' * 100000 + b']' * 100000, b),
    'header length beyond the file': None,  # the 8-byte length itself lies (below)
}


@pytest.mark.parametrize('lie', LIES)
def test_safetensors_header_that_lies_is_refused(tmp_path, lie):
    path = save(base_state_dict(0), tmp_path / 'm.safetensors')
    if lie == 'header length beyond the file':
        raw = path.read_bytes()
        path.write_bytes((len(raw) * 2).to_bytes(8, 'little') + raw[8:])
    else:
        edit_safetensors(path, LIES[lie])
    outcome = convert_outcome(path, tmp_path / 'out')
    assert outcome == 'NotACheckpointError'
    assert leftovers(tmp_path, 'm.safetensors') == []
    tally('lying safetensors headers', outcome, lie)


def _deep_pickle(depth: int) -> bytes:
    # {'a': [[[...]]]} written opcode by opcode (pickle.dumps would recurse): EMPTY_DICT, 'a', depth EMPTY_LISTs,
    # depth - 1 APPENDs, SETITEM. The C unpickler builds any depth; the reader's walk must refuse it, not crash.
    return b'\x80\x02}X\x01\x00\x00\x00a' + b']' * depth + b'a' * (depth - 1) + b's.'


def _self_containing_pickle() -> bytes:
    d: dict = {}
    d['state_dict'] = d
    import pickle
    return pickle.dumps(d, protocol=2)


def _shared_list_bomb(levels: int) -> bytes:
    # level k holds level k-1 twice: 2**levels paths through a pickle of a few hundred bytes
    import pickle
    node: list = [0]
    for _ in range(levels):
        node = [node, node]
    return pickle.dumps({'state_dict': {'x': node}}, protocol=2)


@pytest.mark.parametrize('make, message', [
    pytest.param(lambda: _self_containing_pickle(), 'contains itself', id='self-containing-dict'),
    pytest.param(lambda: _deep_pickle(5000), 'nests containers', id='nested-5000-deep'),
    pytest.param(lambda: _shared_list_bomb(28), 'not tensors', id='2**28-paths-shared-lists'),
])
def test_pickles_that_would_exhaust_the_reader_are_refused(tmp_path, make, message):
    path = save({'emb.weight': torch.zeros(2)}, tmp_path / 'm.pth')
    rewrite_pickle(path, make())
    # no clock here (the suite runs on loaded machines): a walk over all 2**28 paths of the bomb takes hours in
    # Python, so a reader that visits a shared list once per path never returns; one that refuses returns at once
    with pytest.raises(NotACheckpointError, match=message):
        convert_to_fla(path, tmp_path / 'out')
    tally('hostile pickles', 'NotACheckpointError')


def test_files_saved_by_torch_without_checksums_convert(tmp_path):
    torch.serialization.set_crc32_options(False)
    try:
        path = save(base_state_dict(0), tmp_path / 'm.pth')
    finally:
        torch.serialization.set_crc32_options(True)
    with zipfile.ZipFile(path) as z:
        assert all(i.CRC == 0 for i in z.infolist())
    assert convert_outcome(path, tmp_path / 'out', precision='F32') == 'converted'
    assert_same_model(read_model(tmp_path / 'out'), canonical(0))


def _special_inputs(tmp_path: Path) -> dict[str, Path]:
    loop_a, loop_b, self_loop = tmp_path / 'loop-a.pth', tmp_path / 'loop-b.pth', tmp_path / 'self.pth'
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    self_loop.symlink_to(self_loop)
    dangling = tmp_path / 'dangling.pth'
    dangling.symlink_to(tmp_path / 'nowhere.pth')
    fifo = tmp_path / 'fifo.pth'
    os.mkfifo(fifo)
    return {'symlink loop': loop_a, 'symlink to itself': self_loop, 'dangling symlink': dangling,
            'named pipe (FIFO)': fifo, 'character device': Path('/dev/zero')}


def test_special_files_are_one_line_errors(tmp_path):
    for what, path in _special_inputs(tmp_path).items():
        # a subprocess with a hang guard (generous: loaded CI machines): a FIFO opened for reading would block forever
        r = run_script(SCRIPT, '--rwkv7', path, '--output', tmp_path / 'out', timeout=600)
        line = assert_one_line_error(r.returncode, r.stderr)
        assert str(path) in line, (what, line)
        tally('special files (command line)', 'refused (one line)', what)
    assert not (tmp_path / 'out').exists()


def test_unreadable_file_is_a_one_line_error(tmp_path):
    folder = Path(tempfile.mkdtemp(prefix='unreadable-'))  # outside pytest's root-only tmp tree
    try:
        folder.chmod(0o777)
        src = save(base_state_dict(0), folder / 'm.pth')
        src.chmod(0)
        argv = ['--rwkv7', str(src), '--output', str(folder / 'out'), '--tokenizer', 'none']
        if os.geteuid() == 0:  # root reads files whatever their mode: drop to 'nobody' in a forked child
            code, err = as_nobody(lambda: call_main(main_to_fla, *argv)[::2])  # (exit code, stderr)
        else:
            err_buffer = io.StringIO()
            with contextlib.redirect_stderr(err_buffer):
                code = main_to_fla(argv)
            err = err_buffer.getvalue()
        assert code == NotACheckpointError.exit_code, err
        assert err.strip() == f'error: {src}: cannot open: Permission denied', err
        assert leftovers(folder, 'm.pth') == []
        tally('special files (command line)', 'refused (one line)', 'no read permission')
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_output_folders_that_must_not_be_replaced(tmp_path):
    src_dir = tmp_path / 'models'
    src_dir.mkdir()
    src = save(base_state_dict(0), src_dir / 'm.pth')
    (tmp_path / 'a-file').write_text('x')
    keep = digest(tmp_path)
    cases = {
        'the folder holding the input, with --force': ['--output', src_dir, '--force'],
        'the current folder, with --force': ['--output', '.', '--force'],
        'a path under a file': ['--output', tmp_path / 'a-file' / 'out'],
        'an existing file': ['--output', tmp_path / 'a-file', '--force'],
    }
    for what, args in cases.items():
        r = run_script(SCRIPT, '--rwkv7', src, *args, '--tokenizer', 'none', cwd=src_dir if 'current' in what else tmp_path)
        assert_one_line_error(r.returncode, r.stderr)
        assert digest(tmp_path) == keep, what
        tally('outputs that must not be replaced (command line)', 'refused (one line)', what)
