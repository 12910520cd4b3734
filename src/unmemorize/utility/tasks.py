"""The paper's utility tasks: where each one's data lives, and how a row becomes a prompt.

One registry, filled by the :func:`task` decorator: each task is a file pattern, its required
fields, and a pure ``build(row) -> example`` that does the prompt construction of docs/method.md §6.1
(classification), §6.2 (LAMBADA), §6.3 (dialogue) or §6.4 (perplexity). Reading is strict: a
missing task file, a malformed row or a missing field is a :class:`UserError` naming the file and
the line (or the dialogue's key) and saying what is accepted.

Files are looked up under the user's data folder, laid out as docs/data.md says
(``piqa/validation.jsonl``, ``pubmed_qa.csv``, ``wizard_of_wikipedia.json``, …); a task's SOURCE.md
there describes its fields.

The tasks the paper took from the Hugging Face hub (PIQA, HellaSwag, ARC, COPA, WinoGrande, MathQA)
and LAMBADA can instead be read with the ``datasets`` library by their hub names and splits
(:func:`locate_task`, source ``hub`` or ``auto``): from its cache without any network access, else
downloaded where downloads are allowed. A hub row is the same dict a line of the local JSONL export
holds, so the same ``build`` makes the same example, with the same id (the row's 1-based position,
as the line number of the export).

Examples are selected according to the mode (docs/method.md §6.0):

* ``full`` — every row of the split, in file order (``limit`` keeps the first ``limit``);
  a row with an empty required field is an error.
* ``parity`` — the original code's view: rows with any empty field dropped (``DataFrame.dropna``),
  ARC items without exactly 4 choices dropped, then the first N rows only (N = the first
  validation batch of every DDP rank: 8 × 2 = 16 for SGA/TA/TAU; pass ``limit=32`` for GA/DPD).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unmemorize.data import json_objects
from unmemorize.errors import UserError
from unmemorize.utility.dialogue import dialogue_prompt, dialogue_target

KINDS = ("choice", "completion", "dialogue", "perplexity")
MODES = ("full", "parity")
Mode = Literal["full", "parity"]
SOURCES = ("local", "hub", "auto")
DataSource = Literal["local", "hub", "auto"]

# pandas' default NA strings: what ``read_csv`` turns into NaN before the original's ``dropna``.
_NA_STRINGS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                         "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


class MalformedRow(ValueError):
    """A row that cannot become an example; the loader adds the file and line."""


# ---------------------------------------------------------------- examples

@dataclass(frozen=True)
class ChoiceExample:
    """Classification by verbalizer (§6.1): score every ``context + choice``, predict the argmin."""

    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class CompletionExample:
    """LAMBADA (§6.2): predict ``target`` (a leading space + the last word) after ``context``."""

    context: str
    target: str


@dataclass(frozen=True)
class DialogueExample:
    """Dialogue (§6.3): continue ``prompt`` (the labelled history) with ``target`` (the last turn)."""

    prompt: str
    target: str


@dataclass(frozen=True)
class TextExample:
    """Perplexity (§6.4): token-mean cross-entropy of ``text``."""

    text: str


Example = ChoiceExample | CompletionExample | DialogueExample | TextExample


@dataclass(frozen=True)
class Item:
    """One example with its stable id (the file's line number, or the dialogue's key) and location."""

    id: str
    where: str
    example: Example


# ---------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    files: tuple[str, ...]  # candidates under the data folder, first existing wins
    fields: tuple[str, ...]  # required fields of a row
    build: Callable[[dict], Example]
    paper_key: str  # the key the original code logs, e.g. "ai2_arc_ARC-Easy" → "ai2_arc_ARC-Easy/acc"
    paper_data: str  # what the paper evaluated on
    chance: float | None = None  # accuracy of uniform guessing, for sanity checks
    parity_keep: Callable[[dict], bool] | None = None  # the original's extra row filter
    hub: HubData | None = None  # the same split as a Hugging Face dataset, when there is one

    @property
    def paper_split(self) -> str | None:
        """The split name the paper used when its data came from the hub ("validation"), else None."""
        m = re.search(r"/ (\w+)$", self.paper_data)
        return m.group(1) if m else None


@dataclass(frozen=True)
class HubData:
    """A task's split on the Hugging Face hub, read with ``datasets.load_dataset(name, config, split=split)``.

    ``names``: the dataset's hub names, the paper's first, then the ids it moved to (a cache may hold
    it under any of them; a download tries them in order)."""

    names: tuple[str, ...]
    config: str | None
    split: str

    def label(self, name: str | None = None) -> str:
        """``ai2_arc ARC-Easy / validation``: the spelling of ``Task.paper_data``."""
        return f"{name or self.names[0]}{' ' + self.config if self.config else ''} / {self.split}"

    def load_call(self, name: str | None = None) -> str:
        args = [repr(name or self.names[0])] + ([repr(self.config)] if self.config else [])
        return f"load_dataset({', '.join(args)}, split={self.split!r})"


TASKS: dict[str, Task] = {}


def task(name: str, *, kind: str, files: Sequence[str], fields: Sequence[str], paper_key: str,
         paper_data: str, chance: float | None = None, parity_keep: Callable[[dict], bool] | None = None,
         hub: HubData | None = None):
    """Register ``build`` as the prompt construction of task ``name``."""
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}")

    def register(build: Callable[[dict], Example]) -> Callable[[dict], Example]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        TASKS[name] = Task(name, kind, tuple(files), tuple(fields), build, paper_key, paper_data, chance, parity_keep,
                           hub)
        return build

    return register


# ---------------------------------------------------------------- field helpers

def _text(row: dict, key: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise MalformedRow(f"field {key!r} must be a string, got {type(value).__name__} {value!r}")
    return value


def _label(row: dict, key: str, n: int) -> int:
    """An integer class index in 0..n-1 (accepts 1 and "1")."""
    value = row[key]
    try:
        label = int(value)
        if isinstance(value, float) and value != label:
            raise ValueError
    except (TypeError, ValueError):
        raise MalformedRow(f"field {key!r} must be an integer in 0..{n - 1}, got {value!r}") from None
    if not 0 <= label < n:
        raise MalformedRow(f"field {key!r} must be an integer in 0..{n - 1}, got {value!r}")
    return label


def _texts(row: dict, key: str, minimum: int = 2) -> list[str]:
    value = row[key]
    if not isinstance(value, list) or len(value) < minimum or not all(isinstance(v, str) for v in value):
        raise MalformedRow(f"field {key!r} must be a list of at least {minimum} strings, got {value!r:.120}")
    return value


def _arc_choices(row: dict) -> dict:
    choices = row["choices"]
    if not isinstance(choices, dict) or not {"text", "label"} <= set(choices):
        raise MalformedRow("field 'choices' must be an object with lists 'text' and 'label'")
    return choices


# ---------------------------------------------------------------- the eight classification tasks (§6.1)

@task("piqa", kind="choice", files=("piqa/validation.jsonl",), fields=("goal", "sol1", "sol2", "label"),
      paper_key="piqa", paper_data="hub piqa / validation", chance=0.5,
      hub=HubData(("piqa", "ybisk/piqa", "baber/piqa"), None, "validation"))
def piqa(row: dict) -> ChoiceExample:
    """context = goal; choices = " "+sol1, " "+sol2; gold = label."""
    return ChoiceExample(_text(row, "goal"), (" " + _text(row, "sol1"), " " + _text(row, "sol2")), _label(row, "label", 2))


@task("hellaswag", kind="choice", files=("hellaswag/validation.jsonl",), fields=("ctx", "endings", "label"),
      paper_key="hellaswag", paper_data="hub hellaswag / validation", chance=0.25,
      hub=HubData(("hellaswag", "Rowan/hellaswag"), None, "validation"))
def hellaswag(row: dict) -> ChoiceExample:
    """context = ctx (raw); choices = " "+ending for each ending; gold = label."""
    endings = _texts(row, "endings")
    return ChoiceExample(_text(row, "ctx"), tuple(" " + e for e in endings), _label(row, "label", len(endings)))


def _arc(row: dict) -> ChoiceExample:
    """context = question; choices = " "+choice text; gold = position of answerKey in choices.label."""
    choices = _arc_choices(row)
    texts, labels = _texts(choices, "text"), choices["label"]
    if not isinstance(labels, list) or len(labels) != len(texts):
        raise MalformedRow("choices.label must be a list as long as choices.text")
    key = row["answerKey"]
    if key not in labels:
        raise MalformedRow(f"answerKey {key!r} is not one of the choice labels {labels}")
    return ChoiceExample(_text(row, "question"), tuple(" " + t for t in texts), labels.index(key))


def _arc_has_four(row: dict) -> bool:
    """The original drops ARC items whose choice count is not 4 (they broke its batching)."""
    choices = row.get("choices")
    return isinstance(choices, dict) and isinstance(choices.get("text"), list) and len(choices["text"]) == 4


task("arc_easy", kind="choice", files=("arc_easy/validation.jsonl",), fields=("question", "choices", "answerKey"),
     paper_key="ai2_arc_ARC-Easy", paper_data="hub ai2_arc ARC-Easy / validation", chance=0.25,
     parity_keep=_arc_has_four, hub=HubData(("ai2_arc", "allenai/ai2_arc"), "ARC-Easy", "validation"))(_arc)
task("arc_challenge", kind="choice", files=("arc_challenge/validation.jsonl",),
     fields=("question", "choices", "answerKey"), paper_key="ai2_arc_ARC-Challenge",
     paper_data="hub ai2_arc ARC-Challenge / validation", chance=0.25, parity_keep=_arc_has_four,
     hub=HubData(("ai2_arc", "allenai/ai2_arc"), "ARC-Challenge", "validation"))(_arc)


@task("copa", kind="choice", files=("copa/validation.jsonl",), fields=("premise", "choice1", "choice2", "label"),
      paper_key="super_glue_copa", paper_data="hub super_glue copa / validation", chance=0.5,
      hub=HubData(("super_glue", "aps/super_glue"), "copa", "validation"))
def copa(row: dict) -> ChoiceExample:
    """context = premise (no because/therefore connector); choices = " "+choice1, " "+choice2."""
    return ChoiceExample(_text(row, "premise"), (" " + _text(row, "choice1"), " " + _text(row, "choice2")),
                         _label(row, "label", 2))


@task("winogrande", kind="choice", files=("winogrande/validation.jsonl",),
      fields=("sentence", "option1", "option2", "answer"), paper_key="winogrande_winogrande_s",
      paper_data="hub winogrande winogrande_s / validation", chance=0.5,
      hub=HubData(("winogrande", "allenai/winogrande"), "winogrande_s", "validation"))
def winogrande(row: dict) -> ChoiceExample:
    """context = the sentence before " _"; choices = " "+option + the whole rest; gold = answer − 1."""
    parts = _text(row, "sentence").split(" _")
    if len(parts) != 2:
        raise MalformedRow(f"field 'sentence' must contain the blank ' _' exactly once, found {len(parts) - 1}")
    before, rest = parts
    answer = row["answer"]
    if str(answer) not in ("1", "2"):
        raise MalformedRow(f"field 'answer' must be '1' or '2', got {answer!r}")
    return ChoiceExample(before, (" " + _text(row, "option1") + rest, " " + _text(row, "option2") + rest),
                         int(answer) - 1)


MATHQA_OPTION = re.compile(r"[abcd] \) .*?, |e \) .*?$")


@task("mathqa", kind="choice", files=("mathqa/validation.jsonl", "mathqa/test.jsonl"),
      fields=("Problem", "options", "correct"), paper_key="math_qa", paper_data="hub math_qa / validation",
      chance=0.2, hub=HubData(("math_qa", "allenai/math_qa", "swiss-ai/math_qa"), None, "validation"))
def mathqa(row: dict) -> ChoiceExample:
    """context = Problem; choices = the options matched by ``[abcd] \\) .*?, |e \\) .*?$``, first
    4 characters cut and ``" ,"`` stripped on the right, with NO leading space; gold = index of
    ``correct`` in a–e."""
    options = [c[4:].rstrip(" ,") for c in MATHQA_OPTION.findall(_text(row, "options"))]
    correct = row["correct"]
    if correct not in ("a", "b", "c", "d", "e"):
        raise MalformedRow(f"field 'correct' must be one of a, b, c, d, e, got {correct!r}")
    gold = "abcde".index(correct)
    if len(options) < 2 or gold >= len(options):
        raise MalformedRow(f"field 'options' must read 'a ) …, b ) …, …, e ) …'; parsed {len(options)} options "
                           f"from {row['options']!r:.120}")
    return ChoiceExample(_text(row, "Problem"), tuple(options), gold)


PUBMEDQA_ANSWERS = ("yes", "maybe", "no")


@task("pubmed_qa", kind="choice", files=("pubmed_qa.csv",), fields=("abstract", "question", "final_decision"),
      paper_key="pubmed_qa", paper_data="pubmed_qa.csv", chance=1 / 3)
def pubmed_qa(row: dict) -> ChoiceExample:
    """context = "Context: {abstract}\\nQuestion: {question}\\nAnswer:"; choices " yes", " maybe", " no"."""
    decision = row["final_decision"]
    if decision not in PUBMEDQA_ANSWERS:
        raise MalformedRow(f"field 'final_decision' must be yes, maybe or no, got {decision!r}")
    context = f"Context: {_text(row, 'abstract')}\nQuestion: {_text(row, 'question')}\nAnswer:"
    return ChoiceExample(context, tuple(" " + a for a in PUBMEDQA_ANSWERS), PUBMEDQA_ANSWERS.index(decision))


# ---------------------------------------------------------------- LAMBADA (§6.2)

@task("lambada", kind="completion", files=("lambada.csv",), fields=("text",), paper_key="lambada",
      paper_data="lambada.csv", hub=HubData(("lambada", "cimec/lambada"), None, "test"))
def lambada(row: dict) -> CompletionExample:
    """Split on single spaces: context = all words but the last, target = " " + the last word."""
    words = _text(row, "text").split(" ")
    if len(words) < 2:
        raise MalformedRow("field 'text' has no space: LAMBADA needs a context and a last word")
    return CompletionExample(" ".join(words[:-1]), " " + words[-1])


# ---------------------------------------------------------------- dialogue (§6.3)

def _dialogue(row: dict) -> DialogueExample:
    """prompt = the labelled, normalised history; target = the normalised last turn."""
    turns = _texts(row, "turns")
    return DialogueExample(dialogue_prompt(turns[:-1]), dialogue_target(turns[-1]))


DIALOGUE = ("wizard_of_wikipedia", "empathetic_dialogues", "blended_skill_talk", "wizard_of_internet")
for _name in DIALOGUE:
    task(_name, kind="dialogue", files=(f"{_name}.json",), fields=("turns",), paper_key=_name,
         paper_data=f"{_name}.json")(_dialogue)


# ---------------------------------------------------------------- perplexity (§6.4)

def _text_example(row: dict) -> TextExample:
    return TextExample(_text(row, "text"))


task("wikitext", kind="perplexity", files=("wikitext.csv",), fields=("text",), paper_key="wikitext",
     paper_data="wikitext.csv")(_text_example)
task("pile", kind="perplexity", files=("pile.csv",), fields=("text",), paper_key="pile",
     paper_data="pile.csv")(_text_example)


# ---------------------------------------------------------------- offline lab tasks (not the paper's)

@task("lab_series", kind="choice", files=("lab/series.jsonl",), fields=("context", "choices", "label"),
      paper_key="lab_series", paper_data="written by unmemorize.lab.utility_tasks (not in the paper)", chance=0.25)
def lab_series(row: dict) -> ChoiceExample:
    """context = the series so far; choices as written (each with its leading space); gold = label."""
    choices = _texts(row, "choices")
    return ChoiceExample(_text(row, "context"), tuple(choices), _label(row, "label", len(choices)))


task("lab_docs", kind="perplexity", files=("lab/docs.csv",), fields=("text",), paper_key="lab_docs",
     paper_data="written by unmemorize.lab.utility_tasks (not in the paper)")(_text_example)


# ---------------------------------------------------------------- groups of tasks

CLASSIFICATION = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "copa", "winogrande", "mathqa", "pubmed_qa")
PAPER = (*CLASSIFICATION, "lambada", *DIALOGUE)  # the shipped configs' validation sets
GROUPS: dict[str, tuple[str, ...]] = {
    "paper": PAPER,
    "classification": CLASSIFICATION,
    "dialogue": DIALOGUE,
    "perplexity": ("wikitext", "pile"),
    "lab": ("lab_series", "lab_docs"),  # offline: files from unmemorize.lab.utility_tasks.write_lab_tasks
    "all": tuple(TASKS),
}


def resolve_tasks(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Task names from a comma-separated string or a list; group names expand; order kept, no repeats."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [s for s in items if s]
    if not items:
        raise UserError(f"no tasks given; choose from {', '.join(TASKS)} or a group ({', '.join(GROUPS)})")
    bad = [s for s in items if s not in TASKS and s not in GROUPS]
    if bad:
        raise UserError(f"unknown task {', '.join(bad)}; known tasks: {', '.join(TASKS)}; "
                        f"groups: {', '.join(GROUPS)}")
    out: list[str] = []
    for s in items:
        for name in GROUPS.get(s, (s,)):
            if name not in out:
                out.append(name)
    return tuple(out)


# ---------------------------------------------------------------- readers

@dataclass(frozen=True)
class Row:
    id: str
    where: str
    fields: dict


def read_jsonl(path: Path) -> Iterator[Row]:
    """One JSON object per line; blank lines are skipped; the id is the line number."""
    for lineno, obj in json_objects(path, where=lambda p, n: f"{p}:{n}"):
        yield Row(str(lineno), f"{path}:{lineno}", obj)


def read_csv(path: Path) -> Iterator[Row]:
    """A CSV with a header row; quoted fields may span lines; the id is the record's first line."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise UserError(f"{path}: empty file; expected a CSV with a header row") from None
        except csv.Error as e:
            raise UserError(f"{path}:1: cannot parse the CSV header ({e})") from None
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise UserError(f"{path}:{start}: cannot parse this CSV record ({e})") from None
            if not values:
                continue
            if len(values) != len(header):
                raise UserError(f"{path}:{start}: {len(values)} fields, but the header has {len(header)} "
                                f"({', '.join(header)})")
            yield Row(str(start), f"{path}:{start}", dict(zip(header, values)))


