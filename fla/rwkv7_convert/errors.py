"""One exception type per class of problem; the CLI renders each as one line and exits non-zero."""

from __future__ import annotations


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


class UnsafeCheckpointError(ConversionError):
    """The pickle asks for something other than tensors and plain containers (as `weights_only=True` refuses)."""


class UnsupportedVariantError(ConversionError):
    """A real checkpoint of an architecture fla's RWKV7ForCausalLM cannot run (RWKV-7a/7b/8, RWKV-6, LoRA, ...)."""


class KeyMismatchError(ConversionError):
    """Missing, unexpected, duplicated or mis-shaped tensors, all reported together."""

    def __init__(self, problems: list[str], path: str | None = None):
        self.problems = problems
        shown = problems[:12]
        more = f'; ... and {len(problems) - len(shown)} more (--verbose lists all)' if len(problems) > len(shown) else ''
        super().__init__(f'{len(problems)} key problem(s): ' + '; '.join(shown) + more, path)

    def full_report(self) -> str:
        return '\n'.join(f'  - {p}' for p in self.problems)


class OutputExistsError(ConversionError):
    """The output exists and is not empty, and --force was not given."""


class NonFiniteError(ConversionError):
    """A tensor holds NaN or Inf; refused unless --allow-nonfinite."""


class ConfigError(ConversionError):
    """config.json is missing, unreadable, or contradicts the tensors."""
