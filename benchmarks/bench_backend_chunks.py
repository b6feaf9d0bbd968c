"""How many streamed chunks per second one client process parses and timestamps,
burstbench's OpenAIBackend against a baseline client, side by side.

The baseline is a plain single-loop aiohttp client that reads the stream the way
vLLM's benchmark client did in late 2024 (line iteration over ``resp.content``,
strip, decode, ``removeprefix('data: ')``, ``json.loads``, ``perf_counter`` per
chunk, one ClientSession per request). The server is burstbench's StreamServer in
a separate process, with no delays and many SSE events per write, so the client
is what is measured. Runs alternate (ours, baseline, ours, ...) in the same
minute; the ratio of medians is printed, with client CPU per chunk (process time,
less sensitive to other load on the machine than wall time).

    python benchmarks/bench_backend_chunks.py --concurrency 32 --tokens 2000 --seconds 4

``--mode paced`` runs the same comparison with the server pacing chunks (``--itl``),
so each socket read carries about one chunk, as with a real engine; compare the
CPU per chunk there (the chunk rate is then set by the server).

``--mode accuracy`` instead checks timing: the server at 50 ms TTFT and 20 ms
between chunks, N concurrent streams; it prints how far the client's TTFT and
chunk gaps are from the server's own write times (median, p99).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import aiohttp

from burstbench.backends.base import Request
from burstbench.backends.openai import OpenAIBackend


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "burstbench.testing.stream_server", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    return proc, json.loads(line)["url"]


async def ours(url: str, concurrency: int, tokens: int, seconds: float) -> int:
    chunks = 0
    async with OpenAIBackend(url, model="burstbench-test") as b:
        stop = time.perf_counter() + seconds

        async def user(u: int) -> None:
            nonlocal chunks
            i = 0
            while time.perf_counter() < stop:
                o = await b.send(Request(u * 1_000_000 + i, 16, tokens), time.perf_counter)
                assert o.status == "ok", o.error_message
                chunks += len(o.chunk_t)
                i += 1

        await asyncio.gather(*(user(u) for u in range(concurrency)))
    return chunks


async def baseline_request(url: str, tokens: int) -> int:
    payload = {
        "model": "burstbench-test",
        "prompt": "the " * 16,
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    itl: list[float] = []
    ttft = 0.0
    text = ""
    st = time.perf_counter()
    recent = st
    timeout = aiohttp.ClientTimeout(total=6 * 3600)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url + "/v1/completions", json=payload) as resp,
    ):
        assert resp.status == 200
        async for raw in resp.content:
            raw = raw.strip()
            if not raw:
                continue
            chunk = raw.decode("utf-8").removeprefix("data: ")
            if chunk == "[DONE]":
                continue
            data = json.loads(chunk)
            if choices := data.get("choices"):
                ts = time.perf_counter()
                if ttft == 0.0:
                    ttft = ts - st
                else:
                    itl.append(ts - recent)
                recent = ts
                text += choices[0].get("text") or ""
            elif data.get("usage"):
                pass
    return len(itl) + 1


async def baseline(url: str, concurrency: int, tokens: int, seconds: float) -> int:
    chunks = 0
    stop = time.perf_counter() + seconds

    async def user() -> None:
        nonlocal chunks
        while time.perf_counter() < stop:
            n = await baseline_request(url, tokens)  # not `chunks += await ...` (lost updates)
            chunks += n

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return chunks


def capacity(a: argparse.Namespace) -> None:
    server_args = ["--events-per-write", str(a.events_per_write), "--no-record"]
    if a.mode == "paced":  # one chunk per socket read: the per-read cost dominates
        server_args += ["--itl", str(a.itl)]
    proc, url = start_server(*server_args)
    try:
        rows: dict[str, list[tuple[float, float]]] = {"burstbench": [], "baseline": []}
        for _ in range(a.rounds):
            for name, fn in (("burstbench", ours), ("baseline", baseline)):
                c0, w0 = time.process_time(), time.perf_counter()
                n = asyncio.run(fn(url, a.concurrency, a.tokens, a.seconds))
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                rows[name].append((n / wall, cpu / n * 1e6))
                print(
                    f"{name:10s} {n:9d} chunks  {n / wall:10.0f} chunks/s  "
                    f"{cpu / n * 1e6:6.2f} us CPU/chunk",
                    file=sys.stderr,
                )
    finally:
        proc.terminate()
        proc.wait(10)
    ours_rate = statistics.median(r for r, _ in rows["burstbench"])
    base_rate = statistics.median(r for r, _ in rows["baseline"])
    ours_cpu = statistics.median(c for _, c in rows["burstbench"])
    base_cpu = statistics.median(c for _, c in rows["baseline"])
    print(
        json.dumps(
            {
                "concurrency": a.concurrency,
                "tokens_per_request": a.tokens,
                "events_per_write": a.events_per_write,
                "burstbench_chunks_per_s": round(ours_rate),
                "baseline_chunks_per_s": round(base_rate),
                "rate_ratio": round(ours_rate / base_rate, 2),
                "burstbench_cpu_us_per_chunk": round(ours_cpu, 2),
                "baseline_cpu_us_per_chunk": round(base_cpu, 2),
                "cpu_ratio": round(base_cpu / ours_cpu, 2),
            }
        )
    )


async def accuracy_run(url: str, users: int, tokens: int, seconds: float) -> tuple[list, dict]:
    """``users`` concurrent streams, starts spread over the first second, each user
    sending again as soon as its stream ends, for ``seconds``."""
    outs: list = []
    async with OpenAIBackend(url) as b:
        stop = time.perf_counter() + seconds

        async def user(u: int) -> None:
            await asyncio.sleep(u / users)
            i = 0
            while time.perf_counter() < stop:
                outs.append(await b.send(Request(u * 10_000 + i, 16, tokens), time.perf_counter))
                i += 1

        await asyncio.gather(*(user(u) for u in range(users)))
        prompt_of = {o.request_id: b.prompts.prompt(o.request_id, 16) for o in outs}
    async with aiohttp.ClientSession() as s, s.get(url + "/stats?clear=1&bodies=1") as r:
        stats = await r.json()
    return [(o, prompt_of[o.request_id]) for o in outs], stats


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def accuracy(a: argparse.Namespace) -> None:
    import psutil

    proc, url = start_server("--ttft", "0.05", "--itl", "0.02")
    server_ps = psutil.Process(proc.pid)
    try:
        s0, c0, w0 = server_ps.cpu_times(), time.process_time(), time.perf_counter()
        pairs, stats = asyncio.run(accuracy_run(url, a.concurrency, a.tokens, a.seconds))
        s1, c1, wall = server_ps.cpu_times(), time.process_time(), time.perf_counter() - w0
    finally:
        proc.terminate()
        proc.wait(10)
    # match client outcomes to server records by the prompt (unique per request id)
    recs = stats["records"]
    by_prompt = {r["body"]["prompt"]: r for r in recs}
    ttft_err: list[float] = []
    gap_err: list[float] = []
    for o, prompt in pairs:
        assert o.status == "ok", o.error_message
        r = by_prompt[prompt]
        c, w = list(o.chunk_t), r["write_t"]
        assert len(c) == len(w)
        ttft_err.append((c[0] - w[0]) * 1e3)  # client sees the first chunk this late
        for i in range(1, len(c)):
            gap_err.append(((c[i] - c[i - 1]) - (w[i] - w[i - 1])) * 1e3)
    abs_gap = [abs(x) for x in gap_err]
    print(
        json.dumps(
            {
                "users": a.concurrency,
                "requests": len(pairs),
                "first_chunk_late_ms_median": round(statistics.median(ttft_err), 3),
                "first_chunk_late_ms_p99": round(pct(ttft_err, 0.99), 3),
                "chunk_gap_error_ms_median_abs": round(statistics.median(abs_gap), 3),
                "chunk_gap_error_ms_p99_abs": round(pct(abs_gap, 0.99), 3),
                "client_cpu_pct_of_core": round(100 * (c1 - c0) / wall, 1),
                "server_cpu_pct_of_core": round(
                    100 * (s1.user + s1.system - s0.user - s0.system) / wall, 1
                ),
                "load_average_1m": round(psutil.getloadavg()[0], 2),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", choices=["capacity", "paced", "accuracy"], default="capacity")
    p.add_argument("--itl", type=float, default=0.01, help="paced: seconds between chunks")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=4.0, help="capacity: per run; accuracy: total")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--events-per-write",
        type=int,
        default=64,
        help="capacity: SSE events per server write (1 = one write per chunk, like vLLM)",
    )
    a = p.parse_args()
    if a.mode in ("capacity", "paced"):
        capacity(a)
    else:
        accuracy(a)


if __name__ == "__main__":
    main()
