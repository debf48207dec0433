"""Unit tests of the measurement core: bench, threads, provenance, claims, chapter."""
import json
import math
import warnings

import numpy as np
import pytest

from effnb import bench, cachesize, chapter, claims, provenance, threads


# --- bench -----------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::effnb.bench.SpreadWarning")
def test_measure_reports_median_iqr_and_compile_apart():
    calls = []

    def fn():
        calls.append(1)
        if len(calls) == 1:  # a slow first call stands for JIT compilation
            import time
            time.sleep(0.05)

    t = bench.measure(fn, warmup=2, repeats=5, min_sample_s=1e-4)
    assert t.compile_s >= 0.05
    assert t.median < 0.01, "the compile call must not enter the samples"
    assert len(t.times) == 5 and t.q25 <= t.median <= t.q75


def test_measure_rotates_through_cold_copies():
    seen = []
    fns = [lambda i=i: seen.append(i) for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bench.SpreadWarning)
        bench.measure(fns, warmup=0, repeats=3, min_sample_s=0)
    assert set(seen) == {0, 1, 2}
    assert seen[:3] == [0, 1, 2]


def test_measure_warns_on_large_spread(monkeypatch):
    values = iter([0.0, 1, 1, 5, 5, 6, 20, 20, 50, 50, 80, 90, 200, 300, 400, 500] * 10)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(values)))
    with pytest.warns(bench.SpreadWarning):
        t = bench.measure(lambda: None, warmup=0, repeats=3, min_sample_s=0)
    assert t.notes


@pytest.mark.parametrize("bad", [dict(repeats=2), dict(warmup=-1)])
def test_measure_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match="need warmup"):
        bench.measure(lambda: None, **bad)


@pytest.mark.filterwarnings("ignore::effnb.bench.SpreadWarning")
def test_measure_together_takes_samples_in_turns(monkeypatch):
    monkeypatch.setattr(bench, "LONG_CALL_S", 0.0)   # no settling calls: this test follows the timed ones
    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in "ABC"}
    timings = bench.measure_together(fns, warmup=0, repeats=3, min_sample_s=0)
    assert list(timings) == ["A", "B", "C"] and all(len(t.times) == 3 for t in timings.values())
    # each side: a first call, a calibration call; then one call per sample, the order turning each round
    assert order == ["A", "A", "B", "B", "C", "C"] + list("ABC") + list("BCA") + list("CAB")


def _clocked(monkeypatch, slow_calls: range):
    """Calls that advance a fake clock by 1 ms, or 3 ms while the machine is 'busy' (the calls in slow_calls)."""
    state = {"t": 0.0, "n": 0}
    monkeypatch.setattr(bench.time, "perf_counter", lambda: state["t"])

    def call():
        state["t"] += 3e-3 if state["n"] in slow_calls else 1e-3
        state["n"] += 1
    return call


@pytest.mark.filterwarnings("ignore::effnb.bench.SpreadWarning")
def test_a_burst_of_load_meets_every_side(monkeypatch):
    # the same work on both sides; a burst over the first 10 samples of 18. Taken in turns, both sides meet
    # it alike (ratio 1); timed one after the other, it lands on one side (what this test guards against)
    monkeypatch.setattr(bench, "LONG_CALL_S", 0.0)   # no settling calls
    call = _clocked(monkeypatch, range(4, 14))
    t = bench.measure_together({"a": call, "b": call}, warmup=0, repeats=9, min_sample_s=0)
    assert t["a"].median == pytest.approx(t["b"].median)
    alone = _clocked(monkeypatch, range(2, 12))
    ta, tb = bench.measure(alone, warmup=0, repeats=9, min_sample_s=0), bench.measure(alone, warmup=0, repeats=9,
                                                                                      min_sample_s=0)
    assert ta.median / tb.median == pytest.approx(3.0)


