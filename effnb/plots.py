"""One look for every figure in the book, and a caption that names the machine.

``plots.style()`` applies seaborn's theme once; ``plots.caption(ax, text)``
titles a figure with what it shows, the machine and the backend that ran, so a
figure copied out of the book still says where it came from.
"""
from __future__ import annotations

from . import provenance

_STYLED: list = []


def style() -> None:
    """seaborn's ``ticks`` theme with a light grid, readable legend and tick sizes; applied once."""
    if _STYLED:
        return
    import seaborn as sns
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind",
                  rc={"figure.dpi": 100, "savefig.dpi": 100, "legend.fontsize": "small",
                      "axes.titlesize": "medium", "figure.autolayout": True})
    _STYLED.append(True)


def figure(width: float = 7.0, height: float = 4.0, ncols: int = 1):
    """A styled figure of one or more panels side by side (at most 7 inches wide: the book's column)."""
    import matplotlib.pyplot as plt
    style()
    fig, axes = plt.subplots(1, ncols, figsize=(min(width * ncols, 7.5) if ncols > 1 else width, height),
                             squeeze=False)
    return fig, axes[0] if ncols > 1 else axes[0][0]


def caption(ax, text: str, backend: str | None = None) -> str:
    """Title ``ax`` with ``text`` plus the machine (and backend): the caption every figure carries."""
    where = provenance.hardware_id() + (f", {backend}" if backend else "")
    title = f"{text}\n[{where}]" if text else f"[{where}]"
    ax.set_title(title)
    return title


def quiet_tqdm():
    """tqdm's notebook-or-terminal bar, without its 'IProgress not found' warning in headless runs."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm
