"""The reference engine: a vLLM-like scheduler over a roofline cost model, in real or virtual time."""
