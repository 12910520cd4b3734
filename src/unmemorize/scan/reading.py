"""Documents of a corpus, read lazily: folders of text, JSONL, CSV and Parquet files of any size.

A corpus is streamed, never held: JSONL line by line, CSV and Parquet in batches of rows, plain text
in pieces of about a million characters cut after a newline (a document's pieces are tokenized
apart, so only a token that would span a cut can differ from tokenizing the whole file). Bad input
is counted, not fatal: a file that cannot be read or is not UTF-8 is skipped whole (its bytes are
checked before any of its text is used), a record without text or a line that is not a JSON object
is skipped, and :class:`ReadReport` says how many and which. A path given that does not exist, or
a file given by name of a type no reader takes, is the user's mistake: one line (:class:`UserError`).

A document's id is its record's ``doc_id`` or ``id`` field, else ``<file>:<line>`` (JSONL),
``<file>:<row>`` (CSV, Parquet; 1-based) or the file's path (plain text).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from unmemorize.data import ID_COLUMNS, TEXT_SUFFIXES
from unmemorize.errors import UserError

RECORD_SUFFIXES = (".jsonl", ".csv", ".parquet")
SUFFIXES = (*TEXT_SUFFIXES, *RECORD_SUFFIXES)
PIECE_CHARS = 1 << 20  # plain text is read in pieces of about this many characters
ROW_BATCH = 1024  # CSV and Parquet rows read at a time
SHOWN = 5  # problems named in a report (the rest are counted)


@dataclass
class Piece:
    """Consecutive text of one document; a document is one piece unless it is a long plain text file."""

    source: str  # the file, as given or under the folder given
    doc: str  # the document's id
    text: str
    char_start: int  # where this piece starts in the document's text
    last: bool  # the document's last piece
    group: str | None = None  # the value of the grouping field (--tau-by), if any


@dataclass
class ReadReport:
    """What reading a corpus met: files read, skipped (why), records skipped (why), files ignored."""

    files_read: int = 0
    files_skipped: int = 0
    records_skipped: int = 0
    files_ignored: int = 0  # files of other types inside a folder
    problems: list[str] = field(default_factory=list)  # the first few, in words

    def skip_file(self, path: Path, why: str) -> None:
        self.files_skipped += 1
        self._note(f"{path}: {why}; file skipped")

    def skip_record(self, where: str, why: str) -> None:
        self.records_skipped += 1
        self._note(f"{where}: {why}; record skipped")

    def _note(self, text: str) -> None:
        if len(self.problems) < SHOWN:
            self.problems.append(text)

    def warnings(self) -> list[str]:
        out = []
        if self.files_skipped:
            out.append(f"{self.files_skipped} file(s) skipped (unreadable or not UTF-8)")
        if self.records_skipped:
            out.append(f"{self.records_skipped} record(s) skipped (no text, or not a JSON object)")
        more = self.files_skipped + self.records_skipped - len(self.problems)
        return out + self.problems + ([f"… and {more} more"] if more > 0 else [])

    def as_dict(self) -> dict:
        return {"files_read": self.files_read, "files_skipped": self.files_skipped,
                "records_skipped": self.records_skipped, "files_ignored": self.files_ignored,
                "problems": list(self.problems)}


def corpus_files(paths: tuple[Path, ...] | list[Path], report: ReadReport | None = None) -> list[tuple[Path, str]]:
    """(file, label) for every file to read, in a fixed order: each path as given; a folder's files
    of the known types sorted by their path under it (others counted as ignored)."""
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"corpus path {p} does not exist")
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                if f.suffix.lower() in SUFFIXES:
                    out.append((f, str(f.relative_to(p))))
                elif report is not None:
                    report.files_ignored += 1
        elif p.suffix.lower() in SUFFIXES:
            out.append((p, p.name))
        else:
            raise UserError(f"corpus file {p}: unknown type {p.suffix!r}; accepted: {', '.join(SUFFIXES)} "
                            "or a folder of such files")
    return out


def listing(paths) -> list[list]:
    """[label, size, mtime_ns] of every corpus file: what a resumed scan checks it is reading again."""
    out = []
    for f, _ in corpus_files(paths):
        st = f.stat()
        out.append([str(f), st.st_size, st.st_mtime_ns])
    return out


def utf8_problem(path: Path, block: int = 1 << 20) -> str | None:
    """Why the file cannot be read as UTF-8 text (unreadable, or the first bad byte), or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while raw := f.read(block):
                try:
                    decoder.decode(raw)
                except UnicodeDecodeError as e:
                    return f"not UTF-8 (invalid byte 0x{raw[e.start]:02x} at byte {offset + e.start})"
                offset += len(raw)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "not UTF-8 (ends inside a character)"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    return None


