"""Forget and reference sets: read texts from files, cut them into token sequences with stable ids.

One data format for everything downstream: a :class:`SequenceSet` of right-padded token ids with the
true length of each sequence (padding is masked everywhere), keyed by ids that come from the file
(Jang's ``doc_id``, a JSONL ``id``) or else from a hash of the text. Readers are a registry keyed by
file suffix; a folder is read as plain text files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from unmemorize.errors import UserError
from unmemorize.runs import sha256_path

DEFAULT_LENGTH = 200  # T in the paper: 200-token sequences
ID_COLUMNS = ("doc_id", "id")
TEXT_SUFFIXES = (".txt", ".md", ".rst")


@dataclass
class TextRecords:
    """Texts as read from a file, before tokenization."""

    texts: list[str]
    ids: list[str | None]
    meta: pd.DataFrame  # one row per text: every other column of the file (corpus, prefix, …)
    source: str
    windowed: bool = False  # plain text: cut into consecutive windows of T tokens


@dataclass
class SequenceSet:
    """Token sequences of fixed maximum length T, right-padded; ``lengths`` are the true lengths."""

    ids: list[str]
    input_ids: torch.Tensor  # [N, T] int64
    lengths: torch.Tensor  # [N] int64
    texts: list[str]
    meta: pd.DataFrame
    source: str
    sha256: str
    pad_id: int
    prefix_lengths: torch.Tensor | None = None  # [N] tokens of a per-row 'prefix' column, if any
    truncated: int = 0
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def attention_mask(self) -> torch.Tensor:
        return (torch.arange(self.length)[None, :] < self.lengths[:, None]).long()

    def subset(self, index: Sequence[int]) -> "SequenceSet":
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return SequenceSet(
            ids=[self.ids[i] for i in idx.tolist()],
            input_ids=self.input_ids[idx],
            lengths=self.lengths[idx],
            texts=[self.texts[i] for i in idx.tolist()],
            meta=self.meta.iloc[idx.tolist()].reset_index(drop=True),
            source=self.source,
            sha256=self.sha256,
            pad_id=self.pad_id,
            prefix_lengths=None if self.prefix_lengths is None else self.prefix_lengths[idx],
        )

    def describe(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "sequences": len(self),
                "max_length": self.length, "mean_length": float(self.lengths.float().mean()) if len(self) else 0.0,
                "truncated": self.truncated}


# ---------------------------------------------------------------- readers (a registry by suffix)

Reader = Callable[[Path], TextRecords]
READERS: dict[str, Reader] = {}


def reader(*suffixes: str):
    def register(fn: Reader) -> Reader:
        for s in suffixes:
            READERS[s] = fn
        return fn
    return register


def _read_utf8(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path} is not UTF-8 text: invalid byte 0x{raw[e.start]:02x} on line {line}") from None


def _records_from_frame(df: pd.DataFrame, path: Path, line_of: Callable[[int], int]) -> TextRecords:
    if "text" not in df.columns:
        raise UserError(f"{path} has no 'text' column (columns: {', '.join(map(str, df.columns)) or 'none'}); "
                        "expected Jang et al.'s doc_id,corpus,text or at least a 'text' column")
    id_col = next((c for c in ID_COLUMNS if c in df.columns), None)
    texts = []
    for i, t in enumerate(df["text"].tolist()):
        if not isinstance(t, str) or not t.strip():
            raise UserError(f"{path}, line {line_of(i)}: empty text")
        texts.append(t)
    ids: list[str | None] = [None] * len(df)
    if id_col is not None:
        for i, v in enumerate(df[id_col].tolist()):
            if v is None or (isinstance(v, str) and not v.strip()) or v != v:
                raise UserError(f"{path}, line {line_of(i)}: empty {id_col}")
            ids[i] = str(v).strip()
    meta = df.drop(columns=[c for c in ("text", id_col) if c is not None]).reset_index(drop=True)
    return TextRecords(texts, ids, meta, str(path))


@reader(".csv")
def read_csv(path: Path) -> TextRecords:
    """Jang et al.'s forget-set CSV (doc_id, corpus, text) or any CSV with a 'text' column."""
    content = _read_utf8(path)
    try:
        df = pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty") from None
    except pd.errors.ParserError as e:
        raise UserError(f"{path} is not a well-formed CSV: {str(e).strip()}") from None
    # Row i of the frame starts on line i + 2 (after the header) when no text spans lines; good enough
    # to point a person at the row.
    return _records_from_frame(df, path, lambda i: i + 2)


