"""The chapter's workloads (GEMM, GEMV, 1x1 and depthwise 3x3 convolution, STREAM triad), timed.

Each :class:`Workload` carries its paper cost (:mod:`.counts`) and a factory
for fresh inputs. :func:`measure_workloads` places a heterogeneous list of them
against the machine's roofline; :func:`conv_pairs` races the two convolution
layers of a MobileNet-style block on the same activations, as an
:class:`effnb.perf.Benchmark`, so that their GFLOP/s ratio comes from one sitting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .. import bench, perf, roofline
from .counts import FP32, conv2d_counts, gemm_counts, gemv_counts, positive_ints, triad_counts


@dataclass(frozen=True)
class Workload:
    """One kernel at one size: its paper cost and a factory for fresh inputs.

    ``make()`` allocates new inputs and returns a no-argument callable that
    runs the kernel once (the shape :func:`effnb.bench.bench` expects).
    ``cold`` asks the benchmark to rotate through copies bigger than the
    last-level cache, as a decode pass streaming its weights does.
    """
    family: str
    size: str
    flops: float
    bytes: float
    make: Callable[[], Callable[[], Any]]
    cold: bool = False

    @property
    def intensity(self) -> float:
        """FLOPs per compulsory byte: where the kernel sits on the roofline's x axis."""
        return self.flops / self.bytes


def torch_backend() -> str:
    """What runs every workload here: torch's own kernels on the ISA path its dispatcher chose (``torch-avx512``)."""
    import torch
    return f"torch-{torch.backends.cpu.get_cpu_capability().lower()}"


def gemm(n: int) -> Workload:
    """Square fp32 matrix product (torch.mm): the compute-bound end of the roofline."""
    import torch
    flops, nbytes = gemm_counts(n, n, n)

    def make():
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        return lambda: torch.mm(a, b, out=out)
    return Workload("gemm", f"{n}", flops, nbytes, make)


def gemv(n: int) -> Workload:
    """Square fp32 matrix-vector product, cold: every call reads a different weight matrix."""
    import torch
    flops, nbytes = gemv_counts(n, n)

    def make():
        w, x = torch.randn(n, n), torch.randn(n)
        out = torch.empty(n)
        return lambda: torch.mv(w, x, out=out)
    return Workload("gemv", f"{n}", flops, nbytes, make, cold=True)


def conv(batch: int, channels: int, hw: int, *, depthwise: bool) -> Workload:
    """A 1x1 dense or a 3x3 depthwise convolution (torch conv2d, NCHW fp32) on one activation shape.

    Both read and write the same activation tensor, so their time compares
    the two layers a MobileNet-style block alternates between.
    """
    import torch
    import torch.nn.functional as F
    kernel, groups = (3, channels) if depthwise else (1, 1)
    flops, nbytes = conv2d_counts(batch, channels, channels, hw, hw, kernel, groups)

    def make():
        x = torch.randn(batch, channels, hw, hw)
        w = torch.randn(channels, channels // groups, kernel, kernel)
        pad = kernel // 2

        def run():
            with torch.inference_mode():
                return F.conv2d(x, w, padding=pad, groups=groups)
        return run
    family = "dwconv3x3" if depthwise else "conv1x1"
    return Workload(family, f"{batch}x{channels}x{hw}x{hw}", flops, nbytes, make)


def triad(mib: int) -> Workload:
    """STREAM triad in torch over three fp32 arrays of ``mib`` MiB each (as effnb.roofline sizes its probes)."""
    import torch
    positive_ints(mib=mib)
    n = (mib << 20) // FP32
    flops, nbytes = triad_counts(n)

    def make():
        a, b, c = torch.empty(n), torch.randn(n), torch.randn(n)
        return lambda: torch.add(b, c, alpha=3.0, out=a)
    return Workload("triad", f"3x{mib} MiB", flops, nbytes, make)


def _size_list(name: str, seq) -> None:
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Iterable):
        raise ValueError(f"{name} must be a list of positive whole numbers, got {seq!r}")
    for v in seq:
        positive_ints(**{name: v})


