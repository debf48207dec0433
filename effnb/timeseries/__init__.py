"""Fast time-series classification features (ROCKET, MiniRocket) and a streaming conv step.

Chapter 18 explains everything here. ROCKET (Dempster et al. 2020) turns a
series into two features per random convolution kernel, the proportion of
positive values (PPV) and the maximum of the kernel's output; MiniRocket
(Dempster et al. 2021) fixes the kernels to 84 two-valued ones and keeps only
PPV against biases drawn from training quantiles. Both are sums of shifted
copies of the input, so the kernels here are Numba loops that are:

* fused: each kernel's output lives in one small per-series buffer that is
  reused for every kernel, and PPV / max are counted while it is still in L1;
* vectorised over time: the inner loop adds ``w * x[t + offset]`` over a
  contiguous range of ``t`` (boundaries handled by clipping the range, not by a
  branch per tap), which LLVM turns into AVX2 FMAs in float32;
* parallel over series (``prange``) with ``n_jobs`` Numba threads.

``SelectedRocket`` computes only the kernels behind a kept subset of features
(LightWaveS-style selection, :func:`select_features`, optionally restricted
to the channels :func:`select_channels` keeps); ``WaveletRocket`` adds ROCKET
features of a multilevel Haar wavelet decomposition (:func:`haar_dwt`) and
``SelectedWaveletRocket`` computes only the kept ones, and ``ContinualTCN``
runs a causal dilated conv net one time step at a time from ring buffers,
exactly equal to the offline network. ``effnb.timeseries_ref`` holds the plain
float64 references the tests compare against.
"""
from __future__ import annotations

import itertools
import math
import time

import numba
import numpy as np
from numba import njit, prange
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

ROCKET_LENGTHS = (7, 9, 11)
MINI_LENGTH = 9
# the 84 MiniRocket kernels: positions of the three weights 2 among nine (the other six are -1)
MINI_COMBOS = np.array(list(itertools.combinations(range(MINI_LENGTH), 3)), dtype=np.int64)
DATASETS = {"GunPoint": "load_gunpoint", "ArrowHead": "load_arrow_head",
            "ItalyPowerDemand": "load_italy_power_demand", "BasicMotions": "load_basic_motions",
            "JapaneseVowels": "load_japanese_vowels"}


# ------------------------------------------------------------------ input checks

def as_panel(X, *, min_length: int = 1, what: str = "X") -> np.ndarray:
    """Validate and return ``X`` as float32 (n_series, n_channels, length); clear errors before any work."""
    if isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.dtype == object):
        lengths = {np.shape(x)[-1] for x in X} if len(X) else set()
        if len(lengths) > 1:
            raise ValueError(f"{what} has series of unequal lengths {sorted(lengths)[:5]}...: pad them to one "
                             f"length first, e.g. effnb.timeseries.pad_equal(list_of_series)")
        try:
            X = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} must be numeric: {exc}") from None
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
        raise TypeError(f"{what} is a {type(X).__name__}; pass a numpy array (n_series, n_channels, length), "
                        f"e.g. sktime's load_*(return_type='numpy3D')")
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.number):
        raise TypeError(f"{what} has dtype {X.dtype}; it must be numeric")
    if X.ndim == 2:
        X = X[:, None, :]
    if X.ndim != 3:
        raise ValueError(f"{what} has {X.ndim} dimensions; pass (n_series, length) for univariate or "
                         f"(n_series, n_channels, length) for multivariate series")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{what} has shape {X.shape}: it needs at least one series and one channel")
    if X.shape[2] < min_length:
        raise ValueError(f"{what} has series of length {X.shape[2]}; this transform needs at least {min_length} "
                         f"time points: pad them, e.g. effnb.timeseries.pad_equal(X, length={min_length})")
    if not np.isfinite(X).all():
        raise ValueError(f"{what} contains NaN or infinite values: impute them (e.g. interpolate along time) "
                         f"or drop those series before transforming")
    return np.ascontiguousarray(X, dtype=np.float32)


def pad_equal(series, length: int | None = None, mode: str = "edge") -> np.ndarray:
    """Pad a list of (n_channels, length_i) series at the end to one length (repeat the last value by default)."""
    series = [np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in series]
    if not series:
        raise ValueError("pad_equal needs at least one series")
    target = max(s.shape[-1] for s in series) if length is None else int(length)
    if any(s.shape[-1] > target for s in series):
        raise ValueError(f"a series is longer than length={target}; crop it or raise length")
    return np.stack([np.pad(s, ((0, 0), (0, target - s.shape[-1])), mode=mode) for s in series])


