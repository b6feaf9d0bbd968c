"""Per-chunk usage is asked of vLLM endpoints only, so several tokens per chunk are counted.

vLLM streams several tokens in one chunk under load; without per-chunk usage
(``stream_options.continuous_usage_stats``) the client knows only how many chunks
came, not how many tokens each carried, and the per-token ITL is unknown. Hosted
APIs may reject the option, so it is sent only when ``/v1/models`` says the models
are ``owned_by: vllm`` (as vLLM's does). The server here is the real streaming test
server, told to present itself either way.
"""

from __future__ import annotations

import time

import pytest

from burstbench.backends.base import Request
from burstbench.backends.openai import OpenAIBackend
from burstbench.testing import StreamServer


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_a_vllm_endpoint_gets_continuous_usage_and_tokens_per_chunk(api: str) -> None:
    async with StreamServer(tokens_per_chunk=3, owned_by="vllm") as srv:
        async with OpenAIBackend(srv.url, api=api) as b:
            o = await b.send(Request(request_id=1, input_tokens=5, output_tokens=10), time.perf_counter)
        (rec,) = srv.records
    assert rec.body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert o.status == "ok"
    assert list(o.chunk_tokens) == [3, 3, 3, 1]
    assert o.output_tokens_counted == 10 == o.output_tokens_server


async def test_other_endpoints_are_not_sent_the_vllm_option() -> None:
    async with StreamServer(tokens_per_chunk=3) as srv:
        async with OpenAIBackend(srv.url) as b:
            o = await b.send(Request(request_id=1, input_tokens=5, output_tokens=10), time.perf_counter)
        (rec,) = srv.records
    assert rec.body["stream_options"] == {"include_usage": True}
    assert list(o.chunk_tokens) == [-1] * 4
