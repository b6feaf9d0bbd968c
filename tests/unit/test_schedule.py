"""Plans and scenarios: send times, limits, phases, partitioning, and flag/YAML errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from burstbench.errors import BurstbenchError, SpecError, UsageError
from burstbench.loadgen.scenario import Scenario, build_scenario, load_scenario_file
from burstbench.loadgen.schedule import build_plan, exact_rate, partition, poisson_times
from burstbench.traces.schema import Trace, conform, load_trace

URL = "http://127.0.0.1:9"


def trace_of(arrivals, inputs=None, outputs=None, sessions=None, turns=None) -> Trace:
    n = len(arrivals)
    data = {"arrival_s": arrivals, "input_tokens": inputs or [10] * n, "output_tokens": outputs or [5] * n}
    if sessions is not None:
        data["session_id"] = sessions
    if turns is not None:
        data["turn"] = turns
    return Trace(conform(pl.DataFrame(data)))


def test_trace_mode_uses_arrival_times_scaled_and_rebased():
    tr = trace_of([10.0, 11.0, 13.0, 20.0])
    plan = build_plan(tr, Scenario(url=URL, time_scale=2.0))
    assert plan.df["scheduled_s"].to_list() == [0.0, 0.5, 1.5, 5.0]
    assert plan.df["request_id"].to_list() == [0, 1, 2, 3]
    assert plan.end_s == 5.0
    assert plan.target_rate == pytest.approx(4 / 5.0)


def test_duration_and_request_limits_cut_the_schedule():
    tr = trace_of([float(i) for i in range(10)])
    assert build_plan(tr, Scenario(url=URL, duration_s=4.5)).df["scheduled_s"].to_list() == [0, 1, 2, 3, 4]
    assert build_plan(tr, Scenario(url=URL, max_requests=3)).df.height == 3
    # the first request is at t=0, so even a tiny duration sends one
    assert build_plan(trace_of([5.0, 100.0]), Scenario(url=URL, duration_s=1e-9)).df.height == 1


def test_phases_follow_warmup_and_cooldown_windows():
    tr = trace_of([float(i) for i in range(10)])
    plan = build_plan(tr, Scenario(url=URL, duration_s=10, warmup_s=2, cooldown_s=3))
    phases = [plan.phase(t) for t in plan.df["scheduled_s"].to_list()]
    assert phases == ["warmup"] * 2 + ["measure"] * 5 + ["cooldown"] * 3
    assert (plan.measure_start_s, plan.measure_end_s) == (2, 7)


def test_poisson_times_are_seeded_start_at_zero_and_hit_the_rate():
    a = poisson_times(100.0, seed=3, duration_s=50.0)
    b = poisson_times(100.0, seed=3, duration_s=50.0)
    c = poisson_times(100.0, seed=4, duration_s=50.0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a[0] == 0.0 and a.max() < 50.0 and np.all(np.diff(a) >= 0)
    # 5000 expected arrivals: the count is within 5 sigma (~350) of 5000
    assert abs(a.size - 5000) < 360
    gaps = np.diff(a)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.08)  # exponential: CV = 1
    assert poisson_times(10.0, seed=0, n=7).size == 7


def test_rate_mode_is_rescaled_to_exactly_the_asked_rate_by_default_and_says_so():
    tr = trace_of([0.0, 1.0, 2.0])
    pure_draw = poisson_times(500.0, seed=0, n=5000)
    drawn = (pure_draw.size - 1) / pure_draw[-1]
    assert abs(drawn / 500.0 - 1) > 0.001  # the seed's own draw is off the asked rate
    plan = build_plan(tr, Scenario(url=URL, mode="rate", rate=500.0, max_requests=5000))
    t = plan.df["scheduled_s"].to_numpy()
    assert (t.size - 1) / t[-1] == pytest.approx(500.0, rel=1e-12)
    # the same draw, one factor: the gaps keep their shape and order
    assert np.allclose(t, pure_draw * (drawn / 500.0), rtol=1e-12, atol=0)
    assert any("rescaled to exactly 500 req/s" in n and "--poisson pure" in n for n in plan.notes), plan.notes
    # with a duration the count is what fits the rate, every send inside the duration
    plan = build_plan(tr, Scenario(url=URL, mode="rate", rate=77.0, duration_s=10.0))
    t = plan.df["scheduled_s"].to_numpy()
    assert t.size == 770 and t[-1] < 10.0 and (t.size - 1) / t[-1] == pytest.approx(77.0, rel=1e-12)
    # --requests below that count wins
    assert build_plan(tr, Scenario(url=URL, mode="rate", rate=77.0, duration_s=10.0, max_requests=9)).df.height == 9


def test_pure_poisson_keeps_the_seeds_draw_and_says_its_own_rate():
    tr = trace_of([0.0, 1.0, 2.0])
    plan = build_plan(tr, Scenario(url=URL, mode="rate", rate=500.0, duration_s=10.0, poisson="pure"))
    t = plan.df["scheduled_s"].to_numpy()
    assert np.array_equal(t, poisson_times(500.0, seed=0, duration_s=10.0))
    own = (t.size - 1) / t[-1]
    assert any(f"{own:.4g} req/s" in n and "--poisson exact" in n for n in plan.notes), plan.notes
    with pytest.raises(UsageError, match="field 'poisson' must be one of exact, pure"):
        Scenario(url=URL, mode="rate", rate=5.0, poisson="vllm").validate()


def test_exact_rate_leaves_a_single_arrival_alone():
    one = np.zeros(1)
    assert exact_rate(one, 10.0)[0] is one


def test_rate_mode_cycles_trace_lengths():
    tr = trace_of([0.0, 1.0, 2.0], inputs=[11, 22, 33], outputs=[1, 2, 3])
    plan = build_plan(tr, Scenario(url=URL, mode="rate", rate=50.0, max_requests=7))
    assert plan.df["input_tokens"].to_list() == [11, 22, 33, 11, 22, 33, 11]
    assert plan.target_rate == 50.0
    assert plan.df["request_id"].to_list() == list(range(7))


def test_bad_input_rows_are_skipped_with_a_note_and_empty_trace_is_an_error():
    tr = trace_of([0.0, 1.0, 2.0], inputs=[0, 5, 6])
    plan = build_plan(tr, Scenario(url=URL))
    assert plan.df.height == 2 and "skipped 1" in plan.notes[0]
    with pytest.raises(BurstbenchError, match="input_tokens"):
        build_plan(trace_of([0.0], inputs=[0]), Scenario(url=URL))
    with pytest.raises(BurstbenchError, match="no requests"):
        build_plan(Trace(conform(pl.DataFrame({"arrival_s": [], "input_tokens": [], "output_tokens": []}))),
                   Scenario(url=URL))


def test_partition_puts_every_request_on_one_worker_and_keeps_sessions_whole():
    sessions = [f"s{i % 7}" if i % 3 else None for i in range(60)]
    tr = trace_of([i * 0.1 for i in range(60)], sessions=sessions)
    plan = build_plan(tr, Scenario(url=URL, max_concurrency=5))
    parts = partition(plan, 3)
    ids = sorted(i for p in parts for i in p.df["request_id"].to_list())
    assert ids == list(range(60))
    owner = {}
    for p in parts:
        for s in p.df["session_id"].drop_nulls().to_list():
            assert owner.setdefault(s, p.worker_id) == p.worker_id
    assert sum(p.max_concurrency for p in parts) == 5


def test_closed_loop_partition_splits_users():
    tr = trace_of([0.0, 1.0, 2.0])
    plan = build_plan(tr, Scenario(url=URL, mode="closed", concurrency=5, max_requests=20).validate())
    assert plan.mode == "closed" and plan.max_requests == 20
    parts = partition(plan, 2)
    assert [p.users for p in parts] == [3, 2]
    # more workers than users: only as many workers as users, so request ids have no gaps
    one = build_plan(tr, Scenario(url=URL, mode="closed", concurrency=1, max_requests=20).validate())
    assert len(partition(one, 4)) == 1


def test_scenario_yaml_then_flags_override(tmp_path):
    f = tmp_path / "sc.yaml"
    f.write_text("url: http://127.0.0.1:8000\nrate: 5\nduration: 30\nworkers: 2\napi: chat\n")
    sc = build_scenario(f, rate=7.5, workers=None)
    assert (sc.mode, sc.rate, sc.duration_s, sc.workers, sc.api) == ("rate", 7.5, 30.0, 2, "chat")
    assert build_scenario(None, url=URL, concurrency=4).mode == "closed"
    assert build_scenario(None, url=URL).mode == "trace"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("url: http://x\nbogus: 1\n", r"sc.yaml, field 'bogus': unknown field"),
        ("url: http://x\napi_key: sk-123\n", r"field 'api_key': never put credentials"),
        ("url: http://x\nworkers: two\n", r"field 'workers': expected an integer"),
        ("url: [unclosed\n", r"sc.yaml:\d+: not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_scenario_file_errors_name_file_and_field(tmp_path, text, match):
    f = tmp_path / "sc.yaml"
    f.write_text(text)
    with pytest.raises(SpecError, match=match):
        load_scenario_file(f)


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"url": "ftp://x"}, "url"),
        ({}, "url"),
        ({"url": URL, "mode": "rate"}, "rate"),
        ({"url": URL, "rate": -1.0}, "rate"),
        ({"url": URL, "workers": 0}, "workers"),
        ({"url": URL, "api": "embeddings"}, "api"),
        ({"url": URL, "duration_s": 5, "warmup_s": 3, "cooldown_s": 3}, "warmup_s"),
        ({"url": URL, "time_scale": 0}, "time_scale"),
        ({"url": URL, "max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_bad_flags_raise_usage_error_naming_the_field(flags, field):
    with pytest.raises(UsageError, match=f"field '{field}'"):
        build_scenario(None, **flags)


def test_scenario_json_has_no_credentials():
    sc = Scenario(url="https://user:secret@api.example.com/v1?key=abc", api_key_env="MY_KEY")
    data = sc.to_json()
    assert "secret" not in str(data) and "abc" not in str(data)
    assert data["api_key_env"] == "MY_KEY"


def test_plan_from_a_real_shipped_trace(azure_conv):
    tr = load_trace(azure_conv)
    plan = build_plan(tr, Scenario(url=URL, max_requests=50, time_scale=10.0))
    sched = plan.df["scheduled_s"].to_numpy()
    arr = tr.df["arrival_s"].to_numpy()[:50]
    assert np.allclose(sched, (arr - arr[0]) / 10.0)


def test_connections_to_warm_follow_users_or_the_busiest_second_and_are_capped():
    from burstbench.loadgen.workers import MAX_WARM_CONNECTIONS, connections_needed

    closed = build_plan(trace_of([0.0] * 5), Scenario(url=URL, mode="closed", concurrency=40))
    assert connections_needed(closed) == 40
    # 3 sends in [0, 1), then 5 within [10, 10.8]: the busiest second holds 5
    open_loop = build_plan(trace_of([0.0, 0.5, 0.9, 10.0, 10.2, 10.4, 10.6, 10.8]), Scenario(url=URL))
    assert connections_needed(open_loop) == 5
    capped = build_plan(trace_of([0.0, 0.5, 0.9, 10.0, 10.2, 10.4, 10.6, 10.8]), Scenario(url=URL, max_concurrency=2))
    assert connections_needed(capped) == 2
    many = build_plan(trace_of([i * 1e-4 for i in range(1000)]), Scenario(url=URL))
    assert connections_needed(many) == MAX_WARM_CONNECTIONS
