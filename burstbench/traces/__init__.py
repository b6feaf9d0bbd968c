"""Traces: one schema for every workload log, and the tools to read, describe, fit and make them."""
