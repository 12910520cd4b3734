"""The attack registry and the context every attack reads from.

An attack follows one template (OpenUnlearning's MIA template, STYLE.md): an optional ``setup``
that calibrates on both sets (e.g. τ for the threshold attack), a ``score`` that returns one row per
sequence of one part (column ``score``, higher = member, plus any per-sequence extras), and an
optional ``summarize`` over both parts' rows. Turning scores into AUC and TPR@FPR happens in one
place (:mod:`unmemorize.attacks.scoring`), never inside an attack.

The context computes what several attacks share — one teacher-forced pass per set and model — once,
on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unmemorize.data import SequenceSet
from unmemorize.errors import UserError
from unmemorize.thresholds import Band

MEMBERS, NONMEMBERS = "forget", "reference"
PARTS = (MEMBERS, NONMEMBERS)


@dataclass
class AttackOptions:
    """Every knob of every attack, with the paper's defaults where it has one."""

    attacks: tuple[str, ...] | None = None  # None: every registered attack the inputs allow
    # MIAU neighbourhood (PAPER_SPEC §3.3)
    neighbours: int = 25  # K
    perturber: str = "lm"  # a name in perturb.PERTURBERS
    t5_path: str | None = None  # local T5 folder for perturber "t5"
    mask_fraction: float = 0.3  # share of the words masked
    span_words: int = 2  # words per masked span
    refill_top_k: int | None = 50  # LM refill sampling (HF's default); None = the full distribution (noisy fills)
    refill_temperature: float = 1.0
    neighbour_cache: Path | None | bool = True  # True: <cache_dir>/neighbours; False/None: no cache
    # likelihood attacks
    min_k: float = 0.2  # k for min-k% and min-k%++ (Shi et al. / Zhang et al. recommend 20%)
    # threshold attack on g(x) (PAPER_SPEC §3.2)
    tau: float | None = None  # None: mean g on the reference set
    band: Band = field(default_factory=Band)
    # sampling extraction
    samples: int = 10  # N samples per prefix
    top_k: int | None = 40
    temperature: float = 1.0
    extraction_prefix: int = 100  # k prefix tokens (a per-row 'prefix' column wins, as in the audit)
    extraction_suffix: int = 100  # m true suffix tokens
    first_tokens: int = 50  # also count samples that reproduce the first m' tokens
    # scoring
    fprs: tuple[float, ...] | None = None  # None: 1% and 0.1% where the reference set can resolve them
    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    batch_size: int = 8

    def as_dict(self) -> dict:
        """Every knob as plain data (the band as {lo, hi}), for manifests and result files."""
        return {**asdict(self), "band": {"lo": self.band.lo, "hi": self.band.hi}}

    def validate(self, names: tuple[str, ...]) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise UserError(msg)

        if "miau" in names:
            need(self.neighbours >= 1, f"--neighbours (K) must be at least 1 for MIAU, got {self.neighbours}")
            need(0.0 < self.mask_fraction < 1.0, f"--mask-fraction must lie in (0, 1), got {self.mask_fraction}")
            need(self.span_words >= 1, f"--span-words must be at least 1, got {self.span_words}")
            need(self.refill_temperature > 0, f"refill temperature must be > 0, got {self.refill_temperature}")
            need(self.refill_top_k is None or self.refill_top_k >= 1, f"refill top-k must be ≥ 1, got {self.refill_top_k}")
        need(0.0 < self.min_k <= 1.0, f"--min-k must lie in (0, 1], got {self.min_k}")
        need(self.samples >= 1, f"--samples must be at least 1, got {self.samples}")
        need(self.top_k is None or self.top_k >= 1, f"--top-k must be at least 1 (or none), got {self.top_k}")
        need(self.temperature > 0, f"--temperature must be > 0, got {self.temperature}")
        need(self.extraction_prefix >= 1 and self.extraction_suffix >= 1 and self.first_tokens >= 1,
             "extraction prefix, suffix and first-tokens must each be at least 1 token")
        need(self.bootstrap >= 0, f"--bootstrap must be ≥ 0, got {self.bootstrap}")
        need(0.0 < self.confidence < 1.0, f"confidence must lie in (0, 1), got {self.confidence}")
        need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class AttackContext:
    """The inputs of one attack run, and the shared computations on them (computed once, on use)."""

    model: Any
    tokenizer: Any
    sets: dict[str, SequenceSet]  # MEMBERS → forget set, NONMEMBERS → reference set
    options: AttackOptions
    original: Any = None  # the pre-unlearning model, for the reference attack
    perturber: Any = None  # a perturb.Perturber, for MIAU
    neighbour_cache: Any = None  # a perturb.NeighbourCache, for MIAU
    progress: Any = None
    _memo: dict = field(default_factory=dict, repr=False)

    def cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def setup(self, name: str) -> dict:
        """The attack's calibration on both sets (its ``setup``), computed once."""
        fn = ATTACKS[name].setup
        return self.cached(("setup", name), lambda: fn(self) if fn is not None else {})

    def stats(self, part: str):
        """Token statistics of the attacked model on one part (one teacher-forced pass)."""
        from unmemorize.attacks.tokens import token_statistics

        o = self.options
        return self.cached(("stats", part), lambda: token_statistics(
            self.model, self.sets[part], top_k=o.top_k, temperature=o.temperature, batch_size=o.batch_size,
            progress=self.progress, label=part))

    def original_log_likelihood(self, part: str) -> np.ndarray:
        from unmemorize.attacks.tokens import mean_log_likelihood

        seqs = self.sets[part]
        return self.cached(("original_ll", part), lambda: mean_log_likelihood(
            self.original, seqs.input_ids, seqs.lengths, batch_size=self.options.batch_size,
            progress=self.progress, label=f"original model log-likelihood {part}"))


Score = Callable[[AttackContext, str], pd.DataFrame]


@dataclass(frozen=True)
class Attack:
    name: str
    title: str
    source: str  # the paper that defines it, and the PAPER_SPEC section where there is one
    score: Score
    setup: Callable[[AttackContext], dict] | None = None
    summarize: Callable[[AttackContext, dict[str, pd.DataFrame]], dict] | None = None
    needs_original: bool = False


ATTACKS: dict[str, Attack] = {}


def attack(name: str, *, title: str, source: str, setup=None, summarize=None, needs_original: bool = False):
    """Register a score function ``fn(ctx, part) -> DataFrame`` as the attack ``name``."""
    def register(fn: Score) -> Score:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} registered twice")
        ATTACKS[name] = Attack(name, title, source, fn, setup, summarize, needs_original)
        return fn
    return register
