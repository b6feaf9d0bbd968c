"""Importers: other tools' result files as runs in a burstbench results store.

So a report can set a vLLM, GuideLLM or AIPerf benchmark beside our own runs and
every number is computed by the same SQL. Each importer maps the tool's names
onto ours (DESIGN section 4); what a format does not record stays NULL rather
than being invented.

| ours (requests/chunks) | vLLM ``bench serve --save-result --save-detailed`` | GuideLLM ``benchmarks.json`` | AIPerf ``profile_export.jsonl`` |
|---|---|---|---|
| run | one per file, backend ``import:vllm`` | one per entry of ``benchmarks``, ``import:guidellm`` | one per file, ``import:aiperf`` |
| ``sent_s`` | ``start_times[i]`` − min (0 when absent: no timeline, see below) | ``request_start`` − benchmark start | ``request_start_ns`` − min |
| ``scheduled_s`` | ``sent_s`` − ``queue_times[i]`` | ``targeted_start(_time)`` − start (NULL when on another clock) | ``credit_issued_ns`` − min |
| ``first_token_s`` (TTFT) | ``sent_s`` + ``ttfts[i]`` | ``first_token_(time\\|iteration)`` | ``sent_s`` + ``time_to_first_token`` |
| ``first_visible_s`` (TTFVT) | NULL | ``first_output_token_iteration`` | ``sent_s`` + ``time_to_first_output_token`` |
| chunks (ITL) | ``first_token_s`` + cumsum(``itls[i]``) | none: only first/last token times; ``chunk_count`` = ``token_iterations`` | ``first_token_s`` + cumsum(``inter_chunk_latency``) |
| ``last_token_s`` (E2EL) | ``sent_s`` + ``latencies[i]`` (else TTFT + Σ ITL) | ``last_token_(time\\|iteration)`` | ``sent_s`` + ``request_latency`` |
| ``end_s`` | = ``last_token_s`` | ``end_time`` / ``request_end`` | ``request_end_ns`` |
| ``input_tokens`` | ``input_lens[i]`` | ``prompt_tokens`` / ``input_metrics.total_tokens`` | ``input_sequence_length`` (``error_isl``) |
| ``output_tokens_server`` | ``output_lens[i]`` | ``output_tokens`` / ``output_metrics.total_tokens`` | ``output_sequence_length`` |
| ``status`` | ``errors[i]`` empty → ok, else error | successful → ok, errored → error, incomplete → cancelled | ``error`` null → ok; ``was_cancelled`` → cancelled; else error |
| ``http_status`` | from the reason in ``errors[i]`` (``Bad Request`` → 400) | from the error text (``'500 Internal Server Error'``) | ``error.code`` |
| ``phase`` | measure | measure (GuideLLM drops warm-up/cool-down itself) | ``benchmark_phase``: profiling → measure, warmup/ramp_up/stabilizing → warmup |
| run duration | ``duration`` | ``duration`` (or end − start) | profiling phase: last ``request_end_ns`` − first ``request_start_ns`` (AIPerf's own) |

The tool's own summary fields (vLLM's ``mean_ttft_ms`` ...) are kept in the run's
``scenario`` JSON under ``reported`` so they can be checked against ours.

What a file gets wrong is said, not hidden: each finding becomes a note stored with
the run (``runs.notes``, shown by analyze and report) and passed to ``warn`` on
import. A vLLM file without ``start_times`` (older vLLM) has no timeline at all:
every request sits at t=0, so the run is stored with ``scenario.timeline = false``
and nothing time-resolved (peak concurrency, windows, time series) is drawn from it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from burstbench.errors import InputError, UsageError
from burstbench.infile import check_input, loads_json, read_text
from burstbench.store import CHUNK_COLUMNS, REQUEST_COLUMNS, ResultsStore, RunInfo

FORMATS = ("vllm", "guidellm", "aiperf")


class _Run:
    """Rows of one imported run, collected before one bulk append."""

    def __init__(self) -> None:
        self.requests: list[tuple[Any, ...]] = []
        self.chunks: list[tuple[Any, ...]] = []
        self.notes: list[str] = []  # what the file got wrong, kept with the run (runs.notes)
        self.measure: tuple[float, float] | None = None  # the tool's measured window, when not 0..duration

    def add(
        self,
        *,
        request_id: int,
        sent: float | None,
        scheduled: float | None = None,
        first: float | None = None,
        visible: float | None = None,
        last: float | None = None,
        end: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        chunk_times: Sequence[float] = (),
        chunk_count: int | None = None,
        status: str = "ok",
        http_status: int | None = None,
        error_class: str | None = None,
        error_message: str | None = None,
        session_id: str | None = None,
        turn: int | None = None,
        phase: str = "measure",
        worker: int | None = None,
    ) -> None:
        self.requests.append(
            (None, request_id, session_id, turn, None, None, phase, scheduled, sent, first, visible, last, end,
             input_tokens, None, None, output_tokens, None, reasoning_tokens, None,
             chunk_count if chunk_count is not None else len(chunk_times), status, http_status, error_class,
             error_message, worker)
        )
        for seq, t in enumerate(chunk_times):
            self.chunks.append((None, request_id, seq, t, None, False))

    def write(self, store: ResultsStore, info: RunInfo, *, duration_s: float, started_at: dt.datetime | None) -> str:
        req = pl.DataFrame(self.requests, schema=list(REQUEST_COLUMNS), orient="row", infer_schema_length=None)
        ch = pl.DataFrame(self.chunks, schema=list(CHUNK_COLUMNS), orient="row", infer_schema_length=None) if self.chunks else None
        rid = store.create_run(info)
        try:
            if started_at is not None:
                store.con.execute("UPDATE runs SET started_at = ? WHERE run_id = ?", [started_at, rid])
            store.append_requests(req.with_columns(pl.lit(rid).alias("run_id")))
            if ch is not None:
                store.append_chunks(ch.with_columns(pl.lit(rid).alias("run_id")))
            m0, m1 = self.measure or (None, None)
            store.finish_run(rid, status="done", end_reason="imported", duration_s=duration_s,
                             measure_start_s=m0, measure_end_s=m1, notes=self.notes)
        except Exception:
            for table in ("chunks", "requests", "runs"):  # leave no half-imported run behind
                store.con.execute(f"DELETE FROM {table} WHERE run_id = ?", [rid])
            raise
        return rid


# -- helpers ------------------------------------------------------------------------------


def _num(v: Any, path: Path, field: str, line: int | None = None, *, allow_none: bool = True) -> float | None:
    if v is None:
        if allow_none:
            return None
        raise InputError("is missing", path=path, line=line, field=field)
    if isinstance(v, bool) or not isinstance(v, int | float):
        if isinstance(v, str) and v.strip().lower() in ("inf", "infinity"):
            return math.inf
        raise InputError(f"is {v!r}, not a number", path=path, line=line, field=field)
    return float(v)


def _int(v: Any, path: Path, field: str, line: int | None = None) -> int | None:
    x = _num(v, path, field, line)
    if x is None:
        return None
    if x < 0 or not math.isfinite(x):
        raise InputError(f"is {v!r}; a token count must be a non-negative integer", path=path, line=line, field=field)
    return int(x)


def _list(d: Mapping[str, Any], key: str, path: Path, n: int | None) -> list[Any] | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, list):
        raise InputError(f"is a {type(v).__name__}, expected a list (one entry per request)", path=path, field=key)
    if n is not None and len(v) != n:
        raise InputError(f"has {len(v)} entries but 'ttfts' has {n}; the file is truncated or mixed", path=path, field=key)
    return v


_PHRASES = {s.phrase.lower(): s.value for s in HTTPStatus}
_STATUS_IN_TEXT = re.compile(r"(?:^|')([1-5]\d\d) [A-Z]|\b(?:status(?:[ _]code)?|HTTP|code)[\"']?[\s:=]+([1-5]\d\d)\b",
                             re.IGNORECASE)


def _http_status(message: Any) -> int | None:
    """The HTTP status an error text names, so imported failures keep it like our own do.

    Tools store the status only inside their message: vLLM keeps the bare reason
    (``response.reason``: "Bad Request") or an in-stream error object as JSON
    (``{"code": 500, ...}``), GuideLLM the httpx text ("Server error '500 Internal
    Server Error' for url ..."), others "status code: 429".
    """
    if not isinstance(message, str) or not message.strip():
        return None
    text = message.strip()
    by_phrase = _PHRASES.get(text.split(":", 1)[0].strip().rstrip(".").lower())
    if by_phrase is not None:
        return by_phrase
    m = _STATUS_IN_TEXT.search(text)
    return int(m.group(1) or m.group(2)) if m else None


_EXPECTED = "a vLLM bench serve JSON, GuideLLM benchmarks.json or AIPerf profile_export.jsonl"


def _load_json(path: Path) -> list[Any]:
    """The JSON documents of ``path``: one, or one per line for an appended result file.

    Read through ``infile`` so size, encoding and nesting are bounded like every input."""
    text = read_text(path, expected=_EXPECTED)
    if not text.strip():
        raise InputError("is empty; expected a JSON result file", path=path)
    try:
        return [loads_json(text, path=path)]
    except InputError as exc:
        if "Extra data" not in str(exc) or (exc.line or 1) < 2:
            raise
    # several documents, one per line: vLLM's bench serve --append-result adds each run's object
    return [loads_json(line, path=path, line=ln) for ln, line in enumerate(text.splitlines(), start=1)
            if line.strip()]


# -- vLLM -------------------------------------------------------------------------------------


def _vllm_date(v: Any) -> dt.datetime | None:
    if not isinstance(v, str):
        return None
    try:
        return dt.datetime.strptime(v, "%Y%m%d-%H%M%S").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def read_vllm(path: Path, data: Mapping[str, Any], index: int | None = None) -> tuple[_Run, RunInfo, float, dt.datetime | None]:
    """``vllm bench serve --save-result --save-detailed`` (or ``benchmark_serving.py``) JSON;
    ``index``: the document's place in an ``--append-result`` file of several runs."""
    ttfts = data.get("ttfts")
    if ttfts is None:
        raise InputError(
            "has no per-request 'ttfts'; rerun vLLM's bench serve with --save-result --save-detailed",
            path=path, field="ttfts",
        )
    if not isinstance(ttfts, list):
        raise InputError("is not a list", path=path, field="ttfts")
    n = len(ttfts)
    itls = _list(data, "itls", path, n)
    if itls is None:
        raise InputError("is missing; needed for inter-token latency", path=path, field="itls")
    input_lens = _list(data, "input_lens", path, n) or [None] * n
    output_lens = _list(data, "output_lens", path, n) or [None] * n
    errors = _list(data, "errors", path, n)
    latencies = _list(data, "latencies", path, n)
    starts = _list(data, "start_times", path, n)
    queues = _list(data, "queue_times", path, n)
    duration = _num(data.get("duration"), path, "duration", allow_none=False)
    if not duration > 0:
        raise InputError(f"is {duration}; expected the benchmark's positive duration in seconds", path=path, field="duration")
    t0 = min((_num(s, path, f"start_times[{i}]", allow_none=False) for i, s in enumerate(starts)), default=0.0) if starts else 0.0
    run = _Run()
    for i in range(n):
        err = errors[i] if errors is not None else None
        ok = not err if errors is not None else bool(ttfts[i]) or bool(itls[i])
        sent = (_num(starts[i], path, f"start_times[{i}]", allow_none=False) - t0) if starts else 0.0
        q = _num(queues[i], path, f"queue_times[{i}]") if queues else None
        sched = sent - q if q is not None else None
        if not ok:
            run.add(request_id=i, sent=sent, scheduled=sched, end=None, input_tokens=_int(input_lens[i], path, f"input_lens[{i}]"),
                    status="error", http_status=_http_status(err), error_class="vllm_error", error_message=str(err)[:500])
            continue
        ttft = _num(ttfts[i], path, f"ttfts[{i}]", allow_none=False)
        gaps = itls[i]
        if not isinstance(gaps, list):
            raise InputError(f"is {type(gaps).__name__}, expected a list of gaps in seconds", path=path, field=f"itls[{i}]")
        times = [sent + ttft]
        for j, g in enumerate(gaps):
            times.append(times[-1] + _num(g, path, f"itls[{i}][{j}]", allow_none=False))
        lat = _num(latencies[i], path, f"latencies[{i}]") if latencies else None
        last = sent + lat if lat is not None else times[-1]
        run.add(request_id=i, sent=sent, scheduled=sched, first=times[0], last=last, end=last,
                input_tokens=_int(input_lens[i], path, f"input_lens[{i}]"),
                output_tokens=_int(output_lens[i], path, f"output_lens[{i}]"), chunk_times=times)
    rate = data.get("request_rate")
    rate_f = _num(rate, path, "request_rate") if rate is not None else None
    reported = {k: v for k, v in data.items() if not isinstance(v, list | dict)}
    if not starts:
        run.notes.append(
            "no start_times in the file (vLLM before start times were saved): every request is placed at t=0,"
            " so there is no timeline; peak concurrency and time series are not shown")
    info = RunInfo(
        backend="import:vllm", model=data.get("model_id") if isinstance(data.get("model_id"), str) else None,
        label=f"vllm:{path.stem}" + (f":{index}" if index is not None else ""), target_rate=rate_f if rate_f is not None and math.isfinite(rate_f) else None,
        scenario={"source": str(path), "format": "vllm", "reported": reported, "timeline": bool(starts)},
    )
    return run, info, duration, _vllm_date(data.get("date"))


# -- GuideLLM --------------------------------------------------------------------------------


def _g(d: Mapping[str, Any] | None, *keys: str) -> Any:
    """The first present key of ``d`` (GuideLLM renamed fields between releases)."""
    if not isinstance(d, Mapping):
        return None
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


_EPOCH_S = 1e8  # seconds; any Unix time after 1973 is larger, any offset within a benchmark smaller


def _same_clock(a: float, b: float) -> bool:
    """Whether two GuideLLM times are on one clock: both Unix times, or both offsets."""
    return (abs(a) >= _EPOCH_S) == (abs(b) >= _EPOCH_S)


def read_guidellm(path: Path, data: Mapping[str, Any]) -> list[tuple[_Run, RunInfo, float, dt.datetime | None]]:
    """GuideLLM ``benchmarks.json``: both the 0.2/0.3 layout (times on the request) and 0.4+ (``info.timings``)."""
    benches = data.get("benchmarks")
    if not isinstance(benches, list) or not benches:
        raise InputError("has no benchmarks; expected GuideLLM's benchmarks.json", path=path, field="benchmarks")
    out = []
    for b_i, bench in enumerate(benches):
        where = f"benchmarks[{b_i}]"
        reqs = bench.get("requests") if isinstance(bench, Mapping) else None
        if not isinstance(reqs, Mapping):
            raise InputError("has no 'requests' breakdown (successful/errored/incomplete)", path=path, field=where)
        flat: list[tuple[str, str, Mapping[str, Any]]] = []
        for group, status in (("successful", "ok"), ("errored", "error"), ("incomplete", "cancelled")):
            items = reqs.get(group) or []
            if not isinstance(items, list):
                raise InputError("is not a list", path=path, field=f"{where}.requests.{group}")
            flat += [(f"{where}.requests.{group}[{j}]", status, r) for j, r in enumerate(items)]
        if not flat:
            raise InputError("holds no requests (sampled away?)", path=path, field=f"{where}.requests")

        def timing(r: Mapping[str, Any], old: str, new: str) -> Any:
            t = _g(r.get("info"), "timings")
            return _g(r, old) if _g(r, old) is not None else _g(t, new)

        starts = [timing(r, "start_time", "request_start") for _, _, r in flat]
        nums = [s for s in starts if isinstance(s, int | float)]
        t0 = _num(bench.get("start_time"), path, f"{where}.start_time") or (min(nums) if nums else None)
        if t0 is None:
            raise InputError("no request has a start time", path=path, field=f"{where}.requests")

        def rel(v: float | None, t0: float = t0) -> float | None:
            return None if v is None else v - t0

        run = _Run()
        ends = []
        other_clock = 0
        for i, (f, status, r) in enumerate(flat):
            if not isinstance(r, Mapping):
                raise InputError("is not an object", path=path, field=f)
            start = _num(timing(r, "start_time", "request_start"), path, f"{f}.start_time")
            if start is None:
                raise InputError("has no start time (start_time / info.timings.request_start)", path=path, field=f)
            sched_raw = _g(r.get("scheduler_info"), "targeted_start_time")
            if sched_raw is None:
                sched_raw = _g(_g(r.get("info"), "timings"), "targeted_start")
            sched = _num(sched_raw, path, f"{f}.targeted_start")
            if sched is not None and not _same_clock(sched, start):
                # GuideLLM writes some targeted_start values relative to the benchmark while
                # request_start is a Unix time; their difference (-1.8e9 s) is no schedule lag.
                other_clock += 1
                sched = None
            first = _num(timing(r, "first_token_time", "first_token_iteration"), path, f"{f}.first_token_time")
            last = _num(timing(r, "last_token_time", "last_token_iteration"), path, f"{f}.last_token_time")
            end = _num(timing(r, "end_time", "request_end"), path, f"{f}.end_time")
            visible = _num(_g(_g(r.get("info"), "timings"), "first_output_token_iteration"), path, f"{f}.first_output_token_iteration")
            iters = _g(_g(r.get("info"), "timings"), "token_iterations")
            prompt = _g(r, "prompt_tokens") if _g(r, "prompt_tokens") is not None else _g(r.get("input_metrics"), "total_tokens", "text_tokens")
            output = _g(r, "output_tokens") if _g(r, "output_tokens") is not None else _g(r.get("output_metrics"), "total_tokens", "text_tokens")
            err = _g(r, "error") or _g(r.get("info"), "error")
            if end is not None:
                ends.append(end)
            run.add(
                request_id=i, sent=start - t0, scheduled=rel(sched),
                first=rel(first), visible=rel(visible), last=rel(last), end=rel(end),
                input_tokens=_int(prompt, path, f"{f}.prompt_tokens"),
                output_tokens=_int(output, path, f"{f}.output_tokens"),
                chunk_count=int(iters) if isinstance(iters, int) else None,
                status=status, http_status=_http_status(err), error_class="guidellm_error" if err else None,
                error_message=str(err)[:500] if err else None,
                session_id=_g(r.get("info"), "conversation_id"), turn=_g(r.get("info"), "turn_index"),
            )
        if other_clock:
            run.notes.append(
                f"{other_clock} of {len(flat)} requests have a targeted_start on another clock than their"
                " request_start (GuideLLM wrote it relative, not as a Unix time); their schedule lag is left empty")
        duration = _num(bench.get("duration"), path, f"{where}.duration")
        if duration is None:
            end_b = _num(bench.get("end_time"), path, f"{where}.end_time")
            duration = (end_b - t0) if end_b is not None else (max(ends) - t0 if ends else 0.0)
        strategy = _g(_g(bench.get("args"), "strategy"), "type_", "type") or _g(_g(bench.get("config"), "strategy"), "type_", "type")
        rate = _g(_g(bench.get("args"), "strategy"), "rate") or _g(_g(bench.get("config"), "strategy"), "rate")
        info = RunInfo(
            backend="import:guidellm", model=None,
            label=f"guidellm:{path.stem}:{b_i}" + (f":{strategy}" if strategy else ""),
            target_rate=float(rate) if isinstance(rate, int | float) else None,
            scenario={"source": str(path), "format": "guidellm", "benchmark_index": b_i, "strategy": strategy},
        )
        started = dt.datetime.fromtimestamp(t0, dt.UTC) if t0 > 1e9 else None
        out.append((run, info, float(duration), started))
    return out


# -- AIPerf ------------------------------------------------------------------------------------

_AIPERF_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0}