def json_objects(path: Path, where: Callable[[Path, int], str] = lambda p, n: f"{p}, line {n}"
                 ) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a bad line is named by ``where``."""
    for n, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where(path, n)}: not valid JSON ({e.msg}); expected one JSON object per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{where(path, n)}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj


@reader(".jsonl")
def read_jsonl(path: Path) -> TextRecords:
    """One JSON object per line: {"id": …, "text": …, other fields kept as columns}."""
    pairs = list(json_objects(path))
    lines = [n for n, _ in pairs]
    df = pd.DataFrame([obj for _, obj in pairs])
    return _records_from_frame(df, path, lambda i: lines[i])


@reader(*TEXT_SUFFIXES)
def read_text(path: Path) -> TextRecords:
    """A plain text file, cut later into consecutive windows of T tokens."""
    text = _read_utf8(path)
    if not text.strip():
        raise UserError(f"{path} is empty")
    return TextRecords([text], [path.name], pd.DataFrame(index=range(1)), str(path), windowed=True)


def read_folder(path: Path) -> TextRecords:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise UserError(f"folder {path} holds no text files ({', '.join(TEXT_SUFFIXES)})")
    texts, ids = [], []
    for f in files:
        t = _read_utf8(f)
        if t.strip():
            texts.append(t)
            ids.append(str(f.relative_to(path)))
    if not texts:
        raise UserError(f"folder {path}: every text file is empty")
    return TextRecords(texts, ids, pd.DataFrame(index=range(len(texts))), str(path), windowed=True)


def read_records(path: str | os.PathLike) -> TextRecords:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist")
    if p.is_dir():
        return read_folder(p)
    fn = READERS.get(p.suffix.lower())
    if fn is None:
        raise UserError(f"{p}: unknown file type {p.suffix!r}; accepted: {', '.join(sorted(READERS))} or a folder of text files")
    return fn(p)


# ---------------------------------------------------------------- tokenization

def content_id(text: str) -> str:
    return "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def tokenize(records: TextRecords, tokenizer, length: int = DEFAULT_LENGTH, sha256: str = "") -> SequenceSet:
    """Cut texts to at most ``length`` tokens (plain text: into consecutive windows).

    No special tokens are added: a sequence is the text's own tokens, as in the paper (GPT-2's
    tokenizer adds none). Shorter sequences keep their true length; the rest of the row is padding.
    """
    if length < 2:
        raise UserError(f"sequence length must be at least 2 tokens, got {length}")
    if not records.texts:
        raise UserError(f"{records.source}: no sequences to measure (empty set)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = tokenizer(records.texts, add_special_tokens=False)["input_ids"]
    rows: list[list[int]] = []
    ids: list[str] = []
    meta_rows: list[int] = []
    truncated = 0
    for i, toks in enumerate(encoded):
        if records.windowed:
            for k, start in enumerate(range(0, len(toks), length)):
                rows.append(toks[start:start + length])
                ids.append(f"{records.ids[i]}#{k}")
                meta_rows.append(i)
        else:
            if len(toks) > length:
                truncated += 1
            rows.append(toks[:length])
            ids.append(records.ids[i] if records.ids[i] is not None else content_id(records.texts[i]))
            meta_rows.append(i)
    if not rows:
        raise UserError(f"{records.source}: no sequences to measure (empty set)")
    _check_unique(ids, records.source)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    lengths = torch.zeros(len(rows), dtype=torch.long)
    for r, toks in enumerate(rows):
        input_ids[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        lengths[r] = len(toks)
    meta = records.meta.iloc[meta_rows].reset_index(drop=True)
    texts = tokenizer.batch_decode([r for r in rows])
    prefix_lengths = None
    if "prefix" in meta.columns:
        pref = tokenizer(meta["prefix"].astype(str).tolist(), add_special_tokens=False)["input_ids"]
        prefix_lengths = torch.tensor([len(p) for p in pref], dtype=torch.long)
    return SequenceSet(ids, input_ids, lengths, texts, meta, records.source, sha256, int(pad_id),
                       prefix_lengths, truncated)


def _check_unique(ids: list[str], source: str) -> None:
    seen: dict[str, int] = {}
    dups = []
    for i, x in enumerate(ids):
        if x in seen:
            dups.append(x)
        seen.setdefault(x, i)
    if dups:
        shown = ", ".join(sorted(set(dups))[:5])
        raise UserError(f"{source}: duplicate ids ({shown}{' …' if len(set(dups)) > 5 else ''}); "
                        "ids must be unique (identical texts without ids share a content hash)")


def load_sequences(path: str | os.PathLike, tokenizer, length: int = DEFAULT_LENGTH) -> SequenceSet:
    """Read a forget/reference file (CSV, JSONL, text file or folder) and tokenize it."""
    records = read_records(path)
    return tokenize(records, tokenizer, length, sha256=sha256_path(path))
