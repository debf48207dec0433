"""A small, self-contained book to build in tests: synthetic runs from two machines.

The real chapters take minutes to run, so the book tests synthesize what the
runner leaves behind (executed notebook + JSON sidecar per run) and build the
repository's real book sources (_config.yml, _toc.yml, book/*.md) around them.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE_HW = "test-epyc-2c-avx512vnni-24g"  # stands for "this machine" (as long as a real id: headings must wrap)
OTHER_HW = "nvidia-h100-test"         # a run committed from another machine
STEM = "01_measuring"


def _png() -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(2, 1.5), dpi=50)
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([1, 2, 3], [1, 4, 9])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode()


def notebook(speedup: float) -> dict:
    """An executed chapter notebook: parameters, injected parameters, a glued value, a figure."""
    def code(src, outputs=(), tags=(), n=1):
        return {"cell_type": "code", "execution_count": n, "id": f"c{n}", "metadata": {"tags": list(tags)},
                "outputs": list(outputs), "source": src}
    glue = {"output_type": "display_data", "data": {"application/papermill.record/text/plain": repr(speedup)},
            "metadata": {"scrapbook": {"name": "speedup", "mime_prefix": "application/papermill.record/"}}}
    fig = {"output_type": "display_data", "data": {"image/png": _png(), "text/plain": "<Figure>"}, "metadata": {}}
    cells = [{"cell_type": "markdown", "id": "m1", "metadata": {},
              "source": "# Measuring efficiency (test chapter)\n\nThe measured speed-up is {glue}`speedup`; time is $t = \\frac{W}{P}$.\n\n$$\nI = \\frac{\\text{flops}}{\\text{bytes}}\n$$ (eq-intensity)\n"},
             code("threads: int = 1  # threads", tags=["parameters"], n=1),
             code("# Parameters\nthreads = 2\n", tags=["injected-parameters"], n=2),
             code("ch.record('speedup', speedup)\nplot()", [glue, fig], n=3),
             {"cell_type": "markdown", "id": "m2", "metadata": {}, "source": "## Claims\n\nSee the ledger.\n"}]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python", "version": "3.11"}}}


def claim(key, verdict, measured=2.5):
    return {"chapter": "01", "key": key, "paper": "Lavin 2024", "statement": f"statement {key}",
            "quoted": "3x", "measured": measured, "unit": "x", "target": ">= 2 x", "verdict": verdict,
            "reason": "" if verdict != "not testable at this scale" else "needs a GPU"}


def sidecar(hw, preset, overrides=None, status="ok", claims=(), roofline=None, finished="2026-11-22T10:00:00+00:00"):
    prov = {"fingerprint": {"hardware_id": hw, "cpu_model": f"CPU of {hw}", "arch": "x86_64", "isa_level": "avx2",
                            "isa_features": ["avx", "avx2", "fma"], "cores": 2,
                            "caches": {"L1d": 32768, "L2": 524288, "L3": 33554432}, "memory_bytes": 24 << 30,
                            "gpu": {"name": "H100", "memory_bytes": 80 << 30, "count": 1, "cuda": "12.8",
                                    "driver": "570.1"} if "nvidia" in hw else None, "os": "Linux 6"},
            "versions": {"python": "3.11.9", "torch": "2.13.0"}, "git": {"commit": "0123456789abcdef", "dirty": False},
            "recorded_at": finished}
    data = {"chapter": "01", "status": status, "elapsed_s": 12.5, "parameters": {"threads": 2},
            "provenance": prov, "claims": list(claims), "results": {}, "limits": roofline, "schema": 2}
    data["run"] = {"preset": preset, "overrides": overrides or {}, "title": "Measuring efficiency",
                   "started": finished, "finished": finished, "elapsed_s": 14.0, "status": status,
                   "failed_cell": {"index": 3, "execution_count": 3, "first_line": "ch.record(...)"} if status != "ok" else None,
                   "error": "RuntimeError: boom" if status != "ok" else None}
    return data


ROOF = {"read_gbps": 20.0, "copy_gbps": 15.0, "triad_gbps": 16.0, "peak_gflops": 150.0, "threads": 2}

# (hardware, preset, overrides, status, claims, roofline)
RUNS = [
    (HERE_HW, "smoke", {}, "ok", [claim("flops_vs_latency", "not reproduced", 1.2)], ROOF),
    (HERE_HW, "full", {}, "ok", [claim("flops_vs_latency", "reproduced"), claim("gpu_only", "not testable at this scale", None)], ROOF),
    (HERE_HW, "full", {"threads": 1}, "ok", [claim("flops_vs_latency", "reproduced", 2.1)], None),
    (OTHER_HW, "full", {}, "ok", [claim("flops_vs_latency", "reproduced", 3.3), claim("gpu_only", "reproduced", 4.0)],
     dict(ROOF, read_gbps=2000.0, copy_gbps=1800.0, triad_gbps=1900.0, peak_gflops=50000.0)),
    (OTHER_HW, "smoke", {}, "failed", [], None),
]


def run_name(preset, overrides):
    return "__".join([STEM, preset, *(f"{k}={v}" for k, v in sorted(overrides.items()))])


def make_tree(dest: Path) -> dict:
    """Copy the book sources into ``dest`` and add the synthetic runs; return what was made."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, dest / name)
    (dest / "book").mkdir()
    for p in (ROOT / "book").iterdir():
        if p.is_file() and p.suffix in (".md", ".bib"):
            shutil.copy(p, dest / "book" / p.name)
    for folder in ("_ext", "_static"):
        shutil.copytree(ROOT / "book" / folder, dest / "book" / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "notebooks").mkdir()
    claims = []
    for i, (hw, preset, ov, status, cl, roof) in enumerate(RUNS):
        d = dest / "book" / "runs" / hw
        d.mkdir(parents=True, exist_ok=True)
        name = run_name(preset, ov)
        (d / f"{name}.ipynb").write_text(json.dumps(notebook(2.5 + i)))
        (d / f"{name}.json").write_text(json.dumps(sidecar(hw, preset, ov, status, cl, roof,
                                                           finished=f"2026-11-22T10:0{i}:00+00:00")))
        claims += [(hw, name, c["key"]) for c in cl]
    return {"claims": claims, "runs": [(hw, run_name(p, ov)) for hw, p, ov, *_ in RUNS]}


def make_chapter_tree(dest: Path) -> list[str]:
    """The book sources with the repository's committed chapter notebooks and no runs: every chapter
    page then shows the notebook's own smoke outputs, as a fresh clone's `make book-html` would.
    Returns the chapter stems."""
    make_tree(dest)
    shutil.rmtree(dest / "book" / "runs")
    (dest / "book" / "runs").mkdir()
    stems = []
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy(nb, dest / "notebooks" / nb.name)
        shutil.copy(nb.with_suffix(".yaml"), dest / "notebooks" / nb.with_suffix(".yaml").name)
        stems.append(nb.stem)
    return stems


def pages(dest: Path) -> dict:
    from effnb.runner import pages as _pages
    b = dest / "book"
    return _pages.build(b / "runs", b / "generated", b / "chapters", dest / "notebooks", dest / "_toc.yml", HERE_HW)


def jupyter_book(dest: Path) -> tuple[subprocess.CompletedProcess, float]:
    exe = Path(sys.executable).parent / "jupyter-book"
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), "build", str(dest), "-W", "-n", "--keep-going"], cwd=dest,
                         capture_output=True, text=True, timeout=600)
    return res, time.perf_counter() - t0
