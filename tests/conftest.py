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
