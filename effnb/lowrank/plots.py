"""Chapter 05's figures: singular-value energy, the LRT/Linformer race, the pruning path, recovery."""
from __future__ import annotations

import math

from .. import plots


def plot_spectrum(spec, energies=(0.9, 0.95)):
    """Share of sum(S^2) kept against the rank (as a fraction of the full rank), one thin line per
    matrix, coloured by kind: how far from low-rank a pretrained layer is."""
    fig, ax = plots.figure(7.0, 3.8)
    colours = dict(zip(sorted(spec["module"].unique()), ["C0", "C1", "C2", "C3", "C4", "C5"]))
    for (layer, module), g in spec.groupby(["layer", "module"]):
        ax.plot(g["rank fraction"], g["energy"], color=colours[module], lw=0.8, alpha=0.7,
                label=module if layer == spec["layer"].min() else None)
    for e in energies:
        ax.axhline(e, color="grey", ls=":", lw=1)
    ax.plot([0, 1], [0, 1], color="black", ls="--", lw=0.8, label="no structure (flat spectrum)")
    ax.set_xlabel("rank kept / full rank")
    ax.set_ylabel("share of sum of squared singular values")
    ax.legend(fontsize="small", frameon=False, loc="lower right")
    return fig


def plot_crossover(result, marks: dict):
    """Time of the encoder stack against sequence length (log-log), with vertical lines at ``marks``
    (label -> n: the measured and counted crossovers, the paper's 512)."""
    fig, ax = plots.figure(7.0, 4.0)
    df = result.df
    for i, key in enumerate(result.keys()):
        rows = df[df["provider"] == key].sort_values("size")
        ax.plot(rows["size"], 1e3 * rows["median_s"], marker="o", ls="-" if rows["ours"].iloc[0] else "--",
                color=f"C{i}", label=rows["label"].iloc[0])
    for j, (label, n) in enumerate(marks.items()):
        if n is not None and math.isfinite(n):
            ax.axvline(n, color=f"C{j + 5}", ls=":", lw=1.2, label=f"{label}: {n:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n (tokens)")
    ax.set_ylabel("ms per forward of the 6-layer stack")
    ax.legend(fontsize="small", frameon=False)
    return fig


def plot_pruning(steps, base: float, tolerance: float, base_mb: float, extra: dict | None = None):
    """Validation accuracy against the encoder layers' size along the pruning schedule, with the
    tolerance band under the unpruned model; ``extra`` adds labelled points (name -> (MB, accuracy))."""
    fig, ax = plots.figure(7.0, 3.8)
    xs = [base_mb] + [4 * s.params / 1e6 for s in steps]
    ys = [base] + [s.metric for s in steps]
    ax.plot(xs, ys, marker="o", color="C0", label="pruned, probe refitted (no training)")
    for s in steps:
        ax.annotate(f"{s.head_frac:.0%} heads\n{s.neuron_frac:.0%} neurons", (4 * s.params / 1e6, s.metric),
                    fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.axhspan(base - tolerance, base + tolerance, color="grey", alpha=0.15, label=f"unpruned +/- {tolerance:g} point")
    for i, (name, (mb, acc)) in enumerate((extra or {}).items()):
        ax.plot([mb], [acc], marker="*", markersize=12, ls="none", color=f"C{i + 1}", label=name)
    ax.set_xlabel("encoder layers (MB, fp32)")
    ax.set_ylabel("validation accuracy (%)")
    ax.invert_xaxis()
    ax.legend(fontsize="small", frameon=False)
    return fig


def plot_recovery(histories: dict):
    """Recovery loss (1 - cosine to the unpruned encoder's embedding) per step, one line per model."""
    fig, ax = plots.figure(7.0, 3.4)
    for name, losses in histories.items():
        ax.plot(range(1, len(losses) + 1), losses, lw=1, label=name)
    ax.set_xlabel("optimizer step (batch of sentences)")
    ax.set_ylabel("1 - cosine to the original embedding")
    ax.set_yscale("log")
    ax.legend(fontsize="small", frameon=False)
    return fig
