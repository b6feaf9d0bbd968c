"""Every bound on a size that comes from input, in one place, each with its reason.

A value in a trace, a flag or a server's answer decides how much memory or time a
command spends: a token count becomes a prompt, a span divided by a window becomes
an array, a replica count becomes a fleet. Each such value is checked against the
named limit here *before* anything is allocated, and the check raises a one-line
``BurstbenchError`` naming the row, flag or field. The limits sit far beyond any
real workload, so they only ever stop a typo, a wrong unit or a hostile file.
"""

from __future__ import annotations

YEAR_S = 365.25 * 86400.0

# Tokens in one request (prompt or response). The longest context windows offered
# are ~10M tokens (Llama 4 Scout); more is a wrong column or a corrupt value (2^63-1 made
# `run` build a 24 GB prompt).
MAX_TOKENS = 10_000_000

# Span of a trace's arrivals. Public traces cover days to months (BurstGPT 121 days);
# ten years is already a wrong time unit (ms read as s), and the span sizes every
# per-window and per-second array downstream (stats, fit, plan).
MAX_SPAN_S = 10 * YEAR_S

# Magnitude of a raw timestamp in its unit. Int64 nanoseconds end at 9.2e18 (year
# 2262); subtracting two values near the ends overflows, so anything past this is
# refused before it is rebased.
MAX_TIMESTAMP = 4e18

# Windows a stats/fit pass may cut a trace into (arrays of this length are built).
# A year at a one-minute window is 525,960.
MAX_WINDOWS = 2_000_000
# The shortest window: 1 ns, the finest unit a trace is read in; a rate over a
# shorter one overflows a float (1 / 1e-320 is inf).
MIN_WINDOW_S = 1e-9

# Windows `trace fit --window` fits one by one (each a maximum-likelihood fit).
MAX_FIT_WINDOWS = 10_000

# Replicas in a fleet (serve, simulate, whatif, plan): each one is an engine with its
# own KV-cache model, ~0.65 MB on an L40S (measured: 1,000 replicas 830 MB RSS,
# 10,000 over 6 GB), more on larger GPUs. 1,000 instances (8,000 GPUs at tp 8) is
# beyond any deployment one twin answers for. Checked by the router every fleet goes
# through and by a twin Deployment before it builds any engine (`whatif --replicas
# 1000000` asked for 24 GB).
MAX_REPLICAS = 1_000

# Twins drawn by `whatif --band` (each one a full replay of the trace, so it is time
# that grows: 1,000 twins of a short trace are already tens of minutes).
MAX_BAND = 1_000
# Bootstrap replicates for `analyze --compare --boot` (a (boot x stats) array and one
# weighted pass over the run per replicate; 1e9 asked for 29.8 GiB).
MAX_BOOT = 10_000

# One line of a CSV or JSONL trace (and one CSV field). Real records are < 1 MiB
# even with prompt text; a longer one is not a trace and would be read whole.
MAX_LINE_BYTES = 16 << 20

# A file read whole as text (result files to --import, YAML and JSON configs): the
# largest real ones are vLLM --save-detailed results with generated texts (~200 MB
# for 100k requests); parsed into Python objects a file costs several times its size.
MAX_TEXT_FILE_BYTES = 1 << 30

# Nesting of JSON/YAML values we parse. Real records nest a handful of levels;
# Python's parsers recurse, so a deep value would end in RecursionError.
MAX_NESTING = 200

# One SSE event (or one unterminated line of a stream) from a server. A token
# delta is < 1 KiB and a final event echoing a 128k-token prompt ~1 MiB; a hostile
# server sending 64 MiB events cost 843 MB and was recorded as ok.
MAX_SSE_EVENT_BYTES = 4 << 20

# DuckDB's working memory in every command that reads a results store (report, analyze
# with --compare/--window/--tenants/--sql, calibrate, sweep's summaries). Past it DuckDB
# spills sorts, joins, aggregates and temporary tables to a private temporary folder;
# its own default (80 % of RAM, all cores) let `report` on a million requests and a
# hundred million chunks take 9.2 GB. At 1 GB the commands stay under 2 GB of RSS at
# that size (benchmarks/bench_report.py), and the per-thread states are bounded by
# READ_THREADS on a many-core host.
READ_MEMORY_LIMIT = "1GB"
READ_THREADS = 4

# DuckDB memory for a user's `--sql` query: it may join anything with anything.
SQL_MEMORY_LIMIT = READ_MEMORY_LIMIT

# Characters of an error message printed on the one error line; a quoted value in
# it (a 200 KB field) is cut so the line stays readable.
MAX_ERROR_CHARS = 600

