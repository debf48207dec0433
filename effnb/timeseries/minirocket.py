"""MiniRocket (Dempster et al. 2021): 84 fixed two-valued kernels, PPV against quantile biases.

Every kernel's output is A + 3 (x_a + x_b + x_c) with A = -(sum of the nine
taps) shared by all 84. ``fit`` convolves one training series per (dilation,
kernel) and takes quantiles of the output as biases; it precomputes the 36
pair sums Q_ab = A + 3 (x_a + x_b) (``_mini_pairs``, ``_mini_conv``).
``transform`` is one fused kernel (``_mini_chunk``): for a block of series and
a dilation it computes A once, then for each of the 84 kernels the output,
counted against the kernel's biases as it is computed (up to four of them;
more in passes of four over the stored output), with the series in the lanes
of a vector (see the comment above ``W``) and every buffer allocated once per
thread.
"""
from __future__ import annotations

import itertools

import numpy as np
from numba import njit, prange
from sklearn.base import BaseEstimator, TransformerMixin

from .inputs import _n_threads as n_threads
from .inputs import as_panel, check_fitted, check_shape, numba_threads
from .lanes import W, count_above, load, proportion, splat, store, store_transposed, zeros
from .lanes import empty as empty_lanes

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


# ---------------------------------------------------------------- the transform: series in vector lanes
#
# Counting PPV is most of the work: one compare per bias and output point
# (10,000 features x the series length). Vectorised over time, as LLVM does
# with a plain loop, every (kernel, bias) ends with a sum across the vector's
# lanes and a scalar tail for the last few points, which for short series
# (24 points) costs more than the compares. So the transform puts W series
# side by side in the lanes of one vector, one vector per time step
# (``xT[c, t] = X[s0:s0 + W, c, t]``): a kernel's output at time t is
# A + 3 (x_a + x_b + x_e) for W series at once, and the PPV count of a bias is
# W integer counters in one register (a compare and a subtract per time step;
# no sum across lanes, no tail, the same code for 24 points or 1024). The
# vector type and W (16 lanes on AVX-512, else 8) come from ``.lanes``.


PARALLEL_MIN_WORK = 2e7    # flops_per_series x series (about half a millisecond of one thread's work) below which
#                            a call runs on one thread: a parallel region costs tens of microseconds to start, and
#                            a time slice (milliseconds) whenever one of its threads waits for a core held elsewhere
_NEVER = np.float32(np.finfo(np.float32).max)   # a bias no output exceeds: fills a pass of four past the last bias


@njit(fastmath=True, inline="always")
def _conv_at(AT, xT, a0, ia, ib, ie, t):
    """One channel's kernel output at time t for W series: A + 3 (x_a + x_b + x_e) (offsets of the taps' rows)."""
    tw = t * W
    return load(AT, a0 + tw) + splat(3.0) * (load(xT, ia + tw) + load(xT, ib + tw) + load(xT, ie + tw))


@njit(fastmath=True, inline="always")
def _bias(biases, f, q, nf):
    """Bias q of the kernel's nf (which start at feature f), in every lane; past nf one no output exceeds."""
    return splat(biases[f + q] if q < nf else _NEVER)


@njit(fastmath=True, inline="always")
def _ppv_conv1(AT, xT, a0, ia, ib, ie, lo, hi, biases, f, cnt):
    """One bias, counted while the output is computed (the output is never stored); counters to cnt[0:W]."""
    b0, n0 = splat(biases[f]), zeros()
    for t in range(lo, hi):
        n0 = count_above(n0, _conv_at(AT, xT, a0, ia, ib, ie, t), b0)
    store(cnt, 0, n0)


@njit(fastmath=True, inline="always")
def _ppv_conv2(AT, xT, a0, ia, ib, ie, lo, hi, biases, f, cnt):
    """Two biases, counted while the output is computed."""
    b0, b1 = splat(biases[f]), splat(biases[f + 1])
    n0, n1 = zeros(), zeros()
    for t in range(lo, hi):
        v = _conv_at(AT, xT, a0, ia, ib, ie, t)
        n0, n1 = count_above(n0, v, b0), count_above(n1, v, b1)
    store(cnt, 0, n0)
    store(cnt, W, n1)


