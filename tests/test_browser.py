"""Open every page of the built test book in headless Chromium, with the network cut off.

Checks what a reader would notice: console errors (a failed script, a fetch
that needs the internet), images that do not load, and the claims ledger
listing every claim.
"""
import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

import book_fixture as bf

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "",
                             shutil.which("google-chrome") or "") if p and Path(p).exists()), None)
DRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "") if p and Path(p).exists()), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER),
                       reason="Chromium not found: apt-get install chromium chromium-driver (CI's .ci/run does this)"),
]


def _serve(html):
    """Serve ``html`` on 127.0.0.1 (as a reader's local web server would); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(built_book):
    yield from _serve(built_book["html"])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", "--window-size=1280,900",
                # Every host but the local server fails to resolve: a page that needs the internet errors out.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _pages(html: Path) -> list[str]:
    pages = sorted(p.relative_to(html).as_posix() for p in (html / "book").rglob("*.html"))
    return ["index.html", *pages, "search.html", "genindex.html"]


def _open(browser, url: str) -> list[dict]:
    """Load a page, wait until it is complete, return the SEVERE console entries it produced."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("browser")  # drop what earlier pages left
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    return [e for e in browser.get_log("browser")
            if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]  # no favicon is not an error


def test_every_page_loads_without_console_errors_or_broken_images(built_book, server, browser):
    problems = {}
    for page in _pages(built_book["html"]):
        severe = _open(browser, f"{server}/{page}")
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.currentSrc || i.src);")
        if severe or broken:
            problems[page] = {"console": [e["message"] for e in severe], "broken images": broken}
    assert not problems, problems


def test_pages_with_figures_show_them(built_book, server, browser):
    _open(browser, f"{server}/book/generated/hardware.html")
    sizes = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth);")
    assert len(sizes) == 2 and all(w > 100 for w in sizes), sizes  # one roofline per machine
    _open(browser, f"{server}/book/chapters/{bf.STEM}.html")
    assert browser.execute_script("return Array.from(document.images).filter(i => i.naturalWidth > 0).length;") >= 1


def test_ledger_lists_every_claim(built_book, server, browser):
    from selenium.webdriver.common.by import By

    _open(browser, f"{server}/book/generated/ledger.html")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.effnb-claim")
    assert len(rows) == len(built_book["made"]["claims"])
    shown = {(r.get_attribute("data-verdict")) for r in rows}
    assert shown == {"reproduced", "not reproduced", "not testable at this scale"}
    assert all(r.is_displayed() for r in rows)


# --- the results pages as a reader sees them, on a desktop and on a phone --------------------------------------

WIDTHS = (1400, 390)
RESULTS_PAGES = ("book/intro.html", "book/generated/ledger.html", "book/generated/status.html",
                 "book/generated/hardware.html")

_LAYOUT_JS = """
const art = document.querySelector('.bd-article') || document.body;
const right = art.getBoundingClientRect().right + 1;
const side = document.querySelector('.bd-sidebar-secondary');
const sideBox = side && side.offsetParent !== null && getComputedStyle(side).display !== 'none'
  ? side.getBoundingClientRect() : null;
const out = {page: document.documentElement.scrollWidth, window: document.documentElement.clientWidth,
             tables: [], covered: [], images: []};
for (const t of art.querySelectorAll('table')) {
  let box = t, scroller = null;
  for (let e = t.parentElement; e && e !== art; e = e.parentElement) {
    if (['auto', 'scroll'].includes(getComputedStyle(e).overflowX)) { scroller = e; break; }
  }
  const shown = (scroller || t).getBoundingClientRect();
  const name = t.className + ' ' + ((t.querySelector('tr[id]') || {}).id || '');
  if (shown.right > right) out.tables.push(name + ': ' + Math.round(shown.right) + ' > ' + Math.round(right));
  if (sideBox && shown.right > sideBox.left && shown.left < sideBox.right &&
      shown.bottom > sideBox.top && shown.top < sideBox.bottom) out.covered.push(name);
}
for (const i of document.images) if (!(i.complete && i.naturalWidth > 0)) out.images.push(i.currentSrc || i.src);
return out;
"""

# The badge's text colour and the colour behind it (its own background, else the nearest painted ancestor's).
_BADGES_JS = """
document.documentElement.dataset.theme = arguments[0];
function bg(e) {
  for (; e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor;
    if (c && c !== 'transparent' && !/rgba\\(.*,\\s*0\\)$/.test(c)) return c;
  }
  return getComputedStyle(document.body).backgroundColor;
}
return Array.from(document.querySelectorAll('.effnb-verdict')).map(
  b => [b.textContent, getComputedStyle(b).color, bg(b)]);
"""

# What a reader must not meet on a page: an image without a caption or alt text, a table or a text output
# over 40 rows that is not folded away. Applied to the generated pages and to every chapter page.
_READER_JS = """
const art = document.querySelector('.bd-article') || document.body;
const out = [];
const folded = e => { const d = e.closest('details'); return d && !d.open; };
for (const i of art.querySelectorAll('img')) {
  const fig = i.closest('figure');
  const cap = fig && fig.querySelector('figcaption');
  if (!cap || !cap.textContent.trim()) out.push('image without a caption: ' + i.getAttribute('src'));
  const alt = (i.getAttribute('alt') || '').trim();
  if (!alt || alt === i.getAttribute('src') || /\\.(png|svg|jpe?g)$/i.test(alt)) out.push('no alt text: ' + i.getAttribute('src'));
}
for (const t of art.querySelectorAll('table')) {
  const rows = t.querySelectorAll('tbody tr').length;
  if (rows > 40 && !folded(t)) out.push('unfolded table of ' + rows + ' rows');
}
for (const p of art.querySelectorAll('.cell_output pre, .output pre')) {
  const lines = p.textContent.split('\\n').length;
  if (lines > 40 && !folded(p)) out.push('unfolded output of ' + lines + ' lines');
}
return out;
"""


