"""FLOPs and compulsory bytes of the chapter's kernels, on paper.

Compulsory bytes: every operand read once, every result written once. Their
ratio is the arithmetic intensity that places a kernel on the roofline; the
counts are formulas, so the tests check them against brute-force loops.
"""
from __future__ import annotations

import numpy as np

FP32 = 4  # bytes per element: every workload here is float32


def positive_ints(**values) -> None:
    """Raise a ValueError naming the first value that is not a positive whole number."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive whole number, got {v!r}")


def gemm_counts(m: int, n: int, k: int, dtype_bytes: int = FP32) -> tuple[float, float]:
    """(FLOPs, bytes) of C[m,n] = A[m,k] @ B[k,n]: one multiply and one add per term."""
    positive_ints(m=m, n=n, k=k, dtype_bytes=dtype_bytes)
    return 2.0 * m * n * k, float(dtype_bytes) * (m * k + k * n + m * n)


def gemv_counts(m: int, n: int, dtype_bytes: int = FP32) -> tuple[float, float]:
    """(FLOPs, bytes) of y[m] = W[m,n] @ x[n]: the weight matrix dominates the traffic."""
    positive_ints(m=m, n=n, dtype_bytes=dtype_bytes)
    return 2.0 * m * n, float(dtype_bytes) * (m * n + n + m)


def conv2d_counts(batch: int, c_in: int, c_out: int, h: int, w: int, kernel: int = 1, groups: int = 1,
                  dtype_bytes: int = FP32) -> tuple[float, float]:
    """(FLOPs, bytes) of a stride-1, 'same'-padded NCHW convolution.

    Each output element sums ``c_in / groups * kernel**2`` products. A
    depthwise convolution (``groups == c_in == c_out``) does ``c_in`` times
    fewer FLOPs than a dense one of the same kernel, on the same activations.
    """
    positive_ints(batch=batch, c_in=c_in, c_out=c_out, h=h, w=w, kernel=kernel, groups=groups,
                  dtype_bytes=dtype_bytes)
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}")
    per_out = (c_in // groups) * kernel * kernel
    flops = 2.0 * batch * c_out * h * w * per_out
    elems = batch * c_in * h * w + c_out * per_out + batch * c_out * h * w
    return flops, float(dtype_bytes) * elems


def triad_counts(n: int, dtype_bytes: int = FP32) -> tuple[float, float]:
    """(FLOPs, bytes) of STREAM triad a = b + s*c: two reads, one write, two FLOPs per element."""
    positive_ints(n=n, dtype_bytes=dtype_bytes)
    return 2.0 * n, 3.0 * dtype_bytes * n


__all__ = ["FP32", "gemm_counts", "gemv_counts", "conv2d_counts", "triad_counts"]
