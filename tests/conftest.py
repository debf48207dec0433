"""Shared fixtures. The built test book is session-scoped: one build serves the book and browser tests."""
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
