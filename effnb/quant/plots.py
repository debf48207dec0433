"""The chapter's figures, drawn in the book's style with the machine and backend in every caption."""
from __future__ import annotations

from .. import plots, roofline
from . import ops


def plot_speed(runs: dict, limits: dict) -> list:
    """One figure per weight shape: GB/s (all bytes moved) against tokens M, the read bandwidth as roof.
    A dozen providers: the legend goes below the axes, where it hides no line."""
    axes = []
    for res in runs.values():
        _, ax = plots.figure(7.0, 5.5)
        res.plot(ax=ax, roof=limits, logx=True)
        ax.legend(fontsize="x-small", ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.15))
        axes.append(ax)
    return axes


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