def _n_threads(n_jobs) -> int:
    if n_jobs is None or n_jobs < 1:
        return numba.config.NUMBA_NUM_THREADS
    return int(min(n_jobs, numba.config.NUMBA_NUM_THREADS))


class _threads:
    """Run a block with ``n`` Numba threads and put the previous count back."""

    def __init__(self, n_jobs):
        self.n = _n_threads(n_jobs)

    def __enter__(self):
        self.saved = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        numba.set_num_threads(self.saved)
        return False


def _check_fitted(est, attr: str):
    if not hasattr(est, attr):
        raise NotFittedError(f"this {type(est).__name__} is not fitted yet: call fit(X_train) before transform")


def _check_shape(est, X):
    if X.shape[1:] != est.input_shape_:
        raise ValueError(f"{type(est).__name__} was fitted on series of shape (channels, length) = "
                         f"{est.input_shape_} but got {X.shape[1:]}: transform series with the fitted number "
                         f"of channels and length (pad or crop them, e.g. effnb.timeseries.pad_equal)")


# ------------------------------------------------------------------ ROCKET

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


def _rocket_apply(kernels: dict, X: np.ndarray, kids: np.ndarray) -> np.ndarray:
    k = kernels
    return _rocket_transform(X, np.ascontiguousarray(kids, dtype=np.int64), k["lengths"], k["biases"],
                             k["dils"], k["pads"], k["nchs"], k["c_off"], k["chans"], k["w_off"], k["w"])


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
        _check_fitted(self, "kernels_")
        X = as_panel(X, min_length=self.min_length)
        _check_shape(self, X)
        return _normalise(X) if self.normalise else X

    def transform(self, X):
        X = self._prepare(X)
        with _threads(self.n_jobs):
            return _rocket_apply(self.kernels_, X, np.arange(self.num_kernels))

    def flops_per_series(self, kernel_ids=None) -> float:
        """Multiply-adds x 2 of the convolutions (padding taps that read zeros are not counted)."""
        _check_fitted(self, "kernels_")
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
        _check_fitted(self, "kernel_ids_")
        r = self.rocket
        X = as_panel(X, min_length=r.min_length)
        _check_shape(self, X)
        if self.channels_ is not None:
            X = np.ascontiguousarray(X[:, self.channels_])
        X = _normalise(X) if r.normalise else X.astype(np.float32)
        with _threads(self.n_jobs):
            full = _rocket_apply(self.kernels_, X, self.kernel_ids_)
        return full[:, self.columns_]


# ------------------------------------------------------------------ wavelet features (LightWaveS-style)

def haar_dwt(X: np.ndarray, levels: int):
    """Multilevel orthonormal Haar DWT along the last axis: (approximation, [detail_1, ..., detail_levels]).

    One level maps pairs (x[2i], x[2i+1]) to a = (x[2i] + x[2i+1]) / sqrt(2)
    and d = (x[2i] - x[2i+1]) / sqrt(2): an orthonormal change of basis, so
    energy is preserved and ``haar_idwt`` reconstructs exactly. An odd length
    is first padded with its last value. Level j has about L / 2**j points.
    """
    a = np.asarray(X, dtype=np.float64)
    if levels < 0:
        raise ValueError(f"levels must be >= 0 (got {levels})")
    details = []
    s = 1 / math.sqrt(2)
    for _ in range(levels):
        if a.shape[-1] < 2:
            raise ValueError(f"series too short for {levels} Haar levels; use fewer levels")
        if a.shape[-1] % 2:
            a = np.concatenate([a, a[..., -1:]], axis=-1)
        even, odd = a[..., 0::2], a[..., 1::2]
        details.append((even - odd) * s)
        a = (even + odd) * s
    return a, details


