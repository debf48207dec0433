"""Declarative benchmarks, in the spirit of Triton's ``perf_report``.

A chapter states WHAT to race, once: the x values, the providers (a stable key,
a label for readers, a factory, the backend that runs it, ours or a peer), cold
or warm inputs, the work per call (bytes, flops) and the baseline. ``run()``
measures every provider at every x in one sitting (at each x the providers
take their samples in turns, so a burst of load meets them all; ``rounds``
sweeps over the x values, each provider keeps its fastest: load only ever
slows a run) and gives
a :class:`Result` whose ``table()`` has, for each of ours, the ratio to the
baseline and to the FASTEST peer at that x (named), % of the machine's limit
and the backend; ``plot()`` draws it with the machine in the caption.

    spec = perf.Benchmark(
        name="cold GEMV", x="M", x_values=[1, 16, 64],
        providers=[perf.Provider("ours", "ours W4A8", make_ours, ours=True, backend="cpp-avx2"),
                   perf.Provider("fp32", "torch F.linear", make_fp32, backend="torch")],
        baseline="fp32", cold=True, bytes_moved=lambda x: ..., flops=lambda x: ...)
    res = spec.run()
    res.table(limits)      # ratios to baseline and fastest peer, % of roof
    res.plot(roof=limits)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import bench

METRICS = {"GB/s": "gbps", "GFLOP/s": "gflops", "s": "median_s"}


@dataclass
class Provider:
    """One contender: ``make(x)`` builds fresh inputs and returns a no-argument callable."""
    key: str
    label: str
    make: Callable[[Any], Callable[[], Any]]
    ours: bool = False
    backend: str = "torch"        # cpp-avx512 / cpp-avx2 / cpp-scalar / numba / torch-fallback / a library's name
    only: Callable[[Any], bool] | None = None   # x values this provider applies to (default: all)
    bytes_moved: Callable[[Any], float] | None = None  # this provider's own byte count (default: the spec's)
    flops: Callable[[Any], float] | None = None        # this provider's own flop count (default: the spec's)
    # the limits key of this provider's compute roof: an int8 kernel is held to an int8 roof, not to
    # fp32 FMA (% of roof is NaN where the limits lack the key: no roof was measured for that step)
    compute_roof: str = "peak_gflops"


@dataclass
class Benchmark:
    name: str
    x: str
    x_values: Sequence
    providers: list[Provider]
    baseline: str
    cold: bool = False
    bytes_moved: Callable[[Any], float] | None = None
    flops: Callable[[Any], float] | None = None
    working_set: Callable[[Any], int] | None = None
    unit: str = "GB/s"
    repeats: int = 5
    rounds: int = 1
    warmup: int = 2
    x_label: Callable[[Any], str] = str
    notes: list = field(default_factory=list)

    def __post_init__(self):
        keys = [p.key for p in self.providers]
        if len(set(keys)) != len(keys):
            raise ValueError(f"benchmark {self.name!r}: provider keys must be unique, got {keys}")
        if self.baseline not in keys:
            raise ValueError(f"benchmark {self.name!r}: baseline {self.baseline!r} is not a provider; have {keys}")
        if not any(p.ours for p in self.providers):
            raise ValueError(f"benchmark {self.name!r}: no provider is marked ours=True")
        if self.unit not in METRICS:
            raise ValueError(f"unit {self.unit!r} must be one of {sorted(METRICS)}")
        need = {"GB/s": "bytes_moved", "GFLOP/s": "flops"}.get(self.unit)
        if need and getattr(self, need) is None and any(getattr(p, need) is None for p in self.providers):
            raise ValueError(f"unit {self.unit} needs {need}= on the benchmark or on every provider")
        if isinstance(self.rounds, bool) or self.rounds < 1:
            raise ValueError(f"rounds={self.rounds!r}: pass a whole number >= 1")

    def run(self, progress: bool = True) -> "Result":
        """Measure every provider at every x, samples taken in turns, ``rounds`` sweeps; each keeps its fastest."""
        import pandas as pd
        from .plots import quiet_tqdm
        tqdm = quiet_tqdm()
        frames = []
        bar = tqdm(total=self.rounds * len(self.x_values), desc=self.name, disable=not progress, leave=False)
        for r in range(self.rounds):
            for x in self.x_values:
                here = [p for p in self.providers if p.only is None or p.only(x)]
                df = bench.bench({p.key: p.make for p in here}, [x],
                                 bytes_moved={p.key: p.bytes_moved or self.bytes_moved for p in here},
                                 flops={p.key: p.flops or self.flops for p in here}, cold=self.cold,
                                 working_set=self.working_set, warmup=self.warmup, repeats=self.repeats,
                                 progress=False)
                df["round"] = r
                frames.append(df)
                bar.update(1)
        bar.close()
        every = pd.concat(frames, ignore_index=True)
        every["x"] = every["size"].map(self.x_label)
        best = every.loc[every.groupby(["provider", "x"], sort=False)["median_s"].idxmin()].reset_index(drop=True)
        by_key = {p.key: p for p in self.providers}
        best["label"] = best["provider"].map(lambda k: by_key[k].label)
        best["backend"] = best["provider"].map(lambda k: by_key[k].backend)
        best["ours"] = best["provider"].map(lambda k: by_key[k].ours)
        best["rounds"] = self.rounds
        return Result(self, best, every)


@dataclass
class Result:
    spec: Benchmark
    df: Any        # one row per provider and x: the fastest round
    rounds: Any    # every round's row

    def time(self, key: str, x=None):
        """Median seconds of provider ``key`` (a Series by x label, or one number at ``x``)."""
        rows = self.df[self.df["provider"] == key].set_index("x")["median_s"]
        if rows.empty:
            raise KeyError(f"provider {key!r} not in benchmark {self.spec.name!r}; have {self.keys()}")
        return float(rows[self.spec.x_label(x)]) if x is not None else rows

    def keys(self) -> list[str]:
        return list(dict.fromkeys(self.df["provider"]))

    def ratio(self, of: str, over: str):
        """Speed-up of ``of`` over ``over`` at each x (time of ``over`` / time of ``of``); same run, same state."""
        return (self.time(over) / self.time(of)).dropna()

    def fastest_peer(self):
        """Per x label: the fastest provider that is not ours (key, label, seconds)."""
        peers = self.df[~self.df["ours"]]
        i = peers.groupby("x", sort=False)["median_s"].idxmin()
        return peers.loc[i, ["x", "provider", "label", "backend", "median_s"]].set_index("x")

    def table(self, limits: dict | None = None, bandwidth: str = "read_gbps"):
        """For each of ours at each x: time, ratio to the baseline and to the fastest peer, % of the roof."""
        import pandas as pd
        fast = self.fastest_peer()
        base = self.time(self.spec.baseline)
        rows = []
        for _, r in self.df[self.df["ours"]].iterrows():
            peer = fast.loc[r["x"]] if r["x"] in fast.index else None
            row = {self.spec.x: r["x"], "ours": r["label"], "backend": r["backend"], "ms": 1e3 * r["median_s"],
                   f"vs {self._label(self.spec.baseline)}": base.get(r["x"], math.nan) / r["median_s"],
                   "fastest peer": peer["label"] if peer is not None else "-",
                   "vs fastest peer": peer["median_s"] / r["median_s"] if peer is not None else math.nan}
            if limits is not None:
                row["% of roof"] = self._pct(r, limits, bandwidth)
            rows.append(row)
        return pd.DataFrame(rows)

    def rates(self, bandwidth: str = "read_gbps", where: str = "") -> list[tuple[str, float, str]]:
        """Every row's rates next to the roof each must stay under, for :func:`settle_rates`: GB/s
        against ``bandwidth``, GFLOP/s (GOP/s for integer kernels) against the provider's compute roof."""
        roof = {p.key: p.compute_roof for p in self.spec.providers}
        out = []
        for _, r in self.df.iterrows():
            who = f"{r['label']} at {self.spec.x} {r['x']}{where}"
            for key, col in ((bandwidth, "gbps"), (roof[r["provider"]], "gflops")):
                if col in r and r[col] == r[col]:
                    out.append((key, float(r[col]), who))
        return out

    def _label(self, key: str) -> str:
        return next(p.label for p in self.spec.providers if p.key == key)

    def _pct(self, row, limits: dict, bandwidth: str) -> float:
        from . import roofline
        p = next(q for q in self.spec.providers if q.key == row["provider"])
        count_f, count_b = p.flops or self.spec.flops, p.bytes_moved or self.spec.bytes_moved
        fl = count_f(row["size"]) if count_f else 0.0
        by = count_b(row["size"]) if count_b else 0.0
        if (fl == 0 and by == 0) or limits.get(p.compute_roof) is None:
            return math.nan
        return roofline.bound(fl, by, row["median_s"], {**limits, "peak_gflops": limits[p.compute_roof]},
                              bandwidth)["pct_of_limit"]

    def plot(self, ax=None, roof: dict | None = None, logx: bool | None = None, logy: bool = False,
             bandwidth: str = "read_gbps"):
        """One line per provider (ours solid, peers dashed), the quartile band shaded, the roof dashed."""
        from . import plots
        plots.style()
        if ax is None:
            _, ax = plots.figure()
        col = METRICS[self.spec.unit]
        numeric = all(isinstance(v, (int, float)) for v in self.spec.x_values)
        xs = {self.spec.x_label(v): (v if numeric else i) for i, v in enumerate(self.spec.x_values)}
        for key in self.keys():
            g = self.df[self.df["provider"] == key]
            x = g["x"].map(xs)
            line, = ax.plot(x, g[col], marker="o", linestyle="-" if g["ours"].iloc[0] else "--",
                            label=g["label"].iloc[0])
            if col + "_lo" in g:
                ax.fill_between(x, g[col + "_lo"], g[col + "_hi"], color=line.get_color(), alpha=0.15)
        if roof is not None and self.spec.unit in ("GB/s", "GFLOP/s"):
            limit = roof[bandwidth] if self.spec.unit == "GB/s" else roof["peak_gflops"]
            ax.axhline(limit, color="k", linestyle=":", linewidth=1,
                       label=f"machine limit ({limit:.0f} {self.spec.unit})")
        if not numeric:
            ax.set_xticks(list(xs.values()), list(xs.keys()), rotation=20)
        elif logx if logx is not None else len(self.spec.x_values) > 2:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(self.spec.x)
        ax.set_ylabel(self.spec.unit)
        backends = sorted({b for b in self.df.loc[self.df["ours"], "backend"]})
        plots.caption(ax, self.spec.name, backend="ours: " + ", ".join(backends))
        ax.legend(fontsize="x-small", loc="best")
        return ax


