"""Training the byte models, deterministically: ``python -m effnb.lm.train byte-xs``.

Why one script: the committed weights must be reproducible, so the data
order, the initial weights and the schedule all follow from the seed, and the
record written beside the weights says everything that was used (steps,
batch, context, learning rate, threads, torch version, wall time) and what
came out (train loss, val bits/char measured on the float16 weights that are
committed). A retrain with the same settings lands within float rounding of
the committed figure (threads change the order of float sums, no more).

Recipe: AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear warm-up
then cosine decay to a tenth, gradient clipping at 1, random windows of the
train split's UTF-8 bytes.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .bytelm import CONFIGS, ByteTokenizer, config

# name -> training settings (tuned to finish in a few minutes on two cores)
PRESETS = {
    "byte-xs": {"steps": 450, "batch": 32, "context": 128, "lr": 5e-3, "warmup": 30},
    "byte-s": {"steps": 300, "batch": 32, "context": 128, "lr": 3e-3, "warmup": 30},
}
EVAL = {"context": 256, "stride": 192}       # val bits/char: windows of 256 bytes, each scoring its last 192


def byte_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def sample_batch(data: torch.Tensor, batch: int, context: int, gen: torch.Generator):
    """``batch`` random windows of ``context + 1`` bytes: inputs and their next-byte targets."""
    starts = torch.randint(0, data.numel() - context - 1, (batch,), generator=gen)
    rows = torch.stack([data[s:s + context + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to lr / 10."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def training_bytes(text: str, context: int) -> torch.Tensor:
    """``text`` as a byte tensor, or a clear error when it holds no window of ``context + 1`` bytes."""
    data = byte_tensor(text)
    if data.numel() <= context + 1:
        raise ValueError(f"the text has {data.numel()} bytes, fewer than one window of {context + 1}")
    return data


def fit(model, data: torch.Tensor, loss_of, steps: int, batch: int, context: int, lr: float, warmup: int,
        seed: int, weight_decay: float, desc: str, progress: bool = True, log_every: int = 50):
    """The loop :func:`train` and :func:`effnb.quant.qat.qat` share: AdamW (weight decay on matrices only),
    :func:`lr_at`'s schedule, clipping at 1, windows drawn from ``seed + 1``; ``loss_of(x, y)`` is the
    batch's loss. Returns ``[(step, mean loss over the last log_every steps)]``."""
    from ..plots import quiet_tqdm
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed + 1)
    history, running = [], []
    bar = quiet_tqdm()(range(steps), desc=desc, disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        x, y = sample_batch(data, batch, context, gen)
        loss = loss_of(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append((step + 1, sum(running) / len(running)))
            bar.set_postfix(loss=f"{history[-1][1]:.3f}")
            running = []
    return history


def train(cfg, text: str, steps: int, batch: int = 32, context: int = 128, lr: float = 3e-3, warmup: int = 50,
          seed: int = 0, weight_decay: float = 0.1, progress: bool = True, log_every: int = 50):
    """Train a fresh :class:`~effnb.lm.model.LM` of shape ``cfg`` on ``text``; return it and the loss history
    ``[(step, mean train loss in nats per byte over the last log_every steps)]``."""
    from .model import LM
    if steps < 1 or batch < 1 or context < 2:
        raise ValueError(f"need steps >= 1, batch >= 1 and context >= 2 (got {steps}, {batch}, {context})")
    data = training_bytes(text, context)
    torch.manual_seed(seed)
    model = LM(cfg).init_weights(seed).train()
    history = fit(model, data, lambda x, y: F.cross_entropy(model(x).flatten(0, 1), y.flatten()), steps, batch,
                  context, lr, warmup, seed, weight_decay, f"train {cfg.n_layers}x{cfg.dim}", progress, log_every)
    return model.eval(), history


def evaluate(model, text: str, context: int = EVAL["context"], stride: int = EVAL["stride"],
             progress: bool = False) -> dict:
    """Bits per character of ``text`` (see :func:`effnb.lm.generate.bits_per_char`)."""
    from .generate import bits_per_char
    return bits_per_char(model, ByteTokenizer(), text, context, stride, progress)


def run(name: str, steps: int | None = None, threads: int | None = None, seed: int = 0, where=None,
        progress: bool = True) -> dict:
    """Train ``name`` with its preset, measure val bits/char on the float16 weights, save both."""
    import platform
    from .. import threads as threads_mod
    from . import bytelm
    from .corpus import load_corpus, xz_bits_per_char
    n = threads_mod.set_threads(threads)
    settings = dict(PRESETS[name])
    if steps is not None:
        settings["steps"] = steps
    cfg = config(name)
    t0 = time.perf_counter()
    model, history = train(cfg, load_corpus("english-v1", "train"), seed=seed, progress=progress, **settings)
    train_s = time.perf_counter() - t0
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})  # what is committed
    val = load_corpus("english-v1", "val")
    t0 = time.perf_counter()
    score = evaluate(model, val, progress=progress)
    from .model import num_params
    info = {"name": name, "config": cfg.to_dict(), "params": num_params(model), "seed": seed, "threads": n,
            "train": {**settings, "corpus": "english-v1/train", "tokens": settings["steps"] * settings["batch"]
                      * settings["context"], "history": history, "wall_s": round(train_s, 1)},
            "val": {"corpus": "english-v1/val", "bits_per_char": score["bits_per_char"],
                    "bits_per_byte": score["nll"] / math.log(2) / score["tokens"], "context": score["context"],
                    "stride": score["stride"], "weights": "float16", "wall_s": round(time.perf_counter() - t0, 1)},
            "xz_bits_per_char_val": xz_bits_per_char(val),
            "torch": torch.__version__, "python": platform.python_version()}
    bytelm.save(model, name, info, **({"where": where} if where is not None else {}))
    return info


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m effnb.lm.train",
                                 description="Train a tiny byte-level model on english-v1 (train split), "
                                             "deterministically, and write its float16 weights and a JSON "
                                             "record (val bits/char) to effnb/lm/weights/.")
    ap.add_argument("name", choices=sorted(CONFIGS), help="which model")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for the weights (default: effnb/lm/weights)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    info = run(args.name, args.steps, args.threads, args.seed, args.out, progress=not args.quiet)
    print(f"{args.name}: {info['params']:,} parameters, val {info['val']['bits_per_char']:.3f} bits/char "
          f"(xz -9: {info['xz_bits_per_char_val']:.3f}); trained in {info['train']['wall_s']} s on "
          f"{info['threads']} threads")


if __name__ == "__main__":
    main()
