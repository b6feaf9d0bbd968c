"""WorkloadSpec: YAML round trips, and errors that name the field and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from burstbench.cli import main
from burstbench.errors import SpecError
from burstbench.traces.fit import fit_trace
from burstbench.traces.presets import PRESETS, preset
from burstbench.traces.schema import load_trace
from burstbench.traces.spec import (
    ArrivalSpec,
    Dist,
    JointSpec,
    LengthSpec,
    PrefixSpec,
    ReasoningSpec,
    SessionSpec,
    WindowSpec,
    WorkloadSpec,
)


def full_spec() -> WorkloadSpec:
    return WorkloadSpec(
        arrivals=ArrivalSpec(
            "piecewise",
            {},
            [
                WindowSpec(0.0, 60.0, "gamma", {"rate": 2.0, "burstiness": 0.25}),
                WindowSpec(60.0, 120.5, "weibull", {"shape": 0.7, "scale": 0.1}, fill=True),
            ],
        ),
        lengths=LengthSpec(
            Dist("empirical", {"probs": [0.0, 0.5, 1.0], "quantiles": [1.0, 100.0, 4000.0]}),
            Dist("zipf", {"a": 1.1, "max": 1023}),
            JointSpec("gaussian-copula", 0.31),
        ),
        context_limit=8192,
        sessions=SessionSpec(Dist("geometric", {"p": 0.3}), Dist("lognormal", {"s": 1.0, "scale": 12.5})),
        prefix=PrefixSpec(4, Dist("constant", {"value": 512}), 0.75),
        block_size=32,
        reasoning=ReasoningSpec(Dist("beta", {"a": 7.4, "b": 2.6})),
        tenants={"chat": 0.7, "api": 0.3},
        models={"m": 1.0},
        duration_s=120.5,
        provenance={"note": "hand-written", "scores": {"gamma": {"aic": -1.5e3}}},
    )


def test_full_spec_round_trips_through_yaml(tmp_path: Path) -> None:
    spec = full_spec()
    p = spec.to_yaml(tmp_path / "s.yaml")
    back = WorkloadSpec.from_yaml(p)
    assert back == spec
    assert back.to_yaml_text() == p.read_text()


def test_fitted_spec_round_trips(azure_conv: Path, tmp_path: Path) -> None:
    spec = fit_trace(load_trace(azure_conv), window_s=900).to_spec()
    back = WorkloadSpec.from_yaml(spec.to_yaml(tmp_path / "f.yaml"))
    assert back == spec
    assert back.arrivals.process == "piecewise" and len(back.arrivals.windows) == 4
    assert back.provenance["trace"].endswith("azure_llm_2023_conv.csv")
    assert back.provenance["scores"]["arrivals"]["best"] == "gamma"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_round_trips(name: str) -> None:
    spec = preset(name)
    assert WorkloadSpec.from_yaml_text(spec.to_yaml_text()) == spec
    assert spec.provenance["source"]


def _bad(data: dict, field: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as info:
        WorkloadSpec.from_dict(data, path="w.yaml")
    assert info.value.field == field
    assert str(info.value).startswith("w.yaml")


def base() -> dict:
    return yaml.safe_load(full_spec().to_yaml_text())


def test_missing_and_unknown_fields_are_named() -> None:
    d = base()
    del d["arrivals"]
    _bad(d, "arrivals", "required")
    d = base()
    d["arivals"] = {}
    _bad(d, "arivals", "unknown key")
    d = base()
    d["lengths"]["input"]["family"] = "cauchy"
    _bad(d, "lengths.input.family", "unknown family 'cauchy'; use one of")
    d = base()
    del d["lengths"]["output"]["params"]["a"]
    _bad(d, "lengths.output.params.a", "required")


def test_bad_values_are_named() -> None:
    d = base()
    d["arrivals"]["windows"][0]["params"]["rate"] = -1
    _bad(d, "arrivals.windows[0].params.rate", "must be > 0")
    d = base()
    d["arrivals"]["windows"][1]["start_s"] = 30
    _bad(d, "arrivals.windows[1].start_s", "must be sorted and not overlap")
    d = base()
    d["arrivals"] = {"process": "gamma", "params": {"rate": 1, "burstiness": 1, "shape": 2, "scale": 1}}
    _bad(d, "arrivals.params", "either rate and burstiness")
    d = base()
    d["arrivals"] = {"process": "poisson", "params": {"rate": "fast"}}
    _bad(d, "arrivals.params.rate", "expected a finite number")
    d = base()
    d["lengths"]["input"]["params"]["quantiles"] = [5.0, 1.0, 9.0]
    _bad(d, "lengths.input.params", "non-decreasing")
    d = base()
    d["lengths"]["joint"]["rho"] = 1.5
    _bad(d, "lengths.joint.rho", "must be <= 1")
    d = base()
    d["context_limit"] = 100.5
    _bad(d, "context_limit", "expected an integer")
    d = base()
    d["arrivals"] = {"process": "diurnal", "params": {"mean_rate": 1, "amplitude": 2}}
    _bad(d, "arrivals.params.amplitude", "<= 1")
    d = base()
    d["version"] = 7
    _bad(d, "version", "unsupported version")
    _bad([1, 2], "(top level)", "expected a mapping")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such spec file"):
        WorkloadSpec.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("  \n")
    with pytest.raises(SpecError, match="empty"):
        WorkloadSpec.from_yaml(tmp_path / "empty.yaml")
    (tmp_path / "broken.yaml").write_text("arrivals:\n  process: gamma\n  params: {rate: 1\nlengths: x\n")
    with pytest.raises(SpecError, match="not valid YAML") as info:
        WorkloadSpec.from_yaml(tmp_path / "broken.yaml")
    assert info.value.line is not None


def test_cli_reports_spec_errors_in_one_line(tmp_path: Path, capsys) -> None:
    d = base()
    d["arrivals"]["windows"][0]["params"]["rate"] = 0
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    rc = main(["trace", "synth", str(p), "-o", str(tmp_path / "t.parquet")])
    err = capsys.readouterr().err.strip()
    assert rc == SpecError.exit_code
    assert "\n" not in err and "arrivals.windows[0].params.rate" in err and str(p) in err
    assert not (tmp_path / "t.parquet").exists()
