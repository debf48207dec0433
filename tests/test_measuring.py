"""Chapter 01's library: FLOP/byte counts, the workloads and conv race, the runtime-model fit, the figures,
and the tiny transformer it shares (effnb.models.tiny_decoder)."""
import numpy as np
import pytest
import torch

from effnb import measuring as E


def test_gemm_counts_small_case():
    flops, nbytes = E.gemm_counts(2, 3, 4)
    assert flops == 2 * 2 * 3 * 4
    assert nbytes == 4 * (2 * 4 + 4 * 3 + 2 * 3)


def test_gemv_counts_weights_dominate():
    flops, nbytes = E.gemv_counts(1000, 1000)
    assert flops == 2e6
    assert nbytes == 4 * (1000 * 1000 + 2000)
    assert flops / nbytes == pytest.approx(0.5, rel=0.01)  # ~2 flops per 4-byte weight


def test_conv_counts_depthwise_is_c_times_cheaper_per_kernel():
    dense, _ = E.conv2d_counts(1, 8, 8, 5, 5, kernel=3)
    depth, depth_bytes = E.conv2d_counts(1, 8, 8, 5, 5, kernel=3, groups=8)
    assert dense == 2 * 8 * 25 * 8 * 9
    assert dense / depth == 8
    assert depth_bytes == 4 * (8 * 25 + 8 * 9 + 8 * 25)
    one, one_bytes = E.conv2d_counts(2, 4, 6, 3, 3)
    assert one == 2 * 2 * 6 * 9 * 4
    assert one_bytes == 4 * (2 * 4 * 9 + 6 * 4 + 2 * 6 * 9)


