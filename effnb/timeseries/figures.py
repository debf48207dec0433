"""The chapter's figures and tables as the page shows them.

Figures are drawn by ``perf.Result.plot`` in the book's style with the machine in the caption; each fits
the book's column (7 inches wide, panels stacked one above the other), labels its log axes with plain
numbers in the unit it names (ms, not 10^-3 s), and places legends where they cover least.
Tables put units in the cells (``effnb.units``) and "-" where nothing applies; the frames themselves keep
full precision (the chapter saves them as CSV beside the run).
"""
from __future__ import annotations

from effnb import plots, units

from . import peers
from .experiments import RACES
from .summary import _point, accuracy_table

WIDTH = 7.0   # inches: the book's column


def _plain_log(ax, xs=None, scale: float = 1.0) -> None:
    """Log axes labelled as plain numbers: y times ``scale`` (1e3 for seconds shown in ms), x at ``xs``."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{scale * v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    if xs is not None:
        ax.set_xticks(list(xs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def throughput(sweeps: dict, threads: int, n_series: int):
    """Transform time, ours (solid) and sktime (dashed), one panel per sweep (stacked), quartile bands shaded."""
    import matplotlib.pyplot as plt
    plots.style()
    fig, axes = plt.subplots(len(sweeps), 1, figsize=(WIDTH, 3.3 * len(sweeps)), squeeze=False)
    where = plots.caption(axes[0, 0], f"transform time, {threads} threads", backend=f"ours: {peers.ours_backend()}")
    for ax, (vary, races) in zip(axes[:, 0], sweeps.items()):
        for res in races.values():
            res.plot(ax=ax, logx=True, logy=True)
        _plain_log(ax, next(iter(races.values())).spec.x_values, scale=1e3)
        what = "series length" if vary == "length" else "kernel count"
        ax.set_xlabel("series length" if vary == "length" else "kernels (MiniRocket: features)")
        ax.set_ylabel(f"ms per call\n({n_series} series)")
        ax.set_title(f"by {what}, {_fixed(races)}", fontsize="medium")
        ax.get_legend().remove()
    axes[0, 0].legend(fontsize="x-small", loc="best", ncols=2)   # same colours in every panel: one legend
    fig.suptitle(where, fontsize="medium")
    return fig


def _fixed(races: dict) -> str:
    """What a sweep holds fixed, from its benchmark's name ('MiniRocket by length, 1000 kernels, 2 threads')."""
    parts = next(iter(races.values())).spec.name.split(", ")
    return parts[1] if len(parts) > 1 else ""


def streaming(result, steps: int):
    """Time per ``steps`` stream steps against the window: the continual step stays flat, recomputing grows."""
    fig, ax = plots.figure(WIDTH, 3.8)
    result.plot(ax=ax, logx=True, logy=True)
    _plain_log(ax, result.spec.x_values, scale=1e3)
    ax.set_ylabel(f"ms per {steps} steps")
    ax.set_xlabel("window W (samples)")
    ax.legend(fontsize="x-small", loc="best")
    return fig


# ------------------------------------------------------------------ the tables

def _whole(value) -> str:
    """A count: '20,000', '6'."""
    return units.DASH if units.fixed(0)(value) == units.DASH else f"{float(value):,.0f}"


def sweep_pivot(sweeps: dict):
    """The throughput sweep at a glance, one row per sweep point: each family's time per call, ours, and its
    speed-up over sktime's (same sitting)."""
    import pandas as pd
    rows = {}
    for vary, races in sweeps.items():
        for fam, res in races.items():
            (ours, _), (peer, _) = RACES[fam]
            t, ratio = res.time(ours), res.ratio(ours, peer)
            for x in t.index:
                row = rows.setdefault(_point(vary, x), {})
                row[f"{fam}, ours"] = float(t[x])
                row[f"{fam}, vs sktime"] = float(ratio.get(x, float("nan")))
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("sweep point")


def sweep_pivot_view(pivot):
    return units.styled(pivot, {c: (units.duration if c.endswith("ours") else units.times) for c in pivot.columns},
                        index=True)


def sweep_table_view(table):
    """``sweep_table`` with units: time per call, the first call (timed apart), the ratio, % of the roof."""
    view = table.rename(columns={"ms": "time per call", "first call s": "first call"})
    return units.styled(view, {"time per call": units.ms, "first call": units.duration, "vs sktime": units.times,
                               "% of roof": lambda v: units.percent(v, 1)})


