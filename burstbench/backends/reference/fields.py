"""Strict readers for request fields: one per field type, each a 400 naming the field.

Every field of a request goes through one of these, so a wrong type, an
out-of-range number or an unknown choice is refused the same way everywhere
(as vLLM's pydantic models refuse it), never coerced (``"no"`` is not true,
``true`` is not a token id) and never a 500. ``null`` means "not given", as in
vLLM's optional fields.

``parse_json`` bounds what the body may hold before anything is built from it:
integers longer than ``MAX_INT_DIGITS`` become ``HugeInt`` markers (no
conversion of a 5,000-digit number; every integer field refuses them with its
range), and nesting deeper than ``MAX_DEPTH`` is refused before parsing.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

from burstbench.errors import UsageError

MAX_DEPTH = 64
MAX_INT_DIGITS = 24  # past int64 and uint64: no field takes more
INT64 = (-(2**63), 2**63 - 1)


class FieldError(Exception):
    """A field the request got wrong; ``param`` is its name (dotted for nested fields)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


class HugeInt:
    """An integer literal too long to be any field's value: kept as its digit count only."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"a {self.digits}-digit integer"


def _parse_int(text: str) -> int | HugeInt:
    return int(text) if len(text) <= MAX_INT_DIGITS else HugeInt(len(text.lstrip("-")))


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
for _b in b"[{":
    _STEP[_b] = 1
for _b in b"]}":
    _STEP[_b] = -1


def nesting_depth(raw: bytes) -> int:
    """How deep ``[`` / ``{`` nest in a JSON text (strings skipped); linear, in C loops."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    if not brackets:
        return 0
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)))


def parse_json(raw: bytes) -> Any:
    """Parse a request body within the bounds above; ``FieldError`` (no param) when it is not JSON."""
    if nesting_depth(raw) > MAX_DEPTH:
        raise FieldError(f"request body nests arrays/objects deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw, parse_int=_parse_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FieldError(f"request body is not valid JSON ({exc})") from exc


def _shown(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


class Fields:
    """Typed access to one JSON object's fields; ``prefix`` names nested objects in errors."""

    def __init__(self, obj: dict[str, Any], prefix: str = "") -> None:
        self.obj = obj
        self.prefix = prefix

    def name(self, key: str) -> str:
        return self.prefix + key

    def raw(self, key: str) -> Any:
        return self.obj.get(key)

    def has(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def int(self, key: str, lo: int, hi: int, default: int | None = None) -> int | None:
        v = self.obj.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise FieldError(f"'{self.name(key)}' must be an integer in [{lo}, {hi}], got {_shown(v)}", param=self.name(key))
        return v

    def float(self, key: str, lo: float, hi: float, default: float | None = None, *, lo_open: bool = False) -> float | None:
        v = self.obj.get(key)
        if v is None:
            return default
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi
        if not ok:
            span = ("(" if lo_open else "[") + f"{lo}, " + (f"{hi}]" if math.isfinite(hi) else "inf)")
            raise FieldError(f"'{self.name(key)}' must be a number in {span}, got {_shown(v)}", param=self.name(key))
        return float(v)

    def bool(self, key: str, default: bool = False) -> bool:
        v = self.obj.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise FieldError(f"'{self.name(key)}' must be true or false, got {_shown(v)}", param=self.name(key))
        return v

    def str(self, key: str, default: str | None = None, max_len: int = 1 << 20) -> str | None:
        v = self.obj.get(key)
        if v is None:
            return default
        if not isinstance(v, str) or len(v) > max_len:
            raise FieldError(f"'{self.name(key)}' must be a string of at most {max_len} characters, got {_shown(v)}", param=self.name(key))
        return v

    def enum(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        v = self.obj.get(key)
        if v is None:
            return default
        if v not in choices or not isinstance(v, str):
            raise FieldError(f"'{self.name(key)}' must be one of {', '.join(choices)}; got {_shown(v)}", param=self.name(key))
        return v

    def object(self, key: str) -> Fields | None:
        v = self.obj.get(key)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise FieldError(f"'{self.name(key)}' must be an object, got {_shown(v)}", param=self.name(key))
        return Fields(v, self.name(key) + ".")

    def list(self, key: str, max_items: int) -> list[Any] | None:
        v = self.obj.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or len(v) > max_items:
            raise FieldError(f"'{self.name(key)}' must be a list of at most {max_items} items, got {_shown(v)}", param=self.name(key))
        return v

    def strings(self, key: str, max_items: int, max_len: int) -> tuple[str, ...]:
        """A string or a list of strings (``stop``); each non-empty and bounded."""
        v = self.obj.get(key)
        if v is None:
            return ()
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or len(items) > max_items or not all(isinstance(s, str) and 0 < len(s) <= max_len for s in items):
            raise FieldError(
                f"'{self.name(key)}' must be a string or a list of at most {max_items} non-empty strings of at most {max_len} characters, got {_shown(v)}",
                param=self.name(key),
            )
        return tuple(items)


def check_setting(flag: str, v: float, lo: float, hi: float, *, lo_open: bool = False) -> None:
    """A server setting (command-line flag) within its range: finite, never NaN, else one ``UsageError`` line.

    Written as ``lo <= v <= hi`` so NaN, which fails every comparison, is refused too.
    """
    ok = isinstance(v, int | float) and not isinstance(v, bool) and (lo < v if lo_open else lo <= v) and v <= hi
    if not ok:
        span = ("(" if lo_open else "[") + f"{lo}, " + (f"{hi}]" if math.isfinite(hi) else "inf)")
        raise UsageError(f"{flag} must be a number in {span}, got {v}")
