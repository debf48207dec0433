"""effnb.timeseries against the plain float64 references, plus its input checks and sklearn behaviour."""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from effnb import timeseries as T
from effnb.timeseries import reference as R

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def panel(seed, n, c, length):
    return np.random.default_rng(seed).normal(size=(n, c, length)).astype(np.float32)


@FAST
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3), c=st.integers(1, 3), length=st.integers(11, 47),
       k=st.integers(1, 9))
def test_rocket_matches_reference(seed, n, c, length, k):
    X = panel(seed, n, c, length)
    r = T.Rocket(num_kernels=k, random_state=seed).fit(X)
    got = r.transform(X)
    want = R.rocket_features(T._normalise(X), r.kernels_)
    assert got.shape == (n, 2 * k)
    np.testing.assert_allclose(got[:, 1::2], want[:, 1::2], rtol=1e-4, atol=1e-4)
    # PPV: float32 vs float64 may flip a value sitting on zero; never more than one per feature
    ks = r.kernels_
    out_len = length + 2 * ks["pads"] - (ks["lengths"] - 1) * ks["dils"]
    assert np.all(np.abs(got[:, 0::2] - want[:, 0::2]) <= 1.0 / out_len + 1e-6)



@FAST
@given(seed=st.integers(0, 10_000), n=st.sampled_from([1, 2, 5, 15, 16, 17, 31, 33, 47]), c=st.integers(1, 4),
       length=st.integers(11, 40) | st.sampled_from([100, 512, 513]), k=st.integers(1, 9), jobs=st.integers(1, 2),
       lanes=st.booleans())
