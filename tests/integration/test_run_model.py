"""The model a live run measured is on its run row, also when the user named none."""

from __future__ import annotations

import duckdb
import polars as pl
from live_server import live_server

from burstbench.loadgen.runner import run_scenario
from burstbench.loadgen.scenario import Scenario
from burstbench.reports import plotdata as pd
from burstbench.traces.schema import Trace, conform

TRACE = Trace(conform(pl.DataFrame({"arrival_s": [0.0, 0.02, 0.04], "input_tokens": [5, 6, 7],
                                    "output_tokens": [3, 3, 3]})))


def _model_of(path, run_id):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return pd.runs(con, [run_id])[0].model
    finally:
        con.close()


def test_run_without_model_records_the_one_the_server_lists(tmp_path):
    with live_server(model="served-7b", ttft_s=0.001, itl_s=0.001) as srv:
        rid = run_scenario(TRACE, Scenario(url=srv.url, scrape_metrics=False), tmp_path / "r.duckdb",
                           progress=False)
        sent = {r.body.get("model") for r in srv.records() if r.path.endswith("/completions")}
    assert _model_of(tmp_path / "r.duckdb", rid) == "served-7b"  # the Runs table's model column
    assert sent == {"served-7b"}


def test_a_model_the_user_names_is_kept(tmp_path):
    with live_server(model="served-7b", ttft_s=0.001, itl_s=0.001) as srv:
        rid = run_scenario(TRACE, Scenario(url=srv.url, model="served-7b-alias", scrape_metrics=False),
                           tmp_path / "r.duckdb", progress=False)
    assert _model_of(tmp_path / "r.duckdb", rid) == "served-7b-alias"
