"""The claims ledger page: every claim of every run, one section per chapter.

Each chapter's section is headed by a link to the chapter's own claims section
and holds two tables: the papers' claims, then the book's own targets (claims
whose paper is ``effnb target``). A column that holds the same value on every
row (one machine, one preset, no backend named) moves into the table's
caption, and each table sits in a horizontal scroll box so that the page never
grows wider than the window.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .. import claims as _claims
from .tables import Column, badge, count, esc, nowrap, simple, slug, table, tidy, with_unit

TARGET_PAPER = "effnb target"
# Wide pages: no right-hand "contents" panel beside the tables (pydata-sphinx-theme reads this field).
WIDE_PAGE = "---\nhtml_theme.sidebar_secondary.remove: true\n---\n"


# --------------------------------------------------------------------------- chapters
@dataclass
class ChapterPage:
    """What the results pages need to know about one chapter page of the book."""
    stem: str
    number: str
    title: str
    docname: str | None = None     # absolute docname ("/book/chapters/01_x"); None: not in the book
    link: str | None = None        # the page relative to the generated pages ("../chapters/01_x.ipynb")
    anchor: str | None = None      # MyST slug of the chapter's claims heading


def _heading_slug(text: str) -> str:
    """The slug MyST gives a heading (myst_parser's default_slugify) from its markdown text."""
    plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)           # links: keep their text
    plain = re.sub(r"[`*]", "", plain).strip()
    return re.sub(r"[^\w\u4e00-\u9fff\- ]", "", plain.lower().replace(" ", "-"))


def headings(nb: dict) -> list[tuple[int, str]]:
    """(level, text) of every markdown heading of a notebook, skipping fenced code."""
    out = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        src = cell.get("source", "")
        fenced = False
        for line in ("".join(src) if isinstance(src, list) else str(src)).splitlines():
            if re.match(r"^\s*(```|~~~)", line):
                fenced = not fenced
            m = None if fenced else re.match(r"^(#{1,6})\s+(.+?)\s*#*\s*$", line)
            if m:
                out.append((len(m.group(1)), m.group(2)))
    return out


def claims_anchor(nb: dict, max_level: int = 3) -> str | None:
    """The MyST slug of the chapter's claims section: its last heading naming claims (or targets)."""
    seen: dict[str, int] = {}
    slugs = []
    for level, text in headings(nb):
        if level > max_level:
            continue
        s = base = _heading_slug(text)
        i = 0
        while s in seen:
            i += 1
            s = f"{base}-{i}"
        seen[s] = 1
        slugs.append((level, text.lower(), s))
    for word in (r"\bclaims\b", r"\bclaim\b", r"\btargets?\b"):
        # A heading with a role ({glue}, {cite}) renders text this cannot predict: link the page alone.
        hits = [s for level, text, s in slugs if level >= 2 and re.search(word, text) and "{" not in text]
        if hits:
            return hits[-1]
    return None


def chapter_page(stem: str, nb_path: Path, docname: str | None, link: str | None, title: str = "") -> ChapterPage:
    nb = {}
    if nb_path.exists():
        try:
            nb = json.loads(nb_path.read_text())
        except ValueError:
            nb = {}
    if not title:
        first = next((t for level, t in headings(nb) if level == 1), "")
        title = re.sub(r"[`*]", "", first) or stem.partition("_")[2].replace("_", " ") or stem
    return ChapterPage(stem, stem.split("_")[0], title, docname, link, claims_anchor(nb) if link else None)


def heading(ch: ChapterPage) -> str:
    text = f"{ch.number} \u00b7 {ch.title}"
    if ch.link:
        return f"[{text}]({ch.link}{'#' + ch.anchor if ch.anchor else ''})"
    return text


# --------------------------------------------------------------------------- tables
def claim_rows(runs) -> list[tuple]:
    """(run, claim, row id) for every claim of ``runs``; ids are unique on the page."""
    rows, seen = [], {}
    for run in runs:
        for i, c in enumerate(run.claims):
            cid = "claim-" + slug(f"{run.hardware_id}-{run.name}-{c.get('key') or i}")
            seen[cid] = seen.get(cid, 0) + 1
            if seen[cid] > 1:
                cid += f"-{seen[cid]}"
            rows.append((run, c, cid))
    return rows


def _preset(run) -> str:
    return run.preset + (f" ({run.overrides_text})" if run.overrides else "")


