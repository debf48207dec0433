"""Chapter 10's figures: decode attention time against context, and what each cache policy holds
against what it loses."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import plots


def plot_decode_race(rows: list[dict], ax=None):
    """Milliseconds of one token's attention over every layer's cache against the context."""
    plots.style()
    if ax is None:
        _, ax = plots.figure(6.4, 4.0)
    df = pd.DataFrame(rows)
    for impl, t in df.groupby("impl", sort=False):
        t = t.sort_values("context")
        ours = impl.startswith("effnb")
        ax.plot(t["context"], 1e3 * t["seconds"], "o-" if ours else "s--", lw=2 if ours else 1.3, label=impl)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens in the KV cache")
    ax.set_ylabel("ms per decode step, attention of all layers (log)")
    ax.legend(fontsize=8)
    return ax


def plot_policies(rows: list[dict], axes=None):
    """Left: KV-cache MiB against perplexity at the longest context, one point per policy. Right:
    perplexity against context, one line per policy."""
    plots.style()
    if axes is None:
        _, axes = plots.figure(4.2, 3.8, ncols=2)
    df = pd.DataFrame(rows)
    top = df[df["context"] == df["context"].max()]
    points = []
    for _, r in top.iterrows():
        axes[0].plot(r["kv_bytes"] / 2**20, r["ppl"], "o")
        points.append((r["kv_bytes"] / 2**20, r["ppl"], r["policy"].split(":")[0]))
    plots.place_labels(axes[0], points)
    axes[0].set_xlabel(f"KV cache MiB at {int(top['context'].iloc[0]):,} tokens")
    axes[0].set_ylabel("perplexity of the scored tokens")
    for policy, t in df.groupby("policy", sort=False):
        t = t.sort_values("context")
        axes[1].plot(t["context"], t["ppl"], "o-" if policy == "full" else ".--", label=policy.split(":")[0])
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("tokens of context")
    axes[1].set_ylabel("perplexity")
    axes[1].legend(fontsize=7)
    if np.isfinite(df["ppl"]).all() and df["ppl"].max() > 4 * df["ppl"].min():
        for ax in axes:
            ax.set_yscale("log")
    return axes
