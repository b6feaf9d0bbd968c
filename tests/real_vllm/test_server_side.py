"""What vLLM itself says: its ``/metrics`` in telemetry and the report, its prefix cache.

The prefix-cache test writes a Mooncake-style trace (``hash_ids`` of 512-token
blocks) and replays it one request at a time with the model's tokenizer, so each
prompt is exactly its ``input_length`` tokens and requests sharing leading hashes
share exactly those blocks' tokens. The hit rate the trace implies is computed
here from the hashes alone, with vLLM's accounting rules, and must equal the one
vLLM's own counters (``vllm:prefix_cache_hits`` / ``_queries``) report.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import duckdb
from conftest import scrape

from burstbench.testing.vllm_cpu import BLOCK_SIZE


def bb(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "burstbench", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_vllm_metrics_land_in_telemetry_and_the_report_server_section(vllm_server, tmp_path):
    trace = tmp_path / "m.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": 150 * i, "input_length": 300, "output_length": 32})
                             + "\n" for i in range(20)))
    out = tmp_path / "r.duckdb"
    before = scrape(vllm_server.url)
    proc = bb("run", "--url", vllm_server.url, "--trace", str(trace), "-o", str(out), "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr
    after = scrape(vllm_server.url)
    assert json.loads(proc.stdout)["completed"] == 20
    # vLLM counted what burstbench sent (its own counters, not ours)
    assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == 20
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 20 * 32
    con = duckdb.connect(str(out), read_only=True)
    try:
        names = {r[0] for r in con.execute("SELECT DISTINCT name FROM telemetry WHERE source = 'server'").fetchall()}
        peak = con.execute("SELECT max(value) FROM telemetry WHERE name = 'vllm:num_requests_running'").fetchone()[0]
    finally:
        con.close()
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
            "vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:request_success_total",
            "vllm:prefix_cache_queries_total", "vllm:time_to_first_token_seconds_sum"} <= names
    assert peak >= 1  # the scrapes saw requests running
    html = tmp_path / "r.html"
    proc = bb("report", str(out), "-o", str(html))
    assert proc.returncode == 0, proc.stderr
    page = html.read_text()
    m = re.search(r'<section id="server">(.*?)</section>', page, re.S)
    assert m, "the report has no server section"
    titles = set(re.findall(r"<h3>([^<]*)</h3>", m.group(1)))
    assert "vllm:num_requests_running (server)" in titles
    assert "vllm:generation_tokens_total rate (/s) (server)" in titles


# (hash_ids, input_length): 512-token blocks; the last one may be partial
REQUESTS = [
    ([1, 2, 3], 1400),
    ([1, 2, 4], 1300),  # shares 2 blocks with the first
    ([1, 5], 900),  # shares 1
    ([6, 7], 1024),  # shares none
    ([6, 7, 8], 1500),  # shares 2 (the whole of the previous prompt)
    ([1, 2, 3], 1400),  # the first prompt again: every token shared
]
MOONCAKE_BLOCK = 512


def implied_hits(requests: list[tuple[list[int], int]], bos: int) -> tuple[int, int]:
    """(hit tokens, queried tokens) that vLLM's prefix cache should report for this trace.

    A prompt is ``bos`` special tokens then its words, one token each; requests with
    the same leading hashes share those blocks' tokens. vLLM reuses whole KV blocks of
    ``BLOCK_SIZE`` tokens and always recomputes the last prompt token, so a request
    hits ``floor(min(shared, prompt - 1) / BLOCK_SIZE) * BLOCK_SIZE`` tokens."""
    hits = queries = 0
    seen: list[tuple[list[int], int]] = []
    for hashes, n in requests:
        shared = 0
        for h_prev, n_prev in seen:
            k = 0
            while k < min(len(hashes), len(h_prev)) and hashes[k] == h_prev[k]:
                k += 1
            words = min(k * MOONCAKE_BLOCK, n, n_prev)
            if k == len(hashes) == len(h_prev):  # same blocks: the shorter prompt is a prefix
                words = min(n, n_prev)
            shared = max(shared, bos + words)
        prompt = bos + n
        hits += min(shared, prompt - 1) // BLOCK_SIZE * BLOCK_SIZE
        queries += prompt
        seen.append((hashes, n))
    return hits, queries


def test_prefix_cache_hit_rate_is_the_one_the_trace_implies(vllm_server, facts, tmp_path):
    trace = tmp_path / "mooncake.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": i, "input_length": n, "output_length": 2, "hash_ids": h})
                             + "\n" for i, (h, n) in enumerate(REQUESTS)))
    seed = str(time.time_ns() % 1_000_000_007)  # fresh block text: nothing cached by earlier runs
    before = scrape(vllm_server.url)
    proc = bb("run", "--url", vllm_server.url, "--trace", str(trace), "-o", str(tmp_path / "r.duckdb"),
              "--max-concurrency", "1", "--seed", seed, "--tokenizer", str(vllm_server.model), "--quiet")
    assert proc.returncode == 0, proc.stderr
    after = scrape(vllm_server.url)
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    want_hits, want_queries = implied_hits(REQUESTS, facts["completions_special_tokens"])
    assert queries == want_queries
    assert hits == want_hits, (hits / queries, want_hits / want_queries)
    assert 0.3 < want_hits / want_queries < 0.7  # the trace does exercise the cache
