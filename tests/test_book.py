"""The generated pages (effnb.pages) and an end-to-end Jupyter Book build of them."""
import json
import re

import pytest

import book_fixture as bf
from effnb.runner import pages


def _ids(html_text: str, cls: str) -> list[str]:
    return re.findall(rf'<tr class="{cls}" id="([^"]+)"', html_text)


# --- effnb.pages, no Sphinx ----------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    bf.make_tree(tmp_path)
    return tmp_path


def test_chapter_page_is_this_machines_full_run_without_overrides(tree):
    runs = pages.load_runs(tree / "book" / "runs")
    best = pages.pick_run(runs, bf.STEM, bf.HERE_HW)
    assert (best.hardware_id, best.preset, best.overrides) == (bf.HERE_HW, "full", {})
    assert pages.pick_run(runs, bf.STEM, "some-other-box") is None


def test_chapter_copy_keeps_outputs_and_adds_a_provenance_note(tree):
    bf.pages(tree)
    nb = json.loads((tree / "book" / "chapters" / f"{bf.STEM}.ipynb").read_text())
    assert nb["cells"][0]["source"].startswith("# "), "the title stays first"
    note = nb["cells"][1]["source"]
    assert bf.HERE_HW in note and "preset `full`" in note
    glued = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]
             if "scrapbook" in o.get("metadata", {})]
    assert glued and glued[0]["data"]["application/papermill.record/text/plain"] == "3.5"


def test_falls_back_to_committed_smoke_notebook_with_a_warning(tree):
    (tree / "notebooks" / f"{bf.STEM}.ipynb").write_text(json.dumps(bf.notebook(9.0)))
    b = tree / "book"
    pages.build(b / "runs", b / "generated", b / "chapters", tree / "notebooks", tree / "_toc.yml", "box-without-runs")
    nb = json.loads((b / "chapters" / f"{bf.STEM}.ipynb").read_text())
    assert "smoke-test outputs" in nb["cells"][1]["source"]
    assert any(o.get("data", {}).get("application/papermill.record/text/plain") == "9.0"
               for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"])


def test_no_runs_still_writes_every_page(tmp_path):
    (tmp_path / "_toc.yml").write_text("root: intro\nparts:\n- chapters:\n  - file: book/chapters/01_x\n")
    b = tmp_path / "book"
    res = pages.build(b / "runs", b / "generated", b / "chapters", tmp_path / "nb", tmp_path / "_toc.yml", "me")
    assert res["runs"] == 0 and res["chapters"] == ["01_x"]
    for name in ("ledger.md", "hardware.md", "status.md"):
        assert "No runs yet" in (b / "generated" / name).read_text()
    assert (b / "chapters" / "01_x.ipynb").exists(), "the toc's chapter gets a placeholder page"


def test_tolerates_sparse_and_broken_sidecars(tree, capsys):
    d = tree / "book" / "runs" / "odd-box"
    d.mkdir()
    (d / f"{bf.STEM}__smoke.json").write_text("{}")
    (d / f"{bf.STEM}__full.json").write_text("{not json")
    runs = pages.load_runs(tree / "book" / "runs")
    assert "skipping" in capsys.readouterr().err
    sparse = [r for r in runs if r.hardware_id == "odd-box"]
    assert len(sparse) == 1 and sparse[0].preset == "smoke" and sparse[0].status == "unknown"
    bf.pages(tree)
    assert "odd-box" in (tree / "book" / "generated" / "status.md").read_text()


def test_pages_are_rewritten_only_when_they_change(tree):
    first = bf.pages(tree)
    assert len(first["written"]) >= 4
    assert bf.pages(tree)["written"] == []


# --- the whole book ------------------------------------------------------------

@pytest.mark.slow
def test_book_builds_without_warnings(built_book):
    res = built_book["result"]
    assert res.returncode == 0 and "build succeeded" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    assert "WARNING" not in res.stdout + res.stderr
    html = built_book["html"]
    for page in ("book/intro", "book/methodology", f"book/chapters/{bf.STEM}", "book/generated/ledger",
                 "book/generated/hardware", "book/generated/status", "book/bibliography"):
        assert (html / f"{page}.html").exists(), page


@pytest.mark.slow
def test_ledger_lists_every_claim_of_every_machine(built_book):
    text = (built_book["html"] / "book" / "generated" / "ledger.html").read_text()
    expected = {"claim-" + pages._slug(f"{hw}-{name}-{key}") for hw, name, key in built_book["made"]["claims"]}
    assert set(_ids(text, "effnb-claim")) == expected
    assert len(_ids(text, "effnb-claim")) == len(expected)


@pytest.mark.slow
def test_hardware_page_shows_both_machines_and_their_rooflines(built_book):
    html = built_book["html"] / "book" / "generated"
    text = (html / "hardware.html").read_text()
    for hw in (bf.HERE_HW, bf.OTHER_HW):
        assert hw in text
        assert f"roofline-{hw}.png" in text
    assert "H100" in text and ">1900<" in text, "GPU and its triad bandwidth are shown"
    assert list((built_book["html"] / "_images").glob("roofline-*.png"))


@pytest.mark.slow
def test_status_page_lists_every_run(built_book):
    text = (built_book["html"] / "book" / "generated" / "status.html").read_text()
    ids = _ids(text, "effnb-run")
    assert len(ids) == len(bf.RUNS)
    assert "failed" in text and "RuntimeError: boom" in text


@pytest.mark.slow
def test_chapter_page_renders_glue_math_and_provenance(built_book):
    text = (built_book["html"] / "book" / "chapters" / f"{bf.STEM}.html").read_text()
    assert re.search(r"measured speed-up is <span[^>]*>3\.5", text), "the glued value of the full run"
    assert "<math" in text, "math is MathML, rendered without MathJax"
    assert bf.HERE_HW in text


@pytest.mark.slow
def test_html_fetches_nothing_from_the_network(built_book):
    for page in built_book["html"].rglob("*.html"):
        text = page.read_text()
        fetched = re.findall(r'<(?:script|img|iframe)[^>]+src="(https?:[^"]+)"', text)
        fetched += re.findall(r'<link[^>]+href="(https?:[^"]+)"', text)
        assert not fetched, f"{page.name} loads {fetched}"
        assert "@import url(http" not in text


@pytest.mark.slow
def test_rebuild_with_nothing_changed_does_no_work(built_book):
    dest = built_book["dest"]
    assert bf.pages(dest)["written"] == []
    res, seconds = bf.jupyter_book(dest)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "no targets are out of date" in res.stdout
    assert seconds < max(10.0, built_book["seconds"])
