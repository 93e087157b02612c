"""The registry of single-file output formats (the export direction's `--format`): one `Writer` per format, each
declared in its own module. To add a format (GGUF, say), write `formats/<name>_writer.py` with a `WRITER` and add it
to `WRITERS` below; `--format`, the choice by suffix and the docs follow from this table."""

from __future__ import annotations

import os

from fla.rwkv7_convert.errors import ConversionError
from fla.rwkv7_convert.formats import pth_writer, safetensors_writer
from fla.rwkv7_convert.formats.outputs import Writer

WRITERS: dict[str, Writer] = {w.name: w for w in (pth_writer.WRITER, safetensors_writer.WRITER)}
DEFAULT = 'pth'  # what RWKV-LM and BlinkDL's rwkv package load


def writer_for(output: str | os.PathLike | None, fmt: str | None) -> Writer:
    """The writer named by `fmt`; without one, the writer whose declared suffix `output` has, else the default."""
    if fmt is not None:
        if fmt not in WRITERS:
            raise ConversionError(f'unknown format {fmt!r}; expected one of: {", ".join(WRITERS)}')
        writer = WRITERS[fmt]
        name = os.fspath(output or '')
        # a safetensors file named .pth would be handed to torch.load by whoever trusts the name: refused, not warned
        other = next((w for w in WRITERS.values() if w is not writer and any(name.endswith(s) for s in w.suffixes)
                      and not any(name.endswith(s) for s in writer.suffixes)), None)
        if other is not None:
            suffix = next(s for s in other.suffixes if name.endswith(s))
            raise ConversionError(f'ends in {suffix}, the {other.name} format\'s suffix, but the format asked for is '
                                  f'{writer.name}: whoever trusts the name would misread the file; name it '
                                  f'{name[:-len(suffix)]}{writer.suffixes[0]}, or leave the format to the name', name)
        return writer
    name = os.fspath(output or '')
    return next((w for w in WRITERS.values() if any(name.endswith(s) for s in w.suffixes)), WRITERS[DEFAULT])


def suffix_warning(output: str | os.PathLike, writer: Writer) -> str | None:
    """A warning when `output` lacks every suffix the writer declares (the file is still written as asked)."""
    name = os.fspath(output)
    if any(name.endswith(s) for s in writer.suffixes):
        return None
    return f'{name} does not end in {" or ".join(writer.suffixes)}' + (f': {writer.suffix_note}' if writer.suffix_note
                                                                        else '')
