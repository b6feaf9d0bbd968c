"""The digital twin's results in the report: a calibration, a what-if and a plan.

Why files, not the results store: ``calibrate``, ``whatif`` and ``plan`` each end in an
artefact the user keeps (``twin.yaml``, or the one JSON object ``--json`` prints), so
any of them can be reported later without re-running, and the twin package never
depends on the report. Which one a file is comes from its keys. Every string taken
from them goes through ``html.esc`` or ``figures.label``: they carry model, hardware and
run names a user typed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burstbench.errors import InputError
from burstbench.reports import figures as fg
from burstbench.reports.html import Section, badge, esc, note, table
from burstbench.reports.summary import pct

METRICS = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2el_ms", "E2EL"))


def load_twin_result(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(kind, content) of a twin.yaml or a ``whatif``/``plan`` ``--json`` output."""

    p = Path(path)
    if not p.exists():
        raise InputError("no such file; give a twin.yaml or the --json output of whatif or plan", path=p)
    from burstbench.infile import load_yaml, read_text

    doc = load_yaml(read_text(p, expected="a twin.yaml or whatif/plan --json output"), path=p)  # JSON is YAML
    if isinstance(doc, dict):
        if "uncertainty" in doc and "errors" in doc:
            return "calibration", doc
        if "baseline" in doc and "variant" in doc:
            return "whatif", doc
        if "candidates" in doc and "best" in doc:
            return "plan", doc
    raise InputError("neither a twin.yaml from calibrate nor the --json output of whatif or plan", path=p)


@dataclass
class TwinInputs:
    """The twin's result files as the report reads them: their sections, and what they say
    about the rest of the report (the SLO the what-if and plan judged by, the runs the
    calibration was fitted and checked on), so the measured part agrees with them."""

    sections: list[Section]
    slo_s: dict[str, float] | None = None  # seconds, from the first what-if/plan that has one
    target: float | None = None
    slo_source: str | None = None
    slo_conflicts: list[str] = field(default_factory=list)  # files that judged by another SLO
    run_ids: list[str] = field(default_factory=list)  # fit and held-out runs of the calibrations


def twin_sections(paths: Sequence[str | Path]) -> TwinInputs:
    builders = {"calibration": calibration_section, "whatif": whatif_section, "plan": plan_section}
    got = TwinInputs([])
    for i, path in enumerate(paths):
        kind, doc = load_twin_result(path)
        sec = builders[kind](doc, Path(path).name)
        sec.key = f"{sec.key}-{i}"
        got.sections.append(sec)
        if kind == "calibration":
            prov = doc.get("provenance") or {}
            for rid in [*(prov.get("run_ids") or [prov.get("run_id")]), prov.get("holdout_run_id")]:
                if isinstance(rid, str) and rid not in got.run_ids:
                    got.run_ids.append(rid)
        elif isinstance(doc.get("slo_ms"), dict) and doc["slo_ms"]:
            slo = {str(k): float(v) / 1000.0 for k, v in doc["slo_ms"].items()}
            if got.slo_s is None:
                got.slo_s, got.slo_source = slo, Path(path).name
                t = doc.get("target")
                got.target = float(t) if isinstance(t, int | float) and 0 < t <= 1 else None
            elif slo != got.slo_s:
                got.slo_conflicts.append(Path(path).name)
    return got


def _ms(v: Any) -> str:
    return "–" if v is None else f"{float(v):,.1f}"


def _signed_pct(v: Any) -> str:
    return "–" if v is None else f"{float(v) * 100:+.1f}%"


def _num(v: Any) -> str:
    return "–" if v is None else f"{float(v):.4g}"


