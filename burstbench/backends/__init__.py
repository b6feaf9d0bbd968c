"""Backends: what turns one request into timed events (live HTTP endpoints, the reference engine)."""
