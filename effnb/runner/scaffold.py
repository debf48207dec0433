"""``effnb new NN slug``: a new chapter that passes ``make test`` as generated.

It writes exactly what a chapter owns: the notebook and its YAML, a technique
package ``effnb/<slug>/`` (ops with a declared schema and fake kernel, a
reference, a benchmark spec), a kernel family ``kernels/<slug>/``, a test file,
an entry in ``_toc.yml`` and a stub in ``book/references.bib``; then it builds
the family and executes the notebook once (``effnb refresh``) so the committed
outputs exist. ``effnb new NN slug --remove`` takes all of it back out.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..provenance import ROOT
from .spec import UsageError

BIB_BEGIN, BIB_END = "% effnb new {stem}: begin", "% effnb new {stem}: end"


def _paths(nn: str, slug: str, root: Path) -> dict[str, Path]:
    stem = f"{nn}_{slug}"
    return {"notebook": root / "notebooks" / f"{stem}.ipynb", "yaml": root / "notebooks" / f"{stem}.yaml",
            "package": root / "effnb" / slug, "kernels": root / "kernels" / slug,
            "test": root / "tests" / f"test_{slug}.py"}


def _check(nn: str, slug: str, root: Path = ROOT) -> None:
    if not re.fullmatch(r"\d\d", nn):
        raise UsageError(f"chapter number {nn!r}: write two digits, e.g. 07")
    core = {p.stem for p in (root / "effnb").glob("*.py")} | {"common", "runner", "models", "data"}
    if not re.fullmatch(r"[a-z][a-z0-9_]*", slug) or slug in core:
        raise UsageError(f"slug {slug!r}: write a lower-case Python name (letters, digits, _), not a reserved one "
                         f"(core modules and shared packages: {', '.join(sorted(core))})")


def create(nn: str, slug: str, title: str | None = None, root: Path = ROOT, execute: bool = True) -> list[Path]:
    """Write the chapter's files and register it; fail before writing anything when a name is taken."""
    _check(nn, slug, root)
    _toc(root / "_toc.yml", f"{nn}_{slug}", add=True, dry=True)  # a toc without a Chapters part fails now
    paths = _paths(nn, slug, root)
    taken = [p for p in paths.values() if p.exists()] + [p for p in (root / "notebooks").glob(f"{nn}_*.ipynb")]
    if taken:
        raise UsageError(f"chapter {nn}_{slug} would overwrite {', '.join(str(p.relative_to(root)) for p in taken)}; "
                         f"pick another number or slug, or remove it first (effnb new {nn} {slug} --remove)")
    title = title or f"{slug.replace('_', ' ').capitalize()}: a new chapter"
    stem = f"{nn}_{slug}"
    made = []
    for rel, text in _templates(nn, slug, title).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        made.append(path)
    _toc(root / "_toc.yml", stem, add=True)
    bib = root / "book" / "references.bib"
    bib.write_text(bib.read_text().rstrip("\n") + "\n\n" + BIB_BEGIN.format(stem=stem) + "\n"
                   f"@misc{{{slug}_paper,\n  title = {{The paper chapter {nn} checks (replace this stub)}},\n"
                   f"  author = {{Someone, A.}},\n  year = {{2026}},\n}}\n" + BIB_END.format(stem=stem) + "\n")
    if execute:
        from .. import ext
        from .execute import refresh
        if ext.compiler() is not None:
            ext.build([slug])
        refresh(stem, notebooks_dir=root / "notebooks")
    return made


