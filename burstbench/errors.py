"""One error tree for everything a user can cause.

The CLI turns any ``BurstbenchError`` into one line on stderr and the error's
``exit_code``; anything else is a bug and keeps its traceback. Messages name the
file, line or field at fault and say what to do, because the user reads them
without the code in front of them.
"""

from __future__ import annotations

from pathlib import Path


class BurstbenchError(Exception):
    """Base of every error a user can cause; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UsageError(BurstbenchError):
    """A flag, option string (``--slo``, ``--map``) or spec value is wrong."""

    exit_code = 2


class OutputError(UsageError):
    """An output path would destroy something: it is an input, a device or FIFO, or a
    file of another kind (see ``burstbench.outfile``)."""


class InputError(BurstbenchError):
    """An input file is missing, empty or malformed.

    ``where`` builds the ``file:line: field`` prefix so every reader words its
    errors the same way.
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(self.where() + message)

    def where(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path if self.line is None else f"{self.path}:{self.line}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        return (", ".join(parts) + ": ") if parts else ""


class TraceFormatError(InputError):
    """A trace file does not match the format it claims or was detected as."""


class SpecError(InputError):
    """A WorkloadSpec or scenario YAML is invalid."""


class StoreError(BurstbenchError):
    """A results store is missing, locked, of another schema, or lacks the asked run."""

    exit_code = 4


class BackendError(BurstbenchError):
    """An endpoint cannot be used at all (refused, wrong URL, auth failure at start)."""

    exit_code = 5


class EngineError(BurstbenchError):
    """The reference engine cannot serve the asked configuration (model does not fit, ...)."""

    exit_code = 6