def haar_idwt(approx: np.ndarray, details, length: int) -> np.ndarray:
    """Inverse of ``haar_dwt`` for a series of original ``length`` (drops the odd-length padding)."""
    lengths = [int(length)]
    for _ in details[:-1]:
        lengths.append((lengths[-1] + 1) // 2)
    a = np.asarray(approx, dtype=np.float64)
    s = 1 / math.sqrt(2)
    for d, n in zip(reversed(details), reversed(lengths)):
        x = np.empty(a.shape[:-1] + (2 * a.shape[-1],))
        x[..., 0::2] = (a + d) * s
        x[..., 1::2] = (a - d) * s
        a = x[..., :n]
    return a


def wavelet_bands(X: np.ndarray, levels: int) -> list:
    """[raw, detail_1, ..., detail_levels, approx_levels]: the signals WaveletRocket convolves."""
    if levels == 0:
        return [np.asarray(X)]
    a, ds = haar_dwt(X, levels)
    return [np.asarray(X)] + ds + [a]


class WaveletRocket(TransformerMixin, BaseEstimator):
    """ROCKET on the raw series and on its Haar wavelet sub-bands (a simple form of LightWaveS's wavelet step).

    Each band (raw, the detail coefficients of levels 1..J, the level-J
    approximation) gets its own ``num_kernels`` random kernels, drawn for that
    band's length; the features are the bands' ROCKET features side by side.
    ``levels`` is capped so that every band keeps at least 11 points
    (``levels_`` after fit). Band 0 uses ``random_state`` itself, so its features
    equal ``Rocket(num_kernels, random_state=random_state)``'s.
    """

    def __init__(self, num_kernels: int = 10_000, levels: int = 2, random_state=None, n_jobs: int = 1):
        self.num_kernels = num_kernels
        self.levels = levels
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X, y=None):
        X = as_panel(X, min_length=Rocket.min_length)
        L, J = X.shape[2], 0
        while J < int(self.levels) and math.ceil(L / 2 ** (J + 1)) >= Rocket.min_length:
            J += 1
        self.levels_ = J
        self.input_shape_ = X.shape[1:]
        seed = self.random_state
        self.rockets_ = [Rocket(self.num_kernels, random_state=None if seed is None else seed + 7919 * b,
                                n_jobs=self.n_jobs).fit(band) for b, band in enumerate(wavelet_bands(X, J))]
        self.offsets_ = np.cumsum([0] + [r.n_features_out_ for r in self.rockets_])
        self.n_features_out_ = int(self.offsets_[-1])
        return self

    def transform(self, X):
        _check_fitted(self, "rockets_")
        X = as_panel(X, min_length=Rocket.min_length)
        _check_shape(self, X)
        return np.concatenate([r.transform(band) for r, band in zip(self.rockets_, wavelet_bands(X, self.levels_))],
                              axis=1)

    def band_names(self) -> list:
        _check_fitted(self, "rockets_")
        J = self.levels_
        return ["raw"] + [f"D{j}" for j in range(1, J + 1)] + ([f"A{J}"] if J else [])