def remove(nn: str, slug: str, root: Path = ROOT) -> list[Path]:
    """Delete what :func:`create` wrote and take the toc entry and bibliography stub back out."""
    import shutil
    _check(nn, slug, root)
    gone = []
    for p in _paths(nn, slug, root).values():
        if p.is_dir():
            shutil.rmtree(p)
            gone.append(p)
        elif p.exists():
            p.unlink()
            gone.append(p)
    stem = f"{nn}_{slug}"
    _toc(root / "_toc.yml", stem, add=False)
    bib = root / "book" / "references.bib"
    text = bib.read_text()
    block = re.compile(r"\n*" + re.escape(BIB_BEGIN.format(stem=stem)) + r".*?" + re.escape(BIB_END.format(stem=stem))
                       + r"\n", re.S)
    bib.write_text(block.sub("\n", text).rstrip("\n") + "\n")
    return gone


def _toc(toc: Path, stem: str, add: bool, dry: bool = False) -> None:
    """Insert (in number order) or drop the chapter's line in the Chapters part of ``_toc.yml``."""
    lines = toc.read_text().splitlines()
    entry = f"      - file: book/chapters/{stem}"
    lines = [ln for ln in lines if ln != entry]
    if add:
        rows = [i for i, ln in enumerate(lines) if ln.startswith("      - file: book/chapters/")]
        if not rows:
            raise UsageError(f"{toc.name} has no `Chapters` part with book/chapters entries to add {stem} to")
        after = [i for i in rows if lines[i].split("/")[-1] < stem]
        lines.insert((after[-1] + 1) if after else rows[0], entry)
    if not dry:
        toc.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- templates

def _md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text.strip("\n")}


def _code(text: str, tags=()) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {"tags": list(tags)} if tags else {},
            "outputs": [], "source": text.strip("\n")}


def _notebook(nn: str, slug: str, title: str) -> str:
    cells = [
        _md(f"# {title}\n\nSeed paper: {{cite}}`{slug}_paper` (replace the stub in `book/references.bib`).\n\n"
            "**What you will learn:** what the technique promises, how its kernel is built, and what it buys on "
            "this machine, measured against the fastest peer a reader could pick instead."),
        _code("threads: int = 1  # threads for torch and the C++ kernels\n"
              "device: str = \"cpu\"  # this chapter measures the CPU only\n"
              "seed: int = 0  # seeds random, numpy and torch\n"
              "repeats: int = 3  # timed samples per measurement\n"
              "sizes: list = [4194304, 16777216]  # elements of the cold fp32 vectors", tags=["parameters"]),
        _code(f"import matplotlib.pyplot as plt\nimport torch\n\nimport effnb.chapter\n"
              f"from effnb import {slug} as D\nfrom effnb import roofline, show\n\n"
              f"ch = effnb.chapter.start(\"{nn}\")\nprint(\"kernels:\", D.backend())", tags=["hide-input"]),
        _md("## The kernel\n\nThe C++ kernel next to its plain reference; the schema is declared once in "
            f"`effnb/{slug}/ops.py`."),
        _code(f"show.show_file(\"kernels/{slug}/{slug}.cpp\", \"at::Tensor {slug}_scale\", \"}}\")"),
        _md("## Correctness\n\nThe kernel against the reference on awkward sizes."),
        _code("g = torch.Generator().manual_seed(seed)\nfor n in [0, 1, 7, 8, 9, 1023, 100_003]:\n"
              "    x = torch.randn(n, generator=g)\n    torch.testing.assert_close(D.scale(x, 2.5), D.scale_ref(x, 2.5))\n"
              "print(\"kernel matches the reference\")"),
        _md("## Speed\n\nCold vectors (working set above the last-level cache), against torch's own op."),
        _code("limits = ch.use_limits(roofline.machine(threads, progress=False))\n"
              "result = D.benchmark(sizes, repeats=repeats).run(progress=False)\n"
              "table = result.table(limits)\nch.record(\"vs_fastest_peer\", float(table[\"vs fastest peer\"].min()))\n"
              "table"),
        _code("result.plot(roof=limits)\nplt.show()"),
        _md("## Claims\n\nThe paper's figure beside ours. Ours runs at {glue:text}`vs_fastest_peer:.2f`x "
            "the fastest peer at the worst size."),
        _code("ch.claims.check(\"speed\", paper=\"(the seed paper)\", statement=\"the kernel beats the fastest peer\",\n"
              "                quoted=\"-\", measured=ch.results[\"vs_fastest_peer\"], target=(\">=\", 1.0), unit=\"x\")\n"
              "ch.claims", tags=["hide-input"]),
        _md("## Summary\n\n- (what the measurements showed)\n\n## Exercises\n\n1. (an exercise)\n\n"
            "## What is not done\n\n- (each catalogue item this chapter skips, with the reason)"),
        _code("ch.finish();", tags=["remove-cell"]),
    ]
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                                      "name": "python3"},
                                       "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i}"
    return json.dumps(nb, indent=1) + "\n"