def test_rocket_layouts_match_reference(seed, n, c, length, k, jobs, lanes):
    """Either layout (forced), any series count (partial blocks of LANES, one series), threads: the reference."""
    from effnb.timeseries import rocket
    X = panel(seed, n, c, length)
    r = T.Rocket(num_kernels=k, random_state=seed, n_jobs=jobs).fit(X)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rocket, "use_lanes", lambda n, length: lanes)
        got = r.transform(X)
        ks = r.kernels_
        # a channel subset and the kernels that read only it (SelectedRocket), on the forced layout
        chans = np.random.default_rng(seed).permutation(c)[:c // 2 + 1]
        kept = [i for i in range(k) if set(ks["chans"][ks["c_off"][i]:ks["c_off"][i] + ks["nchs"][i]]) <= set(chans)]
        if kept:
            feats = np.sort(np.concatenate([2 * np.array(kept), 2 * np.array(kept[::2]) + 1]))
            sel = T.SelectedRocket(r, feats, n_jobs=jobs, channels=chans).fit()
            np.testing.assert_array_equal(sel.transform(X), got[:, feats])
        mp.setattr(rocket, "use_lanes", lambda n, length: not lanes)
        other = r.transform(X)
    want = R.rocket_features(T._normalise(X), ks)
    np.testing.assert_allclose(got[:, 1::2], want[:, 1::2], rtol=1e-4, atol=1e-4)
    out_len = length + 2 * ks["pads"] - (ks["lengths"] - 1) * ks["dils"]
    assert np.all(np.abs(got[:, 0::2] - want[:, 0::2]) <= 1.0 / out_len + 1e-6)
    # the two layouts add the same terms in the same order: the same bits
    np.testing.assert_array_equal(other, got)


def test_rocket_layout_rule():
    from effnb.timeseries import rocket
    assert rocket.use_lanes(1029, 24) and rocket.use_lanes(370, 29) and rocket.use_lanes(16, rocket.LANES_MAX_LENGTH)
    assert not rocket.use_lanes(1029, rocket.LANES_MAX_LENGTH + 1)
    assert not rocket.use_lanes(1, 24) and not rocket.use_lanes(17, 24)   # blocks mostly idle lanes


@FAST
@given(seed=st.integers(0, 10_000), n=st.integers(1, 19), c=st.integers(1, 3), length=st.integers(9, 45),
       per=st.integers(1, 9))
def test_minirocket_matches_reference(seed, n, c, length, per):
    # n spans partial and several blocks of series (W lanes); per, with few dilations on short series, gives every
    # count path: 1, 2, 3 or 4 biases counted while convolving, and more counted from the stored output
    Xtr, Xte = panel(seed, 4, c, length), panel(seed + 1, n, c, length)
    m = T.MiniRocket(num_features=84 * per, random_state=seed).fit(Xtr)
    got = m.transform(Xte)
    want = R.minirocket_features(Xte, m)
    assert got.shape == want.shape == (n, m.n_features_out_)
    # every feature: float32 against float64 may flip an output sitting on its bias, one position at most
    positions = R.minirocket_positions(m, length)
    assert np.all(np.abs(got - want) <= 1.0 / positions + 1e-6)
    # the biases: quantiles of the plain reference convolution of the training series each one names
    assert m.bias_series_.shape == (len(m.dilations_) * 84,) and m.bias_series_.max() < len(Xtr)
    np.testing.assert_allclose(m.biases_, R.minirocket_biases(Xtr, m), rtol=1e-5, atol=1e-4)
    assert 0.0 <= m.transform(Xtr).min() and m.transform(Xtr).max() <= 1.0


@pytest.mark.parametrize("c, length, features", [(1, 64, 10_000), (1, 300, 1000), (3, 40, 2000)])
def test_minirocket_parallel_equals_one_thread(c, length, features, monkeypatch):
    """The parallel region (chunks of work items per thread) and the one-thread call give the same bits."""
    from effnb.timeseries import minirocket
    X = panel(3, 21, c, length)
    m = T.MiniRocket(num_features=features, random_state=0, n_jobs=1).fit(X)
    one = m.transform(X)
    monkeypatch.setattr(minirocket, "PARALLEL_MIN_WORK", 0)   # even this small call takes the parallel path
    m.n_jobs = 2
    np.testing.assert_array_equal(m.transform(X), one)
    positions = R.minirocket_positions(m, length)
    assert np.all(np.abs(one[:2] - R.minirocket_features(X[:2], m)) <= 1.0 / positions + 1e-6)


def test_minirocket_lane_width_follows_the_cpu_numba_compiles_for():
    """16 series per vector where Numba's target has AVX-512, else 8 (EFFNB_EXPECT_LANES, set by the AVX2
    rerun below, says which this run must have); the lane buffers start on a register boundary."""
    from numba import njit

    from effnb import provenance
    from effnb.timeseries import lanes
    print(f"MiniRocket runs {lanes.W} lanes ({'AVX-512' if lanes.W == 16 else 'AVX2'} path)")
    if "EFFNB_EXPECT_LANES" in os.environ:
        assert lanes.W == int(os.environ["EFFNB_EXPECT_LANES"])
    elif os.environ.get("NUMBA_CPU_FEATURES") is None and os.environ.get("NUMBA_CPU_NAME") is None:
        assert lanes.W == (16 if "avx512f" in provenance.cpu_flags() else 8)
    # every claim row names the path that ran: the level Numba compiled for, which is the CPU's unless the
    # AVX2 rerun below asked Numba for less
    if os.environ.get("EFFNB_EXPECT_LANES") == "8":
        assert T.ours_backend() == "numba-avx2"
        from effnb import ext   # and on a CPU with more, the run is a machine of its own in book/runs/
        assert provenance.hardware_id().endswith("-as-avx2") == (ext.cpu_level() == "avx512")
    elif os.environ.get("NUMBA_CPU_FEATURES") is None and os.environ.get("NUMBA_CPU_NAME") is None:
        assert T.ours_backend() == f"numba-{provenance.isa_level()}"
    make = njit(lambda n: lanes.empty(n, np.float32))
    for n in (1, 17, 1000):
        buf = make(n)
        assert buf.shape == (n,) and buf.ctypes.data % (4 * lanes.W) == 0


@pytest.fixture(scope="module")
def store_block():
    """lanes.store_transposed from src[3:] into row 1, column 5 of dst (compiled once for every case)."""
    from numba import njit

    from effnb.timeseries import lanes
    return njit(lambda s, d, r: lanes.store_transposed(s, 3, d, d.shape[1] + 5, d.shape[1], r))


@pytest.mark.parametrize("rows", [1, 3, 8, 16])
def test_store_transposed_writes_the_block_s_columns_as_rows(rows, store_block):
    """MiniRocket's features leave the lanes through this W x W transpose: each of the first ``rows`` columns
    lands on its own row of dst, at any offset, and nothing else in dst changes."""
    from effnb.timeseries import lanes
    W, rows = lanes.W, min(rows, lanes.W)
    src = np.random.default_rng(rows).normal(size=3 + W * W).astype(np.float32)
    dst = np.full((W + 2, 2 * W + 5), -7.0, dtype=np.float32)
    store_block(src, dst, rows)
    want = np.full_like(dst, -7.0)
    want[1:1 + rows, 5:5 + W] = src[3:].reshape(W, W).T[:rows]
    np.testing.assert_array_equal(dst, want)


def test_minirocket_avx2_path_on_any_cpu(tmp_path):
    """Numba's build for an AVX2 CPU (8 lanes) passes the transform's tests in a subprocess with its own cache:
    the AVX2 path is tested on AVX-512 machines too."""
    from effnb import provenance
    if "avx2" not in provenance.cpu_flags():
        pytest.skip("this CPU cannot run AVX2 code")
    # EFFNB_ISA=avx2 alone: effnb sets Numba's target to an AVX2 CPU where this one has more (effnb/__init__.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU_")}
    env.update({"EFFNB_ISA": "avx2", "NUMBA_CACHE_DIR": str(tmp_path), "EFFNB_EXPECT_LANES": "8"})
    tests = "minirocket_matches_reference or minirocket_parallel_equals or lane_width_follows or store_transposed"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-s",
                          "-k", tests, __file__], env=env, capture_output=True, text=True, timeout=900)
    said = run.stdout
    assert run.returncode == 0 and "9 passed" in said and "skipped" not in said, said[-3000:] + run.stderr[-2000:]
    assert "MiniRocket runs 8 lanes (AVX2 path)" in said


