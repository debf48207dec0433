"""Plain float64 references for ``effnb.timeseries``: slow, obvious, and what the tests trust.

Each function follows the definition with explicit weights and explicit zero
padding, sharing no code with the fast kernels, so that a bug in the clever
index arithmetic there cannot hide in both.
"""
from __future__ import annotations

import numpy as np

from .minirocket import MINI_COMBOS, MINI_LENGTH


def conv_dilated(x: np.ndarray, w: np.ndarray, dilation: int, padding: int) -> np.ndarray:
    """Cross-correlation of 1-D x with taps w spaced ``dilation`` apart, ``padding`` zeros each side."""
    xp = np.concatenate([np.zeros(padding), np.asarray(x, np.float64), np.zeros(padding)])
    span = (len(w) - 1) * dilation
    n_out = len(xp) - span
    return np.array([sum(w[j] * xp[t + j * dilation] for j in range(len(w))) for t in range(n_out)])


def rocket_features(X: np.ndarray, kernels: dict) -> np.ndarray:
    """[ppv, max] per kernel per series from the flat kernel arrays of ``rocket_kernels``."""
    X = np.asarray(X, np.float64)
    n = len(X)
    K = len(kernels["lengths"])
    out = np.empty((n, 2 * K))
    for i in range(n):
        for k in range(K):
            length, nch = kernels["lengths"][k], kernels["nchs"][k]
            chans = kernels["chans"][kernels["c_off"][k]: kernels["c_off"][k] + nch]
            w = np.asarray(kernels["w"][kernels["w_off"][k]: kernels["w_off"][k] + nch * length], np.float64)
            w = w.reshape(nch, length)
            s = sum(conv_dilated(X[i, c], w[ci], kernels["dils"][k], kernels["pads"][k])
                    for ci, c in enumerate(chans)) + np.float64(kernels["biases"][k])
            out[i, 2 * k] = np.mean(s > 0)
            out[i, 2 * k + 1] = s.max()
    return out


def mini_kernel_weights(k: int) -> np.ndarray:
    w = -np.ones(MINI_LENGTH)
    w[MINI_COMBOS[k]] = 2.0
    return w


def minirocket_features(X: np.ndarray, est) -> np.ndarray:
    """MiniRocket PPV features from a fitted ``effnb.timeseries.MiniRocket``'s parameters."""
    X = np.asarray(X, np.float64)
    rows = []
    for x in X:
        feats = []
        f = 0
        for di, d in enumerate(est.dilations_):
            pad = 4 * int(d)
            for k in range(len(MINI_COMBOS)):
                pair = di * len(MINI_COMBOS) + k
                chans = est.chans_[est.c_off_[pair]: est.c_off_[pair] + est.nchs_[pair]]
                c = sum(conv_dilated(x[ch], mini_kernel_weights(k), int(d), pad) for ch in chans)
                if (di + k) % 2 == 1:
                    c = c[pad: len(c) - pad]
                for _ in range(est.features_per_dilation_[di]):
                    feats.append(np.mean(c > est.biases_[f]))
                    f += 1
        rows.append(feats)
    return np.array(rows)


def minirocket_biases(X: np.ndarray, est) -> np.ndarray:
    """A fitted MiniRocket's biases recomputed: for each (dilation, kernel), the golden-ratio quantiles
    (frac(i * phi), i = 1, 2, ...) of its padded output on the training series ``est.bias_series_`` names."""
    X = np.asarray(X, np.float64)
    phi = (1 + 5 ** 0.5) / 2
    out, f = [], 0
    for di, d in enumerate(est.dilations_):
        for k in range(len(MINI_COMBOS)):
            pair = di * len(MINI_COMBOS) + k
            chans = est.chans_[est.c_off_[pair]: est.c_off_[pair] + est.nchs_[pair]]
            x = X[est.bias_series_[pair]]
            c = sum(conv_dilated(x[ch], mini_kernel_weights(k), int(d), 4 * int(d)) for ch in chans)
            for _ in range(est.features_per_dilation_[di]):
                f += 1
                out.append(np.quantile(c, (f * phi) % 1))
    return np.array(out)


def minirocket_positions(est, length: int) -> np.ndarray:
    """How many output positions each MiniRocket feature's PPV counts: ``length``, or ``length - 8d`` for
    the kernels that skip the padded ends (every other kernel)."""
    out = []
    for di, d in enumerate(est.dilations_):
        for k in range(len(MINI_COMBOS)):
            n = length - 8 * int(d) if (di + k) % 2 == 1 else length
            out += [n] * int(est.features_per_dilation_[di])
    return np.array(out)


def tcn_offline(x: np.ndarray, W: np.ndarray, B: np.ndarray, dils) -> np.ndarray:
    """Causal dilated conv net, layer by layer, with explicit left zero padding (ReLU between layers)."""
    h = np.asarray(x, np.float64)
    L, C, _, K = W.shape
    for l in range(L):
        s = (K - 1) * int(dils[l])
        hp = np.concatenate([np.zeros((h.shape[0], s)), h], axis=1)
        y = np.stack([B[l, o] + sum(conv_dilated(hp[i], W[l, o, i], int(dils[l]), 0) for i in range(C))
                      for o in range(C)])
        h = np.maximum(y, 0) if l < L - 1 else y
    return h


def haar_dwt(x: np.ndarray, levels: int):
    """Haar DWT of one 1-D series by an explicit loop over pairs: (approximation, [detail_1, ...])."""
    a = [float(v) for v in x]
    details = []
    r2 = np.sqrt(2.0)
    for _ in range(levels):
        if len(a) % 2:
            a.append(a[-1])
        d = [(a[2 * i] - a[2 * i + 1]) / r2 for i in range(len(a) // 2)]
        a = [(a[2 * i] + a[2 * i + 1]) / r2 for i in range(len(a) // 2)]
        details.append(np.array(d))
    return np.array(a), details


def channel_scores(kernels: dict, scores: np.ndarray, n_channels: int) -> np.ndarray:
    """Summed feature scores per channel: each kernel's PPV and max scores added to every channel it reads."""
    total = np.zeros(n_channels)
    for k in range(len(kernels["lengths"])):
        s = max(scores[2 * k], 0.0) + max(scores[2 * k + 1], 0.0)
        for c in kernels["chans"][kernels["c_off"][k]:kernels["c_off"][k] + kernels["nchs"][k]]:
            total[c] += s
    return total
