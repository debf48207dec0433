"""The numbers a chapter run glues into its prose, and the tables it shows, from the experiments' results.

Each ``*_numbers`` function returns {glue name: value}; the notebook records
them as they are, so the prose and the sidecar read one computation.
"""
from __future__ import annotations

from effnb import roofline

from .experiments import RACES, VARIANTS
from .lanes import W
from .minirocket import PARALLEL_MIN_WORK


def _mean_or_nan(s) -> float:
    return float(s.mean()) if len(s.dropna()) else float("nan")


def _min_or_nan(s) -> float:
    return float(s.min()) if len(s.dropna()) else float("nan")


def _max_or_nan(s) -> float:
    return float(s.max()) if len(s.dropna()) else float("nan")


def _speedups(results: list, family: str):
    """Ours over sktime's twin at every x of every result (one ratio per point, same sitting)."""
    import pandas as pd
    (ours, _), (peer, _) = RACES[family]
    return pd.concat([res.ratio(ours, peer) for res in results])


def _points(sweeps: dict, family: str) -> dict:
    """{'length 64': ratio, '1000 kernels': ratio, ...}: ours over sktime's twin at every point of every sweep."""
    (ours, _), (peer, _) = RACES[family]
    return {_point(vary, x, family): float(v) for vary, races in sweeps.items()
            for x, v in races[family].ratio(ours, peer).items()}


def _point(vary: str, x, family: str = "ROCKET") -> str:
    """A sweep point as the prose and the tables name it: 'length 64', '1000 kernels' (MiniRocket: 'features')."""
    if vary == "length":
        return f"length {x}"
    return f"{x} {'features' if family == 'MiniRocket' else 'kernels'}"


def sweep_numbers(sweeps: dict, limits: dict) -> dict:
    """Median and worst speed-up over sktime across all sweeps, ROCKET's best GFLOP/s and % of the fp32 peak,
    sktime's best GFLOP/s, sktime's slowest first call (its compile time), MiniRocket's widest and narrowest
    sweep points, and phrases saying which way this run went."""
    import pandas as pd
    rocket = [races["ROCKET"] for races in sweeps.values()]
    r = _speedups(rocket, "ROCKET")
    m = _speedups([races["MiniRocket"] for races in sweeps.values()], "MiniRocket")
    df = pd.concat([res.df for res in rocket], ignore_index=True)
    ours, sk = df[df["provider"] == "rocket"], df[df["provider"] == "rocket_sktime"]
    top = ours.loc[ours["gflops"].idxmax()]
    t = float(top["median_s"])
    b = roofline.bound(float(top["gflops"]) * 1e9 * t, float(top["gbps"]) * 1e9 * t, t, limits)
    points = _points(sweeps, "MiniRocket")
    worst, best = min(points, key=points.get), max(points, key=points.get)
    rocket_points = _points(sweeps, "ROCKET")
    mini_vs = (f"below ROCKET's median of {r.median():.1f}x" if m.median() < r.median() else
               f"above ROCKET's median of {r.median():.1f}x")
    return {"mini_worst_at": worst, "mini_best_at": best, "mini_vs_rocket": mini_vs,
            "rocket_worst_at": min(rocket_points, key=rocket_points.get),
            "mini_margin_words": _mini_margin_phrase(sweeps, points),
            "mini_narrow_note": _mini_narrow_phrase(points),
            "rocket_short": _short_series_phrase(sweeps),
            "rocket_speedup": float(r.median()), "rocket_speedup_min": float(r.min()),
            "mini_speedup": float(m.median()), "mini_speedup_min": float(m.min()),
            "mini_speedup_max": float(m.max()),
            "rocket_gflops": b["gflops"], "rocket_pct_peak": b["pct_of_limit"],
            "rocket_sk_gflops": float(sk["gflops"].max()), "compile_sk_rocket": float(sk["compile_s"].max())}


MINI_TARGET = 2.0   # the chapter's MiniRocket throughput target (x sktime); the narrow-margin note says how close


