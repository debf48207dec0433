"""Input checks and estimator plumbing shared by every transform of this package.

Checking shapes, lengths and NaNs before any Numba call turns a crash deep in
a kernel into a message that says what to pass instead.
"""
from __future__ import annotations

import numba
import numpy as np
from sklearn.exceptions import NotFittedError


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


class numba_threads:
    """Run a block with ``n`` Numba threads and put the previous count back."""

    def __init__(self, n_jobs):
        self.n = _n_threads(n_jobs)

    def __enter__(self):
        self.saved = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        numba.set_num_threads(self.saved)
        return False


def check_fitted(est, attr: str):
    if not hasattr(est, attr):
        raise NotFittedError(f"this {type(est).__name__} is not fitted yet: call fit(X_train) before transform")


def check_shape(est, X):
    if X.shape[1:] != est.input_shape_:
        raise ValueError(f"{type(est).__name__} was fitted on series of shape (channels, length) = "
                         f"{est.input_shape_} but got {X.shape[1:]}: transform series with the fitted number "
                         f"of channels and length (pad or crop them, e.g. effnb.timeseries.pad_equal)")
