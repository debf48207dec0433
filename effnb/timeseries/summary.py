"""The numbers a chapter run glues into its prose, and the tables it shows, from the experiments' results.

Each ``*_numbers`` function returns {glue name: value}; the notebook records
them as they are, so the prose and the sidecar read one computation.
"""
from __future__ import annotations

from effnb import roofline

from .experiments import RACES, VARIANTS, selected_label


def _mean_or_nan(s) -> float:
    return float(s.mean()) if len(s.dropna()) else float("nan")


def _speedups(results: list, family: str):
    """Ours over sktime's twin at every x of every result (one ratio per point, same sitting)."""
    import pandas as pd
    (ours, _), (peer, _) = RACES[family]
    return pd.concat([res.ratio(ours, peer) for res in results])


def sweep_numbers(sweeps: dict, limits: dict) -> dict:
    """Median and worst speed-up over sktime across all sweeps, ROCKET's best GFLOP/s and % of the fp32 peak,
    sktime's best GFLOP/s, and sktime's slowest first call (its compile time)."""
    import pandas as pd
    rocket = [races["ROCKET"] for races in sweeps.values()]
    r = _speedups(rocket, "ROCKET")
    m = _speedups([races["MiniRocket"] for races in sweeps.values()], "MiniRocket")
    df = pd.concat([res.df for res in rocket], ignore_index=True)
    ours, sk = df[df["provider"] == "rocket"], df[df["provider"] == "rocket_sktime"]
    top = ours.loc[ours["gflops"].idxmax()]
    t = float(top["median_s"])
    b = roofline.bound(float(top["gflops"]) * 1e9 * t, float(top["gbps"]) * 1e9 * t, t, limits)
    return {"rocket_speedup": float(r.median()), "rocket_speedup_min": float(r.min()),
            "mini_speedup": float(m.median()), "mini_speedup_min": float(m.min()),
            "rocket_gflops": b["gflops"], "rocket_pct_peak": b["pct_of_limit"],
            "rocket_sk_gflops": float(sk["gflops"].max()), "compile_sk_rocket": float(sk["compile_s"].max())}


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


def selected_table(quality, races: dict, keep: float):
    """Per dataset: kernels the selected ROCKET computes, its speed-up over our full ROCKET, its accuracy cost."""
    import pandas as pd
    sel = selected_label(keep)
    acc = accuracy_table(quality)
    kernels = quality[quality["method"] == sel].set_index("dataset")["kernels"]
    return pd.DataFrame({"kernels computed": kernels,
                         "inference speed-up (transform)": races["ROCKET"].ratio("rocket_selected", "rocket"),
                         "accuracy drop (points)": 100 * (acc["ROCKET effnb"] - acc[sel])}).rename_axis("dataset")


def selected_numbers(table, num_kernels: int) -> dict:
    """Range and mean of the selected ROCKET's speed-up, its mean accuracy drop and the share of kernels kept."""
    speed = table["inference speed-up (transform)"]
    return {"sel_speedup_min": float(speed.min()), "sel_speedup_max": float(speed.max()),
            "sel_speedup_mean": float(speed.mean()),
            "sel_acc_drop_mean": float(table["accuracy drop (points)"].mean()),
            "sel_kernel_pct": float(100 * table["kernels computed"].mean() / num_kernels)}


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
    return out


def streaming_numbers(frame) -> dict:
    """The continual step against recomputing, over windows of at least 64 samples (the largest if none is)."""
    big = frame[frame["window"] >= 64] if (frame["window"] >= 64).any() else frame.tail(1)
    return {"ops_ratio_min64": float(big["ops_ratio"].min()), "time_ratio_min64": float(big["time_ratio"].min()),
            "time_ratio_py_min64": float(big["time_ratio_python_step"].min()),
            "continual_us": float(frame["continual_s"].iloc[0] * 1e6), "window_min64": float(big["window"].min())}
