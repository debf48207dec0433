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


@pytest.fixture(scope="module")
def server(built_book):
    """Serve the built HTML on 127.0.0.1 (as a reader's local web server would)."""
    handler = functools.partial(_QuietHandler, directory=str(built_book["html"]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


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