def calibration_section(doc: dict[str, Any], source: str) -> Section:
    prov = doc.get("provenance") or {}
    sec = Section("twin-calibration", f"Digital twin: calibration ({source})", intro=(
        f"{doc.get('model')} on {doc.get('hardware')} (TP {doc.get('tp', 1)}, {doc.get('replicas', 1)} replica(s)), "
        f"fitted to run(s) {', '.join(prov.get('run_ids') or [str(prov.get('run_id'))])} "
        f"({prov.get('requests_used')} requests, time scale "
        f"{prov.get('time_scale')}); each run replayed in virtual time at its own send times, or a closed-loop run "
        "as a closed loop of its users."))
    rows = [(name, _num(u.get("value")), f"{_num((u.get('ci95') or [None])[0])} .. {_num((u.get('ci95') or [None, None])[1])}",
             "at a bound of the search" if u.get("at_bound") else "")
            for name, u in (doc.get("uncertainty") or {}).items()]
    fitted = prov.get("scheduler_fit") or {}
    for name, v in (doc.get("scheduler") or {}).items():
        if name not in ("max_num_seqs", "max_num_batched_tokens"):
            continue
        f = fitted.get(name)
        how = ("given" if f is None else "fitted" if f.get("binding")
               else f"not reached in the run: any value from {f.get('fits_from')} up fits as well")
        rows.append((name, str(v), "", how))
    sec.blocks.append("<h3>Fitted values (95% interval)</h3>" + table(("coefficient", "value", "95% CI", ""), rows))
    points = []
    errs = doc.get("errors") or {}
    for part, e in [("fit", errs.get("fit")), *[("fit", x) for x in errs.get("fit_more") or []],
                    ("holdout", errs.get("holdout"))]:
        if not e:
            continue
        prow = []
        for key, name in METRICS:
            for q, v in (e.get("percentiles") or {}).get(key, {}).items():
                prow.append((name, q, _ms(v.get("measured")), _ms(v.get("twin")), _signed_pct(v.get("rel_err"))))
                if v.get("measured") and v.get("twin"):
                    points.append((part, f"{name} {q}", v["measured"], v["twin"]))
        sec.blocks.append(f"<h3>{esc(part)} run {esc(e.get('run_id'))} ({esc(e.get('requests'))} requests): "
                          "twin vs measured</h3>" + table(("metric", "quantile", "measured ms", "twin ms", "error"), prow))
    if points:
        lo, hi = min(min(p[2], p[3]) for p in points), max(max(p[2], p[3]) for p in points)
        series = [{"name": "twin = measured", "x": [lo, hi], "y": [lo, hi], "mode": "lines", "dash": "dot",
                   "color": "#7f7f7f"}]
        for part in ("fit", "holdout"):
            pts = [p for p in points if p[0] == part]
            if pts:
                series.append({"name": f"{part} run", "x": [p[2] for p in pts], "y": [p[3] for p in pts],
                               "mode": "markers", "text": [p[1] for p in pts], "size": 9})
        sec.blocks.append(fg.scatter_xy(
            "Twin vs measured percentiles", "measured (ms)", "twin (ms)", series, x_log=True, y_log=True,
            caption="Each point is one metric's p50, p90 or p99; on the dotted line the twin matches the run."))
    return sec


def whatif_section(doc: dict[str, Any], source: str) -> Section:
    b, v = doc["baseline"], doc["variant"]
    changes = ", ".join(f"{k}={x}" for k, x in (doc.get("changes") or {}).items()) or "no change"
    slo = ", ".join(f"{k} {x:g} ms" for k, x in (doc.get("slo_ms") or {}).items())
    sec = Section("twin-whatif", f"Digital twin: what-if ({source})", intro=(
        f"Baseline {b.get('name')} against variant {v.get('name')} ({changes}) on the same trace in virtual time"
        + (f"; SLO {slo}, target {doc.get('target', 0.9) * 100:g}% attainment." if slo else ".")))
    rows: list[tuple[Any, ...]] = [("GPUs", b.get("gpus"), v.get("gpus")),
                                   ("requests ok", f"{b.get('completed')}/{b.get('requests')}",
                                    f"{v.get('completed')}/{v.get('requests')}")]
    if "slo_attainment" in b:
        rows.append(("SLO attainment", pct(b["slo_attainment"]), pct(v.get("slo_attainment"))))
    for key, name in METRICS:
        for q in ("p50", "p99"):
            rows.append((f"{name} {q} (ms)", _ms((b.get(key) or {}).get(q)), _ms((v.get(key) or {}).get(q))))

    bb, vb = b.get("band"), v.get("band")
    if bb and vb:  # the range over twins drawn from the calibration's uncertainty
        def span(x: Any, fmt: Any) -> str:
            return "–" if not x else f"{fmt(x[0])} – {fmt(x[1])}"

        if bb.get("slo_attainment"):
            rows.append((f"SLO attainment, band of {bb['draws']} draws", span(bb["slo_attainment"], pct),
                         span(vb["slo_attainment"], pct)))
        for key, name in METRICS:
            rows.append((f"{name} p99 (ms), band", span(bb[key].get("p99"), _ms), span(vb[key].get("p99"), _ms)))

    def rate(x: Any) -> str:
        return "none met the target" if x is None else f"{float(x):.3g} req/s"

    if "max_goodput_rate" in b:
        rows.append(("max goodput", rate(b.get("max_goodput_rate")), rate(v.get("max_goodput_rate"))))
        rows.append(("goodput per GPU", rate(b.get("goodput_per_gpu")), rate(v.get("goodput_per_gpu"))))
    sec.blocks.append(table(("", "baseline", "variant"), rows))
    if "goodput_per_gpu_ratio" in doc:
        sec.blocks.append(note(f"variant / baseline: max goodput x{doc['max_goodput_ratio']:.2f}, "
                               f"per GPU x{doc['goodput_per_gpu_ratio']:.2f}"))
    for n in doc.get("notes") or []:
        sec.blocks.append(note(str(n), "warn"))
    series, marks = [], []
    for side, r in (("baseline", b), ("variant", v)):
        steps = sorted((r.get("search") or {}).get("steps") or [], key=lambda s: s["rate"])
        steps = [s for s in steps if s.get("slo_attainment") is not None]
        if steps:
            series.append({"name": f"{side}: {r.get('name')}", "x": [s["rate"] for s in steps],
                           "color": fg.color(0 if side == "baseline" else 1),
                           "y": [s["slo_attainment"] * 100 for s in steps]})
        if r.get("max_goodput_rate"):
            at = (r.get("search") or {}).get("attainment_at_max")
            marks.append({"x": r["max_goodput_rate"],
                          "color": fg.color(0 if side == "baseline" else 1),
                          "y": (at if at is not None else doc.get("target", 0.9)) * 100,
                          "text": f"{side} max goodput: {r['max_goodput_rate']:.3g} req/s"})
    if series:
        xs = [x for s in series for x in s["x"]]
        series.append({"name": "target", "x": [min(xs), max(xs)], "y": [doc.get("target", 0.9) * 100] * 2,
                       "mode": "lines", "dash": "dash", "color": "#7f7f7f"})
        sec.blocks.append(fg.scatter_xy(
            "Goodput search", "request rate (req/s)", "SLO attainment (%)", series, x_log=True, marks=marks,
            caption="Each point is one virtual run of the trace rescaled to that rate; max goodput is the "
                    "highest rate that meets the target (DistServe)."))
    return sec


