"""The chapter's figures, in the book's style, each titled with the machine (and backend) that made it.

Every figure fits the book's column: at most 7 inches wide, several panels stacked one above the other,
tick labels written as plain numbers (0.5, 1, 2, 10; never 10^-1), legends where they cover no data.
"""
from __future__ import annotations

import numpy as np

from .. import plots
from .benchmarks import OURS, by_case

WIDTH = 7.0   # inches: the book's column


def _grid(rows: int, cols: int, height: float, sharex: bool = False):
    """A styled grid of panels, ``WIDTH`` wide (the book's column)."""
    import matplotlib.pyplot as plt
    plots.style()
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, height * rows), squeeze=False, sharex=sharex)
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


def _plain_log_y(ax) -> None:
    """A log y axis labelled 0.1, 1, 10 (not 10^-1), and 0.2, 0.5, 2, 5 between them where they fit."""
    from matplotlib.ticker import FuncFormatter
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if _mantissa(v) in (2, 5)
                                               and _decades(ax) < 2 else ""))


def _speedup_axes(ax, title: str, xlabel: bool = True) -> None:
    ax.axhline(1.0, color="k", lw=1, ls="--")
    _plain_log_y(ax)
    _sparsity_axis(ax)
    if xlabel:
        ax.set_xlabel("weight sparsity")
    ax.set_ylabel("speed-up over\ndense F.linear")
    ax.set_title(title, fontsize="medium")


_STYLES = ["-", "--", ":", "-."]


def plot_speedups(result):
    """Every provider's speed-up over dense ``F.linear`` against sparsity: a panel per M, stacked, a colour
    per provider and a line style per weight shape (the ratios come from ``result.ratio``, so each pair
    shared the machine's state)."""
    from matplotlib.lines import Line2D
    sp = by_case(result)
    shapes = list(dict.fromkeys(zip(sp.n, sp.k)))
    ms = list(dict.fromkeys(sp.m))
    fig, axes = _grid(len(ms), 1, 2.9, sharex=True)
    _caption(fig, axes[0][0], result.spec.name, backend=_ran(result))
    labels = {p.key: p.label for p in result.spec.providers}
    providers = list(dict.fromkeys(sp.provider))
    colours = plots_colours()
    for (n, k, m), g in sp.groupby(["n", "k", "m"], sort=False):
        ax = axes[ms.index(m)][0]
        for key, gp in g.groupby("provider", sort=False):
            ax.plot(gp.sparsity, gp.speedup, marker="o", color=colours[providers.index(key) % len(colours)],
                    ls=_STYLES[shapes.index((n, k)) % len(_STYLES)])
    for i, m in enumerate(ms):
        _speedup_axes(axes[i][0], f"M = {m} (rows of activations per call)", xlabel=i == len(ms) - 1)
    handles = [Line2D([], [], color=colours[i % len(colours)], marker="o", label=labels[key])
               for i, key in enumerate(providers)]
    if len(shapes) > 1:
        handles += [Line2D([], [], color="grey", ls=_STYLES[i % len(_STYLES)], label=f"weight {n}x{k}")
                    for i, (n, k) in enumerate(shapes)]
    handles.append(Line2D([], [], color="k", ls="--", lw=1, label="dense F.linear (= 1)"))
    _legend_below(fig, handles)
    return fig


def _legend_below(fig, handles=None, ncols: int = 4) -> None:
    """One legend for the whole figure, under its panels, where it covers no data."""
    fig.set_layout_engine("constrained")
    if handles is None:
        handles, _ = fig.axes[0].get_legend_handles_labels()
        if fig.axes[0].get_legend() is not None:
            fig.axes[0].get_legend().remove()
    fig.legend(handles=handles, loc="outside lower center", ncols=min(ncols, len(handles)), fontsize="x-small",
               frameon=False)


def _sparsity_axis(ax) -> None:
    """Sparsity ticks as percentages: 50%, 90%."""
    from matplotlib.ticker import PercentFormatter
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def plots_colours() -> list:
    """The colours of the book's palette, in order."""
    import matplotlib.pyplot as plt
    plots.style()
    return plt.rcParams["axes.prop_cycle"].by_key()["color"]


def plot_conv(result):
    """The MobileNet-v1 1x1 race (an :class:`effnb.perf.Result` in dense-equivalent GFLOP/s): a line per
    provider on a log axis labelled in plain numbers, the legend under the axes so that it hides no line."""
    ax = result.plot(logy=True)
    ax.figure.set_size_inches(WIDTH, 5.0)
    _plain_log_y(ax)
    _legend_below(ax.figure)
    return ax


