"""Property tests for bad input, covering what other suites do not yet.

Already covered elsewhere (not repeated here): auto-detected ingest of random
bytes / BurstGPT rows / Mooncake records (``test_ingest_property.py``) and the SSE
parser (``test_sse.py``). Here:

* every reader *forced* with ``--format`` on random bytes, and on real shipped
  trace files (Azure, BurstGPT, Mooncake, a Bailian sample) damaged at random
  (bytes flipped, cut short, lines dropped or duplicated, junk inserted);
* generic CSV/JSONL with random ``--map`` specs;
* the ``--map`` and ``--slo`` parsers on random text, and on well-formed input
  built by the test (the parsed value must equal what was built);
* WorkloadSpec and scenario YAML: random YAML documents and damaged real specs;
* ``trace synth`` from a damaged spec: a trace or a one-line error, never a
  partial file in the output directory.

The rule for every case: a correct result or a ``BurstbenchError`` whose message
is non-empty and names the file, the field or the flag at fault; never another
exception; after a failure the output directory holds nothing.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from burstbench.analysis.metrics import METRIC_NAMES
from burstbench.analysis.slo import parse_slo
from burstbench.errors import BurstbenchError, InputError, UsageError
from burstbench.loadgen.scenario import build_scenario, load_scenario_file
from burstbench.traces.ingest import ingest_file
from burstbench.traces.readers import FORMATS
from burstbench.traces.readers.generic import MAP_KEYS, parse_map
from burstbench.traces.schema import read_trace
from burstbench.traces.spec import WorkloadSpec

TRACES = Path(__file__).resolve().parents[2] / "burstbench" / "data" / "traces"
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _head(name: str, lines: int) -> bytes:
    with open(TRACES / name, "rb") as f:
        return b"".join(f.readline() for _ in range(lines))


BAILIAN = "".join(json.dumps({"chat_id": i, "parent_chat_id": -1 if i % 3 == 0 else i - 1, "timestamp": i * 0.5,
                              "turn": i % 3 + 1, "input_length": 100 + i, "output_length": 10 + i,
                              "type": "text", "hash_ids": [i, i + 1]}) + "\n" for i in range(12)).encode()
SAMPLES = {
    ("azure", ".csv"): _head("azure_llm_2023_conv.csv", 12),
    ("burstgpt", ".csv"): _head("burstgpt_v1_head400.csv", 12),
    ("mooncake", ".jsonl"): _head("mooncake_synthetic.jsonl", 8),
    ("bailian", ".jsonl"): BAILIAN,
}


def names_the_culprit(exc: BurstbenchError, *names: str) -> bool:
    """The message says which file, field or flag is at fault."""
    msg = str(exc)
    if isinstance(exc, InputError) and (exc.path or exc.field):
        return bool(msg) and (exc.path is None or Path(exc.path).name in msg)
    return bool(msg) and (any(n in msg for n in names) or "--" in msg or "field" in msg)


def _ingest_outcome(content: bytes, suffix: str, fmt: str | None, mapping: str | None = None,
                    skip_bad: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"in{suffix}"
        outdir = Path(tmp) / "out"
        outdir.mkdir()
        out = outdir / "t.parquet"
        src.write_bytes(content)
        try:
            trace = ingest_file(src, out, fmt, mapping=mapping, skip_bad=skip_bad)
        except BurstbenchError as exc:
            assert names_the_culprit(exc, src.name), f"unhelpful message: {exc!r}"
            assert list(outdir.iterdir()) == [], "a failed ingest left a file behind"
            return
        back = read_trace(out)
        assert len(back) == len(trace) > 0
        arr = back.df["arrival_s"].to_list()
        assert arr[0] == 0.0 and arr == sorted(arr)
        assert all(math.isfinite(a) for a in arr)
        assert (back.df["input_tokens"] >= 0).all() and (back.df["output_tokens"] >= 0).all()
        assert [p.name for p in outdir.iterdir()] == ["t.parquet"], "temporary files left behind"


@st.composite
def damaged(draw, raw: bytes) -> bytes:
    """A real file with a few random edits: flips, cuts, dropped/duplicated lines, junk."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "drop", "dup", "junk", "swapdigit"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:]
        elif op in ("drop", "dup"):
            lines = bytes(data).split(b"\n")
            k = draw(st.integers(0, len(lines) - 1))
            if op == "drop":
                del lines[k]
            else:
                lines.insert(k, lines[k])
            data = bytearray(b"\n".join(lines))
        elif op == "junk":
            data[i:i] = draw(st.sampled_from([b",", b'"', b"\x00", b"\xff\xfe", b"-1", b"1e308", b"NaN", b"{",
                                              b"}", b"\n\n", b"\r", b"-", b"99999999999999999999", b"\t"]))
        elif op == "swapdigit" and chr(data[i]).isdigit():
            data[i] = ord(draw(st.sampled_from("0123456789-.")))
    return bytes(data)