class SelectedWaveletRocket(TransformerMixin, BaseEstimator):
    """The features ``features`` of a fitted ``WaveletRocket``, computing only the kernels behind them.

    The kept kernels of all bands are gathered into one flat kernel set and run
    in one parallel call over the needed bands laid end to end; bands without a
    kept feature are skipped, and the wavelet transform runs only as deep as a
    kept feature needs. ``channels``: as in ``SelectedRocket``.
    """

    def __init__(self, wavelet_rocket: WaveletRocket | None = None, features=None, n_jobs: int = 1,
                 channels=None):
        self.wavelet_rocket = wavelet_rocket
        self.features = features
        self.n_jobs = n_jobs
        self.channels = channels

    def fit(self, X=None, y=None):
        w = self.wavelet_rocket
        if w is None or not hasattr(w, "rockets_"):
            raise NotFittedError("SelectedWaveletRocket needs a fitted WaveletRocket: WaveletRocket(...).fit(X) first")
        f = np.asarray(self.features, dtype=np.int64).ravel()
        if f.size == 0 or f.min() < 0 or f.max() >= w.n_features_out_:
            raise ValueError(f"features must be non-empty indices in [0, {w.n_features_out_})")
        band = np.searchsorted(w.offsets_, f, side="right") - 1
        self.bands_ = np.unique(band)
        parts, order, cols, nk = [], [], [], 0
        for j, b in enumerate(self.bands_):
            pos = np.flatnonzero(band == b)
            sel = SelectedRocket(w.rockets_[b], f[pos] - w.offsets_[b], channels=self.channels).fit()
            parts.append((j, sel))
            order.append(pos)
            cols.append(sel.columns_ + 2 * nk)
            nk += len(sel.kernel_ids_)
        # one flat kernel set: the kept kernels of every band, each tagged with its band's slot
        flat = {key: [] for key in ("lengths", "biases", "dils", "pads", "nchs", "chans", "w", "kband")}
        for j, sel in parts:
            k = sel.kernels_
            for kid in sel.kernel_ids_:
                for key in ("lengths", "biases", "dils", "pads", "nchs"):
                    flat[key].append(k[key][kid])
                flat["chans"].append(k["chans"][k["c_off"][kid]:k["c_off"][kid] + k["nchs"][kid]])
                flat["w"].append(k["w"][k["w_off"][kid]:k["w_off"][kid] + k["nchs"][kid] * k["lengths"][kid]])
                flat["kband"].append(j)
        kd = {key: np.asarray(flat[key], dtype=np.float32 if key == "biases" else np.int64)
              for key in ("lengths", "biases", "dils", "pads", "nchs", "kband")}
        kd["chans"] = np.concatenate(flat["chans"]).astype(np.int64)
        kd["w"] = np.concatenate(flat["w"]).astype(np.float32)
        kd["c_off"] = np.concatenate([[0], np.cumsum(kd["nchs"])[:-1]]).astype(np.int64)
        kd["w_off"] = np.concatenate([[0], np.cumsum(kd["nchs"] * kd["lengths"])[:-1]]).astype(np.int64)
        self.kernels_ = kd
        self.n_kernels_ = nk
        self.columns_ = np.concatenate(cols)[np.argsort(np.concatenate(order), kind="stable")]
        self.channels_ = parts[0][1].channels_
        self.input_shape_ = w.input_shape_
        return self

    def transform(self, X):
        _check_fitted(self, "kernels_")
        X = as_panel(X, min_length=Rocket.min_length)
        _check_shape(self, X)
        if self.channels_ is not None:
            X = np.ascontiguousarray(X[:, self.channels_])
        w, need = self.wavelet_rocket, int(self.bands_.max())
        J = w.levels_
        bands = [X]
        if need > 0:   # band b <= J is detail level b; band J + 1 is the level-J approximation
            a, ds = haar_dwt(X, min(need, J))
            bands += ds + [a]
        used = [bands[b] for b in self.bands_]
        if w.rockets_[0].normalise:
            used = [_normalise(u) for u in used]
        lens = np.array([u.shape[-1] for u in used], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        Xcat = np.ascontiguousarray(np.concatenate(used, axis=-1), dtype=np.float32)
        k = self.kernels_
        with _threads(self.n_jobs):
            out = _rocket_transform_bands(Xcat, starts, lens, k["kband"], k["lengths"], k["biases"], k["dils"],
                                          k["pads"], k["nchs"], k["c_off"], k["chans"], k["w_off"], k["w"])
        return out[:, self.columns_]


# ------------------------------------------------------------------ MiniRocket

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
    (dilation, kernel). Multivariate series: each (dilation, kernel) sums a
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
        f = 0
        for di, d in enumerate(dils):
            for k in range(len(MINI_COMBOS)):
                pair = di * len(MINI_COMBOS) + k
                c = _mini_conv_one(X[rng.integers(n)], int(d), k, chans, c_off[pair], nchs[pair])
                biases[f:f + nfpd[di]] = np.quantile(c, q[f:f + nfpd[di]])
                f += nfpd[di]
        self.input_shape_ = X.shape[1:]
        self.dilations_, self.features_per_dilation_, self.biases_ = dils, nfpd, biases
        self.nchs_, self.c_off_, self.chans_ = nchs, c_off, chans
        self.n_features_out_ = n_features
        return self

    def transform(self, X):
        _check_fitted(self, "biases_")
        X = as_panel(X, min_length=self.min_length)
        _check_shape(self, X)
        with _threads(self.n_jobs):
            return _mini_transform(X, self.dilations_, self.features_per_dilation_, self.biases_, MINI_COMBOS,
                                   MINI_PAIR, self.nchs_, self.c_off_, self.chans_, self.n_features_out_)

    def flops_per_series(self) -> float:
        """Adds of the convolutions (A once per dilation, 4 adds + 1 mul per kernel tap-set) and compares."""
        _check_fitted(self, "biases_")
        L = self.input_shape_[1]
        conv = len(self.dilations_) * self.input_shape_[0] * L * MINI_LENGTH
        conv += float(np.sum(self.nchs_)) * L * 5
        return float(conv + self.n_features_out_ * L)


# ------------------------------------------------------------------ feature selection (LightWaveS-style)

def feature_scores(F: np.ndarray, y, method: str = "anova") -> np.ndarray:
    """A class-separation score per column of F (higher is better; constant columns score -1).

    ``anova``: the one-way ANOVA F statistic per feature (how far apart the
    class means are in units of the within-class spread); ``ridge``: |weight|
    of a ridge classifier on standardised features, summed over classes.
    """
    F = np.asarray(F, dtype=np.float64)
    if method == "anova":
        import warnings

        from sklearn.feature_selection import f_classif
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # constant features score NaN, ranked last below
            score, _ = f_classif(F, y)
    elif method == "ridge":
        from sklearn.linear_model import RidgeClassifierCV
        Z = (F - F.mean(0)) / (F.std(0) + 1e-8)
        coef = RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)).fit(Z, y).coef_
        score = np.abs(np.atleast_2d(coef)).sum(0)
    else:
        raise ValueError(f"method must be 'anova' or 'ridge', not {method!r}")
    return np.nan_to_num(score, nan=-1.0, posinf=np.finfo(np.float64).max)


