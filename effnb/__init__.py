"""effnb: measure what efficient-ML techniques buy on your machine.

One module per concern: bench (timing), threads, roofline (machine limits),
provenance (who measured what), claims (paper vs measured verdicts), ext (the
C++ kernels), run (papermill runs and sweeps), data; and one module per
technique family, added with its chapter.
"""
__version__ = "0.1.0"
