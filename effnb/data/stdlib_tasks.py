"""Real, offline text tasks built from the standard library: topic classification and retrieval.

Why: pruning an encoder or comparing retrievers needs labelled text that is real
and the same on every machine with the same Python. The docstrings of
:data:`~effnb.data.stdlib_text.STDLIB_MODULES` give both: a module's chapter of the
Library Reference is a topic label, and a docstring's first sentence is a query
whose answer is the rest of that docstring. Every split is by module, so no
module's wording leaks from train into test.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import linecache
import random
import re
import warnings

from .stdlib_text import documented_objects, first_paragraph, is_prose

SPLITS = ("train", "val", "test")

# Chapters of the Python Library Reference; chapters with fewer than 4 of our modules are merged into a neighbour.
_TOPIC_MODULES = {
    "text processing": "string re difflib textwrap unicodedata stringprep rlcompleter struct codecs encodings "
                       "gettext locale",
    "data types": "datetime calendar collections collections.abc heapq bisect array weakref types copy pprint "
                  "reprlib enum graphlib zoneinfo",
    "numeric, math and functional": "numbers math cmath decimal fractions random statistics colorsys itertools "
                                    "functools operator",
    "file and directory access": "pathlib os.path posixpath ntpath fileinput stat filecmp tempfile glob fnmatch "
                                 "linecache shutil",
    "data persistence": "pickle copyreg shelve dbm sqlite3 sqlite3.dbapi2",
    "compression, archiving and hashing": "zlib gzip bz2 lzma zipfile tarfile hashlib hmac secrets",
    "file formats": "csv configparser netrc plistlib wave",
    "generic OS services": "os io argparse optparse getopt logging logging.config logging.handlers getpass "
                           "platform ctypes cmd shlex",
    "concurrent execution": "threading multiprocessing multiprocessing.managers multiprocessing.pool "
                            "concurrent.futures concurrent.futures.thread subprocess sched queue contextvars",
    "networking and IPC": "asyncio asyncio.streams asyncio.subprocess socket ssl selectors mmap",
    "internet data handling": "email email.headerregistry email.message email.mime.multipart email.policy "
                              "email.utils json json.decoder json.encoder mailbox mimetypes base64 binascii quopri",
    "structured markup": "html xml.dom.minidom xml.dom.pulldom xml.etree.ElementTree xml.sax xml.sax.saxutils",
    "internet protocols": "urllib.parse urllib.request urllib.robotparser http.client http.cookiejar http.cookies "
                          "http.server ftplib poplib imaplib smtplib uuid socketserver xmlrpc.client xmlrpc.server "
                          "ipaddress wsgiref.handlers wsgiref.simple_server",
    "development tools": "typing pydoc doctest unittest unittest.mock",
    "debugging and profiling": "pdb timeit trace tracemalloc pstats",
    "runtime services": "sysconfig warnings dataclasses contextlib abc traceback inspect site",
    "language services": "ast symtable token keyword tokenize tabnanny pyclbr py_compile compileall dis pickletools "
                         "code codeop",
    "importing and packaging": "importlib importlib.metadata importlib.resources zipimport pkgutil modulefinder "
                               "runpy venv zipapp",
}
LIBRARY_TOPICS: dict[str, str] = {m: topic for topic, mods in _TOPIC_MODULES.items() for m in mods.split()}


@dataclasses.dataclass(frozen=True)
class DocRecord:
    """One documented object: its docstring cut the ways the tasks need, and its code without the docstring."""
    module: str
    qualname: str          # "" for the module itself
    kind: str              # "module", "class", "function" or "method"
    summary: str           # first sentence
    paragraph: str         # first paragraph
    body: str              # the docstring after the first sentence
    source: str            # inspect.getsource without the docstring, "" when unavailable

    @property
    def key(self) -> str:
        return f"{self.module}:{self.qualname}"


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _first_sentence(paragraph: str) -> str:
    """Up to the first . ! or ? followed by a capital or quote (so "e.g. foo" does not end a sentence)."""
    m = re.match(r"(.+?(?<!e\.g)(?<!i\.e)[.!?])(?=\s+[A-Z(\"'`]|$)", paragraph)
    return m.group(1) if m else paragraph


def _docstring_lines(node: ast.AST) -> tuple[int, int] | None:
    """First and last line of the node's docstring, None when it has none or it shares the header line."""
    body = getattr(node, "body", None)
    ds = body[0] if body else None
    if not (isinstance(ds, ast.Expr) and isinstance(ds.value, ast.Constant) and isinstance(ds.value.value, str)):
        return None
    if not isinstance(node, ast.Module) and ds.lineno == node.lineno:
        return None
    return ds.lineno, ds.end_lineno


