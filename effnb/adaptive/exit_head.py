"""SmolLM2 cut after its first ``layer`` blocks, with a trained exit head: EAD's small model made from the large one.

Why: Entropy Adaptive Decoding needs a small and a large model that share a
tokenizer. Cutting the large model's stack gives such a pair, and its small half
is literally the large model's first layers; but the hidden state at the cut is
not what the output layer was trained to read. A small trained map translates
it (RMS-normalise, then affine: a "tuned lens"). It is fitted on cached hidden
states of the training text in two steps: ridge least squares from the
normalised state at the cut to the normalised final state (closed form), then a
few hundred Adam steps on the KL divergence to the full model's next-token
distribution. The committed weights (``effnb/adaptive/weights/``, float16, with
a JSON record of how they were made and what they score) come from
``python -m effnb.adaptive.exit_head``; chapters load them and never train.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..lm.model import LM

WEIGHTS = Path(__file__).resolve().parent / "weights"
LAYERS = (10, 15, 20)          # the committed cuts of SmolLM2-135M's 30 blocks


class ExitHead(nn.Module):
    """``proj(x / rms(x))``: maps the residual stream at the cut to where the final one would be (the model's
    final RMSNorm and output layer follow it, unchanged)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return self.proj(_rms_normalised(x, self.eps))


