"""effnb: measure what efficient-ML techniques buy on your machine.

Core modules know no technique: bench (timing), perf (benchmark specs),
threads, provenance, claims, chapter (a run's record), sidecar, ext (the C++
kernel families), probes and roofline (machine limits), files, show, plots.
The runner package runs chapters (spec, inputs, execute, sweep, pages, cli).
Each technique family is a package (measuring, quant, sparse, timeseries, ...)
split the same way: formats, ops, reference, peers, experiments, plots.
"""
__version__ = "0.2.0"
