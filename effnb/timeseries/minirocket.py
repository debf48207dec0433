"""MiniRocket (Dempster et al. 2021): 84 fixed two-valued kernels, PPV against quantile biases.

Every kernel's output is A + 3 (x_a + x_b + x_c) with A = -(sum of the nine
taps) shared by all 84; we also precompute the 36 pair sums
Q_ab = A + 3 (x_a + x_b), so a kernel costs one add per point on top of them.
PPV against each bias is a vectorised compare-and-count.
"""
from __future__ import annotations

import itertools

import numpy as np
from numba import njit, prange
from sklearn.base import BaseEstimator, TransformerMixin

from .inputs import as_panel, check_fitted, check_shape, numba_threads

MINI_LENGTH = 9
# the 84 MiniRocket kernels: positions of the three weights 2 among nine (the other six are -1)
MINI_COMBOS = np.array(list(itertools.combinations(range(MINI_LENGTH), 3)), dtype=np.int64)


@njit(cache=True, fastmath=True)
def _mini_prep(x, d, xp, A):
    """Zero-padded copy xp (C, L + 8d) of x and A = -(sum of the nine taps), both per channel."""
    C, L = x.shape
    pad = 4 * d
    for c in range(C):
        for t in range(L + 2 * pad):
            xp[c, t] = 0.0
        for t in range(L):
            xp[c, pad + t] = x[c, t]
        for t in range(L):
            A[c, t] = 0.0
        Ac = A[c]
        for j in range(MINI_LENGTH):
            xs = xp[c, j * d:j * d + L]
            for t in range(L):
                Ac[t] -= xs[t]


@njit(cache=True, fastmath=True)
def _mini_pairs(xp, A, d, L, Q):
    """Q[c, p] = A + 3 (x[tap a] + x[tap b]) for the 36 tap pairs p = (a, b): a kernel then needs one add."""
    C = xp.shape[0]
    p = 0
    for a in range(MINI_LENGTH):
        for b in range(a + 1, MINI_LENGTH):
            for c in range(C):
                Ac, Qc = A[c], Q[c, p]
                xa, xb = xp[c, a * d:a * d + L], xp[c, b * d:b * d + L]
                for t in range(L):
                    Qc[t] = Ac[t] + np.float32(3.0) * (xa[t] + xb[t])
            p += 1


@njit(cache=True, fastmath=True)
def _mini_conv(xp, Q, d, pair, e, chans, c0, nch, L, out):
    """Output of kernel (a, b, e) on channels chans[c0:c0+nch], 'same' length L: Q[pair(a, b)] + 3 x[tap e]."""
    for ci in range(nch):
        c = chans[c0 + ci]
        Qc = Q[c, pair]
        xe = xp[c, e * d:e * d + L]
        if ci == 0:
            for t in range(L):
                out[t] = Qc[t] + np.float32(3.0) * xe[t]
        else:
            for t in range(L):
                out[t] += Qc[t] + np.float32(3.0) * xe[t]


def _pair_index() -> np.ndarray:
    """For each of the 84 kernels (a, b, e): the index of its pair (a, b) in _mini_pairs' order."""
    pairs = {ab: i for i, ab in enumerate(itertools.combinations(range(MINI_LENGTH), 2))}
    return np.array([pairs[(a, b)] for a, b, _ in MINI_COMBOS], dtype=np.int64)


MINI_PAIR = _pair_index()


@njit(cache=True, fastmath=True, parallel=True)
def _mini_transform(X, dils, nfpd, biases, combos, pair_of, nchs, c_off, chans, n_features):
    n, C, L = X.shape
    out = np.empty((n, n_features), dtype=np.float32)
    maxd = 1
    for di in range(dils.shape[0]):
        maxd = max(maxd, dils[di])
    for i in prange(n):
        xp = np.empty((C, L + 8 * maxd), dtype=np.float32)
        A = np.empty((C, L), dtype=np.float32)
        Q = np.empty((C, 36, L), dtype=np.float32)
        buf = np.empty(L, dtype=np.float32)
        f = 0
        for di in range(dils.shape[0]):
            d = dils[di]
            _mini_prep(X[i], d, xp, A)
            _mini_pairs(xp, A, d, L, Q)
            pad = 4 * d
            for k in range(combos.shape[0]):
                pair = di * combos.shape[0] + k
                _mini_conv(xp, Q, d, pair_of[k], combos[k, 2], chans, c_off[pair], nchs[pair], L, buf)
                lo, hi = 0, L
                if (di + k) % 2 == 1:          # every other kernel: PPV over the unpadded part only
                    lo, hi = pad, L - pad
                seg = buf[lo:hi]
                for q in range(nfpd[di]):
                    bq = biases[f]
                    cnt = np.float32(0.0)          # a float count vectorises (an int one does not, here)
                    for t in range(hi - lo):
                        cnt += np.float32(1.0) if seg[t] > bq else np.float32(0.0)
                    out[i, f] = cnt / (hi - lo)
                    f += 1
    return out


