"""The layout's rules, checked: core knows no technique, techniques do not reach into each
other, modules stay small, and each chapter's YAML registry agrees with what is on disk."""
import ast
import re
from pathlib import Path

import pytest
import yaml

from effnb import ext
from effnb import runner

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "effnb"
SHARED = {"models", "data", "lm"}    # shared substrate: any technique may use them
RUNNER = "runner"
CORE = sorted(p.stem for p in PKG.glob("*.py") if p.stem != "__init__")
PACKAGES = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").is_file())
TECHNIQUES = sorted(set(PACKAGES) - SHARED - {RUNNER})
MAX_LINES = 520


def _imports(path: Path, pkg: Path = PKG) -> set[str]:
    """The effnb sub-packages/modules a file imports, as top-level names under effnb."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(pkg).parts
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("effnb."):
                    out.add(a.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").startswith("effnb"):
                parts = (node.module or "").split(".")
                names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            elif node.level:
                base = list(rel[:-1])[: len(rel) - node.level]  # the package the dots point at
                parts = base + ((node.module or "").split(".") if node.module else [])
                names = [parts[0]] if parts else [a.name for a in node.names]
            else:
                continue
            out.update(names)
    return out


def _files(where: Path) -> list[Path]:
    return sorted(p for p in where.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_layout_has_core_runner_techniques_and_shared_packages():
    assert {"bench", "chapter", "claims", "ext", "perf", "probes", "provenance", "roofline", "threads"} <= set(CORE)
    assert RUNNER in PACKAGES and SHARED <= set(PACKAGES)
    assert {"measuring", "quant", "sparse", "timeseries"} <= set(TECHNIQUES)


@pytest.mark.parametrize("module", CORE)
def test_core_imports_no_technique(module):
    """Core knows no technique (chapter may use the runner's registry, lazily)."""
    used = _imports(PKG / f"{module}.py") & set(PACKAGES)
    allowed = {RUNNER} if module == "chapter" else set()
    assert used <= allowed, f"effnb/{module}.py imports {sorted(used - allowed)}"


@pytest.mark.parametrize("package", TECHNIQUES + sorted(SHARED))
def test_packages_import_only_core_and_shared(package):
    allowed = set(CORE) | SHARED | {package}
    for path in _files(PKG / package):
        used = _imports(path) & (set(PACKAGES) | set(CORE))
        assert used <= allowed, f"{path.relative_to(REPO)} imports {sorted(used - allowed)}"


def test_the_import_check_catches_a_cross_technique_import(tmp_path):
    fake = tmp_path / "effnb" / "quant" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..sparse import formats\nfrom .. import bench\nfrom . import ops\n"
                    "import effnb.timeseries\nfrom effnb.models import minilm\n")
    assert _imports(fake, tmp_path / "effnb") == {"sparse", "bench", "quant", "timeseries", "models"}


@pytest.mark.parametrize("path", _files(PKG), ids=lambda p: str(p.relative_to(PKG)))
def test_modules_stay_small(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(REPO)} has {n} lines; split it by concern (limit ~500)"


# ------------------------------------------------------------------ the registry

BIB = (REPO / "book" / "references.bib").read_text()
BIB_KEYS = set(re.findall(r"^@\w+\{([^,\s]+),", BIB, flags=re.M))


@pytest.mark.parametrize("chapter", [c.stem for c in runner.discover()])
def test_chapter_yaml_declares_what_exists(chapter):
    ch = runner.find_chapter(chapter)
    assert ch.packages, f"{ch.spec.name} declares no packages"
    for name in ch.packages:
        assert runner.package_files(name), f"{ch.spec.name}: package {name!r} is not under effnb/"
    for family in ch.kernels:
        assert family in ext.families(), f"{ch.spec.name}: kernel family {family!r} is not under kernels/"
    source = ch.notebook.read_text()
    cited = set(re.findall(r"\{cite[a-z:]*\}`([^`]+)`", source))
    cited = {k.strip() for group in cited for k in group.split(",")}
    assert set(ch.bibliography) <= BIB_KEYS, f"{ch.spec.name}: {sorted(set(ch.bibliography) - BIB_KEYS)} not in book/references.bib"
    assert cited <= set(ch.bibliography), f"{ch.notebook.name} cites {sorted(cited - set(ch.bibliography))}, " \
                                          f"which {ch.spec.name} does not declare under bibliography"
    uses = {t for t in TECHNIQUES + sorted(SHARED)
            if re.search(rf"from effnb import [^\n]*\b{t}\b|\beffnb\.{t}\b", source)}
    missing = uses - {name.split(".")[0] for name in ch.packages}
    assert not missing, f"{ch.notebook.name} uses packages {sorted(missing)} that {ch.spec.name} does not declare"


def test_config_names_exactly_the_one_bibliography():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["bibtex_bibfiles"] == ["book/references.bib"]
    assert sorted(p.name for p in (REPO / "book").glob("*.bib")) == ["references.bib"]


def test_every_chapter_is_in_the_toc():
    toc = (REPO / "_toc.yml").read_text()
    for ch in runner.discover():
        assert f"book/chapters/{ch.stem}" in toc, f"{ch.stem} is missing from _toc.yml"