def _mini_margin_phrase(sweeps: dict, points: dict) -> str:
    """Where MiniRocket's margin over sktime was widest and narrowest in this run, and whether it narrowed from
    the shortest series of the length sweep to the longest (the pattern the kernels' costs predict)."""
    worst, best = min(points, key=points.get), max(points, key=points.get)
    text = (f"widest at {best} ({points[best]:.1f}x) and narrowest at {worst} ({points[worst]:.1f}x)"
            if best != worst else f"{points[best]:.1f}x at its one point, {best}")
    if "length" not in sweeps or len(sweeps["length"]["MiniRocket"].spec.x_values) < 2:
        return text
    xs = sweeps["length"]["MiniRocket"].spec.x_values
    short, long_ = _point("length", min(xs)), _point("length", max(xs))
    a, b = points[short], points[long_]
    if a > b:
        return (f"{text}. Along the length sweep it narrowed from {a:.1f}x at {short} to {b:.1f}x at "
                f"{long_}: on short series sktime's fixed costs per feature (a call to a ufunc, a temporary "
                f"array, a mean) weigh most, while on long ones both sides spend nearly all their time comparing "
                f"outputs with biases, work that sktime's loops vectorise well too")
    return (f"{text}. Along the length sweep it did not narrow in this run ({a:.1f}x at {short}, {b:.1f}x at "
            f"{long_}), although sktime's fixed costs per feature weigh most on short series")


def _mini_narrow_phrase(points: dict) -> str:
    """For 'What is not done': how close MiniRocket's narrowest sweep point came to the target in this run."""
    worst = min(points, key=points.get)
    v = points[worst]
    if v < MINI_TARGET:
        return (f"In this run its narrowest sweep point, {worst}, reached only {v:.2f}x sktime's throughput, "
                f"short of the {MINI_TARGET:g}x target")
    if v < 1.5 * MINI_TARGET:
        return (f"In this run its narrowest sweep point, {worst}, was {v:.2f}x sktime's: above the "
                f"{MINI_TARGET:g}x target, but not far above it: where both sides are bound by their compares, "
                f"ours already does one compare and one count per bias, output point and {W} series")
    return (f"In this run even its narrowest sweep point, {worst}, was {v:.2f}x sktime's, well clear of the "
            f"{MINI_TARGET:g}x target")


def _short_series_phrase(sweeps: dict) -> str:
    """Whether ROCKET's speed-up over sktime shrank from the longest series of the length sweep to the shortest."""
    if "length" not in sweeps:
        return "this run has no length sweep to tell whether ROCKET's margin shrinks on short series"
    (ours, _), (peer, _) = RACES["ROCKET"]
    res = sweeps["length"]["ROCKET"]
    ratio = res.ratio(ours, peer)
    short, long_ = str(min(res.spec.x_values)), str(max(res.spec.x_values))
    a, b = float(ratio[short]), float(ratio[long_])
    if a < b:
        return (f"ROCKET's margin shrinks on short series ({a:.1f}x at length {short} against {b:.1f}x at "
                f"{long_}): at a few dozen points a kernel's output is a handful of vectors long, and the fixed cost "
                f"per kernel, not the arithmetic, sets the time")
    return (f"ROCKET's margin did not shrink on short series in this run ({a:.1f}x at length {short} against "
            f"{b:.1f}x at {long_}), although at a few dozen points the fixed cost per kernel weighs more")


def _work(res, key):
    """(label, seconds, work, x) of provider ``key`` along a race: the work each call was credited with."""
    g = res.df[res.df["provider"] == key]
    return g["label"].iloc[0], g["median_s"].to_numpy(), (g["gflops"] * 1e9 * g["median_s"]).to_numpy(), list(g["x"])