# the roofs a measured rate can be held to: limits key -> (name in prose, unit)
ROOFS = {"read_gbps": ("read", "GB/s"), "peak_gflops": ("compute", "GFLOP/s"), "int8_gops": ("int8", "GOP/s")}


def _above(rates, limits: dict) -> list[tuple[str, float, str]]:
    """The rates that beat their roof (a roof missing from ``limits`` holds nothing)."""
    return [(k, r, w) for k, r, w in rates if limits.get(k) and r == r and r > float(limits[k])]


def settle_rates(rates, limits: dict, reprobe) -> tuple[dict, str, dict]:
    """Never report a kernel above 100% of a roof: a kernel that beats a roof proves the roof wrong.

    ``rates`` lists ``(limits key, measured rate, who)``, e.g. ``("read_gbps", 71.4, "fbgemm at M=1")``.
    When some rate beats its roof, ``reprobe()`` (e.g. ``roofline.machine(..., refresh=True)``) runs once and
    each roof becomes the better of the old and the new probe (a roof never comes down: a lower
    probe only saw a busier machine). A rate that still beats its roof lifts that roof to itself
    (the kernel is then the better probe). Returns ``(limits, phrase, info)``: the phrase says what
    happened, ``info`` who ran over, whether a probe was taken and which roofs were lifted to what.
    """
    rates = [(k, float(r), str(w)) for k, r, w in rates]
    over = _above(rates, limits)
    info = {"over": list(dict.fromkeys(w for _, _, w in over)), "reprobed": False, "lifted": {}}
    if not over:
        return dict(limits), "No kernel ran above its roof: the probes bound every measurement of this run.", info
    first = (f"The first probe came out too low, so a roof was wrong: {', '.join(info['over'])} ran above it "
             f"(up to {max(100.0 * r / float(limits[k]) for k, r, _ in over):.0f}%)")
    probe = dict(reprobe())
    info["reprobed"], info["probe"] = True, probe
    keys = {k for k, _, _ in rates} | {"read_gbps", "peak_gflops"}
    limits = {**limits, **probe, **{k: max(float(limits[k]), float(probe[k])) for k in keys
                                    if limits.get(k) is not None and probe.get(k) is not None}}
    for key, rate, who in sorted(_above(rates, limits), key=lambda a: a[1]):   # the fastest per roof last
        limits[key] = rate
        info["lifted"][key] = (rate, who)
    count = limits.get("probe_count", "?")
    if not info["lifted"]:
        return limits, (f"{first}; the machine was probed again (best of {count} probes now) and the new roof "
                        "bounds every kernel."), info
    lifted = "; ".join(f"{ROOFS.get(k, (k, ''))[0]} roof {v:.1f} {ROOFS.get(k, ('', ''))[1]} from {who}"
                       for k, (v, who) in info["lifted"].items())
    return limits, (f"{first}. A new probe (best of {count} probes now) still stayed below some of them, so "
                    f"the chapter takes the fastest kernel as the roof ({lifted}): the probe underestimates "
                    "this machine, and that kernel sits at 100%."), info


def settle(results, limits: dict, reprobe=None, *, threads: int | None = None, bandwidth: str = "read_gbps"):
    """:func:`settle_rates` over one :class:`Result` or a dict of them (name -> Result, e.g.
    one per layer shape): no row may end above its roof. ``reprobe`` defaults to a fresh
    :func:`effnb.roofline.machine` probe at ``threads``; returns ``(limits, phrase, info)``."""
    if reprobe is None:
        from . import roofline

        def reprobe():
            return roofline.machine(threads, refresh=True, progress=False)
    named = results.items() if isinstance(results, dict) else [("", results)]
    rates = [rate for name, res in named for rate in res.rates(bandwidth, f", {name}" if name else "")]
    return settle_rates(rates, limits, reprobe)
