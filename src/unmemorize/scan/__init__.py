"""`unmemorize scan`: which windows of a corpus does a model give back?

The corpus is streamed (:mod:`.reading`), cut into windows of T tokens and deduplicated
(:mod:`.windows`), every window's MA and loss measured in length-sorted batches through the one
teacher-forced pass (:mod:`.measure`), chunk by chunk to disk so that an interrupted scan continues
where it stopped (:mod:`.store`). τ comes from unseen reference text (per group with ``--tau-by``,
:mod:`unmemorize.thresholds`); the windows are ranked by MA − τ (:mod:`.rank`); the top ``k`` (and
every window at or above ``--above``) get EL_n and exact extraction
(:func:`unmemorize.memorization.profile`), a table, a histogram against τ, an HTML report and a
forget file for ``unmemorize unlearn`` (:mod:`.output`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import field_validator, model_validator

from unmemorize.errors import UserError
from unmemorize.memorization import ProfileOptions
from unmemorize.models import ModelSource
from unmemorize.options import Options, option
from unmemorize.thresholds import Band, acceptable_level, acceptable_level_by_group, group_key, parse_level

Dedup = Literal["exact", "near", "none"]


class ScanSpec(Options):
    """One scan (``unmemorize scan``): the windows of a corpus a model memorized, against unseen text."""

    model: ModelSource = option(ModelSource(), "The model to scan with (only read).")
    corpus: tuple[Path, ...] = option(..., "Documents to scan: folders (their .txt/.md/.rst, .jsonl, .csv and "
                                           ".parquet files, recursively) or such files; repeat the flag for more.",
                                      "--corpus", "-c", min_length=1)
    reference: Path | None = option(None, "Unseen text of the same form, for τ.", "--reference", "-r")
    tau: float | None = option(None, "Use this τ instead of the reference's mean MA.", ge=0.0, le=1.0)
    tau_by: str | None = option(None, "A field of both the corpus records and the reference (e.g. corpus): τ per "
                                      "group, and windows ranked by MA − τ of their group.")
    length: int = option(200, "Tokens per window T.", ge=2)
    stride: int | None = option(None, "Tokens from one window's start to the next (default: T, windows side by "
                                      "side; less: overlapping).", ge=1)
    min_tokens: int = option(32, "Windows shorter than this (the ends of documents) are dropped.", ge=2)
    text_field: str = option("text", "The field (JSONL, Parquet) or column (CSV) that holds a record's text.")
    dedup: Dedup = option("exact", "Repeated windows dropped (the first kept): exact = the same token ids; near = "
                                   "also token 5-gram Jaccard ≥ --near-threshold with an earlier window (MinHash "
                                   "LSH, about 1 KB of memory per window); none.")
    near_threshold: float = option(0.8, "Jaccard similarity from which a window is a near duplicate.", gt=0.0, lt=1.0)
    top: int = option(100, "The most memorized windows to rank, measure in depth (EL_n, extraction) and put in "
                           "forget.jsonl (0: only those of --above).", ge=0)
    above: str | None = option(None, "Also every window with MA at or above this level: a number, or relative to "
                                     "τ (tau+0.3, 1.5tau).")
    chunk: int = option(4096, "Windows per chunk of results on disk: the unit an interrupted scan resumes from.",
                        ge=1)
    band: Band = option(Band("tau-0.15", "tau+0.3"), "The acceptable band of g(x) (its top: extractable); relative "
                                                     "to τ by default (docs/method.md §4.13).")
    profile: ProfileOptions = option(ProfileOptions(metrics=("ma", "el", "extraction")),
                                     "What the candidates get (--batch-size is the corpus pass's too).")

    @field_validator("above")
    @classmethod
    def _level(cls, value):
        if value is not None:
            parse_level(value)
        return value

    @model_validator(mode="after")
    def _complete(self):
        if self.reference is None and self.tau is None:
            raise ValueError("give --reference FILE (unseen text of the same form) or --tau VALUE")
        if self.top == 0 and self.above is None:
            raise ValueError("nothing to rank: give --top N (N > 0) or --above LEVEL")
        if self.profile.parity:
            raise ValueError("scan measures windows with padding masked; parity is for audit and unlearn")
        return self

    @property
    def step(self) -> int:
        return self.stride or self.length


@dataclass
class Levels:
    """τ: the global one, one per group of the reference, and the reference's profile."""

    tau: float
    by_group: dict[str, float]
    reference: pd.DataFrame
    source: str  # in words
    given: bool = False
    missing: set = field(default_factory=set)  # corpus groups without reference text

    def __post_init__(self):
        self._keys = {group_key(g): t for g, t in self.by_group.items()}

    def of(self, group: str | None) -> float:
        if group is None or not self.by_group:
            return self.tau
        t = self._keys.get(group_key(group))
        if t is None:
            self.missing.add(group)
            return self.tau
        return t


