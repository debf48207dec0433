"""The chapter's figures, in the book's style, each captioned with the machine (and backend) that made it."""
from __future__ import annotations

import numpy as np

from .. import plots
from .benchmarks import OURS, by_case


def _grid(rows: int, cols: int, height: float):
    """A styled grid of panels at most 7.5 inches wide (the book's column)."""
    import matplotlib.pyplot as plt
    plots.style()
    fig, axes = plt.subplots(rows, cols, figsize=(7.5, height * rows), squeeze=False)
    return fig, axes


def _caption(fig, ax, text: str, backend: str | None = None) -> None:
    """The book's caption (what, machine, backend) over a figure of several panels."""
    fig.suptitle(plots.caption(ax, text, backend), fontsize="medium")
    ax.set_title("")


def _ran(result) -> str:
    """What ran ours, and on how many threads (the timings depend on both)."""
    import torch
    ours = ", ".join(dict.fromkeys(p.backend for p in result.spec.providers if p.ours))
    return f"ours: {ours}, {torch.get_num_threads()} thread(s)"


def _mantissa(v: float) -> int:
    """The leading digit of ``v`` > 0 (2 for 0.2 and 20): which minor ticks of a log axis get a label."""
    return int(round(v / 10 ** np.floor(np.log10(v)))) if v > 0 else 0


def _decades(ax) -> float:
    """How many powers of ten the y axis spans now (asked when the axis is drawn)."""
    lo, hi = ax.get_ylim()
    return float(np.log10(hi / lo))


def _speedup_axes(ax, title: str) -> None:
    from matplotlib.ticker import FuncFormatter
    ax.axhline(1.0, color="k", lw=1, ls="--")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))   # 0.1, 1, 10: not 10^-1
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if _mantissa(v) in (2, 5)
                                               and _decades(ax) < 2 else ""))   # 0.2, 0.5 where they fit
    ax.set_xlabel("weight sparsity")
    ax.set_ylabel("speed-up over dense F.linear")
    ax.set_title(title)


def plot_speedups(result):
    """Every provider's speed-up over dense ``F.linear`` against sparsity: a row per weight shape, a
    column per M (the ratios come from ``result.ratio``, so each pair shared the machine's state)."""
    sp = by_case(result)
    shapes = list(dict.fromkeys(zip(sp.n, sp.k)))
    ms = list(dict.fromkeys(sp.m))
    fig, axes = _grid(len(shapes), len(ms), 3.3)
    _caption(fig, axes[0][0], result.spec.name, backend=_ran(result))
    labels = {p.key: p.label for p in result.spec.providers}
    for (n, k, m), g in sp.groupby(["n", "k", "m"], sort=False):
        ax = axes[shapes.index((n, k))][ms.index(m)]
        for key, gp in g.groupby("provider", sort=False):
            ax.plot(gp.sparsity, gp.speedup, marker="o", label=labels[key])
        _speedup_axes(ax, f"{n}x{k}, M={m}")
    axes[0][0].legend(fontsize="x-small")
    return fig


def plot_tradeoff(result, summary):
    """Against sparsity: our CSR kernel's speed-up over dense ``F.linear`` (left, a line per shape and M)
    and the digits CNN's test accuracy, mean +- std over seeds (right)."""
    fig, axes = _grid(1, 2, 3.6)
    a, b = axes[0]
    _caption(fig, a, "speed-up and accuracy against sparsity", backend=_ran(result))
    sp = by_case(result)
    for (n, k, m), g in sp[sp.provider == OURS].groupby(["n", "k", "m"], sort=False):
        a.plot(g.sparsity, g.speedup, marker="o", label=f"{n}x{k}, M={m}")
    _speedup_axes(a, "effnb CSR, cold fp32 weights")
    a.legend(fontsize="x-small")
    for pattern, g in summary.groupby("pattern", sort=False):
        g = g.sort_values("sparsity")
        b.errorbar(g.sparsity, g["mean"], yerr=g["std"], marker="o", capsize=3, label=pattern)
    dense = summary[(summary.pattern == "unstructured") & (summary.sparsity == 0.0)]
    if len(dense):
        b.axhline(float(dense["mean"].iloc[0]) - 1.0, color="k", lw=1, ls=":", label="dense - 1 point")
    b.set_xlabel("sparsity of the 1x1 convs + head")
    b.set_ylabel("test accuracy (%)")
    n_seeds = int(summary["count"].max())
    b.set_title(f"digits CNN, mean +- std over {n_seeds} seed{'s' if n_seeds > 1 else ''}")
    b.legend(fontsize="x-small")
    return fig


def _diagonal(ax, xs, ys) -> None:
    """Points above the dashed y = x line favour the y axis's method."""
    lo, hi = 100 * min(xs.min(), ys.min()) - 1, 100 * max(xs.max(), ys.max()) + 1
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)


def plot_trials(ift, rs):
    """Sparse-IFT (Sparse-Wide against dense, a point per seed), Random Search (searched against random
    masks, a point per run) and the Random Search learning curves, mean over seeds."""
    import matplotlib.pyplot as plt
    fig, axes = _grid(1, 3, 3.4)
    a, b, c = axes[0]
    _caption(fig, a, "digits, test accuracy")
    a.scatter(100 * ift.dense_acc, 100 * ift.wide_acc)
    _diagonal(a, ift.dense_acc, ift.wide_acc)
    a.set(xlabel="dense (%)", ylabel="Sparse-Wide (%)", title="Sparse-IFT, a point per seed")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (s, g), col in zip(rs.groupby("sparsity"), colours):
        b.scatter(100 * g.random_acc, 100 * g.search_acc, color=col, label=f"sparsity {s:.0%}")
        ep = np.arange(1, len(g.search_curve.iloc[0]) + 1)
        c.plot(ep, 100 * np.mean(g.search_curve.tolist(), 0), color=col, label=f"searched, {s:.0%}")
        c.plot(ep, 100 * np.mean(g.random_curve.tolist(), 0), color=col, ls="--", label=f"random, {s:.0%}")
    _diagonal(b, rs.random_acc, rs.search_acc)
    b.set(xlabel="random mask (%)", ylabel="searched mask (%)", title="Random Search")
    b.legend(fontsize="x-small")
    c.set(xlabel="epoch of the final training", ylabel="accuracy (%), mean over seeds", title="learning curves")
    c.legend(fontsize="x-small")
    return fig
