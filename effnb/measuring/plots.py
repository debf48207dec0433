"""The chapter's two figures, in the book's style, each captioned with the machine and the backend."""
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


__all__ = ["plot_roofline", "plot_runtime_fit"]
