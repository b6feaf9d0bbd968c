"""Seeded fault injection for the reference server, to test clients against bad servers.

Each request draws its faults from one ``random.Random(seed)`` in arrival
order, in a fixed sequence of draws, so a given seed and request order always
produce the same faults. Faults:

- ``error_rate``: answer with an HTTP error from ``error_codes`` instead of
  serving (429 and 503 carry ``Retry-After: retry_after_s``);
- ``slow_first_byte_rate``: hold the response headers for ``slow_first_byte_s``;
- ``stall_rate``: pause the stream for ``stall_s`` at a random token;
- ``disconnect_rate``: drop the connection at a random token (no ``[DONE]``);
- ``malformed_rate``: send one SSE event that is not valid JSON;
- ``stream_error_rate``: send an in-stream ``{"error": ...}`` event and end the stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from burstbench.backends.reference.fields import check_setting
from burstbench.errors import UsageError


@dataclass(frozen=True)
class FaultConfig:
    error_rate: float = 0.0
    error_codes: tuple[int, ...] = (429, 500, 503)
    retry_after_s: float = 1.0
    slow_first_byte_rate: float = 0.0
    slow_first_byte_s: float = 2.0
    stall_rate: float = 0.0
    stall_s: float = 5.0
    disconnect_rate: float = 0.0
    malformed_rate: float = 0.0
    stream_error_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("error_rate", "slow_first_byte_rate", "stall_rate", "disconnect_rate", "malformed_rate", "stream_error_rate"):
            check_setting(f"--fault-{name.replace('_', '-')}", getattr(self, name), 0.0, 1.0)
        for name, flag in (("retry_after_s", "--fault-retry-after"), ("slow_first_byte_s", "--fault-slow-first-byte-s"), ("stall_s", "--fault-stall-s")):
            check_setting(flag, getattr(self, name), 0.0, 86400.0)
        if not self.error_codes or any(not 400 <= c <= 599 for c in self.error_codes):
            raise UsageError(f"--fault-error-codes must be HTTP error codes (400-599), got {self.error_codes}")

    @property
    def active(self) -> bool:
        return any(
            (self.error_rate, self.slow_first_byte_rate, self.stall_rate, self.disconnect_rate, self.malformed_rate, self.stream_error_rate)
        )


@dataclass(frozen=True)
class FaultPlan:
    """The faults one request gets; token indexes are 0-based positions in its output."""

    error: int | None = None
    slow_first_byte_s: float = 0.0
    stall_at: int | None = None
    disconnect_at: int | None = None
    malformed_at: int | None = None
    stream_error_at: int | None = None


NO_FAULTS = FaultPlan()


class FaultInjector:
    """Draws a ``FaultPlan`` per request from one seeded generator."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self.counts: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def plan(self, num_tokens: int) -> FaultPlan:
        c = self.config
        if not c.active:
            return NO_FAULTS
        r = self._rng
        draws = [r.random() for _ in range(6)]
        positions = [r.randrange(max(1, num_tokens)) for _ in range(4)]
        error = c.error_codes[r.randrange(len(c.error_codes))] if draws[0] < c.error_rate else None
        if error is not None:
            self._count(f"http_{error}")
            return FaultPlan(error=error)
        plan = FaultPlan(
            slow_first_byte_s=c.slow_first_byte_s if draws[1] < c.slow_first_byte_rate else 0.0,
            stall_at=positions[0] if draws[2] < c.stall_rate else None,
            disconnect_at=positions[1] if draws[3] < c.disconnect_rate else None,
            malformed_at=positions[2] if draws[4] < c.malformed_rate else None,
            stream_error_at=positions[3] if draws[5] < c.stream_error_rate else None,
        )
        if plan.slow_first_byte_s > 0:
            self._count("slow_first_byte")
        for name in ("stall_at", "disconnect_at", "malformed_at", "stream_error_at"):
            if getattr(plan, name) is not None:
                self._count(name.removesuffix("_at"))
        return plan


def parse_codes(text: str) -> tuple[int, ...]:
    """``429,503`` -> (429, 503), with a usage error naming the flag."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise UsageError(f"--fault-error-codes '{text}': expected comma-separated integers, e.g. 429,503") from exc
