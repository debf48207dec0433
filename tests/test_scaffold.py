"""`effnb new NN slug` writes a whole chapter and registers it; `--remove` leaves no trace."""
import shutil
from pathlib import Path

import pytest

from effnb.runner import UsageError, scaffold

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tree(tmp_path):
    for rel in ("_toc.yml", "book/references.bib"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    for d in ("notebooks", "effnb", "kernels", "tests"):
        (tmp_path / d).mkdir()
    return tmp_path


def test_new_then_remove_leaves_no_trace(tree):
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    made = scaffold.create("07", "lowrank", root=tree, execute=False)
    rel = {p.relative_to(tree).as_posix() for p in made}
    assert rel == {"notebooks/07_lowrank.ipynb", "notebooks/07_lowrank.yaml", "effnb/lowrank/__init__.py",
                   "effnb/lowrank/ops.py", "effnb/lowrank/reference.py", "effnb/lowrank/experiments.py",
                   "kernels/lowrank/lowrank.cpp", "tests/test_lowrank.py"}
    toc = (tree / "_toc.yml").read_text().splitlines()
    chapters = [ln.split("/")[-1] for ln in toc if ln.startswith("      - file: book/chapters/")]
    assert chapters == sorted(chapters) and "07_lowrank" in chapters
    assert "@misc{lowrank_paper," in (tree / "book" / "references.bib").read_text()
    for p in made:
        if p.suffix == ".py":
            compile(p.read_text(), str(p), "exec")
    scaffold.remove("07", "lowrank", root=tree)
    after = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    assert after == before


def test_new_refuses_to_overwrite_and_bad_names(tree):
    scaffold.create("07", "lowrank", root=tree, execute=False)
    with pytest.raises(UsageError, match="would overwrite"):
        scaffold.create("07", "lowrank", root=tree, execute=False)
    with pytest.raises(UsageError, match="would overwrite"):
        scaffold.create("07", "other", root=tree, execute=False)  # the number is taken
    with pytest.raises(UsageError, match="two digits"):
        scaffold.create("7", "x", root=tree, execute=False)
    with pytest.raises(UsageError, match="lower-case"):
        scaffold.create("08", "Low-Rank", root=tree, execute=False)
    with pytest.raises(UsageError, match="reserved"):
        scaffold.create("08", "common", root=tree, execute=False)
