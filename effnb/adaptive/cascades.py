"""Chapter 14 on real data: window-based early-exit cascades of deep ensembles, and selective automation.

Two claims are checked on scikit-learn's bundled 8x8 digits (no network):

* Xia & Bouganis (2023): an ensemble run as a cascade, where later members only see the samples whose
  uncertainty lies in a window around the rejection threshold, keeps the ensemble's coverage at a fixed
  risk while spending a fraction of the MACs of one larger model.
* Norouzzadeh et al.: automate only the confident predictions, keeping the automated items at least as
  accurate as the whole model is on everything.

Selective classification: a sample is accepted when its uncertainty ``u <= t``; coverage is the share
accepted, risk the error rate among the accepted.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..threads import torch_threads

SCORES = ("msp", "log_msp", "entropy")


def digits_splits(seed: int = 0, noise: float = 0.2, fractions=(0.2, 0.4, 0.4)) -> dict:
    """Digits scaled to [0, 1], plus Gaussian pixel noise, stratified into train / calib / test.

    Clean digits are too easy (a tiny CNN reaches ~94-98%), so nearly every sample passes at 5% risk
    and the trade-off is invisible. ``noise`` (std of additive N(0, noise^2) pixel noise, drawn once
    from ``seed`` for all splits, not clipped) and a small train share (``fractions[0]``, ~360 images)
    bring one small model to roughly 85-88% test accuracy at the defaults (noise 0.2 on [0, 1] pixels;
    0.15 gives ~90%, 0.35 ~73%). Calibration and test stay large (~720 each), so a 5%-risk threshold
    rests on hundreds of samples. Returns tensors ``{split: (x [N,1,8,8] float32, y [N] int64)}``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
        raise ValueError(f"fractions must be three positive shares (train, calib, test) summing to 1, got {fractions}")
    if not noise >= 0:
        raise ValueError(f"noise must be a std >= 0 (0 = clean digits), got {noise}")
    d = load_digits()
    x = d.images.astype(np.float32) / 16.0
    x = x + np.random.default_rng(seed).normal(0.0, noise, x.shape).astype(np.float32)
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, train_size=fr[0], stratify=y, random_state=seed)
    ca, te = train_test_split(rest, train_size=fr[1] / (fr[1] + fr[2]), stratify=y[rest], random_state=seed)
    return {k: (torch.from_numpy(x[i][:, None]).contiguous(), torch.from_numpy(y[i]))
            for k, i in (("train", tr), ("calib", ca), ("test", te))}


