"""Utility tasks that need no download: built from what every Python installation carries.

The paper's utility suite reads its data from a folder the user provides (laid out as docs/data.md says, in
this project); a fresh machine has none, yet the demo must still show whether unlearning broke the
model. Two small tasks stand in, both registered in :mod:`unmemorize.utility.tasks` and written by
:func:`write_lab_tasks` into a folder with the suite's layout:

* ``lab_series`` (classification, 4 choices): continue a weekday, month or arithmetic series
  ("Monday, Tuesday, Wednesday," → " Thursday"). Items come from :mod:`calendar` and a seeded
  generator; a 135M model knows these far above chance, so a drop after unlearning is a real loss.
* ``lab_docs`` (perplexity): token-mean loss on standard-library docstrings of modules that the
  planting mix (:mod:`unmemorize.lab.ordinary`) never uses, i.e. ordinary English prose the planted
  model was not fine-tuned on.
"""

from __future__ import annotations

import calendar
import csv
import json
import random
from pathlib import Path

from unmemorize.lab.ordinary import MODULES, stdlib_paragraphs

# held out from planting: none of these is in lab.ordinary.MODULES
HELD_OUT_MODULES = ("abc", "asyncio.locks", "base64", "bisect", "calendar", "copy", "enum", "fnmatch",
                    "glob", "gzip", "hashlib", "inspect", "ipaddress", "itertools", "operator", "os", "pprint",
                    "queue", "sched", "secrets", "socket", "sqlite3", "tempfile", "tokenize", "uuid", "weakref")
SERIES_FILE = "lab/series.jsonl"
DOCS_FILE = "lab/docs.csv"


def series_items(seed: int = 0, arithmetic: int = 21) -> list[dict]:
    """Weekday and month series from every start (7 + 12), plus seeded arithmetic progressions."""
    rng = random.Random(seed)
    items = []
    for names in (list(calendar.day_name), list(calendar.month_name)[1:]):
        n = len(names)
        for start in range(n):
            shown = [names[(start + i) % n] for i in range(3)]
            gold = names[(start + 3) % n]
            wrong = rng.sample([x for x in names if x != gold and x not in shown], 3)
            items.append(_item(", ".join(shown) + ",", gold, wrong, rng))
    for _ in range(arithmetic):
        a, d = rng.randint(1, 30), rng.randint(2, 9)
        shown = [a + i * d for i in range(4)]
        gold = a + 4 * d
        near = sorted({gold + k for k in (-2 * d, -d + 1, -1, 1, d + 1, d, 2 * d)} - {gold})
        wrong = rng.sample([w for w in near if w > 0], 3)
        items.append(_item(", ".join(map(str, shown)) + ",", str(gold), [str(w) for w in wrong], rng))
    return items


def _item(context: str, gold: str, wrong: list[str], rng: random.Random) -> dict:
    choices = [gold, *wrong]
    rng.shuffle(choices)
    return {"context": context, "choices": [" " + c for c in choices], "label": choices.index(gold)}


def held_out_paragraphs(count: int = 24, min_chars: int = 300) -> list[str]:
    """Docstring paragraphs of modules the planting mix never reads (checked, not assumed)."""
    seen = set(stdlib_paragraphs())
    modules = [m for m in HELD_OUT_MODULES if m not in MODULES]
    paras = [p for p in stdlib_paragraphs(min_chars, modules=modules) if p not in seen]
    return paras[:count]


def write_lab_tasks(folder: str | Path, seed: int = 0, docs: int = 24) -> Path:
    """Write both tasks' files under ``folder`` (the data folder to pass to ``evaluate_utility``)."""
    folder = Path(folder)
    (folder / "lab").mkdir(parents=True, exist_ok=True)
    with open(folder / SERIES_FILE, "w", encoding="utf-8") as f:
        for item in series_items(seed):
            f.write(json.dumps(item) + "\n")
    with open(folder / DOCS_FILE, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        for p in held_out_paragraphs(docs):
            w.writerow([p])
    return folder
