"""The record a chapter notebook keeps while it runs.

A notebook's first code cell after ``parameters`` says ``ch = effnb.chapter.start("01")``.
That reads the parameters the chapter's YAML and parameters cell declare from
the notebook's namespace (no restating), checks them as the command line would,
sets the threads, seeds every generator, and snapshots provenance before any
kernel runs. Results go through ``ch.record`` (which also glues them for
myst-nb's prose), claims through ``ch.claims``; ``ch.finish()`` writes the
:class:`effnb.sidecar.Sidecar` where the runner asked (``$EFFNB_SIDECAR``).
"""
from __future__ import annotations

import inspect
import os
import random
import time
from pathlib import Path

from . import claims as _claims
from . import provenance
from . import threads as _threads
from .sidecar import Sidecar

SIDECAR_ENV = "EFFNB_SIDECAR"     # where the runner wants the sidecar
NOTEBOOK_ENV = "EFFNB_NOTEBOOK"   # which notebook runs (the runner and refresh set it)


def _jsonable(value):
    """Numbers and containers as plain JSON types (numpy scalars included)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):  # pandas objects
        return _jsonable(value.to_dict(orient="records") if hasattr(value, "columns") else value.to_dict())
    return value


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_device(device: str) -> str:
    """'cpu' always works; 'cuda' only where torch sees a GPU. The one device check of effnb."""
    if device == "cpu":
        return device
    if device == "cuda":
        if not provenance.cuda_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA GPU on this machine; use device='cpu'")
        return device
    raise ValueError(f"device={device!r} is not one of 'cpu', 'cuda'")


class ChapterRun:
    """One run of one chapter: parameters, provenance, recorded results and claims."""

    def __init__(self, chapter: str, parameters: dict, seed: int, kernels: list[str] = ()):
        self.chapter = chapter
        self.parameters = dict(parameters)
        self.seed = seed
        self.kernels = list(kernels)
        self.claims = _claims.Ledger(chapter, backend=self._default_backend())
        self.results: dict = {}
        self.limits: dict | None = None
        self.started = time.time()
        self.provenance = provenance.collect(self.parameters, {"seed": seed})

    def _default_backend(self) -> str:
        """What a claim row names when it names nothing itself: the declared kernel families' paths."""
        if not self.kernels:
            return f"{provenance.isa_level()} (no C++ family)"
        return ", ".join(f"{f} {b}" for f, b in self.backends().items())

    def record(self, name: str, value, *, glue: bool = True, display: bool = False):
        """Keep a result for the sidecar and glue it for the book's prose (``{glue:}`name```)."""
        self.results[name] = _jsonable(value)
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()  # numpy scalars: glue a plain number, whose text myst-nb can format
        if glue:
            try:
                from myst_nb import glue as _glue
                _glue(name, value, display=display)
            except ImportError:  # the book stack is optional when exploring
                pass
        return value

    def figure(self, name: str, fig=None, *, backend: str | None = None):
        """Show ``fig`` here and glue it as ``name`` for a numbered, captioned figure in the book.

        In JupyterLab the figure shows under the cell. The book hides that copy (tag the
        cell ``remove-output``) and places the glued one where the prose says
        ``{glue:figure} name`` with a ``:name:`` and a caption; ``{glue:text}`name_where```
        gives the caption the machine and the code that ran (``backend``, default the
        chapter's kernel families).
        """
        import matplotlib.pyplot as plt
        fig = plt.gcf() if fig is None else fig
        where = f"{provenance.hardware_id()}, {backend or self._default_backend()}"
        self.record(f"{name}_where", where)
        try:
            from IPython.display import display
            from myst_nb import glue as _glue
            display(fig)
            _glue(name, fig, display=False)
        except ImportError:  # outside Jupyter, or without the book stack
            pass
        plt.close(fig)
        return fig

    def save_table(self, name: str, df):
        """Keep a table's every row as CSV beside the run (``book/runs/<machine>/<run>.<name>.csv``) and return
        it: the page shows a summary and folds the rest, a reader who wants the data opens the file."""
        path = os.environ.get(SIDECAR_ENV)
        if path:
            from .files import atomic_write
            side = Path(path)
            atomic_write(side.with_name(f"{side.name.split('.')[0]}.{name}.csv"), df.to_csv(index=False))
        return df

    def use_limits(self, limits: dict) -> dict:
        """Keep the machine limits this run measured (effnb.roofline.machine): the hardware page shows them."""
        keep = ("read_gbps", "copy_gbps", "triad_gbps", "peak_gflops", "peak_by", "gemm_gflops", "threads", "mib",
                "repeats", "rounds", "probe_count", "cached")
        self.limits = {k: _jsonable(limits[k]) for k in keep if k in limits}
        return limits

    def backends(self) -> dict:
        """Kernel family -> what ran (cpp-<isa path> or torch-fallback), for every family the chapter declares."""
        from . import ext
        return {family: ext.backend(family) for family in self.kernels}

    def sidecar(self, status: str = "ok") -> Sidecar:
        return Sidecar(chapter=self.chapter, status=status, elapsed_s=round(time.time() - self.started, 3),
                       parameters=_jsonable(self.parameters), provenance=self.provenance,
                       claims=self.claims.rows(), results=self.results, limits=self.limits,
                       backends=self.backends())

    def finish(self) -> dict:
        """Write the sidecar where the runner asked (``$EFFNB_SIDECAR``); return it as a dict."""
        side = self.sidecar()
        path = os.environ.get(SIDECAR_ENV)
        if path:
            side.write(path)
        return side.to_dict()


def _declared(chapter: str):
    """The chapter's spec (parameters and kernel families), or None for a notebook outside the registry."""
    from .runner import spec
    try:
        return spec.find_chapter(os.environ.get(NOTEBOOK_ENV) or chapter)
    except spec.UsageError:
        return None


def start(chapter: str, namespace: dict | None = None, **parameters) -> ChapterRun:
    """Check the parameters, set threads and seeds, snapshot provenance; call first in a chapter.

    Without keyword parameters, the declared ones are read from ``namespace``
    (default: the calling notebook's globals), so the parameters cell is the
    only place they are written. Each is checked against the chapter's YAML
    limits, with the same message as ``effnb run`` gives, before any work.
    """
    spec = _declared(chapter)
    if not parameters and spec is not None:
        if namespace is None:
            namespace = inspect.currentframe().f_back.f_globals
        missing = [n for n in spec.params if n not in namespace]
        if missing:
            raise NameError(f"chapter {chapter}: parameters {missing} are not defined; run the parameters cell first")
        parameters = {n: namespace[n] for n in spec.params}
    if spec is not None:
        parameters = {n: spec.params[n].check(v) if n in spec.params else v for n, v in parameters.items()}
    threads = parameters.pop("threads", None)
    device = parameters.pop("device", "cpu")
    seed = parameters.pop("seed", 0)
    n = _threads.set_threads(threads)
    check_device(device)
    seed_everything(seed)
    return ChapterRun(chapter, dict(parameters, threads=n, device=device, seed=seed), seed,
                      kernels=spec.kernels if spec is not None else ())
