"""effnb.roofline: the right roof binds, the machine record is cached, the probes run end to end."""
import json
import math
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest

from effnb import bench, cachesize, perf, provenance, roofline

matplotlib.use("Agg")

LIMITS = {"read_gbps": 20.0, "copy_gbps": 25.0, "triad_gbps": 22.0, "peak_gflops": 100.0,
          "hardware_id": "test-box", "threads": 2}   # ridge at 5 flop/byte


# ---------------------------------------------------------------- bound

def test_memory_bound_kernel():
    r = roofline.bound(flops=1e9, bytes=1e9, seconds=0.1, limits=LIMITS)  # 10 GB/s at 1 flop/B
    assert r["binding"] == "memory"
    assert r["intensity"] == pytest.approx(1.0) and r["gbps"] == pytest.approx(10.0)
    assert r["pct_of_limit"] == pytest.approx(50.0) and r["attainable_gflops"] == pytest.approx(20.0)
    assert r["ridge"] == pytest.approx(5.0)


def test_compute_bound_kernel():
    r = roofline.bound(flops=1e11, bytes=1e9, seconds=2.0, limits=LIMITS)  # 50 GFLOP/s at 100 flop/B
    assert r["binding"] == "compute" and r["gflops"] == pytest.approx(50.0)
    assert r["pct_of_limit"] == pytest.approx(50.0)


@pytest.mark.parametrize("intensity, binding", [(4.9, "memory"), (5.1, "compute")])
def test_binding_flips_at_the_ridge(intensity, binding):
    assert roofline.bound(intensity * 1e9, 1e9, 1.0, LIMITS)["binding"] == binding


def test_pure_data_movement_and_pure_compute():
    copy = roofline.bound(flops=0, bytes=2e9, seconds=0.1, limits=LIMITS, bandwidth="copy_gbps")
    assert copy["binding"] == "memory" and copy["pct_of_limit"] == pytest.approx(80.0)
    alu = roofline.bound(flops=1e9, bytes=0, seconds=0.1, limits=LIMITS)
    assert alu["binding"] == "compute" and math.isinf(alu["intensity"])


@pytest.mark.parametrize("kwargs, match", [
    ({"seconds": 0}, "seconds"), ({"bytes": -1}, "bytes"), ({"flops": float("nan")}, "flops"),
    ({"flops": 0, "bytes": 0}, "no flops and no bytes"), ({"limits": {"read_gbps": 1}}, "peak_gflops"),
])
def test_bound_rejects_bad_input(kwargs, match):
    args = dict(flops=1e9, bytes=1e9, seconds=1.0, limits=LIMITS) | kwargs
    with pytest.raises(ValueError, match=match):
        roofline.bound(**args)


def test_percent_of():
    assert roofline.percent_of(15, 20) == pytest.approx(75.0)
    with pytest.raises(ValueError):
        roofline.percent_of(1, 0)


def test_plot_has_roofs_points_and_machine():
    pts = pd.DataFrame({"name": ["gemv", "gemm", "copy"], "intensity": [0.5, 50.0, 0.0],
                        "gflops": [8.0, 70.0, 0.0]})
    ax = roofline.plot(LIMITS, pts)
    assert "test-box" in ax.get_title()
    labels = [t.get_text() for t in ax.texts]
    assert "gemv" in labels and "gemm" in labels  # zero-intensity points cannot sit on a log axis
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="columns"):
        roofline.plot(LIMITS, pd.DataFrame({"name": ["x"]}))


# ---------------------------------------------------------------- machine() cache

def _fake_probes(calls):
    def probe_bandwidth(threads=None, mib=256, repeats=15, progress=True, rounds=3):
        calls.append(threads)
        df = pd.DataFrame({"provider": ["numba read", "torch sum", "numpy copy", "cpp copy", "numba triad"],
                           "kernel": ["read", "read", "copy", "copy", "triad"],
                           "gbps": [30.0, 28.0, 31.0, 33.0, 25.0]})
        df.attrs["notes"] = []
        return df

    def gemm_frame(n=2048, threads=None, repeats=7, progress=False):
        return pd.DataFrame({"provider": ["torch gemm"], "kernel": ["gemm"], "gflops": [150.0]})
    return probe_bandwidth, gemm_frame


@pytest.fixture
def fake_machine(monkeypatch, tmp_path):
    """machine() over fake probes in an empty cache; no C++ family, so the GEMM is the compute roof."""
    monkeypatch.setenv("EFFNB_CACHE", str(tmp_path))
    calls = []
    bw, gemm = _fake_probes(calls)
    monkeypatch.setattr(roofline, "probe_bandwidth", bw)
    monkeypatch.setattr(roofline, "gemm_frame", gemm)
    monkeypatch.setattr(roofline, "fma_frame", lambda *a, **k: None)
    monkeypatch.setattr(roofline.bench, "Contention", _contention(0.0))  # a quiet machine unless a test says not
    return calls, bw


