"""The generated pages (effnb.pages) and an end-to-end Jupyter Book build of them."""
import json
import re

import pytest

import book_fixture as bf
from effnb.runner import ledger, pages, tables


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


def test_one_parameter_table_replaces_the_defaults_and_the_injected_cell():
    from effnb.runner.runparams import with_one_parameter_table
    code = lambda src, tags: {"cell_type": "code", "metadata": {"tags": tags}, "source": src, "outputs": []}
    nb = {"nbformat": 4, "nbformat_minor": 5, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# T"},
        code("repeats: int = 3  # timed samples\nsizes: list = [1, 2]  # vector lengths\n", ["parameters"]),
        code("# Parameters\nrepeats = 7\n", ["injected-parameters"]),
        code("print(repeats)", [])]}
    cells = with_one_parameter_table(nb)["cells"]
    assert [c["cell_type"] for c in cells] == ["markdown", "markdown", "code"]
    table = cells[1]["source"]
    assert "| `repeats` | `7` * | timed samples |" in table and "| `sizes` | `[1, 2]` | vector lengths |" in table
    assert "differ from the notebook's defaults" in table


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
    for name in ("ledger.md", "hardware.md", "status.md", "landing.md"):
        assert "No runs yet" in (b / "generated" / name).read_text()
    assert (b / "chapters" / "01_x.ipynb").exists(), "the toc's chapter gets a placeholder page"


def test_hardware_page_shows_each_isa_path_s_kernel_targets(tmp_path):
    """Per machine, the book's targets whose backend names an ISA path; a lower path's runs (EFFNB_ISA, id
    ending in -as-avx2) are their own section, which says what it is. Papers' claims and targets without a
    path stay on the ledger only."""
    from pathlib import Path

    def target(key, backend, verdict="reproduced"):
        return dict(bf.claim(key, verdict), paper="effnb target", backend=backend)
    low = bf.HERE_HW + "-as-avx2"
    runs = [pages.Run(hw, Path(f"{hw}/{bf.STEM}__full.json"), bf.sidecar(hw, "full", claims=cl)) for hw, cl in (
        (bf.HERE_HW, [target("w4a8_vs_peer", "cpp-avx512-vnni"), target("accuracy", "sklearn"),
                      dict(bf.claim("paper_claim", "reproduced"), backend="cpp-avx512-vnni")]),
        (low, [target("w4a8_vs_peer", "cpp-avx2", "not reproduced")]))]
    text, _ = pages.hardware_page(runs)
    here, lower = text.split(f"## `{low}`")
    assert "Kernel targets on this machine, by ISA path</b> (1;" in here and "cpp-avx512-vnni" in here
    assert "statement accuracy" not in here and "statement paper_claim" not in here
    assert f"The same hardware as `{bf.HERE_HW}`, with every kernel on its avx2 path (`EFFNB_ISA=avx2`)" in lower
    assert "cpp-avx2" in lower and 'data-verdict="not reproduced"' in lower
    assert len(set(_ids(text, "effnb-claim"))) == 2 and all(i.startswith("hw-claim-") for i in _ids(text, "effnb-claim"))


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


def test_ledger_groups_by_chapter_and_keeps_targets_apart(tree):
    d = tree / "book" / "runs" / bf.HERE_HW
    side = json.loads((d / f"{bf.run_name('full', {})}.json").read_text())
    side["claims"].append(dict(bf.claim("t_speed", "not reproduced", 0.8), paper="effnb target", target=">= 1 x"))
    (d / f"{bf.run_name('full', {})}.json").write_text(json.dumps(side))
    bf.pages(tree)
    text = (tree / "book" / "generated" / "ledger.md").read_text()
    assert text.startswith(ledger.WIDE_PAGE), "no right-hand contents panel beside the wide tables"
    heads = re.findall(r"^## (.+)$", text, flags=re.M)
    assert heads == ["Summary", f"[01 \u00b7 Measuring efficiency](../chapters/{bf.STEM}.ipynb#claims)"]
    blocks = text.split('<div class="effnb-table-block">')[1:]
    papers, targets = [b for b in blocks if "effnb-ledger" in b]
    assert "effnb-papers" in papers and "effnb-targets" in targets
    assert "t_speed" not in papers and len(re.findall(r'id="claim-[^"]*t-speed"', targets)) == 1
    assert "paper: <b>Lavin 2024</b>" in papers, "a column with one value moves into the caption"
    assert "<th>paper</th>" not in papers and "<th>machine</th>" in papers, "two machines: the column stays"
    assert text.count('<div class="effnb-scroll">') == text.count("<table"), "every table scrolls on its own"
    assert '<span class="effnb-verdict" data-verdict="reproduced">' in papers and "background:" not in text


def test_claims_anchor_is_the_chapters_last_claims_heading():
    nb = {"cells": [{"cell_type": "markdown", "source": "# T\n## Claim 1: fast\n```\n## not a heading\n```\n"},
                    {"cell_type": "markdown", "source": ["## Targets and claims\n", "text"]},
                    {"cell_type": "markdown", "source": "## Summary"}]}
    assert ledger.claims_anchor(nb) == "targets-and-claims"
    assert ledger.claims_anchor({"cells": []}) is None


