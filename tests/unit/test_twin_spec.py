"""twin.yaml: round trip, corrections applied to hardware, and every bad field named."""

from __future__ import annotations

import pytest

from burstbench.backends.hardware.profile import load_hardware
from burstbench.errors import SpecError
from burstbench.twin.spec import TwinSpec, apply_overrides, load_twin


def _good() -> TwinSpec:
    return TwinSpec(model="llama-3.1-8b", hardware="a100-80g", tp=1, replicas=2,
                    overrides={"bandwidth_efficiency_scale": 0.8, "flops_efficiency_scale": 1.2,
                               "step_overhead_s": 0.003, "layer_overhead_s": 4e-5, "frontend_latency_s": 0.002},
                    scheduler={"max_num_seqs": 128, "max_num_batched_tokens": 4096, "router": "least_outstanding"},
                    provenance={"run_id": "x"})


def test_round_trip(tmp_path):
    p = _good().write(tmp_path / "twin.yaml")
    back = load_twin(p)
    assert back == _good()
    assert back.frontend_s == 0.002
    assert back.sched().max_num_seqs == 128 and back.sched(max_num_seqs=8).max_num_seqs == 8


def test_overrides_scale_curves_and_cap_at_one():
    hw = load_hardware("a100-80g")
    out = apply_overrides(hw, _good().overrides)
    assert out.bandwidth_efficiency(1) == pytest.approx(hw.bandwidth_efficiency(1) * 0.8)
    # 0.75 * 1.2 = 0.9 and 0.3 * 1.2 = 0.36: scaled point by point, none above 1
    for (x, y), (x2, y2) in zip(hw.flops_efficiency.points, out.flops_efficiency.points, strict=True):
        assert x == x2 and y2 == pytest.approx(min(1.0, 1.2 * y))
    assert apply_overrides(hw, {"flops_efficiency_scale": 5.0}).flops_efficiency(8192) == 1.0
    assert out.step_overhead_s == 0.003 and out.layer_overhead_s == 4e-5
    assert out.peak_flops == hw.peak_flops


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"hardware": "no-such-gpu"}, "hardware"),
        ({"model": None}, "model"),
        ({"tp": 0}, "tp"),
        ({"tp": 3}, "tp"),  # 32 heads are not divisible by 3
        ({"replicas": "two"}, "replicas"),
        ({"overrides": {"bandwidth_efficiency_scale": -1}}, "overrides.bandwidth_efficiency_scale"),
        ({"overrides": {"flops_efficiency_scale": 0}}, "overrides.flops_efficiency_scale"),
        ({"overrides": {"warp_speed": 2}}, "overrides.warp_speed"),
        ({"overrides": [1, 2]}, "overrides"),
        ({"scheduler": {"max_num_seqs": 0}}, "scheduler.max_num_seqs"),
        ({"scheduler": {"router": "random"}}, "scheduler.router"),
        ({"scheduler": {"gpu_memory_utilization": 1.5}}, "scheduler.gpu_memory_utilization"),
        ({"scheduler": {"chunk": 1}}, "scheduler.chunk"),
        ({"format": "burstbench.twin/9"}, "format"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_field_is_named(tmp_path, edit, field):
    import yaml

    raw = _good().to_dict()
    raw.update(edit)
    p = tmp_path / "twin.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as exc:
        load_twin(p)
    assert f"field '{field}'" in str(exc.value)
    assert str(p) in str(exc.value)


def test_not_yaml_names_the_line(tmp_path):
    p = tmp_path / "twin.yaml"
    p.write_text("model: llama-3.1-8b\nhardware: [a100\n  tp: 1\n")
    with pytest.raises(SpecError) as exc:
        load_twin(p)
    assert f"{p}:" in str(exc.value) and "YAML" in str(exc.value)


@pytest.mark.parametrize("text", ["", "- a\n- b\n"])
def test_empty_or_list_file(tmp_path, text):
    p = tmp_path / "twin.yaml"
    p.write_text(text)
    with pytest.raises(SpecError, match="mapping"):
        load_twin(p)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="calibrate"):
        load_twin(tmp_path / "nope.yaml")
