"""Turn the runs in ``book/runs/`` into the book's generated pages.

The book build executes nothing: papermill already ran each chapter and left
an executed notebook plus a JSON sidecar in ``book/runs/<hardware-id>/``.
This module picks, for each chapter, the run from *this* machine to show as
the chapter page, and writes the results pages (claims ledger, hardware,
run status) from *every* machine's sidecars. Each file is written only when
its content changed, so Sphinx rebuilds only what is new.
"""
from __future__ import annotations

import argparse
import html
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import claims as _claims
from .. import files
from ..sidecar import Sidecar

NOTE_CELL_ID = "effnb-provenance-note"
VERSION_DISTS = ("jupyter-book", "sphinx", "myst-nb", "papermill", "torch", "numpy", "numba", "pandas",
                 "matplotlib")


# --------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One run: its sidecar (whatever keys it has) and where it lives."""

    hardware_id: str
    sidecar: Path
    data: dict = field(default_factory=dict)

    @property
    def info(self) -> dict:
        return self.data.get("run") or {}

    @property
    def name(self) -> str:
        return self.sidecar.stem

    @property
    def stem(self) -> str:
        return self.name.split("__")[0]

    @property
    def chapter(self) -> str:
        ch = self.data.get("chapter")
        return str(ch) if ch not in (None, "") else self.stem.split("_")[0]

    @property
    def title(self) -> str:
        return str(self.info.get("title") or "")

    @property
    def preset(self) -> str:
        parts = self.name.split("__")
        return str(self.info.get("preset") or (parts[1] if len(parts) > 1 else "?"))

    @property
    def overrides(self) -> dict:
        ov = self.info.get("overrides")
        if isinstance(ov, dict):
            return ov
        if ov:  # a list of "k=v" strings or a plain string: keep it readable
            items = ov if isinstance(ov, list) else [ov]
            return dict(str(i).partition("=")[::2] for i in items)
        return dict(p.partition("=")[::2] for p in self.name.split("__")[2:])

    @property
    def overrides_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))

    @property
    def status(self) -> str:
        return str(self.info.get("status") or self.data.get("status") or "unknown")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def notebook(self) -> Path:
        return self.sidecar.with_suffix(".ipynb")

    @property
    def finished(self) -> str:
        return str(self.info.get("finished") or self.data.get("provenance", {}).get("recorded_at") or "")

    @property
    def elapsed_s(self) -> float | None:
        v = self.info.get("elapsed_s", self.data.get("elapsed_s"))
        return float(v) if isinstance(v, (int, float)) else None

    @property
    def provenance(self) -> dict:
        return self.data.get("provenance") or {}

    @property
    def claims(self) -> list[dict]:
        return [c for c in self.data.get("claims") or [] if isinstance(c, dict)]

    @property
    def roofline(self) -> dict | None:
        """The machine limits the run probed (``ch.use_limits``), from the sidecar's own field."""
        r = Sidecar.from_dict(self.data).limits
        if isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) and r[k] > 0
                                       for k in ("read_gbps", "peak_gflops")):
            return r
        return None

    @property
    def backends(self) -> dict:
        return Sidecar.from_dict(self.data).backends


def load_runs(runs_dir: Path) -> list[Run]:
    """Every ``<runs_dir>/<hardware-id>/*.json`` sidecar; unreadable ones are skipped with a warning."""
    runs = []
    if not runs_dir.is_dir():
        return runs
    for path in sorted(runs_dir.glob("*/*.json")):
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            print(f"effnb pages: skipping {path}: {exc}", file=sys.stderr)
            continue
        runs.append(Run(path.parent.name, path, data))
    runs.sort(key=lambda r: (r.chapter, r.stem, r.hardware_id, r.preset, r.overrides_text))
    return runs


