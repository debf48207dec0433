"""Text to train and measure language models on, the same on every machine: a pinned, snapshotted corpus.

Why: a bits-per-character figure is only comparable when the text is the same.
The standard library is on every machine and offline, but its docstrings move
between Python patch releases, so the corpus is built once by
:func:`build_snapshot` (deterministic order, split by document) and the
compressed result is committed under ``effnb/lm/data/``; :func:`load_corpus`
reads that snapshot and checks the sha256 of its content, so what a chapter
measures never depends on the Python it runs on.

Two corpora, each a list of documents ``{"name", "split", "text"}``:

* ``english-v1``: one document per module (all the docstrings of the module,
  its public classes, functions, methods and properties, each docstring kept
  once) plus one per ``pydoc_data.topics`` entry (the language reference).
* ``code-v1``: the source of a pinned list of standard-library files.

Documents, never sentences, are split between train/val/test (about 80/10/10
of the characters), so no module leaks text from train into test.
"""
from __future__ import annotations

import functools
import hashlib
import json
import lzma
from pathlib import Path

from ..data.stdlib_text import STDLIB_MODULES

VERSION = 1
CORPORA = ("english-v1", "code-v1")
SPLITS = ("train", "val", "test")
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
SNAPSHOT = Path(__file__).resolve().parent / "data" / "corpus-v1.json.xz"
# sha256 of the snapshot's decompressed JSON (the content, not the compressor's bytes)
SNAPSHOT_SHA256 = "62b484eba98e91a3f5b47c9ab8eb04640c9e13ea8159fa352ec6efd7ac52f9d5"
LONG_CHARS = 16_000          # a "long document" is at least this many characters

# Modules beyond effnb.data's list whose docstrings are long English prose (pinned, in this order).
EXTRA_MODULES = ("builtins", "sys", "time", "gc", "signal", "fcntl", "marshal", "bdb", "cgi", "curses", "aifc",
                 "sunau", "nntplib", "telnetlib", "asynchat", "smtpd", "pipes", "pty", "imp",
                 "concurrent.futures.process", "email.charset", "email.generator", "email.header",
                 "email.parser", "email.quoprimime", "importlib.abc", "importlib.machinery", "importlib.util",
                 "multiprocessing.dummy", "wsgiref.validate", "xml.sax.handler")

# code-v1: standard-library sources, relative to the stdlib folder (Python 3.11 layout).
CODE_FILES = ("typing.py", "argparse.py", "dataclasses.py", "functools.py", "collections/__init__.py",
              "textwrap.py", "heapq.py", "bisect.py", "enum.py", "pathlib.py", "json/decoder.py",
              "json/encoder.py", "csv.py", "difflib.py", "fractions.py", "statistics.py", "string.py", "shlex.py",
              "fnmatch.py", "glob.py", "copy.py", "pprint.py", "random.py", "inspect.py", "ast.py", "tokenize.py",
              "configparser.py", "calendar.py", "contextlib.py", "abc.py", "ipaddress.py", "graphlib.py",
              "queue.py", "sched.py", "threading.py", "tempfile.py", "shutil.py", "zipfile.py")


# ---------------------------------------------------------------- building (from this Python)

def _documented(mod) -> list:
    """The module, its public classes and functions, and their public methods, __init__ and properties."""
    import inspect
    objs = [mod]
    for attr in sorted(vars(mod)):
        obj = getattr(mod, attr, None)
        if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        objs.append(obj)
        if inspect.isclass(obj):
            objs += [v for k, v in sorted(vars(obj).items())
                     if (not k.startswith("_") or k == "__init__")
                     and (inspect.isfunction(v) or inspect.ismethoddescriptor(v) or isinstance(v, property))]
    return objs


def _english_documents() -> list[dict]:
    """One document per module (its docstrings, each kept the first time it is seen) and per pydoc topic."""
    import importlib
    import inspect
    import warnings
    import pydoc_data.topics
    seen: set[str] = set()
    docs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # deprecated modules (cgi, imp, ...) still have good prose
        for name in STDLIB_MODULES + EXTRA_MODULES:
            try:
                mod = importlib.import_module(name)
            except ImportError:                  # a rebuild on another platform: recorded in the snapshot
                continue
            parts = []
            for obj in _documented(mod):
                doc = (inspect.getdoc(obj) or "").strip()
                if len(doc) >= 40 and doc not in seen:
                    seen.add(doc)
                    parts.append(doc)
            if parts:
                docs.append({"name": f"module:{name}", "text": "\n\n".join(parts)})
    for key in sorted(pydoc_data.topics.topics):
        docs.append({"name": f"topic:{key}", "text": pydoc_data.topics.topics[key].strip()})
    return docs


def _code_documents() -> list[dict]:
    import sysconfig
    root = Path(sysconfig.get_paths()["stdlib"])
    return [{"name": f"file:{rel}", "text": (root / rel).read_text(encoding="utf-8")}
            for rel in CODE_FILES if (root / rel).is_file()]


def _is_long(doc: dict, min_chars: int = LONG_CHARS) -> bool:
    """A whole long text (a pydoc topic or a source file), not a module's many docstrings joined."""
    return doc["name"].startswith(("topic:", "file:")) and len(doc["text"]) >= min_chars