def _contention(cores):
    """A stand-in for bench.Contention that reports ``cores`` taken by other processes."""
    class Fake(bench.Contention):
        def __exit__(self, *exc):
            self.cores = cores
            return False
    return Fake


def test_machine_is_measured_once_then_cached(fake_machine, tmp_path):
    calls, bw = fake_machine
    m = roofline.machine(threads=1)
    assert not m["cached"] and len(calls) == 1
    assert (m["read_gbps"], m["copy_gbps"], m["triad_gbps"], m["peak_gflops"]) == (30.0, 33.0, 25.0, 150.0)
    assert m["copy_by"] == "cpp copy" and m["threads"] == 1 and m["hardware_id"] == provenance.hardware_id()
    assert len(m["probes"]) == 6
    path = roofline.cache_path(1)
    assert path.parent == tmp_path / "roofline" and json.loads(path.read_text())["taken"][0]["read_gbps"] == 30.0
    again = roofline.machine(threads=1)
    assert again["cached"] and len(calls) == 1 and again["read_gbps"] == 30.0 and again["probe_count"] == 1
    roofline.machine(threads=1, refresh=True)
    assert len(calls) == 2


def test_machine_keeps_the_best_of_its_probes(fake_machine, monkeypatch):
    """A probe taken under load only lowers the figures: the cache keeps the best of every probe."""
    calls, bw = fake_machine
    first = roofline.machine(threads=1)
    slow = lambda *a, **k: bw(*a, **k).assign(gbps=lambda d: d["gbps"] / 2)  # a busy machine
    monkeypatch.setattr(roofline, "probe_bandwidth", slow)
    second = roofline.machine(threads=1, refresh=True)
    assert second["probe_count"] == 2 and second["read_gbps"] == first["read_gbps"]
    assert second["spread"]["read_gbps"] == pytest.approx(0.5)


def test_a_probe_on_a_busy_machine_is_not_trusted_alone(fake_machine, monkeypatch):
    """Other processes on the cores lower every limit, so every "% of the limit" would look better than it
    is: such a probe is kept, another is taken (up to PROBE_TRIES), and the next call probes again."""
    calls, bw = fake_machine
    monkeypatch.setattr(roofline.bench, "Contention", _contention(1.5))
    busy = roofline.machine(threads=1)
    assert len(calls) == roofline.PROBE_TRIES and busy["probe_count"] == roofline.PROBE_TRIES
    monkeypatch.setattr(roofline.bench, "Contention", _contention(0.1))
    quiet = roofline.machine(threads=1)
    assert len(calls) == roofline.PROBE_TRIES + 1 and not quiet["cached"]
    assert roofline.machine(threads=1)["cached"] and len(calls) == roofline.PROBE_TRIES + 1
    old = {k: v for k, v in json.loads(roofline.cache_path(1).read_text())["taken"][-1].items() if k != "busy_cores"}
    assert not roofline.quiet(old), "a record from before the check cannot say it was quiet"


def test_other_probe_parameters_are_another_probe(fake_machine):
    """A chapter that asks for other probe parameters gets them measured, not another chapter's cache."""
    calls, bw = fake_machine
    roofline.machine(threads=1, mib=256, repeats=15)
    roofline.machine(threads=1, mib=512, repeats=15)
    roofline.machine(threads=1, mib=256, repeats=5)
    assert len(calls) == 3
    assert roofline.cache_path(1, mib=512) != roofline.cache_path(1, mib=256)
    assert roofline.machine(threads=1, mib=512, repeats=15)["cached"]


def test_machine_rejects_bad_threads(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFNB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="threads"):
        roofline.machine(threads=10_000)


def test_probe_refuses_cache_sized_arrays():
    with pytest.raises(ValueError, match=f"mib >= {roofline.min_mib()}"):
        roofline.probe_bandwidth(threads=1, mib=1)


# ---------------------------------------------------------------- end to end (small)

@pytest.mark.slow
def test_probe_bandwidth_runs_every_provider():
    from effnb import probes
    df = roofline.probe_bandwidth(threads=1, mib=roofline.min_mib(), repeats=3, progress=False, rounds=2)
    assert set(df["kernel"]) == {"read", "copy", "triad"}
    expected = {"numba read", "numpy sum", "torch sum", "numba copy", "numpy copy", "torch copy",
                "numba triad", "torch triad"}
    if probes.cpp_ops() is not None:
        expected |= {"cpp read", "cpp copy", "cpp triad"}
    assert expected == set(df["provider"])
    assert (df["gbps"] > 0).all() and (df["threads"] == 1).all()
    assert (df["working_set_bytes"] >= 4 * cachesize.llc_bytes()).all()
    assert all(len(r) == 2 for r in df["gbps_rounds"])  # the best of two rounds is kept
    assert (df["gbps"].round(2) == df["gbps_rounds"].map(max)).all()


