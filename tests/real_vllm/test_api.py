"""Completions and chat against the real vLLM, streamed and not: token accounting.

What is checked against vLLM's own answers (``usage``), not against burstbench:
- ``ignore_eos`` makes the output exactly the asked length;
- with the model's tokenizer (``--tokenizer``), the prompt burstbench sends is
  exactly the asked length: vLLM's ``usage.prompt_tokens`` is that plus the
  special tokens a completions prompt gets (BOS) or the chat template's wrapping,
  both counted by ``transformers`` when the model was built;
- streamed, every token is in some chunk (per-chunk usage), also when a chunk
  carries several tokens under load, and the per-token ITL has one gap per token
  after the first chunk.
"""

from __future__ import annotations

import time

import polars as pl
import pytest

from burstbench.analysis.metrics import open_store
from burstbench.backends.base import Request
from burstbench.backends.openai import OpenAIBackend
from burstbench.traces.schema import Trace, conform

LENGTHS = [(5, 3), (100, 17), (1000, 40)]


def overhead(api: str, facts: dict) -> int:
    return facts["completions_special_tokens"] if api == "completions" else facts["chat_overhead_tokens"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "body"])
@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_one_request_each_way_counts_as_vllm_counts(vllm_server, facts, api, stream):
    async with OpenAIBackend(vllm_server.url, api=api, stream=stream,
                             tokenizer_json=str(vllm_server.model)) as b:
        assert b.continuous_usage  # vLLM's /v1/models says owned_by vllm
        outs = [await b.send(Request(request_id=i, input_tokens=n, output_tokens=m), time.perf_counter)
                for i, (n, m) in enumerate(LENGTHS)]
    for o, (n, m) in zip(outs, LENGTHS, strict=True):
        assert o.status == "ok", o.error_message
        assert o.output_tokens_server == m  # ignore_eos: exactly the asked length
        assert o.input_tokens_server == n + overhead(api, facts)
        assert o.first_token_s is not None and o.last_token_s >= o.first_token_s >= o.sent_s
        if stream:
            assert list(o.chunk_tokens) and min(o.chunk_tokens) >= 1
            assert sum(o.chunk_tokens) == m == o.output_tokens_counted
        else:
            assert len(o.chunk_t) == 1


def test_a_run_keeps_every_token_of_multi_token_chunks(vllm_server, facts, tmp_path):
    """Chunks of several tokens, recorded and analysed: nothing lost, per-token ITL right.

    vLLM merges tokens into one chunk when its API server lags the engine (under
    load) or when asked to (``stream_interval``, here 4 per request, so the case is
    exercised on any machine): the first chunk has one token, then (after a few single-token chunks) four or more."""
    from burstbench.backends.base import get_backend
    from burstbench.loadgen.runner import execute
    from burstbench.loadgen.scenario import build_scenario

    n, out_len = 16, 33
    df = pl.DataFrame({"arrival_s": [0.0] * n, "input_tokens": [200 + 37 * (i % 5) for i in range(n)],
                       "output_tokens": [out_len] * n})
    trace = Trace(conform(df), {"source": "test"})
    out = tmp_path / "r.duckdb"
    scenario = build_scenario(url=vllm_server.url, mode="closed", concurrency=8, max_requests=n,
                              tokenizer=str(vllm_server.model))

    def factory():
        return get_backend("openai")(vllm_server.url, tokenizer_json=str(vllm_server.model),
                                     extra_body={"stream_interval": 4})

    res = execute(trace, scenario, out, progress=False, backend_factory=factory)
    assert res.status == "done"
    con = open_store(out)
    try:
        rows = con.execute("""
            SELECT r.request_id, r.input_tokens, r.input_tokens_server, r.output_tokens_server, r.output_tokens_counted,
                   list(c.tokens ORDER BY c.seq)
            FROM requests r JOIN chunks c USING (run_id, request_id)
            WHERE r.status = 'ok' GROUP BY ALL""").fetchall()
        n_token_gaps = con.execute("SELECT count(*) FROM token_itl").fetchone()[0]
        chunk_gaps = con.execute("SELECT sum(gap_s), count(*) FROM chunk_gaps").fetchone()
        token_sum = con.execute("SELECT sum(itl_token_s) FROM token_itl").fetchone()[0]
    finally:
        con.close()
    assert len(rows) == n
    for _rid, inp, inp_srv, out_srv, counted, tokens in rows:
        assert inp_srv == inp + facts["completions_special_tokens"]
        assert out_srv == out_len == counted == sum(tokens)
        assert tokens[0] == 1 and max(tokens) >= 4 and len(tokens) < out_len
    # per-token ITL: one gap per token after each request's first chunk, the chunk gaps split evenly
    assert n_token_gaps == sum(sum(r[5][1:]) for r in rows) > chunk_gaps[1]
    assert token_sum == pytest.approx(chunk_gaps[0], rel=1e-9)
