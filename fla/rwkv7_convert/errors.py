"""One exception type per class of problem; the CLI renders each as one line and exits with the class's own status.

The exit statuses of the commands, in one place (docs/export.md, "Exit status", lists them; a test compares):
0 success (verify: PASS); 1 a refusal of no narrower class below, or verify's FAIL verdict; EXIT_USAGE a mistyped
command line; each ConversionError subclass its `exit_code`; EXIT_OS_ERROR the system refused (disk full, permission,
no such path); 128 + the signal for an interrupt (130 Ctrl-C, 143 SIGTERM); 141 a closed stdout (`... | head`)."""

from __future__ import annotations

import signal

EXIT_USAGE = 2  # argparse's own: an unknown or repeated flag, a missing one, an unknown command
EXIT_OS_ERROR = 10  # an OSError outside our checks (ENOSPC, EACCES, ...): nothing was written
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for `yes | head`: the reader left, not an error


class ConversionError(Exception):
    """Base class: anything that stops a conversion before the output is in place."""

    exit_code = 1

    def __init__(self, message: str, path: str | None = None, *, refusal: object | None = None):
        super().__init__(message)
        self.path = path
        # the mapping.schema.Refusal (an entry of mapping/refusals.py's REFUSALS) that raised it, else None: inspect
        # tells an input of the other direction by it (errors imports nothing of the package, hence `object`)
        self.refusal = refusal

    def one_line(self) -> str:
        text = ' '.join(str(self.args[0] if self.args else '').split())
        return f'{self.path}: {text}' if self.path else text

    def __str__(self) -> str:
        # the path is part of the message: a library caller's traceback names the file, as the command line does
        return self.one_line()


class NotACheckpointError(ConversionError):
    """The file is not a readable state dict (wrong format, truncated, corrupt, not a mapping of tensors)."""

    exit_code = 3


class UnsafeCheckpointError(ConversionError):
    """The pickle asks for something other than tensors and plain containers (as `weights_only=True` refuses)."""

    exit_code = 4


class UnsupportedVariantError(ConversionError):
    """A real checkpoint of an architecture fla's RWKV7ForCausalLM cannot run (RWKV-7a/7b/8, RWKV-6, LoRA, ...)."""

    exit_code = 5


class KeyMismatchError(ConversionError):
    """Missing, unexpected, duplicated or mis-shaped tensors, all reported together."""

    exit_code = 6

    def __init__(self, problems: list[str], path: str | None = None):
        self.problems = problems
        shown = problems[:12]
        more = f'; ... and {len(problems) - len(shown)} more (--verbose lists all)' if len(problems) > len(shown) else ''
        super().__init__(f'{len(problems)} key problem(s): ' + '; '.join(shown) + more, path)

    def full_report(self) -> str:
        return '\n'.join(f'  - {p}' for p in self.problems)


class OutputExistsError(ConversionError):
    """The output exists and is not empty, and --force was not given."""

    exit_code = 9


class NonFiniteError(ConversionError):
    """A tensor holds NaN or Inf; refused unless --allow-nonfinite."""

    exit_code = 8


class ConfigError(ConversionError):
    """config.json is missing, unreadable, or contradicts the tensors."""

    exit_code = 7


def error_classes() -> list[type[ConversionError]]:
    """ConversionError and every subclass, however deep (another module may add one): the exit-status table."""
    found, todo = [], [ConversionError]
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def refusal_exit_codes() -> set[int]:
    """The statuses of a one-line refusal (any ConversionError, or an OSError: nothing was written), as a test of
    "refused in one line" accepts them."""
    return {cls.exit_code for cls in error_classes()} | {EXIT_OS_ERROR}
