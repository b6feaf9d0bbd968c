"""How every command speaks: one JSON object on stdout for scripts, rich text on stderr for people.

Kept in one place so every ``--json`` is valid JSON (NaN and infinities become
``null``, which ``json.dumps`` would otherwise write as bare ``NaN``) and every
human message goes to the same stream.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def emit_json(obj: Any) -> None:
    """Write ``obj`` as one line of strict JSON to stdout."""
    sys.stdout.write(json.dumps(jsonable(obj), default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def console(**kwargs: Any) -> Any:
    """A rich console on stderr for progress, notes and warnings (imported lazily: ``--help``
    must stay instant)."""
    from rich.console import Console

    return Console(stderr=True, **kwargs)


def results_console(as_json: bool = False, **kwargs: Any) -> Any:
    """Where a command's result (its table) goes: stdout, so ``burstbench trace stats T > f``
    keeps it; under ``--json`` stdout holds only the JSON object, so the table goes to stderr.

    Off a terminal rich would wrap tables at 80 columns; a file gets 120 unless
    ``COLUMNS`` says otherwise, so columns are not cut short with an ellipsis.
    """
    import os

    from rich.console import Console

    if as_json:
        return Console(stderr=True, **kwargs)
    if not sys.stdout.isatty() and "width" not in kwargs and not os.environ.get("COLUMNS"):
        kwargs["width"] = 120
    return Console(file=sys.stdout, **kwargs)


def print_whole(console: Any, renderable: Any) -> None:
    """Print a table at its natural width when it is wider than a non-terminal console, so a
    file or pipe gets every cell whole (a terminal keeps its own width)."""
    if console.is_terminal:
        console.print(renderable)
        return
    natural = console.measure(renderable, options=console.options.update_width(100_000)).maximum
    if natural > console.width:
        console.width = natural  # print(width=) cannot widen past the console's width
    console.print(renderable)
