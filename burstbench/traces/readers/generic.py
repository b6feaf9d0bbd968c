"""Any request log: CSV or JSON Lines with a ``--map``, and OpenAI-style logs without one.

``--map arrival=COL[:unit],input=COL,output=COL,model=COL,session=COL,turn=COL,
tenant=COL,failed=COL,prompt=COL`` names the source column of each Trace field; JSON
keys may be dotted paths into nested objects (``usage.prompt_tokens``). The arrival
unit is one of s, ms, us, ns, iso8601 or epoch (numeric epoch, unit told by magnitude);
without one it is detected from the first value and the metadata says it was.

OpenAI-style logs (a chat/completions response per line: ``created``, ``model``,
``usage.prompt_tokens``, ``usage.completion_tokens``; or the Batch API output, the same
under ``response.body``) are recognised from their keys alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from burstbench.errors import UsageError
from burstbench.traces.readers.jsonread import has_path, lookup
from burstbench.traces.readers.plan import TIME_UNITS, Field, FieldKind, Plan
from burstbench.traces.readers.source import Source, first_csv_value
from burstbench.traces.readers.timecols import epoch_unit, iso_format, written_precision

# --map key -> (Trace column, parse kind, required)
MAP_KEYS: dict[str, tuple[str, FieldKind, bool]] = {
    "arrival": ("_t", "time", True),
    "input": ("input_tokens", "count", True),
    "output": ("output_tokens", "count", True),
    "model": ("model", "str", False),
    "session": ("session_id", "str", False),
    "turn": ("turn", "int", False),
    "tenant": ("tenant", "str", False),
    "failed": ("failed", "bool", False),
    "prompt": ("prompt", "str", False),
}
OPENAI_PREFIXES = ("", "response.body.")


def parse_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"arrival=ts:ms,input=n_in,..."`` (or a dict) -> {key: "COL[:unit]"}, validated."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        pairs = {str(k).strip(): str(v).strip() for k, v in spec.items()}
    else:
        pairs = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, eq, value = part.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise UsageError(f"--map: '{part}' is not KEY=COLUMN (e.g. input=prompt_tokens)")
            if key.strip() in pairs:
                raise UsageError(f"--map: '{key.strip()}' is given twice")
            pairs[key.strip()] = value.strip()
    unknown = sorted(set(pairs) - set(MAP_KEYS))
    if unknown:
        raise UsageError(f"--map: unknown key(s) {', '.join(unknown)}; use {', '.join(MAP_KEYS)}")
    missing = [k for k in ("arrival", "input", "output") if k not in pairs]
    if missing:
        raise UsageError(f"--map must name {', '.join(missing)} (e.g. arrival=ts:ms,input=n_in,output=n_out)")
    return pairs


def _split_unit(src: Source, value: str) -> tuple[str, str | None]:
    col, colon, unit = value.rpartition(":")
    if colon and unit in TIME_UNITS:
        return col, unit
    exists = value in src.header if src.kind == "csv" else has_path(src.first_record, value)
    if colon and col and not exists:
        raise UsageError(f"--map: unit '{unit}' in '{value}' is not one of {', '.join(TIME_UNITS)}")
    return value, None


def mapped_plan(src: Source, mapping: dict[str, str]) -> Plan:
    """A Plan from a user's --map for a CSV or JSONL file."""
    fields = []
    unit_source = "declared"
    precision = None
    for key, value in mapping.items():
        target, kind, required = MAP_KEYS[key]
        if key != "arrival":
            fields.append(Field(target, value, kind, required=required))
            continue
        col, unit = _split_unit(src, value)
        unit, unit_source, fmt, tz = _time_unit(src, col, unit)
        precision = written_precision(_first_value(src, col)) if unit == "iso8601" else None
        fields.append(Field("_t", col, "time", unit=unit, time_format=fmt, time_zone=tz))
    return Plan(src.kind, "mapped columns", fields, unit_source=unit_source, written_precision=precision)


def _first_value(src: Source, col: str) -> object:
    if src.kind == "csv":
        return first_csv_value(src, col) if col in src.header else None
    value = lookup(src.first_record, tuple(col.split(".")))
    return None if value is None or not isinstance(value, str | int | float) else value


