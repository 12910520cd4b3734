"""Windows of T tokens cut from a stream of documents, repeated windows dropped.

Where windows start (:func:`window_spans`, pure): at tokens 0, s, 2s, … of a document (s: the
stride), each T tokens long or up to the document's end, and none after the first that reaches the
end; windows shorter than ``min_tokens`` (document ends) are dropped. ``s = T`` cuts consecutive
windows, ``s < T`` overlapping ones (every token is in a window whose start is at most s tokens
before it), ``s > T`` samples. :class:`DocumentWindows` cuts the same windows from a document that
arrives in pieces, without holding more of it than one window.

Repeated windows (:class:`Dedup`): an exact duplicate has the same token ids as an earlier window
(a 64-bit BLAKE2 hash of them, kept per window: about 70 bytes each); a near duplicate's token
5-grams have Jaccard similarity at least the threshold with an earlier kept window's (MinHash with
128 permutations and LSH, from ``datasketch``: an estimate, seeded, so the same corpus drops the
same windows; about 1 KB per window). The first occurrence in corpus order is kept.

:func:`windows` puts reading, tokenization, cutting and deduplication together: the stream of
kept windows, numbered in corpus order, the same on every run and every process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from unmemorize.scan.reading import Piece, ReadReport, pieces

SHINGLE = 5  # tokens per shingle for near duplicates
NUM_PERM = 128
TOKENIZE_CHARS = 1 << 20  # characters tokenized in one batched call
TOKENIZE_PIECES = 256


def window_spans(n: int, length: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) of the windows of a document of ``n`` tokens (before ``min_tokens``)."""
    if length < 1 or stride < 1:
        raise ValueError("length and stride must be at least 1")
    out, s = [], 0
    while s < n:
        e = min(s + length, n)
        out.append((s, e))
        if e == n:
            break
        s += stride
    return out


@dataclass
class Window:
    """One window: where it comes from and its tokens."""

    source: str
    doc: str
    token_offset: int  # first token's index in the document
    char_offset: int  # where that token starts in the document's text (the tokenizer's offsets)
    tokens: list[int]
    group: str | None = None

    @property
    def id(self) -> str:
        return f"{self.doc}@{self.token_offset}"


class DocumentWindows:
    """The windows of :func:`window_spans` for a document fed in pieces: :meth:`feed` returns the
    windows complete so far, :meth:`finish` the rest once the document's length is known."""

    def __init__(self, length: int, stride: int):
        self.length, self.stride = length, stride
        self.base = 0  # document index of the first buffered token
        self.tokens: list[int] = []
        self.chars: list[int] = []  # character offset of each buffered token
        self.n = 0  # tokens fed so far
        self.next = 0  # start of the next window
        self.last_end = 0  # end of the last window cut (0: none yet)

    def _cut(self, s: int, e: int) -> tuple[int, int, list[int]]:
        self.last_end = e
        return s, self.chars[s - self.base], self.tokens[s - self.base:e - self.base]

    def feed(self, tokens: list[int], chars: list[int]) -> list[tuple[int, int, list[int]]]:
        """(token offset, char offset, tokens) of each window that these tokens complete."""
        self.tokens += tokens
        self.chars += chars
        self.n += len(tokens)
        out = []
        while self.next + self.length <= self.n:
            out.append(self._cut(self.next, self.next + self.length))
            self.next += self.stride
        keep = min(self.next, self.n) - self.base  # nothing before the next start is needed again
        if keep > 0:
            del self.tokens[:keep], self.chars[:keep]
            self.base += keep
        return out

    def finish(self) -> list[tuple[int, int, list[int]]]:
        out = []
        while self.next < self.n and self.last_end < self.n:
            out.append(self._cut(self.next, min(self.next + self.length, self.n)))
            self.next += self.stride
        return out


def token_hash(tokens) -> bytes:
    """64-bit BLAKE2 hash of a window's token ids (as int64, so that it does not depend on the list type)."""
    return hashlib.blake2b(np.asarray(tokens, dtype=np.int64).tobytes(), digest_size=8).digest()


class Dedup:
    """Drops exact and (``mode="near"``) near-duplicate windows; the first occurrence is kept."""

    def __init__(self, mode: str = "exact", threshold: float = 0.8):
        self.mode = mode
        self.seen: set[bytes] = set()
        self.exact = self.near = 0
        self.lsh = None
        if mode == "near":
            from datasketch import MinHash, MinHashLSH

            self._proto = MinHash(num_perm=NUM_PERM, seed=1)
            self._minhash = MinHash
            self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)

    def keep(self, tokens: list[int]) -> bool:
        if self.mode == "none":
            return True
        h = token_hash(tokens)
        if h in self.seen:
            self.exact += 1
            return False
        self.seen.add(h)
        if self.lsh is not None:
            arr = np.asarray(tokens, dtype=np.int64)
            grams = np.lib.stride_tricks.sliding_window_view(arr, SHINGLE) if len(arr) >= SHINGLE else arr[None, :]
            m = self._minhash(num_perm=NUM_PERM, seed=1, permutations=self._proto.permutations,
                              scheme=self._proto.scheme)
            m.update_batch([g.tobytes() for g in grams])
            if self.lsh.query(m):
                self.near += 1
                return False
            self.lsh.insert(h, m)
        return True


@dataclass
class StreamCounts:
    """What the window stream did, for the summary."""

    documents: int = 0
    tokens: int = 0  # tokens in the documents
    windows_cut: int = 0
    too_short: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    windows: int = 0  # kept
    groups: set = field(default_factory=set)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "groups"}


def _tokenized(batch: list[Piece], tokenizer) -> list[tuple[list[int], list[int]]]:
    """(token ids, character offset of each token in its piece) for each piece."""
    texts = [p.text for p in batch]
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [(ids, [a for a, _ in offs]) for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])]
    out = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:  # slow tokenizers: decode the prefixes
        out.append((ids, [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]))
    return out


def _batches(stream: Iterator[Piece]) -> Iterator[list[Piece]]:
    batch, chars = [], 0
    for p in stream:
        batch.append(p)
        chars += len(p.text)
        if chars >= TOKENIZE_CHARS or len(batch) >= TOKENIZE_PIECES:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def windows(paths, tokenizer, length: int, stride: int, min_tokens: int = 2, *, text_field: str = "text",
            group_field: str | None = None, dedup: str = "exact", near_threshold: float = 0.8,
            report: ReadReport | None = None, counts: StreamCounts | None = None) -> Iterator[Window]:
    """The kept windows of the corpus ``paths``, in corpus order (``report`` and ``counts`` filled as it goes)."""
    report = report if report is not None else ReadReport()
    counts = counts if counts is not None else StreamCounts()
    drop = Dedup(dedup, near_threshold)
    doc: DocumentWindows | None = None
    for batch in _batches(pieces(paths, text_field, group_field, report)):
        for piece, (ids, chars) in zip(batch, _tokenized(batch, tokenizer)):
            if doc is None:
                doc = DocumentWindows(length, stride)
                counts.documents += 1
                if piece.group is not None:
                    counts.groups.add(piece.group)
            counts.tokens += len(ids)
            cut = doc.feed(ids, [piece.char_start + c for c in chars])
            if piece.last:
                cut += doc.finish()
                doc = None
            for s, c, toks in cut:
                counts.windows_cut += 1
                if len(toks) < min_tokens:
                    counts.too_short += 1
                    continue
                if not drop.keep(toks):
                    counts.exact_duplicates, counts.near_duplicates = drop.exact, drop.near
                    continue
                counts.windows += 1
                yield Window(piece.source, piece.doc, s, c, toks, piece.group)