@pytest.mark.parametrize(("fmt", "suffix"), list(SAMPLES))
@SETTINGS
@given(data=st.data(), forced=st.booleans(), skip_bad=st.booleans())
def test_damaged_real_traces(fmt, suffix, data, forced, skip_bad):
    content = data.draw(damaged(SAMPLES[(fmt, suffix)]))
    _ingest_outcome(content, suffix, fmt if forced else None, skip_bad=skip_bad)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=10, deadline=None)
@given(content=st.binary(max_size=300), jsonl=st.booleans())
def test_every_forced_format_on_random_bytes(fmt, content, jsonl):
    mapping = "arrival=a,input=b,output=c" if fmt in ("csv", "jsonl") else None
    _ingest_outcome(content, ".jsonl" if jsonl else ".csv", fmt, mapping=mapping)


column = st.sampled_from(["ts", "n_in", "n_out", "model", "user", "sid", "nope", ""])
map_spec = st.lists(
    st.tuples(st.sampled_from([*MAP_KEYS, "bogus", ""]), column,
              st.sampled_from(["", ":s", ":ms", ":us", ":ns", ":iso8601", ":epoch", ":hours", ":"])),
    max_size=7,
).map(lambda parts: ",".join(f"{k}={c}{u}" for k, c, u in parts))
GENERIC_CSV = b"ts,n_in,n_out,model,user,sid\n0,10,5,m,u1,s1\n1500,20,7,m,u2,s1\n3000,30,,m,u1,s2\n-5,4,4,m,u3,\n"
GENERIC_JSONL = (b'{"ts": 0, "n_in": 10, "n_out": 5, "model": "m", "user": "u1", "sid": "s1"}\n'
                 b'{"ts": 1500, "n_in": 20, "n_out": 7, "model": "m", "user": "u2", "sid": "s1"}\n'
                 b'{"ts": "x", "n_in": -3, "n_out": 2, "user": null}\n')


@SETTINGS
@given(spec=map_spec, jsonl=st.booleans(), skip_bad=st.booleans(), data=st.data())
def test_generic_csv_jsonl_with_random_maps(spec, jsonl, skip_bad, data):
    raw = GENERIC_JSONL if jsonl else GENERIC_CSV
    content = data.draw(st.one_of(st.just(raw), damaged(raw)))
    _ingest_outcome(content, ".jsonl" if jsonl else ".csv", "jsonl" if jsonl else "csv", mapping=spec,
                    skip_bad=skip_bad)


@settings(max_examples=200, deadline=None)
@given(st.one_of(map_spec, st.text(max_size=60)))
def test_map_parser_random_text(text):
    try:
        out = parse_map(text)
    except UsageError as exc:
        assert "--map" in str(exc)
        return
    assert {"arrival", "input", "output"} <= set(out) <= set(MAP_KEYS)
    assert all(v and v == v.strip() for v in out.values())
    assert parse_map(",".join(f"{k}={v}" for k, v in out.items())) == out  # round trip


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40),
                 st.text(alphabet="tfpeil=0123456789.,msu-+eE n", max_size=40)))
def test_slo_parser_random_text(text):
    try:
        out = parse_slo(text)
    except UsageError as exc:
        assert "--slo" in str(exc)
        return
    assert out and set(out) <= set(METRIC_NAMES)
    assert all(v > 0 and math.isfinite(v) for v in out.values())


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(METRIC_NAMES), st.tuples(
    st.floats(min_value=1e-3, max_value=1e6, allow_nan=False), st.sampled_from(list(UNITS))), min_size=1))