def _templates(nn: str, slug: str, title: str) -> dict[str, str]:
    stem = f"{nn}_{slug}"
    return {
        f"notebooks/{stem}.ipynb": _notebook(nn, slug, title),
        f"notebooks/{stem}.yaml": (
            f"chapter: \"{nn}\"\ntitle: \"{title}\"\npackages: [{slug}]  # effnb packages this chapter uses\n"
            f"kernels: [{slug}, stream]  # kernel families (stream: the roofline's probes)\n"
            f"bibliography: [{slug}_paper]  # keys in book/references.bib\nparameters:\n"
            "  threads: {min: 1, max: cores, help: \"threads for torch and the C++ kernels\"}\n"
            "  device: {choices: [cpu], help: \"this chapter measures the CPU only\"}\n"
            "  seed: {min: 0, help: \"seeds random, numpy and torch\"}\n"
            "  repeats: {min: 3, max: 50, help: \"timed samples per measurement\"}\n"
            "  sizes: {min: 1, help: \"elements of the cold fp32 vectors\"}\n"
            "presets:\n  smoke: {}\n  full:\n    repeats: 7\n    sizes: [4194304, 16777216, 67108864]\n"),
        f"effnb/{slug}/__init__.py": (
            f"\"\"\"Chapter {nn}'s technique: {title}.\"\"\"\n"
            "from .experiments import benchmark  # noqa: F401\n"
            "from .ops import available, backend, scale  # noqa: F401\n"
            "from .reference import scale_ref  # noqa: F401\n"),
        f"effnb/{slug}/ops.py": (
            f"\"\"\"The {slug} kernel family's ops: schemas declared once here, C++ registers the implementation.\"\"\"\n"
            "from __future__ import annotations\n\nimport torch\n\nfrom .. import ext\n\n"
            f"FAMILY = \"{slug}\"\nSCHEMAS = {{\"{slug}_scale\": \"(Tensor x, float s) -> Tensor\"}}\n\n"
            f"ext.declare(FAMILY, SCHEMAS)\n\n\n@torch.library.register_fake(\"effnb::{slug}_scale\")\n"
            "def _scale_fake(x, s):\n    return torch.empty_like(x)\n\n\n"
            "def available() -> bool:\n    \"\"\"True when the C++ library is loaded (else the reference runs).\"\"\"\n"
            "    return ext.load(FAMILY)\n\n\n"
            "def backend() -> str:\n    \"\"\"What runs: cpp-<isa path> or torch-fallback.\"\"\"\n"
            "    return ext.backend(FAMILY)\n\n\n"
            "def scale(x: torch.Tensor, s: float) -> torch.Tensor:\n    \"\"\"``s * x`` for a contiguous fp32 CPU tensor.\"\"\"\n"
            "    from .reference import scale_ref\n"
            f"    return torch.ops.effnb.{slug}_scale(x, s) if available() else scale_ref(x, s)\n"),
        f"effnb/{slug}/reference.py": (
            "\"\"\"The plain reference every kernel is tested against.\"\"\"\nimport torch\n\n\n"
            "def scale_ref(x: torch.Tensor, s: float) -> torch.Tensor:\n    return x * s\n"),
        f"effnb/{slug}/experiments.py": (
            "\"\"\"The chapter's race, as a declarative benchmark.\"\"\"\nfrom __future__ import annotations\n\n"
            "import torch\n\nfrom .. import perf\nfrom . import ops\n\n\n"
            "def benchmark(sizes, repeats: int = 5) -> perf.Benchmark:\n"
            "    \"\"\"Ours against torch.mul on cold fp32 vectors; 8 bytes move per element.\"\"\"\n"
            "    def make(fn):\n        return lambda n: (lambda x=torch.randn(n): fn(x, 2.5))\n\n"
            "    return perf.Benchmark(\n        name=\"scale, cold fp32\", x=\"elements\", x_values=list(sizes), cold=True,\n"
            "        providers=[perf.Provider(\"ours\", \"ours\", make(ops.scale), ours=True, backend=ops.backend()),\n"
            "                   perf.Provider(\"torch\", \"torch.mul\", make(torch.mul), backend=\"torch\")],\n"
            "        baseline=\"torch\", bytes_moved=lambda n: 8.0 * n, repeats=repeats)\n"),
        f"kernels/{slug}/{slug}.cpp": (
            f"// Chapter {nn}'s kernel family. The schema lives in effnb/{slug}/ops.py.\n#include \"effnb.h\"\n\n"
            "namespace {\n\n"
            f"at::Tensor {slug}_scale(const at::Tensor& x, double s) {{\n"
            f"  effnb::check_cpu_contiguous(x, \"{slug}_scale\", \"x\");\n"
            f"  effnb::check_dtype(x, at::kFloat, \"{slug}_scale\", \"x\");\n"
            "  at::Tensor y = at::empty_like(x);\n  const float* a = x.data_ptr<float>();\n"
            "  float* b = y.data_ptr<float>();\n  const float f = static_cast<float>(s);\n"
            "  const int64_t n = x.numel();\n#pragma omp parallel for schedule(static)\n"
            "  for (int64_t i = 0; i < n; ++i) b[i] = f * a[i];\n  return y;\n}\n\n}  // namespace\n\n"
            "EFFNB_ISA_PATH(EFFNB_ISA_LEVEL)\n\n"
            f"TORCH_LIBRARY_IMPL(effnb, CPU, m) {{ m.impl(\"{slug}_scale\", &{slug}_scale); }}\n"),
        f"tests/test_{slug}.py": (
            f"\"\"\"Chapter {nn}'s kernel against its reference.\"\"\"\nimport pytest\nimport torch\n\n"
            f"from effnb import ext\nfrom effnb import {slug} as D\nfrom effnb.{slug} import ops\n\n\n"
            "def test_the_cpp_kernel_is_under_test():\n    if ext.compiler() is None:\n"
            "        pytest.skip(\"no C++ compiler: the reference runs here\")\n"
            "    assert D.backend().startswith(\"cpp-\"), ext.status(ops.FAMILY)\n\n\n"
            "@pytest.mark.parametrize(\"n\", [0, 1, 7, 8, 9, 1023, 100_003])\n"
            "def test_kernel_matches_reference(n):\n    x = torch.randn(n, generator=torch.Generator().manual_seed(n))\n"
            "    torch.testing.assert_close(D.scale(x, -1.5), D.scale_ref(x, -1.5))\n\n\n"
            "def test_forced_fallback_runs_the_reference(monkeypatch):\n"
            "    monkeypatch.setattr(ops, \"available\", lambda: False)\n    x = torch.randn(5)\n"
            "    torch.testing.assert_close(D.scale(x, 2.0), 2.0 * x)\n\n\n"
            "def test_opcheck():\n    if not ops.available():\n        pytest.skip(\"the C++ family is not loaded\")\n"
            f"    torch.library.opcheck(torch.ops.effnb.{slug}_scale.default, (torch.randn(33), 0.5))\n"),
    }
