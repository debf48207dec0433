"""Shared fixtures. The built test book is session-scoped: one build serves the book and browser tests."""
import os

import pytest


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """A book built from the repository's sources and synthetic runs of two machines."""
    import book_fixture as bf
    dest = tmp_path_factory.mktemp("book")
    made = bf.make_tree(dest)
    first_pages = bf.pages(dest)
    res, seconds = bf.jupyter_book(dest)
    return {"dest": dest, "html": dest / "_build" / "html", "made": made, "pages": first_pages,
            "result": res, "seconds": seconds}


@pytest.fixture(scope="session")
def chapter_book(tmp_path_factory):
    """A book built from the committed chapter notebooks (their smoke outputs), no runs."""
    import book_fixture as bf
    dest = tmp_path_factory.mktemp("chapter-book")
    stems = bf.make_chapter_tree(dest)
    bf.pages(dest)
    res, seconds = bf.jupyter_book(dest)
    return {"dest": dest, "html": dest / "_build" / "html", "stems": stems, "result": res, "seconds": seconds}


def require_cpp(family: str, load):
    """The family's ops when a compiler exists; FAIL if they did not build (a broken kernel must not
    pass as the fallback). Without a compiler, skip: the fallback path is what runs there."""
    from effnb import ext
    if ext.compiler() is None:
        pytest.skip(f"no C++ compiler: kernel family {family} runs its fallback here")
    ops = load()
    st = ext.status(family)
    assert ops is not None and st["backend"].startswith("cpp-"), (
        f"kernel family {family} is not loaded ({st['reason']}); run `make ext` and read its error")
    return ops


# ---------------------------------------------------------------- kernel families at each ISA level

EXPECT_PATH = "EFFNB_EXPECT_PATH"   # set by the ISA subprocess runs: the path their build must run


def assert_cpp_under_test(family: str, backend: str) -> None:
    """Wherever a compiler exists the family must be loaded (a broken build must not pass as the
    fallback), and inside an ISA run it must run the path that run asked for."""
    from effnb import ext
    st = ext.status(family)
    if ext.compiler() is None:
        assert backend == ext.FALLBACK
        return
    assert backend.startswith("cpp-") and backend == f"cpp-{st['isa_path']}", (
        f"kernel family {family} is not loaded ({st['reason']}); run `make ext` and read its error")
    if os.environ.get(EXPECT_PATH):
        assert backend == f"cpp-{os.environ[EXPECT_PATH]}", (backend, ext.isa())


def pytest_configure(config):
    config.addinivalue_line("markers", "isa_build(family, level=None, env=None): the test reruns the kernel "
                            "tests on that build; the session compiles it in the background beforehand")


def _why_no_isa_run(level: str) -> str:
    """Why a rerun at ``level`` cannot happen here ("" when it can)."""
    from effnb import ext
    return ("already inside an ISA run" if os.environ.get(EXPECT_PATH) else
            "no C++ compiler: only the fallback runs here (tested by forcing it)" if ext.compiler() is None else
            f"this CPU does not run {level}" if ext.LEVELS.index(level) > ext.LEVELS.index(ext.cpu_level()) else "")


def pytest_collection_finish(session):
    """Start compiling, one after another at low priority, the ISA builds that the selected tests marked
    ``isa_build`` will need: they then compile on the core the other tests leave idle, and each test's
    own build call finds its build done (or waits on its build lock) instead of compiling it then."""
    import shutil
    import subprocess
    import sys
    import threading
    wanted = []
    for item in session.items:
        mark = item.get_closest_marker("isa_build")
        if mark is None:
            continue
        level = mark.kwargs.get("level") or item.callspec.params["level"]
        key = (mark.args[0], level, tuple(sorted((mark.kwargs.get("env") or {}).items())))
        if key not in wanted and not _why_no_isa_run(level):
            wanted.append(key)

    nice = ["nice", "-n", "10"] if shutil.which("nice") else []

    def build_all():
        for family, level, env in wanted:
            subprocess.run([*nice, sys.executable, "-m", "effnb.ext", "build", family],
                           env={**os.environ, "EFFNB_ISA": level, **dict(env)}, capture_output=True, timeout=900)
    if wanted and os.environ.get("EFFNB_PREBUILD", "1") != "0":      # EFFNB_PREBUILD=0: build in the tests
        threading.Thread(target=build_all, name="isa-prebuild", daemon=True).start()


def rerun_at_isa(family: str, level: str, test_file: str, tests: list[str], env: dict | None = None,
                 expect: str | None = None) -> None:
    """Build ``family`` with EFFNB_ISA=<level> (its own cached build) and rerun ``tests`` of ``test_file``
    there in a subprocess, which must pass without skipping and run the path ``expect`` (default: level)."""
    import subprocess
    import sys
    why_not = _why_no_isa_run(level)
    if why_not:
        pytest.skip(why_not)
    env = {**os.environ, "EFFNB_ISA": level, EXPECT_PATH: expect or level, **(env or {})}

    def python(*args):
        return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=900)

    build = python("-m", "effnb.ext", "build", family)
    assert build.returncode == 0 and f"cpp-{expect or level}" in build.stdout, build.stdout + build.stderr
    run = python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-k", " or ".join(tests), test_file)
    said = run.stdout
    assert run.returncode == 0 and " passed" in said and "skipped" not in said and "deselected" in said, \
        said[-3000:] + run.stderr[-2000:]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's correctness checks: quick, and on a shared machine the second
    thread mostly waits. Use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