def _mini_conv_one(x, d, k, chans, c0, nch):
    C, L = x.shape
    xp = np.empty((C, L + 8 * d), dtype=np.float32)
    A = np.empty((C, L), dtype=np.float32)
    Q = np.empty((C, 36, L), dtype=np.float32)
    out = np.empty(L, dtype=np.float32)
    _mini_prep(x, d, xp, A)
    _mini_pairs(xp, A, d, L, Q)
    _mini_conv(xp, Q, d, MINI_PAIR[k], MINI_COMBOS[k, 2], chans, c0, nch, L, out)
    return out


def mini_dilations(length: int, num_features: int, max_dilations: int = 32):
    """Dilations spread exponentially up to (length-1)/8, and how many features (biases) each gets."""
    per_kernel = num_features // len(MINI_COMBOS)
    if per_kernel < 1:
        raise ValueError(f"num_features must be at least {len(MINI_COMBOS)} (one per MiniRocket kernel)")
    n_dil = min(per_kernel, max_dilations)
    top = np.log2((length - 1) / (MINI_LENGTH - 1))
    dils, counts = np.unique(np.floor(np.logspace(0, top, n_dil, base=2)).astype(np.int64), return_counts=True)
    nfpd = (counts * per_kernel / n_dil).astype(np.int64)
    left = per_kernel - nfpd.sum()
    i = 0
    while left > 0:
        nfpd[i] += 1
        left -= 1
        i = (i + 1) % len(nfpd)
    return dils, nfpd


def golden_quantiles(n: int) -> np.ndarray:
    """Low-discrepancy quantiles in (0, 1): frac(i * golden ratio), i = 1..n."""
    return (np.arange(1, n + 1) * (1 + np.sqrt(5)) / 2) % 1


class MiniRocket(TransformerMixin, BaseEstimator):
    """MiniRocket transform: 84 fixed kernels x dilations x biases -> PPV features.

    Biases are quantiles of one random training series' convolution output per
    (dilation, kernel) (``bias_series_`` says which series). Multivariate series: each (dilation, kernel) sums a
    random subset of channels. ``num_features`` is rounded down to a multiple of 84.
    """

    def __init__(self, num_features: int = 10_000, max_dilations_per_kernel: int = 32, random_state=None,
                 n_jobs: int = 1):
        self.num_features = num_features
        self.max_dilations_per_kernel = max_dilations_per_kernel
        self.random_state = random_state
        self.n_jobs = n_jobs

    min_length = MINI_LENGTH

    def fit(self, X, y=None):
        X = as_panel(X, min_length=self.min_length)
        n, C, L = X.shape
        rng = np.random.default_rng(self.random_state)
        dils, nfpd = mini_dilations(L, int(self.num_features), int(self.max_dilations_per_kernel))
        n_pairs = len(dils) * len(MINI_COMBOS)
        nchs = np.ones(n_pairs, dtype=np.int64)
        if C > 1:
            hi = np.log2(min(C, MINI_LENGTH) + 1)
            nchs = np.floor(2 ** rng.uniform(0, hi, n_pairs)).astype(np.int64).clip(1, C)
        chans = np.concatenate([rng.choice(C, m, replace=False) for m in nchs]).astype(np.int64)
        c_off = np.concatenate([[0], np.cumsum(nchs)[:-1]]).astype(np.int64)
        n_features = int(nfpd.sum()) * len(MINI_COMBOS)
        q = golden_quantiles(n_features)
        biases = np.empty(n_features, dtype=np.float32)
        series = np.empty(n_pairs, dtype=np.int64)     # the training series each (dilation, kernel)'s biases come from
        f = 0
        for di, d in enumerate(dils):
            for k in range(len(MINI_COMBOS)):
                pair = di * len(MINI_COMBOS) + k
                series[pair] = rng.integers(n)
                c = _mini_conv_one(X[series[pair]], int(d), k, chans, c_off[pair], nchs[pair])
                biases[f:f + nfpd[di]] = np.quantile(c, q[f:f + nfpd[di]])
                f += nfpd[di]
        self.input_shape_ = X.shape[1:]
        self.dilations_, self.features_per_dilation_, self.biases_ = dils, nfpd, biases
        self.bias_series_ = series
        self.nchs_, self.c_off_, self.chans_ = nchs, c_off, chans
        self.n_features_out_ = n_features
        return self

    def transform(self, X):
        check_fitted(self, "biases_")
        X = as_panel(X, min_length=self.min_length)
        check_shape(self, X)
        with numba_threads(self.n_jobs):
            return _mini_transform(X, self.dilations_, self.features_per_dilation_, self.biases_, MINI_COMBOS,
                                   MINI_PAIR, self.nchs_, self.c_off_, self.chans_, self.n_features_out_)

    def flops_per_series(self) -> float:
        """Adds of the convolutions (A once per dilation, 4 adds + 1 mul per kernel tap-set) and compares."""
        check_fitted(self, "biases_")
        L = self.input_shape_[1]
        conv = len(self.dilations_) * self.input_shape_[0] * L * MINI_LENGTH
        conv += float(np.sum(self.nchs_)) * L * 5
        return float(conv + self.n_features_out_ * L)
