"""Wavelet features (a simple form of LightWaveS's wavelet step): ROCKET on Haar sub-bands.

A multilevel orthonormal Haar transform splits each channel into detail and
approximation bands; each band gets its own random ROCKET kernels. The
selected variant gathers the kept kernels of every band into one flat kernel
set and runs them in a single parallel call over the bands laid end to end.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from .inputs import as_panel, check_fitted, check_shape, numba_threads
from .rocket import Rocket, SelectedRocket, _normalise, _rocket_transform_bands


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
        check_fitted(self, "rockets_")
        X = as_panel(X, min_length=Rocket.min_length)
        check_shape(self, X)
        return np.concatenate([r.transform(band) for r, band in zip(self.rockets_, wavelet_bands(X, self.levels_))],
                              axis=1)

    def band_names(self) -> list:
        check_fitted(self, "rockets_")
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
        check_fitted(self, "kernels_")
        X = as_panel(X, min_length=Rocket.min_length)
        check_shape(self, X)
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
        with numba_threads(self.n_jobs):
            out = _rocket_transform_bands(Xcat, starts, lens, k["kband"], k["lengths"], k["biases"], k["dils"],
                                          k["pads"], k["nchs"], k["c_off"], k["chans"], k["w_off"], k["w"])
        return out[:, self.columns_]