class SmallCNN(nn.Module):
    """conv3x3(c) -> relu -> conv3x3(2c) -> relu -> maxpool2 -> linear(10): one width knob sets the cost."""

    def __init__(self, width: int = 4):
        super().__init__()
        if int(width) != width or width < 1:
            raise ValueError(f"width must be a positive integer (channels of the first conv), got {width}")
        self.width = int(width)
        self.conv1 = nn.Conv2d(1, self.width, 3, padding=1)
        self.conv2 = nn.Conv2d(self.width, 2 * self.width, 3, padding=1)
        self.fc = nn.Linear(2 * self.width * 16, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc(h.flatten(1))


def macs(model) -> int:
    """Multiply-accumulates per 8x8 sample, analytically (biases, relu and pooling are not counted).

    conv1: 64 positions x c x 9; conv2: 64 x 2c x 9c; linear: (2c x 16) x 10. A list sums its members.
    """
    if isinstance(model, (list, tuple)):
        return sum(macs(m) for m in model)
    c = model.width
    return 64 * c * 9 + 64 * 2 * c * 9 * c + 2 * c * 16 * 10


def width_for_macs(target: int) -> int:
    """The smallest width whose single model costs at least ``target`` MACs (the 'scale one model' peer)."""
    w = 1
    while macs(_Width(w)) < target:
        w += 1
    return w


@dataclass
class _Width:
    width: int


def train(width: int, seed: int, splits: dict, epochs: int = 40, lr: float = 1e-2, batch: int = 64,
          weight_decay: float = 1e-4, threads: int | None = 1) -> SmallCNN:
    """Adam on minibatches, seeded init and shuffling (the global RNG is left untouched); eval mode.

    About a second per model on one thread at the defaults; same seed (and threads) -> same weights.
    """
    with torch_threads(threads), torch.enable_grad():  # trains even when called under no_grad/inference_mode
        return _train(width, seed, splits, epochs, lr, batch, weight_decay)


def _train(width, seed, splits, epochs, lr, batch, weight_decay):
    if epochs < 0 or batch < 1:
        raise ValueError(f"epochs must be >= 0 and batch >= 1, got epochs={epochs}, batch={batch}")
    x, y = splits["train"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(width)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        for b in torch.randperm(len(y), generator=gen).split(batch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    return model.eval()


def _members(members) -> list:
    if isinstance(members, nn.Module):
        members = [members]
    members = list(members)
    if not members or not all(isinstance(m, nn.Module) for m in members):
        raise ValueError("members must be a non-empty list of trained models, "
                         "e.g. [train(4, s, splits) for s in range(4)]")
    return members


def _check_x(x):
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and tuple(x.shape[1:]) == (1, 8, 8)):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor of shape [N, 1, 8, 8] (digits_splits()[split][0]), got {got}")


def uncertainty(probs: torch.Tensor, score: str = "log_msp") -> torch.Tensor:
    """Per-sample uncertainty of class probabilities: 'msp' = 1 - max prob, 'log_msp' = log(1 - max prob)
    (the default), 'entropy' = Shannon entropy in nats.

    log_msp ranks samples exactly as msp, so every accept/reject at a calibrated threshold is the same;
    only the cascade's window changes meaning: it becomes relative. A 5%-risk threshold sits near msp 0,
    where an additive window reaches below zero and sends the most confident samples on for nothing; in
    log space a window of w keeps u within a factor e^w of the threshold.
    """
    if score == "msp":
        return 1.0 - probs.max(1).values
    if score == "log_msp":
        return (1.0 - probs.max(1).values).clamp_min(1e-7).log()
    if score == "entropy":
        return -(probs * probs.clamp_min(1e-12).log()).sum(1)
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")


@torch.inference_mode()
def ensemble_probs(members, x) -> torch.Tensor:
    """Mean softmax of all members on all samples (the full ensemble, no early exit)."""
    members = _members(members)
    _check_x(x)
    return sum(m(x).softmax(1) for m in members) / len(members)


def _check_scores(scores, correct):
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    c = torch.as_tensor(correct).flatten().bool()
    if s.numel() == 0 or s.numel() != c.numel():
        raise ValueError(f"scores and correct must be equally long and non-empty, got {s.numel()} and {c.numel()}")
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN; pass finite uncertainties")
    return s, c


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_risk(risk):
    if not (_real(risk) and 0 < risk < 1):
        raise ValueError(f"risk must be a number strictly between 0 and 1 (e.g. 0.05 for 5%), got {risk!r}")


def risk_threshold(scores, correct, risk: float) -> float:
    """The largest observed score t such that the accepted samples {score <= t} have error rate <= risk.

    Ties are accepted or rejected together (the threshold is a score value). When even the most certain
    group errs more than ``risk``, returns -inf: accept nothing. Monotone in ``risk`` by construction.
    """
    _check_risk(risk)
    return _threshold(*_check_scores(scores, correct), risk)


def _threshold(s, c, risk):
    order = torch.argsort(s, stable=True)
    s, err = s[order], (~c[order]).double()
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]          # the last index of each run of equal scores
    ok = last & (err.cumsum(0) / torch.arange(1, len(s) + 1, dtype=torch.float64) <= risk)
    return float(s[ok].max()) if ok.any() else -math.inf


def selective(scores, correct, threshold: float) -> tuple[float, float]:
    """(coverage, risk) of accepting {score <= threshold}; risk is NaN when nothing is accepted."""
    s, c = _check_scores(scores, correct)
    acc = s <= threshold
    n = int(acc.sum())
    return n / len(s), (float((~c[acc]).double().mean()) if n else math.nan)


def coverage_at_risk(cal_scores, cal_correct, test_scores, test_correct, risk: float = 0.05) -> dict:
    """Calibrate the threshold on one split, report coverage and achieved risk on another."""
    t = risk_threshold(cal_scores, cal_correct, risk)
    cov, r = selective(test_scores, test_correct, t)
    return {"threshold": t, "coverage": cov, "risk": r}


@dataclass
class CascadeResult:
    probs: torch.Tensor        # [N, 10] final mean softmax (over the members each sample ran)
    uncertainty: torch.Tensor  # [N]
    accept: torch.Tensor       # [N] bool: uncertainty <= the threshold of the stage it exited at
    stage: torch.Tensor        # [N] index of the last member run (0 = exited after the first)
    macs: int                  # total MACs spent on the batch
    macs_per_sample: float


def stage_thresholds(members, x, y, risk: float = 0.05, score: str = "log_msp") -> list[float]:
    """Per-stage thresholds: stage j's is risk_threshold of the mean of members 0..j on calibration data.

    Averaging more members softens the probabilities, so one threshold does not fit every stage (a single
    member's 'confident' is not the ensemble's); calibrating each prefix keeps every exit at the risk.
    """
    members = _members(members)
    _check_x(x)
    _check_risk(risk)
    if len(y) != len(x):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    with torch.inference_mode():
        acc, out = 0, []
        for j, m in enumerate(members):
            acc = acc + m(x).softmax(1)
            p = acc / (j + 1)
            out.append(risk_threshold(uncertainty(p, score), p.argmax(1) == y, risk))
    return out


@torch.inference_mode()
def cascade(members, x, threshold, window: float, score: str = "log_msp") -> CascadeResult:
    """Window-based early exit. After stage j (mean softmax of members 0..j) a sample keeps running only if
    ``window > 0`` and ``|u - t_j| <= window``: far from the threshold its accept/reject is already clear.
    So window=0 is the first member alone and window=inf the full ensemble. ``threshold`` is one float or
    one per member (see stage_thresholds). Running samples are compacted with index_select into a
    contiguous batch before each further member, so the work follows the samples that still run.
    """
    members = _members(members)
    _check_x(x)
    if not (_real(window) and window >= 0):
        raise ValueError(f"window must be a number >= 0 (0 = first member only, math.inf = full ensemble), "
                         f"got {window!r}")
    ts = [float(threshold)] * len(members) if _real(threshold) else [float(t) for t in threshold]
    if len(ts) != len(members) or any(math.isnan(t) for t in ts):
        raise ValueError(f"threshold must be a number or one per member ({len(members)}), none NaN; got {threshold!r}")
    uncertainty(x.new_ones(1, 10) / 10, score)  # validate the score name before any work
    n = x.shape[0]
    probs, stage = x.new_empty(n, 10), torch.zeros(n, dtype=torch.long)
    idx, xr, acc, spent = torch.arange(n), x, x.new_zeros(n, 10), 0
    for j, m in enumerate(members):
        acc += m(xr).softmax(1)
        spent += len(idx) * macs(m)
        avg = acc / (j + 1)
        if window > 0 and j < len(members) - 1:
            keep = (uncertainty(avg, score) - ts[j]).abs() <= window
        else:
            keep = torch.zeros(len(idx), dtype=torch.bool)
        out = ~keep
        probs[idx[out]], stage[idx[out]] = avg[out], j
        if not keep.any():
            break
        k = keep.nonzero().squeeze(1)
        xr, acc, idx = xr.index_select(0, k), acc.index_select(0, k), idx.index_select(0, k)
    u = uncertainty(probs, score)
    return CascadeResult(probs, u, u <= torch.tensor(ts, dtype=u.dtype)[stage], stage, spent, spent / max(n, 1))


def build_models(splits: dict, n_members: int = 4, width: int = 4, seed: int = 0, epochs: int = 40):
    """M small members (seeds seed..seed+M-1) and the peer: one model widened until its MACs reach the
    whole ensemble's (the 'just scale a single model' alternative)."""
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    members = [train(width, seed + k, splits, epochs) for k in range(n_members)]
    large = train(width_for_macs(macs(members)), seed, splits, epochs)
    return members, large


def _best_time(fn, repeats: int, threads: int | None) -> float:
    with torch_threads(threads):
        fn()  # untimed warm-up
        best = math.inf
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best


def cascade_study(members, large, splits: dict, risk: float = 0.05,
                  windows=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, math.inf), score: str = "log_msp", repeats: int = 7,
                  threads: int | None = 1) -> pd.DataFrame:
    """Coverage at ``risk`` on test (thresholds calibrated on calib), MACs and wall time per test set.

    Rows: the first member alone, the larger single model, the full ensemble, then cascades per window
    with per-stage thresholds (stage_thresholds). ``risk`` is what each achieves on test. Times are the
    best of ``repeats`` passes of the whole test set as one batch, on ``threads`` threads (1 keeps tiny
    models from measuring thread start-up and is steadier on a shared machine).
    """
    members = _members(members)
    _check_risk(risk)
    windows = list(windows)
    if not windows or any(not (_real(w) and w >= 0) for w in windows):
        raise ValueError(f"windows must be a non-empty list of numbers >= 0 (math.inf = full ensemble), got {windows}")
    uncertainty(torch.ones(1, 10) / 10, score)  # validate the score name before any work
    if not {"calib", "test"} <= set(splits):
        raise ValueError("splits must hold 'calib' and 'test' (digits_splits())")
    (xc, yc), (xt, yt) = splits["calib"], splits["test"]
    ref, rows = macs(large), []

    def add(name, window, probs, accept, threshold, mac, stages, run):
        ok = probs.argmax(1) == yt
        n_acc = int(accept.sum())
        rows.append({"model": name, "window": window, "accuracy": float(ok.double().mean()),
                     "coverage": n_acc / len(yt), "risk": float((~ok[accept]).double().mean()) if n_acc else math.nan,
                     "threshold": threshold, "members_run": stages, "macs_per_sample": mac,
                     "macs_vs_large": mac / ref, "ms_test_set": 1e3 * _best_time(run, repeats, threads)})

    def single(name, ms, stages):
        t = risk_threshold(uncertainty(pc := ensemble_probs(ms, xc), score), pc.argmax(1) == yc, risk)
        pt = ensemble_probs(ms, xt)
        add(name, math.nan, pt, uncertainty(pt, score) <= t, t, macs(ms), stages,
            lambda: uncertainty(ensemble_probs(ms, xt), score) <= t)

    single(f"single small (w={members[0].width})", members[:1], 1.0)
    single(f"single large (w={large.width})", [large], 1.0)
    single(f"ensemble (M={len(members)})", members, float(len(members)))
    ts = stage_thresholds(members, xc, yc, risk, score)
    for w in windows:
        r = cascade(members, xt, ts, w, score)
        add("cascade", w, r.probs, r.accept, math.nan, r.macs_per_sample, float((r.stage + 1).double().mean()),
            lambda w=w: cascade(members, xt, ts, w, score))
    df = pd.DataFrame(rows)
    df["time_vs_large"] = df["ms_test_set"] / df.loc[1, "ms_test_set"]
    return df


