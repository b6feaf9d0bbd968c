"""The Backend protocol: one request in, one timed ``Outcome`` out.

The load generator owns scheduling and recording; a backend owns the wire. It
timestamps every token-carrying chunk with the clock it is given (seconds from
the run's start, monotonic), so the clock can be injected in tests and the same
backend serves live runs and replays. Third-party backends register under the
``burstbench.backends`` entry point and are found by ``get_backend``.
"""

from __future__ import annotations

import base64
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit, urlunsplit

from burstbench.errors import UsageError

Clock = Callable[[], float]
"""Seconds since the run's start on a monotonic clock."""

STATUSES = ("ok", "error", "timeout", "cancelled")


@dataclass(slots=True)
class Request:
    """One request of a schedule, as a backend needs it."""

    request_id: int
    input_tokens: int
    output_tokens: int | None = None  # target (max_tokens); None lets the server decide
    scheduled_s: float = 0.0
    prompt: str | None = None  # real prompt text when the trace has it
    messages: list[dict[str, Any]] | None = None  # chat history for multi-turn sessions
    prefix_hashes: tuple[int, ...] | None = None
    model: str | None = None
    session_id: str | None = None
    turn: int | None = None
    tenant: str | None = None
    ignore_eos: bool = True  # ask the server to produce exactly output_tokens
    traceparent: str | None = None  # W3C trace context header to send (server spans join on it)
    body: bytes | None = None  # encoded by the backend's optional ``prepare`` before the send deadline


@dataclass(slots=True)
class Outcome:
    """What a backend measured for one request; times are on the injected clock.

    ``chunk_t`` holds the arrival time of each token-carrying chunk, ``chunk_tokens``
    the tokens it carried when known (-1 when not), ``chunk_reasoning`` 1 when the
    chunk carried reasoning content only. Arrays keep the hot path cheap.
    """

    request_id: int
    sent_s: float
    status: str = "ok"
    first_token_s: float | None = None
    first_visible_s: float | None = None
    last_token_s: float | None = None
    end_s: float | None = None
    chunk_t: array = field(default_factory=lambda: array("d"))
    chunk_tokens: array = field(default_factory=lambda: array("i"))
    chunk_reasoning: array = field(default_factory=lambda: array("b"))
    input_tokens_server: int | None = None
    output_tokens_server: int | None = None
    output_tokens_counted: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    http_status: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    text: str | None = None  # the visible answer, kept only when a session needs it
    finish_reason: str | None = None  # the server's last finish_reason ("length", "stop", ...)


@runtime_checkable
class Backend(Protocol):
    """A pluggable way to send requests. Implementations must be safe to share in one loop."""

    name: str

    async def start(self) -> None:
        """Open connections or pools; called once before the first ``send``."""

    async def send(self, request: Request, clock: Clock) -> Outcome:
        """Send one request and return its outcome. Never raises for a failed request:
        failures are outcomes with ``status`` and ``error_class`` set."""

    async def close(self) -> None:
        """Release what ``start`` opened."""

    # Optional, looked up with getattr by the dispatcher:
    # ``prepare(request) -> None``: encode ``request.body`` before its send deadline;
    # ``async warm(n) -> int``: open up to n pooled connections before the run starts;
    # ``top_up() -> None``: reopen, in the background, the idle connections sends took.


def available_backends() -> dict[str, str]:
    """Backend name -> 'module:attribute', from the ``burstbench.backends`` entry point."""
    found = {"openai": "burstbench.backends.openai:OpenAIBackend"}
    for ep in entry_points(group="burstbench.backends"):
        found[ep.name] = ep.value
    return found


def get_backend(name: str) -> type:
    """The backend class registered under ``name``."""
    import importlib

    targets = available_backends()
    if name not in targets:
        raise UsageError(f"unknown backend '{name}'; available: {', '.join(sorted(targets))}")
    module, attr = targets[name].split(":")
    return getattr(importlib.import_module(module), attr)


def check_url(url: str) -> str:
    """Why ``url`` is not a usable http(s) endpoint, in one line; ``""`` when it is.

    ``urlsplit`` raises ValueError for ``http://[::1`` and its ``port`` for
    ``:99999``; every place that takes ``--url`` (scenario validation, the OpenAI
    backend) asks here first, so neither reaches a socket or a traceback.
    """
    if not url.startswith(("http://", "https://")):
        return f"must start with http:// or https:// (got {url!r})"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0..65535
    except ValueError as exc:
        return f"is not a valid URL ({exc}; got {url!r}); e.g. http://127.0.0.1:8000 or http://[::1]:8000"
    if not parts.hostname:
        return f"has no host (got {url!r}); e.g. http://127.0.0.1:8000"
    return ""


class BasicAuth(NamedTuple):
    """user:password from a URL, sent as an ``Authorization: Basic`` header."""

    login: str
    password: str

    def encode(self) -> str:
        raw = f"{self.login}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def split_credentials(url: str) -> tuple[str, BasicAuth | None]:
    """The URL without user:password, and those as Basic auth (sent as a header, so
    they never travel in a URL that could be logged or stored)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    auth = BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), auth