def sweep_checks(sweeps: dict) -> dict:
    """Per family, (ok, reason) for ``claims.check(valid=...)``: along every sweep, each side's time grows with
    its work (``bench.grows_with_work``), and where two sweeps measured the same call (same length and kernel
    count, hence the same work), the two timings agree (``bench.agrees_with``)."""
    from effnb import bench
    out = {}
    for fam in RACES:
        broken, seen = [], {}
        for vary, races in sweeps.items():
            res = races[fam]
            for key in res.keys():
                label, t, w, xs = _work(res, key)
                if len(t) >= 2 and w.max() >= 2 * w.min():
                    ok, why = bench.grows_with_work(t, w)
                    if not ok:
                        broken.append(f"{label} by {vary}: {why}")
                for ti, wi, x in zip(t, w, xs):
                    twin = seen.get((key, float(f"{wi:.9g}")))
                    if twin is not None:
                        ok, why = bench.agrees_with(1 / ti, 1 / twin[0], f"{label} calls/s")
                        if not ok:
                            broken.append(f"{why} ({vary} {x} against {twin[1]})")
                    seen[key, float(f"{wi:.9g}")] = (ti, f"{vary} {x}")
        out[fam] = (not broken, "; ".join(broken))
    return out


def guard_phrase(checks: dict) -> str:
    """Which way the measurement checks went, for the prose: {name: (ok, reason)} -> one clause."""
    failed = [name for name, (ok, _) in checks.items() if not ok]
    if not failed:
        return "in this run every series passed both checks, so the sweep measured the transforms' work"
    return (f"in this run the {' and '.join(failed)} sweep{'s' if len(failed) > 1 else ''} failed them, so "
            f"{'their' if len(failed) > 1 else 'its'} throughput rows in the ledger below say invalid measurement")


def streaming_check(frame) -> tuple:
    """(ok, reason): the recompute baseline's time per step must grow with the window (its work grows as W)."""
    from effnb import bench
    if len(frame) < 2:
        return True, ""
    return bench.grows_with_work(frame["windowed_best_s"], frame["macs_windowed"])


def thread_check(res, keys, datasets, threads: int, factor: float = 1.5) -> tuple:
    """(ok, reason) for a figure resting on the parallel calls ``keys`` of race ``res`` at ``datasets``: each
    ran once more on one thread, interleaved (key ``<key>_1t``); a ``threads``-thread call that took more than
    ``factor`` times its one-thread twin did not measure its work but a wait for a core (``stalls``)."""
    if int(threads) <= 1:
        return True, ""
    slow = []
    for key in keys:
        par, one = res.time(key), res.time(f"{key}_1t")
        for d in datasets:
            if str(d) in par.index and par[str(d)] > factor * one[str(d)]:
                label = res.df.loc[res.df["provider"] == key, "label"].iloc[0]
                slow.append(f"{label} on {d}: {1e3 * par[str(d)]:.2f} ms with {int(threads)} threads, "
                            f"{par[str(d)] / one[str(d)]:.1f} times its one-thread time")
    if slow:
        return False, ("invalid measurement: " + "; ".join(slow) + ": the parallel timing waited for a core "
                       "(see the stall probe), not for the work")
    return True, ""


def both(*checks) -> tuple:
    """All of several (ok, reason) checks: ok only if every one is, with the failing reasons joined."""
    failed = [why for ok, why in checks if not ok]
    return not failed, "; ".join(failed)