@pytest.mark.parametrize("settle_s, long_s, extra", [(0.0, 1.0, 3), (1e-3, 1.0, None), (0.0, 0.0, 0)])
def test_each_side_settles_before_its_samples(monkeypatch, settle_s, long_s, extra):
    monkeypatch.setattr(bench, "SETTLE_S", settle_s)
    monkeypatch.setattr(bench, "LONG_CALL_S", long_s)
    counts = {"a": 0, "b": 0}

    def side(k):
        def call():
            counts[k] += 1
        return call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bench.SpreadWarning)
        t = bench.measure_together({"a": side("a"), "b": side("b")}, warmup=1, repeats=3, min_sample_s=0)
        # first call, warm-up, calibration, 3 samples of one call; before each sample the side settles: at
        # least one untimed call, as many as last SETTLE_S, none for a call as long as LONG_CALL_S
        if extra is None:
            assert all(c > 6 + 3 for c in counts.values())
        else:
            assert counts == {"a": 6 + extra, "b": 6 + extra}
        assert all(len(x.times) == 3 for x in t.values())
        counts["a"] = 0
        bench.measure_together({"a": side("a")}, warmup=1, repeats=3, min_sample_s=0)
    assert counts["a"] == 6, "a side timed alone has no switch to settle from"


def test_methodology_page_states_the_settling_rule_as_coded():
    from pathlib import Path
    page = (Path(__file__).resolve().parents[1] / "book" / "methodology.md").read_text()
    assert f"running untimed for {1e3 * bench.SETTLE_S:g} ms" in page
    assert f"calls of {1e3 * bench.LONG_CALL_S:g} ms or more" in page


def test_cold_copies_overflow_the_llc():
    n = bench.cold_copies(8 << 20, llc=32 << 20)
    assert n * (8 << 20) >= 4 * (32 << 20)
    assert bench.cold_copies(1 << 40, llc=32 << 20) == 2
    with pytest.raises(ValueError):
        bench.cold_copies(0)


def test_bench_tidy_frame_units_and_ratio():
    def make(n):
        a = np.ones(n, np.float32)
        return lambda: a.sum()

    df = bench.bench({"sum": make, "sum2": make}, [1024, 4096], bytes_moved=lambda n: 4 * n,
                     flops=lambda n: n, repeats=3, warmup=1, progress=False)
    assert list(df.provider.unique()) == ["sum", "sum2"] and len(df) == 4
    assert (df.gbps > 0).all() and (df.gbps_lo <= df.gbps).all() and (df.gbps <= df.gbps_hi).all()
    r = bench.ratio(df, "sum", "sum2")
    assert list(r.index) == [1024, 4096] and (r > 0).all()
    own = bench.bench({"sum": make, "sum2": make}, [1024], bytes_moved={"sum": lambda n: 4 * n, "sum2": lambda n: 8 * n},
                      repeats=3, warmup=1, progress=False)
    # each provider's GB/s comes from its own byte count: GB/s x seconds gives back 4 n and 8 n bytes
    assert "gflops" not in own
    assert (own.gbps * own.median_s * 1e9).tolist() == pytest.approx([4 * 1024, 8 * 1024])
    with pytest.raises(KeyError, match="not in this benchmark"):
        bench.ratio(df, "sum", "nope")


def test_bench_cold_mode_builds_a_large_working_set():
    built = []

    def make(n):
        a = np.ones(n, np.float32)
        built.append(a)
        return lambda: a.sum()

    df = bench.bench({"sum": make}, [1 << 20], bytes_moved=lambda n: 4 * n, cold=True, repeats=3,
                     warmup=0, progress=False)
    assert df.working_set_bytes[0] >= 4 * cachesize.llc_bytes()
    assert len(built) == bench.cold_copies(4 << 20)
    with pytest.raises(ValueError, match="cold=True needs"):
        bench.bench({"sum": make}, [8], cold=True, progress=False)


def test_perf_plot_names_the_machine():
    import matplotlib
    matplotlib.use("Agg")
    df = bench.bench({"a": lambda n: (lambda: None)}, [1, 2], bytes_moved=lambda n: n, repeats=3,
                     warmup=0, progress=False)
    ax = bench.perf_plot(df, title="t")
    assert provenance.hardware_id() in ax.get_title()


# --- threads ---------------------------------------------------------------

def test_threads_validation_names_the_range():
    cores = threads.available_cores()
    for bad in (0, -1, cores + 1, 1.5, "2", True):
        with pytest.raises(ValueError, match=f"1..{cores}|1 to {cores}"):
            threads.validate_threads(bad)


