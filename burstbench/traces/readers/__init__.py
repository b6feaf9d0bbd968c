"""Format readers for ``burstbench trace ingest``.

Each reader turns one published trace format (or a user's own request log) into the
columns of the Trace contract. This package's ``__init__`` stays free of heavy imports
so the CLI can list the format names without loading polars.
"""

from __future__ import annotations

# Names accepted by ``--format``, in the order auto-detection tries them.
FORMATS: tuple[str, ...] = ("burstgpt", "azure", "mooncake", "bailian", "openai", "csv", "jsonl")

__all__ = ["FORMATS"]