def stall_numbers(frame, threads: int) -> dict:
    """The stall probe (``stalls.parallel_stalls``) for the prose: per load ("as found" as ``stall_*``, a core
    kept busy as ``busy_*``) the shares of stalled calls in %, the empty region's median and slowest call,
    and phrases saying which way this run went."""
    from .stalls import STALL_S
    n, out = int(threads), {"stall_ms": 1e3 * STALL_S}
    for load, tag in (("as found", "stall"), ("one core kept busy", "busy")):
        row = {(r.side, r.threads): r for r in frame[frame["load"] == load].itertuples()}
        ours, sk, empty = row["MiniRocket effnb", n], row["MiniRocket sktime", n], row["empty parallel region", n]
        one = row["MiniRocket effnb", 1]
        out.update({f"{tag}_ours_pct": 100 * ours.stalled, f"{tag}_sk_pct": 100 * sk.stalled,
                    f"{tag}_ours1_pct": 100 * one.stalled, f"{tag}_empty_pct": 100 * empty.stalled,
                    f"{tag}_empty_ms": empty.median_ms, f"{tag}_empty_worst_ms": empty.slowest_ms,
                    f"{tag}_ours1_fastest_ms": one.fastest_ms, f"{tag}_ours_median_ms": ours.median_ms})
    ours_row = row["MiniRocket effnb", n]
    out["stall_ours_mflop"] = float(ours_row.work_mflop)
    out["parallel_min_mflop"] = PARALLEL_MIN_WORK / 1e6
    if n == 1:
        out["stall_phrase"] = "with one thread there is no parallel region to wait for, and no stall of this kind"
        out["stall_cause"] = "a single-threaded run cannot show it; rerun with more threads"
        out["stall_ours_region"] = "with one thread our call opens no parallel region either"
        out["busy_ours_words"] = (f"{out['busy_ours_pct']:.0f}% of its calls stalled with the busy core, "
                                  f"against {out['busy_sk_pct']:.0f}% of sktime's")
        return out
    out["stall_ours_region"] = (
        f"at {ours_row.work_mflop:.1f} MFLOP of work it is {'above' if ours_row.region else 'below'} the "
        f"{PARALLEL_MIN_WORK / 1e6:.0f} MFLOP from which our transform opens a parallel region, so with {n} "
        + ("threads it opened one, as sktime's call does" if ours_row.region else
           "threads it still ran on the calling thread alone, with no worker to wake or wait for"))
    out["busy_ours_words"] = _ours_stalls_phrase(out["busy_ours_pct"], out["busy_ours1_pct"], out["busy_sk_pct"],
                                                 bool(ours_row.region))
    out["stall_phrase"] = ("the machine was busy while the probe ran, and parallel regions waited for a core"
                           if out["stall_empty_pct"] >= 10 else
                           "the machine was quiet while the probe ran, and parallel regions rarely waited (the "
                           "sweep above may still have met a busy spell: its checks say whether it did)")
    out["stall_cause"] = ("so with a core taken, a region waits even when it has no work to do"
                          if out["busy_empty_pct"] >= 10 else
                          "in this run even a core kept busy did not make the empty region wait (more cores "
                          "than threads, perhaps), so the wait could not be shown here")
    return out


def _ours_stalls_phrase(ours: float, one: float, sk: float, region: bool) -> str:
    """How often our multi-thread MiniRocket call stalled with a core kept busy, against our one-thread call and
    sktime's, and what that says (all shares in %)."""
    said = (f"{ours:.0f}% of its calls stalled with the busy core, against {one:.0f}% of our one-thread calls "
            f"and {sk:.0f}% of sktime's")
    if abs(ours - one) <= 10:
        return said + ": it fared as a one-thread call does, which only a preemption of its own thread can slow"
    if region:
        return said + ": a call that opens a region waits whenever one of its workers has no core"
    return (said + ": more often than a one-thread call, although it opened no region, so in this run the "
            "calling thread itself lost its core more often")


def sweep_table(sweeps: dict, limits: dict):
    """One row per sweep point and family: our time and first call, speed-up over sktime, % of the roof."""
    import pandas as pd
    parts = []
    for vary, races in sweeps.items():
        for fam, res in races.items():
            t = res.table(limits)
            first = res.df[res.df["ours"]].set_index("x")["compile_s"]
            t = t.rename(columns={res.spec.x: "size", f"vs {RACES[fam][1][1]}": "vs sktime"})
            t.insert(0, "sweep", vary)
            t["first call s"] = t["size"].map(first)
            parts.append(t[["sweep", "size", "ours", "backend", "ms", "first call s", "vs sktime", "% of roof"]])
    return pd.concat(parts, ignore_index=True)


def accuracy_table(quality):
    """Test accuracy: one row per dataset, one column per method."""
    return quality.pivot_table(index="dataset", columns="method", values="accuracy", sort=False)


