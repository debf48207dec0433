"""Physical removal of attention heads and FFN neurons from a BERT encoder, chosen by their effect on a task.

Why physical: a mask leaves every matrix its full size, so nothing gets faster or
smaller. Removing head h of a layer deletes rows of the query, key and value
weights and the matching columns of the attention output projection; removing
FFN neuron j deletes row j of the first FFN matrix and column j of the second.
The encoder that results is an ordinary dense model with smaller matrices.

Which parts go is decided the way Michel et al. rank heads: a gate of 1 on
every head and neuron, and the size of the task loss's gradient with respect
to each gate (how much the loss moves if that part is scaled away), normalised
per layer. AxFormer's "accuracy-driven" part is the stopping rule: remove more
while the validation metric stays within a tolerance of the unpruned model's.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch


def _layers(bert):
    return list(bert.encoder.layer)


def heads_of(layer) -> int:
    """Heads a (possibly pruned) BERT layer has now."""
    sa = layer.attention.self
    return sa.query.out_features // sa.attention_head_size


def shape_of(bert) -> dict:
    """Heads and FFN neurons per layer: what a pruned encoder kept."""
    return {"heads": [heads_of(l) for l in _layers(bert)],
            "neurons": [l.intermediate.dense.out_features for l in _layers(bert)]}


@contextmanager
def gates(bert):
    """Multiplicative gates of 1 on every head's output and every FFN neuron, as leaf tensors
    that collect gradients: ``with gates(bert) as (head_g, neuron_g): ...`` ([layers][H], [layers][F])."""
    hooks, head_g, neuron_g = [], [], []
    for layer in _layers(bert):
        sa = layer.attention.self
        hg = torch.ones(heads_of(layer), requires_grad=True)
        ng = torch.ones(layer.intermediate.dense.out_features, requires_grad=True)

        def gate_heads(_mod, _inp, out, hg=hg, d=sa.attention_head_size):
            ctx = out[0] if isinstance(out, tuple) else out
            b, n, _ = ctx.shape
            ctx = (ctx.view(b, n, -1, d) * hg.view(1, 1, -1, 1)).view(b, n, -1)
            return (ctx, *out[1:]) if isinstance(out, tuple) else ctx

        hooks.append(sa.register_forward_hook(gate_heads))
        hooks.append(layer.intermediate.register_forward_hook(lambda _m, _i, out, ng=ng: out * ng))
        head_g.append(hg)
        neuron_g.append(ng)
    try:
        yield head_g, neuron_g
    finally:
        for h in hooks:
            h.remove()


def importance(bert, batches: list[dict], loss_fn: Callable, encode: Callable) -> dict:
    """|d loss / d gate| summed over ``batches`` for every head and neuron, each layer's scores
    divided by their L2 norm (so layers compare). ``encode(bert, [batch], grad=True)`` gives the
    batch's embeddings and ``loss_fn(emb, batch)`` the task loss on them."""
    bert.eval()
    with gates(bert) as (head_g, neuron_g):
        h_imp = [torch.zeros_like(g) for g in head_g]
        n_imp = [torch.zeros_like(g) for g in neuron_g]
        for b in batches:
            loss = loss_fn(encode(bert, [b], grad=True), b)
            grads = torch.autograd.grad(loss, head_g + neuron_g)
            for acc, g in zip(h_imp + n_imp, grads):
                acc += g.abs()
    norm = lambda v: v / v.norm().clamp(min=1e-12)
    return {"heads": [norm(v) for v in h_imp], "neurons": [norm(v) for v in n_imp]}


