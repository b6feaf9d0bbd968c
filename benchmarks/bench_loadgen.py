"""The load generator end to end (runner + OpenAIBackend + recorder) against a baseline.

Three measurements from issue 3, each side by side with a baseline run in the same
minute against the same server (``burstbench.testing.stream_server`` in its own
process, so client and server never share a loop):

``capacity``  streamed chunks per second parsed, timestamped *and recorded* per
              client process (``burstbench.loadgen`` with --workers 1, 2) vs a plain
              single-loop aiohttp client that only parses and timestamps, reading the
              stream the way vLLM's late-2024 benchmark client did (a ClientSession per
              request, line iteration, json.loads per chunk). Also chunks per
              client CPU-second, which is less sensitive to other load on the host.
``accuracy``  server at 50 ms TTFT, 20 ms between chunks, Poisson arrivals (seed 0) at
              ``--rates`` (issue 15: 77 and 154 req/s with 128 tokens, ~200 and ~400
              open streams) or enough for ``--streams``: send lag (sent - scheduled), and
              per request, client TTFT vs the server's write times on the shared
              monotonic clock (= when the client saw the first chunk - when the
              server wrote it), per chunk, client chunk gap vs the server's write gap
              (median, p99 of the difference). Also shown: request transit (sent ->
              read by the server's handler) and client TTFT - the server's handler
              TTFT, which contains that transit. Requests are matched by a unique
              model name.
``loopcpu``    the event loop alone, in the bench process (64 streams x 256 tokens, as
              issue 15's experiment A): chunks per CPU-second of the vLLM-style reader,
              of burstbench's worker loop on the stdlib loop, and on uvloop.
``schedule``  Poisson at 1,000 requests/s with 1-token answers for 10 s: achieved
              rate vs target and the plan, schedule lag p50/p99 (--workers 1 and 2),
              vs a baseline sender that sleeps a random gap after each send (vLLM's
              ``get_request`` loop), which drifts.

Where a worker's time goes (issue 15; py-spy at 250 Hz on the worker process under
``accuracy --streams 200 --tokens 50``: 194 req/s, ~10k chunks/s; stdlib loop, busy
samples): reading the stream (aiohttp's StreamReader + our loop body) 22%, asyncio's
own loop and task machinery 22%, the send path 21% (aiohttp's request machinery 70%
of it, TCP connects 22%, body building 8%), aiohttp's response parsing incl. the
timed protocol 17%, JSON decode 9%, SSE split 6%, rows and batches 1%. Changed there:
uvloop (the loop machinery in C), connections opened before the start (``warm``),
bodies built 20 ms before the deadline (``prepare``). Left: a task wake-up and
StreamReader per socket read (parsing SSE in the protocol callback would remove both),
and on Python 3.11 aiohttp writes the body one loop turn after the headers (3.12+
writes it eagerly).

Second pass (issue 15, experiment A; py-spy at 500 Hz on ``loopcpu``'s worker loop,
uvloop, 1,024 requests x 256 tokens, server unpaced; shares of the streaming loop):
JSON decode 21%, aiohttp's ``readany`` 18% (10 points of it ``resume_reading``, which aiohttp
3.14 calls after every read that leaves its buffer low, paused or not: it re-feeds its
parser ``b""`` and resumes a transport that was never paused), aiohttp's
``data_received`` with HTTP parsing 16%, SSE split 11%, the rest our loop body, the
send path and the loop. Changed: orjson decodes first (``_decode_event``): callgrind
(same process, ``--itl 0.005``, per chunk after subtracting start-up) 45.4k -> 35.0k
instructions per chunk (-23%); ``loopcpu --repeats 7``: 110k -> 122k chunks/CPU-s on
uvloop (1.47x -> 1.63x the vLLM-style reader; load 5 on 2 cores). Also fixed: that
``data_received(b"")`` restamped the arrival time. Measured, not changed: skipping
``resume_reading`` when nothing is paused cuts another 16% (29.5k instructions per
chunk) but leans on aiohttp's private flow-control state, which differs across the
aiohttp versions pyproject allows. With a paced server (``loopcpu --itl 0.01``: 64
streams, 6,400 chunks/s) the loop sleeps between reads and per-read wake-ups
dominate: ~36k chunks/CPU-s for burstbench and the vLLM-style reader alike, so the
per-chunk savings above barely show there.

    python benchmarks/bench_loadgen.py capacity
    python benchmarks/bench_loadgen.py accuracy --rates 77 154 --tokens 128 --workers 1 2 --asyncio
    python benchmarks/bench_loadgen.py loopcpu
    python benchmarks/bench_loadgen.py schedule
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import duckdb
import numpy as np
import polars as pl

from burstbench.backends.openai import OpenAIBackend
from burstbench.loadgen.runner import execute
from burstbench.loadgen.scenario import Scenario
from burstbench.loadgen.schedule import poisson_times
from burstbench.traces.schema import Trace, conform


# -- server in its own process --------------------------------------------------------
def _serve(argv: list[str]) -> None:
    """Child process: a StreamServer that dumps (model, received, write times) on SIGINT."""
    from burstbench.testing.stream_server import StreamServer, _parser, settings_from_args

    p = _parser()
    p.add_argument("--dump", required=True)
    a = p.parse_args(argv)

    async def main() -> None:
        srv = StreamServer(settings_from_args(a), record=not a.no_record, max_records=a.max_records)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with srv:
            print(json.dumps({"url": srv.url}), flush=True)
            await stop.wait()
            rows = [(r.body.get("model"), r.received_s, r.write_t) for r in srv.records]
            Path(a.dump).write_text(json.dumps(rows))

    asyncio.run(main())


class Server:
    def __init__(self, *args: str) -> None:
        self.dump = tempfile.mktemp(suffix=".json")
        self.proc = subprocess.Popen([sys.executable, __file__, "_serve", "--dump", self.dump, *args],
                                     stdout=subprocess.PIPE, text=True)
        self.url = json.loads(self.proc.stdout.readline())["url"]

    def stop(self) -> list:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        try:
            return json.loads(Path(self.dump).read_text())
        finally:
            Path(self.dump).unlink(missing_ok=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def cpu_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def make_trace(n: int, out_tokens: int, gap: float = 0.0, unique_models: bool = False,
               arrivals: np.ndarray | None = None) -> Trace:
    times = arrivals.tolist() if arrivals is not None else [i * gap for i in range(n)]
    data = {"arrival_s": times, "input_tokens": [16] * n, "output_tokens": [out_tokens] * n}
    if unique_models:
        data["model"] = [f"m{i}" for i in range(n)]
    return Trace(conform(pl.DataFrame(data)))


@contextlib.contextmanager
def stdlib_loop(on: bool) -> Iterator[None]:
    """Worker processes (they inherit the environment) on the stdlib asyncio loop: the
    design before uvloop, side by side in the same run."""
    old = os.environ.get("BURSTBENCH_LOOP")
    if on:
        os.environ["BURSTBENCH_LOOP"] = "asyncio"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BURSTBENCH_LOOP", None)
        else:
            os.environ["BURSTBENCH_LOOP"] = old


def ours(trace: Trace, sc: Scenario, tmp: str, factory=None) -> tuple[str, float, float, Path]:
    out = Path(tmp) / f"r{time.monotonic_ns()}.duckdb"
    c0, t0 = cpu_s(), time.perf_counter()
    res = execute(trace, sc, out, progress=False, backend_factory=factory, worker_process=True)
    return res.run_id, time.perf_counter() - t0, cpu_s() - c0, out


# -- baseline: a plain single-loop aiohttp client, read the way vLLM's did ----------------
async def vllm_style_request(url: str, body: dict) -> tuple[float, list[float]]:
    """One streamed completion as vLLM's late-2024 ``backend_request_func`` read it: a
    ClientSession per request, line iteration, strip, decode, removeprefix, json.loads,
    ``perf_counter`` per chunk with choices, ITL list, text accumulated. Returns
    (sent, absolute chunk times)."""
    times: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=6 * 3600)) as session:
        generated_text = ""
        itl: list[float] = []
        st = time.perf_counter()
        most_recent = st
        async with session.post(url + "/v1/completions", json=body) as response:
            async for chunk_bytes in response.content:
                chunk_bytes = chunk_bytes.strip()
                if not chunk_bytes:
                    continue
                chunk = chunk_bytes.decode("utf-8").removeprefix("data: ")
                if chunk != "[DONE]":
                    data = json.loads(chunk)
                    if choices := data.get("choices"):
                        text = choices[0].get("text")
                        timestamp = time.perf_counter()
                        if times:
                            itl.append(timestamp - most_recent)
                        times.append(timestamp)
                        most_recent = timestamp
                        generated_text += text or ""
    return st, times


async def _baseline_capacity(url: str, n: int, concurrency: int, tokens: int) -> int:
    chunks = 0
    queue = list(range(n))

    async def user() -> None:
        nonlocal chunks
        while queue:
            queue.pop()
            body = {"model": "burstbench-test", "prompt": "hello " * 16, "max_tokens": tokens, "stream": True,
                    "ignore_eos": True}
            _, times = await vllm_style_request(url, body)
            chunks += len(times)

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return chunks


def capacity(a: argparse.Namespace) -> None:
    print(f"# capacity: {a.requests} requests x {a.tokens} tokens, {a.concurrency} streams; {load()}")
    srv = Server("--no-record", "--events-per-write", str(a.events_per_write))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trace = make_trace(a.requests, a.tokens)
            results: dict[str, list[tuple[float, float]]] = {}
            for rep in range(a.repeats):
                for name in (["baseline", "burstbench w1"] + [f"burstbench w{w}" for w in a.workers if w > 1]
                             + (["burstbench w1 asyncio"] if a.asyncio else [])):
                    if name == "baseline":
                        c0, t0 = cpu_s(), time.perf_counter()
                        chunks = asyncio.run(_baseline_capacity(srv.url, a.requests, a.concurrency, a.tokens))
                        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
                    else:
                        w = int(name.split()[1][1:])
                        sc = Scenario(url=srv.url, mode="closed", concurrency=a.concurrency,
                                      max_requests=a.requests, workers=w, scrape_metrics=False)
                        with stdlib_loop(name.endswith("asyncio")):
                            run_id, wall, cpu, out = ours(trace, sc, tmp)
                        con = duckdb.connect(str(out), read_only=True)
                        chunks = con.execute("SELECT count(*) FROM chunks WHERE run_id = ?", [run_id]).fetchall()[0][0]
                        # the streaming window (first send to last chunk), without process start-up
                        window = con.execute("SELECT max(end_s) - min(sent_s) FROM requests WHERE run_id = ?",
                                             [run_id]).fetchall()[0][0]
                        con.close()
                    results.setdefault(name, []).append((chunks / wall, chunks / cpu))
                    print(f"  rep {rep} {name:15s} chunks={chunks} wall={wall:.2f}s cpu={cpu:.2f}s "
                          f"-> {chunks / wall:,.0f} chunks/s, {chunks / cpu:,.0f} chunks/CPU-s", flush=True)
                    if name != "baseline":
                        print(f"      streaming window (first send to last end, no process start-up) "
                              f"{window:.2f}s: {chunks / window:,.0f} chunks/s", flush=True)
    finally:
        srv.stop()
    base = np.median([r[0] for r in results["baseline"]])
    base_cpu = np.median([r[1] for r in results["baseline"]])
    print(f"# medians ({load()})")
    for name, rs in results.items():
        w, c = np.median([r[0] for r in rs]), np.median([r[1] for r in rs])
        print(f"  {name:15s} {w:10,.0f} chunks/s ({w / base:.2f}x baseline)   "
              f"{c:10,.0f} chunks/CPU-s ({c / base_cpu:.2f}x baseline)")


async def _core_chunks(url: str, n: int, concurrency: int, tokens: int) -> int:
    """burstbench's worker loop alone (WorkerCore + OpenAIBackend, rows batched as in a
    run, no supervisor): closed loop of ``concurrency`` users, ``n`` requests."""
    from burstbench.loadgen.dispatch import WorkerCore
    from burstbench.loadgen.schedule import build_plan

    backend = OpenAIBackend(url, discover_model=False, model="burstbench-test")
    await backend.start()
    try:
        plan = build_plan(make_trace(n, tokens), Scenario(url=url, mode="closed", concurrency=concurrency,
                                                          max_requests=n))
        batches: list[dict] = []
        core = WorkerCore(plan, backend, batches.append, t0=time.monotonic() + 0.01)
        await core.run()
    finally:
        await backend.close()
    return sum(len(b["chunk_t"]) for b in batches)


def loopcpu(a: argparse.Namespace) -> None:
    """Chunks per CPU-second of the event loop alone, in this process (``time.process_time``
    around the streaming only: no process start-up, no supervisor), so the figure depends
    little on other load on the host: the vLLM-style reader (asyncio), burstbench's worker
    loop on the stdlib loop (the design before) and on uvloop."""
    import uvloop

    from burstbench.backends import answers

    fast_json = answers._orjson_loads
    print(f"# loopcpu: {a.requests} requests x {a.tokens} tokens, {a.concurrency} streams; {load()}")
    srv = Server("--no-record", "--events-per-write", str(a.events_per_write), "--itl", str(a.itl))
    runs = {"baseline (vLLM-style, asyncio)": (asyncio.run, _baseline_capacity, None),
            "burstbench loop, asyncio": (asyncio.run, _core_chunks, fast_json),
            "burstbench loop, uvloop": (uvloop.run, _core_chunks, fast_json)}
    if fast_json is not None:  # the decode before orjson, side by side
        runs["burstbench loop, uvloop, stdlib json"] = (uvloop.run, _core_chunks, None)
    results: dict[str, list[float]] = {}
    try:
        for rep in range(a.repeats):
            for name, (runner, fn, loads) in runs.items():
                answers._orjson_loads = loads
                c0, t0 = time.process_time(), time.perf_counter()
                chunks = runner(fn(srv.url, a.requests, a.concurrency, a.tokens))
                cpu, wall = time.process_time() - c0, time.perf_counter() - t0
                results.setdefault(name, []).append(chunks / cpu)
                print(f"  rep {rep} {name:32s} chunks={chunks} cpu={cpu:.2f}s wall={wall:.2f}s -> "
                      f"{chunks / cpu:,.0f} chunks/CPU-s", flush=True)
    finally:
        answers._orjson_loads = fast_json
        srv.stop()
    base = float(np.median(results["baseline (vLLM-style, asyncio)"]))
    print(f"# medians over {a.repeats} alternating repeats ({load()})")
    for name, rs in results.items():
        m = float(np.median(rs))
        print(f"  {name:32s} {m:10,.0f} chunks/CPU-s ({m / base:.2f}x baseline) [{min(rs):,.0f}-{max(rs):,.0f}]")


async def _baseline_accuracy(url: str, arrivals: np.ndarray, tokens: int) -> tuple[dict[int, tuple[float, list[float]]],
                                                                                   float]:
    """The vLLM-style reader on one loop, open loop at the same arrival times (absolute deadlines).

    Returns the requests and the ``perf_counter`` time of arrival 0."""
    out: dict[int, tuple[float, list[float]]] = {}

    async def one(i: int) -> None:
        body = {"model": f"m{i}", "prompt": "hello " * 16, "max_tokens": tokens, "stream": True, "ignore_eos": True}
        out[i] = await vllm_style_request(url, body)

    t0 = time.perf_counter() + 0.05
    tasks = []
    for i, t in enumerate(arrivals):
        delay = t0 + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    return out, t0


def _compare(client: dict[int, tuple[float, np.ndarray]], server: dict[str, tuple[float, list[float]]],
             scheduled: dict[int, float]) -> tuple[str, dict[str, float]]:
    """Client vs server per request and per chunk gap; all times are ``perf_counter`` seconds.

    ``perf_counter`` is CLOCK_MONOTONIC on Linux, one clock for every process on the
    host, so client timestamps and the server's write times compare directly:

    * TTFT error = client TTFT - (server's first write - client's sent time) = client's
      first-chunk time - server's first write: how late the client saw the first token
      the server wrote (loopback delivery plus the client's own timestamping);
    * request transit = server's request read - client's sent time (loopback plus the
      server's HTTP parsing): real latency a user sees, not client error, and the part
      by which TTFT exceeds the server's own handler-to-first-write TTFT;
    * chunk gap error = client chunk gap - server write gap;
    * send lag = client's sent time - its scheduled time (``scheduled``, same clock).
    """
    d_ttft, d_gap, c_ttft, s_ttft, transit, d_handler = [], [], [], [], [], []
    lag = np.asarray([client[r][0] - scheduled[r] for r in client if r in scheduled]) * 1e3
    for rid, (sent, times) in client.items():
        recv, writes = server[f"m{rid}"]
        if len(times) != len(writes) or not len(times):
            continue
        c_ttft.append(times[0] - sent)
        s_ttft.append(writes[0] - recv)
        d_ttft.append(times[0] - writes[0])
        transit.append(recv - sent)
        d_handler.append(c_ttft[-1] - s_ttft[-1])
        d_gap.extend(np.diff(np.asarray(times)) - np.diff(np.asarray(writes)))
    dt, dg = np.asarray(d_ttft) * 1e3, np.asarray(d_gap) * 1e3
    tr, dh = np.asarray(transit) * 1e3, np.asarray(d_handler) * 1e3
    stats = {"ttft_d_median": float(np.median(dt)), "ttft_d_p99": float(np.percentile(dt, 99)),
             "gap_d_median": float(np.median(dg)), "gap_absd_p99": float(np.percentile(np.abs(dg), 99)),
             "transit_median": float(np.median(tr)), "transit_p99": float(np.percentile(tr, 99)),
             "handler_d_median": float(np.median(dh)), "handler_d_p99": float(np.percentile(dh, 99)),
             "lag_median": float(np.median(lag)), "lag_p99": float(np.percentile(lag, 99))}
    return (f"{len(d_ttft)} requests; send lag p50 {stats['lag_median']:.2f} ms, p99 {stats['lag_p99']:.2f} ms; TTFT client median {np.median(c_ttft) * 1e3:.2f} ms; first chunk seen - "
            f"first written: median {np.median(dt):+.3f} ms, p99 {np.percentile(dt, 99):+.3f} ms | request "
            f"sent -> read by server: median {np.median(tr):.3f} ms, p99 {np.percentile(tr, 99):.3f} ms | client TTFT"
            f" - server handler TTFT ({np.median(s_ttft) * 1e3:.2f} ms): median {np.median(dh):+.3f} ms | chunk gap -"
            f" server write gap over {dg.size} gaps: median {np.median(dg):+.3f} ms, p99 |d| "
            f"{np.percentile(np.abs(dg), 99):.3f} ms"), stats


def _perf_origin(con: duckdb.DuckDBPyConnection, run_id: str) -> float:
    """``perf_counter`` value of the run's t=0, from ``runs.started_at`` (wall clock at t=0)."""
    started = con.execute("SELECT epoch_us(started_at) / 1e6 FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]
    offsets = []
    for _ in range(5):  # wall - perf, read back to back; keep the tightest pair
        a, w, b = time.perf_counter(), time.time(), time.perf_counter()
        offsets.append((b - a, w - (a + b) / 2))
    return started - min(offsets)[1]


ACCURACY_FIGURES = (  # (key, label): every figure in ms, client - server unless said
    ("lag_median", "send lag (sent - scheduled) p50"), ("lag_p99", "send lag p99"),
    ("ttft_d_median", "TTFT error (first chunk seen - first written) p50"), ("ttft_d_p99", "TTFT error p99"),
    ("gap_d_median", "chunk gap error p50"), ("gap_absd_p99", "chunk gap error p99 |d|"),
    ("transit_median", "request transit (sent -> read by server) p50"), ("transit_p99", "request transit p99"),
    ("handler_d_median", "client TTFT - server handler TTFT p50"), ("handler_d_p99", "client - handler TTFT p99"),
)


def accuracy(a: argparse.Namespace) -> None:
    """Each rate (or --streams) in turn; the clients alternate within it, same minutes."""
    per_request_s = 0.05 + 0.02 * (a.tokens - 1)
    rates = a.rates or [a.streams / per_request_s]  # arrivals that keep ~streams in flight
    names = ["baseline"] + [f"burstbench w{w}" for w in a.workers] + (["burstbench w1 asyncio"] if a.asyncio else [])
    for rate in rates:
        n = int(rate * a.seconds)
        print(f"# accuracy: TTFT 50 ms, ITL 20 ms, {a.tokens} tokens, {rate:.0f} req/s (~{rate * per_request_s:.0f} "
              f"in flight), {n} requests; {load()}")
        trace = make_trace(n, a.tokens, unique_models=True, arrivals=poisson_times(rate, seed=0, n=n))
        results: dict[str, list[dict[str, float]]] = {}
        for rep, name in [(r, nm) for r in range(a.repeats) for nm in names]:  # alternate, same minutes
            text, stats, cpu = _accuracy_run(name, trace, a.tokens)
            results.setdefault(name, []).append(stats)
            print(f"  rep {rep} {name:22s} client CPU {cpu:.1f}s: {text}", flush=True)
        print(f"# {rate:.0f} req/s: medians over {a.repeats} alternating repeats ({load()}); ms; (x) = vs baseline")
        med = {name: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for name, rs in results.items()}
        print("  " + f"{'figure':50s}" + "".join(f"{nm:>28s}" for nm in med))
        for key, label in ACCURACY_FIGURES:
            base = med["baseline"][key]
            cells = [f"{med['baseline'][key]:+.3f}"] + [
                f"{m[key]:+.3f} ({m[key] / base:.2f}x)" if base else f"{m[key]:+.3f}"
                for nm, m in med.items() if nm != "baseline"]
            print("  " + f"{label:50s}" + "".join(f"{c:>28s}" for c in cells))


def _accuracy_run(name: str, trace: Trace, tokens: int) -> tuple[str, dict[str, float], float]:
    """One client against a fresh server; (text, stats, client CPU seconds)."""
    srv = Server("--ttft", "0.05", "--itl", "0.02")
    try:
        if name == "baseline":
            c0 = cpu_s()
            got, t0 = asyncio.run(_baseline_accuracy(srv.url, trace.df["arrival_s"].to_numpy(), tokens))
            client = {i: (sent, np.asarray(ts)) for i, (sent, ts) in got.items()}
            scheduled = {i: t0 + t for i, t in enumerate(trace.df["arrival_s"].to_list())}
            cpu = cpu_s() - c0
        else:
            with tempfile.TemporaryDirectory() as tmp:
                sc = Scenario(url=srv.url, workers=int(name.split()[1][1:]), scrape_metrics=False)
                # send each trace row's unique model name, so server records match client rows
                factory = functools.partial(OpenAIBackend, srv.url, use_request_model=True, discover_model=False)
                with stdlib_loop(name.endswith("asyncio")):
                    run_id, _wall, cpu, out = ours(trace, sc, tmp, factory)
                con = duckdb.connect(str(out), read_only=True)
                req = con.sql("SELECT request_id, scheduled_s, sent_s FROM requests WHERE run_id = ? AND status = 'ok'",
                              params=[run_id]).pl()
                ch = con.sql("SELECT request_id, t_s FROM chunks WHERE run_id = ? ORDER BY request_id, seq",
                             params=[run_id]).pl()
                origin = _perf_origin(con, run_id)
                con.close()
            by_req = {k[0]: g["t_s"].to_numpy() + origin for k, g in ch.group_by("request_id")}
            client = {r: (s + origin, by_req.get(r, np.zeros(0)))
                      for r, s in zip(req["request_id"], req["sent_s"], strict=True)}
            scheduled = {r: s + origin for r, s in zip(req["request_id"], req["scheduled_s"], strict=True)}
    finally:
        records = srv.stop()
    server = {m: (recv, w) for m, recv, w in records}
    text, stats = _compare(client, server, scheduled)
    return text, stats, cpu


async def _baseline_schedule(url: str, rate: float, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """vLLM's ``get_request`` loop: create the request task, then sleep a fresh exponential gap.

    Relative sleeps accumulate every late wake-up, so the sender drifts behind its own
    Poisson plan; 'sent' here is when the task was created (the write is later still)."""
    rng = np.random.default_rng(seed)
    sent: list[float] = []
    plan: list[float] = []
    tasks = set()
    body = {"model": "burstbench-test", "prompt": "hi", "max_tokens": 1, "stream": True}
    t0 = time.perf_counter()
    ideal = 0.0
    while time.perf_counter() - t0 < seconds:
        sent.append(time.perf_counter() - t0)
        plan.append(ideal)
        task = asyncio.ensure_future(vllm_style_request(url, body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        gap = rng.exponential(1.0 / rate)
        ideal += gap
        await asyncio.sleep(gap)
    await asyncio.gather(*tasks, return_exceptions=True)
    return np.asarray(plan), np.asarray(sent)


def schedule(a: argparse.Namespace) -> None:
    print(f"# schedule: Poisson {a.rate:.0f} req/s, 1-token answers, {a.seconds:.0f} s; {load()}")
    srv = Server("--no-record")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base_plan, base_sent = asyncio.run(_baseline_schedule(srv.url, a.rate, a.seconds, a.seed))
            n = base_sent.size
            lag = (base_sent - base_plan) * 1e3
            print(f"  baseline (sleep after send): {n} sent in {a.seconds:.0f}s -> {n / a.seconds:.1f} req/s "
                  f"({(n / a.seconds) / a.rate - 1:+.2%} vs target); drift from its own Poisson plan at the end "
                  f"{lag[-1]:.1f} ms, lag p50 {np.percentile(lag, 50):.2f} ms, p99 {np.percentile(lag, 99):.2f} ms")
            trace = make_trace(10, 1)
            for w, poisson in [(w, p) for p in a.poisson for w in a.workers]:
                sc = Scenario(url=srv.url, mode="rate", rate=a.rate, duration_s=a.seconds, workers=w,
                              scrape_metrics=False, seed=a.seed, poisson=poisson)
                run_id, _wall, cpu, out = ours(trace, sc, tmp)
                con = duckdb.connect(str(out), read_only=True)
                r = con.sql("SELECT scheduled_s, sent_s, status FROM requests WHERE run_id = ?",
                            params=[run_id]).pl()
                errors = con.execute("SELECT error_class, count(*) FROM requests WHERE run_id = ? AND status <> 'ok' "
                                     "GROUP BY 1 ORDER BY 2 DESC", [run_id]).fetchall()
                con.close()
                sched, sent = np.sort(r["scheduled_s"].to_numpy()), np.sort(r["sent_s"].to_numpy())
                lag = (r["sent_s"] - r["scheduled_s"]).to_numpy() * 1e3
                plan_rate = (sched.size - 1) / (sched[-1] - sched[0])
                got_rate = (sent.size - 1) / (sent[-1] - sent[0])
                ok = int((r["status"] == "ok").sum())
                print(f"  burstbench --workers {w} --poisson {poisson}: {r.height} sent ({ok} ok) -> achieved {got_rate:.1f} req/s, "
                      f"plan {plan_rate:.1f} ({got_rate / plan_rate - 1:+.2%} vs plan, "
                      f"{r.height / a.seconds / a.rate - 1:+.2%} count vs target); lag p50 {np.percentile(lag, 50):.2f} ms,"
                      f" p99 {np.percentile(lag, 99):.2f} ms, max {lag.max():.1f} ms; client CPU {cpu:.1f}s"
                      + (f"; failures {errors}" if errors else ""), flush=True)
    finally:
        srv.stop()
    print(f"# {load()}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        _serve(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capacity")
    c.add_argument("--requests", type=int, default=128)
    c.add_argument("--tokens", type=int, default=1000)
    c.add_argument("--concurrency", type=int, default=32)
    c.add_argument("--events-per-write", type=int, default=1)
    c.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    c.add_argument("--asyncio", action="store_true", help="also burstbench w1 on the stdlib loop (before uvloop)")
    c.add_argument("--repeats", type=int, default=2)
    lc = sub.add_parser("loopcpu")
    lc.add_argument("--requests", type=int, default=64)
    lc.add_argument("--tokens", type=int, default=256)
    lc.add_argument("--concurrency", type=int, default=64)
    lc.add_argument("--events-per-write", type=int, default=1)
    lc.add_argument("--itl", type=float, default=0.0,
                    help="server's seconds between chunks; 0 = as fast as it can (a slower client then "
                         "gets more events per read); a pace below every client's capacity (e.g. 0.01) "
                         "gives all of them one event per read")
    lc.add_argument("--repeats", type=int, default=5)
    ac = sub.add_parser("accuracy")
    ac.add_argument("--streams", type=int, default=200)
    ac.add_argument("--tokens", type=int, default=50)
    ac.add_argument("--seconds", type=float, default=8.0)
    ac.add_argument("--rates", type=float, nargs="+", default=None,
                    help="arrival rates to run (issue 15: 77 154 with --tokens 128); default: from --streams")
    ac.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ac.add_argument("--asyncio", action="store_true", help="also burstbench w1 on the stdlib loop (before uvloop)")
    ac.add_argument("--repeats", type=int, default=3)
    s = sub.add_parser("schedule")
    s.add_argument("--rate", type=float, default=1000.0)
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    s.add_argument("--poisson", nargs="+", default=["exact", "pure"], choices=["exact", "pure"])
    s.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    {"capacity": capacity, "loopcpu": loopcpu, "accuracy": accuracy, "schedule": schedule}[a.cmd](a)


if __name__ == "__main__":
    main()