def quality_numbers(quality, races: dict) -> dict:
    """Worst accuracy gap to sktime (points), mean accuracies, and the range of test-set speed-ups over sktime."""
    acc = accuracy_table(quality)
    d_rocket = 100 * (acc["ROCKET sktime"] - acc["ROCKET effnb"])
    d_mini = 100 * (acc["MiniRocket sktime"] - acc["MiniRocket effnb"])
    r, m = _speedups([races["ROCKET"]], "ROCKET"), _speedups([races["MiniRocket"]], "MiniRocket")
    return {"acc_gap_rocket_max": float(d_rocket.max()), "acc_gap_mini_max": float(d_mini.max()),
            "acc_rocket_mean": float(100 * acc["ROCKET effnb"].mean()),
            "acc_mini_mean": float(100 * acc["MiniRocket effnb"].mean()),
            "rocket_ds_speedup_min": float(r.min()), "rocket_ds_speedup_max": float(r.max()),
            "mini_ds_speedup_min": float(m.min()), "mini_ds_speedup_max": float(m.max())}


def selected_table(study):
    """Per dataset of the selection study: its channels, the kernels the selected ROCKET computes, and the
    speed-up over all kernels and accuracy drop (points) of the selection, with and without channel selection."""
    import pandas as pd
    v = study.pivot_table(index="dataset", columns="variant", values=["accuracy", "speedup", "kernels"], sort=False)
    sel, chan, full = VARIANTS["selected"], VARIANTS["channels"], VARIANTS["all"]
    acc = 100 * v["accuracy"]
    out = pd.DataFrame({"channels": study.groupby("dataset", sort=False)["input channels"].first(),
                        "kernels computed": v["kernels"][sel],
                        "speed-up, selected": v["speedup"][sel],
                        "accuracy drop, selected": acc[full] - acc[sel]})
    if chan in v["speedup"]:
        out["speed-up, + channel selection"] = v["speedup"][chan]
        out["accuracy drop, + channel selection"] = acc[full] - acc[chan]
    else:
        out["speed-up, + channel selection"] = out["accuracy drop, + channel selection"] = float("nan")
    return out.rename_axis("dataset")


def selected_numbers(table, num_kernels: int) -> dict:
    """The selection's speed-up range and mean accuracy drop on the multivariate sets (with and without channel
    selection), the share of kernels it computes there, and a phrase for the univariate sets (a separate row)."""
    multi, uni = table[table["channels"] > 1], table[table["channels"] == 1]
    speed, chan = multi["speed-up, selected"], multi["speed-up, + channel selection"]
    out = {"sel_n_multi": float(len(multi)),
           "sel_speedup_min": _min_or_nan(speed), "sel_speedup_max": _max_or_nan(speed),
           "sel_chan_speedup_min": _min_or_nan(chan), "sel_chan_speedup_max": _max_or_nan(chan),
           "sel_acc_drop_mean": _mean_or_nan(multi["accuracy drop, selected"]),
           "sel_chan_acc_drop_mean": _mean_or_nan(multi["accuracy drop, + channel selection"]),
           "sel_kernel_pct": _mean_or_nan(100 * multi["kernels computed"] / num_kernels)}
    ratio = float(num_kernels / multi["kernels computed"].mean()) if len(multi) else float("nan")
    out["sel_vs_kernels"] = (
        f"less than the ratio of kernels (about {ratio:.0f}x), since a call has fixed costs (checking and "
        f"normalising the series, starting the threads) that feature selection does not shrink"
        if out["sel_speedup_max"] < ratio else
        f"more than the ratio of kernels (about {ratio:.0f}x): the kept kernels cost less than the average "
        f"kernel (fewer taps, channels or output points)")
    s = uni["speed-up, selected"]
    out["sel_uni_speedup_min"], out["sel_uni_speedup_max"] = _min_or_nan(s), _max_or_nan(s)
    out["sel_uni_acc_drop_mean"] = _mean_or_nan(uni["accuracy drop, selected"])
    span = f"{s.min():.1f}x" if len(s) == 1 else f"{s.min():.1f}x to {s.max():.1f}x"
    out["sel_univariate"] = ("no univariate set was in this run's selection study" if s.empty else
                             f"on the univariate set{'s' if len(s) > 1 else ''} of this run "
                             f"({', '.join(uni.index)}) the same selection ran {span} faster than all kernels, "
                             f"at a mean accuracy drop of {uni['accuracy drop, selected'].mean():.1f} points")
    return out