def test_share_out_gives_every_item_one_chunk_and_balances_the_work():
    from effnb.timeseries import minirocket
    # a length-1024 profile: the first dilations cost most
    cost = np.array([19.0, 12.0, 4.0, 8.0] + [4.0] * 17 + [1.0] * 4)
    for nblk, chunks in [(1, 4), (3, 4), (65, 4), (2, 3)]:
        owner = minirocket._share_out(cost, nblk, chunks)
        assert owner.shape == (nblk * len(cost),) and owner.min() >= 0 and owner.max() < chunks
        load = np.bincount(owner, weights=np.tile(cost, nblk), minlength=chunks)
        assert load.max() - load.min() <= cost.max()       # within one item of each other (LPT's bound)
    m = T.MiniRocket(num_features=10_000, random_state=0).fit(panel(0, 2, 1, 1024))
    work = m.work_per_dilation_                            # the estimate a fit leaves for transform's shares
    assert work.shape == m.dilations_.shape and np.all(work > 0)
    assert work[0] == work.max() and work[-1] < np.median(work)   # most biases first; long dilations skip padding


def test_minirocket_dilations_and_feature_count():
    dils, nfpd = T.mini_dilations(150, 10_000)
    assert dils[0] == 1 and dils[-1] <= (150 - 1) // 8 and np.all(np.diff(dils) > 0)
    assert nfpd.sum() == 10_000 // 84
    m = T.MiniRocket(num_features=1000, random_state=0).fit(panel(0, 3, 1, 30))
    assert m.transform(panel(1, 2, 1, 30)).shape == (2, 84 * (1000 // 84))


def test_selected_rocket_equals_columns_of_full():
    X = panel(3, 4, 2, 40)
    r = T.Rocket(num_kernels=30, random_state=0).fit(X)
    feats = np.array([59, 0, 7, 6, 33])
    sel = T.SelectedRocket(r, feats).fit()
    assert len(sel.kernel_ids_) == 4          # features 6 and 7 share kernel 3
    np.testing.assert_array_equal(sel.transform(X), r.transform(X)[:, feats])
    with pytest.raises(ValueError, match="indices"):
        T.SelectedRocket(r, [60]).fit()


def test_select_features_finds_the_informative_column():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    F = rng.normal(size=(40, 200))
    F[:, 17] += 3 * y
    for method in ("anova", "ridge"):
        idx = T.select_features(F, y, keep=0.025, method=method)
        assert len(idx) == 5 and 17 in idx
    with pytest.raises(ValueError, match="fraction"):
        T.select_features(F, y, keep=0)


@FAST
@given(seed=st.integers(0, 10_000), channels=st.integers(1, 5), layers=st.integers(1, 4),
       k=st.integers(1, 4), T_len=st.integers(1, 60), split=st.integers(0, 60))
def test_continual_tcn_equals_offline(seed, channels, layers, k, T_len, split):
    net = T.ContinualTCN(channels=channels, layers=layers, kernel_size=k, in_channels=1, seed=seed)
    x = np.random.default_rng(seed).normal(size=(1, T_len))
    off = net.offline(x)
    np.testing.assert_allclose(off, R.tcn_offline(net._pad(x), net.W, net.B, net.dils), atol=1e-10)
    s = min(split, T_len)                     # the state carries over between calls
    cont = np.concatenate([net.stream(x[:, :s]), net.stream(x[:, s:])], axis=1)
    assert np.abs(cont - off).max() <= 1e-5
    net.reset()
    steps = np.stack([net.step(x[:, t]) for t in range(T_len)], axis=1)
    assert np.abs(steps - off).max() <= 1e-5
    w = net.receptive_field
    np.testing.assert_allclose(net.windowed(x, w), off, atol=1e-10)
    assert net.macs_per_step(w)["windowed"] == w * net.macs_per_step()["continual"]


@pytest.mark.parametrize("est", [T.Rocket(num_kernels=5), T.MiniRocket(num_features=84)])
def test_bad_input_errors_name_the_fix(est):
    good = panel(0, 3, 1, 30)
    with pytest.raises(NotFittedError, match="fit"):
        clone(est).transform(good)
    bad = good.copy()
    bad[1, 0, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clone(est).fit(bad)
    with pytest.raises(ValueError, match="pad"):
        clone(est).fit(panel(0, 3, 1, 5))
    with pytest.raises(ValueError, match="unequal lengths"):
        clone(est).fit([np.zeros(30), np.zeros(31)])
    with pytest.raises(ValueError, match="dimensions"):
        clone(est).fit(np.zeros((2, 1, 1, 30)))
    fitted = clone(est).fit(good)
    with pytest.raises(ValueError, match="fitted"):
        fitted.transform(panel(0, 3, 2, 30))
    assert fitted.transform(good[:, 0, :]).shape[0] == 3   # 2-D input is univariate


def test_pad_equal():
    out = T.pad_equal([np.arange(3.0), np.arange(5.0)])
    assert out.shape == (2, 1, 5) and out[0, 0, -1] == 2.0
    with pytest.raises(ValueError, match="longer"):
        T.pad_equal([np.arange(5.0)], length=3)


def test_sklearn_pipeline_params_and_threads():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 15)
    t = np.linspace(0, 1, 50)
    X = np.sin(2 * np.pi * (2 + 3 * y)[:, None] * t) + 0.1 * rng.normal(size=(30, 50))
    before = numba.get_num_threads()
    for est in (T.Rocket(num_kernels=50, random_state=1, n_jobs=1),
                T.MiniRocket(num_features=168, random_state=1, n_jobs=-1)):
        assert clone(est).get_params()["random_state"] == 1
        pipe = T.classifier(est).fit(X[::2], y[::2])
        assert pipe.score(X[1::2], y[1::2]) >= 0.9
        assert numba.get_num_threads() == before
    a = T.Rocket(num_kernels=20, random_state=5).fit(X).transform(X)
    b = T.Rocket(num_kernels=20, random_state=5).fit(X).transform(X)
    np.testing.assert_array_equal(a, b)


def test_japanese_vowels_is_padded_to_equal_length():
    Xtr, ytr, Xte, yte = T.load_dataset("JapaneseVowels")
    assert Xtr.shape[1:] == Xte.shape[1:] == (12, 29) and len(Xtr) == len(ytr) == 270
    assert np.isfinite(Xtr).all()
    with pytest.raises(ValueError, match="unknown dataset"):
        T.load_dataset("Nope")


# ------------------------------------------------------------------ wavelet features and channel selection

@FAST
@given(seed=st.integers(0, 10_000), length=st.integers(2, 70), levels=st.integers(0, 3))
def test_haar_dwt_matches_loop_and_reconstructs(seed, length, levels):
    x = np.random.default_rng(seed).normal(size=length)
    levels = min(levels, int(np.floor(np.log2(length))))
    a, ds = T.haar_dwt(x[None, None, :], levels)
    ra, rds = R.haar_dwt(x, levels)
    np.testing.assert_allclose(a[0, 0], ra, atol=1e-12)
    for d, rd in zip(ds, rds, strict=True):
        np.testing.assert_allclose(d[0, 0], rd, atol=1e-12)
    np.testing.assert_allclose(T.haar_idwt(a, ds, length)[0, 0], x, atol=1e-12)   # perfect reconstruction


@FAST
@given(seed=st.integers(0, 10_000), blocks=st.integers(1, 9), levels=st.integers(1, 3))
def test_haar_dwt_preserves_energy(seed, blocks, levels):
    x = np.random.default_rng(seed).normal(size=(2, 3, blocks * 2 ** levels))
    a, ds = T.haar_dwt(x, levels)
    energy = (a ** 2).sum(-1) + sum((d ** 2).sum(-1) for d in ds)
    np.testing.assert_allclose(energy, (x ** 2).sum(-1), rtol=1e-12)


def test_wavelet_rocket_bands_and_raw_equal_rocket():
    X = panel(3, 4, 2, 50)
    w = T.WaveletRocket(num_kernels=7, levels=5, random_state=3).fit(X)
    assert w.levels_ == 2 and w.band_names() == ["raw", "D1", "D2", "A2"]   # 50 -> 25 -> 13 (>= 11) -> 7 (too short)
    F = w.transform(X)
    assert F.shape == (4, 4 * 14)
    np.testing.assert_array_equal(F[:, :14], T.Rocket(7, random_state=3).fit(X).transform(X))


@FAST
@given(seed=st.integers(0, 10_000), c=st.integers(1, 4), length=st.integers(11, 60), n_keep=st.integers(1, 20),
       use_channels=st.booleans())
def test_selected_wavelet_rocket_equals_full_columns(seed, c, length, n_keep, use_channels):
    Xtr, Xte = panel(seed, 6, c, length), panel(seed + 1, 3, c, length)
    y = np.array([0, 1] * 3)
    w = T.WaveletRocket(num_kernels=6, levels=2, random_state=seed).fit(Xtr)
    Ftr, Fte = w.transform(Xtr), w.transform(Xte)
    chans, allowed = T.select_channels(w, T.feature_scores(Ftr, y), keep_channels=0.5) if use_channels else (None, None)
    idx = T.select_features(Ftr, y, n_keep=n_keep, allowed=allowed)
    sel = T.SelectedWaveletRocket(w, idx, channels=chans).fit()
    np.testing.assert_allclose(sel.transform(Xte), Fte[:, idx], atol=1e-4)
    # one channel subset for the raw ROCKET too: SelectedRocket reads only the kept channels
    raw = w.rockets_[0]
    if use_channels:
        idx_raw = np.flatnonzero(allowed[:raw.n_features_out_])
        if idx_raw.size:
            s = T.SelectedRocket(raw, idx_raw, channels=chans).fit()
            np.testing.assert_allclose(s.transform(Xte), Fte[:, idx_raw], atol=1e-4)


def test_select_channels_matches_loop_and_restricts_kernels():
    X = panel(5, 8, 5, 40)
    y = np.array([0, 1] * 4)
    r = T.Rocket(num_kernels=30, random_state=5).fit(X)
    scores = T.feature_scores(r.transform(X), y)
    chans, allowed = T.select_channels(r, scores, keep_channels=0.4)
    total = R.channel_scores(r.kernels_, scores, 5)
    assert set(chans) == set(np.argsort(-total, kind="stable")[:2])
    k = r.kernels_
    for kid in range(30):
        reads = set(k["chans"][k["c_off"][kid]:k["c_off"][kid] + k["nchs"][kid]])
        assert allowed[2 * kid] == allowed[2 * kid + 1] == reads.issubset(set(chans))
    bad = np.flatnonzero(~allowed)
    if bad.size:
        with pytest.raises(ValueError, match="outside `channels`"):
            T.SelectedRocket(r, bad[:1], channels=chans).fit()
    with pytest.raises(ValueError, match="keep_channels"):
        T.select_channels(r, scores, keep_channels=0)
    with pytest.raises(NotFittedError):
        T.SelectedWaveletRocket(T.WaveletRocket(5), [0]).fit()


# ------------------------------------------------------------------ the chapter's races (the layout: tests/test_layout.py)

def test_sweep_races_ours_against_sktime_and_names_backends():
    from effnb import provenance
    races = T.throughput_sweep([32], vary="length", length=32, n_kernels=20, n_series=2, threads=1, seed=0, repeats=3)
    assert set(races) == {"ROCKET", "MiniRocket"}
    for fam, res in races.items():
        df = res.df.set_index("provider")
        ours, peer = T.experiments.RACES[fam][0][0], T.experiments.RACES[fam][1][0]
        assert df.loc[ours, "backend"] == f"numba-{provenance.isa_level()}" and df.loc[ours, "ours"]
        assert df.loc[peer, "backend"].startswith("sktime ") and not df.loc[peer, "ours"]
        assert (df["compile_s"] > 0).all() and (df["gflops"] > 0).all()
        # both sides are credited with our work count, so the GFLOP/s ratio is the speed ratio
        speed = float(res.ratio(ours, peer).iloc[0])
        assert speed == pytest.approx(df.loc[ours, "gflops"] / df.loc[peer, "gflops"])
    with pytest.raises(ValueError, match="vary"):
        T.throughput_sweep([32], vary="width", length=32, n_kernels=20, n_series=2, threads=1)


def test_streaming_bench_rows_follow_its_race():
    net = T.ContinualTCN(channels=2, layers=2, kernel_size=2, in_channels=1, seed=0)
    stream = np.random.default_rng(0).normal(size=(1, 60))
    frame, res = T.streaming_bench(net, stream, [8, 16], steps=20, repeats=3)
    assert list(frame["window"]) == [8, 16] and list(frame["ops_ratio"]) == [8.0, 16.0]
    per_step = res.time("continual") / 20
    np.testing.assert_allclose(frame["continual_s"], per_step.to_numpy())
    best = frame[["windowed_numba_s", "windowed_torch_s"]].min(axis=1)
    np.testing.assert_allclose(frame["time_ratio"], best / frame["continual_s"])
    assert T.streaming_numbers(frame)["window_min64"] == 16     # no window of 64: the largest stands in
    with pytest.raises(ValueError, match="too short"):
        T.streaming_bench(net, stream, [64], steps=20)


# ------------------------------------------------------------------ the checks that make timing verdicts fallible

def _fake_sweeps(times: dict) -> dict:
    """{vary: {family: perf.Result}} with given (x, seconds, flops) per provider: what sweep_checks reads."""
    import pandas as pd

    from effnb import perf
    out = {}
    for vary, fams in times.items():
        out[vary] = {}
        for fam, points in fams.items():
            (ours, ours_label), (peer, peer_label) = T.experiments.RACES[fam]
            spec = perf.Benchmark(name=f"{fam} {vary}", x=vary, x_values=[x for x, _, _ in points], unit="s",
                                  providers=[perf.Provider(ours, ours_label, None, ours=True),
                                             perf.Provider(peer, peer_label, None)], baseline=peer)
            rows = [{"provider": key, "label": label, "x": str(x), "size": x, "median_s": t * (2 if key == peer else 1),
                     "gflops": flops / (t * (2 if key == peer else 1)) / 1e9, "ours": key == ours}
                    for key, label in ((ours, ours_label), (peer, peer_label)) for x, t, flops in points]
            out[vary][fam] = perf.Result(spec, pd.DataFrame(rows), pd.DataFrame(rows))
    return out


def test_sweep_checks_flag_flat_timings_and_a_disagreeing_common_call():
    by_length, by_kernels = [(64, 1e-3, 1e6), (256, 4e-3, 4e6)], [(250, 1e-3, 1e6), (1000, 4e-3, 4e6)]
    good = {"length": {"ROCKET": by_length, "MiniRocket": by_length},
            "kernels": {"ROCKET": by_kernels, "MiniRocket": by_kernels}}
    assert T.sweep_checks(_fake_sweeps(good)) == {"ROCKET": (True, ""), "MiniRocket": (True, "")}
    assert "every series passed" in T.guard_phrase(T.sweep_checks(_fake_sweeps(good)))
    flat = dict(good, kernels={"ROCKET": by_kernels, "MiniRocket": [(250, 8e-3, 1e6), (1000, 8e-3, 4e6)]})
    checks = T.sweep_checks(_fake_sweeps(flat))
    assert checks["ROCKET"] == (True, "") and not checks["MiniRocket"][0]
    assert "did not measure the work" in checks["MiniRocket"][1]
    # the common call (same work in both sweeps) timed 10x apart: broken, although each sweep grows
    apart = dict(good, kernels={"ROCKET": [(250, 1e-4, 1e6), (1000, 4e-4, 4e6)], "MiniRocket": by_kernels})
    checks = T.sweep_checks(_fake_sweeps(apart))
    assert not checks["ROCKET"][0] and "off the" in checks["ROCKET"][1] and checks["MiniRocket"][0]
    assert "MiniRocket" not in T.guard_phrase(checks) and "ROCKET sweep failed" in T.guard_phrase(checks)


def test_streaming_check_needs_the_recompute_to_grow_with_the_window():
    import pandas as pd
    frame = pd.DataFrame({"windowed_best_s": [1e-5, 4e-5, 1.6e-4], "macs_windowed": [1e4, 4e4, 1.6e5]})
    assert T.streaming_check(frame) == (True, "")
    assert not T.streaming_check(frame.assign(windowed_best_s=2e-5))[0]


def test_paired_points_are_per_series_differences():
    hits = {("a", "x"): np.array([True, True, False]), ("a", "y"): np.array([True, False, True]),
            ("b", "x"): np.array([True]), ("b", "y"): np.array([False])}
    d = T.paired_points(hits, "x", "y", ["a", "b"])
    np.testing.assert_array_equal(d, [0.0, 100.0, -100.0, 100.0])


def test_parallel_stalls_probe_reports_every_side():
    frame = T.parallel_stalls(1, length=32, num_features=84, n_series=2, calls=3)
    assert set(frame["load"]) == {"as found", "one core kept busy"} and len(frame) == 6
    assert set(frame["side"]) == {"MiniRocket effnb", "MiniRocket sktime", "empty parallel region"}
    assert set(frame["threads"]) == {1} and frame["stalled"].between(0, 1).all()
    assert (frame["fastest_ms"] <= frame["median_ms"]).all() and (frame["median_ms"] <= frame["slowest_ms"]).all()
    nums = T.stall_numbers(frame, 1)
    assert "no parallel region" in nums["stall_phrase"] and 0 <= nums["stall_ours_pct"] <= 100
    assert 0 <= nums["busy_ours1_pct"] <= 100 and nums["busy_empty_ms"] > 0


def test_selection_study_times_every_variant_in_one_race_and_feeds_the_lightwaves_table():
    study, res, hits = T.selection_study(["BasicMotions"], 40, 0.1, 0.5, 1, 2, 0, repeats=3)
    twins = {f"{key}_1t" for key in T.experiments.TWINS}      # one-thread twins of the claims' short calls
    assert set(res.keys()) == set(T.experiments.VARIANTS) | twins and res.spec.rounds == 2   # one rule for all
    assert isinstance(T.thread_check(res, ["selected", "channels"], ["BasicMotions"], threads=2)[0], bool)
    assert set(hits) == {("BasicMotions", key) for key in T.experiments.VARIANTS}
    for row in study.itertuples():
        assert row.accuracy == pytest.approx(hits["BasicMotions", {v: k for k, v in T.experiments.VARIANTS.items()}[
            row.variant]].mean())
    table = T.selected_table(study)
    assert table.loc["BasicMotions", "channels"] == 6
    assert table.loc["BasicMotions", "speed-up, selected"] == pytest.approx(
        float(res.ratio("selected", "all")["BasicMotions"]))
    nums = T.selected_numbers(table, 40)
    assert nums["sel_n_multi"] == 1 and nums["sel_speedup_min"] == nums["sel_speedup_max"]
    assert nums["sel_univariate"].startswith("no univariate set") and np.isnan(nums["sel_uni_speedup_min"])


def test_thread_check_invalidates_a_parallel_call_slower_than_its_one_thread_twin():
    import pandas as pd

    from effnb import perf
    spec = perf.Benchmark(name="t", x="dataset", x_values=["a", "b"], unit="s", baseline="sel",
                          providers=[perf.Provider("sel", "selected", None, ours=True),
                                     perf.Provider("sel_1t", "selected, 1 thread", None, ours=True)])
    rows = [{"provider": k, "label": k, "x": x, "median_s": t, "ours": True}
            for k, x, t in (("sel", "a", 8e-3), ("sel_1t", "a", 1e-3), ("sel", "b", 0.6e-3), ("sel_1t", "b", 1e-3))]
    res = perf.Result(spec, pd.DataFrame(rows), pd.DataFrame(rows))
    ok, why = T.thread_check(res, ["sel"], ["a", "b"], threads=2)
    assert not ok and "sel on a: 8.00 ms with 2 threads, 8.0 times" in why and "on b" not in why
    assert T.thread_check(res, ["sel"], ["b"], threads=2) == (True, "")
    assert T.thread_check(res, ["sel"], ["a"], threads=1) == (True, "")     # no parallel region, nothing to check
    assert T.both((True, ""), (False, "one"), (False, "two")) == (False, "one; two")


def test_one_thread_twins_run_on_one_thread():
    X = panel(0, 3, 1, 30)
    m = T.MiniRocket(num_features=84, random_state=0, n_jobs=2).fit(X)
    single = T.experiments.one_thread(m)
    assert single.n_jobs == 1 and m.n_jobs == 2
    np.testing.assert_array_equal(single.transform(X), m.transform(X))


def test_busy_core_spins_a_process_and_ends_it():
    from effnb.timeseries import stalls
    with stalls.busy_core() as busy:
        assert busy.proc.poll() is None          # running while the block runs
    assert busy.proc.poll() is not None          # ended and waited for on exit
