"""One run selector: ``--run`` takes a run id, a unique id prefix or a label, in every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_importers import VLLM

from burstbench.analysis.importers import import_results
from burstbench.errors import StoreError
from burstbench.store import ResultsStore, resolve_run


def _store(tmp_path: Path) -> tuple[Path, list[str]]:
    """Four imported runs (real files): labels 'fit', 'check', 'check' again, and 'hold'."""
    src = tmp_path / "vllm.json"
    src.write_text(json.dumps(VLLM), encoding="utf-8")
    db = tmp_path / "r.duckdb"
    ids = [import_results(src, db, label=lab)[0] for lab in ("fit", "check", "check", "hold")]
    return db, ids


def test_label_id_and_prefix_resolve_in_one_place(tmp_path: Path) -> None:
    db, (fit, check1, check2, _hold) = _store(tmp_path)
    with ResultsStore(db) as store:
        con = store.con
        assert resolve_run(con, "fit") == fit
        assert resolve_run(con, fit) == fit and resolve_run(con, check2[:-1]) == check2
        with pytest.raises(StoreError, match="ambiguous") as e:
            resolve_run(con, "check")
        assert check1 in str(e.value) and check2 in str(e.value) and "(check)" in str(e.value)
        with pytest.raises(StoreError, match=r"'nope' not found.*\(fit\)"):
            store.resolve_run("nope")  # the store's method is the same function
        assert store.resolve_run("fit") == fit


def test_analyze_and_report_take_a_label(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from burstbench.cli import main
    from burstbench.reports.build import _select_runs

    db, (fit, _c1, c2, hold) = _store(tmp_path)
    assert main(["analyze", str(db), "--run", "fit", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_id"] == fit and out["label"] == "fit"
    assert main(["analyze", str(db), "--run", "check", "--json"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ambiguous" in err and c2 in err
    assert main(["analyze", str(db), "--run", "fit", "--compare", "hold", "--boot", "100", "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)["compare"]
    assert (cmp["run_a"], cmp["run_b"]) == (fit, hold)
    with ResultsStore(db) as store:
        assert _select_runs(store.con, ["fit", c2])[0] == [fit, c2]
