"""``twin.fidelity.judge``: a bound is held only where the machine's noise allows it."""

from __future__ import annotations

from burstbench.twin.fidelity import judge


def _errors(err: float) -> dict:
    return {m: {q: {"measured": 100.0, "twin": 100.0 * (1 + err), "rel_err": err} for q in ("p50", "p90")}
            for m in ("ttft_ms", "tpot_ms", "e2el_ms")}


def test_a_quiet_metric_is_checked_and_can_fail():
    noise = {m: {"p50": 0.02, "p90": 0.05} for m in ("ttft_ms", "tpot_ms", "e2el_ms")}
    verdicts = judge(_errors(0.15), noise)
    assert len(verdicts) == 6 and all(v.checkable for v in verdicts)
    by_q = {v.q: v.ok for v in verdicts}
    assert by_q == {"p50": False, "p90": True}  # 15% misses 10% at p50, meets 20% at p90
    assert "OUTSIDE" in str(next(v for v in verdicts if v.q == "p50"))


def test_a_metric_noisier_than_its_bound_is_reported_with_its_figures():
    noise = {"ttft_ms": {"p50": 0.35, "p90": 0.05}, "tpot_ms": {"p50": 0.01, "p90": 0.01},
             "e2el_ms": {"p50": 0.01}}  # e2el p90 has no noise figure: no verdict
    verdicts = {(v.metric, v.q): v for v in judge(_errors(0.3), noise)}
    assert ("e2el_ms", "p90") not in verdicts
    noisy = verdicts["ttft_ms", "p50"]
    assert not noisy.checkable and "reported, not asserted" in str(noisy) and "35.0%" in str(noisy)
    assert verdicts["tpot_ms", "p50"].checkable and not verdicts["tpot_ms", "p50"].ok
