"""Streaming throughput and emission accuracy of ``burstbench serve`` on one core.

Usage:
    python benchmarks/bench_serve.py [--duration 15] [--concurrency 32,64,128]

The server runs in its own process (``python -m burstbench serve``, Llama-3.1-8B
on H100, real time: ``--time-scale 1``); the load client runs in another process
and keeps C streams open (each request: 200-word prompt, ``max_tokens`` 256,
``ignore_eos``), counting the words of every SSE event (one word per token).
For each concurrency it prints:

- client-observed streamed tokens/s;
- the model's own rate for that batch (tokens the schedule released per second,
  from the server's ``/stats`` counters), and the ratio delivered / scheduled
  (the baseline: 1.0 means the server kept up with the model);
- server-side emission lateness (write time minus the token's deadline) at
  p50 / p99 / max, which the issue bounds at 2 ms p99;
- the server process's CPU use (user+sys seconds per wall second; 1.0 = one core);
- the baseline: a bare asyncio loop sleeping to absolute 10 ms deadlines in its own
  process during the same seconds, i.e. the timer and scheduling jitter this machine
  imposes on any Python server; the server's p99 is printed as a ratio to it.

The issue's bar: >= 5,000 tokens/s with p99 lateness <= 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def client(url: str, concurrency: int, duration: float) -> dict[str, float]:
    import aiohttp

    body = {
        "prompt": " ".join(f"w{i}" for i in range(200)),
        "max_tokens": 256,
        "ignore_eos": True,
        "stream": True,
    }
    tokens = 0
    events = 0
    errors = 0
    stop_at = time.perf_counter() + duration

    async def worker(session: aiohttp.ClientSession, k: int) -> None:
        nonlocal tokens, events, errors
        i = 0
        while time.perf_counter() < stop_at:
            b = dict(body, prompt=f"c{k} r{i} " + body["prompt"])  # distinct prompts: no prefix hits
            i += 1
            try:
                async with session.post(url + "/v1/completions", json=b) as r:
                    if r.status != 200:
                        errors += 1
                        continue
                    async for line in r.content:
                        if line.startswith(b'data: {"id"'):
                            # the text field without a full JSON parse (the client must not be the bottleneck)
                            i = line.find(b'"text":"')
                            if i >= 0:
                                j = line.find(b'"', i + 8)
                                n = len(line[i + 8 : j].split())
                                if n:
                                    tokens += n
                                    events += 1
                        if time.perf_counter() >= stop_at:
                            return
            except aiohttp.ClientError:
                errors += 1

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        t0 = time.perf_counter()
        c0 = time.process_time()
        await asyncio.gather(*(worker(session, k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu = (time.process_time() - c0) / wall
    return {"tokens": tokens, "events": events, "errors": errors, "wall": wall, "tokens_per_s": tokens / wall, "cpu": cpu}


async def timer_baseline(duration: float, period: float = 0.01) -> dict[str, float]:
    """A bare asyncio loop sleeping to absolute deadlines: the machine's own timer jitter.

    Run beside the server in the same period, it shows how much of the server's
    lateness the OS scheduler and timers cause on this (shared) machine.
    """
    loop = asyncio.get_running_loop()
    late = []
    t = loop.time()
    end = t + duration
    while t < end:
        t += period
        d = t - loop.time()
        if d > 0:
            await asyncio.sleep(d)
        late.append(loop.time() - t)
    late.sort()
    return {"n": len(late), "p50": late[len(late) // 2], "p99": late[int(0.99 * (len(late) - 1))], "max": late[-1]}


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def get_json(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def run_level(concurrency: int, duration: float) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "burstbench", "serve", "--port", "0", "--time-scale", "1", "--max-num-seqs", "256"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        url = json.loads(server.stdout.readline())["url"]
        before = get_json(url + "/stats")
        cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
        base = subprocess.Popen(
            [sys.executable, __file__, "--timer-baseline", "--duration", str(duration)], stdout=subprocess.PIPE, text=True
        )
        out = subprocess.run(
            [sys.executable, __file__, "--client", url, "--concurrency", str(concurrency), "--duration", str(duration)],
            capture_output=True,
            text=True,
            timeout=duration + 120,
        )
        timer = json.loads(base.communicate(timeout=duration + 60)[0])
        cpu = (cpu_seconds(server.pid) - cpu0) / (time.perf_counter() - t0)
        if out.returncode != 0:
            print(f"C={concurrency}: client failed: {out.stderr.strip()[-500:]}")
            return
        res = json.loads(out.stdout)
        after = get_json(url + "/stats")
        lat = after["lateness_s"]
        sched = (after["generation_tokens"] - before["generation_tokens"]) / res["wall"]
        ok = res["tokens_per_s"] >= 5000 and (lat["p99"] or 0) <= 0.002
        print(
            f"C={concurrency:4d}: client {res['tokens_per_s']:8.0f} tok/s ({res['events']} events, {res['errors']} errors); "
            f"model schedule {sched:8.0f} tok/s; delivered/scheduled {res['tokens_per_s'] / sched:.3f}; "
            f"lateness p50 {lat['p50'] * 1e3:.2f} ms p99 {lat['p99'] * 1e3:.2f} ms max {lat['max'] * 1e3:.1f} ms "
            f"(n={lat['n']}); CPU server {cpu:.2f} / client {res['cpu']:.2f} cores; bar {'met' if ok else 'not met'}"
        )
        print(
            f"        bare asyncio timer beside it (same period): lateness p50 {timer['p50'] * 1e3:.2f} ms "
            f"p99 {timer['p99'] * 1e3:.2f} ms max {timer['max'] * 1e3:.1f} ms; "
            f"server/timer p99 ratio {lat['p99'] / max(timer['p99'], 1e-6):.1f}"
        )
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--concurrency", default="32,64,128")
    ap.add_argument("--client", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timer-baseline", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.timer_baseline:
        print(json.dumps(asyncio.run(timer_baseline(args.duration))))
        return
    if args.client:
        conc = int(args.concurrency)
        print(json.dumps(asyncio.run(client(args.client, conc, args.duration))))
        return
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    for c in (int(x) for x in args.concurrency.split(",")):
        run_level(c, args.duration)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
