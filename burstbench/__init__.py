"""burstbench: workload trace analytics, load generation and a reference engine for LLM serving."""

__version__ = "0.1.0"
