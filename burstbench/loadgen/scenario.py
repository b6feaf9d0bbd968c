"""What a run does: the Scenario value object, loaded from YAML and overridden by flags.

A scenario is everything needed to repeat a run except the trace itself, so it is
stored (without credentials) as JSON in ``runs.scenario``. The API key is never a
field: only the *name* of the environment variable that holds it is.

Modes (DESIGN section 3, issue 3 "Load modes"):

- ``trace``: open loop, each request sent at its trace arrival time divided by
  ``time_scale`` (2.0 replays twice as fast). Turns of a session wait for the
  previous answer plus ``think_time_s`` (and never go before their trace time).
- ``rate``: open loop, Poisson arrivals at ``rate`` requests/s (seeded); lengths
  come from the trace rows in order, cycling when more requests are needed.
  ``poisson``: ``exact`` (default) scales the seed's draw so the schedule's rate is
  exactly ``rate`` (as ``vllm bench serve`` does; a seed's draw is otherwise a
  percent or so off, so runs with different tools or seeds would load the server
  differently); ``pure`` keeps the draw, a true Poisson process whose rate varies.
- ``closed``: ``concurrency`` users, each sending its next request when the
  previous answer is complete plus ``think_time_s``.

``max_concurrency`` caps requests in flight in any mode; requests that wait for a
slot keep their ``scheduled_s``, so ``sent_s - scheduled_s`` shows the queueing
(coordinated omission made visible).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from burstbench.backends.base import check_url
from burstbench.errors import SpecError, UsageError
from burstbench.infile import load_yaml, read_text

MODES = ("trace", "rate", "closed")
POISSON = ("exact", "pure")
APIS = ("completions", "chat")


@dataclass
class Scenario:
    """One run's settings. Times are seconds; ``None`` means "no limit" / "not set"."""

    url: str = ""
    api: str = "completions"
    model: str | None = None
    backend: str = "openai"
    mode: str = "trace"
    rate: float | None = None
    poisson: str = "exact"  # exact (rescaled to ``rate``) | pure (the seed's draw as it is)
    concurrency: int | None = None
    max_concurrency: int | None = None
    think_time_s: float = 0.0
    duration_s: float | None = None
    max_requests: int | None = None
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    workers: int = 1
    timeout_s: float = 600.0
    stall_timeout_s: float | None = 60.0
    grace_s: float = 10.0
    ignore_eos: bool = True
    api_key_env: str | None = None
    scrape_metrics: bool = True
    scrape_interval_s: float = 1.0
    seed: int = 0
    time_scale: float = 1.0
    server_spans: str | None = None  # HOST:PORT of the OTLP receiver for the server's spans
    server_spans_grpc: str | None = None  # HOST:PORT to also accept OTLP/gRPC spans (vLLM's default)
    spans_grace_s: float = 10.0  # wait this long after the run for spans still in flight
    otlp_endpoint: str | None = None  # a collector URL that gets the client's own spans
    tokenizer: str | None = None

    def validate(self, *, source: str = "scenario") -> Scenario:
        """Check every field; raise UsageError naming the field and what to do."""

        def bad(name: str, msg: str) -> UsageError:
            return UsageError(f"{source}: field '{name}' {msg}")

        if not self.url:
            raise bad("url", "is required: pass --url http://HOST:PORT (or set url: in the scenario file)")
        if why := check_url(self.url):
            raise bad("url", why)
        if self.api not in APIS:
            raise bad("api", f"must be one of {', '.join(APIS)} (got {self.api!r})")
        if self.mode not in MODES:
            raise bad("mode", f"must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.mode == "rate" and (self.rate is None or not self.rate > 0 or not math.isfinite(self.rate)):
            raise bad("rate", f"must be a positive number of requests/s in mode 'rate' (got {self.rate!r})")
        if self.poisson not in POISSON:
            raise bad("poisson", f"must be one of {', '.join(POISSON)} (got {self.poisson!r})")
        if self.mode == "closed" and (self.concurrency is None or self.concurrency < 1):
            raise bad("concurrency", f"must be >= 1 users in mode 'closed' (got {self.concurrency!r})")
        for name in ("max_concurrency", "max_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise bad(name, f"must be >= 1 when set (got {value!r})")
        if self.workers < 1 or self.workers > 256:
            raise bad("workers", f"must be between 1 and 256 (got {self.workers!r})")
        for name in ("think_time_s", "warmup_s", "cooldown_s", "grace_s", "spans_grace_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise bad(name, f"must be a finite number of seconds >= 0 (got {value!r})")
        for name in ("duration_s", "timeout_s", "stall_timeout_s", "scrape_interval_s"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise bad(name, f"must be a positive number of seconds (got {value!r})")
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise bad("time_scale", f"must be a positive replay speed, e.g. 2 for twice as fast (got {self.time_scale!r})")
        if self.server_spans is not None:
            from burstbench.loadgen.spans import parse_address

            parse_address(self.server_spans, option=f"{source}: field 'server_spans'")
        if self.server_spans_grpc is not None:
            from burstbench.loadgen.spans import parse_address

            parse_address(self.server_spans_grpc, option=f"{source}: field 'server_spans_grpc'")
        if self.otlp_endpoint is not None and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise bad("otlp_endpoint", f"must be an http:// or https:// collector URL, e.g. "
                      f"http://127.0.0.1:4318 (got {self.otlp_endpoint!r})")
        if self.tokenizer is not None:
            from burstbench.backends.prompts import load_tokenizer

            load_tokenizer(self.tokenizer)  # here, so a bad one is one line before any run row
        if self.duration_s is not None and self.warmup_s + self.cooldown_s >= self.duration_s:
            raise bad(
                "warmup_s",
                f"warm-up ({self.warmup_s}s) plus cool-down ({self.cooldown_s}s) leave nothing of the "
                f"{self.duration_s}s duration to measure; shorten them or lengthen --duration",
            )
        return self

    def to_json(self) -> dict[str, Any]:
        """The scenario as stored in ``runs.scenario``: no credentials, endpoint redacted."""
        from burstbench.store import redact_url

        data = dataclasses.asdict(self)
        data["url"] = redact_url(self.url)
        data["otlp_endpoint"] = redact_url(self.otlp_endpoint)
        return data


_FIELDS = {f.name: f for f in fields(Scenario)}
# YAML keys users are likely to write, mapped to field names.
_ALIASES = {"duration": "duration_s", "requests": "max_requests", "warmup": "warmup_s",
            "cooldown": "cooldown_s", "think_time": "think_time_s", "timeout": "timeout_s",
            "grace": "grace_s", "speed": "time_scale", "spans_grace": "spans_grace_s"}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Cast a YAML/flag value to the field's type, or say which field is wrong."""
    kind = str(_FIELDS[name].type)
    if value is None:
        if "None" in kind:  # optional field: null means "not set"
            return None
        raise SpecError("null is not allowed here; give a value or delete the line", path=source, field=name)
    try:
        if "bool" in kind:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if "int" in kind:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if "float" in kind:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        want = "true/false" if "bool" in kind else "an integer" if "int" in kind else "a number" if "float" in kind else "a string"
        raise SpecError(f"expected {want}, got {value!r}", path=source, field=name) from None


def load_scenario_file(path: str | Path) -> dict[str, Any]:
    """Read a scenario YAML into field -> value (unknown keys are an error, not ignored)."""

    path = Path(path)
    if not path.exists():
        raise SpecError("no such scenario file", path=path)
    text = read_text(path, expected="a scenario YAML", error=SpecError)
    data = load_yaml(text, path=path, error=SpecError) or {}
    if not isinstance(data, Mapping):
        raise SpecError("a scenario file must be a mapping of field: value", path=path)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _ALIASES.get(str(key), str(key))
        if name in ("api_key", "key", "password", "token"):
            raise SpecError("never put credentials in a scenario file; set api_key_env to the name "
                            "of an environment variable instead", path=path, field=str(key))
        if name not in _FIELDS:
            raise SpecError(f"unknown field; known fields: {', '.join(sorted(_FIELDS))}", path=path, field=str(key))
        out[name] = _coerce(name, value, str(path))
    return out


def build_scenario(file: str | Path | None = None, **flags: Any) -> Scenario:
    """Scenario from an optional YAML file, then flags (``None`` flags do not override).

    The mode is inferred when neither file nor flags name it: ``--concurrency``
    means closed loop, ``--rate`` means Poisson at that rate, else trace replay.
    """
    values: dict[str, Any] = load_scenario_file(file) if file else {}
    source = str(file) if file else "flags"
    for key, value in flags.items():
        if value is None:
            continue
        name = _ALIASES.get(key, key)
        if name not in _FIELDS:
            raise UsageError(f"unknown scenario field '{key}'")
        values[name] = _coerce(name, value, "flags")
        source = "flags" if file is None else f"{file} + flags"
    if "mode" not in values:
        if values.get("concurrency") is not None:
            values["mode"] = "closed"
        elif values.get("rate") is not None:
            values["mode"] = "rate"
    return Scenario(**values).validate(source=source)
