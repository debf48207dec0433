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


def place_labels(ax, points: list[tuple[float, float, str]], avoid=(), dots=()) -> None:
    """Write each (x, y, text) beside its point with a thin leader line, at the first of a few offsets where
    it overlaps no label already placed, no artist in ``avoid`` (legends, the roofs' names) and no marker at
    ``dots``, and stays inside the axes; where no offset is free, at the one that overlaps least."""
    import numpy as np
    from matplotlib.transforms import Bbox
    offsets = [(dx, dy, "left" if dx > 0 else "right", "bottom" if dy > 0 else "top")
               for dx, dy in ((6, 4), (6, -4), (-6, 4), (-6, -4), (8, 14), (8, -14), (-8, 14), (-8, -14))]
    try:
        ax.figure.canvas.draw()   # the layout settles first: boxes measured now stay where they are drawn
        renderer = ax.figure.canvas.get_renderer()
        frame = ax.get_window_extent(renderer)
        placed = [a.get_window_extent(renderer) for a in avoid] + [
            Bbox.from_extents(x - 4, y - 4, x + 4, y + 4) for x, y in ax.transData.transform(np.reshape(dots, (-1, 2)))]
    except AttributeError:       # a canvas that cannot measure text: the first offset for every label
        renderer = None

    def cost(box) -> float:
        if renderer is None:
            return 0.0
        out = sum(max(0.0, e) for e in (frame.x0 - box.x0, box.x1 - frame.x1, frame.y0 - box.y0, box.y1 - frame.y1))
        return 1e3 * out + sum(max(0.0, min(box.x1, b.x1) - max(box.x0, b.x0))
                               * max(0.0, min(box.y1, b.y1) - max(box.y0, b.y0)) for b in placed)

    for x, y, text in points:
        best = None
        for dx, dy, ha, va in offsets:
            t = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                            fontsize="small", arrowprops=_LEADER)
            box = t.get_window_extent(renderer) if renderer is not None else None
            c = cost(box)
            if best is not None and c >= best[0]:
                t.remove()
                continue
            if best is not None:
                best[1].remove()
            best = (c, t, box)
            if c == 0:
                break
        if renderer is not None:
            placed.append(best[2])


_LEADER = {"arrowstyle": "-", "color": "grey", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3}
