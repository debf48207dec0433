"""Context extension by fine-tuning on the byte models: LongLoRA's S2-Attn against SinkLoRA's sink variant.

Why: LongLoRA (Chen et al. 2023) extends a model's context by fine-tuning with
*shifted sparse attention* (attention inside groups of tokens, half the heads
with groups shifted by half a group so information crosses group borders) and
LoRA plus trainable embeddings and norms. SinkLoRA (Zhang 2024) says its
SF-Attn with global attention to a few "sink" tokens recovers 92% of the
perplexity gain of full-attention fine-tuning where S2-Attn recovers 39%. We
ask which recovers more on the tiny byte models, all else equal: the same LoRA,
steps, learning rate and batches; only the attention pattern seen *during
fine-tuning* differs. Every model is scored with full causal attention at the
new length on held-out text, as both papers do.

Recovered share = (loss_none - loss_method) / (loss_none - loss_full), where
"none" is the base model with position interpolation only (no training) and
"full" fine-tunes with full causal attention.

Cost: both patterns run here as full attention under a boolean mask (:func:`pattern_mask`), so they
cost what full attention costs, a little more; S2-Attn's saving needs a grouped kernel and is not what
this study measures (the columns ``train_s`` only show the overhead of the mask on a CPU).

Lengths: the committed byte models were trained on windows of 128 bytes
(their record says so; 256 is only the size of their rotary table), so
:func:`compare` defaults to that length and four times it.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import time

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("none", "full", "longlora", "sinklora")

# a-priori settings (LongLoRA's group = 1/4 of the new length, StreamingLLM's 4 sink tokens); not tuned per method
DEFAULTS = {"rank": 8, "alpha": 16.0, "lr": 2e-3, "sinks": 4, "group_share": 0.25}


# ---------------------------------------------------------------- attention patterns

@functools.lru_cache(maxsize=16)
def pattern_mask(heads: int, n: int, group: int, sinks: int = 0) -> torch.Tensor:
    """Which keys each query may see, ``(heads, n, n)`` booleans: key ``j`` for query ``p`` when ``j <= p`` and
    either both lie in the same group or ``j`` is one of the first ``sinks`` tokens. Heads ``0 .. heads//2 - 1``
    have group borders at ``0, group, 2 group, ...``; the others at ``0, group // 2, group // 2 + group, ...``."""
    pos = torch.arange(n)
    plain = pos // group
    half = group // 2
    shifted = torch.where(pos < half, 0, (pos - half) // group + 1)
    causal = pos[None, :] <= pos[:, None]
    sink = (pos < sinks)[None, :]
    masks = [causal & ((ids[None, :] == ids[:, None]) | sink) for ids in (plain, shifted)]
    return torch.stack([masks[0]] * (heads // 2) + [masks[1]] * (heads - heads // 2))


def _check_pattern(q, k, v, group: int, sinks: int = 0) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one shape (batch, heads, n, head_dim); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)} (repeat grouped key/value heads first)")
    if isinstance(group, bool) or not isinstance(group, int) or group < 2:
        raise ValueError(f"group={group!r} must be a whole number >= 2, e.g. a quarter of the sequence")
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"sinks={sinks!r} must be a whole number >= 0, e.g. 4")