@functools.lru_cache(maxsize=None)
def _spans(path: str) -> tuple[list[str], dict]:
    """The file's lines and, per definition, ``(first line, last line, docstring lines)`` keyed by
    qualname and by first line. Why: one parse per file; ``inspect.getsource`` re-parses the whole
    file for every class, which takes seconds over the standard library."""
    lines = linecache.getlines(path)
    tree = ast.parse("".join(lines))
    spans: dict = {"<module>": (1, len(lines), _docstring_lines(tree))}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                span = (first, child.end_lineno, _docstring_lines(child))
                spans.setdefault(prefix + child.name, span)
                spans.setdefault(first, span)
                walk(child, prefix + child.name + ("." if isinstance(child, ast.ClassDef) else ".<locals>."))
            else:
                walk(child, prefix)
    walk(tree, "")
    return lines, spans


def _source_without_docstring(obj: object) -> str:
    """What ``inspect.getsource`` gives, minus the docstring lines, so code never contains the answer text."""
    obj = inspect.unwrap(getattr(obj, "__func__", obj))
    try:
        lines, spans = _spans(inspect.getsourcefile(obj) or "")
    except (OSError, TypeError, SyntaxError, ValueError):
        return ""
    code = getattr(obj, "__code__", None)
    key = "<module>" if inspect.ismodule(obj) else code.co_firstlineno if code else getattr(obj, "__qualname__", "")
    if key not in spans:
        return ""
    first, last, ds = spans[key]
    keep = range(first, last + 1) if ds is None else [*range(first, ds[0]), *range(ds[1] + 1, last + 1)]
    return "".join(lines[i - 1] for i in keep)


def _home(obj: object) -> str | None:
    """The module that defines ``obj`` (None when it does not say)."""
    return getattr(obj, "__module__", None) or getattr(getattr(obj, "__objclass__", None), "__module__", None)


@functools.lru_cache(maxsize=1)
def docstring_records() -> tuple[DocRecord, ...]:
    """Every distinct docstring of the pinned modules, sorted by (module, qualname). A docstring shared by
    several names (re-exports, inheritance) is kept once, so it lands in one split: under the module that
    defines it when that module is walked, else under the first name in sorted order. Why the first rule:
    re-exports depend on what else was imported (``concurrent.futures`` loads its executors lazily).
    Objects defined outside the standard library (third-party monkeypatches) are skipped."""
    import sys
    walked = sorted(documented_objects(), key=lambda t: (_home(t[3]) != t[0], t[0], t[1]))
    records, seen = [], set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module, qualname, kind, obj in walked:
            doc = (inspect.getdoc(obj) or "").strip()
            home = _home(obj)
            if not doc or doc in seen or (home and home.split(".")[0] not in sys.stdlib_module_names):
                continue
            seen.add(doc)
            paragraph = first_paragraph(doc)
            summary = _first_sentence(paragraph)
            body = _collapse(_collapse(doc)[len(summary):])
            records.append(DocRecord(module, qualname, kind, summary, paragraph, body,
                                     _source_without_docstring(obj)))
    return tuple(sorted(records, key=lambda r: (r.module, r.qualname)))


def module_splits(seed: int = 0) -> dict[str, str]:
    """Module -> "train"/"val"/"test". Per topic, the modules with a prose first paragraph go about
    60/20/20, at least one per split; the rest go to train. Why: both tasks split by module with this one
    assignment, so no module crosses splits and every split of every topic has examples."""
    prose = {r.module for r in docstring_records() if is_prose(r.paragraph)}
    rng, out = random.Random(seed), {r.module: "train" for r in docstring_records()}
    for topic in sorted(_TOPIC_MODULES):
        mods = sorted(m for m, t in LIBRARY_TOPICS.items() if t == topic and m in prose)
        rng.shuffle(mods)
        n_eval = max(1, round(0.2 * len(mods)))
        for i, m in enumerate(mods):
            out[m] = "test" if i < n_eval else "val" if i < 2 * n_eval else "train"
    return out


def _describe(rows: dict[str, dict[str, int]]):
    import pandas as pd
    return pd.DataFrame.from_dict(rows, orient="index")