def select_features(F: np.ndarray, y, keep: float = 0.025, method: str = "anova", allowed=None,
                    n_keep: int | None = None) -> np.ndarray:
    """Indices of the best ``keep`` fraction of the columns of F, ranked by ``feature_scores``.

    LightWaveS ranks features on training data and keeps about 2.5% of them.
    ``allowed`` (boolean mask over columns) restricts the candidates, e.g. to the
    kernels of the channels ``select_channels`` kept; ``n_keep`` overrides the
    count (``keep`` x number of columns).
    """
    F = np.asarray(F, dtype=np.float64)
    if not 0 < keep <= 1:
        raise ValueError(f"keep is a fraction in (0, 1]; got {keep}")
    k = max(1, int(round(keep * F.shape[1]))) if n_keep is None else max(1, int(n_keep))
    score = feature_scores(F, y, method)
    if allowed is not None:
        score = np.where(np.asarray(allowed, dtype=bool), score, -np.inf)
        k = min(k, int(np.sum(allowed)))
    return np.sort(np.argsort(-score, kind="stable")[:k])


def _rockets(transform) -> list:
    rockets = [transform] if isinstance(transform, Rocket) else getattr(transform, "rockets_", None)
    if rockets is None or not hasattr(rockets[0], "kernels_"):
        raise NotFittedError("select_channels needs a fitted Rocket or WaveletRocket")
    return rockets


def select_channels(transform, scores, keep_channels: float = 0.5):
    """(kept channels, allowed-feature mask): channels ranked by the summed scores of their kernels' features.

    Every feature's score (``feature_scores``) is added to each channel its
    kernel reads; the top ``keep_channels`` fraction of channels (at least one)
    is kept, and a feature is allowed if its kernel reads only kept channels.
    """
    rockets = _rockets(transform)
    C = rockets[0].input_shape_[0]
    if not 0 < keep_channels <= 1:
        raise ValueError(f"keep_channels is a fraction in (0, 1]; got {keep_channels}")
    scores = np.maximum(np.asarray(scores, dtype=np.float64), 0.0)
    total, pos = np.zeros(C), 0
    for r in rockets:
        k, nf = r.kernels_, r.n_features_out_
        ks = scores[pos:pos + nf:2] + scores[pos + 1:pos + nf:2]
        np.add.at(total, k["chans"], np.repeat(ks, k["nchs"]))
        pos += nf
    m = max(1, int(round(keep_channels * C)))
    kept = np.sort(np.argsort(-total, kind="stable")[:m])
    inside = np.isin(np.arange(C), kept)
    allowed = np.concatenate([np.repeat(np.minimum.reduceat(inside[r.kernels_["chans"]], r.kernels_["c_off"]), 2)
                              for r in rockets])
    return kept, allowed


def classifier(transform):
    """transform -> StandardScaler -> RidgeClassifierCV: the classifier both sides of every comparison use."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    return make_pipeline(transform, StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)))


# ------------------------------------------------------------------ continual (streaming) conv

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


# ------------------------------------------------------------------ data and timing helpers

def load_dataset(name: str):
    """(X_train, y_train, X_test, y_test) of a UCR/UEA set bundled with sktime, float, (n, C, L).

    JapaneseVowels has unequal lengths (7..26): its series are padded at the
    end to the longest by repeating their last value (``pad_equal``), the
    same padded arrays for every method compared.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    import warnings

    import sktime.datasets as D
    loader = getattr(D, DATASETS[name])
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for split in ("train", "test"):
            try:
                X, y = loader(split=split, return_type="numpy3D")
            except ValueError:
                Xn, y = loader(split=split, return_type="nested_univ")
                X = [np.stack([np.asarray(Xn.iloc[i, c], dtype=np.float64) for c in range(Xn.shape[1])])
                     for i in range(len(Xn))]
                X = ("ragged", X)
            out.append([X, np.asarray(y)])
    if isinstance(out[0][0], tuple) or isinstance(out[1][0], tuple):
        tr, te = out[0][0][1], out[1][0][1]
        n = max(s.shape[-1] for s in tr + te)
        out[0][0], out[1][0] = pad_equal(tr, n), pad_equal(te, n)
    return out[0][0].astype(np.float64), out[0][1], out[1][0].astype(np.float64), out[1][1]