def s2_attention(q, k, v, group: int):
    """LongLoRA's shifted sparse attention for training a causal model: ``(B, H, n, d)`` -> same.

    Heads ``0 .. H//2 - 1`` attend causally inside groups ``[0, g), [g, 2g), ...``; the other heads inside
    groups shifted by ``g // 2`` (LongLoRA rolls those heads' tokens by half a group). The roll would wrap
    the sequence's last and first half-groups into one group, where the first tokens would see the last
    ones (a leak of the future in a causal model); here the wrapped piece stays where it belongs, as a
    short group of its own at the start, so no output depends on a later token. A group that covers the
    whole sequence (``group >= n``) is plain causal attention: there is no border to shift.
    """
    _check_pattern(q, k, v, group)
    if group >= q.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = pattern_mask(q.shape[1], q.shape[-2], group, 0).to(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sink_shifted_attention(q, k, v, group: int, sinks: int = DEFAULTS["sinks"]):
    """SinkLoRA's SF-Attn as we read its abstract: :func:`s2_attention`'s groups, plus every query attending
    the first ``sinks`` tokens of the sequence (global "attention sinks").

    The abstract's "segmentation and reassembly" returns the shifted heads' wrapped group to its unshifted
    place so tokens of the sequence's start and end no longer share a group. Our :func:`s2_attention`
    already keeps that piece at the start (to stay causal), so what this function adds is the sinks;
    the paper's exact partitioning may differ from this reading.
    """
    _check_pattern(q, k, v, group, sinks)
    if group >= q.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = pattern_mask(q.shape[1], q.shape[-2], group, sinks).to(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class _PatternAttention(nn.Module):
    """A block's attention whose whole-sequence pass (no cache) runs ``pattern(q, k, v)`` at any batch size."""

    def __init__(self, attn, pattern):
        super().__init__()
        self.attn, self.pattern = attn, pattern

    def forward(self, x, cos, sin, cache=None, start=0):
        if cache is not None or x.shape[1] == 1:
            return self.attn(x, cos, sin, cache, start)
        a, c = self.attn, self.attn.cfg
        b, t, _ = x.shape
        q, k, v = a.project(x, cos, sin)
        rep = c.n_heads // c.n_kv_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return a.o(self.pattern(q, k, v).transpose(1, 2).reshape(b, t, c.n_heads * c.head_dim))


@contextlib.contextmanager
def attention_pattern(model, pattern):
    """Run ``model`` with every block's attention replaced by ``pattern(q, k, v)`` (restored on exit);
    ``pattern=None`` leaves the model's own full causal attention."""
    originals = [blk.attn for blk in model.layers]
    try:
        if pattern is not None:
            for blk in model.layers:
                blk.attn = _PatternAttention(blk.attn, pattern)
        yield model
    finally:
        for blk, attn in zip(model.layers, originals):
            blk.attn = attn


# ---------------------------------------------------------------- positions and LoRA

def interpolated_rope(head_dim: int, n: int, scale: float, base: float = 10_000.0):
    """cos and sin ``(n, head_dim)`` at positions ``p * scale`` (position interpolation, Chen et al. 2023):
    ``n`` new positions squeezed into the ``n * scale`` the model was trained on. ``scale=1`` gives
    :func:`effnb.lm.model.rope_table`'s table."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(n).float() * scale, inv_freq)
    emb = torch.cat((angles, angles), -1)
    return emb.cos(), emb.sin()


def interpolate_positions(model, train_len: int, new_len: int):
    """Give ``model`` (in place) a rotary table of ``new_len`` positions compressed into ``[0, train_len)``.
    Inputs longer than ``new_len`` would make the model regrow a plain table, so score at most ``new_len``."""
    cfg, w = model.cfg, model.embed.weight
    cos, sin = interpolated_rope(cfg.head_dim, new_len, train_len / new_len, cfg.rope_base)
    model.rope_cos, model.rope_sin = cos.to(w.device), sin.to(w.device)
    return model


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(x))`` with ``base`` frozen: ``A`` small random, ``B`` zero, so the
    wrapped layer starts out exactly as ``base`` and training moves only ``rank * (in + out)`` numbers."""

    def __init__(self, base: nn.Linear, rank: int = DEFAULTS["rank"], alpha: float = DEFAULTS["alpha"]):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        base.weight.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features ** 0.5)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)


def add_lora(model, rank: int = DEFAULTS["rank"], alpha: float = DEFAULTS["alpha"]):
    """LongLoRA's "LoRA+" in place: LoRA on every attention projection (q, k, v, o), embeddings and norms
    trainable, every other weight frozen. Returns the trainable parameter count."""
    for p in model.parameters():
        p.requires_grad_(False)
    for blk in model.layers:
        for name in ("q", "k", "v", "o"):
            setattr(blk.attn, name, LoRALinear(getattr(blk.attn, name), rank, alpha))
    for name, p in model.named_parameters():
        if "lora_" in name or "norm" in name or name.startswith("embed."):
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- fine-tuning and scoring

