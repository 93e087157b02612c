"""Lazy, torch-free readers for `.pth` (PyTorch zip) and `.safetensors` checkpoints: open_checkpoint tells the format
from the first bytes and hands the file to pth_reader.py or safetensors_reader.py.

Opening a file reads only its index (the pickle or the JSON header): names, shapes and dtypes. Each tensor's bytes
are read later, once, straight into a fresh numpy array (`readinto`), and dropped after use, so memory stays at
about one tensor whatever the model size. A `torch.load(mmap=True)` would instead keep every page it touched
resident until the end.

The `.pth` pickle is read by an unpickler that only knows tensors and plain containers, the same guarantee as
`torch.load(weights_only=True)`: a pickle asking for anything else is refused before any of it runs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fla.rwkv7_convert.errors import (
    NotACheckpointError,
    UnsupportedVariantError,
)
from fla.rwkv7_convert.formats.checkpoint import Checkpoint
from fla.rwkv7_convert.formats.hf_directory import CONFIG_FILE, open_directory
from fla.rwkv7_convert.formats.pth_reader import read_pth_index
from fla.rwkv7_convert.formats.safetensors_reader import read_safetensors_index


@dataclass(frozen=True)
class Foreign:
    """A file format that is no checkpoint we read, told by its first bytes, named in the refusal."""

    what: str
    instead: str
    recognised: str  # how its first bytes show it (docs/mapping.md lists these)
    test: Callable[[bytes], bool]


def _starts(magic: bytes) -> Callable[[bytes], bool]:
    return lambda head: head.startswith(magic)


def _cbor_map(head: bytes) -> bool:
    """A CBOR map of 1-23 entries whose first key is a short text string of identifier characters: how cbor4ii
    (serde) encodes web-rwkv's runtime model structs, which ai00 and web-rwkv save as prefabs."""
    if len(head) < 2 or not 0xa1 <= head[0] <= 0xb7 or not 0x61 <= head[1] <= 0x77:
        return False
    n = head[1] - 0x60
    key = head[2:2 + n]  # the 16 bytes read may cut a long key short
    return len(key) >= min(n, 4) and key.decode('ascii', 'replace').replace('_', 'a').isalnum()


MAGICS: tuple[Foreign, ...] = (
    Foreign('a GGUF file (llama.cpp)',
            'its tensors are renamed and usually quantized; convert the original RWKV-LM .pth or .safetensors instead',
            'starts with `GGUF`', _starts(b'GGUF')),
    Foreign('an rwkv.cpp ggml file (magic "ggmf")',
            'its tensors are converted and usually quantized; convert the original RWKV-LM .pth instead',
            'starts with `fmgg`', _starts(b'fmgg')),
    Foreign('a legacy ggml file', 'convert the original RWKV-LM .pth instead', 'starts with `lmgg`', _starts(b'lmgg')),
    Foreign('an ai00 / web-rwkv prefab (a serialized, usually quantized runtime model)',
            'convert the original RWKV-LM .pth instead',
            'a CBOR map with text keys (web-rwkv serializes its runtime model with cbor4ii)', _cbor_map),
)


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a `.pth`/`.pt`/`.bin` (PyTorch zip) or `.safetensors` file by its content, not its extension."""
    path = Path(path)
    shown = str(path)
    if not os.path.lexists(path):
        raise NotACheckpointError('no such file', shown)
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a loop or a dangling link fails here
    except OSError as e:
        raise NotACheckpointError(f'cannot open: {e.strerror or e}', shown) from e
    if stat.S_ISDIR(mode):
        if (path / CONFIG_FILE).is_file():
            return open_hf_directory(path)
        raise NotACheckpointError('is a directory, expected a .pth or .safetensors file (or a Hugging Face model '
                                  'directory with config.json)', shown)
    if not stat.S_ISREG(mode):  # a FIFO would block forever, a device never ends
        raise NotACheckpointError('is not a regular file (a pipe, socket or device?); expected a .pth or .safetensors file',
                                  shown)
    try:
        handle = open(path, 'rb', buffering=0)
    except OSError as e:
        raise NotACheckpointError(f'cannot open: {e.strerror or e}', shown) from e
    try:
        head = handle.read(16)
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise NotACheckpointError('empty file (0 bytes)', shown)
        if head.startswith(b'PK\x03\x04'):
            tree = read_pth_index(handle, shown)
            return Checkpoint(path, 'pth', tree, handle)
        if len(head) >= 9 and head[8:9] == b'{':
            tree = read_safetensors_index(handle, size, shown)
            return Checkpoint(path, 'safetensors', tree, handle)
        for foreign in MAGICS:  # told by the bytes, never by the file's name
            if foreign.test(head):
                raise UnsupportedVariantError(f'this is {foreign.what}, not a PyTorch zip or safetensors file: '
                                              f'{foreign.instead}', shown)
        if head[:1] == b'\x80':
            raise NotACheckpointError('legacy (pre-1.6) torch.save format is not supported; re-save it with a current torch',
                                      shown)
        raise NotACheckpointError('not a PyTorch zip (.pth) or safetensors file', shown)
    except OSError as e:  # e.g. EIO from /proc/self/mem: the user's path, not a bare "Input/output error"
        handle.close()
        raise NotACheckpointError(f'cannot read: {e.strerror or e}', shown) from e
    except BaseException:
        handle.close()
        raise


def open_hf_directory(path: Path) -> Checkpoint:
    """A Hugging Face model directory as one checkpoint (hf_directory.py), its weight files opened as above."""
    return open_directory(path, open_checkpoint)