def _aiperf_value(metrics: Mapping[str, Any], name: str, path: Path, line: int, *, seconds: bool) -> Any:
    m = metrics.get(name)
    if m is None:
        return None
    if not isinstance(m, Mapping) or "value" not in m:
        raise InputError("is not an object with 'value' and 'unit'", path=path, line=line, field=f"metrics.{name}")
    v = m["value"]
    if not seconds:
        return v
    unit = str(m.get("unit", "")).lower()
    if unit not in _AIPERF_UNITS:
        raise InputError(f"has unit {m.get('unit')!r}; expected ns, us, ms or s", path=path, line=line, field=f"metrics.{name}.unit")
    k = _AIPERF_UNITS[unit]
    if isinstance(v, list):
        return [_num(x, path, f"metrics.{name}", line, allow_none=False) * k for x in v]
    x = _num(v, path, f"metrics.{name}", line)
    return None if x is None else x * k


def _aiperf_phase(value: Any) -> str:
    """Our phase of an AIPerf ``benchmark_phase``: only profiling is measured (AIPerf's own
    results count nothing else); warm-up, ramp-up and stabilizing precede it."""
    name = str(value or "profiling").lower()
    if name == "profiling":
        return "measure"
    return "cooldown" if name.startswith("cool") else "warmup"


