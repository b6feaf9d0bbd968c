"""The report's aggregations against numpy on hand-made stores with known timings."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from report_stores import make_store

from burstbench.reports import plotdata as pd


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "results.duckdb"
    runs = make_store(path, n=400)
    con = duckdb.connect(str(path), read_only=True)
    pd.install_views(con)
    yield con, runs
    con.close()


def _interp(values: np.ndarray, probs) -> np.ndarray:
    return np.percentile(values, np.asarray(probs) * 100.0, method="linear")


def test_ttft_cdf_matches_numpy_percentiles(store):
    con, runs = store
    r = runs[0]
    ok = np.array([s == "ok" for s in r.status])
    ttft_ms = (r.first[ok] - r.sent[ok]) * 1000.0
    c = pd.latency_cdf(con, r.run_id, "ttft")
    xs, ps, n = c.x, c.p, c.n
    assert n == ok.sum() == c.total and not c.sampled
    assert len(xs) == len(ps) > 1000
    np.testing.assert_allclose(np.array(xs, float), _interp(ttft_ms, ps), rtol=1e-5)


def test_tpot_cdf_only_counts_outputs_longer_than_one(store):
    con, runs = store
    r = runs[1]  # no failures, tpot 30 ms
    ok = np.array([s == "ok" for s in r.status]) & (r.out_tokens > 1)
    tpot = (r.last[ok] - r.first[ok]) / (r.out_tokens[ok] - 1) * 1000.0
    c = pd.latency_cdf(con, r.run_id, "tpot")
    xs, ps, n = c.x, c.p, c.n
    assert n == ok.sum() < len(r.status)
    np.testing.assert_allclose(np.array(xs, float), _interp(tpot, ps), rtol=1e-5)


def test_itl_cdf_pools_every_chunk_gap(store):
    con, runs = store
    r = runs[0]
    gaps = np.concatenate([np.diff(t) for i, t in r.chunk_times.items() if r.status[i] == "ok"]) * 1000.0
    c = pd.latency_cdf(con, r.run_id, "itl")
    assert c.n == c.total == gaps.size and not c.sampled
    np.testing.assert_allclose(np.array(c.x, float), _interp(gaps, c.p), rtol=1e-5, atol=1e-9)


def test_itl_cdf_samples_requests_beyond_the_gap_budget(store):
    con, runs = store
    r = runs[0]
    per_req = {i: np.diff(t) * 1000.0 for i, t in r.chunk_times.items() if r.status[i] == "ok"}
    total = sum(g.size for g in per_req.values())
    c = pd.latency_cdf(con, r.run_id, "itl", max_gaps=total // 4)
    assert c.sampled and c.total == total
    assert total // 8 < c.n < total // 2  # about a quarter of the requests' gaps
    # the sample is whole requests: its gaps are exactly those of the sampled request ids
    ids = [row[0] for row in con.execute(
        "SELECT request_id FROM request_metrics WHERE run_id = ? AND ok AND phase = 'measure'"
        " AND hash(request_id) % 1000000 < ?", [r.run_id, int(1_000_000 * (total // 4) / total)]).fetchall()]
    sample = np.concatenate([per_req[i] for i in ids if i in per_req])
    assert sample.size == c.n
    np.testing.assert_allclose(np.array(c.x, float), _interp(sample, c.p), rtol=1e-5, atol=1e-9)


def test_cdf_of_unknown_run_is_empty(store):
    con, _ = store
    c = pd.latency_cdf(con, "no-such-run", "ttft")
    assert (c.x, c.p, c.n) == ([], [], 0)


def test_window_series_counts_and_exact_in_flight(store):
    con, runs = store
    r = runs[0]
    w = 2.0
    s = pd.window_series(con, r.run_id, w)
    ok = np.array([st == "ok" for st in r.status])
    end = np.where(ok, r.last, r.sent + 0.05)  # what make_store wrote as end_s
    nwin = len(s.t)
    assert nwin == int(max(end.max(), r.sent.max()) // w) + 1
    sent_counts = np.bincount((r.sent // w).astype(int), minlength=nwin)
    np.testing.assert_allclose(np.array(s.sent_rate, float), sent_counts / w, rtol=1e-6)
    done = np.bincount((end[ok] // w).astype(int), minlength=nwin)
    np.testing.assert_allclose(np.array(s.completed_rate, float), done / w, rtol=1e-6)
    failed = np.bincount((end[~ok] // w).astype(int), minlength=nwin)
    np.testing.assert_allclose(np.array(s.failed_rate, float), failed / w, rtol=1e-6)
    for k in range(nwin):  # brute force: in flight at the window's end
        t = (k + 1) * w
        assert s.in_flight[k] == int(np.sum((r.sent < t) & (end >= t))), k
    assert max(s.in_flight) > 0


def test_window_series_ttft_quantiles_per_window(store):
    con, runs = store
    r = runs[1]
    w = 5.0
    s = pd.window_series(con, r.run_id, w)
    k = (r.sent // w).astype(int)
    ttft = (r.first - r.sent) * 1000.0
    for win in range(3):
        sel = ttft[k == win]
        assert s.ttft_p50_ms[win] == pytest.approx(np.percentile(sel, 50), rel=1e-5)
        assert s.ttft_p90_ms[win] == pytest.approx(np.percentile(sel, 90), rel=1e-5)


def test_telemetry_series_sums_label_sets_and_bounds_points(tmp_path):
    import polars as pl

    from burstbench.store import TELEMETRY_COLUMNS, ResultsStore, RunInfo

    path = tmp_path / "t.duckdb"
    with ResultsStore(path) as s:
        rid = s.create_run(RunInfo(backend="openai"))
        rows = []
        for i in range(2000):
            t = i * 0.01
            rows.append((rid, t, "server", "running", 2.0, '{"gpu": "0"}', None))
            rows.append((rid, t, "server", "running", 3.0, '{"gpu": "1"}', None))
            rows.append((rid, t, "client", "cpu", 50.0, None, 0))
        s.append_telemetry(pl.DataFrame(rows, schema=list(TELEMETRY_COLUMNS), orient="row"))
    con = duckdb.connect(str(path), read_only=True)
    series, total = pd.telemetry_series(con, rid, ["server"], max_points=100)
    assert total == 1 and len(series) == 1
    (run,) = series
    assert run.name == "running" and run.source == "server"
    assert len(run.t) <= 101
    assert set(run.value) == {5.0}  # summed over the two label sets, averaged per bucket
    assert pd.telemetry_series(con, rid, ["gpu"]) == ([], 0)
    con.close()


def test_histogram_in_duckdb_matches_numpy():
    con = duckdb.connect()
    rng = np.random.default_rng(3)
    v = rng.lognormal(5, 1, 5000)
    con.register("vals", {"v": v})
    edges, counts = pd.histogram(con, "SELECT v FROM vals", {}, bins=30)
    ref, _ = np.histogram(v, bins=30, range=(v.min(), v.max()))
    assert counts == ref.tolist()
    assert sum(counts) == 5000 and len(edges) == 31
    _, logc = pd.histogram(con, "SELECT v FROM vals", {}, bins=20, log=True)
    ref_log, _ = np.histogram(np.log10(v), bins=20, range=(np.log10(v.min()), np.log10(v.max())))
    assert logc == ref_log.tolist()


@pytest.mark.parametrize(("duration", "expected"), [(10, 0.1), (30, 0.1), (100, 0.5), (3600, 10), (86400, 300)])
def test_nice_window(duration, expected):
    assert pd.nice_window(duration, 400) == expected
    assert duration / pd.nice_window(duration, 400) <= 400