def _keep_linear(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` of the weight (0: outputs, 1: inputs)."""
    from transformers.pytorch_utils import prune_linear_layer  # what transformers 5 keeps of head pruning
    return prune_linear_layer(linear, index, dim=dim).requires_grad_(False)


def remove(bert, keep_heads: list[list[int]], keep_neurons: list[list[int]]):
    """A copy of ``bert`` with only the listed heads and FFN neurons of each layer, physically.

    Every layer keeps at least one head and one neuron (an empty matrix breaks the forward);
    say so with a ValueError before copying anything."""
    layers = _layers(bert)
    if len(keep_heads) != len(layers) or len(keep_neurons) != len(layers):
        raise ValueError(f"pass one list of heads and one of neurons per layer ({len(layers)} layers)")
    for i, (h, n) in enumerate(zip(keep_heads, keep_neurons)):
        if not h or not n:
            raise ValueError(f"layer {i}: keep at least one head and one neuron (got {len(h)} heads, {len(n)} neurons)")
    out = copy.deepcopy(bert)
    for layer, heads, neurons in zip(_layers(out), keep_heads, keep_neurons):
        sa, d = layer.attention.self, layer.attention.self.attention_head_size
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in sorted(heads)])
        sa.query, sa.key, sa.value = (_keep_linear(m, rows, 0) for m in (sa.query, sa.key, sa.value))
        layer.attention.output.dense = _keep_linear(layer.attention.output.dense, rows, 1)
        sa.num_attention_heads = len(heads)
        sa.all_head_size = len(heads) * d
        idx = torch.tensor(sorted(neurons))
        layer.intermediate.dense = _keep_linear(layer.intermediate.dense, idx, 0)
        layer.output.dense = _keep_linear(layer.output.dense, idx, 1)
    return out.eval()


def keep_sets(scores: dict, head_frac: float, neuron_frac: float) -> tuple[list, list]:
    """Which heads and neurons survive removing the ``head_frac`` / ``neuron_frac`` least important
    of the whole encoder (ranked globally across layers; every layer keeps its best one)."""
    def keep(per_layer: list[torch.Tensor], frac: float) -> list[list[int]]:
        if not 0 <= frac < 1:
            raise ValueError(f"a fraction to remove must be in [0, 1), got {frac}")
        flat = torch.cat(per_layer)
        drop = int(round(frac * flat.numel()))
        cut = torch.sort(flat).values[drop - 1] if drop else -torch.inf
        sets = []
        for v in per_layer:
            kept = [int(i) for i in torch.nonzero(v > cut).flatten()]
            sets.append(kept or [int(torch.argmax(v))])
        return sets
    return keep(scores["heads"], head_frac), keep(scores["neurons"], neuron_frac)


@dataclass
class Step:
    head_frac: float
    neuron_frac: float
    metric: float
    params: int
    kept: bool


def accuracy_driven(bert, scores: dict, evaluate: Callable, schedule: list[tuple[float, float]],
                    tolerance: float, progress: bool = True):
    """Remove ever larger fractions (``schedule``: (head_frac, neuron_frac) pairs in increasing
    order) while ``evaluate(model)`` (a validation metric, higher is better) stays within
    ``tolerance`` of the unpruned model's; returns (chosen model, its step, every step, baseline).

    AxFormer's rule: the validation set, not a size budget, decides how much goes. The search
    stops at the first step that breaks the tolerance (later, larger steps are not tried)."""
    from ..plots import quiet_tqdm
    base = evaluate(bert)
    count = lambda m: sum(p.numel() for p in m.encoder.parameters())
    best, best_step, steps = bert, Step(0.0, 0.0, base, count(bert), True), []
    for hf, nf in quiet_tqdm()(schedule, desc="pruning", disable=not progress, leave=False):
        model = remove(bert, *keep_sets(scores, hf, nf))
        metric = evaluate(model)
        ok = metric >= base - tolerance
        steps.append(Step(hf, nf, metric, count(model), ok))
        if not ok:
            break
        best, best_step = model, steps[-1]
    return best, best_step, steps, base


def recover(student, teacher, batches: list[dict], encode: Callable, epochs: int = 1, lr: float = 1e-4,
            seed: int = 0, progress: bool = True) -> list[float]:
    """Train a pruned ``student`` to reproduce the unpruned ``teacher``'s sentence embeddings
    (loss 1 - cosine) on ``batches`` of unlabelled text; returns the loss per step.

    Why: AxFormer fine-tunes after pruning; here the task labels stay with the probe, so the
    encoder only learns to give the old embeddings back (no labels, so no leak from the test).
    """
    from ..plots import quiet_tqdm
    torch.manual_seed(seed)
    targets = [encode(teacher, [b]) for b in batches]
    student.train()
    for mod in student.modules():  # dropout off: the teacher's embeddings came without it
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    params = [p.requires_grad_(True) for p in student.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    order = torch.Generator().manual_seed(seed)
    steps = [int(i) for _ in range(epochs) for i in torch.randperm(len(batches), generator=order)]
    for i in quiet_tqdm()(steps, desc="recovery", disable=not progress, leave=False):
        loss = (1 - (encode(student, [batches[i]], grad=True) * targets[i]).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    student.eval()
    for p in params:
        p.requires_grad_(False)
    return losses