def test_conv_counts_match_an_explicit_loop_count():
    # Count multiply-adds by brute force on a tiny layer.
    b, c, h, w, k, g = 1, 4, 3, 3, 3, 2
    macs = sum(c // g * k * k for _ in range(b * c * h * w))
    assert E.conv2d_counts(b, c, c, h, w, kernel=k, groups=g)[0] == 2 * macs


def test_triad_counts():
    assert E.triad_counts(10) == (20.0, 120.0)


@pytest.mark.parametrize("call", [
    lambda: E.gemm_counts(0, 1, 1),
    lambda: E.gemv_counts(3, -1),
    lambda: E.conv2d_counts(1, 6, 6, 4, 4, kernel=3, groups=4),
    lambda: E.conv2d_counts(1, 2.5, 2, 4, 4),
    lambda: E.triad_counts(True),
    lambda: E.suite(gemm_sizes=[64, 0]),
    lambda: E.suite(conv_channels="64"),
])
def test_bad_sizes_raise_clear_errors(call):
    with pytest.raises(ValueError):
        call()


def test_workloads_intensity_and_factories_run():
    ws = E.suite(gemm_sizes=[16], gemv_sizes=[16], conv_channels=[4], conv_hw=5, stream_mib=1)
    fams = [w.family for w in ws]
    assert fams == ["gemm", "gemv", "conv1x1", "dwconv3x3", "triad"]
    assert [w.cold for w in ws] == [False, True, False, False, False]
    for w in ws:
        assert w.intensity == w.flops / w.bytes
        w.make()()  # builds inputs and runs once


def test_workload_kernels_compute_the_right_thing():
    torch.manual_seed(0)
    run = E.conv(1, 4, 5, depthwise=True).make()
    y = run()
    assert y.shape == (1, 4, 5, 5)
    a = E.triad(1).make()()
    assert a.numel() == (1 << 20) // 4  # fp32 arrays of 1 MiB each
    assert E.gemv(8).make()().shape == (8,)
    assert E.gemm(8).make()().shape == (8, 8)


def test_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    p = np.repeat([16, 64, 256], 3)
    o = np.tile([4, 16, 64], 3)
    s = 2e-3 + 5e-5 * p + 1.5e-3 * o
    for relative in (True, False):
        m = E.fit_runtime(p, o, s, relative=relative)
        assert m.fixed_s == pytest.approx(2e-3, rel=1e-6)
        assert m.per_prompt_s == pytest.approx(5e-5, rel=1e-6)
        assert m.per_output_s == pytest.approx(1.5e-3, rel=1e-6)
    noisy = s * (1 + 0.01 * rng.standard_normal(s.shape))
    m = E.fit_runtime(p, o, noisy)
    assert E.mape(m.predict([32, 128], [8, 32]), 2e-3 + 5e-5 * np.array([32, 128]) + 1.5e-3 * np.array([8, 32])) < 3


def test_fit_and_mape_validate_input():
    with pytest.raises(ValueError, match="at least 3"):
        E.fit_runtime([1, 2], [1, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="distinct"):
        E.fit_runtime([16, 16, 16], [1, 2, 3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="differ in length"):
        E.fit_runtime([1, 2, 3], [1, 2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="positive"):
        E.fit_runtime([1, 2, 3], [3, 1, 2], [1.0, 0.0, 3.0])
    assert E.mape([1.1, 0.9], [1.0, 1.0]) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        E.mape([1.0], [1.0, 2.0])


@pytest.fixture(scope="module")
def model():
    return E.tiny_decoder(vocab=64, d_model=32, n_layers=2, n_heads=4, max_len=64, seed=1)


def test_kv_cache_decode_equals_recomputation(model):
    prompt = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    cached = E.generate(model, prompt, 12)
    ref = E.generate_nocache(model, prompt, 12)
    assert torch.equal(cached, ref)
    assert len(set(cached.flatten().tolist())) > 1  # not a degenerate constant stream
    # logits too: step-by-step with the cache equals one full causal pass
    seq = torch.cat([prompt, ref], dim=1)
    with torch.inference_mode():
        full = model(seq)
        cache = model.new_cache(2)
        parts = [model(seq[:, :7], cache, 0)]
        parts.append(model(seq[:, 7:10], cache, 7))     # a multi-token chunk after a prefix
        for t in range(10, seq.shape[1]):
            parts.append(model(seq[:, t:t + 1], cache, t))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


def test_decoder_rejects_bad_input(model):
    with pytest.raises(ValueError, match="max_len"):
        E.generate(model, torch.zeros(1, 60, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="new_tokens"):
        E.generate(model, torch.zeros(1, 4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="batch, length"):
        E.generate(model, torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="divisible"):
        E.tiny_decoder(d_model=30, n_heads=4)


def test_measure_generation_smoke(model):
    df = E.measure_generation(model, E.length_grid([4, 8], [2, 4]), [(6, 3)], rounds=3)
    assert list(df.columns) == ["prompt", "outputs", "split", "best_s", "median_s", "q25_s", "q75_s", "spread"]
    assert (df["split"] == "train").sum() == 4 and (df["split"] == "held-out").sum() == 1
    assert (df["best_s"] > 0).all() and (df["best_s"] <= df["median_s"]).all()
    with pytest.raises(ValueError, match="max_len"):
        E.measure_generation(model, [(60, 10)], [(4, 2)])


def test_conv_pairs_and_fraction():
    rounds = E.conv_pairs([4, 8], hw=6, rounds=2, repeats=3)
    assert list(rounds["size"].unique()) == ["1x4x6x6", "1x8x6x6"] and len(rounds) == 4
    assert (rounds["fraction"] > 0).all()
    ratio = rounds["dwconv3x3_gflops"] / rounds["conv1x1_gflops"]
    assert rounds["fraction"].tolist() == pytest.approx(ratio.tolist())
    summary = E.depthwise_fraction(rounds)
    assert list(summary.index) == ["1x4x6x6", "1x8x6x6"]
    assert set(summary["backend"]) == {E.torch_backend()}
    with pytest.raises(ValueError, match="channel"):
        E.conv_pairs([], hw=6)
    with pytest.raises(ValueError, match="conv_pairs"):
        E.depthwise_fraction(rounds.drop(columns="fraction"))


def test_measure_workloads_places_points_on_the_roofline():
    limits = {"read_gbps": 10.0, "copy_gbps": 10.0, "triad_gbps": 10.0, "peak_gflops": 100.0}
    ws = E.suite(gemm_sizes=[32], conv_channels=[4], conv_hw=6)
    df = E.measure_workloads(ws, limits, repeats=3)
    assert list(df["name"]) == ["gemm 32", "conv1x1 1x4x6x6", "dwconv3x3 1x4x6x6"]
    assert {"intensity", "gflops", "gbps", "binding", "pct_of_limit"} <= set(df.columns)
    assert df["intensity"].tolist() == [w.intensity for w in ws]
    assert set(df["binding"]) <= {"memory", "compute"}
    assert set(df["backend"]) == {E.torch_backend()}
    with pytest.raises(ValueError, match="no workloads"):
        E.measure_workloads([], limits)


def test_flops_per_token_counts_linear_weights(model):
    d, ff, v, layers = 32, 128, 64, 2
    per_layer = d * 3 * d + d * d + d * ff + ff * d
    assert E.flops_per_token(model) == 2 * (layers * per_layer + d * v)


def test_conv_benchmark_counts_each_layers_own_flops():
    spec = E.conv_benchmark([4, 8], hw=6, rounds=2)
    dense, depth = (p for p in spec.providers)
    assert (dense.key, depth.key, spec.baseline) == ("conv1x1", "dwconv3x3", "conv1x1")
    assert depth.ours and not dense.ours and spec.unit == "GFLOP/s"
    assert dense.flops(8) == E.conv2d_counts(1, 8, 8, 6, 6)[0]
    assert depth.flops(8) == E.conv2d_counts(1, 8, 8, 6, 6, kernel=3, groups=8)[0]
    assert [spec.x_label(c) for c in spec.x_values] == ["1x4x6x6", "1x8x6x6"]
    assert {p.backend for p in spec.providers} == {E.torch_backend()}
    with pytest.raises(ValueError, match="repeats"):
        E.conv_benchmark([4], hw=6, repeats=2)


def test_torch_backend_names_the_isa_path():
    assert E.torch_backend() == "torch-" + torch.backends.cpu.get_cpu_capability().lower()


def test_figures_carry_the_machine_and_the_backend(model):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from effnb import provenance
    limits = {"read_gbps": 10.0, "peak_gflops": 100.0, "threads": 2}
    points = E.measure_workloads(E.suite(gemm_sizes=[16]), limits, repeats=3)
    ax = E.plot_roofline(limits, points)
    assert provenance.hardware_id() in ax.get_title() and E.torch_backend() in ax.get_title()
    assert "2 threads" in ax.get_title()
    gen = E.measure_generation(model, E.length_grid([4, 8], [2, 4]), [(6, 3)], rounds=3)
    fit = E.fit_runtime(gen["prompt"][:4], gen["outputs"][:4], gen["best_s"][:4])
    ax = E.plot_runtime_fit(gen, fit)
    assert provenance.hardware_id() in ax.get_title() and E.torch_backend() in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "held-out", "predicted = measured"]
    plt.close("all")


def test_decoder_lives_in_the_shared_models_package():
    """Later chapters (KV caches, early exit) build the same decoder without chapter 01's package."""
    from effnb.models import tiny_decoder as shared
    for name in ("tiny_decoder", "flops_per_token", "generate", "generate_nocache"):
        assert getattr(E, name) is getattr(shared, name)


# ---------------------------------------------------------------- guards: a broken timing gives no verdict

def _fractions(conv1x1_s, gflops=None, flops=(6.4e6, 25.7e6, 102.8e6)):
    import pandas as pd
    sizes = ["1x64x28x28", "1x128x28x28", "1x256x28x28"]
    s = list(conv1x1_s)
    g = list(gflops) if gflops is not None else [f / t / 1e9 for f, t in zip(flops, s)]
    return pd.DataFrame({"conv1x1_s": s, "conv1x1_flops": list(flops), "conv1x1_gflops": g,
                         "fraction": [9 / 64, 9 / 128, 9 / 256]}, index=pd.Index(sizes, name="size"))


def _measured_conv(gflops_256):
    import pandas as pd
    return pd.DataFrame({"name": ["conv1x1 1x256x28x28"], "gflops": [gflops_256]})


def test_flat_conv_timings_give_an_invalid_verdict_never_reproduced():
    """The committed failure: every conv 'took' 28 ms, so the fraction was the FLOP ratio 9/C and passed."""
    from effnb import claims
    flat = _fractions([0.028, 0.028, 0.028])
    valid = E.conv_validity(flat, _measured_conv(3.7))
    assert valid[0] is False and "work^" in valid[1]
    ledger = claims.Ledger("01")
    c = ledger.check("dw", paper="p", statement="s", quoted="q", measured=float(flat["fraction"].median()),
                     target=("<=", 0.25), valid=valid)
    assert c.verdict == claims.INVALID and "invalid measurement" in c.reason
    assert "did not measure the convolutions" in E.dw_phrase(flat, valid)
    assert E.finding(valid, "a finding", "depthwise race").startswith("The depthwise race gave no verdict")
    assert E.caveat(valid, "conv race").startswith("The conv race was an invalid measurement")


def test_conv_race_disagreeing_with_the_workload_timing_is_invalid():
    growing = _fractions([6.4e-5, 2.6e-4, 1.0e-3])
    ok, why = E.conv_validity(growing, _measured_conv(100.0 / 15))
    assert not ok and "15x off" in why
    assert E.conv_validity(growing, _measured_conv(100.0)) == (True, "")
    assert "median 0.07" in E.dw_phrase(growing, (True, ""))
    with pytest.raises(ValueError, match="no measure_workloads"):
        E.conv_validity(growing, _measured_conv(100.0).assign(name="conv1x1 other"))


def test_series_validity_only_judges_a_series_spanning_2x():
    assert E.series_validity([1.0, 1.0], [1.0, 1.5], "x") == (True, "")
    assert E.series_validity([1.0, 2.0, 4.0], [1.0, 2.0, 4.0], "x") == (True, "")
    ok, why = E.series_validity([1.0, 1.0, 1.0], [1.0, 2.0, 4.0], "x times")
    assert not ok and why.startswith("x times: invalid measurement")


def _rows(names, families, flops, seconds, pct, binding="compute"):
    import pandas as pd
    return pd.DataFrame({"name": names, "family": families, "size": [n.split()[-1] for n in names],
                         "flops": flops, "bytes": [f / 50 for f in flops], "median_s": seconds,
                         "gflops": [f / s / 1e9 for f, s in zip(flops, seconds)],
                         "gbps": [f / 50 / s / 1e9 for f, s in zip(flops, seconds)],
                         "pct_of_limit": pct, "binding": binding})


def test_gemm_trend_takes_its_direction_from_the_data():
    flops = [4e6, 32e6, 256e6]
    rising = E.gemm_trend(_rows(["gemm 128", "gemm 256", "gemm 512"], ["gemm"] * 3, flops, [1e-4, 4e-4, 2e-3],
                                [40.0, 80.0, 95.0]))
    assert rising["ok"] and rising["phrase"].startswith("come closer") and "40% at n = 128" in rising["phrase"]
    falling = E.gemm_trend(_rows(["gemm 128", "gemm 256", "gemm 512"], ["gemm"] * 3, flops, [5e-5, 1e-3, 2e-2],
                                 [76.0, 18.0, 9.0]))
    assert falling["ok"] and falling["phrase"].startswith("fall away") and "9% at n = 512" in falling["phrase"]
    flat = E.gemm_trend(_rows(["gemm 128", "gemm 256", "gemm 512"], ["gemm"] * 3, flops, [0.028] * 3,
                              [1.0, 8.0, 60.0]))
    assert not flat["ok"] and flat["phrase"].startswith("cannot be read")


def test_settle_roofs_never_reports_a_kernel_above_its_roof():
    limits = {"read_gbps": 10.0, "peak_gflops": 100.0, "probe_count": 1}
    flops = [4e6, 32e6]
    ok_rows = _rows(["gemm 128", "gemm 256"], ["gemm"] * 2, flops, [1e-4, 4e-4], [0.0, 0.0])
    calls = []
    m, lim, phrase, info = E.settle_roofs(ok_rows, limits, lambda: calls.append(1) or limits)
    assert not calls and lim == limits and phrase.startswith("No kernel") and not info["reprobed"]
    fast = _rows(["gemm 128", "gemm 256"], ["gemm"] * 2, flops, [1e-4, 2e-4], [0.0, 0.0])  # 40 and 160 GFLOP/s
    better = {"read_gbps": 10.0, "peak_gflops": 200.0, "probe_count": 2}
    m, lim, phrase, info = E.settle_roofs(fast, limits, lambda: calls.append(1) or better)
    assert calls == [1] and lim["peak_gflops"] == 200.0 and (m["pct_of_limit"] <= 100).all()
    assert "a roof was wrong" in phrase and "probed again" in phrase and not info["lifted"]
    lower = {"read_gbps": 10.0, "peak_gflops": 90.0, "probe_count": 3}
    m, lim, phrase, info = E.settle_roofs(fast, limits, lambda: calls.append(1) or lower)
    assert calls == [1, 1] and lim["peak_gflops"] == pytest.approx(160.0)   # lifted to the kernel, never lowered
    assert m["pct_of_limit"].max() == pytest.approx(100.0) and (m["pct_of_limit"] <= 100 + 1e-9).all()
    assert "takes the fastest kernel as the roof" in phrase and "gemm 256" in phrase and "still stayed below" in phrase
    assert info["lifted"]["peak_gflops"][1] == "gemm 256"


def test_generation_validity_rejects_contended_timings():
    import pandas as pd
    good = pd.DataFrame({"outputs": [4, 16, 64], "best_s": [0.01, 0.03, 0.12], "spread": [0.05, 0.1, 0.08]})
    assert E.generation_validity(good) == (True, "")
    busy = good.assign(spread=[1.95, 0.6, 1.2])
    ok, why = E.generation_validity(busy)
    assert not ok and "spread over 120%" in why
    flat = good.assign(best_s=[0.1, 0.1, 0.1])
    assert not E.generation_validity(flat)[0]


def test_measure_workloads_keeps_the_fastest_of_interleaved_rounds():
    limits = {"read_gbps": 10.0, "copy_gbps": 10.0, "triad_gbps": 10.0, "peak_gflops": 1e4}
    df = E.measure_workloads(E.suite(gemm_sizes=[16, 32]), limits, repeats=3, rounds=2)
    assert list(df["name"]) == ["gemm 16", "gemm 32"] and set(df["rounds"]) == {2}
    again = E.place(df, {**limits, "peak_gflops": 1e-3})
    assert (again["pct_of_limit"] > 100).all() and again["median_s"].tolist() == df["median_s"].tolist()
    with pytest.raises(ValueError):
        E.measure_workloads(E.suite(gemm_sizes=[16]), limits, rounds=0)


def test_conv_pairs_carry_seconds_and_flops():
    rounds = E.conv_pairs([4, 8], hw=6, rounds=2, repeats=3)
    assert (rounds["conv1x1_s"] > 0).all() and (rounds["dwconv3x3_s"] > 0).all()
    assert rounds["conv1x1_flops"].tolist() == [E.conv2d_counts(1, c, c, 6, 6)[0] for c in (4, 4, 8, 8)]
    summary = E.depthwise_fraction(rounds)
    assert {"conv1x1_s", "conv1x1_flops"} <= set(summary.columns)


# ---------------------------------------------------------------- the block: shapes, counts, race

def test_block_specs_counts_and_default_tiles():
    assert E.parse("24@56") == (24, 56) and E.parse(" 160 @ 7 ") == (160, 7)
    for bad in ("24x56", "0@7", "@7"):
        with pytest.raises(ValueError):
            E.parse(bad)
    assert all(E.make_block(E.parse(s)[0]).residual for s in E.MOBILENET_V2)
    blk = E.make_block(4, 3, 5)
    assert (blk.c_in, blk.c_exp, blk.c_out, blk.residual) == (4, 12, 5, False)
    flops, nbytes = E.block_counts(blk, 2, 3)
    assert flops == 2 * 2 * 9 * (4 * 12 + 9 * 12 + 12 * 5)
    assert nbytes == 4 * (2 * 9 * (4 + 5) + sum(t.numel() for t in blk.mats()))
    assert E.default_tile_rows(8, 28, 2) == 28 and E.default_tile_rows(1, 28, 2) == 7
    assert E.default_tile_rows(1, 7, 2) == 2 and E.default_tile_rows(3, 5, 2) == 3


def test_block_race_reports_fusion_against_the_same_code_and_torch():
    from effnb import ext
    spec = E.block_benchmark(["8@6", "16@6"], 2, threads=1, rounds=1, repeats=3)
    assert [p.key for p in spec.providers] == ["fused", "unfused", "torch", "torch_cl"]
    assert spec.baseline == "unfused" and [p.ours for p in spec.providers] == [True, True, False, False]
    assert {spec.providers[0].backend} == {E.ops.backend()} and spec.providers[2].backend == E.torch_backend()
    res = spec.run(progress=False)
    table = E.fusion_table(res, 2)
    assert list(table["block"]) == ["8@6", "16@6"] and (table["fusion_gain"] > 0).all()
    assert table["expanded_mib"].tolist() == pytest.approx([2 * 36 * 48 * 4 / 2**20, 2 * 36 * 96 * 4 / 2**20])
    assert E.stack_gain(table) == pytest.approx(table["unfused_ms"].sum() / table["fused_ms"].sum())
    assert set(table["fastest_torch"]) <= {"NCHW", "channels_last"}
    pts = E.race_points(res)
    assert len(pts) == 8 and {"name", "flops", "bytes", "median_s", "gflops", "gbps"} <= set(pts.columns)
    valid = E.fusion_validity(res)
    assert valid[0] == (E.ops.backend() != ext.FALLBACK) or "work^" in valid[1]
    assert "faster than" in E.compare_phrase(1.5, "x") and "slower than" in E.compare_phrase(0.5, "x")
    for bad in ([], "8@6"):
        with pytest.raises(ValueError):
            E.block_benchmark(bad, 1, threads=1)


def test_fusion_trend_says_whether_the_gain_follows_the_expanded_size():
    import pandas as pd
    t = pd.DataFrame({"block": ["a", "b", "c"], "fusion_gain": [1.1, 1.5, 2.0], "expanded_mib": [0.5, 3.0, 14.0]})
    assert E.fusion_trend(t).startswith("grows with") and "largest for c" in E.fusion_trend(t)
    assert E.fusion_trend(t.assign(fusion_gain=[2.0, 1.5, 1.1])).startswith("does not grow")


def test_fused_race_validity_fails_on_the_fallback(monkeypatch):
    monkeypatch.setattr(E.ops, "available", lambda: False)
    ok, why = E.fusion_validity(None)
    assert not ok and "torch-fallback" in why


# ---------------------------------------------------------------- autotuning

def _synthetic_space(noise=0.0, seed=0):
    """A smooth landscape over the real 32@28 space: what the searches are checked on, without timing noise."""
    import pandas as pd
    space = E.autotune.tuning_space("32@28", 2)
    df = pd.DataFrame([vars(c) for c in space])
    t = df["tile_rows"].to_numpy(float)
    cb = df["channel_block"].replace(0, 256).to_numpy(float)
    base = (1.0 + 0.6 / t + 0.3 * (np.log2(cb) - 6) ** 2 / 9) * np.where(df["threads"] == 2, 0.55 + 0.3 * (t >= 28),
                                                                          1.0)
    df["best_s"] = 1e-3 * base * (1 + noise * np.random.default_rng(seed).standard_normal(len(df)))
    df["repeat_pct"] = 1.0
    return df


def test_tuning_space_is_real_and_large_enough():
    space = E.autotune.tuning_space("32@28", 2, include_tile=9)
    assert len(space) >= 30 and len(set(space)) == len(space)
    assert {c.threads for c in space} == {1, 2} and 9 in {c.tile_rows for c in space}
    assert max(c.tile_rows for c in space) == 28 and 0 in {c.channel_block for c in space}
    assert all(c.channel_block < 192 for c in space)
    assert E.autotune.budget_for(len(space)) <= 0.2 * len(space) and E.autotune.budget_for(5) == 2


def test_surrogate_fits_a_smooth_function():
    rng = np.random.default_rng(0)
    x = rng.random((30, 2))
    y = np.sin(3 * x[:, 0]) + x[:, 1] ** 2
    gp = E.autotune.Surrogate().fit(x, y)
    mu, sd = gp.predict(x)
    assert np.abs(mu - y).max() < 0.05 and (sd >= 0).all()
    xs = rng.random((50, 2))
    mu, _ = gp.predict(xs)
    assert np.abs(mu - (np.sin(3 * xs[:, 0]) + xs[:, 1] ** 2)).mean() < 0.1


def test_searches_on_a_known_landscape():
    space = _synthetic_space(noise=0.01)
    budget = E.autotune.budget_for(len(space))
    x, y = E.autotune.features(space), np.log(space["best_s"].to_numpy())
    order = E.autotune.bayes_search(x, y, budget, seed=1)
    assert len(order) == len(set(order)) == budget
    trials = E.autotune.search_trials(space, budget, seeds=6)
    assert set(trials["method"]) == {"Bayesian optimisation", "random search"}
    assert (trials.groupby(["method", "seed"])["gap_pct"].apply(lambda s: s.is_monotonic_decreasing)).all()
    summary = E.autotune.search_summary(trials, 5.0)
    assert summary.loc["Bayesian optimisation", "median_gap_pct"] <= 5.0
    assert list(summary.columns) == ["median_gap_pct", "worst_gap_pct", "within_target"]
    assert E.autotune.surrogate_error(space, budget) < 50
    with pytest.raises(ValueError, match="exceeds"):
        E.autotune.search_trials(space, len(space) + 1, 1)


def test_tuning_validity_and_phrases():
    import pandas as pd
    space = _synthetic_space()
    cfg = E.autotune.Config(28, 0, 2)
    t = E.autotune.lookup(space, cfg)
    assert E.autotune.validity(space, 5.0, (t * 1.2, cfg)) == (True, "")
    ok, why = E.autotune.validity(space.assign(repeat_pct=20.0), 5.0)
    assert not ok and "differ by 20.0%" in why
    ok, why = E.autotune.validity(space, 5.0, (t * 8, cfg))
    assert not ok and "8x off" in why
    with pytest.raises(KeyError):
        E.autotune.lookup(space, E.autotune.Config(999, 0, 1))
    assert E.autotune.describe(cfg) == "28-row tiles, all channels, 2 threads"
    assert E.autotune.describe({"tile_rows": 4.0, "channel_block": 64.0, "threads": 1.0, "best_s": 0.1}) == \
        "4-row tiles, channel block 64, 1 thread"
    assert E.autotune.space_phrase(space).endswith("the knobs matter")
    assert E.autotune.space_phrase(space.assign(best_s=1.0)).endswith("the knobs barely matter for this block")
    s = pd.DataFrame({"median_gap_pct": [0.5, 6.0], "within_target": [0.9, 0.4]},
                     index=["Bayesian optimisation", "random search"])
    assert E.autotune.compare_methods(s).startswith("the surrogate beat") and "90% of its searches" in \
        E.autotune.compare_methods(s)
    assert E.autotune.compare_methods(s.assign(median_gap_pct=[6.0, 0.5], within_target=[0.4, 0.9])).startswith(
        "random search with the same budget did better")
    assert "did as well" in E.autotune.compare_methods(s.assign(median_gap_pct=[1.0, 1.2], within_target=[1.0, 0.95]))
    # a low median gap for both does not hide that more of the surrogate's searches reached the target
    assert E.autotune.compare_methods(s.assign(median_gap_pct=[0.0, 0.2], within_target=[1.0, 0.7])).startswith(
        "the surrogate beat")


def test_measure_space_times_every_configuration():
    space = [c for c in E.autotune.tuning_space("8@6", 1) if c.tile_rows in (1, 6)]
    before = torch.get_num_threads()
    df = E.autotune.measure_space("8@6", 1, space, rounds=2)
    assert torch.get_num_threads() == before
    assert len(df) == len(space) and (df["best_s"] > 0).all()
    assert (df["best_s"] <= df[["s_round0", "s_round1"]].min(axis=1) + 1e-15).all() and (df["repeat_pct"] >= 0).all()
    with pytest.raises(ValueError, match="rounds >= 2"):
        E.autotune.measure_space("8@6", 1, space, rounds=1)


def test_fusion_and_search_figures_carry_the_machine_and_the_backend():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from effnb import provenance
    table = pd.DataFrame({"block": ["a", "b"], "fusion_gain": [1.1, 1.6], "expanded_mib": [0.5, 8.0]})
    ax = E.plot_fusion(table, {"L2": 1.0, "L3": 32.0}, target=1.3, backend="cpp-test")
    assert provenance.hardware_id() in ax.get_title() and "cpp-test" in ax.get_title()
    space = _synthetic_space()
    ax = E.plot_search(E.autotune.search_trials(space, 10, 2), 5.0, backend="cpp-test")
    assert provenance.hardware_id() in ax.get_title() and "cpp-test" in ax.get_title()
    plt.close("all")


def test_contention_counts_other_processes_cpu():
    import subprocess
    import sys
    import time
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)
        with E.Contention() as busy:
            time.sleep(1.5)
    finally:
        spin.wait()
    if busy.cores is None:
        pytest.skip("no /proc/stat here: contention is not measured")
    assert busy.cores >= 0.5 and busy.seconds >= 1.5     # the spinning child took a whole core
    ok, why = busy.validity("the test")
    assert not ok and "other processes kept" in why and "while the test ran" in why
    quiet = E.Contention()
    quiet.cores = 0.1
    assert quiet.validity("x") == (True, "")
    assert E.Contention().validity("never entered") == (True, "")   # not measured: no verdict either way
    assert E.combine((True, ""), (False, "a"), (False, "b")) == (False, "a; b")
    ok, why = E.conv_validity(_fractions([6.4e-5, 2.6e-4, 1.0e-3]), _measured_conv(100.0), busy=busy)
    assert not ok and "while the conv race ran" in why


def test_findings_take_their_direction_from_the_numbers():
    import pandas as pd
    assert E.caveat((True, ""), "x") == "" and E.finding((True, ""), "found", "x") == "found"
    t = pd.DataFrame({"block": ["a", "b"], "fused_ms": [1.0, 1.0], "unfused_ms": [2.0, 1.2],
                      "fusion_gain": [2.0, 1.2], "expanded_mib": [8.0, 0.5]})
    assert E.fusion_finding(t).startswith("Fusing the block makes it 1.60x faster than the same code unfused")
    assert "slower than the same code unfused (0.62x" in E.fusion_finding(t.assign(unfused_ms=[0.6, 0.65]))
    assert "within the 10% target" in E.fit_finding(5.0, 25) and "outside the 10% target" in E.fit_finding(12.0, 25)
    s = pd.DataFrame({"median_gap_pct": [0.5, 6.0], "within_target": [1.0, 0.3]},
                     index=["Bayesian optimisation", "random search"])
    text = E.autotune.search_finding(s, 120, 24)
    assert "24 of 120 configurations (20%)" in text and "0.5% from the exhaustive best, within the 5% target" in text
    assert "outside the 5% target" in E.autotune.search_finding(s.assign(median_gap_pct=[7.0, 6.0]), 120, 24)
