"""Real English sentences that every machine has: first paragraphs of standard-library docstrings.

Why: a quality measurement needs text that is real (not random tokens), the
same on every machine with the same Python, and available offline. The public
docstrings of a pinned list of modules are all three.
"""
from __future__ import annotations

import functools
import re

STDLIB_MODULES = ("abc", "argparse", "array", "ast", "asyncio", "asyncio.streams", "asyncio.subprocess", "base64",
                  "binascii", "bisect", "bz2", "calendar", "cmath", "cmd", "code", "codecs", "codeop", "collections",
                  "collections.abc", "colorsys", "compileall", "concurrent.futures", "concurrent.futures.thread",
                  "configparser", "contextlib", "contextvars", "copy", "copyreg", "csv", "ctypes", "dataclasses",
                  "datetime", "dbm", "decimal", "difflib", "dis", "doctest", "email", "email.headerregistry",
                  "email.message", "email.mime.multipart", "email.policy", "email.utils", "encodings", "enum",
                  "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "getpass",
                  "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
                  "http.cookiejar", "http.cookies", "http.server", "imaplib", "importlib", "importlib.metadata",
                  "importlib.resources", "inspect", "io", "ipaddress", "itertools", "json", "json.decoder",
                  "json.encoder", "keyword", "linecache", "locale", "logging", "logging.config", "logging.handlers",
                  "lzma", "mailbox", "math", "mimetypes", "mmap", "modulefinder", "multiprocessing",
                  "multiprocessing.managers", "multiprocessing.pool", "netrc", "ntpath", "numbers", "operator",
                  "optparse", "os", "os.path", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform",
                  "plistlib", "poplib", "posixpath", "pprint", "pstats", "py_compile", "pyclbr", "pydoc", "queue",
                  "quopri", "random", "re", "reprlib", "rlcompleter", "runpy", "sched", "secrets", "selectors",
                  "shelve", "shlex", "shutil", "site", "smtplib", "socket", "socketserver", "sqlite3",
                  "sqlite3.dbapi2", "ssl", "stat", "statistics", "string", "stringprep", "struct", "subprocess",
                  "symtable", "sysconfig", "tabnanny", "tarfile", "tempfile", "textwrap", "threading", "timeit",
                  "token", "tokenize", "trace", "traceback", "tracemalloc", "types", "typing", "unicodedata",
                  "unittest", "unittest.mock", "urllib.parse", "urllib.request", "urllib.robotparser", "uuid", "venv",
                  "warnings", "wave", "weakref", "wsgiref.handlers", "wsgiref.simple_server", "xml.dom.minidom",
                  "xml.dom.pulldom", "xml.etree.ElementTree", "xml.sax", "xml.sax.saxutils", "xmlrpc.client",
                  "xmlrpc.server", "zipapp", "zipfile", "zipimport", "zlib", "zoneinfo")


@functools.lru_cache(maxsize=1)
def documented_objects() -> tuple[tuple[str, str, str, object], ...]:
    """``(module, qualname, kind, object)`` for each importable module of :data:`STDLIB_MODULES`, its
    public functions and classes, and their public methods. Why: every text task here reads the same
    walk, so they agree on what "the standard library's docstrings" are. Warnings are silenced."""
    import importlib
    import inspect
    import warnings

    found: list[tuple[str, str, str, object]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in STDLIB_MODULES:
            try:
                mod = importlib.import_module(name)
            except ImportError:
                continue
            found.append((name, "", "module", mod))
            for attr in sorted(vars(mod)):
                if attr.startswith("_"):
                    continue
                obj = getattr(mod, attr, None)
                if inspect.isfunction(obj) or inspect.isbuiltin(obj):
                    found.append((name, attr, "function", obj))
                elif inspect.isclass(obj):
                    found.append((name, attr, "class", obj))
                    found += [(name, f"{attr}.{k}", "method", v) for k, v in sorted(vars(obj).items())
                              if not k.startswith("_") and (inspect.isfunction(v) or inspect.ismethoddescriptor(v))]
    return tuple(found)


def first_paragraph(doc: str) -> str:
    """The docstring's first paragraph on one line (whitespace collapsed)."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def is_prose(text: str, min_chars: int = 40, max_chars: int = 400) -> bool:
    """Long enough, short enough, and with two lowercase words in a row: a sentence, not a signature."""
    return min_chars <= len(text) <= max_chars and re.search(r"[a-z]{3,} [a-z]{3,}", text) is not None


def stdlib_docstrings(n: int, seed: int = 0, min_chars: int = 40, max_chars: int = 400) -> list[str]:
    """``n`` real English sentences: first paragraphs of public docstrings from a pinned list of
    Python standard-library modules (the same on every machine with the same Python), shuffled
    with ``seed`` so that every module is represented."""
    import inspect
    import random

    found = {para: None for *_, obj in documented_objects()
             if is_prose(para := first_paragraph(inspect.getdoc(obj) or ""), min_chars, max_chars)}
    texts = sorted(found)
    random.Random(seed).shuffle(texts)
    if len(texts) < n:
        raise ValueError(f"only {len(texts)} distinct stdlib docstrings found here; pass n <= {len(texts)}")
    return texts[:n]
