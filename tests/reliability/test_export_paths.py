"""Reliability campaign, export direction (fla directory -> RWKV-LM file): special and unreadable input paths, and
outputs that must not be written.

The property (docs/reliability.md, section 4, with the counts): every input directory either exports to exactly the
canonical RWKV-LM file, or is refused with one line (a ConversionError; through the command line its error's exit
status and one `error: ` line) with the old output untouched and nothing left beside it.
Reproduce: python -m pytest tests/reliability/test_export_paths.py -q
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import as_nobody, assert_one_line_error, call_main, leftovers
from hostile.directories import special_paths, write_dir
from reliability_common import OLD, check_property, export_tally, sha

from fla.rwkv7_convert.cli.export import main_from_fla
from fla.rwkv7_convert.convert.to_blinkdl import convert_from_fla
from fla.rwkv7_convert.errors import ConversionError, refusal_exit_codes

pytestmark = pytest.mark.usefixtures('export_summary')  # the export campaign's counts, printed


def test_special_paths_are_one_line_errors(tmp_path, hf):
    work = tmp_path / 'work'
    work.mkdir()
    for what, path in special_paths(tmp_path, hf).items():
        outcome = check_property(path, work, hf['canonical'])
        assert outcome != 'exported', what
        code, _, err = call_main(main_from_fla, '--model', path, '--output', work / 'o.pth')
        assert_one_line_error(code, err)
        assert list(work.iterdir()) == [], what
        export_tally('special paths (library + command line)', outcome, what)


def _library_then_command(argv: list[str]) -> tuple[int, list[str]]:
    """convert_from_fla, then main_from_fla: (exit code, [the library's outcome, stderr])."""
    try:  # the library first: a ConversionError, not a PermissionError
        convert_from_fla(argv[1], argv[3], force=True)
        library = 'exported'
    except Exception as e:
        library = type(e).__name__ if isinstance(e, ConversionError) else f'not a ConversionError: {e!r}'
    code, _, err = call_main(main_from_fla, *argv)
    return code, [library, err]


# 'the directory' (not searchable) was once a bare PermissionError from the library
@pytest.mark.parametrize('which', ['config.json', 'model.safetensors', 'the directory'])
def test_unreadable_input_is_a_one_line_error(hf, which):
    folder = Path(tempfile.mkdtemp(prefix='unreadable-export-'))  # outside pytest's root-only tmp tree
    try:
        folder.chmod(0o777)
        model = write_dir(folder / 'm', hf['config'], hf['tensors'])
        for p in model.iterdir():
            p.chmod(0o644)
        (model if which == 'the directory' else model / which).chmod(0)
        model.chmod(0o755 if which != 'the directory' else 0)
        out = folder / 'out.pth'
        out.write_bytes(OLD)
        out.chmod(0o666)
        argv = ['--model', str(model), '--output', str(out), '--force']
        if os.geteuid() != 0:
            pytest.skip('needs root, to drop to nobody in a forked child (as test_reliability.py does)')
        # root reads anything: drop to 'nobody' in a forked child
        code, (library, err) = as_nobody(lambda: _library_then_command(argv))
        line = assert_one_line_error(code, err)
        assert 'Permission denied' in line, line
        assert out.read_bytes() == OLD and leftovers(folder, 'm', 'out.pth') == []
        assert library.endswith('Error') and not library.startswith('not a'), library
        export_tally('special paths (library + command line)', library, f'unreadable {which}')
    finally:
        for p in (folder / 'm', *(folder / 'm').glob('*')):
            with contextlib.suppress(OSError):
                p.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def _digest_dir(folder: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(folder.iterdir()) if p.is_file()}


INPUT_AS_OUTPUT = ['model.safetensors', 'config.json', 'model-00001-of-00002.safetensors']
# `--output HF_DIR/<one of its own files> --force` once replaced that file of the model being exported, exit 0


@pytest.mark.parametrize('name', INPUT_AS_OUTPUT)
def test_output_onto_a_file_of_the_input_directory_is_refused(tmp_path, hf, name):
    how = 'shards' if name.startswith('model-') else 'single'
    model = write_dir(tmp_path / 'm', hf['config'], hf['tensors'], how, [len(hf['tensors']) // 2 + 1])
    before = _digest_dir(model)
    code, _, err = call_main(main_from_fla, '--model', model, '--output', model / name, '--force', '-q')
    export_tally('outputs that must not be written (command line)', 'refused (one line)' if code in refusal_exit_codes() else
          f'exit {code}', f'--output HF_DIR/{name} --force')
    assert _digest_dir(model) == before, 'the input model was overwritten'
    assert_one_line_error(code, err)


def test_outputs_that_are_not_files_are_refused(tmp_path, hf):
    (tmp_path / 'a-file').write_bytes(b'x')
    (tmp_path / 'a-dir.pth').mkdir()
    (tmp_path / 'dangling.pth').symlink_to(tmp_path / 'nowhere')
    keep = {p.name for p in tmp_path.iterdir()}
    cases = {'a directory, with --force': ['--output', tmp_path / 'a-dir.pth', '--force'],
             'the input directory, with --force': ['--output', hf['dir'], '--force'],
             'a path under a file': ['--output', tmp_path / 'a-file' / 'out.pth'],
             'a dangling symlink, with --force': ['--output', tmp_path / 'dangling.pth', '--force'],
             'an existing file, without --force': ['--output', tmp_path / 'a-file']}
    for what, args in cases.items():
        code, _, err = call_main(main_from_fla, '--model', hf['dir'], *args, '-q')
        assert_one_line_error(code, err)
        assert {p.name for p in tmp_path.iterdir()} == keep and (tmp_path / 'a-file').read_bytes() == b'x', what
        export_tally('outputs that must not be written (command line)', 'refused (one line)', what)
