"""The chapter's figures, drawn by ``perf.Result.plot`` in the book's style with the machine in the caption."""
from __future__ import annotations

from effnb import plots

from . import peers


def throughput(sweeps: dict, threads: int, n_series: int):
    """Transform time, ours (solid) and sktime (dashed), one panel per sweep (stacked), quartile bands shaded."""
    import matplotlib.pyplot as plt
    plots.style()
    fig, axes = plt.subplots(len(sweeps), 1, figsize=(7.0, 3.4 * len(sweeps)), squeeze=False)
    for ax, (vary, races) in zip(axes[:, 0], sweeps.items()):
        for res in races.values():
            res.plot(ax=ax, logx=True, logy=True)
        ax.set_ylabel(f"s per call ({n_series} series)")
        plots.caption(ax, f"transform time by {vary}, {threads} threads", backend=f"ours: {peers.ours_backend()}")
    return fig


def streaming(result, steps: int):
    """Seconds per ``steps`` stream steps against the window: the continual step stays flat, recomputing grows."""
    fig, ax = plots.figure()
    result.plot(ax=ax, logx=True, logy=True)
    ax.set_ylabel(f"s per {steps} steps")
    return fig