def timed(fn, repeats: int = 3):
    """(first-call seconds, best of ``repeats`` later calls): compile time apart from warm time."""
    if repeats < 1:
        raise ValueError("timed needs repeats >= 1")
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return first, best



# ------------------------------------------------------------------ the chapter's experiments

def _peers(multivariate: bool):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sktime.transformations.panel.rocket import MiniRocket as SkMini
        from sktime.transformations.panel.rocket import MiniRocketMultivariate as SkMiniMulti
        from sktime.transformations.panel.rocket import Rocket as SkRocket
    return SkRocket, (SkMiniMulti if multivariate else SkMini)


def transformers(multivariate: bool, num_kernels: int, num_features: int, threads: int, seed: int) -> dict:
    """The four transforms compared: ours and sktime's ROCKET and MiniRocket, equal threads and sizes."""
    SkRocket, SkMini = _peers(multivariate)
    return {"ROCKET effnb": Rocket(num_kernels, random_state=seed, n_jobs=threads),
            "ROCKET sktime": SkRocket(num_kernels=num_kernels, random_state=seed, n_jobs=threads),
            "MiniRocket effnb": MiniRocket(num_features, random_state=seed, n_jobs=threads),
            "MiniRocket sktime": SkMini(num_kernels=num_features, random_state=seed, n_jobs=threads)}


def compare_dataset(name: str, num_kernels: int, num_features: int, keep: float, threads: int, seed: int,
                    repeats: int = 2) -> list[dict]:
    """Accuracy and warm transform time of every method on one dataset's fixed train/test split.

    Each transform feeds the same StandardScaler + RidgeClassifierCV. The
    selected subset ranks ROCKET (effnb) training features (``select_features``),
    keeps ``keep`` of them, refits the ridge on them, and at test time computes
    only the kernels behind them (``SelectedRocket``).
    """
    import warnings

    from sklearn.base import clone
    Xtr, ytr, Xte, yte = load_dataset(name)
    rows = []
    fitted = {}
    for label, tr in transformers(Xtr.shape[1] > 1, num_kernels, num_features, threads, seed).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            tr = clone(tr).fit(Xtr)
            Ftr = np.asarray(tr.transform(Xtr))
            fit_s = time.perf_counter() - t0
            head = classifier("passthrough").fit(Ftr, ytr)
            t0 = time.perf_counter()
            Fte = np.asarray(tr.transform(Xte))
            first = time.perf_counter() - t0
            warm = timed(lambda: tr.transform(Xte), repeats)[1] if repeats > 0 else first
            acc = float(np.mean(head.predict(Fte) == yte))
        fitted[label] = (tr, Ftr)
        rows.append({"dataset": name, "method": label, "features": Ftr.shape[1], "accuracy": acc,
                     "fit_s": fit_s, "first_transform_s": first, "transform_s": warm,
                     "series_per_s": len(Xte) / warm, "test_series": len(Xte)})
    rocket, Ftr = fitted["ROCKET effnb"]
    idx = select_features(Ftr, ytr, keep=keep)
    sel = SelectedRocket(rocket, idx, n_jobs=threads).fit()
    head = classifier("passthrough").fit(Ftr[:, idx], ytr)
    t0 = time.perf_counter()
    Fte = sel.transform(Xte)
    first = time.perf_counter() - t0
    warm = min(first, timed(lambda: sel.transform(Xte), repeats)[1]) if repeats > 0 else first
    acc = float(np.mean(head.predict(Fte) == yte))
    rows.append({"dataset": name, "method": f"ROCKET effnb {100 * keep:g}% selected", "features": len(idx),
                 "kernels": len(sel.kernel_ids_), "accuracy": acc, "fit_s": np.nan, "first_transform_s": first,
                 "transform_s": warm, "series_per_s": len(Xte) / warm, "test_series": len(Xte)})
    return rows


