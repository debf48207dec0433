"""GPTQ: the same int4 format, with codes chosen to minimize the layer's output error.

Why apart from plain rounding: the codes depend on the inputs the layer sees
(a Hessian collected by :func:`calibrate`), so this is a calibration step, not
a format; what it produces is an ordinary :class:`~effnb.quant.formats.Packed`.
"""
from __future__ import annotations

import torch

from .formats import Packed, Scheme, check_weight, int4_padded_k, pack_int4, parse_scheme


def _int4_group_params(wg: torch.Tensor, asym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (rounded through fp16, as stored) and zero of groups ``wg`` [N, G], as ``quantize`` does."""
    if asym:
        lo, hi = wg.amin(1).clamp(max=0.0), wg.amax(1).clamp(min=0.0)
        s = ((hi - lo) / 15.0).to(torch.float16).to(wg.dtype)
        s = torch.where(s > 0, s, torch.ones_like(s))
        return s, torch.clamp(torch.round(-lo / s), 0, 15)
    s = (wg.abs().amax(1) / 7.0).to(torch.float16).to(wg.dtype)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s, torch.full_like(s, 8.0)


def gptq_int4(weight: torch.Tensor, scheme: str | Scheme, hessian: torch.Tensor, damp: float = 0.01) -> Packed:
    """GPTQ (Frantar et al., 2023): quantize the columns of W left to right and, after each, spread
    its rounding error over the columns not yet quantized, weighted by the inverse Hessian
    H = X^T X of the layer's inputs, so the *output* error ||X W^T - X Q^T|| is what gets
    minimized, not the weight error. Group scales are taken from the (already corrected)
    weights when a group starts. The result is an ordinary :class:`Packed` for ``linear``."""
    sch = parse_scheme(scheme)
    if sch.wbits != 4:
        raise ValueError(f"gptq_int4 needs an int4 scheme, got {sch}")
    w = check_weight(weight).double()
    n, k = w.shape
    h = torch.as_tensor(hessian).detach().to("cpu", torch.float64)
    if h.shape != (k, k):
        raise ValueError(f"hessian must be [K, K] = [{k}, {k}] (X^T X of the layer's inputs), got {tuple(h.shape)}")
    if not torch.isfinite(h).all():
        raise ValueError("hessian has NaN or inf entries")
    group, kp = int4_padded_k(k, sch.group)
    h = h.clone()
    dead = torch.diagonal(h) <= 0  # inputs that were always zero: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * float(torch.diagonal(h).mean()) * torch.eye(k, dtype=h.dtype)
    try:  # upper Cholesky factor of H^-1: row i holds how column i's error moves the later columns
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError as err:
        raise ValueError("hessian is not positive definite even after damping; "
                         "calibrate on more tokens or raise damp") from err
    w = torch.nn.functional.pad(w, (0, kp - k))
    codes = torch.zeros(n, kp, dtype=torch.float64)
    ng = kp // group
    scales, zeros = torch.ones(n, ng, dtype=torch.float64), torch.full((n, ng), 8.0, dtype=torch.float64)
    for i in range(k):
        g = i // group
        if i % group == 0:
            scales[:, g], zeros[:, g] = _int4_group_params(w[:, i:min(i + group, k)], sch.asym)
        s, z = scales[:, g], zeros[:, g]
        c = torch.clamp(torch.round(w[:, i] / s) + z, 0, 15)
        codes[:, i] = c
        err = (w[:, i] - (c - z) * s) / u[i, i]
        w[:, i + 1:k] -= err[:, None] * u[i, i + 1:][None, :]
    codes[:, k:] = zeros.repeat_interleave(group, 1)[:, k:]  # padding decodes to exactly 0
    zt = zeros.to(torch.uint8).contiguous() if sch.asym else torch.empty(0, dtype=torch.uint8)
    return Packed(sch, n, k, kp, group, pack_int4(codes.to(torch.uint8)), scales.to(torch.float16).contiguous(), zt)


def calibrate(model: torch.nn.Module, run) -> dict:
    """Run ``run(model)`` once and return, for every ``nn.Linear``, the float64 Hessian
    X^T X of its inputs (name -> [K, K]): what ``quantize`` and ``quantize_module``
    need for GPTQ. Hooks are removed afterwards, also when ``run`` fails."""
    hess: dict = {}
    hooks = []

    def hook(name):
        def f(mod, inputs, out):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
            hess[name] = hess.get(name, 0) + x.T @ x
        return f
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in hooks:
            h.remove()
    if not hess:
        raise ValueError("calibrate: run(model) never called an nn.Linear of the model")
    return hess
