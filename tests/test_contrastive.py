"""PamC's meta-node contrast against pairwise InfoNCE: the graph, the approximation, the counts, the checks."""
import math

import numpy as np
import pytest
import torch

from effnb.attention import contrastive as C


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small():
    return C.digits_graph(300, k=5)


def test_digits_nodes_are_real_digits_and_shifted_copies():
    from sklearn.datasets import load_digits
    d = load_digits()
    x, y = C.digits_nodes(C.DIGITS_N + 5)
    assert x.shape == (C.DIGITS_N + 5, 64) and y.shape == (C.DIGITS_N + 5,)
    np.testing.assert_allclose(x[:C.DIGITS_N], d.data / 16.0, atol=1e-6)
    assert (y[C.DIGITS_N:] == d.target[:5]).all()  # copies keep their labels
    shifted = np.zeros((8, 8), np.float32)
    shifted[:, 1:] = d.images[0, :, :7] / 16.0  # first copy: one pixel to the right, zero fill
    np.testing.assert_allclose(x[C.DIGITS_N].reshape(8, 8), shifted, atol=1e-6)
    assert len(C.digits_nodes(C.MAX_NODES)[0]) == 9 * C.DIGITS_N


def test_graph_is_symmetric_with_self_loops_and_degree_k(small):
    g, n = small, small.n
    a = g.a.toarray()
    assert (a == a.T).all() and (np.diag(a) == 0).all() and set(np.unique(a)) == {0.0, 1.0}
    assert (a.sum(1) >= g.k).all()  # each node keeps its own k nearest, symmetrising only adds
    adj = g.adj.to_dense().numpy()
    a_hat = a + np.eye(n)
    d = a_hat.sum(1) ** -0.5
    np.testing.assert_allclose(adj, d[:, None] * a_hat * d[None, :], atol=1e-6)
    assert (np.diag(adj) > 0).all()
    np.testing.assert_allclose(g.pos.to_dense().sum(1).numpy(), np.ones(n), atol=1e-5)
    assert g.edges == int(a.sum())


def _clustered(n_per, clusters, hidden, spread, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, hidden, generator=gen), dim=1)
    z = centres.repeat_interleave(n_per, 0) + spread * torch.randn(n_per * clusters, hidden, generator=gen)
    z = torch.nn.functional.normalize(z, dim=1)
    labels = torch.arange(clusters).repeat_interleave(n_per)
    return z, labels


def test_meta_nodes_are_exact_for_hard_assignments_and_identical_embeddings():
    z, labels = _clustered(20, 4, 8, spread=0.0)
    p = torch.nn.functional.one_hot(labels, 4).float()
    torch.testing.assert_close(C.meta_negatives(z, p, 0.5), C.block_negatives(z, p, 0.5), rtol=1e-5, atol=0)
    # pamc's term is then the exact log mean of exp-similarity over node pairs in different clusters
    s = torch.exp(z @ z.T / 0.5)
    diff = labels[:, None] != labels[None, :]
    torch.testing.assert_close(C.pamc_negatives(z, p, 0.5), torch.log(s[diff].mean()), rtol=1e-5, atol=1e-6)


def test_meta_nodes_are_a_lower_bound_that_tightens_with_the_clusters():
    def error(spread, sharpness):
        z, labels = _clustered(30, 5, 16, spread)
        gen = torch.Generator().manual_seed(1)
        logits = torch.nn.functional.one_hot(labels, 5).float() * sharpness + 0.3 * torch.randn(150, 5, generator=gen)
        p = torch.softmax(logits, 1)
        exact, approx = C.block_negatives(z, p, 0.5), C.meta_negatives(z, p, 0.5)
        assert (approx <= exact * (1 + 1e-5)).all()  # Jensen: exp of the mean <= mean of the exp
        # the blocks add up to every node pair, whatever the (soft) assignment
        n_c = p.sum(0)
        torch.testing.assert_close((exact * n_c[:, None] * n_c[None, :]).sum(), torch.exp(z @ z.T / 0.5).sum(),
                                   rtol=1e-4, atol=0)
        return float(((exact - approx) / exact).abs().max())

    # near-hard assignments (top weight ~0.9998): tight clusters are within 1%, looser ones drift off
    errors = [error(spread, 10) for spread in (0.02, 0.1, 0.4)]
    assert errors == sorted(errors) and errors[0] < 0.01 and errors[-1] > 0.05, errors
    assert error(0.02, 4) > 10 * errors[0]  # soft assignments (top weight ~0.93) mix clusters: looser too