def plot_tradeoff(result, summary):
    """Against sparsity: our CSR kernel's speed-up over dense ``F.linear`` (top, a line per shape and M)
    and the digits CNN's test accuracy, mean +- std over seeds (bottom)."""
    fig, axes = _grid(2, 1, 3.0)
    a, b = axes[0][0], axes[1][0]
    _caption(fig, a, "speed-up and accuracy against sparsity", backend=_ran(result))
    sp = by_case(result)
    for (n, k, m), g in sp[sp.provider == OURS].groupby(["n", "k", "m"], sort=False):
        a.plot(g.sparsity, g.speedup, marker="o", label=f"{n}x{k}, M={m}")
    _speedup_axes(a, "effnb CSR, cold fp32 weights")
    a.legend(fontsize="x-small", loc="upper left")
    for pattern, g in summary.groupby("pattern", sort=False):
        g = g.sort_values("sparsity")
        b.errorbar(g.sparsity, g["mean"], yerr=g["std"], marker="o", capsize=3, label=pattern)
    dense = summary[(summary.pattern == "unstructured") & (summary.sparsity == 0.0)]
    if len(dense):
        b.axhline(float(dense["mean"].iloc[0]) - 1.0, color="k", lw=1, ls=":", label="dense - 1 point")
    _sparsity_axis(b)
    b.set_xlabel("sparsity of the 1x1 convs + head")
    b.set_ylabel("test accuracy (%)")
    n_seeds = int(summary["count"].max())
    b.set_title(f"digits CNN, mean +- std over {n_seeds} seed{'s' if n_seeds > 1 else ''}", fontsize="medium")
    b.legend(fontsize="x-small", loc="lower left")
    lo = min(a.get_xlim()[0], b.get_xlim()[0])
    hi = max(a.get_xlim()[1], b.get_xlim()[1])
    a.set_xlim(lo, hi)
    b.set_xlim(lo, hi)
    return fig


def _diagonal(ax, xs, ys) -> None:
    """Points above the dashed y = x line favour the y axis's method."""
    lo, hi = 100 * min(xs.min(), ys.min()) - 1, 100 * max(xs.max(), ys.max()) + 1
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="equal accuracy")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)


def _ift_panel(ax, ift) -> None:
    ax.scatter(100 * ift.dense_acc, 100 * ift.wide_acc, zorder=3, label="one seed")
    _diagonal(ax, ift.dense_acc, ift.wide_acc)
    ax.set(xlabel="dense MLP, test accuracy (%)", ylabel="Sparse-Wide MLP,\ntest accuracy (%)")
    ax.set_aspect("equal", adjustable="box")
    ax.legend(fontsize="x-small", loc="upper left")


def _rs_panels(b, c, rs) -> None:
    colours = plots_colours()
    for (s, g), col in zip(rs.groupby("sparsity"), colours):
        b.scatter(100 * g.random_acc, 100 * g.search_acc, color=col, zorder=3, label=f"node sparsity {s:.0%}")
        ep = np.arange(1, len(g.search_curve.iloc[0]) + 1)
        c.plot(ep, 100 * np.mean(g.search_curve.tolist(), 0), color=col, label=f"searched, {s:.0%}")
        c.plot(ep, 100 * np.mean(g.random_curve.tolist(), 0), color=col, ls="--", label=f"random, {s:.0%}")
    _diagonal(b, rs.random_acc, rs.search_acc)
    b.set(xlabel="random mask, final test accuracy (%)", ylabel="searched mask,\nfinal test accuracy (%)")
    b.set_title("a point per run", fontsize="medium")
    b.legend(fontsize="x-small", loc="upper left")
    c.set(xlabel="epoch of the final training", ylabel="test accuracy (%),\nmean over seeds")
    c.set_title("learning curves", fontsize="medium")
    c.legend(fontsize="x-small", loc="lower right", ncols=2)


def plot_ift(ift):
    """Sparse-IFT: each seed's Sparse-Wide accuracy against its dense twin's (above the diagonal: wide won)."""
    fig, axes = _grid(1, 1, 4.6)
    fig.set_size_inches(5.2, 4.6)
    ax = axes[0][0]
    _ift_panel(ax, ift)
    plots.caption(ax, "Sparse-IFT on digits, equal FLOPs")
    return fig


def plot_random_search(rs):
    """Random Search: searched against random node masks, a point per run (top), and the learning curves of
    the final trainings, mean over seeds (bottom)."""
    fig, axes = _grid(2, 1, 3.3)
    b, c = axes[0][0], axes[1][0]
    _rs_panels(b, c, rs)
    fig.suptitle(plots.caption(b, "Random Search on digits"), fontsize="medium")
    b.set_title("a point per run", fontsize="medium")
    return fig


def plot_trials(ift, rs):
    """Sparse-IFT (a point per seed), Random Search (a point per run) and its learning curves, stacked."""
    fig, axes = _grid(3, 1, 3.1)
    a, b, c = (axes[i][0] for i in range(3))
    _caption(fig, a, "digits, test accuracy")
    _ift_panel(a, ift)
    a.set_title("Sparse-IFT, a point per seed", fontsize="medium")
    _rs_panels(b, c, rs)
    return fig


__all__ = ["plot_speedups", "plot_conv", "plot_tradeoff", "plot_ift", "plot_random_search", "plot_trials"]
