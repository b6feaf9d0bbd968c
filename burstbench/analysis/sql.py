"""``analyze --sql``: read-only SQL for power users, with no way out of the results file.

Three locks, each enough on its own for a different threat:

1. the file is opened ``read_only`` (DuckDB refuses INSERT/UPDATE/DELETE/DDL on it);
2. ``enable_external_access = false`` then ``lock_configuration = true``: no
   ``read_csv('/etc/passwd')``, ``COPY ... TO``, ``ATTACH``, extension loading or
   HTTP, and the query cannot switch that back;
3. only statements that read (SELECT, including DESCRIBE/SHOW/SUMMARIZE, and
   EXPLAIN) are run at all, so even TEMP tables and views, which a read-only
   database still allows, are refused with a clear message.

The metric views (``request_metrics``, ``chunk_gaps``, ``token_itl``) are there to query.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb

from burstbench.analysis.metrics import open_store
from burstbench.errors import UsageError

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
MAX_ROWS_DEFAULT = 10_000


def run_sql(path: str | Path, sql: str, *, max_rows: int = MAX_ROWS_DEFAULT) -> dict[str, Any]:
    """Run one or more reading statements; the last one's result as columns and rows."""
    if not sql or not sql.strip():
        raise UsageError("--sql is empty; give a SELECT, e.g. --sql \"SELECT count(*) FROM requests\"")
    con = open_store(path, lock=True)
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise UsageError(f"--sql does not parse: {_one_line(exc)}") from exc
        if not statements:
            raise UsageError("--sql holds no statement")
        for i, st in enumerate(statements, start=1):
            if st.type not in _ALLOWED:
                raise UsageError(
                    f"--sql statement {i} is {st.type.name}; only reading statements (SELECT, EXPLAIN) run here"
                )
        result: dict[str, Any] = {"columns": [], "rows": [], "truncated": False}
        for st in statements:
            try:
                cur = con.execute(st)
            except duckdb.Error as exc:
                raise UsageError(f"--sql failed: {_one_line(exc)}") from exc
            cols = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchmany(max_rows + 1)
            result = {
                "columns": cols,
                "rows": [[_jsonable(v) for v in r] for r in rows[:max_rows]],
                "truncated": len(rows) > max_rows,
            }
        return result
    finally:
        con.close()


def _jsonable(v: Any) -> Any:
    """Values json.dumps can write: floats that are not finite become None, others str()."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def _one_line(exc: Exception) -> str:
    """DuckDB's message without its LINE/caret excerpt: the CLI prints errors on one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith("LINE ") and set(ln) != {"^"}]
    return " ".join(keep) or str(exc)
