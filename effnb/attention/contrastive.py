"""Meta-node contrast (PamC) against the pairwise InfoNCE it replaces, on a real k-nearest-neighbour graph.

Why: a node-level contrastive loss compares every node with every other one (an ``n x n`` similarity
matrix: quadratic time and memory). PamC ("Efficient block contrastive learning via
parameter-free meta-node approximation") replaces node pairs by pairs of *meta-nodes* built from learnt
soft cluster assignments, so all negatives are covered in time linear in ``n``.

Our reading (we have the abstract only, not the paper's equations):

* Meta-nodes: ``n_c = sum_i p_ic`` and ``mu_c = sum_i p_ic z_i / n_c`` (the ``C x h`` soft centroids;
  "parameter-free": no weights beyond the assignment head ``p`` the clustering needs anyway).
* Positives (both losses, ``O(|E| h)``): ``pos = mean_i mean_{j in N(i)} z_i . z_j / tau`` over graph
  neighbours, one sparse matmul.
* ``pairwise`` negatives (``O(n^2 h)``): ``mean_i log sum_{k != i} exp(z_i . z_k / tau)``.
* ``pamc`` negatives (``O(n C h + C^2 h)``), at graph level over cluster pairs ``a != b``:
  ``log( sum_{a!=b} n_a n_b exp(mu_a . mu_b / tau) / sum_{a!=b} n_a n_b )``.
* How it approximates the pairwise sum: write all node pairs as ``C x C`` blocks,
  ``B_ab = sum_{i,k} p_ia p_kb exp(s_ik)`` (their sum over ``a, b`` is ``sum_{i,k} exp(s_ik)`` since each
  row of ``p`` sums to 1). The block's weighted *mean similarity* is exactly ``mu_a . mu_b / tau``
  (bilinearity); PamC swaps mean and exp, ``B_ab / (n_a n_b) ~ exp(mu_a . mu_b / tau)``. By Jensen this is
  a lower bound, exact when each block's similarities are constant (hard one-hot ``p`` with identical
  embeddings inside a cluster) and close when clusters are tight: :func:`block_negatives` (exact,
  quadratic) and :func:`meta_negatives` (linear) let the tests check both. Dropping the ``a = b`` blocks
  keeps same-cluster nodes out of the negatives (the paper's "sampling bias"); with them, the term would
  be minimised by making every centroid the global mean, i.e. by *un*-clustering ``p``.
* Cluster term (both losses, so the two differ only in their negatives): ``log C - H(mean_i p_i)``
  (balance: stops every node joining one cluster) ``+ 0.2 mean_i H(p_i)`` (confidence), ``O(n C)``.
* Objective: ``-pos + negatives + cluster term``; ``argmax p`` are the clusters.

Inference: the loss runs only in training; both losses share the encoder and head, so assigning all
nodes costs the same (``infer_x`` ~ 1 up to noise). The paper's 1.8x inference gain must come from
something the abstract does not describe (its models or baselines differ); we do not invent it.

Memory on CPU: :func:`effnb.memory.peak_bytes` reads torch's own CPU allocator counter (``total_allocated`` of
the profiler's allocation events, ``profile_memory=True``): bytes allocated during one training step and
still live, at their peak. tracemalloc does not see torch's allocations, ru_maxrss never goes down.
:func:`largest_tensor` records, through a dispatch mode, the shape of the biggest tensor any op builds in
one loss forward and backward: a count the tests can check without timing.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import memory
from ..threads import torch_threads

LOSSES = ("pairwise", "pamc")
DIGITS_N = 1797
# 1-pixel shifts (dy, dx) of the 8x8 digit images: four axis shifts, then four diagonal ones.
SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))
MAX_NODES = DIGITS_N * (1 + len(SHIFTS))
# Weight of the per-node entropy in :func:`cluster_term`: 0.2 gave the best NMI of 0.1 / 0.2 / 0.3 for BOTH
# losses on digits (150 epochs); at 1.0 the assignments harden before the embedding has formed.
CONFIDENCE = 0.2


# ----------------------------------------------------------------------------- checks (before any work)
def _check_loss(loss) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def _check_clusters(clusters, n: int | None = None) -> int:
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 2:
        raise ValueError(f"clusters must be a whole number of at least 2, got {clusters!r}; pass clusters=10 "
                         "for digits")
    if n is not None and clusters > n:
        raise ValueError(f"clusters={clusters} is more than the {n} nodes; pass clusters at most {n}")
    return clusters


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be a whole number from 1 to n-1={n - 1} (neighbours per node), got {k!r}")
    return k


def _check_nodes(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_NODES:
        raise ValueError(f"n must be a whole number of nodes from 2 to {MAX_NODES} (digits and its 8 shifted "
                         f"copies), got {n!r}")
    return n


def _check_positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


# ----------------------------------------------------------------------------- data: real digits, kNN graph
def digits_nodes(n: int = DIGITS_N) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` nodes of scikit-learn's bundled digits (1797 8x8 images, 10 classes) followed by
    its 1-pixel shifted copies (zero fill, labels kept): ``n`` up to 9 x 1797. Features scaled to [0, 1]."""
    _check_nodes(n)
    from sklearn.datasets import load_digits
    d = load_digits()
    imgs, y = d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)
    copies = [imgs]
    for dy, dx in SHIFTS[:math.ceil(n / DIGITS_N) - 1]:
        s = np.zeros_like(imgs)
        s[:, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)] = \
            imgs[:, max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)]
        copies.append(s)
    x = np.concatenate(copies).reshape(-1, 64)[:n]
    return np.ascontiguousarray(x), np.tile(y, len(copies))[:n]


