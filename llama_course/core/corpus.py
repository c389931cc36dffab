"""The built-in corpus and text corpora: documents for the data pipeline (llama_course/core/data.py).

`builtin` is CPython's own documentation (help topics and standard-library docstrings): it ships with every
Python, so nothing is downloaded. A `.txt` file gives its paragraphs, a folder of `.txt` files one document
per file.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import warnings
from pathlib import Path

# ---- corpora --------------------------------------------------------------------------------------------
BUILTIN_MODULES = (
    "abc argparse ast base64 bisect calendar cmd codecs collections colorsys configparser contextlib copy "
    "csv dataclasses difflib doctest enum fnmatch fractions getopt gettext glob graphlib gzip heapq "
    "html html.parser http.cookies inspect ipaddress json logging mailbox numbers optparse pathlib pickle "
    "pprint queue quopri random re sched shlex statistics string struct tarfile textwrap threading timeit "
    "tokenize traceback types typing unittest.case unittest.mock urllib.parse uuid warnings wave weakref "
    "zipfile zipapp").split()
"""Standard-library modules whose docstrings join the built-in corpus. Chosen to be the same on every
machine with the same Python: no module that defines different functions per platform or per optional
dependency (os, shutil, subprocess, ssl users such as smtplib and http.client are left out)."""
MIN_DOCSTRING_CHARS = 200
"""Shorter docstrings ("Return self.") are left out: too short to be a document."""


def builtin_documents() -> list[str]:
    """The built-in corpus: CPython's help topics (sorted by name), then docstrings of `BUILTIN_MODULES`
    (module, then its public classes and functions by name, each class followed by its methods), each
    docstring headed by its dotted name. About 0.9 MB of English on Python 3.11; no download."""
    if _BUILTIN_CACHE:
        return list(_BUILTIN_CACHE)

    docs: list[str] = []
    try:
        from pydoc_data.topics import topics
        docs += [topics[k].strip() for k in sorted(topics) if topics[k].strip()]
    except ImportError:  # a trimmed Python without pydoc_data: docstrings alone
        pass

    def add(name: str, doc) -> None:
        if isinstance(doc, str) and len(doc) >= MIN_DOCSTRING_CHARS:
            docs.append(f"{name}\n\n{inspect.cleandoc(doc)}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for modname in BUILTIN_MODULES:
            try:
                module = importlib.import_module(modname)
            except ImportError:  # a Python built without zlib and the like: that module is left out
                continue
            add(modname, module.__doc__)
            for name, obj in sorted(vars(module).items()):
                if name.startswith("_") or getattr(obj, "__module__", None) != modname:
                    continue
                if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                    continue
                add(f"{modname}.{name}", obj.__doc__)
                if inspect.isclass(obj):
                    for attr, member in sorted(vars(obj).items()):
                        if attr.startswith("_") and attr != "__init__":
                            continue
                        member = getattr(member, "__func__", None) or getattr(member, "fget", None) or member
                        if inspect.isfunction(member):
                            add(f"{modname}.{name}.{attr}", member.__doc__)
    _BUILTIN_CACHE.extend(docs)
    return docs


_BUILTIN_CACHE: list[str] = []


def text_documents(path: str | os.PathLike) -> list[str]:
    """Documents of a text corpus: a folder's .txt files (one document each), or a file's paragraphs."""
    path = Path(path)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    if len(texts) == 1:
        texts = re.split(r"\n[ \t]*\n", texts[0])
    return [t.strip() for t in texts if t.strip()]