@njit(fastmath=True, inline="always")
def _ppv_conv3(AT, xT, a0, ia, ib, ie, lo, hi, biases, f, cnt):
    """Three biases, counted while the output is computed."""
    b0, b1, b2 = splat(biases[f]), splat(biases[f + 1]), splat(biases[f + 2])
    n0, n1, n2 = zeros(), zeros(), zeros()
    for t in range(lo, hi):
        v = _conv_at(AT, xT, a0, ia, ib, ie, t)
        n0, n1, n2 = count_above(n0, v, b0), count_above(n1, v, b1), count_above(n2, v, b2)
    store(cnt, 0, n0)
    store(cnt, W, n1)
    store(cnt, 2 * W, n2)


@njit(fastmath=True, inline="always")
def _ppv_conv4(AT, xT, a0, ia, ib, ie, lo, hi, biases, f, cnt):
    """Four biases, counted while the output is computed."""
    b0, b1, b2, b3 = splat(biases[f]), splat(biases[f + 1]), splat(biases[f + 2]), splat(biases[f + 3])
    n0, n1, n2, n3 = zeros(), zeros(), zeros(), zeros()
    for t in range(lo, hi):
        v = _conv_at(AT, xT, a0, ia, ib, ie, t)
        n0, n1, n2, n3 = count_above(n0, v, b0), count_above(n1, v, b1), count_above(n2, v, b2), count_above(n3, v, b3)
    store(cnt, 0, n0)
    store(cnt, W, n1)
    store(cnt, 2 * W, n2)
    store(cnt, 3 * W, n3)


@njit(fastmath=True, inline="always")
def _ppv_buf4(buf, lo, hi, biases, f, q, nf, cnt):
    """Biases q..q+3 of the kernel against its stored output buf[t] (t in [lo, hi)), one pass."""
    b0, b1, b2, b3 = _bias(biases, f, q, nf), _bias(biases, f, q + 1, nf), _bias(biases, f, q + 2, nf), \
        _bias(biases, f, q + 3, nf)
    n0, n1, n2, n3 = zeros(), zeros(), zeros(), zeros()
    for t in range(lo, hi):
        v = load(buf, t * W)
        n0, n1, n2, n3 = count_above(n0, v, b0), count_above(n1, v, b1), count_above(n2, v, b2), count_above(n3, v, b3)
    store(cnt, q * W, n0)
    store(cnt, (q + 1) * W, n1)
    store(cnt, (q + 2) * W, n2)
    store(cnt, (q + 3) * W, n3)


