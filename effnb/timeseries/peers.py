"""What we race against, and the backend names every row of a race carries.

sktime's ROCKET and MiniRocket (its own Numba code) are the peers of our
transforms, built with the same sizes, seed and thread count; a torch
``Conv1d`` stack with the streaming net's weights is the peer of the continual
step. A timing without the backend that produced it means little, so each
side is named: ours as ``numba-<ISA level>``, the peers by library and version.
"""
from __future__ import annotations

import warnings

from .continual import ContinualTCN
from .minirocket import MiniRocket
from .rocket import Rocket


def ours_backend() -> str:
    """The SIMD level Numba compiles our kernels for (this machine's widest, unless ``NUMBA_CPU_FEATURES`` asks
    for less): e.g. ``numba-avx2``."""
    from .lanes import numba_isa_level
    return f"numba-{numba_isa_level()}"


def sktime_backend() -> str:
    import sktime
    return f"sktime {sktime.__version__} (numba)"


def torch_backend() -> str:
    import torch
    return f"torch {torch.__version__}"


def sktime_classes(multivariate: bool):
    """(ROCKET, MiniRocket) classes of sktime; MiniRocket has a separate multivariate class there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sktime.transformations.panel.rocket import MiniRocket as SkMini
        from sktime.transformations.panel.rocket import MiniRocketMultivariate as SkMiniMulti
        from sktime.transformations.panel.rocket import Rocket as SkRocket
    return SkRocket, (SkMiniMulti if multivariate else SkMini)


def transformers(multivariate: bool, num_kernels: int, num_features: int, threads: int, seed: int) -> dict:
    """The four transforms compared: ours and sktime's ROCKET and MiniRocket, equal threads and sizes."""
    SkRocket, SkMini = sktime_classes(multivariate)
    return {"ROCKET effnb": Rocket(num_kernels, random_state=seed, n_jobs=threads),
            "ROCKET sktime": SkRocket(num_kernels=num_kernels, random_state=seed, n_jobs=threads),
            "MiniRocket effnb": MiniRocket(num_features, random_state=seed, n_jobs=threads),
            "MiniRocket sktime": SkMini(num_kernels=num_features, random_state=seed, n_jobs=threads)}


def torch_tcn(net: ContinualTCN):
    """The streaming net as a torch Conv1d stack (causal left padding, same weights), float64, eval mode."""
    import torch
    layers = []
    for l, d in enumerate(net.dils):
        conv = torch.nn.Conv1d(net.C, net.C, net.K, dilation=int(d), dtype=torch.float64)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(net.W[l]))
            conv.bias.copy_(torch.from_numpy(net.B[l]))
        layers += [torch.nn.ConstantPad1d(((net.K - 1) * int(d), 0), 0.0), conv]
        if l < len(net.dils) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()
