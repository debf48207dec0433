"""The part of the landing page that depends on the runs (``book/generated/landing.md``).

``book/intro.md`` includes it: which machine built the book and from which
runs, the headline counts of claims by verdict, and one card per chapter
(number, title, a one-line answer with its verdict counts, a link).
"""
from __future__ import annotations

import re

from .. import claims as _claims
from .ledger import ChapterPage, is_target, verdict_counts
from .tables import badge, count, esc, nbytes, seconds, when


def machine_line(run) -> str:
    """A machine in words from a run's fingerprint: CPU, cores, SIMD level, memory, GPU."""
    fp = run.provenance.get("fingerprint") or {}
    parts = [str(fp.get("cpu_model") or "unknown CPU")]
    if fp.get("cores"):
        parts.append(f"{fp['cores']} usable cores")
    if fp.get("isa_level"):
        parts.append(str(fp["isa_level"]).upper())
    if fp.get("memory_bytes"):
        parts.append(f"{nbytes(fp['memory_bytes'])} memory")
    g = fp.get("gpu")
    parts.append(f"GPU {g.get('name', '?')}" if isinstance(g, dict) else "no GPU")
    return ", ".join(parts)


def _short_paper(name: str) -> str:
    return re.sub(r"\s*\([^)]*\)\s*$", "", str(name)).strip() or str(name)


def answer(claims: list[dict]) -> str:
    """One line: how many of the papers' claims held here, and how many of the book's targets were met."""
    papers = [c for c in claims if not is_target(c)]
    targets = [c for c in claims if is_target(c)]
    ok = _claims.REPRODUCED
    bits = []
    if papers:
        bits.append(f"**{sum(c.get('verdict') == ok for c in papers)} of {len(papers)}** papers' claims held")
    if targets:
        bits.append(f"**{sum(c.get('verdict') == ok for c in targets)} of {len(targets)}** of the book's targets met")
    return "; ".join(bits) + "." if bits else "No claims recorded."


def papers_line(claims: list[dict]) -> str:
    """Which papers held and which did not, by short name."""
    by_paper: dict[str, list[str]] = {}
    for c in claims:
        if not is_target(c):
            by_paper.setdefault(_short_paper(c.get("paper") or "?"), []).append(str(c.get("verdict")))
    held = [p for p, v in by_paper.items() if all(x == _claims.REPRODUCED for x in v)]
    failed = [p for p, v in by_paper.items() if all(x == _claims.NOT_REPRODUCED for x in v)]
    mixed = [p for p in by_paper if p not in held and p not in failed]
    out = []
    for label, names in (("held", held), ("not here", failed), ("in part", mixed)):
        if names:
            out.append(f"{label}: " + ", ".join(esc(n) for n in names))
    return "; ".join(out)


def badges(counts: dict[str, int]) -> str:
    return " ".join(f'{badge(v)}&nbsp;{n}' for v, n in counts.items() if n)


def _card(ch: ChapterPage, run, here: str) -> list[str]:
    head = f"::::{{grid-item-card}} {ch.number} \u00b7 {ch.title}"
    opts = [f":link: {ch.docname}", ":link-type: doc"] if ch.docname else []
    opts += [":class-card: effnb-card"]
    if run is None:
        return [head, *opts, "", "No run of this chapter yet; its page shows the smoke-test outputs.", "::::", ""]
    where = "" if run.hardware_id == here else f" (run on `{run.hardware_id}`)"
    body = [answer(run.claims) + where, ""]
    names = papers_line(run.claims)
    if names:
        body += [f'<span class="effnb-papers">{names[0].upper() + names[1:]}</span>', ""]
    took = f"{run.preset} preset" + (f", {seconds(run.elapsed_s)}" if run.elapsed_s is not None else "")
    return [head, *opts, "", *body, ":::{card-footer}", f"{badges(verdict_counts(run.claims))} \u00b7 {took}", ":::",
            "::::", ""]


def landing_page(runs, shown: dict, chapters: dict[str, ChapterPage], here: str) -> str:
    """The generated part of the landing page.

    ``shown`` maps each chapter stem to the run its page shows (None: smoke outputs or a placeholder).
    """
    out = ["<!-- Written by `effnb pages` from book/runs/; edits here are overwritten. -->", ""]
    if not runs:
        out += ["```{note}",
                "No runs yet: the chapter pages show the smoke-test outputs saved with each notebook. "
                "Run `make book` to measure the chapters on this machine.", "```", ""]
    shown_runs = [r for r in shown.values() if r is not None]
    mine = [r for r in runs if r.hardware_id == here]
    newest = max(mine or runs, key=lambda r: r.finished) if runs else None
    if newest is not None:
        by = f"the machine `{here}` ({machine_line(newest)})" if mine else f"`{here}`, which has no runs of its own"
        out += ["## Built on", "",
                f"This book was built on {by}. Its chapter pages show that machine's own runs; "
                f"the newest finished {when(max(r.finished for r in mine or runs))}."]
        others = sorted({r.hardware_id for r in runs} - {here})
        if others:
            listed = ", ".join(f"`{h}` ({count(sum(r.hardware_id == h for r in runs), 'run')})" for h in others)
            out.append(f"The claims ledger also holds the runs of {listed}.")
        out += ["Every machine's fingerprint and roofline are on the {doc}`generated/hardware` page, "
                "every run's time on the {doc}`generated/status` page.", ""]
    if shown_runs:
        claims = [c for r in shown_runs for c in r.claims]
        counts = verdict_counts(claims)
        papers = [c for c in claims if not is_target(c)]
        stats = [(str(len(shown)), "chapters"), (str(len(claims)), "claims checked"),
                 (f"{sum(c.get('verdict') == _claims.REPRODUCED for c in papers)} / {len(papers)}",
                  "papers' claims held")]
        targets = [c for c in claims if is_target(c)]
        if targets:
            stats.append((f"{sum(c.get('verdict') == _claims.REPRODUCED for c in targets)} / {len(targets)}",
                          "book's targets met"))
        stats += [(str(n), badge(v)) for v, n in counts.items() if n]
        out += ["## In numbers", "",
                '<div class="effnb-stats">' + "".join(
                    f'<div class="effnb-stat"><span class="effnb-stat-n">{n}</span>'
                    f'<span class="effnb-stat-label">{label}</span></div>' for n, label in stats) + "</div>", "",
                f"Counted over the {count(len(shown_runs), 'run')} the chapter pages show; "
                "the {doc}`generated/ledger` lists every claim of every run.", ""]
    if shown:
        out += ["## Chapters", "", ":::::{grid} 1 1 2 2", ":gutter: 3", ""]
        for stem in sorted(shown):
            ch = chapters.get(stem) or ChapterPage(stem, stem.split("_")[0], stem)
            out += _card(ch, shown[stem], here)
        out += [":::::", ""]
    return "\n".join(out)

