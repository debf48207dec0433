"""Chapter 15's figures: index size against quality, time per query against quality, training curves."""
from __future__ import annotations

from .. import plots

MARKERS = {"every token": "o", "whole words": "s", "content words": "^"}


def plot_storage(df, points: float = 1.0, mark: str | None = None):
    """nDCG@10 against bytes per document (log x), one marker shape per kind of kept vectors, one colour
    per dimension map (384 dims, each PCA, the trained projection), int8 filled and fp32 hollow; the band is the first row's quality +/- ``points``
    (nDCG points), ``mark`` names an index to ring."""
    fig, ax = plots.figure(7.0, 5.0)
    base = df["nDCG@10"].iloc[0]
    ax.axhspan(base - points / 100, base + points / 100, color="grey", alpha=0.15,
               label=f"{df['index'].iloc[0]} +/- {points:g} point")
    dims = df["index"].str.split(", ").str[1]            # "384 dims", "PCA 64", "trained 128": one colour each
    colours = {d: f"C{i}" for i, d in enumerate(dict.fromkeys(dims))}
    for d, (_, r) in zip(dims, df.iterrows()):
        c = colours[d]
        ax.plot(r["bytes/doc"], r["nDCG@10"], marker=MARKERS.get(r["vectors"], "o"), ls="none", markersize=7,
                color=c, markerfacecolor=c if r["dtype"] == "int8" else "white")
    for d, c in colours.items():
        ax.plot([], [], color=c, marker="o", ls="none", label=d)
    for kind, m in MARKERS.items():
        if kind in set(df["vectors"]):
            ax.plot([], [], color="black", marker=m, ls="none", markerfacecolor="white", label=kind)
    ax.plot([], [], color="black", marker="o", ls="none", label="filled: int8, hollow: fp32")
    if mark is not None and mark in set(df["index"]):
        r = df.set_index("index").loc[mark]
        ax.plot(r["bytes/doc"], r["nDCG@10"], marker="o", markersize=16, ls="none", markerfacecolor="none",
                color="black", label=f"claim: {mark}")
    ax.set_xscale("log")
    ax.set_xlabel("index bytes per document (log)")
    ax.set_ylabel("nDCG@10 after MaxSim re-ranking")
    ax.legend(fontsize="x-small", frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncols=3)
    return fig


SHORT = {"ours-fp32": "effnb MaxSim fp32", "ours-int8": "effnb MaxSim int8", "padded": "torch padded MaxSim",
         "exact": "torch exact", "faiss-flat": "faiss flat", "faiss-hnsw": "faiss HNSW", "bm25": "BM25"}


def plot_pareto(df):
    """Quality against time per query, one point per row of ``df`` (columns provider, label, ms, nDCG@10;
    the providers of :func:`effnb.retrieval.search.rerank_race`); the upper left is better. Labels are
    short names placed so they do not overlap."""
    fig, ax = plots.figure(7.0, 4.0)
    points = [(SHORT.get(r["provider"], r["label"]), r["ms"], r["nDCG@10"], r["provider"].startswith("ours"))
              for _, r in df.iterrows()]
    for label, ms, q, ours in points:
        ax.plot(ms, q, marker="*" if ours else "o", markersize=12 if ours else 7, ls="none",
                color="C3" if ours else "C0")
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("ms per query (log; query encoding excluded)")
    ax.set_ylabel("nDCG@10")
    ax.plot([], [], marker="*", color="C3", ls="none", label="single-vector top-k + MaxSim re-rank (ours)")
    ax.plot([], [], marker="o", color="C0", ls="none", label="peers (padded MaxSim: same pipeline in torch)")
    legend = ax.legend(fontsize="small", frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=1)
    plots.place_labels(ax, [(ms, q, label) for label, ms, q, _ in points], avoid=[legend],
                       dots=[(ms, q) for _, ms, q, _ in points])
    return fig


def plot_training(histories: dict, ylabel: str = "loss", smooth: int = 10):
    """One curve per run (name -> per-step losses), a running mean over ``smooth`` steps, log y: each
    loss on its own scale, so the shapes are what to compare."""
    fig, axes = plots.figure(7.0, 3.2, ncols=len(histories))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, (name, losses) in zip(axes, histories.items()):
        k = max(1, min(smooth, len(losses) // 5 or 1))
        run = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        ax.plot(losses, color="C0", alpha=0.3, lw=0.8)
        ax.plot(run, color="C0")
        ax.set_yscale("log")
        ax.set_title(name, fontsize="small")
        ax.set_xlabel("step")
    axes[0].set_ylabel(ylabel)
    return fig