def read_dialogues(path: Path) -> Iterator[Row]:
    """The original's dialogue JSON: ``{"text": {"<key>": ["turn", "turn", …], …}}``, in file order."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("text"), dict):
        raise UserError(f"{path}: expected a JSON object {{\"text\": {{\"<id>\": [turn, turn, …], …}}}}")
    for key, turns in data["text"].items():
        yield Row(str(key), f'{path}, dialogue "{key}"', {"turns": turns})


READERS: dict[str, Callable[[Path], Iterator[Row]]] = {".jsonl": read_jsonl, ".csv": read_csv, ".json": read_dialogues}


# ---------------------------------------------------------------- loading a task

@dataclass(frozen=True)
class TaskSource:
    """Where a task's rows came from: a file of the data folder (``local``), or a split of a Hugging
    Face dataset read with ``datasets`` (``hub``: its cache, or downloaded into it)."""

    kind: Literal["local", "hub"]
    split: str
    path: Path | None = None  # local: the file
    dataset: str | None = None  # hub: the name it was found under (e.g. "ai2_arc")
    config: str | None = None
    files: tuple[Path, ...] = ()  # the files read (hub: the split's cached Arrow files), hashed in run keys
    downloaded: bool = False
    rows: Any = field(default=None, compare=False, repr=False)  # hub: the datasets.Dataset

    @property
    def where(self) -> str:
        """``/data/piqa/validation.jsonl`` or ``hub ai2_arc ARC-Easy / validation``."""
        if self.kind == "local":
            return str(self.path)
        return f"hub {self.dataset}{' ' + self.config if self.config else ''} / {self.split}"

    def describe(self) -> dict:
        """For manifests: what was read, and its sha256."""
        from unmemorize.runs import sha256_file

        if self.kind == "local":
            return {"source": "local", "file": str(self.path), "sha256": sha256_file(self.path)}
        import hashlib

        h = hashlib.sha256()
        for f in self.files:
            h.update(sha256_file(f).encode())
        return {"source": "hub", "dataset": self.dataset, "config": self.config, "split": self.split,
                "rows": None if self.rows is None else len(self.rows),
                "fingerprint": getattr(self.rows, "_fingerprint", None), "files": [str(f) for f in self.files],
                "sha256": h.hexdigest(), "fetched": "downloaded" if self.downloaded else "datasets cache"}


@dataclass
class LoadedTask:
    task: Task
    source: TaskSource
    items: list[Item]
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path | None:
        """The local file (None for a hub dataset)."""
        return self.source.path

    @property
    def split(self) -> str:
        return self.source.split


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _empty(value) -> bool:
    """None, NaN or an empty string: a required field with nothing in it."""
    return _is_nan(value) or (isinstance(value, str) and value == "")


def _dropped_by_dropna(fields: dict, csv_source: bool) -> bool:
    """Whether the original's ``DataFrame.dropna()`` drops this row: any NaN in any column. A CSV
    read by pandas turns "", "NA", "null", … into NaN; a hub dataset only has real nulls."""
    if csv_source:
        return any(_is_nan(v) or (isinstance(v, str) and v in _NA_STRINGS) for v in fields.values())
    return any(_is_nan(v) for v in fields.values())


def find_file(t: Task, data_dir: str | Path | None) -> Path:
    """The first of ``t.files`` that exists under ``data_dir``."""
    hub_hint = (f"; or read it from the Hugging Face hub with --data-source hub ({t.hub.label()})"
                if t.hub is not None else "")
    if data_dir is None:
        raise UserError(f"task {t.name} reads its data from a folder: pass --data, a folder laid out as docs/data.md "
                        f"says{hub_hint}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist (pass --data: a folder laid out as docs/data.md says)")
    for rel in t.files:
        if (data_dir / rel).is_file():
            return data_dir / rel
    raise UserError(f"data folder {data_dir} has no file for task {t.name}: expected "
                    f"{' or '.join(t.files)} with fields {', '.join(t.fields)}{hub_hint}")


def needs_folder(tasks: str | Sequence[str], source: str = "local") -> bool:
    """Whether ``tasks`` read a data folder with this source (``hub``/``auto``: only tasks without a hub dataset)."""
    return any(source == "local" or TASKS[n].hub is None for n in resolve_tasks(tasks))


def locate_task(t: Task, data_dir: str | Path | None, source: str = "local") -> TaskSource:
    """Where task ``t``'s rows come from, by ``source``:

    * ``local``: the data folder (:func:`find_file`);
    * ``hub``: the task's Hugging Face dataset (:class:`HubData`) through ``datasets``: its cache
      first, without any network access, then a download where allowed (not with
      ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``); tasks without a hub dataset read the data folder;
    * ``auto``: the data folder's file when it has one, else the hub dataset.
    """
    if source not in SOURCES:
        raise UserError(f"unknown data source {source!r}; choose from {', '.join(SOURCES)}")
    if source == "local" or t.hub is None:
        path = find_file(t, data_dir)
        return TaskSource("local", path.stem, path=path, files=(path,))
    if source == "auto" and data_dir is not None:
        found = [Path(data_dir) / rel for rel in t.files if (Path(data_dir) / rel).is_file()]
        if found:
            return TaskSource("local", found[0].stem, path=found[0], files=(found[0],))
    return _hub_source(t)


# ---------------------------------------------------------------- the hub source (the `datasets` library)

def datasets_cache_dir() -> Path:
    """The ``datasets`` cache: ``$HF_DATASETS_CACHE``, else ``$HF_HOME/datasets`` (read at each call)."""
    from unmemorize.models import hf_home

    env = os.environ.get("HF_DATASETS_CACHE")
    return Path(env).expanduser() if env else hf_home() / "datasets"


def datasets_offline() -> bool:
    """Whether dataset downloads are forbidden, as ``datasets`` decides: ``HF_DATASETS_OFFLINE`` when set,
    else ``HF_HUB_OFFLINE`` (read at each call)."""
    from unmemorize.models import hub_offline

    env = os.environ.get("HF_DATASETS_OFFLINE")
    return env.strip().upper() in {"1", "ON", "YES", "TRUE"} if env is not None else hub_offline()


@contextmanager
def _network(allowed: bool):
    """Let ``datasets`` and the hub client under it reach the network or not, whatever they read at import."""
    import datasets
    import datasets.config as dc
    import huggingface_hub.constants as hc

    saved = dc.HF_HUB_OFFLINE, dc.HF_DATASETS_OFFLINE, hc.HF_HUB_OFFLINE, datasets.logging.get_verbosity()
    dc.HF_HUB_OFFLINE = dc.HF_DATASETS_OFFLINE = hc.HF_HUB_OFFLINE = not allowed
    datasets.logging.set_verbosity_error()  # not "Using the latest cached version …" for every task
    try:
        yield
    finally:
        dc.HF_HUB_OFFLINE, dc.HF_DATASETS_OFFLINE, hc.HF_HUB_OFFLINE = saved[:3]
        datasets.logging.set_verbosity(saved[3])


def _hub_source(t: Task) -> TaskSource:
    """Task ``t``'s split from the ``datasets`` cache (any of its hub names), else downloaded where allowed."""
    hub = t.hub
    try:
        import datasets
    except ImportError:
        raise UserError(f"task {t.name} from the Hugging Face hub needs the `datasets` library: pip install datasets "
                        "(or use the data folder: --data-source local)") from None
    cache = datasets_cache_dir()

    def load(name: str):
        # hf://datasets/ : never a local folder that happens to have the dataset's name
        return datasets.load_dataset(f"hf://datasets/{name}", hub.config, split=hub.split, cache_dir=str(cache))

    def source(name: str, ds, downloaded: bool) -> TaskSource:
        files = tuple(Path(f["filename"]) for f in ds.cache_files)
        return TaskSource("hub", hub.split, dataset=name, config=hub.config, files=files, downloaded=downloaded,
                          rows=ds)

    for name in hub.names:  # the cache first, under every name the dataset had, with no network access
        try:
            with _network(False):
                return source(name, load(name), False)
        except Exception:  # noqa: BLE001, S112 - not in the cache under this name
            continue
    fetch = (f"python -c \"from datasets import load_dataset; {hub.load_call()}\", or put {t.files[0]} into the "
             "data folder (--data-source local)")
    if datasets_offline():
        raise UserError(f"task {t.name}: dataset {hub.label()} is not in the datasets cache ({cache}; looked for "
                        f"{', '.join(hub.names)}) and downloads are off (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is "
                        "set): fetch it once where the network is allowed, by running this command without them "
                        f"(it tries {', '.join(hub.names)}) or with {fetch}")
    errors = []
    for name in hub.names:
        try:
            with _network(True):
                return source(name, load(name), True)
        except Exception as e:  # noqa: BLE001 - try the dataset's next name, then say what failed
            first = (str(e).strip().splitlines() or [""])[0][:160]
            errors.append(f"{name}: {type(e).__name__}: {first}")
            if isinstance(e, ConnectionError):
                break  # the hub cannot be reached: the other names cannot be either
    raise UserError(f"task {t.name}: dataset {hub.label()} is not in the datasets cache ({cache}) and could not be "
                    f"downloaded ({'; '.join(errors)}): fetch it where the network is allowed with {fetch}")