def test_set_threads_sets_every_runtime(monkeypatch):
    import torch
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    n = threads.set_threads(1)
    state = threads.current_threads()
    assert n == 1 and torch.get_num_threads() == 1 and state["env"]["OMP_NUM_THREADS"] == "1"
    # Numba's pool size must never change once its threads run: only set_num_threads is used.
    assert state["env"]["NUMBA_NUM_THREADS"] is None and state["numba"] == 1
    threads.set_threads(None)
    assert torch.get_num_threads() == threads.available_cores()


# --- provenance ------------------------------------------------------------

def test_hardware_id_is_stable_and_readable():
    hid = provenance.hardware_id()
    assert hid == provenance.hardware_id()
    assert hid == hid.lower() and " " not in hid and f"{threads.available_cores()}c" in hid


def test_a_lower_isa_path_is_a_machine_of_its_own(monkeypatch):
    """EFFNB_ISA below the CPU's level names the path in the hardware id (its runs must not replace the CPU's
    own); the CPU's own level, or a level that is not one, leaves the id alone."""
    from effnb import ext
    monkeypatch.delenv("EFFNB_ISA", raising=False)
    plain = provenance.hardware_id()
    assert "-as-" not in plain
    for level in ext.LEVELS:
        monkeypatch.setenv("EFFNB_ISA", level)
        lower = ext.LEVELS.index(level) < ext.LEVELS.index(ext.cpu_level())
        assert provenance.hardware_id() == (f"{plain}-as-{level}" if lower else plain)
    monkeypatch.setenv("EFFNB_ISA", "sse9")
    assert provenance.hardware_id() == plain


def test_fingerprint_and_collect_are_json():
    rec = provenance.collect({"a": 1}, {"seed": 3})
    text = json.dumps(rec)
    assert "hardware_id" in text and rec["parameters"] == {"a": 1} and rec["seeds"] == {"seed": 3}
    fp = rec["fingerprint"]
    assert fp["cores"] >= 1 and fp["isa_level"] in ("avx512vnni", "avx512", "avx2", "neon", "generic")
    assert set(rec["versions"]) >= {"python", "torch", "numpy"}
    assert set(rec["git"]) == {"commit", "dirty"}
    assert rec["huge_pages"]["policy"] in ("always", "madvise", "never", "unknown")


@pytest.mark.parametrize("setting", ["1", "0"])
def test_huge_pages_follow_the_variable_torch_reads(setting):
    """effnb sets THP_MEM_ALLOC_ENABLE only by default; huge_pages() reports what a real tensor got."""
    import os
    import subprocess
    import sys
    code = "import effnb, json; from effnb import memory; print(json.dumps(memory.huge_pages()))"
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": setting}
    out = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout)
    assert out["THP_MEM_ALLOC_ENABLE"] == setting
    if out["policy"] == "never":
        assert out["torch"] is False
    elif out["policy"] == "madvise":  # only advised regions get them: torch's, when the variable is 1
        assert out["torch"] is (setting == "1"), out


@pytest.mark.parametrize("text,val", [("32K", 32768), ("1024 KiB", 1 << 20), ("32M", 32 << 20), ("x", 0)])
def test_cache_size_parsing(text, val):
    assert provenance._size_to_bytes(text) == val


# --- claims ----------------------------------------------------------------

def _check(ledger, key="k", measured=0.1, target=("<=", 0.25)):
    return ledger.check(key, paper="P", statement="s", quoted="small", measured=measured, target=target,
                        unit="x")


def test_claim_verdicts_follow_the_target():
    led = claims.Ledger("01")
    assert _check(led, "a", 0.1).verdict == claims.REPRODUCED
    assert _check(led, "b", 0.5).verdict == claims.NOT_REPRODUCED
    assert _check(led, "c", 3.0, (">=", 3.0)).verdict == claims.REPRODUCED
    nt = led.not_testable("d", paper="P", statement="s", quoted="1000 GPUs", reason="no GPU here")
    assert nt.verdict == claims.NOT_TESTABLE
    assert len(led.to_frame()) == 4 and "reproduced" in led._repr_html_()