def _rgb(css: str) -> tuple[float, ...]:
    import re
    return tuple(float(v) for v in re.findall(r"[\d.]+", css)[:3])


def contrast(fg: str, bg: str) -> float:
    """WCAG 2 contrast ratio of two CSS rgb() colours."""
    def lum(rgb):
        c = [v / 255 for v in rgb]
        c = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    a, b = sorted((lum(_rgb(fg)), lum(_rgb(bg))), reverse=True)
    return (a + 0.05) / (b + 0.05)


def reader_problems(browser) -> list[str]:
    """Captions, alt text and unfolded long outputs of the page open in ``browser`` (see _READER_JS)."""
    return browser.execute_script(_READER_JS)


@pytest.fixture
def sized(browser):
    """The browser, given back at its usual size."""
    yield browser
    browser.set_window_size(1280, 900)


@pytest.mark.parametrize("width", WIDTHS)
def test_results_pages_fit_the_window(built_book, server, sized, width):
    sized.set_window_size(width, 900)
    problems = {}
    for page in RESULTS_PAGES:
        _open(sized, f"{server}/{page}")
        got = sized.execute_script(_LAYOUT_JS)
        if got["window"] > width:
            pytest.fail(f"the window is {got['window']} px wide, not {width}: headless Chromium ignored the size")
        bad = {k: got[k] for k in ("tables", "covered", "images") if got[k]}
        if got["page"] > got["window"]:
            bad["page"] = f"{got['page']} px wide in a {got['window']} px window"
        if bad:
            problems[page] = bad
    assert not problems, problems


def test_verdict_badges_are_readable_in_light_and_dark_mode(built_book, server, browser):
    low = []
    for page in ("book/intro.html", "book/generated/ledger.html"):
        _open(browser, f"{server}/{page}")
        for theme in ("light", "dark"):
            badges = browser.execute_script(_BADGES_JS, theme)
            assert badges, f"{page} shows no verdict badge"
            low += [(page, theme, text, round(contrast(fg, bg), 2)) for text, fg, bg in badges
                    if contrast(fg, bg) < 4.5]
    assert not low, f"badge text below the WCAG AA contrast of 4.5:1: {sorted(set(low))}"


def test_results_pages_caption_their_figures_and_fold_long_outputs(built_book, server, browser):
    problems = {}
    for page in RESULTS_PAGES:
        _open(browser, f"{server}/{page}")
        found = reader_problems(browser)
        if found:
            problems[page] = found
    assert not problems, problems


def test_ledger_headings_lead_to_each_chapters_claims_section(built_book, server, browser):
    from selenium.webdriver.common.by import By

    _open(browser, f"{server}/book/generated/ledger.html")
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "h2 > a.reference")]
    assert links and all("#" in h for h in links), links
    for href in links:
        _open(browser, href)
        anchor = href.split("#", 1)[1]
        assert browser.execute_script("return !!document.getElementById(arguments[0])", anchor), href


def test_display_math_is_centred(built_book, server, browser):
    _open(browser, f"{server}/book/chapters/{bf.STEM}.html")
    box = browser.execute_script("""
      const m = document.querySelector('div.math math'), p = document.querySelector('div.math');
      const r = m.getBoundingClientRect(), q = p.getBoundingClientRect();
      const kids = Array.from(m.children).map(c => c.getBoundingClientRect());
      const left = Math.min(...kids.map(k => k.left)), right = Math.max(...kids.map(k => k.right));
      return [left - q.left, q.right - right];""")
    gap_left, gap_right = box
    assert gap_left > 100 and gap_right > 100, f"display math is not centred: {box}"


@pytest.fixture(scope="module")
def chapter_server(chapter_book):
    yield from _serve(chapter_book["html"])


def test_the_committed_chapters_build_without_warnings(chapter_book):
    res = chapter_book["result"]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.parametrize("width", WIDTHS)
def test_chapter_pages_fit_caption_and_fold(chapter_book, chapter_server, sized, width):
    """Every chapter page at a desktop and a phone width: no page or unboxed table wider than the window,
    every figure captioned with alt text, no unfolded table or output over 40 rows."""
    sized.set_window_size(width, 900)
    problems = {}
    for stem in chapter_book["stems"]:
        assert not _open(sized, f"{chapter_server}/book/chapters/{stem}.html"), f"console errors on {stem}"
        got = sized.execute_script(_LAYOUT_JS)
        bad = {k: got[k] for k in ("tables", "images") if got[k]}
        if got["page"] > got["window"]:
            bad["page"] = f"{got['page']} px wide in a {got['window']} px window"
        found = reader_problems(sized)
        if found:
            bad["reader"] = found
        if bad:
            problems[stem] = bad
    assert not problems, problems
