"""Chapter 09's figures: time against length on log-log axes, and a decode step split in two."""
from __future__ import annotations

import numpy as np

from .. import plots
from .experiments import loglog_slope


def plot_scaling(result, ax=None):
    """Milliseconds per call against tokens, one line per provider, its fitted exponent in the legend."""
    plots.style()
    if ax is None:
        _, ax = plots.figure(6.4, 4.0)
    for key in result.keys():
        t = result.df[result.df["provider"] == key].sort_values("size")
        n, s = t["size"].to_numpy(float), t["median_s"].to_numpy(float)
        slope = f", n^{loglog_slope(n, s):.2f}" if len(n) >= 2 else ""
        ours = bool(t["ours"].iloc[0])
        ax.plot(n, 1e3 * s, "o-" if ours else "s--", lw=2 if ours else 1.3, label=f"{t['label'].iloc[0]}{slope}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens n")
    ax.set_ylabel("ms per call (log)")
    ax.legend(fontsize=8)
    return ax


def plot_decode_split(rows: list[dict], by_bytes: float, measured: dict, ax=None):
    """One decode step of SmolLM2 against context: its attention and the rest, stacked, with the
    context where the two are equal by the byte count and as measured (``{label: context}``)."""
    plots.style()
    if ax is None:
        _, ax = plots.figure(6.4, 4.0)
    n = np.array([r["context"] for r in rows], float)
    att = np.array([1e3 * r["attention_s"] for r in rows])
    rest = np.array([1e3 * max(r["rest_s"], 0.0) for r in rows])
    ax.stackplot(n, rest, att, labels=["weights and the rest", "attention over the cache"], alpha=0.75)
    top = float((att + rest).max())
    lines = [(by_bytes, "--", "bytes equal"), *((x, ":", f"times equal, {k}") for k, x in measured.items())]
    for i, (x, style, text) in enumerate(lines):
        if np.isfinite(x) and 0 < x < 1.5 * n.max():
            ax.axvline(x, color="k", ls=style, lw=1)
            ax.text(x, (0.95 - 0.14 * i) * top, f" {text}\n n = {x:,.0f}", fontsize=8, va="top")
    ax.set_xlabel("tokens in the KV cache")
    ax.set_ylabel("ms per decode step")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def plot_pamc(rows: list[dict], axes=None):
    """Seconds per training epoch and peak bytes of one step against nodes, pairwise vs PamC."""
    import pandas as pd
    plots.style()
    if axes is None:
        _, axes = plots.figure(3.7, 3.4, ncols=2)
    df = pd.DataFrame(rows)
    for loss, style in (("pairwise", "s--"), ("pamc", "o-")):
        t = df[df["loss"] == loss].sort_values("n")
        axes[0].plot(t["n"], 1e3 * t["sec_per_epoch"], style, label=loss)
        axes[1].plot(t["n"], t["peak_bytes"] / 2**20, style, label=loss)
    for ax, label in zip(axes, ("ms per training epoch", "peak MiB of one training step")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes in the k-NN graph")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    return axes