def selection_study(name: str, num_kernels: int, keep: float, keep_channels: float, levels: int, threads: int,
                    seed: int, repeats: int = 2) -> list[dict]:
    """Accuracy and warm test-set transform time of the selection variants on one dataset.

    Variants: all ROCKET kernels; the top ``keep`` fraction of raw ROCKET
    features; the same number of features chosen among raw + Haar wavelet
    features (``WaveletRocket``); and, for multivariate sets, both again after
    channel selection (``select_channels``, ``keep_channels`` of the channels).
    Every variant keeps the same number of features and feeds the same
    StandardScaler + RidgeClassifierCV, refitted on its kept training columns.
    Times are the best of up to ``repeats`` warm calls (fewer for calls over a
    quarter of a second).
    """
    Xtr, ytr, Xte, yte = load_dataset(name)
    w = WaveletRocket(num_kernels, levels=levels, random_state=seed, n_jobs=threads).fit(Xtr)
    raw = w.rockets_[0]
    Ftr = w.transform(Xtr)
    nraw = raw.n_features_out_
    n_keep = max(1, int(round(keep * nraw)))
    scores = feature_scores(Ftr, ytr)
    variants = {"all kernels": None,
                "selected": (select_features(Ftr[:, :nraw], ytr, n_keep=n_keep), None, False),
                "selected + wavelets": (select_features(Ftr, ytr, n_keep=n_keep), None, True)}
    if Xtr.shape[1] > 1:
        ch_raw, ok_raw = select_channels(raw, scores[:nraw], keep_channels)
        ch_w, ok_w = select_channels(w, scores, keep_channels)
        variants["selected, channels"] = (select_features(Ftr[:, :nraw], ytr, n_keep=n_keep, allowed=ok_raw),
                                          ch_raw, False)
        variants["selected + wavelets, channels"] = (select_features(Ftr, ytr, n_keep=n_keep, allowed=ok_w),
                                                     ch_w, True)
    rows = []
    for label, spec in variants.items():
        if spec is None:
            tr, cols, n_k, n_ch = raw, np.arange(nraw), raw.num_kernels, Xtr.shape[1]
        else:
            cols, chans, wav = spec
            tr = (SelectedWaveletRocket(w, cols, n_jobs=threads, channels=chans) if wav
                  else SelectedRocket(raw, cols, n_jobs=threads, channels=chans)).fit()
            n_k = tr.n_kernels_ if wav else len(tr.kernel_ids_)
            n_ch = Xtr.shape[1] if chans is None else len(chans)
        head = classifier("passthrough").fit(Ftr[:, cols], ytr)
        t0 = time.perf_counter()
        Fte = tr.transform(Xte)
        first = time.perf_counter() - t0
        # best of up to ``repeats`` warm calls, fewer for calls over ~0.25 s (long calls are not the noisy ones)
        n_rep = max(1, min(int(repeats), int(0.25 / max(first, 1e-6))))
        warm = timed(lambda: tr.transform(Xte), n_rep)[1]
        wav_feats = int(np.sum(cols >= nraw)) if spec is not None and spec[2] else 0
        rows.append({"dataset": name, "variant": label, "features": len(cols), "wavelet features": wav_feats,
                     "kernels": n_k, "channels": n_ch, "accuracy": float(np.mean(head.predict(Fte) == yte)),
                     "transform_s": warm})
    base = rows[0]["transform_s"]
    for r in rows:
        r["speedup"] = base / r["transform_s"]
    return rows


def throughput_sweep(sizes, *, vary: str, length: int, n_kernels: int, n_series: int, threads: int,
                     seed: int = 0, repeats: int = 3, channels: int = 1):
    """Warm transform throughput of the four transforms on random series, varying ``length`` or ``kernels``.

    Returns a tidy frame (provider, size, median_s, q25_s, q75_s, compile_s,
    series_per_s and GFLOP/s with interquartile bands; GFLOP/s counts ROCKET's
    multiply-adds, and for MiniRocket its adds and compares). The first call
    of each provider at each size is timed apart as ``compile_s``.
    """
    import warnings

    import pandas as pd
    if vary not in ("length", "kernels"):
        raise ValueError("vary must be 'length' or 'kernels'")
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        L, K = (int(size), n_kernels) if vary == "length" else (length, int(size))
        X = rng.normal(size=(n_series, channels, L))
        for label, tr in transformers(channels > 1, K, max(K, 84), threads, seed).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tr.fit(X)
                t0 = time.perf_counter()
                tr.transform(X)
                compile_s = time.perf_counter() - t0
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    tr.transform(X)
                    times.append(time.perf_counter() - t0)
            ours = tr if "effnb" in label else (Rocket(K).fit(X) if "ROCKET" in label else
                                                MiniRocket(max(K, 84)).fit(X))
            flops = ours.flops_per_series() * n_series
            t = np.array(times)
            med, q25, q75 = np.median(t), np.quantile(t, 0.25), np.quantile(t, 0.75)
            rows.append({"provider": label, "size": int(size), "vary": vary, "median_s": med, "q25_s": q25,
                         "q75_s": q75, "compile_s": compile_s, "flops": flops,
                         "series_per_s": n_series / med, "series_per_s_lo": n_series / q75,
                         "series_per_s_hi": n_series / q25, "gflops": flops / med / 1e9,
                         "gflops_lo": flops / q75 / 1e9, "gflops_hi": flops / q25 / 1e9})
    return pd.DataFrame(rows)


