"""ROCKET (Dempster et al. 2020): random dilated kernels, two features each (PPV and max).

The kernels are Numba loops that are fused (each kernel's output lives in one
per-series buffer, reused by every kernel, and PPV / max are counted while it
is still in L1), vectorised over time (each tap adds ``w * x[t + offset]`` over
a contiguous range of ``t``, the padding handled by clipping that range, so
LLVM emits float32 FMAs) and parallel over series (``prange``, ``n_jobs``
threads). Series up to LANES_MAX_LENGTH long are instead vectorised across
blocks of LANES series (``_rocket_transform_lanes``, rule in ``use_lanes``):
there a tap is a handful of vectors and loop overhead dominates. Both layouts
add the same terms in the same order, so they give the same bits.
``SelectedRocket`` runs only the kernels behind kept features.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from .inputs import as_panel, check_fitted, check_shape, numba_threads

ROCKET_LENGTHS = (7, 9, 11)


@njit(cache=True, fastmath=True)
def _rocket_kernel(x, chans, c0, nch, w, w0, length, bias, dil, pad, buf):
    """One ROCKET kernel on one series x (C, L): returns (ppv, max). Vectorised over time."""
    L = x.shape[1]
    out_len = L + 2 * pad - (length - 1) * dil
    for t in range(out_len):
        buf[t] = bias
    for ci in range(nch):
        ch = chans[c0 + ci]
        for j in range(length):
            wj = w[w0 + ci * length + j]
            off = j * dil - pad          # output t reads input t + off
            lo = max(0, -off)
            hi = min(out_len, L - off)
            # slices, so that indices start at 0: no negative-index wraparound check, the loop vectorises
            bs = buf[lo:hi]
            xs = x[ch, lo + off:hi + off]
            for t in range(hi - lo):
                bs[t] += wj * xs[t]
    cnt = 0
    mx = buf[0]
    for t in range(out_len):
        v = buf[t]
        cnt += v > 0
        mx = max(mx, v)
    return np.float32(cnt / out_len), mx


@njit(cache=True, fastmath=True, parallel=True)
def _rocket_transform(X, kids, lengths, biases, dils, pads, nchs, c_off, chans, w_off, w):
    """Features [ppv, max] of kernels ``kids`` (in that order) for every series, parallel over series."""
    n, C, L = X.shape
    out = np.empty((n, 2 * kids.shape[0]), dtype=np.float32)
    maxout = L
    for kk in range(kids.shape[0]):
        k = kids[kk]
        maxout = max(maxout, L + 2 * pads[k] - (lengths[k] - 1) * dils[k])
    for i in prange(n):
        buf = np.empty(maxout, dtype=np.float32)
        x = X[i]
        for kk in range(kids.shape[0]):
            k = kids[kk]
            p, m = _rocket_kernel(x, chans, c_off[k], nchs[k], w, w_off[k], lengths[k], biases[k],
                                  dils[k], pads[k], buf)
            out[i, 2 * kk] = p
            out[i, 2 * kk + 1] = m
    return out


LANES = 16   # series per block in the lanes layout: one AVX-512 vector of float32
LANES_MAX_LENGTH = 512   # longest series put on the lanes layout (use_lanes)


@njit(cache=True, fastmath=True)
def _rocket_kernel_lanes(xt, L, chans, c0, nch, w, w0, length, bias, dil, pad, buf, acc, cnt, mx):
    """One kernel on a block of LANES series xt, flat (C, L, LANES): per-lane PPV count in cnt, max in mx.

    Time-major with the series innermost, each tap is one contiguous FMA loop
    over (output positions x lanes), so a length-24 series still gives full vectors.
    """
    out_len = L + 2 * pad - (length - 1) * dil
    for q in range(out_len * LANES):
        buf[q] = bias
    for ci in range(nch):
        base = chans[c0 + ci] * L * LANES
        for j in range(length):
            wj = w[w0 + ci * length + j]
            off = j * dil - pad
            lo = max(0, -off)
            hi = min(out_len, L - off)
            bs = buf[lo * LANES:hi * LANES]
            xs = xt[base + (lo + off) * LANES:base + (hi + off) * LANES]
            for q in range((hi - lo) * LANES):
                bs[q] += wj * xs[q]
    # PPV and max per lane as running sums / maxima down the rows (row t takes row t - 1's): a dependence
    # LANES apart, so LLVM vectorises it across the lanes; a loop over the lanes' columns stayed scalar
    # and cost half as much as the taps
    for q in range(LANES):
        acc[q] = np.float32(buf[q] > 0)
    for q in range(LANES, out_len * LANES):
        v = buf[q]
        acc[q] = acc[q - LANES] + np.float32(v > 0)
        buf[q] = max(v, buf[q - LANES])
    last = (out_len - 1) * LANES
    for s in range(LANES):
        cnt[s] = acc[last + s]
        mx[s] = buf[last + s]
    return out_len


@njit(cache=True, fastmath=True, parallel=True)
def _rocket_transform_lanes(X, kids, lengths, biases, dils, pads, nchs, c_off, chans, w_off, w, kchunks):
    """``_rocket_transform`` for series up to LANES_MAX_LENGTH: vectorised across blocks of LANES series.

    Work items are (block, one of ``kchunks`` slices of the kernels), so that a
    few blocks still keep every thread busy; each item transposes its block.
    """
    n, C, L = X.shape
    K = kids.shape[0]
    out = np.empty((n, 2 * K), dtype=np.float32)
    maxout = L
    for kk in range(K):
        k = kids[kk]
        maxout = max(maxout, L + 2 * pads[k] - (lengths[k] - 1) * dils[k])
    nb = (n + LANES - 1) // LANES
    for item in prange(nb * kchunks):
        i0 = (item // kchunks) * LANES
        part = item % kchunks
        m = min(LANES, n - i0)
        xt = np.zeros(C * L * LANES, dtype=np.float32)   # missing lanes of the last block read zeros
        for s in range(m):
            for c in range(C):
                for t in range(L):
                    xt[(c * L + t) * LANES + s] = X[i0 + s, c, t]
        buf = np.empty(maxout * LANES, dtype=np.float32)
        acc = np.empty(maxout * LANES, dtype=np.float32)
        cnt = np.empty(LANES, dtype=np.float32)
        mx = np.empty(LANES, dtype=np.float32)
        for kk in range(part * K // kchunks, (part + 1) * K // kchunks):
            k = kids[kk]
            out_len = _rocket_kernel_lanes(xt, L, chans, c_off[k], nchs[k], w, w_off[k], lengths[k], biases[k],
                                           dils[k], pads[k], buf, acc, cnt, mx)
            for s in range(m):
                out[i0 + s, 2 * kk] = np.float32(cnt[s] / out_len)
                out[i0 + s, 2 * kk + 1] = mx[s]
    return out


@njit(cache=True, fastmath=True, parallel=True)
def _rocket_transform_bands(X, starts, lens, kband, lengths, biases, dils, pads, nchs, c_off, chans, w_off, w):
    """Like ``_rocket_transform`` for kernels that each read one band: band b of series i is
    ``X[i, :, starts[b]:starts[b] + lens[b]]`` (bands laid end to end). One parallel region for all bands."""
    n = X.shape[0]
    nk = lengths.shape[0]
    out = np.empty((n, 2 * nk), dtype=np.float32)
    maxout = 1
    for k in range(nk):
        maxout = max(maxout, lens[kband[k]] + 2 * pads[k] - (lengths[k] - 1) * dils[k])
    for i in prange(n):
        buf = np.empty(maxout, dtype=np.float32)
        for k in range(nk):
            b = kband[k]
            x = X[i, :, starts[b]:starts[b] + lens[b]]
            p, m = _rocket_kernel(x, chans, c_off[k], nchs[k], w, w_off[k], lengths[k], biases[k],
                                  dils[k], pads[k], buf)
            out[i, 2 * k] = p
            out[i, 2 * k + 1] = m
    return out


def rocket_kernels(n_kernels: int, n_channels: int, length: int, seed=None) -> dict:
    """Random ROCKET kernels (length 7/9/11, centred normal weights, uniform bias, exponential dilation).

    Multivariate kernels read a random subset of channels (at most their length).
    Returned as flat arrays so that one Numba call can apply any subset.
    """
    if n_kernels < 1:
        raise ValueError(f"num_kernels must be at least 1 (got {n_kernels})")
    rng = np.random.default_rng(seed)
    lengths = rng.choice(ROCKET_LENGTHS, n_kernels).astype(np.int64)
    nchs = np.ones(n_kernels, dtype=np.int64)
    if n_channels > 1:
        hi = np.log2(np.minimum(n_channels, lengths) + 1)
        nchs = np.floor(2 ** rng.uniform(0, hi)).astype(np.int64).clip(1, n_channels)
    chans, weights = [], []
    for k in range(n_kernels):
        chans.append(rng.choice(n_channels, nchs[k], replace=False))
        wk = rng.normal(0, 1, (nchs[k], lengths[k]))
        weights.append((wk - wk.mean(axis=1, keepdims=True)).ravel())
    biases = rng.uniform(-1, 1, n_kernels)
    dils = np.floor(2 ** rng.uniform(0, np.log2((length - 1) / (lengths - 1)))).astype(np.int64).clip(1)
    pads = np.where(rng.integers(0, 2, n_kernels) == 1, (lengths - 1) * dils // 2, 0).astype(np.int64)
    c_off = np.concatenate([[0], np.cumsum(nchs)[:-1]]).astype(np.int64)
    w_off = np.concatenate([[0], np.cumsum(nchs * lengths)[:-1]]).astype(np.int64)
    return {"lengths": lengths, "biases": biases.astype(np.float32), "dils": dils, "pads": pads,
            "nchs": nchs, "c_off": c_off, "chans": np.concatenate(chans).astype(np.int64),
            "w_off": w_off, "w": np.concatenate(weights).astype(np.float32)}


def use_lanes(n: int, length: int) -> bool:
    """The lanes layout for series up to LANES_MAX_LENGTH long, when at most a third of its lanes idle.

    Vectorised over time, a short series gives each tap a loop of one or two
    vectors plus a remainder; across series every tap is full vectors. Measured
    (2-core AVX-512 EPYC, 1 thread, vs the time layout): 6-7x faster at length
    24, 3.7x at 100, 2.7x at 250, 1.3-1.5x at 500 (1 and 6 channels), then
    1.1-1.6x with a block no longer in L2. A zero-padded block costs full price,
    so few series (or just over a block's worth) stay on the time layout.
    """
    padded = -(-n // LANES) * LANES
    return length <= LANES_MAX_LENGTH and padded <= 1.5 * n


def _rocket_apply(kernels: dict, X: np.ndarray, kids: np.ndarray) -> np.ndarray:
    k = kernels
    kids = np.ascontiguousarray(kids, dtype=np.int64)
    args = (X, kids, k["lengths"], k["biases"], k["dils"], k["pads"], k["nchs"], k["c_off"], k["chans"],
            k["w_off"], k["w"])
    n, L = X.shape[0], X.shape[2]
    if not use_lanes(n, L):
        return _rocket_transform(*args)
    blocks = -(-n // LANES)
    # at least 4 work items per thread, so that a few blocks still spread over the threads
    kchunks = max(1, min(len(kids), -(-4 * numba.get_num_threads() // blocks)))
    return _rocket_transform_lanes(*args, kchunks)


def _normalise(X: np.ndarray) -> np.ndarray:
    """Each channel of each series to zero mean, unit variance (as ROCKET and sktime do)."""
    X64 = X.astype(np.float64)
    return ((X64 - X64.mean(-1, keepdims=True)) / (X64.std(-1, keepdims=True) + 1e-8)).astype(np.float32)


class Rocket(TransformerMixin, BaseEstimator):
    """ROCKET transform: ``num_kernels`` random kernels -> 2 features each (PPV, max).

    Input (n_series, length) or (n_series, n_channels, length), equal lengths,
    no NaNs. ``n_jobs`` Numba threads (-1: all); ``normalise`` z-normalises each
    channel first, as the paper and sktime do.
    """

    def __init__(self, num_kernels: int = 10_000, normalise: bool = True, random_state=None, n_jobs: int = 1):
        self.num_kernels = num_kernels
        self.normalise = normalise
        self.random_state = random_state
        self.n_jobs = n_jobs

    min_length = max(ROCKET_LENGTHS)

    def fit(self, X, y=None):
        X = as_panel(X, min_length=self.min_length)
        self.input_shape_ = X.shape[1:]
        self.kernels_ = rocket_kernels(int(self.num_kernels), X.shape[1], X.shape[2], self.random_state)
        self.n_features_out_ = 2 * int(self.num_kernels)
        return self

    def _prepare(self, X):
        check_fitted(self, "kernels_")
        X = as_panel(X, min_length=self.min_length)
        check_shape(self, X)
        return _normalise(X) if self.normalise else X

    def transform(self, X):
        X = self._prepare(X)
        with numba_threads(self.n_jobs):
            return _rocket_apply(self.kernels_, X, np.arange(self.num_kernels))

    def flops_per_series(self, kernel_ids=None) -> float:
        """Multiply-adds x 2 of the convolutions (padding taps that read zeros are not counted)."""
        check_fitted(self, "kernels_")
        k = self.kernels_
        ids = np.arange(self.num_kernels) if kernel_ids is None else np.asarray(kernel_ids)
        L = self.input_shape_[1]
        out = L + 2 * k["pads"][ids] - (k["lengths"][ids] - 1) * k["dils"][ids]
        return float(2 * np.sum(out * k["lengths"][ids] * k["nchs"][ids]))


class SelectedRocket(TransformerMixin, BaseEstimator):
    """The features ``features`` of a fitted ``Rocket``, computing only the kernels behind them.

    Feature ``f`` of ROCKET is kernel ``f // 2`` (PPV if even, max if odd); a
    kernel behind two kept features is computed once. ``channels`` (optional):
    the channels kept by channel selection; every kept kernel must read only
    these, and ``transform`` then normalises and reads only them.
    """

    def __init__(self, rocket: Rocket | None = None, features=None, n_jobs: int = 1, channels=None):
        self.rocket = rocket
        self.features = features
        self.n_jobs = n_jobs
        self.channels = channels

    def fit(self, X=None, y=None):
        if self.rocket is None or not hasattr(self.rocket, "kernels_"):
            raise NotFittedError("SelectedRocket needs a fitted Rocket: Rocket(...).fit(X_train) first")
        f = np.asarray(self.features, dtype=np.int64).ravel()
        if f.size == 0 or f.min() < 0 or f.max() >= self.rocket.n_features_out_:
            raise ValueError(f"features must be non-empty indices in [0, {self.rocket.n_features_out_})")
        self.kernel_ids_, inv = np.unique(f // 2, return_inverse=True)
        self.columns_ = 2 * inv + f % 2
        self.input_shape_ = self.rocket.input_shape_
        self.kernels_ = self.rocket.kernels_
        self.channels_ = None
        if self.channels is not None:
            C = self.input_shape_[0]
            chans = np.unique(np.asarray(self.channels, dtype=np.int64).ravel())
            if chans.size == 0 or chans.min() < 0 or chans.max() >= C:
                raise ValueError(f"channels must be non-empty indices in [0, {C})")
            k = self.rocket.kernels_
            lookup = np.full(C, -1, dtype=np.int64)
            lookup[chans] = np.arange(chans.size)
            for kid in self.kernel_ids_:
                if np.any(lookup[k["chans"][k["c_off"][kid]:k["c_off"][kid] + k["nchs"][kid]]] < 0):
                    raise ValueError(f"kernel {kid} reads a channel outside `channels`; select features "
                                     "among the kept channels' kernels (select_features(..., channels=...))")
            self.kernels_ = dict(k, chans=np.maximum(lookup[k["chans"]], 0))   # dropped channels never read
            self.channels_ = chans
        return self

    def transform(self, X):
        check_fitted(self, "kernel_ids_")
        r = self.rocket
        X = as_panel(X, min_length=r.min_length)
        check_shape(self, X)
        if self.channels_ is not None:
            X = np.ascontiguousarray(X[:, self.channels_])
        X = _normalise(X) if r.normalise else X.astype(np.float32)
        with numba_threads(self.n_jobs):
            full = _rocket_apply(self.kernels_, X, self.kernel_ids_)
        return full[:, self.columns_]
