"""The chapter's figures, in the book's style, each captioned with the machine and the backend."""
from __future__ import annotations

from .. import plots, roofline
from .runtime_model import RuntimeModel
from .workloads import torch_backend


def plot_roofline(limits: dict, measured, ax=None):
    """The measured workloads (rows of :func:`.measure_workloads`) on this machine's roofline."""
    if ax is None:
        _, ax = plots.figure(7, 4.5)
    roofline.plot(limits, measured, ax=ax)
    backends = ", ".join(dict.fromkeys(measured["backend"])) if "backend" in measured else None
    plots.caption(ax, f"fp32 kernels on the roofline, {limits.get('threads', '?')} threads", backend=backends)
    return ax


def plot_runtime_fit(df, model: RuntimeModel, column: str = "best_s", ax=None, backend: str | None = None):
    """Predicted vs measured latency (``column`` of ``df``), training and held-out, with the y = x line."""
    if ax is None:
        _, ax = plots.figure(5.5, 5)
    pred = model.predict(df["prompt"], df["outputs"]) * 1e3
    meas = df[column].to_numpy() * 1e3
    for split, marker in (("train", "o"), ("held-out", "s")):
        m = (df["split"] == split).to_numpy()
        ax.scatter(meas[m], pred[m], marker=marker, label=split, zorder=3)
    lo, hi = min(meas.min(), pred.min()) * 0.8, max(meas.max(), pred.max()) * 1.2
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="predicted = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    plots.caption(ax, "idealized-runtime fit", backend=backend or torch_backend())
    ax.legend()
    return ax


def plot_fusion(table, caches: dict, target: float, backend: str, ax=None):
    """Fusion's gain per block against the size of its expanded activation, with this machine's caches marked."""
    if ax is None:
        _, ax = plots.figure(6.5, 4)
    ax.scatter(table["expanded_mib"], table["fusion_gain"], zorder=3)
    for _, r in table.iterrows():
        ax.annotate(r["block"], (r["expanded_mib"], r["fusion_gain"]), textcoords="offset points", xytext=(5, 4),
                    fontsize="small")
    for i, (name, mib) in enumerate(sorted(caches.items())):
        ax.axvline(mib, color="grey", linestyle=":" if i else "--", linewidth=1, label=f"{name} ({mib:g} MiB)")
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xscale("log", base=2)
    return _finish(ax, f"target ({target:g}x)", target, ("expanded activation of one block call (MiB)",
                   "unfused time / fused time"), "fusion's gain, same code", backend)


def plot_search(trials, target_pct: float, backend: str, ax=None):
    """Gap to the exhaustive best after each measurement: median over seeds, interquartile band, per method."""
    if ax is None:
        _, ax = plots.figure(6.5, 4)
    for method, g in trials.groupby("method", sort=False):
        q = g.groupby("step")["gap_pct"].quantile([0.25, 0.5, 0.75]).unstack()
        line, = ax.plot(q.index, q[0.5], marker="o", markersize=3, label=f"{method} (median)")
        ax.fill_between(q.index, q[0.25], q[0.75], color=line.get_color(), alpha=0.2)
    ax.set_yscale("symlog", linthresh=1.0)
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


__all__ = ["plot_roofline", "plot_runtime_fit", "plot_fusion", "plot_search"]
