"""The digital twin: calibrate the reference engine to a measured endpoint, then ask what-if.

``vsim`` runs the engine in virtual time keeping only per-request latencies (colocated,
or DistServe's disaggregated prefill/decode); ``calibrate`` fits the cost model's free
coefficients to a run; ``spec`` reads and writes ``twin.yaml``; ``deploy`` names a
deployment; ``whatif`` and ``plan`` answer the questions. Sits above ``analysis``.
"""