@dataclass(frozen=True)
class Graph:
    """Node features, labels, the GCN operator ``D^-1/2 (A + I) D^-1/2`` and the positives' operator
    ``D^-1 A`` (row-normalised neighbours, no self loops), both sparse COO; ``a`` is the 0/1 adjacency."""
    x: torch.Tensor
    y: np.ndarray
    adj: torch.Tensor
    pos: torch.Tensor
    a: object  # scipy.sparse csr, symmetric, no self loops
    k: int

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def edges(self) -> int:
        """Directed edges (each undirected edge counted twice), self loops excluded."""
        return int(self.a.nnz)


def _coo(m) -> torch.Tensor:
    m = m.tocoo()
    idx = torch.from_numpy(np.vstack([m.row, m.col]).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(m.data.astype(np.float32)), m.shape,
                                   check_invariants=False).coalesce()


def knn_graph(x: np.ndarray, y: np.ndarray, k: int = 10) -> Graph:
    """Symmetric kNN graph: ``i ~ j`` when either is among the other's ``k`` nearest (Euclidean), so every
    node has at least ``k`` neighbours, plus a self loop in the GCN operator."""
    import scipy.sparse as sp
    from sklearn.neighbors import NearestNeighbors
    n = len(x)
    _check_k(k, n)
    nbr = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(return_distance=False)  # no X: self excluded
    a = sp.csr_matrix((np.ones(n * k, np.float32), (np.repeat(np.arange(n), k), nbr.ravel())), shape=(n, n))
    a = ((a + a.T) > 0).astype(np.float32).tocsr()
    a.setdiag(0)
    a.eliminate_zeros()
    a_hat = a + sp.identity(n, np.float32, format="csr")
    d = np.asarray(a_hat.sum(1)).ravel() ** -0.5
    adj = sp.diags(d) @ a_hat @ sp.diags(d)
    pos = sp.diags(1.0 / np.asarray(a.sum(1)).ravel()) @ a
    return Graph(torch.from_numpy(x), y, _coo(adj), _coo(pos), a, k)


def digits_graph(n: int = DIGITS_N, k: int = 10) -> Graph:
    """:func:`knn_graph` of :func:`digits_nodes` (``k`` checked before the data is loaded)."""
    _check_nodes(n)
    _check_k(k, n)
    return knn_graph(*digits_nodes(n), k=k)


