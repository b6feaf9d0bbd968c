"""``run`` builds shared prefixes in the trace's own block size, not always Mooncake's 512.

A trace's ``prefix_hashes`` mean "these k blocks are shared" only with the block
size in its metadata (Bailian: 16 tokens, Mooncake: 512). The streaming test
server runs a prefix cache over blocks of 16 prompt words and reports what it
found as ``cached_tokens``; the run records that. Requests sharing 2 of their 3
leading hashes must share exactly 2 x 16 words.
"""

from __future__ import annotations

import polars as pl
from url_process import url_process

from burstbench.traces.schema import Trace, conform, write_trace


def test_prefix_blocks_follow_the_traces_block_size(tmp_path):
    import duckdb

    from burstbench.cli import main

    df = pl.DataFrame({"arrival_s": [0.0, 0.5, 1.0], "input_tokens": [48, 48, 40], "output_tokens": [2, 2, 2],
                       "prefix_hashes": [[1, 2, 3], [1, 2, 9], [7, 8, 9]]},
                      schema_overrides={"prefix_hashes": pl.List(pl.UInt64)})
    trace = write_trace(Trace(conform(df), {"source": "test", "block_size": 16}), tmp_path / "t.parquet")
    out = tmp_path / "r.duckdb"
    with url_process("burstbench.testing.stream_server", "--port", "0", "--prefix-block", "16") as (url, _):
        rc = main(["run", "--url", url, "--trace", str(trace), "-o", str(out), "--max-concurrency", "1",
                   "--quiet"])
    assert rc == 0
    con = duckdb.connect(str(out), read_only=True)
    try:
        cached = [r[0] for r in con.execute("SELECT cached_tokens FROM requests ORDER BY request_id").fetchall()]
    finally:
        con.close()
    assert cached == [0, 32, 0]