@pytest.mark.slow
def test_peak_flops_is_positive():
    assert roofline.peak_flops(n=256, threads=1, repeats=3) > 0


@pytest.mark.slow
def test_the_fma_probe_is_the_compute_roof():
    """The register-blocked FMA loop bounds any GEMM: it is the roof, the GEMM is recorded beside it."""
    from effnb import probes
    if probes.cpp_ops() is None:
        pytest.skip("no C++ stream family: the GEMM stands in for the roof")
    fma = roofline.fma_frame(threads=1, repeats=3, iters=200_000)
    gemm = roofline.gemm_frame(256, threads=1, repeats=3)
    assert float(fma["gflops"].iloc[0]) > 0.8 * float(gemm["gflops"].iloc[0])


def test_settle_takes_the_better_probe_then_lifts_and_keeps_other_roofs():
    rates = [("read_gbps", 50.0, "a"), ("int8_gops", 300.0, "b"), ("peak_gflops", 10.0, "c")]
    limits = {"read_gbps": 40.0, "peak_gflops": 100.0, "int8_gops": 250.0, "probe_count": 1}
    lim, phrase, info = perf.settle_rates(rates, limits, lambda: {"read_gbps": 45.0, "peak_gflops": 90.0,
                                                                 "probe_count": 2})
    assert info["over"] == ["a", "b"] and "up to 125%" in phrase
    assert lim["read_gbps"] == 50.0 and lim["int8_gops"] == 300.0 and lim["peak_gflops"] == 100.0  # never lowered
    assert info["lifted"] == {"read_gbps": (50.0, "a"), "int8_gops": (300.0, "b")} and lim["probe_count"] == 2
    assert "read roof 50.0 GB/s from a" in phrase and "int8 roof 300.0 GOP/s from b" in phrase
    lim2, phrase2, info2 = perf.settle_rates(rates, limits, lambda: {"read_gbps": 60.0, "int8_gops": 400.0})
    assert not info2["lifted"] and lim2["read_gbps"] == 60.0 and "new roof bounds every kernel" in phrase2


# ---------------------------------------------------------------- a read probe beside kernels

def test_read_beside_takes_turns_and_counts_each_sides_bytes(monkeypatch):
    seen = {}

    def fake_together(fns, repeats):
        seen.update(fns=dict(fns), repeats=repeats)
        medians = {"k1": 1e-3, "k2": 4e-3, roofline.READ_PROBE: 2e-3}
        return {name: bench.Timing(times=np.full(repeats, medians[name]), compile_s=0.0, calls_per_sample=1)
                for name in fns}

    monkeypatch.setattr(bench, "measure_together", fake_together)
    mib = roofline.min_mib()
    got = roofline.read_beside({"k1": ([lambda: None], 3e6), "k2": ([lambda: None], 8e6)}, repeats=4, mib=mib)
    assert set(seen["fns"]) == {"k1", "k2", roofline.READ_PROBE} and seen["repeats"] == 4  # one race, all sides
    assert got["k1"][0] == pytest.approx(3.0) and got["k2"][0] == pytest.approx(2.0)    # bytes / median / 1e9
    assert got[roofline.READ_PROBE][0] == pytest.approx(mib * roofline.MIB / 2e-3 / 1e9)
    assert all(spread == 0.0 for _, spread in got.values())                             # equal samples: no spread


@pytest.mark.parametrize("kernels, mib, match", [
    ({}, None, "at least one kernel"),
    ({roofline.READ_PROBE: ([lambda: None], 1.0)}, None, "none named"),
    ({"k": ([lambda: None], 0)}, None, "bytes moved"),
    ({"k": ([lambda: None], 1.0)}, 1, "mib >="),
])
def test_read_beside_rejects_bad_input_before_timing(kernels, mib, match, monkeypatch):
    monkeypatch.setattr(bench, "measure_together", lambda *a, **k: pytest.fail("timed despite bad input"))
    with pytest.raises(ValueError, match=match):
        roofline.read_beside(kernels, mib=mib)


@pytest.mark.slow
def test_read_beside_measures_a_real_probe():
    import torch
    x = torch.ones(1 << 22)  # 16 MiB: a kernel that reads its bytes once
    with warnings.catch_warnings():
        warnings.simplefilter("error", bench.SpreadWarning)   # a busy sample is reported in the result, not warned
        got = roofline.read_beside({"sum16": ([lambda: x.sum()], x.numel() * 4)}, repeats=3, mib=roofline.min_mib())
    assert set(got) == {"sum16", roofline.READ_PROBE}
    assert all(gbps > 0 and spread >= 0 for gbps, spread in got.values())
