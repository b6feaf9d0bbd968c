"""How every command speaks: one JSON object on stdout for scripts, rich text on stderr for people.

Kept in one place so every ``--json`` is valid JSON (NaN and infinities become
``null``, which ``json.dumps`` would otherwise write as bare ``NaN``) and every
human message goes to the same stream.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from burstbench.limits import MAX_ERROR_CHARS

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


# C0/C1 control characters (ESC starts a terminal escape sequence) and the Unicode
# bidi overrides that reorder what a terminal shows; tab and newline included, since
# one value must stay on its line or cell.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def clean(value: Any) -> str:
    """``value`` as text safe for a terminal: control characters shown as ``\\x1b`` escapes.

    Trace fields, run labels, SQL results and server messages reach the terminal;
    an escape sequence in one of them would recolour, retitle or rewrite the user's
    screen. Escaping (rather than dropping) keeps the value readable and nothing lost.
    """
    return _CONTROL.sub(_escape, str(value))


def shorten(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]} ... [{len(text) - limit + 40:,} more characters]"


def error_line(exc: BaseException) -> str:
    """The one line the CLI prints for a user's error: cleaned and cut to a readable length."""
    return "error: " + shorten(clean(exc))


def say(text: str, *, err: bool = True) -> None:
    """Print plain text (stderr by default), each line cleaned: notes may quote a server's words."""
    stream = sys.stderr if err else sys.stdout
    stream.write("\n".join(clean(line) for line in str(text).split("\n")) + "\n")
    stream.flush()


def console(**kwargs: Any) -> Any:
    """A rich console (on stderr unless ``stderr=False``) that prints data as text.

    Every command prints through this: strings are never read as rich markup (a
    tenant named ``[/x]`` raised MarkupError) and control characters are escaped
    (see ``clean``), in ``print`` arguments and table cells alike, because both pass
    through ``render_str``. Imported lazily: ``--help`` must stay instant.
    """
    from rich.console import Console
    from rich.text import Text

    def as_text(value: Any) -> Any:
        return Text(clean(value)) if isinstance(value, str) else value

    class SafeConsole(Console):
        def render_str(self, text: str, **kw: Any) -> Any:
            kw["markup"] = False
            kw["emoji"] = False
            return super().render_str(clean(text), **kw)

        def status(self, status: Any, **kw: Any) -> Any:
            # a spinner reads a str as markup itself (a file named 'x[/y].csv' raised
            # MarkupError); hand it Text, now and on every update
            st = super().status(as_text(status), **kw)
            update = st.update
            st.update = lambda status=None, **k: update(as_text(status), **k)  # type: ignore[method-assign]
            return st

    kwargs.setdefault("stderr", True)
    kwargs.setdefault("highlight", False)
    return SafeConsole(**kwargs)


def results_console(as_json: bool = False, **kwargs: Any) -> Any:
    """Where a command's result (its table) goes: stdout, so ``burstbench trace stats T > f``
    keeps it; under ``--json`` stdout holds only the JSON object, so the table goes to stderr.

    Off a terminal rich would wrap tables at 80 columns; a file gets 120 unless
    ``COLUMNS`` says otherwise, so columns are not cut short with an ellipsis.
    """
    import os

    if as_json:
        return console(**kwargs)
    if not sys.stdout.isatty() and "width" not in kwargs and not os.environ.get("COLUMNS"):
        kwargs["width"] = 120
    return console(stderr=False, **kwargs)


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
