"""What every benchmark here shares: measuring a child process, the machine and software it ran on, markdown tables,
writing results between markers in a document, and the released-size files (generated, then converted) they measure.

Importing this module stays light (no torch, no fla): Linux passes a parent's peak RSS on to every child it starts
(the high-water mark survives fork and exec), so a driver that held torch or a state dict would floor the peak RSS
of every child it measures. The files are generated in a process of their own for the same reason.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TESTS, UTILS = REPO / 'tests', REPO / 'utils'
for _p in (TESTS, UTILS):  # benchmarks import the generator (tests/rwkv7_factory.py) and utils/_bootstrap.py
    if str(_p) not in sys.path:
        sys.path.append(str(_p))

from rwkv7_factory import Goose  # noqa: E402  (torch-free: see its docstring)

CONVERT = UTILS / 'convert_to_rwkv7.py'
GiB = 1 << 30


def say(msg: str, stamp: bool = False) -> None:
    """Progress on stderr (stdout carries the report)."""
    print(f'[{time.strftime("%H:%M:%S")}] {msg}' if stamp else msg, file=sys.stderr, flush=True)


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mb: float


def run_measured(argv: list[str], out=subprocess.DEVNULL, env: dict | None = None) -> tuple[Sample, int]:
    """Run argv in a fresh process (stdout and stderr to `out`); wall clock around spawn + exit, CPU time (user +
    sys) and peak RSS from the child's rusage (os.wait4: the child and any process it waited for)."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(a) for a in argv], cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024), os.waitstatus_to_exitcode(status)


def measure(argv: list[str], log: Path) -> Sample:
    """run_measured, its output in `log`; a child that fails is an error, with the end of its output."""
    with open(log, 'wb') as out:
        sample, code = run_measured(argv, out)
    if code != 0:
        tail = log.read_text(errors='replace')[-2000:]
        raise RuntimeError(f'{" ".join(map(str, argv))} exited {code}:\n{tail}')
    return sample


def mem_available() -> int:
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def machine() -> str:
    cpu = ''
    try:
        cpu = next(line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                   if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    mem = 0
    try:
        mem = int(Path('/proc/meminfo').read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return f'{cpu or platform.processor()}, {os.cpu_count()} cores, {mem / 2**30:.0f} GiB RAM, {platform.system()} ' \
           f'{platform.release()}'


def software(py: str = sys.executable) -> str:
    """The versions that matter, read in a child (this process imports none of them)."""
    code = ('import sys, numpy, torch, transformers\n'
            'from importlib.metadata import version\n'
            'print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, torch {torch.__version__}, "\n'
            '      f"transformers {transformers.__version__}, flash-linear-attention {version(\'flash-linear-attention\')}")')
    out = subprocess.run([py, '-W', 'ignore', '-c', code], capture_output=True, text=True)
    return out.stdout.strip() or 'unknown'


def git_state(*paths: str) -> str:
    """The short commit, and whether `paths` (default: the tracked tree) have uncommitted changes."""
    try:
        head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--', *paths], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    return head + (f' + uncommitted changes in {" or ".join(paths) or "the tree"}' if dirty else '')


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table's lines."""
    return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] + ['| ' + ' | '.join(map(str, r)) + ' |'
                                                                           for r in rows]


def markers(name: str) -> tuple[str, str]:
    return f'<!-- {name}:begin -->', f'<!-- {name}:end -->'


def write_between_markers(path: Path, name: str, text: str) -> None:
    """Put `text` between `<!-- name:begin -->` and `<!-- name:end -->` in `path`, every byte outside them unchanged
    (hand-written notes stay). A file that does not exist is created holding the marked block; an existing file
    without the pair is refused, since where the results belong is the author's call."""
    begin, end = markers(name)
    block = f'{begin}\n{text.strip(chr(10))}\n{end}'
    if not path.exists():
        path.write_text(block + '\n', encoding='utf-8')
        return
    body = path.read_text(encoding='utf-8')
    if body.count(begin) != 1 or body.count(end) != 1 or body.index(begin) > body.index(end):
        raise SystemExit(f'{path}: needs one {begin} line and one {end} line after it, around the generated results; '
                         'add them where the results belong')
    path.write_text(body[:body.index(begin)] + block + body[body.index(end) + len(end):], encoding='utf-8')


# --------------------------------------------------------------------------------------------- released-size files

def generate(shape: Goose, path: Path, profile: str = 'trained-like') -> None:
    """tests/rwkv7_factory.py's write_checkpoint, in a process of its own (the module docstring says why)."""
    code = ('import sys; sys.path.insert(0, sys.argv[1]); from rwkv7_factory import Goose, write_checkpoint; '
            'C, L, V, N = map(int, sys.argv[2:6]); '
            'write_checkpoint(Goose.rwkv_lm(C, L, V, N), sys.argv[6], profile=sys.argv[7])')
    subprocess.run([sys.executable, '-c', code, str(TESTS), str(shape.hidden), str(shape.layers), str(shape.vocab),
                    str(shape.head_size), str(path), profile], check=True)


def convert(source: Path, out: Path) -> None:
    """The project's converter, in a process of its own (not timed where this is called)."""
    subprocess.run([sys.executable, str(CONVERT), '--rwkv7', str(source), '--output', str(out), '--force', '--quiet',
                    '--tokenizer', 'none'], check=True)


def prepare_size(name: str, workdir: Path, log=say, weights: str = 'trained-like') -> tuple[Path, Path] | None:
    """The released size's file and its conversion in `workdir`, reused when there; None when the disk cannot hold
    them (the .pth and its conversion, both bf16, plus 1 GiB to spare)."""
    tag = name if weights == 'trained-like' else f'{name}-{weights}'
    source, out = workdir / f'{tag}.pth', workdir / f'{tag}-out'
    have = (source.stat().st_size if source.exists() else 0) * (2 if (out / 'config.json').exists() else 1)
    need, free = 2 * 2 * Goose.released(name).num_parameters + GiB, shutil.disk_usage(workdir).free
    if need - have > free:
        log(f'{name}: skipped, {free / GiB:.1f} GiB free in {workdir}, {need / GiB:.1f} GiB needed')
        return None
    if not source.exists():
        log(f'{name}: writing {source}')
        generate(Goose.released(name), source, weights)
    if not (out / 'config.json').exists():
        log(f'{name}: converting to {out}')
        convert(source, out)
    return source, out
