"""Turn the runs in ``book/runs/`` into the book's generated pages.

The book build executes nothing: papermill already ran each chapter and left
an executed notebook plus a JSON sidecar in ``book/runs/<hardware-id>/``.
This module picks, for each chapter, the run from *this* machine to show as
the chapter page, and writes the results pages (claims ledger, hardware,
run status) from *every* machine's sidecars, plus the part of the landing page
that depends on the runs (``landing.md``, included by ``book/intro.md``). Each
file is written only when its content changed, so Sphinx rebuilds only what is
new. The ledger and the landing page live in ``ledger.py`` and ``landing.py``;
the table, badge and number helpers they share in ``tables.py``.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import files
from ..sidecar import Sidecar
from . import tables as T
from .landing import landing_page
from .ledger import WIDE_PAGE, ChapterPage, chapter_page, claim_rows, claims_table, is_target, ledger_page  # noqa: F401
from .runparams import with_one_parameter_table

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
        """The machine limits the run probed (``ch.use_limits``), from the sidecar's own field; older
        sidecars kept them in their results (``results["roofline"]``)."""
        r = Sidecar.from_dict(self.data).limits
        if not isinstance(r, dict):
            r = (self.data.get("results") or {}).get("roofline")
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
_e, _slug, _when, _bytes = T.esc, T.slug, T.when, T.nbytes


# --------------------------------------------------------------------------- chapters
def _note_cell(text: str) -> dict:
    return {"cell_type": "markdown", "id": NOTE_CELL_ID, "metadata": {"tags": ["effnb-note"]},
            "source": text}


def _with_note(nb_text: str, note: str) -> str:
    """The notebook with a note cell first; everything else kept as it is (glue outputs included)."""
    nb = with_one_parameter_table(json.loads(nb_text))
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


# --------------------------------------------------------------------------- hardware
ROOF_KEYS = ("read_gbps", "copy_gbps", "triad_gbps", "peak_gflops")


def _latest(runs: list[Run], pred) -> Run | None:
    hits = [r for r in runs if pred(r)]
    return max(hits, key=lambda r: r.finished) if hits else None


def check_log_axes(ax) -> None:
    """Raise if a log axis has a limit that is not positive and finite: matplotlib then draws nothing."""
    for name, scale, lim in (("x", ax.get_xscale(), ax.get_xlim()), ("y", ax.get_yscale(), ax.get_ylim())):
        if not all(math.isfinite(v) for v in lim) or (scale == "log" and min(lim) <= 0):
            raise ValueError(f"roofline plot: {name} limits {lim} on a {scale} axis would draw an empty plot")


def roofline_figure(roof: dict, hardware_id: str):
    """The machine's roofline, drawn by effnb.roofline.plot (the same picture the chapters show)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .. import plots, roofline
    plots.style()
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = roofline.plot(dict(roof, hardware_id=hardware_id), ax=fig.add_subplot(), title="Roofline")
    check_log_axes(ax)
    fig.tight_layout()
    return fig


def roofline_png(roof: dict, hardware_id: str) -> bytes:
    buf = io.BytesIO()
    roofline_figure(roof, hardware_id).savefig(buf, format="png", metadata={"Software": None})
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


def _roofline_caption(roof: dict, hw: str) -> tuple[str, str]:
    """The figure's caption (its takeaway) and its alt text."""
    bw, peak = roof["read_gbps"], roof["peak_gflops"]
    ridge = peak / bw
    threads = roof.get("threads")
    on = f"`{hw}`" + (f", {threads} threads" if threads else "")
    caption = (f"Roofline of {on}: a kernel below {T.num(ridge)} flop/byte is bound by memory "
               f"({T.num(bw)} GB/s read), above it by compute ({T.num(peak)} GFLOP/s).")
    alt = (f"Log-log roofline of {hw}: attainable GFLOP/s rises with arithmetic intensity at "
           f"{T.num(bw)} GB/s up to the ridge at {T.num(ridge)} flop/byte, then stays at {T.num(peak)} GFLOP/s.")
    return caption, alt


ISA_PATHS = ("avx", "neon", "scalar", "generic")   # a backend naming one of these says which code path ran


def _kernel_targets(hw: str, mine: list[Run]) -> list[str]:
    """The book's targets measured on ``hw`` whose backend names an ISA path (``cpp-avx2``, ``numba-avx512vnni``):
    what each path won and lost on this hardware. A lower path's runs (``EFFNB_ISA``) are a section of their own."""
    rows = [(run, c, "hw-" + cid) for run, c, cid in claim_rows(mine)
            if is_target(c) and any(p in str(c.get("backend") or "") for p in ISA_PATHS)]
    text = []
    if "-as-" in hw:
        base, level = hw.rsplit("-as-", 1)
        text += [f"The same hardware as `{base}`, with every kernel on its {level} path (`EFFNB_ISA={level}`): "
                 "its targets below say what that path reaches here.", ""]
    if rows:
        text += [claims_table(rows, targets=True, caption=f"<b>Kernel targets on this machine, by ISA path</b> "
                                                          f"({len(rows)}; the backend names the path)")]
    return text