def plan_section(doc: dict[str, Any], source: str) -> Section:
    slo = ", ".join(f"{k} {x:g} ms" for k, x in (doc.get("slo_ms") or {}).items())
    target = float(doc.get("target", 0.9))
    load = doc.get("load")
    load = load.get("load") if isinstance(load, dict) else load
    sec = Section("twin-plan", f"Capacity plan ({source})", intro=(
        f"{doc.get('model')}: the cheapest fleet with at least {target * 100:g}% of requests within "
        f"{slo} on {load}. Prices (USD per GPU-hour) are inputs: "
        + ", ".join(f"{k} {float(x):g}" for k, x in (doc.get("prices_usd_per_gpu_hour") or {}).items()) + "."))
    best = doc.get("best")
    if best:
        sec.blocks.append(note(f"cheapest fleet meeting the target: {best['name']} ({best['gpus']} GPUs), "
                               f"{best['usd_per_hour']:.2f} USD/h, {best['slo_attainment'] * 100:.1f}% attainment"))
    for n in doc.get("notes") or []:
        sec.blocks.append(note(str(n), "warn"))
    cands = sorted(doc.get("candidates") or [], key=lambda c: (c["usd_per_hour"], c["gpus"]))
    rows = [(c["name"], c["gpus"], f"{c['usd_per_hour']:.2f}", pct(c["slo_attainment"]), badge(c["meets_target"]),
             _ms((c.get("p99_ms") or {}).get("ttft_ms")), _ms((c.get("p99_ms") or {}).get("tpot_ms")))
            for c in cands]
    sec.blocks.append("<h3>Every candidate the search simulated</h3>" + table(
        ("fleet", "GPUs", "USD/h", "attainment", "meets target", "TTFT p99 ms", "TPOT p99 ms"), rows))
    if cands:
        series = []
        for ok, name in ((True, "meets the target"), (False, "misses the target")):
            pts = [c for c in cands if bool(c["meets_target"]) is ok]
            if pts:
                series.append({"name": name, "x": [c["usd_per_hour"] for c in pts],
                               "y": [c["slo_attainment"] * 100 for c in pts], "mode": "markers",
                               "text": [c["name"] for c in pts], "size": 9,
                               "color": "#2ca02c" if ok else "#d62728"})
        xs = [c["usd_per_hour"] for c in cands]
        series.append({"name": "target", "x": [min(xs), max(xs)], "y": [target * 100] * 2, "mode": "lines",
                       "dash": "dash", "color": "#7f7f7f"})
        marks = ([{"x": best["usd_per_hour"], "y": best["slo_attainment"] * 100,
                   "text": f"cheapest: {best['name']}"}] if best else [])
        sec.blocks.append(fg.scatter_xy(
            "Cost against attainment", "USD per hour", "SLO attainment (%)", series, marks=marks,
            caption="Each point is one fleet simulated on the peak window; hover for its name."))
    skipped = doc.get("skipped") or []
    if skipped:
        sec.blocks.append("<h3>Not tried</h3>" + table(
            ("hardware", "TP", "why"), [(s.get("hardware"), s.get("tp"), s.get("reason")) for s in skipped]))
    return sec