def suite(*, gemm_sizes: Sequence[int] = (), gemv_sizes: Sequence[int] = (), conv_channels: Sequence[int] = (),
          conv_hw: int = 28, conv_batch: int = 1, stream_mib: int | None = None) -> list[Workload]:
    """The chapter's workloads; every size is checked before anything is allocated."""
    for name, seq in (("gemm_sizes", gemm_sizes), ("gemv_sizes", gemv_sizes), ("conv_channels", conv_channels)):
        _size_list(name, seq)
    positive_ints(conv_hw=conv_hw, conv_batch=conv_batch)
    if stream_mib is not None:
        positive_ints(stream_mib=stream_mib)
    out = [gemm(n) for n in gemm_sizes] + [gemv(n) for n in gemv_sizes]
    for c in conv_channels:
        out += [conv(conv_batch, c, conv_hw, depthwise=False), conv(conv_batch, c, conv_hw, depthwise=True)]
    if stream_mib is not None:
        out.append(triad(stream_mib))
    return out


def measure_workloads(workloads: Sequence[Workload], limits: dict, *, repeats: int = 5, warmup: int = 2,
                      rounds: int = 1, progress: bool = False):
    """Time every workload (effnb.bench) and place it against the machine's limits.

    ``rounds`` interleaved sweeps over all workloads; each keeps its fastest
    round (load from other processes only ever slows a round, and a burst of
    it then hits different workloads in different rounds, not one workload's
    every sample). Returns one row per workload: the bench columns (median and
    interquartile band) plus flops, bytes, intensity, the backend that ran it,
    rounds, and from :func:`effnb.roofline.bound` the binding limit and the
    percentage of it achieved (:func:`place`). Not a :class:`effnb.perf.Benchmark`:
    the workloads are different kernels at one size each, with no contenders to race.
    """
    import pandas as pd

    if not workloads:
        raise ValueError("no workloads to measure: pass at least one size")
    positive_ints(rounds=rounds)
    backend = torch_backend()
    frames = []
    for r in range(rounds):
        for w in workloads:
            df = bench.bench({w.family: (lambda _s, w=w: w.make())}, [w.size],
                             flops=lambda _s, w=w: w.flops, bytes_moved=lambda _s, w=w: w.bytes,
                             cold=w.cold, repeats=repeats, warmup=warmup, progress=progress, desc=w.family)
            df = df.rename(columns={"provider": "family"})
            df["name"] = f"{w.family} {w.size}"
            df["flops"], df["bytes"], df["intensity"] = w.flops, w.bytes, w.intensity
            df["backend"], df["round"] = backend, r
            frames.append(df)
    every = pd.concat(frames, ignore_index=True)
    best = every.loc[every.groupby("name", sort=False)["median_s"].idxmin()].reset_index(drop=True)
    best["rounds"] = rounds
    return place(best, limits)


def place(measured, limits: dict):
    """(Re)compute each row's binding roof and % of it (:func:`effnb.roofline.bound`) under ``limits``."""
    out = measured.copy()
    bounds = [roofline.bound(float(r["flops"]), float(r["bytes"]), float(r["median_s"]), limits)
              for _, r in out.iterrows()]
    out["binding"] = [b["binding"] for b in bounds]
    out["pct_of_limit"] = [float(b["pct_of_limit"]) for b in bounds]
    return out