@njit(cache=True, fastmath=True)
def _mini_chunk(X, out, dils, nfpd, foff, biases, combos, nchs, c_off, chans, owner, chunk):
    """This chunk's share of the (block of W series, dilation) work items, those with ``owner[item] == chunk``
    (item = block * n_dilations + dilation; see ``_share_out``); every buffer is allocated once here and
    reused by all of them."""
    n, C, L = X.shape
    ndil = dils.shape[0]
    maxd, maxnf = 1, 1
    for di in range(ndil):
        maxd, maxnf = max(maxd, dils[di]), max(maxnf, nfpd[di])
    P = 4 * maxd                         # zero padding on both sides of every channel's row
    LX = L + 2 * P
    nblk = (n + W - 1) // W
    xT = empty_lanes(C * LX * W, np.float32)      # the block, time-major: xT[((c * LX) + P + t) * W + lane]
    xT[:] = 0.0
    AT = empty_lanes(C * L * W, np.float32)       # A = -(sum of the nine taps), per channel
    buf = empty_lanes(L * W, np.float32)          # a kernel's output, when it is counted in several passes
    cnt = empty_lanes((maxnf + 3) * W, np.int32)  # a kernel's counters, bias by bias
    ppvT = empty_lanes(len(combos) * maxnf * W, np.float32)   # an item's features, series in the lanes
    nfo = out.shape[1]
    blk_now = -1
    for item in range(ndil * nblk):
        if owner[item] != chunk:
            continue
        blk, di = item // ndil, item % ndil          # block by block: each block is transposed once per chunk
        s0 = blk * W
        ns = min(W, n - s0)
        if blk != blk_now:
            for c in range(C):
                for t in range(L):
                    o = (c * LX + P + t) * W
                    for lane in range(W):
                        xT[o + lane] = X[s0 + lane, c, t] if lane < ns else 0.0
            blk_now = blk
        d = dils[di]
        for c in range(C):
            for t in range(L):
                a = load(xT, (c * LX + P + t - 4 * d) * W)
                for j in range(1, MINI_LENGTH):
                    a = a + load(xT, (c * LX + P + t + (j - 4) * d) * W)
                store(AT, (c * L + t) * W, splat(0.0) - a)
        nf, fo = nfpd[di], foff[di]
        for k in range(len(combos)):
            pair = di * len(combos) + k
            lo, hi = 0, L
            if (di + k) % 2 == 1:        # every other kernel: PPV over the unpadded part only
                lo, hi = 4 * d, L - 4 * d
            f = foff[di] + k * nf
            ta, tb, te = (combos[k, 0] - 4) * d, (combos[k, 1] - 4) * d, (combos[k, 2] - 4) * d   # tap offsets
            if nchs[pair] == 1 and nf <= 4:              # count while convolving
                c = chans[c_off[pair]]
                a0, ia, ib, ie = c * L * W, (c * LX + P + ta) * W, (c * LX + P + tb) * W, (c * LX + P + te) * W
                if nf == 1:
                    _ppv_conv1(AT, xT, a0, ia, ib, ie, lo, hi, biases, f, cnt)
                elif nf == 2:
                    _ppv_conv2(AT, xT, a0, ia, ib, ie, lo, hi, biases, f, cnt)
                elif nf == 3:
                    _ppv_conv3(AT, xT, a0, ia, ib, ie, lo, hi, biases, f, cnt)
                else:
                    _ppv_conv4(AT, xT, a0, ia, ib, ie, lo, hi, biases, f, cnt)
            else:                                         # store the output (summed over channels), then count
                for ci in range(nchs[pair]):
                    c = chans[c_off[pair] + ci]
                    a0, ia, ib, ie = c * L * W, (c * LX + P + ta) * W, (c * LX + P + tb) * W, (c * LX + P + te) * W
                    for t in range(lo, hi):
                        v = _conv_at(AT, xT, a0, ia, ib, ie, t)
                        store(buf, t * W, v if ci == 0 else v + load(buf, t * W))
                for q in range(0, nf, 4):
                    _ppv_buf4(buf, lo, hi, biases, f, q, nf, cnt)
            for q in range(nf):
                store(ppvT, (f - fo + q) * W, proportion(load(cnt, q * W), hi - lo))
        nfeat = len(combos) * nf        # the item's features, to the series' rows W at a time
        full = nfeat - nfeat % W
        for j in range(0, full, W):
            store_transposed(ppvT, j * W, out, s0 * nfo + fo + j, nfo, ns)
        for j in range(full, nfeat):
            for lane in range(ns):
                out[s0 + lane, fo + j] = ppvT[j * W + lane]


@njit(cache=True, parallel=True)
def _mini_transform(X, out, dils, nfpd, foff, biases, combos, nchs, c_off, chans, owner, n_chunks):
    """``n_chunks`` chunks of work items (``_mini_chunk``) over the threads: one parallel region per call."""
    for chunk in prange(n_chunks):
        _mini_chunk(X, out, dils, nfpd, foff, biases, combos, nchs, c_off, chans, owner, chunk)


@njit(cache=True)
def _share_out(cost, nblk, n_chunks):
    """The chunk of each work item (block, dilation): costliest dilations first, each item to the chunk with the
    least work so far (longest-processing-time first), so the chunks end within one item's cost of each other."""
    ndil = cost.shape[0]
    order = np.argsort(-cost)
    load = np.zeros(n_chunks)
    owner = np.empty(ndil * nblk, dtype=np.int64)
    for i in range(ndil):
        di = order[i]
        for blk in range(nblk):
            c = np.argmin(load)
            owner[blk * ndil + di] = c
            load[c] += cost[di]
    return owner


