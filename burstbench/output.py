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
    """A rich console on stderr (imported lazily: ``--help`` must stay instant)."""
    from rich.console import Console

    return Console(stderr=True, **kwargs)