def choose_window(members, large, splits: dict, risk: float = 0.05,
                  windows=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, math.inf), score: str = "log_msp") -> float:
    """The narrowest window whose cascade covers at least as much of the CALIBRATION split at ``risk`` as
    the larger single model does (math.inf when none does): picked before the test split is looked at."""
    members = _members(members)
    (xc, yc) = splits["calib"]
    pl = ensemble_probs([large], xc)
    target = selective(u := uncertainty(pl, score), pl.argmax(1) == yc, risk_threshold(u, pl.argmax(1) == yc, risk))[0]
    ts = stage_thresholds(members, xc, yc, risk, score)
    for w in sorted(windows):
        if cascade(members, xc, ts, w, score).accept.double().mean() >= target:
            return float(w)
    return math.inf


def automation_study(model_or_members, splits: dict, target: float = 0.99, peer=None) -> pd.DataFrame:
    """Automate the items whose confidence (max mean softmax) clears a threshold set on calib, so the
    automated items' accuracy reaches a target; evaluated on test. Targets: the model's own overall
    accuracy (as briefed; degenerate, since automating everything meets it exactly), a ``peer``'s overall
    accuracy (a better labeller, the role the human volunteers play) when given, and ``target``."""
    members = _members(model_or_members)
    if not (_real(target) and 0 < target <= 1):
        raise ValueError(f"target must be an accuracy in (0, 1], e.g. 0.99, got {target!r}")
    (xc, yc), (xt, yt) = splits["calib"], splits["test"]
    pc, pt = ensemble_probs(members, xc), ensemble_probs(members, xt)
    uc, ut = uncertainty(pc, "msp").double(), uncertainty(pt, "msp").double()
    okc, okt = pc.argmax(1) == yc, pt.argmax(1) == yt
    overall = float(okt.double().mean())
    targets = [("model's own overall accuracy", float(okc.double().mean()), overall)]
    if peer is not None:
        peer = _members(peer)
        acc = [float((ensemble_probs(peer, x).argmax(1) == y).double().mean()) for x, y in ((xc, yc), (xt, yt))]
        targets.append((f"peer's overall accuracy ({len(peer)} model(s))", *acc))
    targets.append((f"fixed {target:.1%}", float(target), float(target)))
    rows = []
    for rule, on_cal, on_test in targets:
        t = _threshold(uc, okc, 1.0 - on_cal + 1e-12)  # the tolerance lets 'exactly the target' qualify
        cov, risk = selective(ut, okt, t)
        acc = 1.0 - risk if cov else math.nan
        rows.append({"rule": rule, "target_calib": on_cal, "target_test": on_test, "min_confidence": 1.0 - t,
                     "automated_share": cov, "automated_accuracy": acc, "overall_accuracy": overall,
                     "meets_target": bool(cov and acc >= on_test - 1e-12)})
    return pd.DataFrame(rows)