@pytest.mark.parametrize("value, unit, text", [
    (0.00437, "s", "4.37 ms"), (1.23e-5, "s", "12.3 \u00b5s"), (416.79, "s", "6 min 57 s"), (2.79932, "x", "2.8x"),
    (44.46238, "%", "44.5%"), (0.1456, "x of 1x1 GFLOP/s", "0.146x of 1x1 GFLOP/s"), (0.5, "", "0.5"),
    (5.0, "shapes", "5 shapes"), (1900.0, "GB/s", "1900 GB/s"), (0.0, "max abs diff", "0 max abs diff"),
    (4.37e-5, "p", "4.37\u00d710\u207b\u2075 p"), (float("nan"), "s", "-"), (None, "x", "-")])
def test_numbers_carry_their_units_and_no_exponent_notation(value, unit, text):
    assert tables.with_unit(value, unit) == text


def test_targets_read_as_inequalities():
    assert tables.tidy(">= 1.00e-05 max abs diff") == "\u2265 1\u00d710\u207b\u2075 max abs diff"
    assert tables.tidy("<= 0.25 x of 1x1 GFLOP/s") == "\u2264 0.25x of 1x1 GFLOP/s"
    assert tables.tidy(">= 60 %") == "\u2265 60%"


def test_landing_names_the_machine_counts_verdicts_and_has_a_card_per_chapter(tree):
    bf.pages(tree)
    text = (tree / "book" / "generated" / "landing.md").read_text()
    assert f"`{bf.HERE_HW}` (CPU of {bf.HERE_HW}, 2 usable cores, AVX2, 24 GiB memory, no GPU)" in text
    assert f"`{bf.OTHER_HW}` (2 runs)" in text
    # the chapter page shows this machine's full run: 2 claims, 1 reproduced, 1 not testable
    assert '<span class="effnb-stat-n">2</span><span class="effnb-stat-label">claims checked</span>' in text
    assert f"::::{{grid-item-card}} 01 \u00b7 Measuring efficiency\n:link: /book/chapters/{bf.STEM}" in text
    assert "**1 of 2** papers' claims held" in text
    in_toc = (tree / "_toc.yml").read_text().count("file: book/chapters/")
    assert in_toc >= 1 and text.count("grid-item-card") == in_toc, "one card per chapter of the table of contents"


def _dark_pixels(fig, ax) -> int:
    """Pixels of drawn lines (dark) inside the axes, legend hidden: 0 for an empty plot."""
    import numpy as np
    if ax.get_legend() is not None:
        ax.get_legend().set_visible(False)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    bb, h = ax.get_window_extent(), img.shape[0]
    crop = img[h - int(bb.y1) + 3:h - int(bb.y0) - 3, int(bb.x0) + 3:int(bb.x1) - 3]
    return int((crop.max(axis=2) < 90).sum())


def test_hardware_roofline_is_drawn_not_empty():
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = pages.roofline_figure(bf.ROOF, bf.HERE_HW)
    ax = fig.axes[0]
    assert ax.get_yscale() == ax.get_xscale() == "log"
    for lim in (ax.get_xlim(), ax.get_ylim()):
        assert all(math.isfinite(v) and v > 0 for v in lim), lim
    assert ax.get_ylim()[0] < bf.ROOF["peak_gflops"] < ax.get_ylim()[1], "the compute roof is in view"
    assert _dark_pixels(fig, ax) > 300, "the roofline itself is drawn inside the axes"
    # The same checks catch the earlier bug: ylim set on the linear axis, then the log scale.
    bad = Figure()
    FigureCanvasAgg(bad)
    bax = bad.add_subplot()
    bax.plot([1 / 16, 8, 64], [1.25, 150, 150], color="k")
    bax.set_xscale("log", base=2)
    bax.set_ylim(top=300)
    bax.set_yscale("log")
    assert _dark_pixels(bad, bax) < 50
    with pytest.raises(ValueError, match="empty plot"):
        pages.check_log_axes(bax)
    png = pages.roofline_png(bf.ROOF, bf.HERE_HW)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_old_sidecars_keep_their_roofline_in_the_results(tree):
    d = tree / "book" / "runs" / bf.HERE_HW
    path = d / f"{bf.run_name('smoke', {})}.json"
    side = json.loads(path.read_text())
    side.pop("limits")
    side["results"] = {"roofline": bf.ROOF}
    path.write_text(json.dumps(side))
    run = next(r for r in pages.load_runs(tree / "book" / "runs") if r.sidecar == path)
    assert run.roofline == bf.ROOF


def test_status_page_shows_each_runs_time(tree):
    bf.pages(tree)
    text = (tree / "book" / "generated" / "status.md").read_text()
    assert text.startswith(ledger.WIDE_PAGE)
    assert text.count('class="effnb-bar"') == len(bf.RUNS)
    assert "14 s" in text and "of run time in all" in text


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
    assert text.count("<figcaption") == 2 and 'alt="Log-log roofline of' in text, "each roofline is a captioned figure"
    assert list((built_book["html"] / "_images").glob("roofline-*.png"))


@pytest.mark.slow
def test_landing_page_says_what_built_it_and_how_to_rebuild(built_book):
    text = (built_book["html"] / "book" / "intro.html").read_text()
    assert bf.HERE_HW in text and "claims checked" in text and "sd-card" in text
    assert f'href="chapters/{bf.STEM}.html"' in text, "each card links its chapter"
    assert "effnb.css" in text
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", text))
    assert "make book" in words and "make test" in words and "python -m http.server -d _build/html" in words


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