def test_a_miss_never_prints_as_the_target():
    """0.9797 against '>= 0.98' must not print as 0.98: the reader would see a contradiction."""
    led = claims.Ledger()
    c = _check(led, "cos", 0.97972, (">=", 0.98))
    assert c.verdict == claims.NOT_REPRODUCED
    assert "ours 0.9797" in repr(led) and "0.9797" in led._repr_html_()
    assert claims._fmt(2.18, ">= 3 x") == "2.18" and claims._fmt(0.98, ">= 0.98") == "0.98"


@pytest.mark.parametrize("measured", [None, float("nan"), "0.1", True])
def test_claim_without_a_measurement_is_an_error(measured):
    with pytest.raises(claims.ClaimError, match="no finite measured figure"):
        _check(claims.Ledger(), measured=measured)


def test_claim_errors():
    led = claims.Ledger()
    _check(led)
    with pytest.raises(claims.ClaimError, match="stated twice"):
        _check(led)
    with pytest.raises(claims.ClaimError, match="operator"):
        _check(led, "z", target=("==", 1))
    with pytest.raises(claims.ClaimError, match="without a reason"):
        led.not_testable("y", paper="P", statement="s", quoted="q", reason=" ")


# --- chapter ---------------------------------------------------------------

def test_chapter_records_and_writes_sidecar(tmp_path, monkeypatch):
    side = tmp_path / "run.json"
    monkeypatch.setenv(chapter.SIDECAR_ENV, str(side))
    ch = chapter.start("99", threads=1, seed=7, size=3)
    ch.record("x", np.float32(1.5))
    _check(ch.claims)
    data = ch.finish()
    on_disk = json.loads(side.read_text())
    assert on_disk["results"]["x"] == 1.5 and on_disk["parameters"]["size"] == 3
    assert on_disk["claims"][0]["verdict"] == claims.REPRODUCED
    assert on_disk["provenance"]["seeds"] == {"seed": 7} and data["status"] == "ok"
    assert not math.isnan(on_disk["elapsed_s"])


def test_chapter_glues_plain_numbers(monkeypatch):
    glued = {}
    import myst_nb
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: glued.update({name: value}))
    ch = chapter.start("99", threads=1)
    ch.record("f", np.float64(2.5))
    assert type(glued["f"]) is float and repr(glued["f"]) == "2.5"


def test_chapter_rejects_bad_device_and_threads():
    with pytest.raises(ValueError, match="device"):
        chapter.start("99", threads=1, device="tpu")
    with pytest.raises(ValueError, match="threads"):
        chapter.start("99", threads=0)
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            chapter.start("99", threads=1, device="cuda")


# ---------------------------------------------------------------- measurement guards and verdicts

def test_flat_timings_are_an_invalid_measurement():
    ok, why = bench.grows_with_work([0.028, 0.0281, 0.0279], [1e8, 4e8, 1.6e9])
    assert not ok and "invalid measurement" in why
    assert bench.grows_with_work([0.01, 0.04, 0.15], [1e8, 4e8, 1.6e9]) == (True, "")
    led = claims.Ledger("01")
    c = led.check("dw", paper="p", statement="s", quoted="<= 0.25", measured=0.03, target=("<=", 0.25),
                  valid=(ok, why))
    assert c.verdict == claims.INVALID and "invalid measurement" in c.reason
    assert bench.agrees_with(0.23, 40.2, "1x1 conv GFLOP/s")[0] is False
    assert bench.agrees_with(38.0, 40.2, "1x1 conv GFLOP/s") == (True, "")


def test_inf_is_no_figure():
    with pytest.raises(claims.ClaimError, match="finite"):
        _check(claims.Ledger(), measured=float("inf"))


def test_equivalence_claims_say_test_margin_and_power():
    import numpy as np
    led = claims.Ledger("04", backend="cpp-avx2")
    rng = np.random.default_rng(0)
    tight = led.equivalent("a", paper="p", statement="no loss", quoted="no loss",
                           differences=rng.normal(0.0, 0.3, 20), margin=1.0)
    assert tight.verdict == claims.REPRODUCED and "TOST" in tight.reason and "power" in tight.reason
    wide = led.equivalent("b", paper="p", statement="no loss", quoted="no loss",
                          differences=[-11.9, 5.6, -3.0, 2.0], margin=1.0)
    assert wide.verdict == claims.INCONCLUSIVE
    worse = led.equivalent("c", paper="p", statement="no loss", quoted="no loss",
                           differences=rng.normal(-5.0, 0.3, 20), margin=1.0)
    assert worse.verdict == claims.NOT_REPRODUCED
    assert {r["backend"] for r in led.rows()} == {"cpp-avx2"}


