"""Quantization-aware training (chapter 03): ternary and binary byte models that still predict text.

Why: rounding a trained model's weights to {-1, 0, +1} or to their signs
(post-training quantization, :func:`ptq`) throws most of what it learned away.
Training *through* the rounding lets the weights move to where their rounded
values work. The rounding has no useful gradient, so the straight-through
estimator (STE) passes the gradient of the quantized weight to a float
"latent" weight as if the rounding were the identity; the fp32 model, the
starting point, also teaches its quantized copy (distillation), which gives
every byte a full distribution to match instead of one right answer.

What trains is exactly what runs: :class:`STELinear` computes the arithmetic of
the packed format and of the kernels' activation quantization, so
:func:`export` turns it into packed :class:`~effnb.quant.QuantLinear` layers
with the same outputs (tests/test_qat.py checks it).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..lm.model import replace_module
from .formats import Scheme, parse_scheme, quantize
from .modules import QuantLinear, quantize_module
from .reference import quantize_acts

SCHEMES = ("w2a8-ternary", "w1a4-binary")
# The output layer is tied to the embedding in the byte models (Config.tie_embeddings): quantizing it would
# quantize the embedding too (or, swapped alone, untie them), and BitNet keeps both in high precision, so the
# head stays fp32.
KEEP_FP32 = ("head",)


def low_bit_scheme(scheme: str | Scheme) -> Scheme:
    """The parsed scheme when QAT knows it (ternary or binary weights), or a clear error."""
    sch = parse_scheme(scheme)
    if not sch.kind:
        raise ValueError(f"QAT trains {' and '.join(SCHEMES)} weights; got {scheme!r} (int8/int4 schemes lose "
                         "little enough that effnb.quant.quantize_module does without training)")
    return sch


def straight_through(real: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """The value of ``quantized`` with the gradient of ``real`` (the STE).

    Written ``q + (x - x)`` rather than the usual ``x + (q - x)``: x - x is exactly 0, so the value is
    exactly ``quantized`` and the exported packed model computes bit for bit the same numbers.
    """
    return quantized.detach() + (real - real.detach())


def absmean_scales(weight: torch.Tensor) -> torch.Tensor:
    """One scale per output row, mean |w| (1 for an all-zero row): BitNet b1.58's rule, as formats.py packs."""
    s = weight.abs().mean(1)
    return torch.where(s > 0, s, torch.ones_like(s))


def weight_codes(weight: torch.Tensor, scales: torch.Tensor, kind: str) -> torch.Tensor:
    """The integer weights as floats: round(clip(w / s, -1, 1)) (ternary) or +-1 by sign (binary)."""
    if kind == "ternary":
        return torch.round(torch.clamp(weight / scales[:, None], -1.0, 1.0))
    return torch.where(weight >= 0, 1.0, -1.0)


def fake_quantize_acts(x: torch.Tensor, qmax: int) -> torch.Tensor:
    """Activations rounded per token the kernel's way (absmax to [-qmax, qmax]), gradient passed straight."""
    rows = x.reshape(-1, x.shape[-1])
    with torch.no_grad():
        q, s = quantize_acts(rows.float(), rows.shape[-1], qmax)
        xq = (q.float() * s).reshape(x.shape).to(x.dtype)
    return straight_through(x, xq)


class STELinear(nn.Module):
    """A Linear trained through its quantization: a float latent weight, used only as its ternary or binary
    value times a per-row scale, on activations quantized per token like the kernel's.

    ``learn_scales=False`` (BitNet): the scale is mean |w| of the row, a statistic of the latent weight.
    ``learn_scales=True`` (LSQ): the scale is a parameter (stored as its log, so it stays positive and Adam's
    steps are relative), starting at mean |w|, with LSQ's gradient; the codes are round(clip(w / scale)).
    Either way the latent weight gets the plain straight-through gradient, clipped nowhere.
    """

    def __init__(self, linear: nn.Linear, scheme: str | Scheme, learn_scales: bool = False):
        super().__init__()
        self.scheme = low_bit_scheme(scheme)
        self.weight = nn.Parameter(linear.weight.detach().float().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone())
        self.act_qmax = 127 if self.scheme.abits == 8 else 7
        self.log_scales = nn.Parameter(absmean_scales(self.weight.detach()).log()) if learn_scales else None

    def scales(self) -> torch.Tensor:
        """The per-row scales the packed weight will store (fp32, one per output row)."""
        if self.log_scales is None:
            return absmean_scales(self.weight.detach())
        return self.log_scales.exp()

    def codes(self) -> torch.Tensor:
        return weight_codes(self.weight.detach(), self.scales().detach(), self.scheme.kind)

    def quantized_weight(self) -> torch.Tensor:
        s = self.scales()
        if self.log_scales is None:
            return straight_through(self.weight, self.codes() * s[:, None])
        # LSQ: d/ds of s * round(clip(w / s)) with the rounding passed straight, the weight held still
        v = torch.clamp(self.weight.detach() / s[:, None], -1.0, 1.0)
        scaled = straight_through(v, weight_codes(self.weight.detach(), s.detach(), self.scheme.kind)) * s[:, None]
        return straight_through(self.weight, scaled) + (scaled - scaled.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(fake_quantize_acts(x, self.act_qmax), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        learned = ", learned scales" if self.log_scales is not None else ""
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, scheme={self.scheme}{learned}"


def _swap_linears(model: nn.Module, kind: type, make, skip) -> int:
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, kind) and n not in skip]
    for name, mod in targets:
        replace_module(model, name, make(mod))
    return len(targets)


