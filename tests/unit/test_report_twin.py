"""The digital twin's results in the HTML report: twin.yaml and the --json of whatif and plan."""

from __future__ import annotations

import json
import re

import pytest
from report_stores import XSS_IMG, XSS_SCRIPT, XSS_SVG, make_store, make_twin_results

from burstbench.cli import main


@pytest.fixture(scope="module")
def twin_files(azure_conv, tmp_path_factory):
    return make_twin_results(tmp_path_factory.mktemp("twinrep"), azure_conv)


def test_report_shows_calibration_whatif_and_plan(twin_files, tmp_path, capsys):
    twin, wi, pl_ = twin_files
    out = tmp_path / "twin.html"
    assert main(["report", "--twin", str(twin), "--twin", str(wi), "--twin", str(pl_), "-o", str(out),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sections"] == ["twin-calibration-0", "twin-whatif-1", "twin-plan-2"] and res["figures"] == 3
    html = out.read_text()
    whatif, plan = json.loads(wi.read_text()), json.loads(pl_.read_text())
    for coef in ("bandwidth_efficiency_scale", "flops_efficiency_scale", "overhead_scale", "frontend_latency_s"):
        assert coef in html
    assert "holdout run" in html and "Goodput search" in html and "Cost against attainment" in html
    # every simulated fleet is in the table, the cheapest named with its price
    plan_part = html[html.rindex("Capacity plan ("):]  # past the table of contents
    rows = re.findall(r"<tr><td>([^<]+)</td><td class=\"n\">\d+</td><td class=\"n\">[\d.]+</td>", plan_part)
    assert sorted(rows) == sorted(c["name"] for c in plan["candidates"])
    assert f"{plan['best']['usd_per_hour']:.2f} USD/h" in html
    v = whatif["variant"]
    assert f"{v['max_goodput_rate']:.3g} req/s" in html


def test_goodput_search_names_each_side_s_star_in_the_legend(twin_files, tmp_path, capsys):
    """The max goodput of baseline and variant are stars outlined in their side's colour and
    named in the legend with their rate; no arrow labels, which overlapped when the rates were close."""
    from test_report_html import figures_of, titles_of

    twin, wi, _ = twin_files
    out = tmp_path / "twin.html"
    assert main(["report", "--twin", str(twin), "--twin", str(wi), "-o", str(out)]) == 0
    html = out.read_text()
    fig = dict(zip(titles_of(html), figures_of(html), strict=True))["Goodput search"]
    whatif = json.loads(wi.read_text())
    stars = {t["name"]: t for t in fig["data"] if t.get("marker", {}).get("symbol") == "star"}
    lines = {t["name"].split(":")[0]: t for t in fig["data"] if t["name"].startswith(("baseline:", "variant:"))}
    for side in ("baseline", "variant"):
        rate = whatif[side]["max_goodput_rate"]
        star = stars[f"{side} max goodput: {rate:.3g} req/s"]
        assert star["x"] == [rate]
        assert star["marker"]["line"]["color"] == lines[side]["line"]["color"]
    assert not fig["layout"].get("annotations")


def test_twin_parts_join_the_runs_of_a_store(twin_files, tmp_path, capsys):
    make_store(tmp_path / "r.duckdb", n=100)
    assert main(["report", str(tmp_path / "r.duckdb"), "--twin", str(twin_files[0]), "-o",
                 str(tmp_path / "r.html"), "--json"]) == 0
    sections = json.loads(capsys.readouterr().out)["sections"]
    assert sections[0] == "summary" and sections[-1] == "twin-calibration-0"


def test_twin_report_judges_by_the_whatif_slo_and_shows_the_calibration_s_runs(twin_files, azure_conv, tmp_path,
                                                                                capsys):
    """Given a twin and its what-if, the measured part is the runs the twin was fitted and checked
    on (not every other run of the store) and is judged by the SLO the what-if used."""
    import shutil

    import yaml

    from burstbench.backends.reference.simulator import simulate
    from burstbench.traces.schema import load_trace
    from burstbench.traces.synth import replay

    twin, wi, _ = twin_files
    store = tmp_path / "runs.duckdb"
    shutil.copy(twin.parent / "twin-runs.duckdb", store)
    prov = yaml.safe_load(twin.read_text())["provenance"]
    fitted = {*prov["run_ids"], prov["holdout_run_id"]}
    other = simulate(replay(load_trace(azure_conv), window=(0, 5)),
                     model="llama-3.1-8b", hardware="l40s", out=store, record_chunks=False).run_id
    out = tmp_path / "r.html"
    assert main(["report", str(store), "--twin", str(twin), "--twin", str(wi), "-o", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["runs"]) == fitted and other not in res["runs"]
    html = out.read_text()
    assert "SLO and target taken from whatif.json" in html and "other runs are left out" in html
    assert "SLO attainment" in html  # judged, though no --slo was given
    # --run still picks any run, and --slo wins over the what-if's
    assert main(["report", str(store), "--twin", str(wi), "--run", other, "--slo", "ttft=2s",
                 "-o", str(tmp_path / "o.html"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["runs"] == [other]
    assert "taken from whatif.json" not in (tmp_path / "o.html").read_text()


def test_strings_from_twin_files_are_escaped(azure_conv, tmp_path, capsys):
    files = make_twin_results(tmp_path, azure_conv, xss=True)
    out = tmp_path / "x.html"
    assert main(["report", *[a for f in files for a in ("--twin", str(f))], "-o", str(out)]) == 0
    html = out.read_text()
    for payload in (XSS_SCRIPT, XSS_IMG, XSS_SVG):
        assert payload not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html


@pytest.mark.parametrize("content, message", [
    ("{not yaml: [", "not valid YAML"),
    ('{"runs": []}', "neither a twin.yaml from calibrate nor the --json output of whatif or plan"),
    ("", "neither a twin.yaml"),
])
def test_a_file_that_is_not_a_twin_result_is_a_one_line_error(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["report", "--twin", str(bad), "-o", str(tmp_path / "r.html")]) == 3
    err = capsys.readouterr().err.strip()
    assert "bad.json" in err and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_nothing_to_report(tmp_path, capsys):
    assert main(["report", "-o", str(tmp_path / "r.html")]) == 2
    assert "nothing to report" in capsys.readouterr().err