def dilation_costs(L: int, dils, nfpd, nchs, C: int) -> np.ndarray:
    """Vector operations for one block of series at each dilation, as ``_mini_chunk`` spends them: A (9 per
    channel), then per kernel its convolution (8 per channel) and two per bias (compare and count; a stored
    output costs a store per channel and a load per pass of four, and timing put such a pass at about 11),
    over the points its PPV spans (every other kernel skips the 4d padded points at each end: at long
    dilations that is most of the series). Estimated once per fit: to balance the chunks of a call."""
    nk = len(MINI_COMBOS)
    d = np.asarray(dils)[:, None]
    di, k = np.arange(len(dils))[:, None], np.arange(nk)[None, :]
    m = np.asarray(nchs).reshape(len(dils), nk)
    nf = np.asarray(nfpd)[:, None]
    span = np.where((di + k) % 2 == 1, np.maximum(L - 8 * d, 0), L)
    per_step = np.where((m == 1) & (nf <= 4), 8 + 2 * nf, 10 * m + 11 * -(-nf // 4))
    return 9.0 * C * L + (per_step * span).sum(axis=1)


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
        self.work_per_dilation_ = dilation_costs(L, dils, nfpd, nchs, C)
        self.n_features_out_ = n_features
        return self

    def transform(self, X):
        """PPV features (n_series, n_features_out_), float32. ``n_jobs`` threads at most: a call with less than
        ``PARALLEL_MIN_WORK`` of work, and every call with ``n_jobs=1``, runs on the calling thread without
        a parallel region."""
        check_fitted(self, "biases_")
        X = as_panel(X, min_length=self.min_length)
        check_shape(self, X)
        nfpd = self.features_per_dilation_
        foff = np.concatenate([[0], np.cumsum(nfpd * len(MINI_COMBOS))[:-1]]).astype(np.int64)
        # numpy allocates the output, not Numba: numpy asks the OS for huge pages (MADV_HUGEPAGE), and first-
        # touching a large output in 4 KiB pages (ItalyPowerDemand's 1029 x 9996 floats) took longer than
        # computing the features
        out = np.empty((X.shape[0], self.n_features_out_), dtype=np.float32)
        args = (X, out, self.dilations_, nfpd, foff, self.biases_, MINI_COMBOS, self.nchs_, self.c_off_, self.chans_)
        threads = n_threads(self.n_jobs)
        nblk = -(-X.shape[0] // W)
        items = len(self.dilations_) * nblk
        if threads == 1 or items == 1 or self.flops_per_series() * X.shape[0] < PARALLEL_MIN_WORK:
            _mini_chunk(*args, np.zeros(items, dtype=np.int64), 0)   # no parallel region: nothing to wake or wait for
        else:
            # two chunks per thread: with one each, a call now and then ran as slowly as on one thread
            # (p90 1.5 ms against a median of 0.8 at 16 series of length 256 here), and such phases lasted
            # long enough to set a benchmark's median; with two the p90 stayed within 10% of the median.
            # The chunks get equal estimated work: dilations differ several-fold in cost (the first one
            # has the most biases, long ones skip most points), and a round-robin share left one
            # thread with 60% of the work at length 1024
            n_chunks = min(2 * threads, items)
            with numba_threads(threads):
                _mini_transform(*args, _share_out(self.work_per_dilation_, nblk, n_chunks), n_chunks)
        return out

    def flops_per_series(self) -> float:
        """Adds of the convolutions (A once per dilation and channel, then per kernel and channel 3 adds, 1 mul
        and 1 add to sum the channels) and the compares of PPV."""
        check_fitted(self, "biases_")
        L = self.input_shape_[1]
        conv = len(self.dilations_) * self.input_shape_[0] * L * MINI_LENGTH
        conv += float(np.sum(self.nchs_)) * L * 5
        return float(conv + self.n_features_out_ * L)
