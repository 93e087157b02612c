"""The benchmarks' shared pieces, without running a benchmark: the marker writer leaves hand-written text alone, the
documents the benchmarks write hold their markers, the drivers stay free of torch, and the released-size generator
draws what the shapes say."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))

from harness import markers, write_between_markers  # noqa: E402
from rwkv7_factory import PROFILES, RELEASED, Goose, make_state_dict  # noqa: E402

BEFORE = '# Title\n\nhand-written intro, trailing spaces  \n\n'
AFTER = '\n\n## Notes (hand-written)\n\nkept\tas is, no final newline'


def _doc(tmp_path: Path, generated: str) -> Path:
    begin, end = markers('convert')
    path = tmp_path / 'RESULTS.md'
    path.write_bytes(f'{BEFORE}{begin}\n{generated}\n{end}{AFTER}'.encode())
    return path


def test_marker_writer_replaces_only_between_markers(tmp_path):
    path = _doc(tmp_path, 'old table\n| a | b |')
    write_between_markers(path, 'convert', 'new table\n\n| c |\n')
    begin, end = markers('convert')
    assert path.read_bytes() == f'{BEFORE}{begin}\nnew table\n\n| c |\n{end}{AFTER}'.encode()
    write_between_markers(path, 'convert', 'new table\n\n| c |\n')  # again: the same bytes
    assert path.read_bytes() == f'{BEFORE}{begin}\nnew table\n\n| c |\n{end}{AFTER}'.encode()


def test_marker_writer_keeps_the_real_results_notes(tmp_path):
    path = tmp_path / 'RESULTS.md'
    real = (REPO / 'benchmarks' / 'RESULTS.md').read_bytes()
    path.write_bytes(real)
    write_between_markers(path, 'convert', 'regenerated')
    begin, end = (m.encode() for m in markers('convert'))
    written = path.read_bytes()
    assert written[:written.index(begin)] == real[:real.index(begin)]
    assert written[written.index(end):] == real[real.index(end):]
    assert b'hand-written' in written[written.index(end):]


def test_marker_writer_creates_a_new_file(tmp_path):
    path = tmp_path / 'new.md'
    write_between_markers(path, 'convert', 'table')
    assert path.read_text() == '<!-- convert:begin -->\ntable\n<!-- convert:end -->\n'


@pytest.mark.parametrize('text', [
    pytest.param('no markers at all\n', id='none'),
    pytest.param('<!-- convert:begin -->\nonly the start\n', id='no-end'),
    pytest.param('<!-- convert:end -->\nx\n<!-- convert:begin -->\n', id='reversed'),
    pytest.param('<!-- convert:begin -->\n<!-- convert:end -->\n<!-- convert:begin -->\n<!-- convert:end -->\n', id='twice'),
    pytest.param('<!-- mutation:begin -->\n<!-- mutation:end -->\n', id='other-name'),
])
def test_marker_writer_refuses_without_its_markers(tmp_path, text):
    path = tmp_path / 'doc.md'
    path.write_text(text)
    with pytest.raises(SystemExit) as info:
        write_between_markers(path, 'convert', 'table')
    message = str(info.value)
    assert '\n' not in message and '<!-- convert:begin -->' in message and str(path) in message
    assert path.read_text() == text


@pytest.mark.parametrize('doc, name', [
    pytest.param('benchmarks/RESULTS.md', 'convert', id='results'),
    pytest.param('docs/verification.md', 'mutation', id='mutation'),
])
def test_documents_hold_the_markers_their_benchmark_writes(doc, name):
    text = (REPO / doc).read_text()
    begin, end = markers(name)
    assert text.count(begin) == 1 and text.count(end) == 1 and text.index(begin) < text.index(end)


def test_benchmark_drivers_import_no_torch():
    """A driver holding torch would floor the peak RSS of every child it measures (harness.py)."""
    code = ('import sys; sys.path.insert(0, "benchmarks"); import benchmark_convert, benchmark_verify, benchmark_fuse_norm; '
            'heavy = [m for m in ("torch", "fla.models", "matplotlib") if m in sys.modules]; print(heavy); '
            'sys.exit(1 if heavy else 0)')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize('profile', [pytest.param(p, id=p) for p in PROFILES])
def test_released_profiles_draw_the_shape(profile):
    shape = Goose.rwkv_lm(*RELEASED['tiny'], vocab=512)
    sd = make_state_dict(shape, torch.bfloat16, profile=profile)
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == shape.tensors()
    assert all(v.dtype == torch.bfloat16 and torch.isfinite(v).all() for v in sd.values())
    assert sum(v.numel() for v in sd.values()) == shape.num_parameters
    w0 = sd['blocks.1.att.w0'].float().mean().item()
    assert math.isclose(w0, -2.0, abs_tol=0.05) if profile == 'long-memory' else abs(w0) < 0.05


def test_tests_profile_names_and_shapes_are_the_released_ones():
    shape = Goose(vocab=64, hidden=64, layers=3, head_size=32)
    for layer0_v in (True, False):
        sd = make_state_dict(shape, layer0_v=layer0_v)
        assert [(k, tuple(v.shape)) for k, v in sd.items()] == shape.tensors(layer0_v)
    with pytest.raises(ValueError, match='profile'):
        make_state_dict(shape, profile='made-up')