def conv_benchmark(channels: Sequence[int], hw: int, batch: int = 1, *, rounds: int = 5,
                   repeats: int = 3) -> perf.Benchmark:
    """The 1x1 and the depthwise 3x3 convolution at each channel count, as one benchmark spec.

    x is the channel count (labelled by the activation shape); each provider
    counts its own FLOPs, so GFLOP/s compares the two layers' computational
    efficiency. The depthwise layer is the subject (``ours``), the 1x1 the baseline.
    """
    positive_ints(hw=hw, batch=batch, rounds=rounds)
    if repeats < 3:
        raise ValueError(f"repeats={repeats}: pass repeats >= 3")
    if isinstance(channels, (str, bytes)) or not len(channels):
        raise ValueError(f"channels must be a non-empty list of channel counts, got {channels!r}")
    _size_list("channels", channels)
    layers = {c: (conv(batch, c, hw, depthwise=False), conv(batch, c, hw, depthwise=True)) for c in channels}
    backend = torch_backend()

    def provider(i: int, key: str, label: str) -> perf.Provider:
        return perf.Provider(key, label, lambda c: layers[c][i].make(), ours=i == 1, backend=backend,
                             flops=lambda c: layers[c][i].flops, bytes_moved=lambda c: layers[c][i].bytes)
    return perf.Benchmark(name=f"1x1 vs depthwise 3x3 conv, batch {batch}, {hw}x{hw} activations", x="channels",
                          x_values=list(layers), x_label=lambda c: layers[c][0].size,
                          providers=[provider(0, "conv1x1", "1x1 conv"),
                                     provider(1, "dwconv3x3", "depthwise 3x3 conv")],
                          baseline="conv1x1", unit="GFLOP/s", repeats=repeats, rounds=rounds, warmup=1)


def conv_pairs(channels: Sequence[int], hw: int, batch: int = 1, *, rounds: int = 5, repeats: int = 3):
    """Depthwise 3x3 vs 1x1 conv GFLOP/s on the same activations, measured in interleaved rounds.

    Each round times every shape's 1x1 and then its depthwise layer
    (:func:`conv_benchmark`), so both see the same state of a shared machine
    and their ratio, the depthwise layer's computational efficiency relative
    to the dense one, is not skewed by load that came and went between them.
    Returns one row per (shape, round): size, round, conv1x1_gflops,
    dwconv3x3_gflops, fraction, conv1x1_s, dwconv3x3_s (median seconds per
    call), conv1x1_flops, backend.
    """
    import pandas as pd

    spec = conv_benchmark(channels, hw, batch, rounds=rounds, repeats=repeats)
    every = spec.run(progress=False).rounds
    by_label = {spec.x_label(c): c for c in spec.x_values}
    rows = []
    for size in every["x"].unique():
        for r in range(rounds):
            at = every[(every["x"] == size) & (every["round"] == r)].set_index("provider")
            gd, gw = float(at.loc["conv1x1", "gflops"]), float(at.loc["dwconv3x3", "gflops"])
            c = by_label[size]
            rows.append({"size": size, "round": r, "conv1x1_gflops": gd, "dwconv3x3_gflops": gw,
                         "fraction": gw / gd, "conv1x1_s": float(at.loc["conv1x1", "median_s"]),
                         "dwconv3x3_s": float(at.loc["dwconv3x3", "median_s"]),
                         "conv1x1_flops": spec.providers[0].flops(c), "backend": spec.providers[1].backend})
    return pd.DataFrame(rows)


def depthwise_fraction(pairs):
    """Per activation shape, the median over rounds of :func:`conv_pairs` (GFLOP/s and their ratio)."""
    need = {"size", "conv1x1_gflops", "dwconv3x3_gflops", "fraction"}
    if not need <= set(pairs.columns):
        raise ValueError(f"expected the frame from conv_pairs() with columns {sorted(need)}")
    by_shape = pairs.groupby("size", sort=False)
    cols = [c for c in ("conv1x1_gflops", "dwconv3x3_gflops", "fraction", "conv1x1_s", "dwconv3x3_s",
                        "conv1x1_flops") if c in pairs]
    out = by_shape[cols].median()
    if "backend" in pairs:
        out["backend"] = by_shape["backend"].first()
    return out


__all__ = ["Workload", "torch_backend", "gemm", "gemv", "conv", "triad", "suite", "measure_workloads", "place",
           "conv_benchmark", "conv_pairs", "depthwise_fraction"]