def hardware_page(runs: list[Run]) -> tuple[str, dict[str, bytes]]:
    """The page text and the roofline images it links (file name -> PNG bytes)."""
    images: dict[str, bytes] = {}
    text = ["# Hardware", "",
            "One section per machine that contributed runs: its fingerprint, from the newest run's "
            "provenance, the book's kernel targets as its runs measured them, each naming the ISA path it ran, "
            "and its measured roofline {cite}`roofline`, when a run recorded one.", ""]
    hardware = sorted({r.hardware_id for r in runs})
    if not hardware:
        text += ["No runs yet: run `make book` to measure the chapters on this machine.", ""]
    for hw in hardware:
        mine = [r for r in runs if r.hardware_id == hw]
        newest = (_latest(mine, lambda r: bool(r.provenance) and r.ok) or _latest(mine, lambda r: bool(r.provenance))
                  or mine[-1])
        text += [f"## `{hw}`", "", f"{T.count(len(mine), 'run')}; fingerprint from `{newest.name}`.", "",
                 T.simple("effnb-fingerprint", ["property", "value"], _fingerprint_rows(newest.provenance)),
                 *_kernel_targets(hw, mine)]
        roof_run = _latest(mine, lambda r: r.roofline is not None)
        if roof_run is None:
            text += ["No roofline was recorded on this machine yet.", ""]
            continue
        roof = roof_run.roofline
        threads = roof.get("threads")
        cells = [T.num(roof.get(k), 4) for k in ROOF_KEYS] + [_e(threads if threads is not None else "-")]
        text += [f"Roofline from `{roof_run.name}`:", "",
                 T.simple("effnb-roofline", ["read GB/s", "copy GB/s", "triad GB/s", "peak GFLOP/s", "threads"],
                          [({"class": "effnb-roof"}, cells)])]
        name = f"roofline-{_slug(hw)}.png"
        images[name] = roofline_png(roof, hw)
        caption, alt = _roofline_caption(roof, hw)
        text += [f":::{{figure}} {name}", f":alt: {alt}", f":name: fig-roofline-{_slug(hw)}", "",
                 caption, ":::", ""]
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


def _status_cell(r: Run) -> str:
    status = _e(r.status)
    if r.ok:
        return status
    err = r.info.get("error")
    cell = r.info.get("failed_cell")
    if isinstance(cell, dict):  # the runner's {index, execution_count, first_line}
        cell = f"{cell.get('index', '?')}" + (f" ({cell['first_line']})" if cell.get("first_line") else "")
    detail = (f" in cell {cell}" if cell not in (None, "") else "") + (f": {err}" if err else "")
    return f'<b class="effnb-failed">{status}</b>{_e(detail[:300])}'


def _status_table(runs: list[Run]) -> str:
    """One machine's runs: chapter, preset, status, run time (with a bar against the longest), finished, commit."""
    longest = max((r.elapsed_s or 0 for r in runs), default=0) or 1
    commits, cells_time = [], []
    for r in runs:
        git = r.provenance.get("git") or {}
        commits.append(((git.get("commit") or "")[:10] or "-") + (" (dirty)" if git.get("dirty") else ""))
        t = r.elapsed_s
        bar = (f'<span class="effnb-bar" style="width:{max(2, round(100 * t / longest))}%"></span>'
               if t is not None else "")
        cells_time.append(T.nowrap(_e(T.seconds(t) if t is not None else "-")) + bar)
    presets = [r.preset for r in runs]
    overrides = [r.overrides_text or "-" for r in runs]
    cols = [T.Column("chapter", [_e(f"{r.chapter} \u00b7 {r.title}" if r.title else r.chapter) for r in runs],
                     [r.chapter for r in runs], cls="effnb-text"),
            T.Column("preset", [_e(p) for p in presets], presets, fold=True),
            T.Column("overrides", [_e(o) for o in overrides], overrides, fold=True),
            T.Column("status", [_status_cell(r) for r in runs], [r.status for r in runs]),
            T.Column("run time", cells_time, [str(r.elapsed_s) for r in runs], cls="effnb-time"),
            T.Column("finished", [T.nowrap(_e(_when(r.finished))) for r in runs], [r.finished for r in runs]),
            T.Column("commit", [f"<code>{_e(c)}</code>" for c in commits], commits, fold=True)]
    attrs = [{"class": "effnb-run", "id": "run-" + _slug(f"{r.hardware_id}-{r.name}"), "data-status": r.status}
             for r in runs]
    return T.table("effnb-status effnb-stack", cols, attrs)