def read_aiperf(path: Path) -> tuple[_Run, RunInfo, float, dt.datetime | None]:
    """AIPerf ``profile_export.jsonl``: one record (metadata, metrics, error) per line."""
    lines = read_text(path, expected=_EXPECTED).splitlines()
    records = []
    for ln, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        rec = loads_json(text, path=path, line=ln)
        if not isinstance(rec, Mapping) or not isinstance(rec.get("metadata"), Mapping):
            raise InputError("has no 'metadata' object; expected AIPerf's profile_export.jsonl", path=path, line=ln, field="metadata")
        for key in ("request_start_ns", "credit_issued_ns"):
            v = rec["metadata"].get(key)
            if (v is not None or key == "request_start_ns") and (not isinstance(v, int | float) or isinstance(v, bool)):
                raise InputError(f"is {v!r}; expected epoch nanoseconds", path=path, line=ln, field=f"metadata.{key}")
        records.append((ln, rec))
    if not records:
        raise InputError("is empty; expected one JSON record per line (AIPerf profile_export.jsonl)", path=path)
    # t=0 is the first event of any record, so warm-up and scheduled (credit) times stay >= 0
    t0_ns = min(min(int(md["request_start_ns"]), int(md.get("credit_issued_ns") or md["request_start_ns"]))
                for md in (r["metadata"] for _, r in records))
    run = _Run()
    ends = []
    measured: list[tuple[float, float | None]] = []
    workers: dict[str, int] = {}
    for i, (ln, rec) in enumerate(records):
        md, metrics, err = rec["metadata"], rec.get("metrics") or {}, rec.get("error")
        if not isinstance(metrics, Mapping):
            raise InputError("is not an object", path=path, line=ln, field="metrics")
        sent = (int(md["request_start_ns"]) - t0_ns) / 1e9
        credit = md.get("credit_issued_ns")
        scheduled = (int(credit) - t0_ns) / 1e9 if credit is not None else None
        end_ns = md.get("request_end_ns")
        end = (int(end_ns) - t0_ns) / 1e9 if isinstance(end_ns, int | float) else None
        if end is not None:
            ends.append(end)
        phase = _aiperf_phase(md.get("benchmark_phase"))
        if phase == "measure":
            measured.append((sent, end))
        worker = workers.setdefault(str(md.get("worker_id")), len(workers))
        common = {"request_id": i, "sent": sent, "scheduled": scheduled, "end": end, "phase": phase, "worker": worker,
                  "session_id": md.get("x_correlation_id") or md.get("conversation_id"), "turn": md.get("turn_index")}
        isl = _aiperf_value(metrics, "input_sequence_length", path, ln, seconds=False)
        if err:
            if not isinstance(err, Mapping):
                err = {"message": str(err)}
            status = "cancelled" if md.get("was_cancelled") else "error"
            code = err.get("code")
            isl = isl if isl is not None else _aiperf_value(metrics, "error_isl", path, ln, seconds=False)
            run.add(**common, status=status, http_status=code if isinstance(code, int) else None,
                    error_class=str(err.get("type") or "error"), error_message=str(err.get("message") or "")[:500],
                    input_tokens=_int(isl, path, "metrics.error_isl", ln))
            continue
        ttft = _aiperf_value(metrics, "time_to_first_token", path, ln, seconds=True)
        ttfo = _aiperf_value(metrics, "time_to_first_output_token", path, ln, seconds=True)
        icl = _aiperf_value(metrics, "inter_chunk_latency", path, ln, seconds=True) or []
        lat = _aiperf_value(metrics, "request_latency", path, ln, seconds=True)
        osl = _aiperf_value(metrics, "output_sequence_length", path, ln, seconds=False)
        if osl is None:
            osl = _aiperf_value(metrics, "output_token_count", path, ln, seconds=False)
        if not isinstance(icl, list):
            icl = [icl]
        times: list[float] = []
        if ttft is not None:
            times = [sent + ttft]
            for g in icl:
                times.append(times[-1] + g)
        run.add(**common, first=times[0] if times else None, visible=sent + ttfo if ttfo is not None else None,
                last=sent + lat if lat is not None else (times[-1] if times else None),
                input_tokens=_int(isl, path, "metrics.input_sequence_length", ln),
                output_tokens=_int(osl, path, "metrics.output_sequence_length", ln),
                reasoning_tokens=_int(_aiperf_value(metrics, "reasoning_token_count", path, ln, seconds=False), path,
                                      "metrics.reasoning_token_count", ln),
                chunk_times=times)
    duration = max(ends) if ends else 0.0
    if measured and len(measured) < len(records):
        # AIPerf's benchmark duration is the profiling phase's: its first request start to its
        # last response. Warm-up requests before it must not stretch the throughput divisor.
        m_ends = [e for _, e in measured if e is not None]
        run.measure = (min(s for s, _ in measured), max(m_ends) if m_ends else duration)
    info = RunInfo(backend="import:aiperf", label=f"aiperf:{path.parent.name or path.stem}",
                   scenario={"source": str(path), "format": "aiperf"})
    return run, info, duration, dt.datetime.fromtimestamp(t0_ns / 1e9, dt.UTC)