@dataclass
class ScanResult:
    top: pd.DataFrame  # the ranked windows: offsets, MA, loss, τ, EL_n, extraction, text
    documents: pd.DataFrame  # one row per document: its best window, windows, mean MA
    ma: np.ndarray  # MA of every window (for the histogram)
    levels: Levels
    counts: dict  # reading, windows, duplicates
    timings: dict  # seconds per stage, rates
    warnings: list[str] = field(default_factory=list)
    el_n: int = 10
    band: Band = field(default_factory=Band)
    group_field: str | None = None


def reference_levels(model, tokenizer, spec: ScanSpec, progress=None) -> Levels:
    """τ from the reference (mean MA; per group with ``tau_by``) or the given value."""
    from unmemorize.data import load_sequences
    from unmemorize.memorization import profile

    if spec.reference is None:
        return Levels(float(spec.tau), {}, pd.DataFrame(), "a given value", given=True)
    ref = load_sequences(spec.reference, tokenizer, spec.length)
    opts = ProfileOptions(metrics=("ma", "loss"), batch_size=spec.profile.batch_size)
    prof = profile(model, ref, opts, progress)
    tau = float(spec.tau) if spec.tau is not None else acceptable_level(prof["ma"])
    by_group = acceptable_level_by_group(prof, spec.tau_by) if spec.tau_by else {}
    return Levels(tau, by_group, prof, f"{ref.source} ({len(ref)} sequences)", given=spec.tau is not None)


def settings(spec: ScanSpec, fingerprint: str, reference_sha: str | None) -> dict:
    """Everything that decides the chunks on disk: a resumed scan must have the same."""
    from unmemorize.scan.reading import listing

    kept = spec.model_dump(mode="json", exclude={"model", "band", "profile", "corpus"})
    return {**kept, "model": fingerprint, "reference_sha256": reference_sha, "corpus": listing(spec.corpus)}


def scan(model, tokenizer, spec: ScanSpec, levels: Levels, store, progress=None, log=print) -> ScanResult:
    """The corpus pass (chunks measured or found on disk) and the candidates' EL_n and extraction."""
    from unmemorize.models import check_context
    from unmemorize.progress import task
    from unmemorize.scan import measure as m
    from unmemorize.scan.output import collect, rank_table
    from unmemorize.scan.reading import ReadReport
    from unmemorize.scan.windows import StreamCounts, windows

    check_context(model, spec.length)
    spec = spec.replace(band=spec.band.at(levels.tau))  # a band relative to τ, in numbers at the global τ
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    report, counts = ReadReport(), StreamCounts()
    stream = windows(spec.corpus, tokenizer, spec.length, spec.step, spec.min_tokens, text_field=spec.text_field,
                     group_field=spec.tau_by, dedup=spec.dedup, near_threshold=spec.near_threshold, report=report,
                     counts=counts)
    t0 = time.perf_counter()
    measured = resumed = measured_tokens = 0
    forward_s = 0.0
    with task(progress, "scan", None) as bar:
        rate = m.Rate(bar)
        for c, chunk in enumerate(_chunks(stream, spec.chunk)):
            if c in store.done:
                store.check(c, [w.id for w in chunk])
                resumed += 1
                continue
            f0 = time.perf_counter()
            ma, loss = m.measure_shared(model, [w.tokens for w in chunk], pad_id, spec.profile.batch_size, rate)
            forward_s += time.perf_counter() - f0
            store.write(c, chunk_frame(chunk, c * spec.chunk, ma, loss, levels, spec))
            measured += len(chunk)
            measured_tokens += sum(len(w.tokens) for w in chunk)
        bar.update(total=rate.windows, completed=rate.windows)  # the closing line, with the rates
    corpus_s = time.perf_counter() - t0
    for g in counts.groups:  # note the groups without reference text, resumed chunks included
        levels.of(g)
    if counts.windows == 0:
        store.remove()
        problems = "; ".join(report.warnings()[:3])
        raise UserError(f"the corpus gives no window to measure ({counts.documents} document(s), "
                        f"{counts.windows_cut} window(s) cut, {counts.too_short} under --min-tokens "
                        f"{spec.min_tokens}){': ' + problems if problems else ''}")
    log(f"{counts.windows} windows ({resumed} chunk(s) from an interrupted run); ranking and measuring candidates")
    t1 = time.perf_counter()
    bundle = collect(store, spec, levels)
    top = rank_table(model, tokenizer, bundle["candidates"], spec, levels, progress)
    warnings = report.warnings()
    if levels.missing:
        missing = ", ".join(sorted(map(str, levels.missing))[:8])
        warnings.append(f"--tau-by {spec.tau_by}: no reference text for {missing}; those windows are held against "
                        f"the global τ = {levels.tau:.3f}")
    timings = {"corpus_s": corpus_s, "forward_s": forward_s, "candidates_s": time.perf_counter() - t1,
               "windows_measured": measured, "tokens_measured": measured_tokens, "chunks_resumed": resumed,
               "windows_per_s": measured / corpus_s if corpus_s > 0 else float("nan"),
               "tokens_per_s": measured_tokens / corpus_s if corpus_s > 0 else float("nan")}
    return ScanResult(top, bundle["documents"], bundle["ma"], levels, {**counts.as_dict(), **report.as_dict()},
                      timings, warnings, spec.profile.el_n, spec.band, spec.tau_by)