def status_page(runs: list[Run], hardware_id: str) -> str:
    text = [WIDE_PAGE, "# Run status", "",
            "Every run in `book/runs/`, from every machine, with the time it took, so that the cost of "
            "each chapter in a `make book` is in plain sight. A failed run keeps its partial notebook and names the cell that failed; "
            "its chapter page falls back to another run.", ""]
    if runs:
        n_ok = sum(r.ok for r in runs)
        machines = sorted({r.hardware_id for r in runs})
        text += [f"{T.count(len(runs), 'run')} on {T.count(len(machines), 'machine')}: {n_ok} ok, "
                 f"{len(runs) - n_ok} not ok.", ""]
        for hw in machines:
            mine = [r for r in runs if r.hardware_id == hw]
            spent = sum(r.elapsed_s or 0 for r in mine)
            longest = max(mine, key=lambda r: r.elapsed_s or 0)
            most = (f"; the longest, chapter {longest.chapter} ({longest.preset}), took {T.seconds(longest.elapsed_s)}"
                    if longest.elapsed_s else "")
            text += [f"## `{hw}`", "", f"{T.count(len(mine), 'run')}, {T.seconds(spent)} of run time in all{most}.", "",
                     _status_table(mine)]
    else:
        text += ["No runs yet: run `make book` to measure the chapters on this machine.", ""]
    text += ["## This build", "",
             f"The chapter pages show runs from `{hardware_id}`, the machine that built this book, "
             "with these packages:", "",
             T.simple("effnb-versions", ["package", "version"],
                      [({"class": "effnb-version"}, [_e(k), _e(v)]) for k, v in _build_versions()])]
    return "\n".join(text)


# --------------------------------------------------------------------------- landing
def _toc_rel(toc: Path, chapters_out: Path) -> str | None:
    try:
        return chapters_out.resolve().relative_to(toc.resolve().parent).as_posix().rstrip("/")
    except ValueError:
        return None


def chapter_pages(runs: list[Run], stems: list[str], in_toc: list[str], hardware_id: str, chapters_out: Path,
                  out: Path, toc: Path) -> dict[str, ChapterPage]:
    """What the ledger and the landing page link to: each chapter's docname, page and claims heading."""
    rel = _toc_rel(toc, chapters_out)
    link_dir = Path(os.path.relpath(chapters_out.resolve(), out.resolve())).as_posix()
    pages = {}
    for stem in stems:
        run = pick_run(runs, stem, hardware_id) or next((r for r in reversed(runs) if r.stem == stem and r.title), None)
        linked = stem in in_toc and rel is not None
        pages[stem] = chapter_page(stem, chapters_out / f"{stem}.ipynb", f"/{rel}/{stem}" if linked else None,
                                   f"{link_dir}/{stem}.ipynb" if linked else None, run.title if run else "")
    return pages


# --------------------------------------------------------------------------- main
def build(runs_dir: Path, out: Path, chapters_out: Path, notebooks: Path, toc: Path, hardware_id: str) -> dict:
    """Write every generated page; return what changed (for tests and the CLI's summary)."""
    runs = load_runs(runs_dir)
    stems = sorted({p.stem for p in notebooks.glob("*.ipynb")} | {r.stem for r in runs}
                   | set(toc_chapters(toc, chapters_out)))
    written = write_chapters(runs, hardware_id, notebooks, chapters_out, stems)
    in_toc = toc_chapters(toc, chapters_out)
    chapters = chapter_pages(runs, stems, in_toc, hardware_id, chapters_out, out, toc)
    shown = {s: pick_run(runs, s, hardware_id) for s in (in_toc or stems)}
    hw_text, images = hardware_page(runs)
    files = {out / "ledger.md": ledger_page(runs, chapters), out / "hardware.md": hw_text,
             out / "status.md": status_page(runs, hardware_id),
             out / "landing.md": landing_page(runs, shown, chapters, hardware_id)}
    files.update({out / name: data for name, data in images.items()})
    written += [p for p, content in files.items() if write_if_changed(p, content)]
    return {"runs": len(runs), "hardware": sorted({r.hardware_id for r in runs}), "chapters": stems,
            "written": [str(p) for p in written]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="effnb pages", description="Write the book's chapter and results pages "
                                 "from the runs in book/runs/ (executes nothing).")
    ap.add_argument("--runs-dir", default="book/runs", help="runs, one folder per hardware id")
    ap.add_argument("--out", default="book/generated", help="where the ledger, hardware, status and landing pages go")
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