def test_improvement_claims_say_test_bound_and_power():
    import numpy as np
    led = claims.Ledger("15", backend="torch")
    rng = np.random.default_rng(0)
    gain = led.better("a", paper="p", statement="A beats B", quoted="improves", differences=rng.normal(3.0, 1.0, 30),
                      effect=1.0)
    assert gain.verdict == claims.REPRODUCED and 0 < gain.measured < 3.0
    assert "one-sided" in gain.reason and "power" in gain.reason and "n = 30" in gain.reason
    none = led.better("b", paper="p", statement="A beats B", quoted="improves", differences=rng.normal(0.0, 5.0, 30),
                      effect=1.0)
    assert none.verdict == claims.NOT_REPRODUCED
    small = led.better("c", paper="p", statement="A beats B", quoted="improves", differences=[0.1, -0.1, 0.2],
                       effect=0.1)
    big = led.better("d", paper="p", statement="A beats B", quoted="improves", differences=[0.1, -0.1, 0.2] * 50,
                     effect=0.1)
    power = [float(c.reason.split("power to detect +0.1 points: ")[1].rstrip("%")) for c in (small, big)]
    assert power[0] < power[1]          # more items, more power against the same effect
    with pytest.raises(claims.ClaimError, match="effect"):
        led.better("e", paper="p", statement="s", quoted="q", differences=[1.0, 2.0], effect=0)


def test_one_openmp_runtime_after_numba_runs_in_parallel():
    """Numba's omp layer would load a second libgomp, and torch's thread count then drifts; workqueue's
    short regions ran no faster than one thread (effnb/__init__.py)."""
    import re

    import numba
    import numpy as np
    import torch

    @numba.njit(parallel=True)
    def total(a):
        s = 0.0
        for i in numba.prange(a.size):
            s += a[i]
        return s

    assert total(np.ones(1000)) == 1000.0
    # tbb where its wheel is installed (a pinned dependency), else numba's own pool; never omp
    import glob
    import sys
    has_tbb = bool(glob.glob(f"{sys.prefix}/lib/libtbb.so.12*"))
    assert numba.threading_layer() == ("tbb" if has_tbb else "workqueue"), numba.threading_layer()
    gomps = set(re.findall(r"\S*libgomp\S*", open("/proc/self/maps").read()))
    # wheels may carry their own renamed copy, loaded privately (scikit-learn's); the system one that
    # numba's omp layer loads into the global namespace must not be there
    assert not [g for g in gomps if "site-packages" not in g], gomps
    for n in (1, threads.available_cores()):
        threads.set_threads(n)
        assert torch.get_num_threads() == n


def test_a_broken_measurement_is_recorded_not_raised():
    """NaN from a broken timing, flagged invalid, is an 'invalid measurement' row, not a crash."""
    led = claims.Ledger("01")
    c = led.check("x", paper="p", statement="s", quoted="-", measured=float("nan"), target=(">=", 1.0),
                  valid=(False, "invalid measurement: flat timings"))
    assert c.verdict == claims.INVALID and c.measured is None
    with pytest.raises(claims.ClaimError, match="without saying why"):
        led.check("y", paper="p", statement="s", quoted="-", measured=1.0, target=(">=", 1.0), valid=(False, ""))


def test_peak_bytes_sees_torch_cpu_allocations():
    import torch
    from effnb import memory

    def step():
        a = torch.ones(1000, 1000)  # 4 MB live while b (another 4 MB) is made
        b = a * 2
        return float(b.sum())
    assert 8_000_000 <= memory.peak_bytes(step) < 9_000_000


def test_torch_threads_restores_the_count():
    import torch
    from effnb.threads import torch_threads
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        with torch_threads(0):
            pass
    assert torch.get_num_threads() == before
