"""The chapter's figures, in the book's style, each titled with the machine and the backend.

Every figure fits the book's column (at most 7 inches wide), writes its tick labels as plain numbers
(1/4, 1, 4, 16; 10, 100) rather than powers, and labels only the points a reader needs to find.
"""
from __future__ import annotations

from .. import plots, roofline
from .runtime_model import RuntimeModel
from .workloads import torch_backend

FAMILIES = {"gemm": "GEMM", "gemv": "GEMV (cold)", "conv1x1": "1x1 conv", "dwconv3x3": "depthwise 3x3 conv",
            "triad": "STREAM triad"}


def _short(family: str, size: str) -> str:
    """A point's label: 'GEMM 2048', '1x1 C=512', 'dw C=512', 'triad'."""
    if family in ("conv1x1", "dwconv3x3"):
        return f"{'1x1' if family == 'conv1x1' else 'dw'} C={size.split('x')[1]}"
    if family == "triad":
        return "triad"
    return f"{FAMILIES.get(family, family).split(' ')[0]} {size}"


def roofline_points(measured):
    """The measured workloads as roofline points: a colour per family, labels on the smallest and the largest
    of each family only (every point is in the table beside the figure)."""
    pts = measured[["name", "intensity", "gflops"]].copy()
    if "family" not in measured:
        return pts
    pts["group"] = measured["family"].map(lambda f: FAMILIES.get(f, f))
    pts["label"] = ""
    flops = measured["gflops"] * measured["median_s"] if "median_s" in measured else measured["intensity"]
    for _, idx in measured.groupby("family", sort=False).groups.items():
        ends = {flops.loc[idx].idxmin(), flops.loc[idx].idxmax()}
        for i in ends:
            size = measured.loc[i, "name"].split(" ", 1)[1] if " " in measured.loc[i, "name"] else ""
            pts.loc[i, "label"] = _short(measured.loc[i, "family"], size)
    return pts


def plot_roofline(limits: dict, measured, ax=None):
    """The measured workloads (rows of :func:`.measure_workloads`) on this machine's roofline."""
    if ax is None:
        _, ax = plots.figure(7, 4.8)
    roofline.plot(limits, roofline_points(measured), ax=ax)
    backends = ", ".join(dict.fromkeys(measured["backend"])) if "backend" in measured else None
    plots.caption(ax, f"fp32 kernels on the roofline, {limits.get('threads', '?')} threads", backend=backends)
    return ax


def _plain(axis, minor: bool = False) -> None:
    """Tick labels of a log axis as plain numbers (10, 100; with ``minor`` also 2, 5, 20, 50)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if minor:
        axis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:g}".lstrip("0.").startswith(("2", "5")) else ""))
    else:
        axis.set_minor_formatter(NullFormatter())


def plot_runtime_fit(df, model: RuntimeModel, column: str = "best_s", ax=None, backend: str | None = None):
    """Predicted vs measured latency (``column`` of ``df``), training and held-out, with the y = x line."""
    if ax is None:
        _, ax = plots.figure(6, 5)
    pred = model.predict(df["prompt"], df["outputs"]) * 1e3
    meas = df[column].to_numpy() * 1e3
    for split, marker in (("train", "o"), ("held-out", "s")):
        m = (df["split"] == split).to_numpy()
        ax.scatter(meas[m], pred[m], marker=marker, label=split, zorder=3)
    lo, hi = min(meas.min(), pred.min()) * 0.8, max(meas.max(), pred.max()) * 1.2
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="predicted = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        _plain(axis, minor=hi / lo < 100)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    plots.caption(ax, "idealized-runtime fit", backend=backend or torch_backend())
    ax.legend(loc="upper left")
    return ax


def plot_race(result, limits: dict):
    """The block race (an :class:`effnb.perf.Result`): GFLOP/s of each contender per block, the machine's
    compute roof dotted, the legend under the axes so that it covers no line."""
    ax = result.plot(roof=limits)
    fig = ax.figure
    fig.set_size_inches(7, 4.6)
    fig.set_layout_engine("constrained")
    handles, _ = ax.get_legend_handles_labels()
    ax.get_legend().remove()
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    return ax


def plot_fusion(table, caches: dict, target: float, backend: str, ax=None):
    """Fusion's gain per block against the size of its expanded activation, with this machine's caches marked."""
    if ax is None:
        _, ax = plots.figure(7, 4)
    ax.scatter(table["expanded_mib"], table["fusion_gain"], zorder=3)
    for _, r in table.iterrows():
        ax.annotate(r["block"], (r["expanded_mib"], r["fusion_gain"]), textcoords="offset points", xytext=(5, 4),
                    fontsize="small")
    for i, (name, mib) in enumerate(sorted(caches.items())):
        ax.axvline(mib, color="grey", linestyle=":" if i else "--", linewidth=1, label=f"{name} ({mib:g} MiB)")
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xscale("log", base=2)
    _plain(ax.xaxis)
    return _finish(ax, f"target ({target:g}x)", target, ("expanded activation of one block call (MiB)",
                   "unfused time / fused time"), "fusion's gain, same code", backend)


def plot_search(trials, target_pct: float, backend: str, ax=None):
    """Gap to the exhaustive best after each measurement: median over seeds, interquartile band, per method."""
    if ax is None:
        _, ax = plots.figure(7, 4)
    for method, g in trials.groupby("method", sort=False):
        q = g.groupby("step")["gap_pct"].quantile([0.25, 0.5, 0.75]).unstack()
        line, = ax.plot(q.index, q[0.5], marker="o", markersize=3, label=f"{method} (median)")
        ax.fill_between(q.index, q[0.25], q[0.75], color=line.get_color(), alpha=0.2)
    ax.set_yscale("symlog", linthresh=1.0)
    _plain(ax.yaxis)
    return _finish(ax, f"target ({target_pct:g}%)", target_pct, ("configurations measured",
                   "best found vs exhaustive best (% slower)"), "searching the fused block's configurations", backend)


def _finish(ax, target_label: str, target: float, labels: tuple[str, str], title: str, backend: str):
    """The target line, axis labels, caption (machine and backend) and legend every chapter figure ends with."""
    ax.axhline(target, color="tab:red", linestyle="--", linewidth=1, label=target_label)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    plots.caption(ax, title, backend=backend)
    ax.legend(fontsize="small")
    return ax


__all__ = ["plot_roofline", "plot_runtime_fit", "plot_race", "plot_fusion", "plot_search", "roofline_points"]
