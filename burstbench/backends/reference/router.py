"""Data-parallel routing: which replica gets the next request.

Replicas are independent engines (each with its own KV cache and scheduler),
as with several vLLM instances behind a load balancer. Two policies, the two
that production routers default to:

- ``round_robin``: request i goes to replica i mod R, blind to load;
- ``least_outstanding``: the replica with the fewest requests in flight
  (running + waiting); ties go to the lowest index, so the choice is
  deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from burstbench.errors import UsageError
from burstbench.limits import MAX_REPLICAS

ROUTERS = ("round_robin", "least_outstanding")


class _Loaded(Protocol):
    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...


class Router:
    """Picks a replica index for each request."""

    def __init__(self, kind: str, replicas: int) -> None:
        if kind not in ROUTERS:
            raise UsageError(f"router must be one of {', '.join(ROUTERS)}, got '{kind}'")
        if replicas < 1:
            raise UsageError(f"replicas must be >= 1, got {replicas}")
        if replicas > MAX_REPLICAS:
            raise UsageError(f"{replicas:,} replicas is over the limit of {MAX_REPLICAS:,} instances per fleet")
        self.kind = kind
        self.replicas = replicas
        self._next = 0

    def pick(self, engines: Sequence[_Loaded]) -> int:
        if self.replicas == 1:
            return 0
        if self.kind == "round_robin":
            r = self._next
            self._next = (r + 1) % self.replicas
            return r
        best, best_load = 0, None
        for i, e in enumerate(engines):
            load = e.num_running + e.num_waiting
            if best_load is None or load < best_load:
                best, best_load = i, load
        return best