def pieces(paths, text_field: str = "text", group_field: str | None = None,
           report: ReadReport | None = None) -> Iterator[Piece]:
    """Every document of the corpus as pieces of text, file after file, record after record."""
    report = report if report is not None else ReadReport()
    for path, label in corpus_files(paths, report):
        suffix = path.suffix.lower()
        if suffix != ".parquet":
            why = utf8_problem(path)
            if why is not None:
                report.skip_file(path, why)
                continue
        reader = {".jsonl": _jsonl, ".csv": _csv, ".parquet": _parquet}.get(suffix, _text)
        report.files_read += 1
        yield from reader(path, label, text_field, group_field, report)


def _text(path: Path, label: str, text_field, group_field, report: ReadReport) -> Iterator[Piece]:
    start, carry = 0, ""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            while True:
                block = f.read(PIECE_CHARS)
                text = carry + block
                if not block:
                    break
                cut = text.rfind("\n") + 1 or len(text)
                piece, carry = text[:cut], text[cut:]
                if piece:
                    yield Piece(str(path), label, piece, start, False)
                    start += len(piece)
    except OSError as e:  # vanished or unreadable since it was checked
        report.skip_file(path, f"cannot be read ({e.strerror or e})")
        return
    if not start and not carry.strip():
        report.skip_record(str(path), "empty text")
        return
    yield Piece(str(path), label, carry, start, True)  # may be empty: closes the document


def _record(report: ReadReport, path: Path, where: str, default_id: str, obj: dict, text_field: str,
            group_field: str | None) -> Piece | None:
    text = obj.get(text_field)
    if not isinstance(text, str) or not text.strip():
        report.skip_record(where, f"no text in field {text_field!r}")
        return None
    doc = next((obj[c] for c in ID_COLUMNS if obj.get(c) not in (None, "") and obj.get(c) == obj.get(c)), None)
    group = obj.get(group_field) if group_field else None
    return Piece(str(path), default_id if doc is None else str(doc).strip(), text, 0, True,
                 None if group is None or group != group else str(group))


def _jsonl(path: Path, label: str, text_field, group_field, report: ReadReport) -> Iterator[Piece]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                report.skip_record(where, f"not valid JSON ({e.msg})")
                continue
            if not isinstance(obj, dict):
                report.skip_record(where, f"a JSON {type(obj).__name__}, not an object")
                continue
            piece = _record(report, path, where, f"{label}:{n}", obj, text_field, group_field)
            if piece is not None:
                yield piece


def _frames(path: Path, label: str, batches, text_field, group_field, report: ReadReport) -> Iterator[Piece]:
    row = 0
    for columns in batches:
        if row == 0 and text_field not in columns:
            report.skip_file(path, f"no {text_field!r} column (columns: {', '.join(map(str, columns)) or 'none'})")
            return
        n = len(columns[text_field])
        for i in range(n):
            row += 1
            obj = {k: v[i] for k, v in columns.items()}
            piece = _record(report, path, f"{path}, row {row}", f"{label}:{row}", obj, text_field, group_field)
            if piece is not None:
                yield piece


def _csv(path: Path, label: str, text_field, group_field, report: ReadReport) -> Iterator[Piece]:
    import pandas as pd

    def batches():
        try:
            with pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=ROW_BATCH, encoding="utf-8") as rd:
                for df in rd:
                    yield {c: df[c].tolist() for c in df.columns}
        except pd.errors.EmptyDataError:
            report.skip_file(path, "empty")
        except (pd.errors.ParserError, ValueError) as e:
            report.skip_file(path, f"not a well-formed CSV ({str(e).strip().splitlines()[0]}); rows before the "
                                   "error were read")

    yield from _frames(path, label, batches(), text_field, group_field, report)


def _parquet(path: Path, label: str, text_field, group_field, report: ReadReport) -> Iterator[Piece]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        report.skip_file(path, f"not a readable Parquet file ({str(e).strip().splitlines()[0]})")
        return
    names = pf.schema_arrow.names
    if text_field not in names:
        report.skip_file(path, f"no {text_field!r} column (columns: {', '.join(names) or 'none'})")
        return
    wanted = [c for c in (text_field, *ID_COLUMNS, group_field) if c and c in names]

    def batches():
        try:
            for b in pf.iter_batches(batch_size=ROW_BATCH, columns=list(dict.fromkeys(wanted))):
                yield b.to_pydict()
        except (pa.ArrowException, OSError) as e:
            report.skip_file(path, f"unreadable Parquet data ({str(e).strip().splitlines()[0]}); rows before it "
                                   "were read")

    yield from _frames(path, label, batches(), text_field, group_field, report)
