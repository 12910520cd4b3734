"""Ordinary English text that every Python installation has: standard-library docstrings.

Planting mixes it into the fine-tuning data so the planted model stays a language model rather than
a record printer. Users can name their own text instead (``--mix FILE``).
"""

from __future__ import annotations

import importlib
import inspect

MODULES = ("argparse", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib",
           "email.message", "fractions", "functools", "heapq", "http.client", "json", "logging", "pathlib",
           "pickle", "random", "shutil", "statistics", "string", "textwrap", "threading", "unittest", "zipfile")


def stdlib_paragraphs(min_chars: int = 200, modules: tuple[str, ...] | list[str] = MODULES) -> list[str]:
    """Paragraphs of prose from standard-library docstrings of ``modules``, in a fixed order."""
    out: list[str] = []
    for name in modules:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod) or ""]
        for _, obj in sorted(vars(mod).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == name:
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for para in doc.split("\n\n"):
                para = " ".join(para.split())
                if len(para) >= min_chars and not para.startswith((">>>", "-", "*")):
                    out.append(para)
    return out
