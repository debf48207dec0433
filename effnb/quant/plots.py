"""The chapter's figures, drawn in the book's style with the machine and backend in every caption."""
from __future__ import annotations

from .. import plots, roofline
from . import ops


def plot_speed(runs: dict, limits: dict):
    """GB/s (all bytes moved) against tokens M, the read bandwidth as roof: one panel per weight
    shape, stacked for a narrow column, one legend below them all (a dozen providers)."""
    import matplotlib.pyplot as plt
    plots.style()
    fig, axes = plt.subplots(len(runs), 1, figsize=(7.0, 3.6 * len(runs) + 1.6), sharex=True, squeeze=False)
    for ax, (shape, res) in zip(axes[:, 0], runs.items()):
        res.plot(ax=ax, roof=limits, logx=True)
        ax.set_title(f"cold weights {shape}", fontsize="medium")
        if ax.get_legend():
            ax.get_legend().remove()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize="x-small", ncols=3, loc="lower center", frameon=False)
    fig.tight_layout(rect=(0, 0.16 if len(runs) == 1 else 0.1, 1, 1))
    return fig


def roofline_points(runs: dict, m: int = 1):
    """Each provider of each shape at ``m`` tokens as a roofline point (name, intensity, GFLOP/s):
    intensity counts every byte the provider moves, so lower-bit formats sit further right."""
    import pandas as pd
    rows = []
    for shape, res in runs.items():
        for p in res.spec.providers:
            if p.key in res.keys():
                t = res.time(p.key, m)
                flops = res.spec.flops(m)
                rows.append({"name": f"{p.label} {shape}", "intensity": flops / p.bytes_moved(m),
                             "gflops": flops / t / 1e9})
    return pd.DataFrame(rows)


def plot_roofline(runs: dict, limits: dict, m: int = 1):
    """The roofline of this machine with every provider's point at ``m`` tokens, cold weights."""
    plots.style()
    _, ax = plots.figure(7.0, 4.5)
    roofline.plot(limits, roofline_points(runs, m), ax=ax)
    plots.caption(ax, f"M = {m}, cold weights, {limits.get('threads', '?')} threads", backend=f"ours: {ops.backend()}")
    return ax


def plot_qat(histories: dict, steps_label: str = "optimizer step"):
    """Training loss (bits per byte of the loss the student minimises) against the step, one line per
    scheme: how fast training through the rounding recovers."""
    import math

    import matplotlib.pyplot as plt
    plots.style()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for scheme, hist in histories.items():
        if hist:
            steps, loss = zip(*hist)
            ax.plot(steps, [v / math.log(2) for v in loss], marker="o", markersize=3, label=scheme)
    ax.set_xlabel(steps_label)
    ax.set_ylabel("training loss (bits per byte)")
    ax.legend(fontsize="small", frameon=False)
    fig.tight_layout()
    return fig
