"""effnb.sparse: layouts, kernels (C++ when built, fallback otherwise) and pruning, against plain references."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from effnb import sparse as S

PATTERNS = ["unstructured", "1x4", "dense"]


def ref_matmul(sw, b):
    return sw.to_dense().double() @ b.double()


def close(got, ref, k):
    return torch.allclose(got.double(), ref, atol=1e-4 * max(1, k) ** 0.5, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 41), k=st.integers(1, 70), p=st.integers(1, 75),
       sparsity=st.sampled_from([0.0, 0.3, 0.5, 0.9, 0.99]), pattern=st.sampled_from(PATTERNS),
       seed=st.integers(0, 2**16))
def test_matmul_matches_reference(n, k, p, sparsity, pattern, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    sw = S.sparsify(w, sparsity if pattern != "dense" else None, pattern)
    b = torch.randn(k, p, generator=g)
    ref = ref_matmul(sw, b)
    assert close(S.matmul(sw, b), ref, k)
    assert close(S.matmul(sw, b[:, 0].contiguous()), ref[:, 0], k)


@pytest.mark.parametrize("pattern", PATTERNS[:2])
def test_layout_keeps_the_largest_weights(pattern):
    w = torch.randn(37, 29, generator=torch.Generator().manual_seed(1))
    sw = S.sparsify(w, 0.6, pattern)
    wd = sw.to_dense()
    kept = wd != 0
    assert abs(kept.float().mean().item() - 0.4) < 0.05
    assert torch.equal(wd[kept], w[kept])          # kept weights are exact
    if pattern == "unstructured":
        assert w[kept].abs().min() >= w[~kept].abs().max()
    else:  # constant within each group of 4 rows
        pad = torch.nn.functional.pad(kept, (0, 0, 0, 3)).view(-1, 4, 29)
        assert torch.all(pad[:9].all(1) == pad[:9].any(1))


def test_sparsity_zero_is_exact_dense_and_all_zero_weight_gives_zeros():
    w = torch.randn(10, 12)
    assert torch.equal(S.sparsify(w, 0.0).to_dense(), w)
    assert torch.equal(S.sparsify(w, 0.0, "1x4").to_dense(), w)
    assert torch.equal(S.sparsify(w, None, "dense").to_dense(), w)
    z = S.sparsify(torch.zeros(9, 5), None)
    assert z.nnz == 0
    assert torch.equal(S.linear(torch.randn(3, 5), z), torch.zeros(3, 9))


def test_empty_rows_and_wide_inputs_use_the_right_index_type():
    w = torch.zeros(6, 70000)
    w[2, 69999] = 3.0
    w[4, 40000] = -2.0
    sw = S.sparsify(w, None)
    assert sw.col.dtype == torch.int32                      # more than 65536 inputs
    x = torch.randn(2, 70000)
    assert close(S.linear(x, sw), (x.double() @ w.double().t()), 70000)
    narrow = S.sparsify(torch.randn(8, 65536), 0.9)
    assert narrow.col.dtype == torch.int16                  # uint16 stored in int16
    xb = torch.randn(65536)
    assert close(S.matmul(narrow, xb), ref_matmul(narrow, xb), 65536)


def test_linear_and_conv1x1_match_torch():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(13, 7, generator=g)
    bias = torch.randn(13, generator=g)
    for pattern in PATTERNS:
        sw = S.sparsify(w, 0.5 if pattern != "dense" else None, pattern)
        wd = sw.to_dense()
        x = torch.randn(2, 3, 7, generator=g)
        assert torch.allclose(S.linear(x, sw, bias), torch.nn.functional.linear(x, wd, bias), atol=1e-5)
        xi = torch.randn(2, 7, 5, 3, generator=g)
        ref = torch.nn.functional.conv2d(xi, wd.view(13, 7, 1, 1), bias)
        assert torch.allclose(S.conv1x1(xi, sw, bias), ref, atol=1e-5)


@pytest.mark.parametrize("bad, err", [(-0.1, ValueError), (1.0, ValueError), (float("nan"), ValueError),
                                      ("0.5", ValueError), (True, ValueError)])
def test_bad_sparsity_is_refused(bad, err):
    with pytest.raises(err, match="sparsity"):
        S.sparsify(torch.randn(4, 4), bad)


def test_bad_inputs_say_what_to_do():
    with pytest.raises(TypeError, match="floating point"):
        S.sparsify(torch.ones(4, 4, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="1x1"):
        S.sparsify(torch.randn(4, 4, 3, 3), 0.5)
    with pytest.raises(ValueError, match="pattern"):
        S.sparsify(torch.randn(4, 4), 0.5, "2:4")
    sw = S.sparsify(torch.randn(4, 6), 0.5)
    with pytest.raises(ValueError, match="6"):
        S.linear(torch.randn(2, 5), sw)
    with pytest.raises(TypeError, match="float32"):
        S.linear(torch.randn(2, 6, dtype=torch.float64), sw)
    with pytest.raises(ValueError, match="batch"):
        S.conv1x1(torch.randn(6, 3, 3), sw)
    with pytest.raises(TypeError, match="SparseWeight"):
        S.linear(torch.randn(2, 6), torch.randn(4, 6))


def test_sparsify_module_replaces_pointwise_layers_and_keeps_outputs():
    model = S.digits_cnn(width=8, seed=0).eval()
    x = torch.randn(2, 1, 16, 16)
    n_targets = len(S.prunable(model))
    layers = [m for _, m in S.prunable(model)]
    S.apply_masks(layers, S.prune_masks(layers, 0.7))
    with torch.no_grad():
        ref = model(x)
    report = S.sparsify_module(model, None)
    assert len(report) == n_targets and not S.prunable(model)
    assert all(abs(r["sparsity"] - 0.7) < 0.05 for r in report)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-4)
    with pytest.raises(ValueError, match="no nn.Linear"):
        S.sparsify_module(nn.Sequential(nn.ReLU()), 0.5)


def test_global_and_layer_masks_and_schedule():
    a, b = nn.Linear(10, 10), nn.Linear(10, 10)
    with torch.no_grad():
        b.weight.mul_(100)
    glob = S.prune_masks([a, b], 0.5, scope="global")
    assert glob[0].sum() < glob[1].sum()               # the larger layer keeps more
    per = S.prune_masks([a, b], 0.5, scope="layer")
    assert per[0].sum() == per[1].sum() == 50
    assert S.gradual_sparsity(0, 0.9, 0, 100) == 0.0
    assert S.gradual_sparsity(100, 0.9, 0, 100) == pytest.approx(0.9)
    assert S.gradual_sparsity(50, 0.9, 0, 100) > 0.45   # cubic: fast early
    with pytest.raises(ValueError):
        S.gradual_sparsity(5, 0.9, 10, 10)


def test_iso_flop_widths_keep_nonzeros_and_prune_regrow_keeps_count():
    sizes = [64, 16, 16, 10]
    wide, sp = S.iso_flop_sparsities(sizes, 4)
    assert wide == [64, 64, 64, 10]
    for a, b2, wa, wb, s in zip(sizes[:-1], sizes[1:], wide[:-1], wide[1:], sp):
        assert wa * wb * (1 - s) == pytest.approx(a * b2)
    m = S.MaskedMLP(wide, sp, seed=0)
    before = [int(k.sum()) for k in m.masks]
    S.prune_regrow(m, 0.3, torch.Generator().manual_seed(0))
    assert [int(k.sum()) for k in m.masks] == before


def _tiny_digits(n_train=200, n_test=60):
    xtr, ytr, xte, yte = S.digits(8, seed=0)
    return xtr[:n_train], ytr[:n_train], xte[:n_test], yte[:n_test]


def test_epochs_to_reach_and_learning_curves_do_not_change_training():
    assert S.epochs_to_reach([0.2, 0.5, 0.96, 1.0]) == 3
    assert S.epochs_to_reach([0.8]) == 1
    assert S.epochs_to_reach([0.1, 0.99, 0.5]) == 2     # 95% of the *final* accuracy
    with pytest.raises(ValueError):
        S.epochs_to_reach([])
    xtr, ytr, xte, yte = _tiny_digits()
    seen = []
    a = S.train(S.MaskedMLP([64, 16, 10], [0.0, 0.0], seed=1), xtr, ytr, epochs=2, seed=1)
    b = S.train(S.MaskedMLP([64, 16, 10], [0.0, 0.0], seed=1), xtr, ytr, epochs=2, seed=1,
                on_epoch=lambda e, m: seen.append((e, S.accuracy(m, xte, yte))))
    assert [e for e, _ in seen] == [1, 2]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_random_search_trial_records_curves():
    r = S.random_search_trial(_tiny_digits(), hidden=[16], sparsity=0.5, candidates=2, search_epochs=1,
                              epochs=3, seed=0)
    for key in ("search", "random"):
        c = r[f"{key}_curve"]
        assert len(c) == 3 and all(0.0 <= v <= 1.0 for v in c)
        assert r[f"{key}_acc"] == pytest.approx(c[-1])
        assert r[f"{key}_auc"] == pytest.approx(float(np.mean(c)))
        assert 1 <= r[f"{key}_t95"] <= 3


def test_accuracy_vs_sparsity_covers_every_configuration():
    xtr, ytr, xte, yte = S.digits(8, seed=0)
    data = (xtr[:128], ytr[:128], xte[:40], yte[:40])
    runs, nets = S.accuracy_vs_sparsity(data, width=4, sparsities=[0.0, 0.8], group_sparsities=[0.5],
                                        epochs=1, seeds=2)
    assert len(runs) == 6 and set(nets) == {("unstructured", 0.0), ("unstructured", 0.8), ("1x4", 0.5)}
    got = runs.groupby(["pattern", "sparsity"])["achieved"].mean()
    assert got[("unstructured", 0.8)] == pytest.approx(0.8, abs=0.02) and got[("unstructured", 0.0)] == 0.0
    summ = S.accuracy_summary(runs)
    assert list(summ["count"]) == [2, 2, 2] and (summ["std"] >= 0).all()
    with pytest.raises(ValueError):
        S.accuracy_vs_sparsity(data, width=4, sparsities=[1.0], epochs=1)
    with pytest.raises(ValueError):
        S.accuracy_vs_sparsity(data, width=4, sparsities=[0.5], epochs=1, seeds=0)


def test_paired_test_and_break_even():
    r = S.paired_test([0.9, 0.8, 0.85, 0.95], [0.8, 0.7, 0.8, 0.9])
    assert r["mean_diff"] == pytest.approx(0.075) and r["t_p"] < 0.05 and r["ci_lo"] > 0
    assert S.break_even([0.0, 0.5, 0.9], [0.5, 0.8, 1.6]) == pytest.approx(0.5 + 0.2 / 0.8 * 0.4)
    assert S.break_even([0.0, 0.5], [1.2, 2.0]) == 0.0
    assert np.isnan(S.break_even([0.0, 0.5], [0.2, 0.4]))


def test_fallback_path_gives_the_same_answer(monkeypatch):
    w = torch.randn(9, 11)
    sw = S.sparsify(w, 0.5, "1x4")
    x = torch.randn(4, 11)
    fast = S.linear(x, sw)
    monkeypatch.setattr(S, "backend", lambda: "fallback")
    assert torch.allclose(S.linear(x, sw), fast, atol=1e-5)


def test_backend_is_cpp_whenever_the_library_is_built():
    from effnb import ext
    if ext.load():
        assert S.backend() == "cpp", "the effnb library is loaded but lacks the sparse ops: rebuild it"
    else:
        assert S.backend() == "fallback"


def test_unbuilt_library_falls_back_and_still_answers(tmp_path):
    import subprocess
    import sys
    code = ("import torch; from effnb import sparse as S; w = torch.randn(6, 9); sw = S.sparsify(w, 0.5); "
            "x = torch.randn(2, 9); assert S.backend() == 'fallback', S.backend(); "
            "assert torch.allclose(S.linear(x, sw), x @ sw.to_dense().t(), atol=1e-5); print('fallback ok')")
    env = dict(__import__("os").environ, EFFNB_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "fallback ok" in out.stdout, out.stderr[-2000:]