def paired_points(hits: dict, of: str, over: str, datasets) -> "np.ndarray":
    """Per test series of ``datasets`` (pooled): correct with ``of`` minus correct with ``over``, in accuracy
    points (+100, 0 or -100); their mean is the accuracy difference, their spread what an equivalence test needs."""
    import numpy as np
    return np.concatenate([100.0 * (hits[d, of].astype(float) - hits[d, over].astype(float)) for d in datasets])


def study_numbers(study) -> dict:
    """Mean accuracy change and speed-up of wavelet features and of channel selection against the raw selection."""
    v = study.pivot_table(index="dataset", columns="variant", values=["accuracy", "speedup"], sort=False)
    acc, speed = 100 * v["accuracy"], v["speedup"]
    wav = study[study["variant"] == VARIANTS["wavelets"]]
    out = {"study_keep_features": float(study.loc[study["variant"] == VARIANTS["selected"], "features"].iloc[0]),
           "study_sel_speedup": _mean_or_nan(speed[VARIANTS["selected"]]),
           "study_wav_speedup": _mean_or_nan(speed[VARIANTS["wavelets"]]),
           "study_wav_acc_delta": _mean_or_nan(acc[VARIANTS["wavelets"]] - acc[VARIANTS["selected"]]),
           "study_wav_share": float(100 * wav["wavelet features"].sum() / wav["features"].sum())}
    chan = VARIANTS["channels"]
    multi = chan in speed
    out["study_chan_acc_delta"] = _mean_or_nan(acc[chan] - acc[VARIANTS["selected"]]) if multi else float("nan")
    out["study_chan_speedup"] = _mean_or_nan(speed[chan]) if multi else float("nan")
    out["study_chan_sel_speedup"] = (_mean_or_nan(speed[VARIANTS["selected"]][speed[chan].notna()]) if multi
                                     else float("nan"))
    out["study_wav_vs_raw"] = ("the wavelet selection was the slower of the two"
                               if out["study_wav_speedup"] <= out["study_sel_speedup"]
                               else "the wavelet selection was the faster of the two here")
    return out


def faster(ratio: float, digits: int = 1) -> str:
    """'23.5x faster than' or '1.3x slower than' for a speed-up ``ratio`` (the other's time over ours)."""
    r = float(ratio)
    if not r > 0:
        return "not comparable with"
    if round(r, digits) == 1:
        return "as fast as"
    return f"{r:.{digits}f}x faster than" if r > 1 else f"{1 / r:.{digits}f}x slower than"


def streaming_numbers(frame) -> dict:
    """The continual step against recomputing, over windows of at least 64 samples (the largest if none is)."""
    big = frame[frame["window"] >= 64] if (frame["window"] >= 64).any() else frame.tail(1)
    out = {"ops_ratio_min64": float(big["ops_ratio"].min()), "time_ratio_min64": float(big["time_ratio"].min()),
           "time_ratio_py_min64": float(big["time_ratio_python_step"].min()),
           "continual_us": float(frame["continual_s"].iloc[0] * 1e6), "window_min64": float(big["window"].min())}
    out["stream_speed_words"] = faster(out["time_ratio_min64"])
    out["stream_py_words"] = faster(out["time_ratio_py_min64"])
    return out


def scale_words(num_kernels: int, num_features: int, datasets, selection_datasets, papers: int = 10_000) -> str:
    """What this run's sizes were against the papers', for the closing notes (the prose follows the preset)."""
    sets = len(dict.fromkeys(list(datasets) + list(selection_datasets)))
    sizes = f"{num_kernels:,} ROCKET kernels and {num_features:,} MiniRocket features on {sets} dataset" + \
        ("s" if sets != 1 else "")
    if num_kernels >= papers and num_features >= papers:
        return f"This run used the papers' sizes: {sizes}"
    return (f"This run used {sizes}, fewer kernels than the papers' {papers:,}, so its timings of the real "
            f"datasets are shorter and noisier than a full run's (`effnb run 18 --preset full` uses the papers' "
            f"kernel counts on all five datasets)")