def prepare(model: nn.Module, scheme: str | Scheme, skip=KEEP_FP32, learn_scales: bool = False) -> nn.Module:
    """Swap (in place) every ``nn.Linear`` not named in ``skip`` for an :class:`STELinear`; returns ``model``.
    Embeddings and norms stay fp32 (BitNet quantizes the Linears of the blocks only)."""
    sch = low_bit_scheme(scheme)
    if not _swap_linears(model, nn.Linear, lambda lin: STELinear(lin, sch, learn_scales), skip):
        raise ValueError("the model has no nn.Linear outside skip to train through quantization")
    return model


@torch.no_grad()
def export(model: nn.Module) -> nn.Module:
    """Replace (in place) every :class:`STELinear` by a packed :class:`QuantLinear` with the same codes and
    scales; returns ``model`` in eval mode. ``quantize`` of the codes gives the packed codes unchanged
    (their own mean |q| only rescales them within [-1, 1]); the learned or absmean scales then overwrite
    ``Packed.scales`` (fp32 [N])."""
    def pack(ste: STELinear) -> QuantLinear:
        p = quantize(ste.codes(), ste.scheme)
        p.scales = ste.scales().detach().float().contiguous()
        return QuantLinear(p, ste.bias)
    if not _swap_linears(model, STELinear, pack, ()):
        raise ValueError("the model has no STELinear layers: prepare() or qat() it first")
    return model.eval()


def ptq(model: nn.Module, scheme: str | Scheme, skip=KEEP_FP32) -> nn.Module:
    """Post-training quantization, the baseline: a copy of ``model`` with its Linears packed as they are."""
    sch = low_bit_scheme(scheme)
    quantized = copy.deepcopy(model).eval()
    quantize_module(quantized, sch, skip=skip)
    return quantized


def distillation_loss(student_logits, teacher_logits, targets, alpha: float, temperature: float):
    """(1 - alpha) * cross-entropy on the next byte + alpha * T^2 KL(teacher || student) at temperature T."""
    s = student_logits.flatten(0, 1)
    loss = F.cross_entropy(s, targets.flatten()) if alpha < 1 else s.new_zeros(())
    if alpha > 0:
        t = teacher_logits.flatten(0, 1)
        kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                      log_target=True, reduction="batchmean")
        loss = (1 - alpha) * loss + alpha * temperature ** 2 * kl
    return loss


def _check(steps, batch, context, lr, distill, temperature) -> None:
    for name, v, low in (("steps", steps, 1), ("batch", batch, 1), ("context", context, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {v!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not 0.0 <= distill <= 1.0:
        raise ValueError(f"distill (the weight of the teacher's KL in the loss) must be in [0, 1], got {distill!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def qat(model: str | nn.Module, scheme: str, steps: int, *, batch: int = 16, context: int = 128, lr: float = 2e-3,
        warmup: int | None = None, distill: float = 0.5, temperature: float = 1.0, learn_scales: bool = False,
        weight_decay: float = 0.0, seed: int = 0, text: str | None = None, skip=KEEP_FP32, progress: bool = True,
        log_every: int = 10):
    """Quantization-aware training of a byte model (a name of :data:`effnb.lm.bytelm.CONFIGS` or an
    :class:`~effnb.lm.model.LM`, which is not changed) from its fp32 weights.

    The student is a copy with :class:`STELinear` layers; the fp32 model is its teacher with weight
    ``distill`` (0: cross-entropy only). AdamW, warm-up (default a tenth of the steps) then cosine decay
    (:func:`effnb.lm.train.lr_at`), gradient clipping at 1, random windows of ``text`` (default
    english-v1/train) drawn from ``seed``: two runs with the same arguments and threads are identical.
    Returns the student in eval mode (still STE: :func:`export` packs it) and the loss history
    ``[(step, mean training loss over the last log_every steps)]``. ``scheme="fp32"`` runs the same
    training without quantization: the control that tells QAT's gain from the extra training itself.
    """
    from ..lm.train import fit, training_bytes
    sch = None if scheme == "fp32" else low_bit_scheme(scheme)
    _check(steps, batch, context, lr, distill, temperature)
    if isinstance(model, str):
        from ..lm import bytelm
        teacher, _ = bytelm.load(model)
    else:
        teacher = model
    if text is None:
        from ..lm.corpus import load_corpus
        text = load_corpus("english-v1", "train")
    data = training_bytes(text, context)
    torch.manual_seed(seed)
    student = copy.deepcopy(teacher)
    student = (student if sch is None else prepare(student, sch, skip, learn_scales)).train()
    teacher = copy.deepcopy(teacher).eval().requires_grad_(False) if distill > 0 else None

    def loss_of(x, y):
        with torch.no_grad():
            teacher_logits = teacher(x) if teacher is not None else None
        return distillation_loss(student(x), teacher_logits, y, distill, temperature)

    warmup = max(1, steps // 10) if warmup is None else warmup
    history = fit(student, data, loss_of, steps, batch, context, lr, warmup, seed, weight_decay, f"QAT {sch or 'fp32 control'}",
                  progress, log_every)
    return student.eval(), history
