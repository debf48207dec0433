"""Choosing features and channels on training data (LightWaveS-style), and the shared classifier head.

LightWaveS ranks ROCKET features on the training set and keeps about 2.5% of
them; the selected transforms then compute only the kernels behind them.
"""
from __future__ import annotations

import numpy as np
from sklearn.exceptions import NotFittedError

from .rocket import Rocket


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
