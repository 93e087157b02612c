"""Where a converted directory came from: the converter's record (rwkv7_convert.json) and the sha256 it holds.

FileDigest hashes a file (or a directory's weight files) on a thread while other work reads or imports; the
converter records its result, and verify compares it with the file it is given. read_source_record reads the record
back without trusting it: the directory may be anyone's, so anything but a small regular file holding a JSON object
with the expected fields is "no record" (with the reason), never an exception and never a blocking read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

PROVENANCE_FILE = 'rwkv7_convert.json'
RECORD_MAX_BYTES = 1 << 20  # the converter writes about 1 KB; a larger file is not its record
_SHA256 = re.compile(r'[0-9a-f]{64}')


class FileDigest:
    """sha256 of a file (or of a directory's weight files, read one after another in `files` order), computed on a
    thread while the caller does other work (hashlib releases the GIL, so on two cores it costs little wall time).
    `start=False` leaves the thread to `start()`, so that `size` can be compared first; `cancel()` stops it at the
    next chunk."""

    def __init__(self, path: str | os.PathLike, files: list[str] | None = None, start: bool = True):
        path = Path(path)
        self.paths = [path / f for f in files] if path.is_dir() and files else [path]
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='sha256', daemon=True)
        if start:
            self.start()

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        try:
            h = hashlib.sha256()
            for path in self.paths:
                with open(path, 'rb') as f:
                    while chunk := f.read(8 << 20):
                        if self._stop.is_set():
                            raise RuntimeError('sha256: cancelled')
                        h.update(chunk)
            self._digest = h.hexdigest()
        except BaseException as e:  # re-raised in the caller's thread by result()
            self._error = e

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest


@dataclass(frozen=True)
class SourceRecord:
    """What rwkv7_convert.json says of the file the directory was converted from."""

    bytes: int
    sha256: str
    name: str  # as recorded (a file name, no path); '' when absent


def read_source_record(model_dir: str | os.PathLike) -> tuple[SourceRecord | None, str]:
    """(the record, '') when `model_dir`/rwkv7_convert.json is a regular file of at most RECORD_MAX_BYTES holding a
    JSON object whose "source" has an integer "bytes" and a hex "sha256"; otherwise (None, why not). Raises nothing:
    a FIFO, a device, a directory, a huge or non-UTF-8 file or deeply nested JSON are each a reason."""
    path = Path(model_dir) / PROVENANCE_FILE
    try:
        data = _read_small_regular_file(path)
    except FileNotFoundError:
        return None, f'the directory has no {PROVENANCE_FILE}'
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return None, f'{PROVENANCE_FILE} cannot be read ({why})'
    try:
        record = json.loads(data.decode('utf-8'))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, huge integers
        return None, f'{PROVENANCE_FILE} is not JSON ({type(e).__name__})'
    src = record.get('source') if isinstance(record, dict) else None
    size = src.get('bytes') if isinstance(src, dict) else None
    sha = src.get('sha256') if isinstance(src, dict) else None
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0 and isinstance(sha, str)
            and _SHA256.fullmatch(sha)):
        return None, f'{PROVENANCE_FILE} has no "source" with an integer "bytes" and a sha256'
    name = src.get('name')
    return SourceRecord(size, sha, name if isinstance(name, str) else ''), ''


def _read_small_regular_file(path: Path) -> bytes:
    """The bytes of `path`, which must be a regular file (after symlinks, as a Hugging Face cache holds its files)
    of at most RECORD_MAX_BYTES; opened non-blocking and checked again on the descriptor, so a FIFO put there
    between the two looks cannot hang the read."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError('not a regular file')
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_NOCTTY', 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError('not a regular file')
        if st.st_size > RECORD_MAX_BYTES:
            raise ValueError(f'{st.st_size:,} bytes, more than a record holds')
        chunks, total = [], 0
        while chunk := os.read(fd, RECORD_MAX_BYTES + 1 - total):
            chunks.append(chunk)
            total += len(chunk)
            if total > RECORD_MAX_BYTES:  # it grew since fstat
                raise ValueError(f'more than {RECORD_MAX_BYTES:,} bytes')
        return b''.join(chunks)
    finally:
        os.close(fd)
