"""One "this run" parameter table on a chapter page, instead of two code cells.

A papermill run keeps the notebook's own parameters cell (the smoke defaults) and
adds an injected cell with the preset's values; shown together they contradict each
other. The page shows one table of the values the run used, with each one's help.
"""
from __future__ import annotations

from .spec import UsageError, parse_parameters

CELL_ID = "effnb-this-run-parameters"


def _tags(cell: dict) -> list:
    return cell.get("metadata", {}).get("tags", [])


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _value(v) -> str:
    text = repr(v)
    return f"`{text if len(text) <= 60 else text[:57] + '...'}`".replace("|", "\\|")


def table_cell(cells: list[dict]) -> tuple[dict, set[int]] | None:
    """The markdown cell that replaces the parameter cells, and the indices of the cells it replaces."""
    own = [i for i, c in enumerate(cells) if c.get("cell_type") == "code" and "parameters" in _tags(c)]
    injected = [i for i, c in enumerate(cells) if "injected-parameters" in _tags(c)]
    if not own:
        return None
    try:
        params = parse_parameters(_source(cells[own[0]]))
        used = {k: p.default for k, p in params.items()}
        changed = set()
        for i in injected:
            for name, p in parse_parameters(_source(cells[i]), "injected parameters").items():
                changed |= {name} if used.get(name, object()) != p.default else set()
                used[name] = p.default
    except UsageError:
        return None  # an unusual cell: leave the page as papermill wrote it
    rows = [f"| `{name}` | {_value(value)}{' *' if name in changed else ''} | "
            f"{(params[name].help if name in params else '').replace('|', '/')} |"
            for name, value in used.items()]
    note = ("Values marked * differ from the notebook's defaults (its smoke preset)." if changed
            else "The notebook's defaults (its smoke preset).")
    text = "\n".join(["**This run's parameters.** " + note, "", "| parameter | value | what it sets |",
                      "|---|---|---|", *rows])
    cell = {"cell_type": "markdown", "id": CELL_ID, "metadata": {"tags": ["effnb-parameters"]}, "source": text}
    return cell, set(own) | set(injected)


def with_one_parameter_table(nb: dict) -> dict:
    """``nb`` with its parameters and injected-parameters cells replaced by one table (in place, returned)."""
    cells = nb.get("cells", [])
    found = table_cell(cells)
    if found is None:
        return nb
    cell, drop = found
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) < (4, 5):
        cell.pop("id")
    first = min(drop)
    nb["cells"] = [c for i, c in enumerate(cells) if i not in drop]
    nb["cells"].insert(first, cell)
    return nb