def stall_pivot(frame):
    """The stall probe per side and thread count: median call and share of stalled calls under each load."""
    import pandas as pd
    out = frame.pivot_table(index=["side", "threads"], columns="load", values=["median_ms", "stalled"],
                            sort=False)
    loads = list(dict.fromkeys(frame["load"]))
    cols = {}
    for load in loads:
        cols[f"{load}: median"] = out["median_ms"][load]
        cols[f"{load}: stalled"] = out["stalled"][load]
    view = pd.DataFrame(cols)
    region = frame.drop_duplicates(["side", "threads"]).set_index(["side", "threads"])["region"]
    view.insert(0, "parallel region", region.reindex(view.index).map({True: "yes", False: "no"}))
    return view


def stall_pivot_view(pivot):
    return units.styled(pivot, {c: (units.ms if c.endswith("median") else units.share)
                                for c in pivot.columns if c != "parallel region"}, index=True)


def stall_table_view(frame):
    view = frame.assign(region=frame["region"].map({True: "yes", False: "no"})).rename(
        columns={"region": "parallel region", "work_mflop": "work, MFLOP", "fastest_ms": "fastest",
                 "median_ms": "median", "slowest_ms": "slowest"})
    return units.styled(view, {"work, MFLOP": units.sig, "fastest": units.ms, "median": units.ms,
                               "slowest": units.ms, "stalled": units.share})


def accuracy_view(quality):
    """Test accuracy, a row per dataset and a column per method, as percentages."""
    acc = accuracy_table(quality)
    return units.styled(acc, {c: (lambda v: units.share(v, 1)) for c in acc.columns}, index=True)


def dataset_speed_table(quality):
    """Warm test-set transform time per dataset: each family's ours and sktime's, and the speed-up."""
    import pandas as pd
    t = quality.pivot_table(index="dataset", columns="method", values="transform_s", sort=False)
    cols = {}
    for fam, ((_, ours), (_, peer)) in RACES.items():
        cols[f"{fam}, ours"] = t[ours]
        cols[f"{fam}, sktime"] = t[peer]
        cols[f"{fam}, speed-up"] = t[peer] / t[ours]
    return pd.DataFrame(cols)


def dataset_speed_view(table):
    return units.styled(table, {c: (units.times if c.endswith("speed-up") else units.duration)
                                for c in table.columns}, index=True)


def quality_view(quality):
    """Every dataset and method: features, accuracy, fit and transform times, throughput."""
    view = quality[["dataset", "method", "features", "accuracy", "fit_s", "first_transform_s", "transform_s",
                    "series_per_s"]].rename(columns={"fit_s": "fit", "first_transform_s": "first transform",
                                                     "transform_s": "transform", "series_per_s": "series/s"})
    return units.styled(view, {"features": _whole, "accuracy": lambda v: units.share(v, 1),
                               "fit": units.duration, "first transform": units.duration,
                               "transform": units.duration, "series/s": _whole})


def study_view(study):
    """The selection study, every dataset and variant."""
    view = study[["dataset", "variant", "channels", "kernels", "wavelet features", "accuracy", "transform_s",
                  "speedup"]].rename(columns={"transform_s": "transform", "speedup": "speed-up"})
    return units.styled(view, {"accuracy": lambda v: units.share(v, 1), "transform": units.duration,
                               "speed-up": lambda v: units.times(v, 1)})


def selected_view(table):
    """``selected_table`` with units: kernel counts whole, speed-ups as 4.5x, accuracy drops in points."""
    view = table.rename(columns=lambda c: c.replace("accuracy drop", "accuracy drop (points)"))
    return units.styled(view, {c: (lambda v: units.times(v, 1)) if c.startswith("speed-up") else
                               units.signed if c.startswith("accuracy") else _whole for c in view.columns},
                        index=True)


def streaming_view(frame):
    """Per window: multiply-adds per step of each path, their ratio, time per step and the time ratio."""
    view = frame[["window", "macs_continual", "macs_windowed", "ops_ratio", "continual_s", "windowed_best_s",
                  "time_ratio"]].rename(columns={
                      "macs_continual": "MACs per step, continual", "macs_windowed": "MACs per step, recompute",
                      "ops_ratio": "MAC ratio", "continual_s": "continual step",
                      "windowed_best_s": "faster recompute", "time_ratio": "time ratio"})
    return units.styled(view, {"window": _whole, "MACs per step, continual": _whole,
                               "MACs per step, recompute": _whole, "MAC ratio": lambda v: units.times(v, 0),
                               "continual step": units.duration, "faster recompute": units.duration,
                               "time ratio": lambda v: units.times(v, 1)})