# ----------------------------------------------------------------------------- model and losses
class Model(torch.nn.Module):
    """2-layer GCN -> L2-normalised embeddings ``z`` (n x hidden); cosine head -> soft assignments
    ``p = softmax(z W^T / tau_c)`` over ``clusters`` (W's rows normalised: the clusters' prototypes)."""

    def __init__(self, d_in: int, hidden: int, clusters: int, tau_c: float = 0.1):
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(d_in, hidden), torch.nn.Linear(hidden, hidden)
        self.head = torch.nn.Parameter(torch.randn(clusters, hidden))
        self.tau_c = tau_c

    def forward(self, adj: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(torch.sparse.mm(adj, self.l1(x)))
        z = F.normalize(torch.sparse.mm(adj, self.l2(h)), dim=1)
        return z, torch.softmax(z @ F.normalize(self.head, dim=1).T / self.tau_c, dim=1)


def positive_term(z: torch.Tensor, pos: torch.Tensor, tau: float) -> torch.Tensor:
    """``mean_i mean_{j in N(i)} z_i . z_j / tau``: one sparse matmul, ``O(|E| h)``."""
    return (z * torch.sparse.mm(pos, z)).sum(1).mean() / tau


def pairwise_negatives(z: torch.Tensor, tau: float) -> torch.Tensor:
    """``mean_i log sum_{k != i} exp(z_i . z_k / tau)``: the full ``n x n`` similarity matrix."""
    s = z @ z.T / tau
    s.diagonal().fill_(float("-inf"))  # exact self-exclusion, in place: no second n x n tensor
    return torch.logsumexp(s, dim=1).mean()


def pamc_negatives(z: torch.Tensor, p: torch.Tensor, tau: float) -> torch.Tensor:
    """Weighted log-mean-exp of meta-node similarities over cluster pairs ``a != b`` (module doc)."""
    n_c = p.sum(0)
    mu = (p.T @ z) / n_c[:, None]
    off = ~torch.eye(len(n_c), dtype=torch.bool)
    logw = (torch.log(n_c)[:, None] + torch.log(n_c)[None, :])[off]
    return torch.logsumexp((mu @ mu.T / tau)[off] + logw, 0) - torch.logsumexp(logw, 0)


def cluster_term(p: torch.Tensor, confidence: float = CONFIDENCE) -> torch.Tensor:
    """``log C - H(mean p)`` (balance, 0 when clusters are equal-sized) ``+ confidence * mean_i H(p_i)``."""
    eps = 1e-8
    mean = p.mean(0)
    entropy = -(p * torch.log(p + eps)).sum(1).mean()
    return math.log(p.shape[1]) + (mean * torch.log(mean + eps)).sum() + confidence * entropy


def loss_value(loss: str, z: torch.Tensor, p: torch.Tensor, graph: Graph, tau: float = 0.5) -> torch.Tensor:
    """The training objective: ``-pos + negatives + cluster_term`` with ``loss``'s negatives."""
    neg = pairwise_negatives(z, tau) if _check_loss(loss) == "pairwise" else pamc_negatives(z, p, tau)
    return -positive_term(z, graph.pos, tau) + neg + cluster_term(p)


def block_negatives(z: torch.Tensor, p: torch.Tensor, tau: float) -> torch.Tensor:
    """Exact ``C x C`` block means ``B_ab / (n_a n_b)`` of ``exp(z_i . z_k / tau)`` (quadratic: tests only)."""
    n_c = p.sum(0)
    return (p.T @ torch.exp(z @ z.T / tau) @ p) / (n_c[:, None] * n_c[None, :])


def meta_negatives(z: torch.Tensor, p: torch.Tensor, tau: float) -> torch.Tensor:
    """PamC's stand-in for :func:`block_negatives`: ``exp(mu_a . mu_b / tau)``, linear in ``n``."""
    mu = (p.T @ z) / p.sum(0)[:, None]
    return torch.exp(mu @ mu.T / tau)


# ----------------------------------------------------------------------------- counting tensors
def largest_tensor(loss: str, z: torch.Tensor, p: torch.Tensor, graph: Graph, tau: float = 0.5) -> tuple:
    """Shape of the biggest tensor any op outputs in one forward and backward of ``loss`` on fixed
    ``z, p`` (recorded by a dispatch mode, not predicted): ``(n, n)`` for pairwise, linear for pamc."""
    from torch.utils._python_dispatch import TorchDispatchMode
    _check_loss(loss)
    best = [()]

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.numel() > math.prod(best[0]):
                    best[0] = tuple(t.shape)  # sparse results are skipped: their values are dense outputs too
            return out

    z, p = z.detach().requires_grad_(), p.detach().requires_grad_()
    with Record():
        loss_value(loss, z, p, graph, tau).backward()
    return best[0]


# ----------------------------------------------------------------------------- training and measuring
@dataclass
class Record:
    """One training run: ``sec_per_epoch`` (median, one full-batch step), ``infer_s`` (median encoder +
    head + argmax on all nodes), ``peak_bytes`` (:func:`effnb.memory.peak_bytes` of one step), ``largest``
    (:func:`largest_tensor` shape) and clustering quality of ``argmax p`` (NMI, ARI)."""
    loss: str
    n: int
    edges: int
    epochs: int
    seed: int
    sec_per_epoch: float
    infer_s: float
    peak_bytes: int
    largest: tuple
    largest_bytes: int
    final_loss: float
    nmi: float
    ari: float

    def as_dict(self) -> dict:
        return asdict(self)


def _quality(y, labels) -> tuple[float, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    return float(normalized_mutual_info_score(y, labels)), float(adjusted_rand_score(y, labels))


def train(graph: Graph, loss: str = "pamc", epochs: int = 150, seed: int = 0, hidden: int = 64,
          clusters: int = 10, lr: float = 0.01, tau: float = 0.5, threads: int | None = None,
          infer_repeats: int = 20) -> Record:
    """Full-batch Adam on ``graph`` with ``loss``; measures as :class:`Record` says. Epoch 0 warms up,
    epoch 1 is profiled for memory, the other ``epochs - 2`` are timed (all of them train);
    ``threads`` sets torch's count for the run and restores it after."""
    _check_loss(loss)
    _check_clusters(clusters, graph.n)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 3:
        raise ValueError(f"epochs must be a whole number of at least 3 (one warm-up, one profiled, the rest "
                         f"timed), got {epochs!r}")
    _check_positive(hidden=hidden, lr=lr, tau=tau, infer_repeats=infer_repeats)
    with torch_threads(threads):
        torch.manual_seed(seed)
        model = Model(graph.x.shape[1], hidden, clusters)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        last = [float("nan")]

        def step():
            opt.zero_grad(set_to_none=True)
            z, p = model(graph.adj, graph.x)
            value = loss_value(loss, z, p, graph, tau)
            value.backward()
            opt.step()
            last[0] = float(value.detach())

        step()  # epoch 0 warms up (allocations, Adam state): not timed
        peak = memory.peak_bytes(step)  # epoch 1 is the profiled one: not timed either
        times = []
        for _ in range(epochs - 2):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        with torch.no_grad():
            infer = []
            for _ in range(infer_repeats):
                t0 = time.perf_counter()
                labels = model(graph.adj, graph.x)[1].argmax(1)
                infer.append(time.perf_counter() - t0)
            z, p = model(graph.adj, graph.x)
        shape = largest_tensor(loss, z, p, graph, tau)
    nmi, ari = _quality(graph.y, labels.numpy())
    return Record(loss, graph.n, graph.edges, epochs, seed, statistics.median(times), statistics.median(infer),
                  peak, shape, 4 * math.prod(shape), last[0], nmi, ari)


def kmeans_baseline(graph: Graph, clusters: int = 10, seed: int = 0) -> dict:
    """scikit-learn KMeans (10 restarts) on the raw pixel features: NMI and ARI against the labels."""
    _check_clusters(clusters, graph.n)
    from sklearn.cluster import KMeans
    labels = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(graph.x.numpy())
    nmi, ari = _quality(graph.y, labels)
    return {"method": "kmeans (raw pixels)", "nmi": nmi, "ari": ari}


def scaling(sizes=(DIGITS_N, 4500, 9000), epochs: int = 5, quality_epochs: int = 150, seeds=(0, 1),
            k: int = 10, hidden: int = 64, clusters: int = 10, lr: float = 0.01, tau: float = 0.5,
            threads: int | None = None) -> dict:
    """Time per epoch and memory of both losses at each graph size in ``sizes`` (``epochs`` steps each,
    one profiled), and clustering quality at ``n = 1797`` for both losses over ``seeds`` (plus KMeans).

    Returns ``{"rows": [Record dicts], "ratios": [{n, time_x, memory_x, largest_x, infer_x}],
    "quality": [{method, nmi, ari, nmi_sd, ari_sd, seeds, nmi_runs, ari_runs}]}``; ratios are pairwise /
    pamc; ``*_runs`` hold one figure per seed, in ``seeds``' order (paired across methods)."""
    sizes = [_check_nodes(n) for n in sizes]
    for n in sizes:
        _check_k(k, n)
        _check_clusters(clusters, n)
    _check_positive(quality_epochs=quality_epochs)
    if not seeds:
        raise ValueError("seeds must name at least one seed, e.g. seeds=(0,)")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 3:
        raise ValueError(f"epochs must be a whole number of at least 3 (one warm-up, one profiled, the rest "
                         f"timed), got {epochs!r}")
    kw = dict(hidden=hidden, clusters=clusters, lr=lr, tau=tau, threads=threads)
    rows, ratios = [], []
    for n in sizes:
        g = digits_graph(n, k)
        rec = {loss: train(g, loss, epochs=epochs, **kw) for loss in LOSSES}
        rows += [r.as_dict() for r in rec.values()]
        a, b = rec["pairwise"], rec["pamc"]
        ratios.append({"n": n, "edges": g.edges, "time_x": a.sec_per_epoch / b.sec_per_epoch,
                       "memory_x": a.peak_bytes / b.peak_bytes, "largest_x": a.largest_bytes / b.largest_bytes,
                       "infer_x": a.infer_s / b.infer_s})
    g = digits_graph(DIGITS_N, k)
    quality = []
    for loss in LOSSES:
        runs = [train(g, loss, epochs=int(quality_epochs), seed=s, **kw) for s in seeds]
        quality.append(_summary(loss, [(r.nmi, r.ari) for r in runs], seeds))
    km = [kmeans_baseline(g, clusters, s) for s in seeds]
    quality.append(_summary(km[0]["method"], [(r["nmi"], r["ari"]) for r in km], seeds))
    return {"rows": rows, "ratios": ratios, "quality": quality}


def _summary(method: str, pairs, seeds) -> dict:
    nmi, ari = np.array(pairs).T
    return {"method": method, "nmi": float(nmi.mean()), "ari": float(ari.mean()), "nmi_sd": float(nmi.std()),
            "ari_sd": float(ari.std()), "seeds": len(pairs), "nmi_runs": nmi.tolist(), "ari_runs": ari.tolist()}