@pytest.mark.parametrize("loss", C.LOSSES)
def test_losses_are_finite_and_decrease(small, loss):
    torch.manual_seed(0)
    model = C.Model(64, 16, 4)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    values = []
    for _ in range(15):
        opt.zero_grad()
        z, p = model(small.adj, small.x)
        value = C.loss_value(loss, z, p, small)
        value.backward()
        opt.step()
        values.append(value.item())
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < values[0] - 0.1, values


def test_biggest_tensor_is_quadratic_for_pairwise_and_linear_for_pamc():
    sizes, numel = (150, 300, 600), {loss: [] for loss in C.LOSSES}
    for n in sizes:
        g = C.knn_graph(*C.digits_nodes(n), k=5)
        z = torch.nn.functional.normalize(torch.randn(n, 16), dim=1)
        p = torch.softmax(torch.randn(n, 4), 1)
        for loss in C.LOSSES:
            shape = C.largest_tensor(loss, z, p, g)
            numel[loss].append(math.prod(shape))
            if loss == "pairwise":
                assert shape == (n, n)
            else:
                assert shape[0] == n and math.prod(shape) <= n * 16
    assert [b / a for a, b in zip(numel["pairwise"], numel["pairwise"][1:])] == [4.0, 4.0]
    assert [b / a for a, b in zip(numel["pamc"], numel["pamc"][1:])] == [2.0, 2.0]


def test_train_records_both_losses(small):
    recs = {loss: C.train(small, loss, epochs=3, clusters=4, hidden=16, threads=1) for loss in C.LOSSES}
    for r in recs.values():
        assert r.n == 300 and r.sec_per_epoch > 0 and r.infer_s > 0 and math.isfinite(r.final_loss)
        assert 0 <= r.nmi <= 1 and -1 <= r.ari <= 1
    assert recs["pairwise"].largest == (300, 300)
    assert recs["pairwise"].peak_bytes > recs["pamc"].peak_bytes > 0
    km = C.kmeans_baseline(small, clusters=10)
    assert 0.3 < km["nmi"] <= 1


def test_bad_input_says_what_to_pass_before_any_work(small, monkeypatch):
    with pytest.raises(ValueError, match="k must be .*1 to n-1=299"):
        C.knn_graph(*C.digits_nodes(300), k=300)
    monkeypatch.setattr(C, "knn_graph", lambda *a, **k: pytest.fail("built a graph before checking"))
    monkeypatch.setattr(C, "digits_nodes", lambda *a, **k: pytest.fail("loaded data before checking"))
    monkeypatch.setattr(C, "Model", lambda *a, **k: pytest.fail("built a model before checking"))
    with pytest.raises(ValueError, match="k must"):
        C.digits_graph(100, k=100)
    with pytest.raises(ValueError, match="n must be .* from 2 to 16173"):
        C.digits_graph(20000)
    with pytest.raises(ValueError, match=r"loss must be one of \('pairwise', 'pamc'\)"):
        C.train(small, "infonce")
    with pytest.raises(ValueError, match="clusters must .* at least 2.*pass clusters"):
        C.train(small, "pamc", clusters=1)
    with pytest.raises(ValueError, match="epochs must"):
        C.train(small, "pamc", epochs=2)
    with pytest.raises(ValueError, match="k must"):
        C.scaling(sizes=(1797, 50), k=60)
    with pytest.raises(ValueError, match="loss must"):
        C.largest_tensor("dense", torch.zeros(3, 2), torch.zeros(3, 2), small)