def _time_unit(src: Source, col: str, unit: str | None) -> tuple[str, str, str | None, str | None]:
    """(unit, how it was known, strptime format, time zone) for the arrival column."""
    sample = _first_value(src, col)
    if unit is not None and unit != "iso8601":
        return unit, "declared", None, None
    if isinstance(sample, str):
        try:
            float(sample)
            numeric = True
        except ValueError:
            numeric = False
    else:
        numeric = isinstance(sample, int | float)
    if unit is None and numeric:
        return "epoch", "detected", None, None
    found = iso_format(sample) if isinstance(sample, str) else None
    if found is None:
        if sample is None:
            return (unit or "epoch"), ("declared" if unit else "detected"), None, None
        raise _bad_time_error(src, col, sample)
    return "iso8601", ("declared" if unit else "detected"), found[0], found[1]


def _bad_time_error(src: Source, col: str, sample: object) -> Exception:
    line = 2 if src.kind == "csv" else src.first_record_line
    return src.error(
        f"value {sample!r} is neither a number nor an ISO-8601 time; declare the unit with "
        f"--map arrival={col}:s (or ms, us, ns, iso8601)",
        line=line,
        field=col,
    )


def resolve_epoch(df: pl.DataFrame, plan: Plan) -> str:
    """Turn the 'epoch' placeholder unit into s/ms/us/ns from the values' magnitude."""
    t = df["_t"].drop_nulls()
    median = float(t.abs().median() or 0.0) if t.len() else 0.0
    unit = epoch_unit(median)
    declared = plan.unit_source == "declared"
    if unit is not None:
        plan.unit_source = "detected"
        plan.notes.append(f"arrival unit {unit}: values near {median:.4g} are Unix epoch {unit}")
        return unit
    if declared:
        raise UsageError(
            f"--map arrival=...:epoch, but values near {median:.4g} are no Unix epoch "
            "in s, ms, us or ns; declare the unit (s, ms, us, ns) instead"
        )
    plan.unit_source = "assumed"
    plan.notes.append(
        "numeric arrival times without a unit were read as seconds; "
        "declare the unit with --map arrival=COL:ms (or s, us, ns) if that is wrong"
    )
    return "s"


def openai_prefix(src: Source) -> str | None:
    """The key prefix under which an OpenAI-style response sits, or None if it is not one."""
    rec = src.first_record
    if src.kind != "jsonl" or rec is None:
        return None
    for prefix in OPENAI_PREFIXES:
        keys = ("created", "usage.prompt_tokens", "usage.completion_tokens")
        if all(has_path(rec, prefix + k) for k in keys):
            return prefix
    return None


def openai_plan(src: Source) -> Plan:
    prefix = openai_prefix(src)
    if prefix is None:
        raise src.error(
            "not an OpenAI-style log: the first record lacks created, usage.prompt_tokens and "
            "usage.completion_tokens; name the keys with --format jsonl --map ...",
            line=src.first_record_line,
        )
    fields = [
        Field("_t", prefix + "created", "time", unit="s"),
        Field("input_tokens", prefix + "usage.prompt_tokens", "count"),
        Field("output_tokens", prefix + "usage.completion_tokens", "count"),
        Field("model", prefix + "model", "str", required=False),
    ]
    if prefix:
        fields.append(Field("_status", "response.status_code", "int", required=False))
    fields.append(Field("_error", "error", "str", required=False))
    variant = "Batch API output" if prefix else "chat/completions responses"
    return Plan("openai", variant, fields, notes=["arrival = the response's 'created' (Unix s)"])


def openai_finish(df: pl.DataFrame, plan: Plan) -> pl.DataFrame:
    failed = pl.lit(False)
    if "_error" in df.columns:
        failed = failed | pl.col("_error").is_not_null()
    if "_status" in df.columns:
        failed = failed | (pl.col("_status").is_not_null() & (pl.col("_status") != 200))
    df = df.with_columns(failed.alias("failed"))
    return df.drop([c for c in ("_error", "_status") if c in df.columns])


def mapped_finish(df: pl.DataFrame, plan: Plan) -> pl.DataFrame:
    if "session_id" in df.columns and "turn" not in df.columns:
        from burstbench.traces.readers.burstgpt import number_turns

        df = number_turns(df)
    return df
