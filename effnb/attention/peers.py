"""What a reader could pick instead of our kernels: SDPA, a naive softmax, FlexAttention.

FlexAttention (``torch.nn.attention.flex_attention``) takes a mask as a Python
function and a block mask that lets it skip whole tiles; compiled by inductor
it runs on the CPU too. Routing attention becomes a block-sparse mask once the
tokens are sorted by cluster, so FlexAttention on the sorted sequence is the
like-for-like sparse peer. Compiling costs seconds per shape: its time is kept
apart (``compile_s``), never in the race.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import routing


def sdpa_causal(q, k, v):
    """Dense causal attention, (H, n, d): torch's fused kernel (flash-style on the CPU)."""
    return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]


def naive_causal(q, k, v):
    """The textbook formula: the whole (H, n, n) score matrix, masked, softmaxed, times V."""
    n = q.shape[1]
    s = (q @ k.transpose(1, 2)) / q.shape[-1] ** 0.5
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def flex_status() -> tuple[bool, str]:
    """Whether FlexAttention imports here (compiling is tried only when a race asks for it)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except Exception as e:   # pragma: no cover - depends on the torch build
        return False, f"torch {torch.__version__} has no FlexAttention: {type(e).__name__}: {e}"
    return True, f"torch {torch.__version__} FlexAttention, compiled by inductor for the CPU"


def _routed_block_mask(plan: routing.Plan, block: int, mask_mod):
    """FlexAttention's block mask for a shared plan in cluster order, built from the clusters' extents
    (``create_block_mask`` would evaluate the mask at all n^2 points: gigabytes at 16k tokens).
    Query tile ``t`` needs the key tiles from the one holding the first member of its first cluster
    up to ``t`` itself (causal in sorted order: within a cluster, order is position order)."""
    from torch.nn.attention.flex_attention import BlockMask
    h, n = plan.q_order.shape
    tiles = -(-n // block)
    starts = plan.q_offsets[:, :-1]                                   # (H, C) first slot of each cluster
    cluster_of_slot = torch.repeat_interleave(torch.arange(plan.clusters).repeat(h),
                                              plan.q_offsets.diff(dim=1).flatten()).view(h, n)
    first_slot = torch.gather(starts, 1, cluster_of_slot[:, ::block])    # cluster start of each tile's first slot
    lo = first_slot // block                                          # (H, tiles)
    t = torch.arange(tiles)
    count = (t - lo + 1).to(torch.int32)
    idx = (lo[..., None] + torch.arange(tiles)).clamp(max=tiles - 1).to(torch.int32)
    return BlockMask.from_kv_blocks(count[None], idx[None], BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(n, n))


def flex_routed(q, k, v, plan: routing.Plan, block: int = 128):
    """A callable running routing attention as FlexAttention on the cluster-sorted sequence:
    tokens of one cluster are contiguous after sorting, so the block mask keeps only the tiles on
    and near the diagonal. Needs a shared plan (queries and keys in the same clusters)."""
    from torch.nn.attention.flex_attention import flex_attention
    if plan.q_order is not plan.k_order:
        raise ValueError("flex_routed needs a shared plan (routing.plan(..., shared=True))")
    h, n, d = q.shape
    order = plan.q_order
    cluster = torch.gather(plan.labels(), 1, order)    # cluster of each sorted slot

    def same_cluster_causal(b, hh, qi, ki):            # in sorted order, position order = slot order
        return (cluster[hh, qi] == cluster[hh, ki]) & (ki <= qi)

    mask = _routed_block_mask(plan, block, same_cluster_causal)
    idx = order[..., None].expand(-1, -1, d)
    compiled = torch.compile(flex_attention, dynamic=False)
    out = torch.empty_like(q)

    def run():   # the gather into cluster order and the scatter back are timed, as in our kernel
        qs, ks, vs = (torch.gather(t, 1, idx)[None] for t in (q, k, v))
        return out.scatter_(1, idx, compiled(qs, ks, vs, block_mask=mask)[0])
    return run
