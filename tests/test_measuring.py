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