def _chunks(stream, size: int):
    chunk = []
    for w in stream:
        chunk.append(w)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def chunk_frame(chunk, first: int, ma: np.ndarray, loss: np.ndarray, levels: Levels, spec: ScanSpec) -> pd.DataFrame:
    """One chunk's rows; the tokens only of the chunk's candidates (its own top k, and those at or above the level)."""
    from unmemorize.scan.rank import candidates
    from unmemorize.thresholds import resolve_level

    tau = np.array([levels.of(w.group) for w in chunk], dtype=float)
    index = np.arange(first, first + len(chunk))
    level = None if spec.above is None else resolve_level(spec.above, tau)
    keep = candidates(ma - tau, loss, index, ma, level, spec.top)
    frame = pd.DataFrame({
        "index": index, "id": [w.id for w in chunk], "source": [w.source for w in chunk],
        "doc": [w.doc for w in chunk], "token_offset": [w.token_offset for w in chunk],
        "char_offset": [w.char_offset for w in chunk], "length": [len(w.tokens) for w in chunk],
        "ma": ma, "loss": loss, "tau": tau, "excess": ma - tau,
        "level": np.nan if level is None else np.broadcast_to(level, tau.shape),
    })
    if spec.tau_by:
        frame["group"] = [w.group for w in chunk]
    frame["tokens"] = [list(map(int, w.tokens)) if k else None for w, k in zip(chunk, keep)]
    return frame


def scan_run(spec: ScanSpec, out: str | Path, *, overwrite: bool = False, progress=None, log=print
             ) -> tuple[ScanResult, Path]:
    """``unmemorize scan``'s work: load, τ, the corpus pass (resumable), the candidates, the run folder
    ``out`` (top.csv, documents.csv, forget.jsonl, windows/, histogram, report.html, manifest.json)."""
    from unmemorize import distributed
    from unmemorize.models import check_context
    from unmemorize.runs import RunDir, sha256_path
    from unmemorize.scan.output import write_scan
    from unmemorize.scan.store import PartialScan

    # the output folder is checked before any slow work; under a launch rank 0 writes `out`
    with RunDir(distributed.output_dir(out), overwrite) as run:
        lm = spec.model.load(log=log)
        check_context(lm.model, spec.length)
        levels = reference_levels(lm.model, lm.tokenizer, spec, progress)
        ref_sha = None if spec.reference is None else sha256_path(spec.reference)
        store = PartialScan(out, settings(spec, lm.fingerprint, ref_sha), discard=overwrite)
        if store.done:
            log(f"Continuing the interrupted scan in {store.dir}: {len(store.done)} chunk(s) done.")
        result = scan(lm.model, lm.tokenizer, spec, levels, store, progress, log)
        write_scan(run, result, spec, lm, store)
        path = run.commit()
    store.remove()
    return result, path