# -- entry point ------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """Which importer fits ``path``: by extension, then by the JSON's top-level keys."""
    if path.suffix == ".jsonl":
        return "aiperf"
    docs = _load_json(path)
    data = docs[0]
    if isinstance(data, Mapping):
        if "benchmarks" in data and len(docs) == 1:
            return "guidellm"
        if "ttfts" in data or "mean_ttft_ms" in data:
            return "vllm"
    raise InputError(
        "is not a recognised result file (vLLM bench serve JSON, GuideLLM benchmarks.json,"
        " AIPerf profile_export.jsonl); pass --format", path=path,
    )


def import_results(src: str | Path, out: str | Path, *, fmt: str | None = None, label: str | None = None,
                   warn: Callable[[str], None] | None = None) -> list[str]:
    """Import ``src`` into the results store ``out`` (created if needed); returns the new run ids.

    ``warn`` receives each note about the file (also stored with its run), prefixed by the
    run's label, so the CLI can say on stderr what the import could not take at face value.
    """
    path = check_input(src)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    if fmt == "aiperf":
        parsed = [read_aiperf(path)]
    else:
        docs = _load_json(path)
        for ln, data in enumerate(docs, start=1):
            if not isinstance(data, Mapping):
                raise InputError(f"top level is a {type(data).__name__}, expected an object", path=path,
                                 line=ln if len(docs) > 1 else None)
        if fmt == "guidellm":
            if len(docs) > 1:
                raise InputError(f"holds {len(docs)} JSON documents; GuideLLM writes one", path=path)
            parsed = read_guidellm(path, docs[0])
        else:
            parsed = [read_vllm(path, d, i if len(docs) > 1 else None) for i, d in enumerate(docs)]
    ids = []
    with ResultsStore(out) as store:
        for run, info, duration, started in parsed:
            if label:
                info = RunInfo(**{**info.__dict__, "label": label if len(parsed) == 1 else f"{label}:{len(ids)}"})
            try:
                ids.append(run.write(store, info, duration_s=duration, started_at=started))
                for n in run.notes if warn is not None else ():
                    warn(f"{info.label}: {n}")
            except (TypeError, ValueError, pl.exceptions.PolarsError, duckdb.Error) as exc:
                # a field of the wrong type the readers did not check one by one (ids, turns...)
                raise InputError(f"holds a value of the wrong type ({type(exc).__name__}: {str(exc)[:200]})",
                                 path=path) from exc
        store.checkpoint()
    return ids
