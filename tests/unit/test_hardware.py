"""Hardware presets, profile files, the local profiler and telemetry sampling (all real)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import psutil
import pytest

from burstbench.backends.hardware import presets
from burstbench.backends.hardware.profile import (
    EfficiencyCurve,
    list_hardware,
    load_hardware,
)
from burstbench.backends.hardware.telemetry import GpuSampler, TelemetrySampler
from burstbench.cli import main
from burstbench.errors import InputError, UsageError
from burstbench.store import ResultsStore, RunInfo

# The datasheet figures: (FLOP/s bf16, bytes/s, memory GB)
DATASHEET = {
    "a100-80g": (312e12, 2.04e12, 80),
    "h100-sxm": (989e12, 3.35e12, 80),
    "h200": (989e12, 4.8e12, 141),
    "l40s": (362e12, 0.864e12, 48),
    "ascend-910c": (780e12, 3.2e12, 128),
}


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_presets_carry_the_datasheet_figures(name: str) -> None:
    hw = load_hardware(name)
    flops, bw, gb = DATASHEET[name]
    assert hw.peak_flops == pytest.approx(flops, rel=0.01)
    assert hw.mem_bandwidth == pytest.approx(bw, rel=0.01)
    # GB on the datasheet; the driver reports a little less or GiB-rounded more
    assert hw.memory_bytes / 1e9 == pytest.approx(gb, rel=0.08)
    assert "datasheet" in hw.source and "eta_B" in hw.source


def test_one_efficiency_family_for_every_gpu() -> None:
    """No per-GPU fudge factors: curves and overheads are identical across presets."""
    profiles = [load_hardware(n) for n in DATASHEET]
    ref = profiles[0]
    for hw in profiles[1:]:
        assert hw.flops_efficiency.points == ref.flops_efficiency.points
        assert hw.bandwidth_efficiency.points == ref.bandwidth_efficiency.points
        assert hw.step_overhead_s == ref.step_overhead_s
        assert hw.layer_overhead_s == ref.layer_overhead_s
    # and they are the ranges: ~75 % bandwidth, 70-75 % of peak for big prefills
    assert ref.bandwidth_efficiency(1) == pytest.approx(0.75, abs=0.05)
    assert 0.70 <= ref.flops_efficiency(4096) <= 0.76


def test_shipped_json_matches_the_preset_table(tmp_path: Path) -> None:
    written = presets.write_presets(tmp_path)
    assert {p.stem for p in written} == set(list_hardware())
    for p in written:
        assert load_hardware(str(p)) == load_hardware(p.stem)


def test_efficiency_curve_interpolates_in_log_tokens() -> None:
    c = EfficiencyCurve(((16, 0.4), (256, 0.6)))
    assert c(16) == pytest.approx(0.4) and c(256) == pytest.approx(0.6)
    assert c(64) == pytest.approx(0.5)  # log-midpoint of 16 and 256
    assert c(1) == pytest.approx(0.4) and c(1e6) == pytest.approx(0.6)  # clamped
    assert c(64.0) == c(64) and c(100.5) == pytest.approx(0.4 + 0.2 * math.log(100.5 / 16) / math.log(16))
    assert EfficiencyCurve.constant(0.8)(12345) == 0.8
    for bad in [(), ((0, 0.5),), ((16, 1.5),), ((16, 0.0),)]:
        with pytest.raises(ValueError):
            EfficiencyCurve(bad)


def test_profile_accepts_plain_efficiencies_in_code() -> None:
    import dataclasses

    hw = dataclasses.replace(load_hardware("h100-sxm"), bandwidth_efficiency=0.8,
                             flops_efficiency=[[1, 0.2], [4096, 0.7]])
    assert hw.bandwidth_efficiency(123) == 0.8
    assert hw.flops_efficiency(4096) == pytest.approx(0.7)
    assert load_hardware("h100-sxm").to_dict()["bandwidth_efficiency"] == 0.75


def _profile_json(tmp_path: Path, **patch: object) -> Path:
    raw = load_hardware("h100-sxm").to_dict()
    for k, v in patch.items():
        if v is None:
            raw.pop(k)
        else:
            raw[k] = v
    p = tmp_path / "hw.json"
    p.write_text(json.dumps(raw))
    return p


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"peak_flops": None}, "peak_flops"),
        ({"mem_bandwidth": "fast"}, "mem_bandwidth"),
        ({"memory_bytes": -1}, "memory_bytes"),
        ({"flops_efficiency": [[16, 0.5], [64]]}, "flops_efficiency"),
        ({"bandwidth_efficiency": 1.7}, "bandwidth_efficiency"),
        ({"flops_efficiency": None}, "flops_efficiency"),
        ({"name": ""}, "name"),
        ({"format": "other/9"}, "format"),
    ],
)
def test_bad_profile_names_the_field(tmp_path: Path, patch: dict, field: str) -> None:
    path = _profile_json(tmp_path, **patch)
    with pytest.raises(InputError) as err:
        load_hardware(str(path))
    assert f"field '{field}'" in str(err.value) and str(path) in str(err.value)


def test_bad_profile_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x",\n "peak_flops": }')
    with pytest.raises(InputError, match=r"broken\.json:2"):
        load_hardware(str(broken))
    with pytest.raises(InputError, match="burstbench profile"):
        load_hardware(str(tmp_path / "missing.json"))
    with pytest.raises(UsageError, match="h100-sxm"):
        load_hardware("tpu-v9")


def test_profile_cli_measures_this_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One real quick profile of this machine through the CLI."""
    out = tmp_path / "here.json"
    assert main(["profile", "--quick", "-o", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    hw = load_hardware(str(out))
    assert printed["name"] == hw.name and hw.kind in {"cpu", "gpu"}
    # Plausible for any machine that can run the test suite:
    assert 1e8 < hw.peak_flops < 1e16
    assert 1e8 < hw.mem_bandwidth < 1e14
    assert hw.memory_bytes == psutil.virtual_memory().total
    pts = hw.flops_efficiency.points
    assert pts[-1][1] == pytest.approx(1.0)  # the best GEMM defines the peak
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(pts))
    assert 0 < hw.bandwidth_efficiency(1) <= 1
    assert set(hw.measured["bandwidth"]) == {"copy", "triad", "gemv"}
    # the measured profile drives the cost model like a preset
    from burstbench.backends.reference.costmodel import CostModel
    from burstbench.backends.reference.models import load_model

    t = CostModel(load_model("llama-3.1-8b"), hw).step_time([], [100])
    assert t > 16e9 * 0.9 / hw.mem_bandwidth  # at least the weights over the measured peak


def test_profile_cli_rejects_bad_output(tmp_path: Path) -> None:
    assert main(["profile", "--quick", "-o", str(tmp_path / "no" / "dir" / "x.json")]) == 2


def test_telemetry_samples_this_host_into_a_results_store(tmp_path: Path) -> None:
    clock_t = [0.0]

    def clock() -> float:
        clock_t[0] += 0.5
        return clock_t[0]

    sampler = TelemetrySampler(clock, interval_s=0.01)
    batches = list(sampler.iter_samples(count=3))
    sampler.stop()
    assert len(batches) == 3
    rows = [r for b in batches for r in b]
    names = {r[2] for r in rows}
    assert {"cpu_utilization", "memory_used", "memory_total"} <= names
    for _t, source, name, value, _labels, _ in rows:
        assert source in {"client", "gpu"}
        if name in ("cpu_utilization", "cpu_utilization_per_core"):
            assert 0.0 <= value <= 100.0
    used = [r[3] for r in rows if r[2] == "memory_used"]
    total = next(r[3] for r in rows if r[2] == "memory_total")
    assert all(0 < u <= total for u in used)
    assert total == pytest.approx(psutil.virtual_memory().total / 1e9)
    per_core = [r for r in batches[0] if r[2] == "cpu_utilization_per_core"]
    assert len(per_core) == psutil.cpu_count() and json.loads(per_core[0][4]) == {"cpu": 0}
    assert [b[0][0] for b in batches] == [0.5, 1.0, 1.5]

    with ResultsStore(tmp_path / "r.duckdb") as store:
        run = store.create_run(RunInfo(backend="test"))
        store.append_telemetry([(run, *r) for r in rows])
        got = store.con.execute(
            "SELECT count(*), count(DISTINCT name) FROM telemetry WHERE run_id = ?", [run]
        ).fetchone()
    assert got == (len(rows), len(names))


def test_gpu_sampler_says_why_it_is_off() -> None:
    gpu = GpuSampler()
    if gpu.available:  # pragma: no cover - only on a machine with an NVIDIA GPU
        rows = gpu.sample(0.0)
        assert any(r[2] == "gpu_utilization" for r in rows)
        gpu.close()
    else:
        assert gpu.sample(0.0) == []
        assert "nvidia-ml-py" in gpu.reason or "NVML" in gpu.reason


def test_threaded_sampler_emits_until_stopped() -> None:
    import threading

    got: list[list] = []
    enough = threading.Event()

    def emit(rows: list) -> None:
        got.append(rows)
        if len(got) >= 2:
            enough.set()

    sampler = TelemetrySampler(interval_s=0.02, gpu=False, per_core=False)
    sampler.start(emit)
    assert enough.wait(timeout=5.0)
    sampler.stop()
    n = len(got)
    assert sampler._thread is not None and not sampler._thread.is_alive()
    assert len(got) == n  # nothing after stop
    assert sampler.gpu_status == "GPU telemetry off"


def test_profile_list_shows_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["hardware"]
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(DATASHEET)
    assert by_name["h200"]["mem_bandwidth_tbps"] == pytest.approx(4.8)


@pytest.mark.parametrize(("load", "warned"), [(8.0, True), (0.0, False)])
def test_profile_warns_when_the_machine_is_busy(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                load: float, warned: bool) -> None:
    """A profile taken under other work records what that work left: say so (issue 12's
    committed profile, taken at load 12-15, measured a 13x lower peak than the idle machine)."""
    import os

    from burstbench.backends.hardware import cli

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    msg = cli._busy_before()
    assert (msg is not None) == warned
    if warned:
        assert "load average 8.0 on 2 CPUs" in msg and "idle" in msg
    # and what the user sees: the profile is still measured and written, the warning beside it
    assert main(["profile", "--quick"]) == 0
    printed = capsys.readouterr()
    assert ("profile again on an idle machine" in printed.out + printed.err) == warned
    assert "GFLOP/s" in printed.out