def claims_table(rows: list[tuple], targets: bool, caption: str = "") -> str:
    """One chapter's papers' claims (``targets=False``) or the book's own targets, as a fitted table."""
    def col(header, cells, values=None, fold=False, cls=""):
        return Column(header, cells, [str(v) for v in (values if values is not None else cells)], fold, cls)

    hw = [r.hardware_id for r, _, _ in rows]
    presets = [_preset(r) for r, _, _ in rows]
    papers = [str(c.get("paper") or "") for _, c, _ in rows]
    backends = [str(c.get("backend") or "not named") for _, c, _ in rows]
    reasons = [str(c.get("reason") or "") for _, c, _ in rows]
    columns = [col("machine", [f"<code>{esc(h)}</code>" for h in hw], hw, fold=True),
               col("preset", [esc(p) for p in presets], presets, fold=True)]
    if not targets:
        columns.append(col("paper", [esc(p) for p in papers], papers, fold=True, cls="effnb-name"))
    columns.append(col("claim" if not targets else "target", [esc(c.get("statement")) for _, c, _ in rows],
                       cls="effnb-text"))
    if not targets:
        columns.append(col("paper's figure", [esc(c.get("quoted")) for _, c, _ in rows], cls="effnb-name"))
    ours = [with_unit(c.get("measured"), c.get("unit")) for _, c, _ in rows]
    columns += [col("ours", [nowrap(esc(o)) if len(o) <= 14 else esc(o) for o in ours], ours),
                col("needed", [nowrap(tidy(c.get("target"))) if len(str(c.get("target") or "")) <= 14
                               else tidy(c.get("target")) for _, c, _ in rows]),
                col("verdict", [badge(str(c.get("verdict", "?"))) for _, c, _ in rows]),
                col("backend", [esc(b) for b in backends], backends, fold=True),
                col("why", [esc(r) for r in reasons], reasons, fold=True, cls="effnb-text")]
    attrs = [{"class": "effnb-claim", "id": cid, "data-verdict": str(c.get("verdict", "?"))} for _, c, cid in rows]
    n = len(rows)
    title = caption or (f"<b>The book's own targets</b> ({n})" if targets else f"<b>The papers' claims</b> ({n})")
    return table("effnb-ledger effnb-stack " + ("effnb-targets" if targets else "effnb-papers"), columns, attrs, caption=title)


def verdict_counts(claims: list[dict]) -> dict[str, int]:
    counts = {v: 0 for v in _claims.VERDICTS}
    for c in claims:
        v = str(c.get("verdict", "?"))
        counts[v] = counts.get(v, 0) + 1
    return counts


def is_target(claim: dict) -> bool:
    return str(claim.get("paper") or "").strip().lower() == TARGET_PAPER


def _summary(all_claims: list[dict]) -> str:
    papers = verdict_counts([c for c in all_claims if not is_target(c)])
    targets = verdict_counts([c for c in all_claims if is_target(c)])
    rows = [({"class": "effnb-count", "data-verdict": v},
             [badge(v), str(papers.get(v, 0)), str(targets.get(v, 0)), str(papers.get(v, 0) + targets.get(v, 0))])
            for v in dict.fromkeys([*_claims.VERDICTS, *papers, *targets])
            if papers.get(v, 0) + targets.get(v, 0)]
    rows.append(({"class": "effnb-total"}, ["<b>total</b>", str(sum(papers.values())), str(sum(targets.values())),
                                            str(len(all_claims))]))
    return simple("effnb-summary", ["verdict", "papers' claims", "book's targets", "all"], rows)


def ledger_page(runs, chapters: dict[str, ChapterPage]) -> str:
    """The ledger: a summary of verdicts, then one section per chapter (papers' claims, then targets)."""
    out = [WIDE_PAGE, "# Claims ledger", "",
           "Every claim checked by every run, on every machine whose runs are in `book/runs/`. Each chapter "
           "has two tables: the **papers' claims**, each paper's figure beside ours, and the **book's own "
           "targets**, the bars this book sets for its kernels. A verdict compares *ours* with what is "
           "*needed*; {doc}`../methodology` explains the verdicts. Each heading leads to the chapter's own "
           "claims section.", ""]
    rows = claim_rows(runs)
    if not rows:
        out += ["No runs yet: run `make book` to measure the chapters on this machine.", ""]
        return "\n".join(out)
    out += ["## Summary", "", _summary([c for _, c, _ in rows])]
    by_stem: dict[str, list[tuple]] = {}
    for row in rows:
        by_stem.setdefault(row[0].stem, []).append(row)
    for stem, group in sorted(by_stem.items()):
        run = group[0][0]
        ch = chapters.get(stem) or ChapterPage(stem, run.chapter, run.title or stem)
        machines = sorted({r.hardware_id for r, _, _ in group})
        n_runs = len({(r.hardware_id, r.name) for r, _, _ in group})
        out += [f"## {heading(ch)}", "",
                f"{count(len(group), 'claim')} from {count(n_runs, 'run')} on {count(len(machines), 'machine')}.", ""]
        papers = [r for r in group if not is_target(r[1])]
        targets = [r for r in group if is_target(r[1])]
        if papers:
            out.append(claims_table(papers, targets=False))
        if targets:
            out.append(claims_table(targets, targets=True))
    return "\n".join(out)