def _split(corpus: str, docs: list[dict]) -> list[dict]:
    """Give each document a split: the long documents (:func:`long_documents`) first, then largest first
    (ties by the sha256 of the name), each into the split least filled relative to its share of all the
    characters; so long documents reach every split and the shares land close to 80/10/10."""
    order = sorted(docs, key=lambda d: (not _is_long(d), -len(d["text"]),
                                        hashlib.sha256(f"{corpus}/{d['name']}".encode()).hexdigest()))
    total = sum(len(d["text"]) for d in docs)
    chars = dict.fromkeys(SPLITS, 0)
    for d in order:
        d["split"] = min(SPLITS, key=lambda s: chars[s] / (FRACTIONS[s] * total))
        chars[d["split"]] += len(d["text"])
    return docs


def build_documents() -> dict:
    """Both corpora from this Python's standard library, split; what :func:`build_snapshot` writes."""
    import platform
    return {"version": VERSION, "python": platform.python_version(),
            "corpora": {"english-v1": _split("english-v1", _english_documents()),
                        "code-v1": _split("code-v1", _code_documents())}}


def _canonical(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _write_snapshot(path: Path | str) -> str:
    from .. import files
    raw = _canonical(build_documents())
    files.atomic_write(path, lzma.compress(raw, preset=9))
    Path(path).chmod(0o644)
    return hashlib.sha256(raw).hexdigest()


def build_snapshot(path: Path | str = SNAPSHOT) -> str:
    """Build both corpora and write them xz-compressed to ``path``; return the content's sha256 (paste it
    into :data:`SNAPSHOT_SHA256` when the snapshot is deliberately renewed).

    The build runs in a fresh interpreter (``python -E -s -m effnb.lm.corpus --build``): a process that
    has patched the standard library (pytest replaces ``threading.excepthook``, for one) would otherwise
    write different docstrings."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-E", "-s", "-m", "effnb.lm.corpus", "--build", "--out", str(path)],
                         cwd=root, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"building the corpus failed:\n{out.stderr[-2000:]}")
    return out.stdout.split()[-1]


# ---------------------------------------------------------------- reading (the committed snapshot)

@functools.lru_cache(maxsize=2)
def _snapshot(path: str = str(SNAPSHOT), sha256: str | None = None) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"corpus snapshot {p} is missing; it is committed with the repository "
                                f"(rebuild it with `python -m effnb.lm.corpus --build`)")
    raw = lzma.decompress(p.read_bytes())
    got = hashlib.sha256(raw).hexdigest()
    want = SNAPSHOT_SHA256 if sha256 is None else sha256
    if got != want:
        raise ValueError(f"corpus snapshot {p} has sha256 {got}, expected {want}: the file was changed or "
                         f"cut off; restore it from git (`git checkout -- {p.name}` in {p.parent})")
    return json.loads(raw)


def documents(name: str, split: str | None = None) -> list[dict]:
    """The documents ``{"name", "split", "text"}`` of corpus ``name`` (one split, or all), in snapshot order."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; have {', '.join(CORPORA)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; pass one of {', '.join(SPLITS)} (or None for all)")
    docs = _snapshot()["corpora"][name]
    return [d for d in docs if split is None or d["split"] == split]


def load_corpus(name: str, split: str = "train") -> str:
    """The text of one split of a corpus: its documents in snapshot order, separated by a blank line."""
    return "\n\n".join(d["text"] for d in documents(name, split))


def long_documents(min_chars: int = LONG_CHARS) -> list[dict]:
    """Documents of at least ``min_chars`` characters for long-context work: the long pydoc topics and
    ``typing.py``; each keeps its split, so a model trained on ``train`` is measured on the others."""
    return ([d for d in documents("english-v1") if _is_long(d, min_chars)]
            + [d for d in documents("code-v1") if d["name"] == "file:typing.py"])


def sizes() -> dict:
    """Characters and documents per corpus and split (for the book's data table)."""
    out = {}
    for name in CORPORA:
        for split in SPLITS:
            docs = documents(name, split)
            out[(name, split)] = {"documents": len(docs), "chars": len(load_corpus(name, split))}
    return out


def xz_bits_per_char(text: str, preset: int = 9) -> float:
    """What ``xz -9`` needs per character of ``text`` (UTF-8 encoded): the baseline a model must beat."""
    if not text:
        raise ValueError("xz_bits_per_char needs a non-empty text")
    return 8.0 * len(lzma.compress(text.encode("utf-8"), preset=preset)) / len(text)


def xz_baseline(name: str = "english-v1") -> dict:
    """xz -9 bits/char of each split and of the whole corpus (the splits joined)."""
    out = {split: xz_bits_per_char(load_corpus(name, split)) for split in SPLITS}
    out["all"] = xz_bits_per_char("\n\n".join(load_corpus(name, s) for s in SPLITS))
    return out


def _main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m effnb.lm.corpus",
                                 description="Show the committed corpus snapshot (sizes, xz -9 baseline), "
                                             "or rebuild it from this Python with --build.")
    ap.add_argument("--build", action="store_true", help="rewrite the snapshot and print its sha256")
    ap.add_argument("--out", default=str(SNAPSHOT), help=f"where --build writes (default: {SNAPSHOT})")
    args = ap.parse_args(argv)
    if args.build:
        print("sha256", _write_snapshot(args.out))
        return
    for (name, split), s in sizes().items():
        print(f"{name:11s} {split:5s} {s['documents']:4d} documents {s['chars']:9,d} chars")
    print("xz -9 bits/char of english-v1:", {k: round(v, 3) for k, v in xz_baseline().items()})


if __name__ == "__main__":
    _main()