def compile_times(threads: int = 1) -> dict:
    """Seconds of the first transform call in this process (Numba compiles, or loads its on-disk cache)."""
    X = np.random.default_rng(0).normal(size=(2, 1, 32))
    out = {}
    for label, est in (("ROCKET effnb", Rocket(10, random_state=0, n_jobs=threads)),
                       ("MiniRocket effnb", MiniRocket(84, random_state=0, n_jobs=threads))):
        t0 = time.perf_counter()
        est.fit(X).transform(X)
        out[label] = time.perf_counter() - t0
    return out


def ucr_stream(name: str = "GunPoint", n_series: int = 20) -> np.ndarray:
    """A univariate stream: the first ``n_series`` test series of a UCR set, z-normalised, end to end."""
    _, _, Xte, _ = load_dataset(name)
    x = Xte[:n_series, 0, :]
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-8)
    return x.reshape(1, -1)


def _torch_tcn(net: ContinualTCN):
    import torch
    layers = []
    for l, d in enumerate(net.dils):
        conv = torch.nn.Conv1d(net.C, net.C, net.K, dilation=int(d), dtype=torch.float64)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(net.W[l]))
            conv.bias.copy_(torch.from_numpy(net.B[l]))
        layers += [torch.nn.ConstantPad1d(((net.K - 1) * int(d), 0), 0.0), conv]
        if l < len(net.dils) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def streaming_bench(net: ContinualTCN, stream: np.ndarray, windows, steps: int = 200, repeats: int = 3):
    """Per-step cost of streaming with ``net``: continual step vs rerunning the net on a window.

    Rows per window: multiply-adds per step (exact counts) and the best-of-
    ``repeats`` seconds per step of the continual step (a jitted loop over
    steps, and one Python call per step), of the windowed Numba net and of the
    windowed torch Conv1d net (one forward per step), each on the same ``steps``
    steady-state steps of ``stream``. Everything here runs on one thread.
    """
    import pandas as pd
    import torch
    tnet = _torch_tcn(net)

    def best(fn, n=steps):
        fn()
        out = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out = min(out, time.perf_counter() - t0)
        return out / n

    torch_steps = min(steps, 50)   # one torch forward per step costs milliseconds: fewer steps suffice

    def cont():
        net.reset()
        net.stream(stream[:, :steps])

    def cont_py():
        net.reset()
        for t in range(steps):
            net.step(stream[:, t])

    rows = []
    c_s, cp_s = best(cont), best(cont_py)
    for w in windows:
        w = int(w)

        if stream.shape[1] < w - 1 + steps:
            raise ValueError(f"stream of {stream.shape[1]} steps is too short for window {w} and {steps} steps")
        # time steady-state steps only: each of the ``steps`` steps sees a full window of real history

        def win():
            net.windowed(stream[:, :w - 1 + steps], w, start=w - 1)

        xw = torch.from_numpy(net._pad(stream[:, :w - 1 + torch_steps]))[None]

        def win_torch():
            saved = torch.get_num_threads()
            torch.set_num_threads(1)    # single-threaded like the Numba paths: per-step ops are tiny
            try:
                with torch.inference_mode():
                    for t in range(torch_steps):
                        tnet(xw[:, :, t:t + w])
            finally:
                torch.set_num_threads(saved)

        macs = net.macs_per_step(w)
        rows.append({"window": w, "macs_continual": macs["continual"], "macs_windowed": macs["windowed"],
                     "ops_ratio": macs["windowed"] / macs["continual"], "continual_s": c_s,
                     "continual_python_s": cp_s, "windowed_numba_s": best(win), "windowed_torch_s": best(win_torch, torch_steps)})
    df = pd.DataFrame(rows)
    df["windowed_best_s"] = df[["windowed_numba_s", "windowed_torch_s"]].min(axis=1)
    df["time_ratio"] = df["windowed_best_s"] / df["continual_s"]
    df["time_ratio_python_step"] = df["windowed_best_s"] / df["continual_python_s"]
    return df


__all__ = ["Rocket", "MiniRocket", "SelectedRocket", "ContinualTCN", "select_features", "classifier",
           "as_panel", "pad_equal", "load_dataset", "rocket_kernels", "mini_dilations", "golden_quantiles",
           "timed", "DATASETS", "MINI_COMBOS", "transformers", "compare_dataset", "throughput_sweep",
           "compile_times", "ucr_stream", "streaming_bench"]