# --------------------------------------------------------------------------- helpers
write_if_changed = files.write_if_changed


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def _table(cls: str, header: list[str], rows: list[tuple[dict, list[str]]]) -> str:
    """An HTML table on one line (a MyST raw-HTML block ends at a blank line).

    ``rows`` holds (tr attributes, cells already escaped).
    """
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for attrs, cells in rows:
        a = "".join(f' {k}="{_e(v)}"' for k, v in attrs.items())
        body.append(f"<tr{a}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f'<table class="table effnb-table {cls}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody>\n</table>\n")


def _nowrap(value) -> str:
    return f'<span style="white-space:nowrap">{_e(value)}</span>'


def _verdict_cell(verdict: str) -> str:
    colour = _claims._COLOURS.get(verdict, "")
    return f'<span class="effnb-verdict" style="background:{colour};padding:0 .3em">{_e(verdict)}</span>'


def _bytes(n) -> str:
    if not isinstance(n, (int, float)) or n <= 0:
        return "?"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g} B"


def _when(stamp: str) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM UTC' (as given when it does not parse)."""
    from datetime import datetime, timezone
    try:
        t = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return stamp or "-"
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M") + (" UTC" if t.tzinfo is not None else "")


def _num(x, fmt: str = "{:.3g}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


# --------------------------------------------------------------------------- chapters
def _note_cell(text: str) -> dict:
    return {"cell_type": "markdown", "id": NOTE_CELL_ID, "metadata": {"tags": ["effnb-note"]},
            "source": text}


def _with_note(nb_text: str, note: str) -> str:
    """The notebook with a note cell first; everything else kept as it is (glue outputs included)."""
    nb = json.loads(nb_text)
    cells = [c for c in nb.get("cells", []) if c.get("id") != NOTE_CELL_ID]
    cell = _note_cell(note)
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) < (4, 5):
        cell.pop("id")  # cell ids arrived in nbformat 4.5
    # Right under the chapter's title when it opens with one, else first of all.
    at = 1 if cells and cells[0].get("cell_type") == "markdown" and \
        "".join(cells[0].get("source", "")).lstrip().startswith("# ") else 0
    nb["cells"] = [*cells[:at], cell, *cells[at:]]
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def pick_run(runs: list[Run], stem: str, hardware_id: str) -> Run | None:
    """This machine's best finished run of a chapter: full over smoke, no overrides over some, newest."""
    mine = [r for r in runs if r.stem == stem and r.hardware_id == hardware_id and r.ok and r.notebook.exists()]
    if not mine:
        return None
    return max(mine, key=lambda r: (r.preset == "full", not r.overrides, r.finished))


def _run_note(run: Run) -> str:
    git = run.provenance.get("git") or {}
    commit = (git.get("commit") or "")[:10]
    code = f" Code at commit `{commit}`{' (with uncommitted changes)' if git.get('dirty') else ''}." \
        if commit else ""
    extra = f", overrides `{run.overrides_text}`" if run.overrides else ""
    elapsed = f" in {run.elapsed_s:.0f} s" if run.elapsed_s is not None else ""
    return (":::{note}\n"
            f"These outputs were measured on `{run.hardware_id}` with preset `{run.preset}`{extra}, "
            f"finished {_when(run.finished) if run.finished else 'at an unrecorded time'}{elapsed}.{code} "
            "Runs on other machines are in the {doc}`../generated/ledger` and on the "
            "{doc}`../generated/status` page.\n:::")


SMOKE_NOTE = (":::{warning}\n"
              "This machine (`{hw}`) has no run of this chapter yet, so the outputs below are the "
              "**smoke-test outputs committed with the notebook**: tiny sizes and few repeats, "
              "measured on whatever machine last saved it. Run `make book` (or `make run CHAPTER={ch}`) "
              "for real figures.\n:::")

PLACEHOLDER = ("# Chapter {stem}\n\n:::{{warning}}\nNo run of this chapter exists yet, and the "
               "notebook `notebooks/{stem}.ipynb` was not found. Run `make book` to produce it.\n:::\n")