@dataclasses.dataclass
class ClassificationTask:
    """Docstring paragraph -> Library Reference topic; each split a list of ``(text, label_index)``."""
    labels: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    modules: dict[str, set[str]]        # split -> the modules its examples come from

    def counts(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in SPLITS}

    def describe(self):
        """Examples, modules and classes per split, as a pandas DataFrame."""
        return _describe({s: {"examples": len(getattr(self, s)), "modules": len(self.modules[s]),
                              "classes": len({y for _, y in getattr(self, s)})} for s in SPLITS})


def classification_task(seed: int = 0, max_chars: int = 400) -> ClassificationTask:
    """First paragraphs that read as prose, labelled with their module's topic, split by module."""
    labels = sorted(_TOPIC_MODULES)
    where = module_splits(seed)
    splits: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    modules: dict[str, set[str]] = {s: set() for s in SPLITS}
    seen: set[str] = set()
    for r in docstring_records():
        if r.paragraph in seen or not is_prose(r.paragraph, 40, max_chars):
            continue
        seen.add(r.paragraph)
        splits[where[r.module]].append((r.paragraph, labels.index(LIBRARY_TOPICS[r.module])))
        modules[where[r.module]].add(r.module)
    return ClassificationTask(labels, splits["train"], splits["val"], splits["test"], modules)


@dataclasses.dataclass
class RetrievalTask:
    """Queries, a corpus, and the one relevant document of each query (indices into ``docs``)."""
    queries: list[str]
    docs: list[str]
    doc_ids: list[str]
    relevant: list[set[int]]
    query_ids: list[str]
    distractors: int                   # the last ``distractors`` docs are pydoc passages, relevant to no query

    def describe(self):
        """Queries, documents, and how many documents are pydoc distractors, as a pandas DataFrame."""
        return _describe({"corpus": {"queries": len(self.queries), "docs": len(self.docs),
                                     "pydoc passages": self.distractors,
                                     "modules": len({q.split(":")[0] for q in self.query_ids})}})


def _truncate(text: str, max_chars: int) -> str:
    """At most ``max_chars`` characters, cut at a word boundary."""
    return text if len(text) <= max_chars else text[:max_chars + 1].rsplit(" ", 1)[0]


@functools.lru_cache(maxsize=1)
def pydoc_passages(max_chars: int = 800) -> tuple[tuple[str, str], ...]:
    """``(id, passage)``: the language reference's topics, consecutive paragraphs joined up to ``max_chars``.
    Why: distractors written in the same voice as the documents, so a retriever cannot win on style."""
    import pydoc_data.topics
    out = []
    for topic in sorted(pydoc_data.topics.topics):
        paras = [p for p in map(_collapse, pydoc_data.topics.topics[topic].split("\n\n")) if p]
        chunks: list[str] = []
        for p in paras:
            if chunks and len(chunks[-1]) + 1 + len(p) <= max_chars:
                chunks[-1] += " " + p
            else:
                chunks.append(p)
        out += [(f"pydoc:{topic}:{i}", _truncate(c, 1200)) for i, c in enumerate(chunks)]
    first: dict[str, str] = {}            # several topics repeat passages: keep the first
    for i, text in out:
        first.setdefault(text, i)
    return tuple((i, text) for text, i in first.items())


def retrieval_task(split: str = "test", seed: int = 0, max_queries: int | None = None) -> RetrievalTask:
    """Query = a docstring's first sentence, its document = the rest of that docstring; the corpus is the
    split's documents plus every pydoc passage. ``max_queries`` keeps a seeded subset of the queries but
    the whole corpus, so scores stay comparable across subset sizes."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    where, seen = module_splits(seed), set()
    pairs = []
    for r in docstring_records():
        doc = _truncate(r.body, 1200)
        if len(r.body) >= 80 and is_prose(r.summary, 20, 200) and not {r.summary, doc} & seen:
            seen |= {r.summary, doc}      # a repeated query or document would make the answer ambiguous
            if where[r.module] == split:
                pairs.append((r.key, r.summary, doc))
    passages = pydoc_passages()
    docs = [d for _, _, d in pairs] + [p for _, p in passages]
    doc_ids = [k for k, _, _ in pairs] + [i for i, _ in passages]
    keep = range(len(pairs))
    if max_queries is not None and max_queries < len(pairs):
        keep = sorted(random.Random(seed).sample(range(len(pairs)), max_queries))
    return RetrievalTask([pairs[i][1] for i in keep], docs, doc_ids, [{i} for i in keep],
                         [pairs[i][0] for i in keep], len(passages))