def _whole(name: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name}={value!r} must be a whole number >= {least}")
    return value


def _pattern(method: str, group: int, sinks: int):
    if method == "longlora":
        return lambda q, k, v: s2_attention(q, k, v, group)
    if method == "sinklora":
        return lambda q, k, v: sink_shifted_attention(q, k, v, group, sinks)
    return None


def extend(model, method: str, context: int, steps: int, *, train_len: int, batch: int = 2,
           lr: float = DEFAULTS["lr"], rank: int = DEFAULTS["rank"], group: int | None = None,
           sinks: int = DEFAULTS["sinks"], seed: int = 0, text: str | None = None, progress: bool = False):
    """A copy of ``model`` extended from ``train_len`` to ``context`` tokens by ``method`` (one of
    :data:`METHODS`); ``model`` itself is untouched.

    Every method interpolates positions. "none" stops there; the others add LoRA (:func:`add_lora`) and
    fine-tune ``steps`` steps on windows of ``context`` bytes of ``text`` (default english-v1 train) with
    :func:`effnb.lm.train.fit` (AdamW, no weight decay, warm-up over a tenth of the steps, cosine decay):
    same seed, so the same LoRA start and the same batches for every method.
    During training "full" uses full causal attention, "longlora" :func:`s2_attention` and "sinklora"
    :func:`sink_shifted_attention`, with ``group`` = a quarter of ``context`` unless given. The copy carries
    ``.extension``: the settings, loss history and training seconds.
    """
    from ..lm.train import fit, training_bytes
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _whole("train_len", train_len, 2)
    _whole("context", context, 2)
    if context <= train_len:
        raise ValueError(f"context={context} must exceed train_len={train_len} (the length the model was trained "
                         f"at): pass the longer length to extend to, e.g. context={4 * train_len}")
    group = max(2, int(context * DEFAULTS["group_share"])) if group is None else group
    if not (isinstance(group, int) and 2 <= group <= context):
        raise ValueError(f"group={group!r} must be a whole number in [2, context={context}], e.g. {context // 4}")
    _whole("steps", steps, 0 if method == "none" else 1)
    _whole("batch", batch, 1)
    _whole("sinks", sinks, 0)
    out = interpolate_positions(copy.deepcopy(model), train_len, context)
    info = {"method": method, "train_len": train_len, "context": context, "steps": 0, "train_s": 0.0,
            "trainable": 0, "history": []}
    if method != "none":
        if text is None:
            from ..lm.corpus import load_corpus
            text = load_corpus("english-v1", "train")
        data = training_bytes(text, context)
        torch.manual_seed(seed)
        info["trainable"] = add_lora(out, rank)
        out.train()
        with attention_pattern(out, _pattern(method, group, sinks)):
            def loss_of(x, y):
                return F.cross_entropy(out(x).flatten(0, 1), y.flatten())
            t0 = time.perf_counter()
            info["history"] = fit(out, data, loss_of, steps, batch, context, lr, max(1, steps // 10), seed, 0.0,
                                  f"{method} {train_len}->{context}", progress, log_every=max(1, steps // 4))
            info["train_s"] = time.perf_counter() - t0
        info.update(steps=steps, batch=batch, lr=lr, rank=rank, group=group, sinks=sinks if method == "sinklora"
                    else 0, seed=seed)
        for p in out.parameters():
            p.requires_grad_(False)
    out.extension = info
    return out.eval()


def evaluate_extension(model, text: str, context: int = 1024, windows: int = 16, batch: int = 4) -> float:
    """Mean next-byte loss in **nats per byte** with full causal attention over ``windows`` windows of
    ``context`` bytes spread evenly over ``text`` (every position of each window scored, so a window's
    first bytes, which have little context, count too, the same in every method)."""
    from ..lm.train import byte_tensor
    _whole("context", context, 2)
    _whole("windows", windows, 1)
    if context > model.rope_cos.shape[0]:
        raise ValueError(f"context={context} exceeds the model's {model.rope_cos.shape[0]} interpolated positions; "
                         f"pass context <= {model.rope_cos.shape[0]} or interpolate to a longer length")
    data = byte_tensor(text)
    if data.numel() < context + 1:
        raise ValueError(f"the text has {data.numel()} bytes, fewer than one window of {context + 1}")
    starts = torch.linspace(0, data.numel() - context - 1, windows).long().tolist()
    rows = torch.stack([data[s:s + context + 1] for s in starts])
    total = 0.0
    with torch.no_grad(), attention_pattern(model, None):
        for chunk in rows.split(batch):
            logits = model(chunk[:, :-1])
            total += F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
    return total / (rows.shape[0] * context)


def recorded_train_len(model_name: str) -> int:
    """The window length a committed byte model was trained on (its record's ``train.context``)."""
    from ..lm import bytelm
    return int(bytelm.record(model_name)["train"]["context"])


def compare(model_name: str = "byte-s", train_len: int | None = None, new_len: int | None = None, steps: int = 80,
            batch: int = 2, seed: int = 0, progress: bool = False, eval_windows: int = 16,
            lr: float = DEFAULTS["lr"], sinks: int = DEFAULTS["sinks"]):
    """One row per method of :data:`METHODS`: loss (nats/byte, full causal attention, held-out english-v1
    test split) at ``new_len`` and at ``train_len``, training seconds, trainable parameters, the share
    of full-attention fine-tuning's gain the method recovers and how far it stays behind it (nats/byte).
    ``train_len`` defaults to the length the model was trained at, ``new_len`` to four times it.
    ``df.attrs`` holds the settings and, for reference, ``loss_base_plain_rope``: the base model at
    ``new_len`` with its own (not interpolated) positions. Training seconds are wall time on a shared
    CPU: noisy, and the masks make S2 no cheaper here."""
    import pandas as pd
    from ..lm import bytelm
    from ..lm.corpus import load_corpus
    train_len = recorded_train_len(model_name) if train_len is None else train_len
    new_len = 4 * train_len if new_len is None else new_len
    base, _ = bytelm.load(model_name)
    train_text, held_out = load_corpus("english-v1", "train"), load_corpus("english-v1", "test")
    rows = []
    for method in METHODS:
        m = extend(base, method, new_len, steps, train_len=train_len, batch=batch, lr=lr, sinks=sinks, seed=seed,
                   text=train_text, progress=progress)
        t0 = time.perf_counter()
        row = {"method": method, "loss_new_len": evaluate_extension(m, held_out, new_len, eval_windows),
               "loss_train_len": evaluate_extension(m, held_out, train_len, eval_windows)}
        rows.append({**row, "train_s": m.extension["train_s"], "eval_s": time.perf_counter() - t0,
                     "trainable": m.extension["trainable"]})
    df = pd.DataFrame(rows).set_index("method")
    gain = df.loc["none", "loss_new_len"] - df.loc["full", "loss_new_len"]
    df["recovered"] = (df.loc["none", "loss_new_len"] - df["loss_new_len"]) / gain
    df["behind_full"] = df["loss_new_len"] - df.loc["full", "loss_new_len"]   # nats/byte: the share hides this
    plain = copy.deepcopy(base)
    plain.reset_rope(new_len)           # the base model at new_len with its own positions, for reference
    no_pi = evaluate_extension(plain, held_out, new_len, eval_windows)
    df.attrs.update(model=model_name, train_len=train_len, new_len=new_len, steps=steps, batch=batch, seed=seed,
                    lr=lr, rank=DEFAULTS["rank"], group=max(2, int(new_len * DEFAULTS["group_share"])), sinks=sinks,
                    eval_windows=eval_windows, eval_text="english-v1/test", units="nats per byte",
                    train_text="english-v1/train", loss_base_plain_rope=no_pi, threads=torch.get_num_threads())
    return df