def _placeholder(stem: str) -> str:
    nb = {"cells": [{"cell_type": "markdown", "id": NOTE_CELL_ID, "metadata": {},
                     "source": PLACEHOLDER.format(stem=stem)}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb, indent=1, sort_keys=True) + "\n"


def toc_chapters(toc: Path, chapters_out: Path) -> list[str]:
    """Stems of the chapter pages the table of contents expects under ``chapters_out``."""
    if not toc.exists():
        return []
    try:
        rel = chapters_out.resolve().relative_to(toc.resolve().parent)
    except ValueError:
        return []
    prefix = rel.as_posix().rstrip("/") + "/"
    return re.findall(r"file:\s*[\"']?" + re.escape(prefix) + r"([\w.-]+?)(?:\.ipynb)?[\"']?\s*$",
                      toc.read_text(), flags=re.M)


def write_chapters(runs: list[Run], hardware_id: str, notebooks: Path, out: Path, stems: list[str]) -> list[Path]:
    written = []
    for stem in stems:
        run = pick_run(runs, stem, hardware_id)
        committed = notebooks / f"{stem}.ipynb"
        if run is not None:
            text = _with_note(run.notebook.read_text(), _run_note(run))
        elif committed.exists():
            text = _with_note(committed.read_text(), SMOKE_NOTE.replace("{hw}", hardware_id)
                              .replace("{ch}", stem.split("_")[0]))
        else:
            text = _placeholder(stem)
        if write_if_changed(out / f"{stem}.ipynb", text):
            written.append(out / f"{stem}.ipynb")
    return written


# --------------------------------------------------------------------------- ledger
LEDGER_COLUMNS = ["chapter", "hardware id", "preset", "paper", "statement", "paper's figure", "ours",
                  "target", "verdict", "backend", "reason"]


def ledger_page(runs: list[Run]) -> str:
    rows, counts, seen = [], {v: 0 for v in _claims.VERDICTS}, {}
    for run in runs:
        preset = run.preset + (f" ({run.overrides_text})" if run.overrides else "")
        for i, c in enumerate(run.claims):
            verdict = str(c.get("verdict", "?"))
            counts[verdict] = counts.get(verdict, 0) + 1
            cid = "claim-" + _slug(f"{run.hardware_id}-{run.name}-{c.get('key') or i}")
            seen[cid] = seen.get(cid, 0) + 1
            if seen[cid] > 1:
                cid += f"-{seen[cid]}"
            ours = f"{_claims._fmt(c.get('measured'))} {c.get('unit') or ''}".strip()
            cells = [_e(run.chapter), f"<code>{_e(run.hardware_id)}</code>", _e(preset), _e(c.get("paper")),
                     _e(c.get("statement")), _e(c.get("quoted")), _nowrap(ours), _nowrap(c.get("target")),
                     _verdict_cell(verdict), _nowrap(c.get("backend") or "not named"), _e(c.get("reason"))]
            rows.append(({"class": "effnb-claim", "id": cid, "data-verdict": verdict}, cells))
    out = ["# Claims ledger", "",
           "Every claim checked by every run, on every machine whose runs are in `book/runs/`. "
           "Each row sets the paper's figure beside ours and the target that decides the verdict; "
           "{doc}`../methodology` explains the verdicts.", ""]
    if not rows:
        out += ["No runs yet: run `make book` to measure the chapters on this machine.", ""]
        return "\n".join(out)
    total = sum(counts.values())
    out += ["## Summary", "",
            _table("effnb-summary", ["verdict", "claims"],
                   [({"class": "effnb-count", "data-verdict": v}, [_verdict_cell(v), str(n)])
                    for v, n in counts.items()] + [({"class": "effnb-total"}, ["<b>total</b>", str(total)])]),
            "## All claims", "", _table("effnb-ledger", LEDGER_COLUMNS, rows)]
    return "\n".join(out)


# --------------------------------------------------------------------------- hardware
ROOF_KEYS = ("read_gbps", "copy_gbps", "triad_gbps", "peak_gflops")


def _latest(runs: list[Run], pred) -> Run | None:
    hits = [r for r in runs if pred(r)]
    return max(hits, key=lambda r: r.finished) if hits else None


def roofline_png(roof: dict, hardware_id: str) -> bytes:
    """The machine's roofline, drawn by effnb.roofline.plot (the same picture the chapters show)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .. import plots, roofline
    plots.style()
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    roofline.plot(dict(roof, hardware_id=hardware_id), ax=fig.add_subplot(), title="Roofline")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _fingerprint_rows(prov: dict) -> list[tuple[dict, list[str]]]:
    fp = prov.get("fingerprint") or {}
    caches = fp.get("caches") or {}
    g = fp.get("gpu")
    gpu = "none"
    if isinstance(g, dict):
        gpu = (f"{g.get('name', '?')} x{g.get('count', 1)}, {_bytes(g.get('memory_bytes'))}, "
               f"driver {g.get('driver') or '?'}, CUDA {g.get('cuda') or '?'}")
    versions = prov.get("versions") or {}
    items = [("CPU", fp.get("cpu_model")), ("architecture", fp.get("arch")), ("SIMD level", fp.get("isa_level")),
             ("ISA features", " ".join(fp.get("isa_features") or []) or None), ("cores (usable)", fp.get("cores")),
             ("caches", ", ".join(f"{k} {_bytes(v)}" for k, v in caches.items()) or None),
             ("memory", _bytes(fp.get("memory_bytes")) if fp.get("memory_bytes") else None),
             ("GPU", gpu), ("OS", fp.get("os")),
             ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or None)]
    return [({"class": "effnb-fp"}, [_e(k), _e("unknown" if v is None else v)]) for k, v in items]


def hardware_page(runs: list[Run]) -> tuple[str, dict[str, bytes]]:
    """The page text and the roofline images it links (file name -> PNG bytes)."""
    images: dict[str, bytes] = {}
    text = ["# Hardware", "",
            "One section per machine that contributed runs: its fingerprint, from the newest run's "
            "provenance, and its measured roofline {cite}`roofline`, when a run recorded one.", ""]
    hardware = sorted({r.hardware_id for r in runs})
    if not hardware:
        text += ["No runs yet: run `make book` to measure the chapters on this machine.", ""]
    for hw in hardware:
        mine = [r for r in runs if r.hardware_id == hw]
        newest = (_latest(mine, lambda r: bool(r.provenance) and r.ok) or _latest(mine, lambda r: bool(r.provenance))
                  or mine[-1])
        text += [f"## `{hw}`", "", f"{len(mine)} run(s); fingerprint from `{newest.name}`.", "",
                 _table("effnb-fingerprint", ["property", "value"], _fingerprint_rows(newest.provenance))]
        roof_run = _latest(mine, lambda r: r.roofline is not None)
        if roof_run is None:
            text += ["No roofline was recorded on this machine yet.", ""]
            continue
        roof = roof_run.roofline
        threads = roof.get("threads")
        cells = [_num(roof.get(k), "{:.4g}") for k in ROOF_KEYS] + [_e(threads if threads is not None else "-")]
        text += [f"Roofline from `{roof_run.name}`:", "",
                 _table("effnb-roofline", ["read GB/s", "copy GB/s", "triad GB/s", "peak GFLOP/s", "threads"],
                        [({"class": "effnb-roof"}, cells)])]
        name = f"roofline-{_slug(hw)}.png"
        images[name] = roofline_png(roof, hw)
        text += [f"![Roofline of {hw}]({name})", ""]
    return "\n".join(text), images


# --------------------------------------------------------------------------- status
def _build_versions() -> list[tuple[str, str]]:
    from importlib import metadata
    import platform

    out = [("python", platform.python_version())]
    for dist in VERSION_DISTS:
        try:
            out.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            continue
    return out


def status_page(runs: list[Run], hardware_id: str) -> str:
    rows = []
    for r in runs:
        git = r.provenance.get("git") or {}
        commit = (git.get("commit") or "")[:10] or "-"
        if git.get("dirty"):
            commit += " (dirty)"
        status = _e(r.status)
        if not r.ok:
            err = r.info.get("error")
            cell = r.info.get("failed_cell")
            if isinstance(cell, dict):  # the runner's {index, execution_count, first_line}
                cell = f"{cell.get('index', '?')}" + (f" ({cell['first_line']})" if cell.get("first_line") else "")
            detail = (f" in cell {cell}" if cell not in (None, "") else "") + (f": {err}" if err else "")
            status = f'<b style="color:#a00">{status}</b>{_e(detail[:300])}'
        elapsed = f"{r.elapsed_s:.1f}" if r.elapsed_s is not None else "-"
        rows.append(({"class": "effnb-run", "id": "run-" + _slug(f"{r.hardware_id}-{r.name}"), "data-status": r.status},
                     [_e(r.chapter), _e(r.title), f"<code>{_e(r.hardware_id)}</code>", _e(r.preset),
                      _e(r.overrides_text or "-"), status, elapsed, _nowrap(_when(r.finished)), f"<code>{_e(commit)}</code>"]))
    text = ["# Run status", "",
            "Every run in `book/runs/`, from every machine. A failed run keeps its partial notebook and "
            "names the cell that failed; its chapter page falls back to another run.", ""]
    if rows:
        n_ok = sum(r.ok for r in runs)
        text += [f"{len(runs)} run(s), {n_ok} ok, {len(runs) - n_ok} not ok.", "",
                 _table("effnb-status", ["chapter", "title", "hardware id", "preset", "overrides", "status",
                                         "elapsed (s)", "finished", "commit"], rows)]
    else:
        text += ["No runs yet: run `make book` to measure the chapters on this machine.", ""]
    text += ["## This build", "",
             f"The chapter pages show runs from `{hardware_id}`, the machine that built this book, "
             "with these packages:", "",
             _table("effnb-versions", ["package", "version"],
                    [({"class": "effnb-version"}, [_e(k), _e(v)]) for k, v in _build_versions()])]
    return "\n".join(text)


# --------------------------------------------------------------------------- main
def build(runs_dir: Path, out: Path, chapters_out: Path, notebooks: Path, toc: Path, hardware_id: str) -> dict:
    """Write every generated page; return what changed (for tests and the CLI's summary)."""
    runs = load_runs(runs_dir)
    stems = sorted({p.stem for p in notebooks.glob("*.ipynb")} | {r.stem for r in runs}
                   | set(toc_chapters(toc, chapters_out)))
    written = write_chapters(runs, hardware_id, notebooks, chapters_out, stems)
    hw_text, images = hardware_page(runs)
    files = {out / "ledger.md": ledger_page(runs), out / "hardware.md": hw_text,
             out / "status.md": status_page(runs, hardware_id)}
    files.update({out / name: data for name, data in images.items()})
    written += [p for p, content in files.items() if write_if_changed(p, content)]
    return {"runs": len(runs), "hardware": sorted({r.hardware_id for r in runs}), "chapters": stems,
            "written": [str(p) for p in written]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="effnb pages", description="Write the book's chapter and results pages "
                                 "from the runs in book/runs/ (executes nothing).")
    ap.add_argument("--runs-dir", default="book/runs", help="runs, one folder per hardware id")
    ap.add_argument("--out", default="book/generated", help="where the ledger, hardware and status pages go")
    ap.add_argument("--chapters-out", default="book/chapters", help="where the chapter notebooks go")
    ap.add_argument("--notebooks", default="notebooks", help="committed notebooks (smoke outputs) to fall back on")
    ap.add_argument("--toc", default="_toc.yml", help="table of contents naming the chapter pages")
    ap.add_argument("--hardware-id", default=None, help="whose runs the chapter pages show (default: this machine)")
    args = ap.parse_args(argv)
    if args.hardware_id is None:
        from .. import provenance
        args.hardware_id = provenance.hardware_id()
    res = build(Path(args.runs_dir), Path(args.out), Path(args.chapters_out), Path(args.notebooks),
                Path(args.toc), args.hardware_id)
    print(f"effnb pages: {res['runs']} run(s) from {len(res['hardware'])} machine(s), "
          f"{len(res['chapters'])} chapter(s); {len(res['written'])} file(s) updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