def _rows(src: TaskSource) -> Iterator[Row]:
    if src.kind == "local":
        yield from READERS[src.path.suffix](src.path)
        return
    for i, fields in enumerate(src.rows):  # ids: the 1-based position, the line number of a JSONL export
        yield Row(str(i + 1), f"{src.where}, row {i + 1}", fields)


def load_task(t: Task, data_dir: str | Path | None, mode: str, count: int | None, source: str = "local") -> LoadedTask:
    """Read, filter and build the examples of task ``t``: at most ``count`` of them (None = all).

    ``mode`` is ``"full"`` or ``"parity"`` (see the module docstring for what each keeps);
    ``source`` is ``"local"``, ``"hub"`` or ``"auto"`` (:func:`locate_task`).
    """
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    src = locate_task(t, data_dir, source)
    csv_source = src.path is not None and src.path.suffix == ".csv"
    items: list[Item] = []
    dropped = 0
    for row in _rows(src):
        if count is not None and len(items) >= count:
            break
        if mode == "parity":
            if _dropped_by_dropna(row.fields, csv_source) or (t.parity_keep and not t.parity_keep(row.fields)):
                dropped += 1
                continue
        absent = [k for k in t.fields if k not in row.fields]
        if absent:
            raise UserError(f"{row.where}: missing field {', '.join(absent)} (task {t.name} needs "
                            f"{', '.join(t.fields)})")
        empty = [k for k in t.fields if _empty(row.fields[k])]
        if empty:
            raise UserError(f"{row.where}: empty field {', '.join(empty)} (task {t.name} needs "
                            f"{', '.join(t.fields)})")
        try:
            example = t.build(row.fields)
        except MalformedRow as e:
            raise UserError(f"{row.where}: {e} (task {t.name})") from None
        items.append(Item(row.id, row.where, example))
    if not items:
        raise UserError(f"{src.where}: no usable examples for task {t.name}")
    loaded = LoadedTask(t, src, items)
    if dropped:
        loaded.notes.append(f"parity: skipped {dropped} row(s) the original code drops (empty fields"
                            f"{' or not exactly 4 choices' if t.parity_keep else ''})")
    if t.paper_split and loaded.split != t.paper_split:
        loaded.notes.append(f"the paper evaluated {t.paper_data}; this is the {loaded.split} split")
    elif src.kind == "hub" and t.paper_split is None:
        loaded.notes.append(f"the paper evaluated {t.paper_data}; this is {src.where}")
    return loaded
