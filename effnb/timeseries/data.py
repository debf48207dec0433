"""The chapter's data: UCR/UEA sets bundled with sktime, and a stream made of one of them.

Every method compared reads the same arrays, padded the same way, so accuracy
differences come from the methods and not from their loaders.
"""
from __future__ import annotations

import numpy as np

from .inputs import pad_equal

DATASETS = {"GunPoint": "load_gunpoint", "ArrowHead": "load_arrow_head",
            "ItalyPowerDemand": "load_italy_power_demand", "BasicMotions": "load_basic_motions",
            "JapaneseVowels": "load_japanese_vowels"}


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


def ucr_stream(name: str = "GunPoint", n_series: int = 20) -> np.ndarray:
    """A univariate stream: the first ``n_series`` test series of a UCR set, z-normalised, end to end."""
    _, _, Xte, _ = load_dataset(name)
    x = Xte[:n_series, 0, :]
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-8)
    return x.reshape(1, -1)