def _rms_normalised(x, eps: float = 1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _check_layer(model, layer) -> int:
    n = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < n:
        raise ValueError(f"layer is the number of blocks kept, a whole number in 1..{n - 1} "
                         f"(the model has {n}), got {layer!r}")
    return layer


def truncate(model: LM, layer: int, head: ExitHead) -> LM:
    """The first ``layer`` blocks of ``model``, then ``head``, the final norm and the output layer. Every module
    is shared with ``model``, not copied: the pair costs only the head's memory more."""
    layer = _check_layer(model, layer)
    if head.proj.in_features != model.cfg.dim:
        raise ValueError(f"the exit head maps {head.proj.in_features} features, the model has {model.cfg.dim}")
    with torch.device("meta"):
        small = LM(dataclasses.replace(model.cfg, n_layers=layer))
    small.embed, small.head = model.embed, model.head
    small.layers = nn.ModuleList(list(model.layers)[:layer])
    small.norm = nn.Sequential(head, model.norm)
    small.reset_rope()
    if getattr(model, "_head_t", None) is not None:
        small._head_t = model._head_t          # the transposed output layer, when the large model has one
    return small.eval()


def prefix_bytes(model: LM, layer: int) -> int:
    """Bytes of the blocks a cut at ``layer`` shares with the full model: what the large model need not read
    again for a token the small one already ran (if it resumes from the cut instead of starting over)."""
    layer = _check_layer(model, layer)
    return sum(p.numel() * p.element_size() for blk in list(model.layers)[:layer] for p in blk.parameters())


def resumed_cost(curve, prefix: int):
    """``curve`` (:func:`effnb.adaptive.entropy.ead_curve`) with ``cost_pct_resumed``: EAD's weight bytes per
    token, as a % of the large model alone, when the large model resumes from the cut and reads only the
    blocks after it (``prefix`` = :func:`prefix_bytes`) on the tokens it takes. A lower bound, like the
    curve's own cost: the tokens it skipped must still catch up."""
    if prefix < 0:
        raise ValueError(f"prefix is a number of bytes, >= 0, got {prefix!r}")
    out = curve.copy()
    large = float(out.loc[out["method"] == "large only", "weight_bytes_per_token"].iloc[0])
    saved = out["large_share"] * prefix * (out["method"] == "ead")
    out["cost_pct_resumed"] = 100 * (out["weight_bytes_per_token"] - saved) / large
    return out


# ---------------------------------------------------------------- fitting

@torch.inference_mode()
def residuals(model: LM, ids, layers, context: int = 256) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The residual stream after each block in ``layers`` and after the last, ``(positions, dim)``, at every
    position that predicts a next token, and those next tokens; windows of ``context`` tokens, side by side."""
    layers = sorted({_check_layer(model, L) for L in layers})
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() < 2:
        raise ValueError("residuals needs at least two token ids")
    out, final, target = {L: [] for L in layers}, [], []
    for begin in range(0, ids.numel() - 1, context):
        w = ids[begin:begin + context + 1]          # the window plus the token its last position predicts
        if w.numel() < 2:
            break
        x = model.embed(w[None, :-1])
        cos, sin = model._rope(0, w.numel() - 1)
        for i, block in enumerate(model.layers):
            x = block(x, cos, sin)
            if i + 1 in out:
                out[i + 1].append(x[0].clone())
        final.append(x[0].clone())
        target.append(w[1:])
    return {L: torch.cat(v) for L, v in out.items()}, torch.cat(final), torch.cat(target)


def fit_least_squares(at_cut: torch.Tensor, final: torch.Tensor, ridge: float = 1e-3) -> ExitHead:
    """The affine map from the normalised state at the cut to the normalised final state minimising squared
    error plus ``ridge`` x positions x |weights|^2 (solved in float64)."""
    if at_cut.shape != final.shape or at_cut.dim() != 2:
        raise ValueError(f"at_cut and final must both be (positions, dim), got {tuple(at_cut.shape)} and {tuple(final.shape)}")
    n, d = at_cut.shape
    x = torch.cat([_rms_normalised(at_cut), at_cut.new_ones(n, 1)], 1).double()
    y = _rms_normalised(final).double()
    reg = ridge * n * torch.eye(d + 1, dtype=torch.float64)
    reg[d, d] = 0.0                                   # the bias is not shrunk
    a = torch.linalg.solve(x.T @ x + reg, x.T @ y).float()
    head = ExitHead(d)
    with torch.no_grad():
        head.proj.weight.copy_(a[:d].T)
        head.proj.bias.copy_(a[d])
    return head


def kl_to_full(model: LM, head: ExitHead, at_cut: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """Mean KL(full || exit) of the next-token distributions at these positions, in nats."""
    with torch.no_grad():
        teacher = F.log_softmax(model.head(model.norm(final)).float(), -1)
    student = F.log_softmax(model.head(model.norm(head(at_cut))).float(), -1)
    return (teacher.exp() * (teacher - student)).sum(-1).mean()


def refine_kl(model: LM, head: ExitHead, at_cut, final, steps: int, batch: int = 256, lr: float = 5e-4,
              seed: int = 0, progress: bool = True) -> list[float]:
    """Adam (linear warm-up over the first tenth) on :func:`kl_to_full` over random batches of the cached
    states; only the head learns. The per-step losses."""
    from ..plots import quiet_tqdm
    if steps < 0 or batch < 1:
        raise ValueError(f"steps must be >= 0 and batch >= 1, got {steps} and {batch}")
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    warm = max(1, steps // 10)       # a linear warm-up: Adam's first steps would undo the least-squares start
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    try:
        for _ in quiet_tqdm()(range(steps), desc="KL steps", disable=not progress, leave=False):
            idx = torch.randint(0, at_cut.shape[0], (batch,), generator=gen)
            loss = kl_to_full(model, head, at_cut[idx], final[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return losses


# ---------------------------------------------------------------- committed weights

def paths(layer: int, where: Path | str = WEIGHTS) -> tuple[Path, Path]:
    """The weights file of the exit head after ``layer`` blocks and its JSON record."""
    where = Path(where)
    return where / f"smollm2-exit-{layer}.safetensors", where / f"smollm2-exit-{layer}.json"


def record(layer: int, where: Path | str = WEIGHTS) -> dict:
    """How the committed head was trained and what it scores."""
    _, meta = paths(layer, where)
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} is missing: committed exit heads are for layers {LAYERS}; "
                                f"make this one with `python -m effnb.adaptive.exit_head --layers {layer}`")
    return json.loads(meta.read_text())


def save(head: ExitHead, layer: int, info: dict, where: Path | str = WEIGHTS) -> Path:
    """Write the head in float16 and ``info`` beside it."""
    import os
    from safetensors.torch import save_file
    from .. import files
    weights, meta = paths(layer, where)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f"{weights.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().half().contiguous() for k, v in head.state_dict().items()}, str(tmp),
              metadata={"layer": str(layer), "dim": str(head.proj.in_features)})
    tmp.replace(weights)
    files.write_json(meta, info)
    for p in (weights, meta):
        p.chmod(0o644)
    return weights


def load(model: LM, layer: int, where: Path | str = WEIGHTS) -> LM:
    """The truncated model with the committed head for ``layer``; checks that the head was made from the
    same model file (the GGUF's sha256 in its record)."""
    from safetensors import safe_open
    from ..lm.smollm2 import GGUF_SHA256
    layer = _check_layer(model, layer)
    weights, _ = paths(layer, where)
    info = record(layer, where)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; make it with `python -m effnb.adaptive.exit_head --layers {layer}`")
    if info.get("gguf_sha256") != GGUF_SHA256:
        raise ValueError(f"{weights} was trained on a model file with sha256 {info.get('gguf_sha256')}, not the "
                         f"pinned SmolLM2 ({GGUF_SHA256}): retrain it with `python -m effnb.adaptive.exit_head`")
    with safe_open(str(weights), "pt") as fh:
        sd = {k: fh.get_tensor(k).float() for k in fh.keys()}
    head = ExitHead(model.cfg.dim)
    head.load_state_dict(sd)
    return truncate(model, layer, head.to(model.embed.weight.device))


def _split_ids(tok, split: str, n: int) -> list[int]:
    from ..lm import corpus
    ids = tok.encode(corpus.load_corpus("english-v1", split), add_special_tokens=False)
    if len(ids) < n:
        raise ValueError(f"english-v1 {split} has {len(ids)} tokens, fewer than the {n} asked for")
    return ids[:n]


def _main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m effnb.adaptive.exit_head",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="Train SmolLM2-135M exit heads on english-v1 train and write them "
                                             "(float16 weights + a JSON record of settings, times and val scores). "
                                             "About 2 minutes to cache hidden states, then 3-9 minutes per head "
                                             "on 2 cores.")
    ap.add_argument("--layers", type=int, nargs="+", default=list(LAYERS), help="blocks kept before each head")
    ap.add_argument("--tokens", type=int, default=32768, help="training tokens (english-v1 train)")
    ap.add_argument("--val-tokens", type=int, default=4096, help="tokens of english-v1 val scored in the record")
    ap.add_argument("--steps", type=int, default=400, help="Adam steps of KL after least squares (0: least squares only)")
    ap.add_argument("--batch", type=int, default=256, help="positions per Adam step")
    ap.add_argument("--lr", type=float, default=5e-4, help="Adam's learning rate after the warm-up")
    ap.add_argument("--ridge", type=float, default=1e-3, help="least squares' ridge, per position")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", default=str(WEIGHTS), help="where to write the weights")
    a = ap.parse_args(argv)
    from .. import lm
    from ..lm.smollm2 import GGUF_SHA256
    from .entropy import teacher_forced
    torch.set_num_threads(a.threads)
    model, tok = lm.load("smollm2-135m")
    for L in a.layers:
        _check_layer(model, L)
    t0 = time.perf_counter()
    cut, final, _ = residuals(model, _split_ids(tok, "train", a.tokens), a.layers)
    states_s = time.perf_counter() - t0
    val = _split_ids(tok, "val", a.val_tokens)
    for L in a.layers:
        t0 = time.perf_counter()
        head = fit_least_squares(cut[L], final, a.ridge)
        with torch.no_grad():
            kl_ls = float(kl_to_full(model, head, cut[L][:2048], final[:2048]))
        losses = refine_kl(model, head, cut[L], final, a.steps, a.batch, a.lr)
        fit_s = time.perf_counter() - t0
        with torch.no_grad():
            tf = teacher_forced(truncate(model, L, head), model, val)
        info = {"model": "smollm2-135m", "gguf_sha256": GGUF_SHA256, "layer": L, "of_layers": model.cfg.n_layers,
                "train": f"english-v1 train, first {a.tokens} tokens", "ridge": a.ridge, "kl_steps": a.steps,
                "batch": a.batch, "lr": a.lr, "kl_after_least_squares": kl_ls,
                "kl_last_50_steps": sum(losses[-50:]) / max(1, len(losses[-50:])),
                "seconds_states": states_s, "seconds_fit": fit_s,
                "val": f"english-v1 val, first {a.val_tokens} tokens",
                "val_accuracy_exit": float((tf.small_argmax == tf.target).float().mean()),
                "val_accuracy_full": float((tf.large_argmax == tf.target).float().mean()),
                "val_nll_exit": float(-tf.small_logp.mean()), "val_nll_full": float(-tf.large_logp.mean())}
        print(save(head, L, info, a.out), json.dumps({k: info[k] for k in info if k.startswith(("val_", "kl_"))}))


if __name__ == "__main__":
    _main()
