"""Chapter 14's figures: what skipping neurons keeps, what each decode loop costs, the EAD curve and
the cascade's coverage against MACs."""
from __future__ import annotations

import math

from .. import plots

MODE_STYLE = {"griffin": ("C0", "o"), "cats": ("C3", "s"), "static": ("C7", "^")}


def plot_sparsity(df):
    """Teacher-forced agreement with the full model against the model's bytes per decode step, one line
    per way of choosing neurons (columns of :func:`experiments.sparsity_quality`)."""
    fig, ax = plots.figure(7.0, 4.0)
    for mode, g in df.groupby("mode", sort=False):
        colour, marker = MODE_STYLE.get(mode, ("C1", "o"))
        g = g.sort_values("model bytes %")
        ax.plot(g["model bytes %"], 100 * g["agreement"], marker=marker, color=colour, label=g["method"].iloc[0].split(",")[0])
        for _, r in g.iterrows():
            ax.annotate(f"{100 * r['keep']:.0f}%", (r["model bytes %"], 100 * r["agreement"]), fontsize="x-small",
                        xytext=(4, -10), textcoords="offset points", color=colour)
    ax.axhline(100, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("weight bytes read per decode step (% of the dense model)")
    ax.set_ylabel("agreement with the full model (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize="small", frameon=False, loc="lower right")
    return fig


def plot_decode(df):
    """Agreement with the full model's greedy text against ms per token for every decode loop of
    :func:`experiments.decode_race` (upper left is better)."""
    fig, ax = plots.figure(7.0, 4.0)
    points = []
    for i, r in df.iterrows():
        sirius = r["decode loop"].startswith("Sirius")
        ax.plot(r["ms/token"], 100 * r["agreement"], marker="*" if sirius else "o", markersize=12 if sirius else 8,
                ls="none", color="C3" if sirius else ("C0" if i == 0 else "C7"))
        points.append((r["ms/token"], 100 * r["agreement"], r["decode loop"].replace("Sirius on ", "Sirius ")
                       .replace(", tolerance", ", tol.")))
    plots.place_labels(ax, points)
    ax.margins(x=0.3, y=0.12)
    ax.set_xlabel("ms per generated token (batch 1, prefill included)")
    ax.set_ylabel("tokens equal to the full model's (%)")
    return fig


def plot_ead(curve, chosen: float | None = None, share: float = 0.5):
    """The mixed predictor's accuracy (% of the large model's) against the share of tokens the large
    model predicts, over thresholds; speculative decoding's point at the large model's quality, placed
    at its weight-byte cost; the budget ``share`` as a line and the chosen threshold ringed."""
    fig, ax = plots.figure(7.0, 4.0)
    ead = curve[curve["method"] == "ead"].sort_values("large_share")
    ax.plot(100 * ead["large_share"], ead["acc_pct_of_large"], marker="o", color="C0",
            label="EAD, next-token accuracy (x: share of tokens on the large model)")
    ax.plot(ead["cost_pct_of_large"], ead["acc_pct_of_large"], ls="--", color="C0", alpha=0.5,
            label="EAD against its weight-byte cost (% of the large model)")
    if "cost_pct_resumed" in ead:
        ax.plot(ead["cost_pct_resumed"], ead["acc_pct_of_large"], ls=":", color="C2",
                label="the same, large model resuming from the cut")
    for name, colour in (("small only", "C7"), ("large only", "black")):
        r = curve[curve["method"] == name].iloc[0]
        ax.plot(100 * r["large_share"], r["acc_pct_of_large"], marker="D", color=colour, ls="none", label=name)
    spec = curve[curve["method"] == "speculative"]
    if len(spec):
        ax.plot(spec["cost_pct_of_large"].iloc[0], 100.0, marker="*", markersize=14, color="C3", ls="none",
                label="greedy speculative decoding (exact), at its weight-byte cost")
    if chosen is not None and not math.isnan(chosen):
        r = ead.iloc[(ead["threshold"] - chosen).abs().argmin()]
        ax.plot(100 * r["large_share"], r["acc_pct_of_large"], marker="o", markersize=15, markerfacecolor="none",
                color="black", ls="none", label=f"threshold chosen on other text ({chosen:g} nats)")
    ax.axvline(100 * share, color="grey", ls=":", lw=0.8)
    ax.axhline(95, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("% of tokens on the large model (or % of its cost)")
    ax.set_ylabel("% of the large model's accuracy")
    ax.legend(fontsize="x-small", frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncols=2)
    return fig


def plot_cascades(df, studies: int = 1):
    """Coverage at the fixed risk against MACs per sample (relative to the larger single model) for the
    cascade at each window and the three fixed models."""
    fig, ax = plots.figure(7.0, 4.0)
    cas = df[df["model"] == "cascade"]
    for seed, g in cas.groupby("seed") if "seed" in cas else [(0, cas)]:
        g = g.sort_values("macs_vs_large")
        ax.plot(100 * g["macs_vs_large"], 100 * g["coverage"], marker="o", color="C0", alpha=0.9 if studies == 1 else 0.6,
                label="window-based cascade (one point per window)" if seed == min(cas.get("seed", [0])) else None)
    fixed = df[df["model"] != "cascade"]
    for i, (name, g) in enumerate(fixed.groupby(fixed["model"].str.replace(r" \(.*\)", "", regex=True), sort=False)):
        ax.plot(100 * g["macs_vs_large"], 100 * g["coverage"], marker="Ds^"[i % 3], ls="none", color=f"C{i + 1}",
                label=name)
    ax.set_xlabel("MACs per sample (% of the larger single model)")
    ax.set_ylabel("coverage at the fixed risk (%)")
    ax.legend(fontsize="small", frameon=False, loc="lower right")
    return fig
