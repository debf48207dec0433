"""Continual (streaming) inference of a causal dilated conv net, one time step at a time.

Each layer keeps a ring buffer of the last (k-1)d + 1 inputs it needs and
computes only its newest output, so a step costs the same whatever the window;
the result equals the offline net on the whole stream (same sums, same order).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, fastmath=False)
def _tcn_offline(x, W, B, dils, relu_last):
    """Causal dilated conv net on a whole stream x (C, T): layer l, y[o,t] = b + sum_i,j W[o,i,j] x[i, t-(k-1-j)d]."""
    n_layers, C, _, K = W.shape
    T = x.shape[1]
    h = x.copy()
    for l in range(n_layers):
        d = dils[l]
        y = np.empty((C, T), dtype=x.dtype)
        for o in range(C):
            for t in range(T):
                y[o, t] = B[l, o]
            for i in range(C):
                for j in range(K):
                    w = W[l, o, i, j]
                    s = (K - 1 - j) * d
                    for t in range(s, T):
                        y[o, t] += w * h[i, t - s]
        if l < n_layers - 1 or relu_last:
            for o in range(C):
                for t in range(T):
                    y[o, t] = max(y[o, t], 0.0)
        h = y
    return h


@njit(cache=True, fastmath=False)
def _tcn_step(xt, W, B, dils, relu_last, bufs, pos, out):
    """One time step: push xt into layer 0's ring buffer, compute each layer's newest output only."""
    n_layers, C, _, K = W.shape
    R = bufs.shape[2]
    h = xt
    for l in range(n_layers):
        d = dils[l]
        p = pos[l]
        span = (K - 1) * d + 1
        for i in range(C):
            bufs[l, i, p] = h[i]
        for o in range(C):
            acc = B[l, o]
            for i in range(C):
                for j in range(K):
                    q = p - (K - 1 - j) * d
                    if q < 0:
                        q += span
                    acc += W[l, o, i, j] * bufs[l, i, q]
            if l < n_layers - 1 or relu_last:
                acc = max(acc, 0.0)
            out[o] = acc
        pos[l] = p + 1 if p + 1 < span else 0
        h = out.copy()
    return out


@njit(cache=True, fastmath=False)
def _tcn_stream(x, W, B, dils, relu_last, bufs, pos):
    C, T = x.shape
    y = np.empty((C, T), dtype=x.dtype)
    out = np.empty(C, dtype=x.dtype)
    for t in range(T):
        _tcn_step(x[:, t].copy(), W, B, dils, relu_last, bufs, pos, out)
        y[:, t] = out
    return y


@njit(cache=True, fastmath=False)
def _tcn_windowed(x, W, B, dils, relu_last, window, start):
    """The non-continual way to stream: at each step t >= start rerun the offline net on the last
    ``window`` inputs (fewer at the very start of the stream) and keep its newest output."""
    C, T = x.shape
    y = np.zeros((C, T), dtype=x.dtype)
    for t in range(start, T):
        lo = max(0, t + 1 - window)
        y[:, t] = _tcn_offline(x[:, lo:t + 1].copy(), W, B, dils, relu_last)[:, -1]
    return y


class ContinualTCN:
    """A causal dilated 1-D conv net (``layers`` x Conv1d(C, C, k, dilation 2^l), ReLU between) run
    offline on a whole stream or continually, one step at a time from per-layer ring buffers.

    Input with fewer than ``channels`` channels is zero-padded to ``channels``
    (operation counts use the real shapes). Exactly the offline outputs as
    long as the receptive field fits the history kept: ``receptive_field``.
    """

    def __init__(self, channels: int = 16, layers: int = 3, kernel_size: int = 3, in_channels: int = 1,
                 seed=0, dtype=np.float64):
        if min(channels, layers, kernel_size, in_channels) < 1 or in_channels > channels:
            raise ValueError("channels, layers, kernel_size, in_channels must be >= 1, in_channels <= channels")
        rng = np.random.default_rng(seed)
        self.C, self.K, self.in_channels = channels, kernel_size, in_channels
        fan = np.array([in_channels] + [channels] * (layers - 1))
        W = rng.normal(0, 1, (layers, channels, channels, kernel_size)) / np.sqrt(fan * kernel_size)[:, None, None, None]
        W[0, :, in_channels:, :] = 0.0
        self.W = W.astype(dtype)
        self.B = rng.normal(0, 0.1, (layers, channels)).astype(dtype)
        self.dils = (2 ** np.arange(layers)).astype(np.int64)
        self.receptive_field = int(1 + (kernel_size - 1) * self.dils.sum())
        self.dtype = dtype
        self.reset()

    def reset(self):
        span = int((self.K - 1) * self.dils.max() + 1)
        self.bufs = np.zeros((len(self.dils), self.C, span), dtype=self.dtype)
        self.pos = np.zeros(len(self.dils), dtype=np.int64)

    def _pad(self, x):
        x = np.atleast_2d(np.asarray(x, dtype=self.dtype))
        if x.shape[0] != self.in_channels:
            raise ValueError(f"stream has {x.shape[0]} channels; this net takes in_channels={self.in_channels}")
        if not np.isfinite(x).all():
            raise ValueError("stream contains NaN or infinite values: impute them first")
        out = np.zeros((self.C, x.shape[1]), dtype=self.dtype)
        out[: self.in_channels] = x
        return out

    def offline(self, x):
        """All outputs of the net on the whole stream x (in_channels, T)."""
        return _tcn_offline(self._pad(x), self.W, self.B, self.dils, False)

    def stream(self, x):
        """Feed x one step at a time (continual); the state carries over between calls."""
        return _tcn_stream(self._pad(x), self.W, self.B, self.dils, False, self.bufs, self.pos)

    def step(self, xt):
        """One new time step (in_channels,) in, one output (channels,) out."""
        x = self._pad(np.asarray(xt).reshape(-1, 1))
        out = np.empty(self.C, dtype=self.dtype)
        return _tcn_step(x[:, 0].copy(), self.W, self.B, self.dils, False, self.bufs, self.pos, out).copy()

    def windowed(self, x, window: int, start: int = 0):
        """Each step from ``start`` on recomputes the offline net on the last ``window`` inputs (what
        continual avoids); equal to ``offline`` when ``window`` covers the receptive field."""
        return _tcn_windowed(self._pad(x), self.W, self.B, self.dils, False, int(window), int(start))

    def macs_per_step(self, window: int = 1) -> dict:
        """Multiply-adds per new output: continual does one output per layer, windowed ``window``."""
        per_out = sum(self.K * cin * self.C for cin in [self.in_channels] + [self.C] * (len(self.dils) - 1))
        return {"continual": per_out, "windowed": per_out * window}
