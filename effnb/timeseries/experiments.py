"""The chapter's experiments: races against sktime and torch, and the accuracy studies around them.

A race (our transform against its peer, same inputs, same threads) is an
``effnb.perf`` benchmark: warm-up, calibrated repeats, the first call apart as
``compile_s``, ratios taken within one sitting. Fitting a transform and scoring
a classifier on it is not a race, so the accuracy passes keep their own clock
for ``fit_s`` and the first test-set transform, and hand their fitted
transforms to the races that time them warm.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.base import clone

from effnb import perf

from . import peers
from .continual import ContinualTCN
from .data import load_dataset
from .minirocket import MiniRocket
from .rocket import Rocket, SelectedRocket
from .selection import classifier, feature_scores, select_channels, select_features
from .wavelets import SelectedWaveletRocket, WaveletRocket

# each race: our transform, then sktime's twin, as (provider key, label in every table)
RACES = {"ROCKET": (("rocket", "ROCKET effnb"), ("rocket_sktime", "ROCKET sktime")),
         "MiniRocket": (("minirocket", "MiniRocket effnb"), ("minirocket_sktime", "MiniRocket sktime"))}
# the selection study's variants: provider key -> label
VARIANTS = {"all": "all kernels", "selected": "selected", "wavelets": "selected + wavelets",
            "channels": "selected, channels", "wavelets_channels": "selected + wavelets, channels"}
TWINS = ("selected", "channels")   # the variants the LightWaveS claims rest on: timed on one thread too


def quiet(fn):
    """``fn`` with library warnings silenced (sktime's deprecation notes); every side gets the same wrapper."""
    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    return call


def one_thread(transform):
    """A shallow copy of a fitted transform (ours or sktime's) that runs on one thread."""
    import copy
    single = copy.copy(transform)
    single.n_jobs = 1
    return single


def race(family: str, name: str, x: str, x_values, make, *, repeats: int, rounds: int = 1, twins: bool = False,
         **counts) -> perf.Benchmark:
    """Ours against sktime's twin for ``family`` ('ROCKET' or 'MiniRocket'); sktime is the baseline.

    ``make(label, x)`` returns the no-argument call to time; ``counts`` (``flops=``,
    ``bytes_moved=``) count the work of one call. ``rounds`` > 1 keeps each
    provider's fastest round, for calls short enough that a busy core skews one.
    ``twins`` adds each side once more on one thread (``make(label, x, single=True)``,
    keys ``<key>_1t``), interleaved with the rest: ``summary.thread_check`` uses them to
    tell a parallel call that waited for a core from one that did its work.
    """
    (ours, ours_label), (peer, peer_label) = RACES[family]
    sides = [(ours, ours_label, True, peers.ours_backend()), (peer, peer_label, False, peers.sktime_backend())]
    providers = [perf.Provider(key, label, lambda v, label=label: make(label, v), ours=mine, backend=backend)
                 for key, label, mine, backend in sides]
    if twins:
        providers += [perf.Provider(f"{key}_1t", f"{label}, 1 thread",
                                    lambda v, label=label: make(label, v, single=True), ours=mine, backend=backend)
                      for key, label, mine, backend in sides]
    return perf.Benchmark(name=name, x=x, x_values=list(x_values), providers=providers, baseline=peer,
                          unit="s", repeats=max(3, int(repeats)), rounds=rounds, warmup=1, **counts)


def throughput_sweep(sizes, *, vary: str, length: int, n_kernels: int, n_series: int, threads: int,
                     seed: int = 0, repeats: int = 3, channels: int = 1, rounds: int = 3) -> dict:
    """Warm transform time of ours and sktime's ROCKET and MiniRocket on random series, by ``length`` or ``kernels``.

    Returns {family: perf.Result}. At each size both sides of a race fit on and
    transform the same random series (``n_series`` per call). ``Result.df`` has
    median and quartile seconds, ``compile_s`` (the first call, timed apart) and
    GFLOP/s; both sides are credited with the work of ours (ROCKET's
    multiply-adds, MiniRocket's adds and compares), so GFLOP/s ratios are speed ratios.
    Every side is measured in ``rounds`` interleaved rounds and keeps its
    fastest: a sub-millisecond parallel call that meets a busy core in one
    round does not decide its point (``effnb.timeseries.stalls``).
    """
    if vary not in ("length", "kernels"):
        raise ValueError("vary must be 'length' or 'kernels'")
    sizes = [int(s) for s in sizes]

    def shape(size):
        return (size, n_kernels) if vary == "length" else (length, size)

    rng = np.random.default_rng(seed)
    data = {s: rng.normal(size=(n_series, channels, shape(s)[0])) for s in sizes}
    fitted = {}

    def fit(label, size):
        K = shape(size)[1]
        tr = peers.transformers(channels > 1, K, max(K, 84), threads, seed)[label]
        quiet(lambda: tr.fit(data[size]))()
        fitted[label, size] = tr
        return tr

    def make(label, size):
        tr, X = fit(label, size), data[size]
        return quiet(lambda: tr.transform(X))

    def work_of(label):   # ours has run first at each size: its fitted transform is at hand
        return lambda size: (fitted.get((label, size)) or fit(label, size)).flops_per_series() * n_series

    x = "series length" if vary == "length" else "kernels (MiniRocket: features)"
    fixed = f"{n_kernels} kernels" if vary == "length" else f"length {length}"
    return {fam: race(fam, f"{fam} by {vary}, {fixed}, {threads} threads", x, sizes, make, repeats=repeats,
                      rounds=rounds, flops=work_of(RACES[fam][0][1]),
                      bytes_moved=lambda s: 4.0 * n_series * channels * shape(s)[0]).run(progress=False)
            for fam in RACES}


def score_dataset(name: str, num_kernels: int, num_features: int, threads: int, seed: int):
    """Accuracy of ours and sktime's ROCKET and MiniRocket on one dataset's own train/test split.

    Each transform feeds the same StandardScaler + RidgeClassifierCV. Returns
    (rows with accuracy, fit and first-transform seconds; fitted transforms by
    method; X_test; {method: per-test-series correctness}), the last for paired
    comparisons between methods on the same series.
    """
    Xtr, ytr, Xte, yte = load_dataset(name)
    rows, fitted, hits = [], {}, {}
    for label, tr in peers.transformers(Xtr.shape[1] > 1, num_kernels, num_features, threads, seed).items():
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
            hits[label] = head.predict(Fte) == yte
        fitted[label] = tr
        rows.append({"dataset": name, "method": label, "features": Ftr.shape[1], "accuracy": float(hits[label].mean()),
                     "fit_s": fit_s, "first_transform_s": first, "test_series": len(Xte)})
    return rows, fitted, Xte, hits


def compare_datasets(names, num_kernels: int, num_features: int, threads: int, seed: int, repeats: int = 3):
    """Accuracy (``score_dataset``) and warm test-set transform time of every method on each dataset.

    Returns (quality frame, {family: perf.Result}, {(dataset, method):
    per-series correctness}). The races (x = dataset) time the transforms the
    accuracy pass fitted, ours against sktime's twin (MiniRocket's with
    one-thread twins of both sides); ``transform_s`` is the race's median (the
    faster of two rounds: test-set calls take milliseconds).
    """
    import pandas as pd
    names = list(names)
    rows, fitted, tests, hits = [], {}, {}, {}
    for name in names:
        found, fitted[name], tests[name], correct = score_dataset(name, num_kernels, num_features, threads, seed)
        rows += found
        hits.update({(name, label): c for label, c in correct.items()})

    def make(label, name, single=False):
        tr, X = fitted[name][label], tests[name]
        tr = one_thread(tr) if single else tr
        return quiet(lambda: tr.transform(X))

    # MiniRocket's test-set calls take milliseconds: its race carries one-thread twins (summary.thread_check)
    races = {fam: race(fam, f"{fam}: test-set transform, {threads} threads", "dataset", names, make, repeats=repeats,
                       rounds=2, twins=fam == "MiniRocket" and threads > 1).run(progress=False) for fam in RACES}
    where = {label: (fam, key) for fam, pair in RACES.items() for key, label in pair}
    quality = pd.DataFrame(rows)
    quality["transform_s"] = [races[where[m][0]].time(where[m][1], d) for d, m in zip(quality["dataset"],
                                                                                       quality["method"])]
    quality["series_per_s"] = quality["test_series"] / quality["transform_s"]
    return quality, races, hits


def selection_variants(name: str, num_kernels: int, keep: float, keep_channels: float, levels: int,
                       threads: int, seed: int):
    """Accuracy of the selection variants on one dataset, and their fitted transforms.

    Variants: all ROCKET kernels; the top ``keep`` fraction of raw ROCKET
    features; the same number of features chosen among raw + Haar wavelet
    features (``WaveletRocket``); and, for multivariate sets, both again after
    channel selection (``select_channels``, ``keep_channels`` of the channels).
    Every variant keeps the same number of features and feeds the same
    StandardScaler + RidgeClassifierCV, refitted on its kept training columns.
    Returns (rows, fitted transforms by variant key, X_test, {variant key:
    per-test-series correctness}).
    """
    Xtr, ytr, Xte, yte = load_dataset(name)
    w = WaveletRocket(num_kernels, levels=levels, random_state=seed, n_jobs=threads).fit(Xtr)
    raw = w.rockets_[0]
    Ftr = w.transform(Xtr)
    nraw = raw.n_features_out_
    n_keep = max(1, int(round(keep * nraw)))
    scores = feature_scores(Ftr, ytr)
    variants = {"all": None,
                "selected": (select_features(Ftr[:, :nraw], ytr, n_keep=n_keep), None, False),
                "wavelets": (select_features(Ftr, ytr, n_keep=n_keep), None, True)}
    if Xtr.shape[1] > 1:
        ch_raw, ok_raw = select_channels(raw, scores[:nraw], keep_channels)
        ch_w, ok_w = select_channels(w, scores, keep_channels)
        variants["channels"] = (select_features(Ftr[:, :nraw], ytr, n_keep=n_keep, allowed=ok_raw), ch_raw, False)
        variants["wavelets_channels"] = (select_features(Ftr, ytr, n_keep=n_keep, allowed=ok_w), ch_w, True)
    rows, fitted, hits = [], {}, {}
    for key, spec in variants.items():
        if spec is None:
            tr, cols, n_k, n_ch = raw, np.arange(nraw), raw.num_kernels, Xtr.shape[1]
        else:
            cols, chans, wav = spec
            tr = (SelectedWaveletRocket(w, cols, n_jobs=threads, channels=chans) if wav
                  else SelectedRocket(raw, cols, n_jobs=threads, channels=chans)).fit()
            n_k = tr.n_kernels_ if wav else len(tr.kernel_ids_)
            n_ch = Xtr.shape[1] if chans is None else len(chans)
        head = classifier("passthrough").fit(Ftr[:, cols], ytr)
        fitted[key], hits[key] = tr, head.predict(tr.transform(Xte)) == yte
        wav_feats = int(np.sum(cols >= nraw)) if spec is not None and spec[2] else 0
        rows.append({"dataset": name, "variant": VARIANTS[key], "features": len(cols), "wavelet features": wav_feats,
                     "kernels": n_k, "channels": n_ch, "input channels": Xtr.shape[1],
                     "accuracy": float(hits[key].mean())})
    return rows, fitted, Xte, hits


def selection_study(names, num_kernels: int, keep: float, keep_channels: float, levels: int, threads: int,
                    seed: int, repeats: int = 7):
    """Accuracy (``selection_variants``) and warm test-set transform time of every variant on each dataset.

    Returns (study frame, perf.Result, {(dataset, variant key): per-series
    correctness}). One race (x = dataset, every variant ours, the baseline all
    kernels) times the fitted variants, all under the same rule (the same
    repeats, the faster of two interleaved rounds): ``transform_s`` is its
    median, ``speedup`` all kernels' time over the variant's. With ``threads``
    > 1 the variants the claims rest on (``TWINS``) also run on one thread
    (keys ``<key>_1t``), for ``summary.thread_check``.
    """
    import pandas as pd
    names = list(names)
    rows, fitted, tests, hits = [], {}, {}, {}
    for name in names:
        found, fitted[name], tests[name], correct = selection_variants(name, num_kernels, keep, keep_channels,
                                                                       levels, threads, seed)
        rows += found
        hits.update({(name, key): c for key, c in correct.items()})

    def make(key, single=False):
        def build(name):
            tr, X = fitted[name][key], tests[name]
            tr = one_thread(tr) if single else tr
            return lambda: tr.transform(X)
        return build

    ours = peers.ours_backend()
    providers = [perf.Provider(key, label, make(key), ours=True, backend=ours,
                               only=lambda name, key=key: key in fitted[name]) for key, label in VARIANTS.items()]
    if threads > 1:   # the claims' selected calls take milliseconds: one-thread twins (summary.thread_check)
        providers += [perf.Provider(f"{key}_1t", f"{VARIANTS[key]}, 1 thread", make(key, single=True), ours=True,
                                    backend=ours, only=lambda name, key=key: key in fitted[name])
                      for key in TWINS]
    res = perf.Benchmark(name=f"selection variants: test-set transform, {threads} threads", x="dataset",
                         x_values=names, providers=providers, baseline="all", unit="s",
                         repeats=max(3, int(repeats)), rounds=2, warmup=1).run(progress=False)
    key_of = {label: key for key, label in VARIANTS.items()}
    study = pd.DataFrame(rows)
    pairs = list(zip(study["dataset"], study["variant"].map(key_of)))
    study["transform_s"] = [res.time(key, d) for d, key in pairs]
    study["speedup"] = [float(res.ratio(key, "all")[d]) for d, key in pairs]
    return study, res, hits


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


def streaming_bench(net: ContinualTCN, stream: np.ndarray, windows, steps: int = 200, repeats: int = 3):
    """Per-step cost of streaming with ``net``: the continual step against rerunning the net on a window.

    A race per window W: every call runs the same ``steps`` steady-state steps
    of ``stream`` (each step sees a full window of real history): the continual
    step as one jitted loop and as one Python call per step (ours), and the net
    rerun on each step's window in Numba and as a torch Conv1d stack (the
    peers). Everything runs on one thread: one step's work is too small to
    share. Each path keeps the faster of two rounds. Returns (frame,
    perf.Result); the frame has per window the exact multiply-adds per step,
    seconds per step of each path, and the ratios to the faster recompute
    baseline.
    """
    import pandas as pd
    import torch
    windows = [int(w) for w in windows]
    for w in windows:
        if stream.shape[1] < w - 1 + steps:
            raise ValueError(f"stream of {stream.shape[1]} steps is too short for window {w} and {steps} steps")
    tnet = peers.torch_tcn(net)

    def continual(w):
        def run():
            net.reset()
            net.stream(stream[:, :steps])
        return run

    def continual_python(w):
        def run():
            net.reset()
            for t in range(steps):
                net.step(stream[:, t])
        return run

    def windowed(w):
        x = stream[:, :w - 1 + steps]
        return lambda: net.windowed(x, w, start=w - 1)

    def windowed_torch(w):
        xw = torch.from_numpy(net._pad(stream[:, :w - 1 + steps]))[None]

        def run():
            saved = torch.get_num_threads()
            torch.set_num_threads(1)    # single-threaded like the Numba paths: per-step ops are tiny
            try:
                with torch.inference_mode():
                    for t in range(steps):
                        tnet(xw[:, :, t:t + w])
            finally:
                torch.set_num_threads(saved)
        return run

    ours = peers.ours_backend()
    providers = [perf.Provider("continual", "continual step (Numba loop)", continual, ours=True, backend=ours),
                 perf.Provider("continual_python", "continual step (Python call per step)", continual_python,
                               ours=True, backend=ours),
                 perf.Provider("windowed", "recompute window (Numba)", windowed, backend=ours),
                 perf.Provider("windowed_torch", "recompute window (torch Conv1d)", windowed_torch,
                               backend=peers.torch_backend())]
    res = perf.Benchmark(name=f"cost of {steps} stream steps, 1 thread", x="window W (samples)", x_values=windows,
                         providers=providers, baseline="windowed", unit="s", repeats=max(3, int(repeats)),
                         rounds=2, warmup=1).run(progress=False)
    per_step = {key: res.time(key) / steps for key in res.keys()}
    best = res.fastest_peer()["median_s"] / steps
    rows = []
    for w in windows:
        macs, x = net.macs_per_step(w), str(w)
        rows.append({"window": w, "macs_continual": macs["continual"], "macs_windowed": macs["windowed"],
                     "ops_ratio": macs["windowed"] / macs["continual"], "continual_s": per_step["continual"][x],
                     "continual_python_s": per_step["continual_python"][x],
                     "windowed_numba_s": per_step["windowed"][x], "windowed_torch_s": per_step["windowed_torch"][x],
                     "windowed_best_s": best[x]})
    df = pd.DataFrame(rows)
    df["time_ratio"] = df["windowed_best_s"] / df["continual_s"]
    df["time_ratio_python_step"] = df["windowed_best_s"] / df["continual_python_s"]
    return df, res