def test_slo_parser_reads_what_was_written(slo):
    text = ",".join(f"{m}={v!r}{u}" for m, (v, u) in slo.items())
    out = parse_slo(text)
    assert out == {m: pytest.approx(v * UNITS[u], rel=1e-12) for m, (v, u) in slo.items()}


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _preset_yaml() -> str:
    from burstbench.traces.presets import preset

    return preset("burstgpt").to_yaml_text()


PRESET_YAML = _preset_yaml()


@st.composite
def damaged_spec_dict(draw):
    """The burstgpt preset as a dict with a few values replaced by random JSON-like values."""
    data = yaml.safe_load(PRESET_YAML)
    for _ in range(draw(st.integers(1, 3))):
        node = data
        path = []
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node, key=str)))
            path.append(key)
            if not isinstance(node[key], dict):
                break
            node = node[key]
        target = data
        for k in path[:-1]:
            target = target[k]
        if path:
            if draw(st.booleans()):
                target[path[-1]] = draw(json_like)
            else:
                del target[path[-1]]
    return data


def _spec_outcome(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(text)
        try:
            spec = WorkloadSpec.from_yaml(path)
        except BurstbenchError as exc:
            assert names_the_culprit(exc, path.name), f"unhelpful message: {exc!r}"
            return
        # a spec that loads round-trips through YAML unchanged (DESIGN section 3)
        assert WorkloadSpec.from_yaml_text(spec.to_yaml_text()).to_dict() == spec.to_dict()


@SETTINGS
@given(damaged_spec_dict())
def test_workload_spec_damaged(data):
    _spec_outcome(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("family", [[], {}, ["zipf"], {"a": 1}, 1.5, None, True])
def test_workload_spec_family_of_the_wrong_type(family):
    """Found by test_synth_from_damaged_spec...: a list as a family was a TypeError (unhashable)."""
    data = yaml.safe_load(PRESET_YAML)
    data["lengths"]["input"]["family"] = family
    with pytest.raises(BurstbenchError) as err:
        WorkloadSpec.from_yaml_text(yaml.safe_dump(data), path="spec.yaml")
    assert "spec.yaml" in str(err.value) and "family" in str(err.value)


@SETTINGS
@given(st.one_of(json_like.map(lambda v: yaml.safe_dump(v)), st.text(max_size=200)))
def test_workload_spec_random_yaml(text):
    _spec_outcome(text)


scenario_doc = st.dictionaries(
    st.sampled_from(["url", "api", "mode", "rate", "concurrency", "max_concurrency", "duration", "duration_s",
                     "requests", "max_requests", "workers", "timeout_s", "warmup_s", "seed", "time_scale",
                     "ignore_eos", "api_key", "token", "bogus", "think_time_s", "grace_s"]),
    st.one_of(json_like, st.sampled_from(["http://127.0.0.1:8000", "chat", "rate", "closed", "trace", 1, 0,
                                          -1, 2.5, float("nan"), float("inf"), True, "10s", "1e9"])),
    max_size=6,
)


@SETTINGS
@given(st.one_of(scenario_doc.map(lambda d: yaml.safe_dump(d)), st.text(max_size=120)))
def test_scenario_yaml(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenario.yaml"
        path.write_text(text)
        try:
            load_scenario_file(path)
            sc = build_scenario(path, url="http://127.0.0.1:9")
        except BurstbenchError as exc:
            assert names_the_culprit(exc, path.name), f"unhelpful message: {exc!r}"
            return
        assert sc.url == "http://127.0.0.1:9" and sc.workers >= 1
        json.dumps(sc.to_json())  # storable as runs.scenario


@pytest.mark.parametrize("name", ["workers", "time_scale", "warmup_s", "api", "timeout_s", "ignore_eos"])
def test_scenario_null_in_a_required_field(tmp_path, name):
    """Found by test_scenario_yaml: 'workers: null' was a TypeError inside validate()."""
    path = tmp_path / "sc.yaml"
    path.write_text(f"{name}: null\n")
    with pytest.raises(BurstbenchError) as err:
        build_scenario(path, url="http://127.0.0.1:9")
    assert "sc.yaml" in str(err.value) and name in str(err.value)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged_spec_dict())
def test_synth_from_damaged_spec_leaves_nothing_behind(capsys, data):
    from burstbench.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(yaml.safe_dump(data, sort_keys=False))
        outdir = Path(tmp) / "out"
        outdir.mkdir()
        out = outdir / "t.parquet"
        capsys.readouterr()
        rc = main(["trace", "synth", str(spec), "-o", str(out), "--requests", "200", "--seed", "1"])
        err = capsys.readouterr().err
        if rc:
            assert "Traceback" not in err
            assert list(outdir.iterdir()) == [], "a failed synth left a file behind"
            return
        back = read_trace(out)
        assert 0 < len(back) <= 200
        assert [p.name for p in outdir.iterdir()] == ["t.parquet"]


# -- issue 14: hostile sizes and strings through the real CLI ------------------------------------
#
# Each property runs ``burstbench.cli.main`` on a real file and accepts exactly two
# outcomes: success, or one ``error: ...`` line on stderr with a non-zero code. Any
# other exception propagates out of ``main`` and fails the property. Whatever is
# printed carries no raw control character and no markup was interpreted.

import re  # noqa: E402

import polars as pl  # noqa: E402

from burstbench import limits  # noqa: E402
from burstbench.cli import main  # noqa: E402

_RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
HOSTILE_SETTINGS = settings(max_examples=12, deadline=None,
                            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _cli(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    printed = out.out + out.err
    assert not _RAW_CONTROL.search(printed), repr(printed[:300])
    if rc != 0:
        lines = out.err.strip().splitlines()
        assert [ln for ln in lines if ln.startswith("error: ")] == lines[-1:], out.err[-500:]
        assert len(lines[-1]) <= limits.MAX_ERROR_CHARS + len("error: ")
    return rc, out.out


def _nest(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a": ' * depth + "1" + "}" * depth)


@HOSTILE_SETTINGS
@given(depth=st.integers(1, 3000), kind=st.sampled_from(["list", "dict"]), skip_bad=st.booleans(),
       where=st.sampled_from(["jsonl", "import", "twin", "spec"]))
def test_any_nesting_depth_is_read_or_refused_in_one_line(capsys, depth, kind, skip_bad, where):
    value = _nest(depth, kind)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if where == "jsonl":
            src = d / "t.jsonl"
            src.write_text('{"a": 0, "b": 1, "c": 2}\n{"a": 1, "b": 2, "c": 3, "x": ' + value + "}\n")
            args = ["trace", "ingest", str(src), "--map", "arrival=a,input=b,output=c", "-o", str(d / "t.parquet")]
            args += ["--skip-bad"] if skip_bad else []
        elif where == "import":
            src = d / "bench.json"
            src.write_text('{"ttfts": ' + value + "}")
            args = ["analyze", "--import", str(src), "-o", str(d / "r.duckdb")]
        else:
            src = d / "f.yaml"
            src.write_text("model: llama-3.1-8b\nhardware: l40s\nx: " + value + "\n")
            args = (["whatif", str(src), "--trace", str(TRACES / "azure_llm_2023_conv.csv"), "--no-search"]
                    if where == "twin" else ["trace", "synth", str(src), "-o", str(d / "s.parquet")])
        rc, _ = _cli(capsys, args)
        if depth > limits.MAX_NESTING and where != "jsonl":
            assert rc != 0  # nothing that deep is a real file


huge = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([limits.MAX_TOKENS, limits.MAX_TOKENS + 1, 2**63 - 1, 2**63, 2**64, 9.2e18, -9.2e18,
                     limits.MAX_SPAN_S, limits.MAX_SPAN_S * 1.01, 1.7e9, 1e308]),
)


@HOSTILE_SETTINGS
@given(ts=st.lists(huge, min_size=1, max_size=4), tokens=st.lists(huge, min_size=1, max_size=4),
       skip_bad=st.booleans())
def test_huge_numbers_in_a_trace_are_kept_or_refused_by_row(capsys, ts, tokens, skip_bad):
    rows = [f"{t},ChatGPT,{tok},{tok},1,Conv" for t, tok in zip(ts, tokens, strict=False)]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = d / "t.csv"
        src.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n0,ChatGPT,1,1,2,Conv\n"
                       + "\n".join(rows) + "\n")
        rc, _ = _cli(capsys, ["trace", "ingest", str(src), "-o", str(d / "t.parquet")]
                     + (["--skip-bad"] if skip_bad else []))
        if rc == 0:  # what was kept is within every limit, so the commands that size arrays by it run
            df = read_trace(d / "t.parquet").df
            assert df["input_tokens"].max() <= limits.MAX_TOKENS
            assert df["arrival_s"].max() <= limits.MAX_SPAN_S
            rc, _ = _cli(capsys, ["trace", "stats", str(d / "t.parquet")])
            assert rc == 0


@HOSTILE_SETTINGS
@given(arrival=st.lists(st.floats(0, 1e20), min_size=1, max_size=4),
       tokens=st.lists(st.integers(0, 2**62), min_size=1, max_size=4),
       window=st.one_of(st.floats(min_value=1e-320, max_value=1e12), st.sampled_from([1e-9, 0.0, -1.0])))
def test_parquet_written_elsewhere_is_bounded_in_stats(capsys, arrival, tokens, window):
    n = min(len(arrival), len(tokens))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "t.parquet"
        pl.DataFrame({"arrival_s": arrival[:n], "input_tokens": tokens[:n], "output_tokens": tokens[:n]}).write_parquet(p)
        rc, _ = _cli(capsys, ["trace", "stats", str(p), "--window", repr(window)])
        if rc == 0:
            assert max(tokens[:n]) <= limits.MAX_TOKENS and max(arrival[:n]) - min(arrival[:n]) <= limits.MAX_SPAN_S


hostile_text = st.lists(
    st.one_of(st.sampled_from([*"[]/\\=#:;,'\" ", "[/x]", "[bold]", "[link=x]", "\x1b[31m", "\x1b]0;t\x07",
                               "\u202e", "\x9b", "\r", "\t"]),
              st.characters(min_codepoint=0, max_codepoint=0x9f, blacklist_categories=("Cs",))),
    min_size=1, max_size=12,
).map("".join).filter(lambda s: s.strip() and "\n" not in s and "\r" not in s and "\x00" not in s)


def _csv_cell(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


@HOSTILE_SETTINGS
@given(model=hostile_text, tenant=hostile_text, session=hostile_text)
def test_markup_and_control_characters_in_every_string_field_print_as_text(capsys, model, tenant, session):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = d / "t.csv"
        src.write_text("ts,i,o,m,t,s\n" + "".join(
            f"{k},{k + 1},{k + 2},{_csv_cell(model)},{_csv_cell(tenant)},{_csv_cell(session)}\n" for k in range(3)),
            encoding="utf-8")
        rc, _ = _cli(capsys, ["trace", "ingest", str(src), "-o", str(d / "t.parquet"),
                              "--map", "arrival=ts,input=i,output=o,model=m,tenant=t,session=s"])
        assert rc == 0
        rc, _ = _cli(capsys, ["trace", "stats", str(d / "t.parquet")])
        assert rc == 0
        rc, out = _cli(capsys, ["trace", "stats", str(d / "t.parquet"), "--json"])
        assert rc == 0 and tenant in json.loads(out.splitlines()[-1])["tenants"]


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(label=hostile_text, sql_text=hostile_text)
def test_markup_and_control_characters_in_a_run_label_and_sql_result(capsys, label, sql_text):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = d / "t.csv"
        src.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                       "0,ChatGPT,5,3,8,Conv\n1,ChatGPT,6,4,10,Conv\n")
        store = d / "r.duckdb"
        rc, _ = _cli(capsys, ["simulate", str(src), "--model", "llama-3.1-8b", "--hardware", "l40s",
                              "-o", str(store), "--label", label])
        assert rc == 0
        rc, _ = _cli(capsys, ["analyze", str(store)])
        assert rc == 0
        quoted = "'" + sql_text.replace("'", "''") + "'"
        rc, _ = _cli(capsys, ["analyze", str(store), "--sql", f"SELECT {quoted} AS v, label FROM runs"])
        assert rc == 0
