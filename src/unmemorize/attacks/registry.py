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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pydantic import field_validator, model_validator

from unmemorize.data import SequenceSet
from unmemorize.options import Options, as_list, option
from unmemorize.thresholds import Band

MEMBERS, NONMEMBERS = "forget", "reference"
PARTS = (MEMBERS, NONMEMBERS)


class AttackSettings(Options):
    """Every knob of every attack, with the paper's defaults where it has one (YAML ``attacks:``).

    ``names`` None runs every registered attack the inputs allow except sampling extraction, which
    decodes N samples per prefix (minutes per sequence on a CPU): ask for it by name.
    """

    names: tuple[str, ...] | None = option(
        None, "Comma-separated attacks (miau, threshold, loss, zlib, min-k, min-k++, reference, sampling; default: "
              "every one the inputs allow but sampling).", "--attacks", "-a", split=True)
    before: bool = option(True, "Unlearning runs: also attack the original model before unlearning.",
                          "--attacks-before/--no-attacks-before")
    # MIAU neighbourhood (docs/method.md §3.3)
    neighbours: int | None = option(
        None, "MIAU: neighbours per sequence (K). Default auto: the paper's 25 on a GPU; on a CPU the most that keep "
              "an unlearning run's attacks within about 7 minutes per 8 members (the attack plan line says which).",
        "--neighbours", "-k", ge=1, allowed="a positive integer (at least 1)")
    nonmembers: int | None = option(
        None, "Attacks: use at most this many non-members (a seeded sample of the reference set). Default auto: "
              "all, except on a CPU where a reference set too large for the time of the attack plan is sampled down.",
        "--nonmembers", ge=1, allowed="a positive integer (at least 1)")
    perturber: str = option("auto", "MIAU neighbours, refilled offline by a causal LM: lm-independent (each span given "
                                    "the original text to its left; all of a text's spans share one prefill), lm (each span given "
                                    "the text refilled so far; about one pass per neighbour); auto (default): lm-independent, "
                                    "else lm where the model cannot take it (GPT-Neo's local attention). Or t5 (needs "
                                    "--t5), words (cheap, for tests).")
    t5_path: str | None = option(None, "Local T5 folder for --perturber t5 (never downloaded).", "--t5")
    mask_fraction: float = option(0.3, "MIAU: share of the words masked.", gt=0.0, lt=1.0,
                                  allowed="a number in (0, 1)")
    span_words: int = option(2, "MIAU: words per masked span.", ge=1)
    refill_model: str | None = option(
        None, "MIAU lm perturbers: the model that refills the masked spans (default: the original). One that never "
              "saw the forget set keeps neighbours from leaning towards the memorized words.")
    refill_top_k: int | None = option(50, "MIAU lm perturbers: sample refills from the top k tokens (none: all).", ge=1)
    refill_temperature: float = option(1.0, "MIAU lm perturbers: sampling temperature.", gt=0)
    neighbour_cache: bool | Path = option(True, "Reuse neighbours cached on disk (they hold perturbed copies of the "
                                                "texts); a folder, or true for the user cache.",
                                          "--neighbour-cache/--no-neighbour-cache")
    # likelihood attacks
    min_k: float = option(0.2, "k for min-k% and min-k%++ (fraction of tokens).", gt=0.0, le=1.0,
                          allowed="a number in (0, 1]")
    # sampling extraction
    samples: int = option(10, "Sampling extraction: samples per prefix (N).", ge=1)
    top_k: int | None = option(40, "Sampling extraction: top-k (none: the full distribution).", ge=1)
    temperature: float = option(1.0, "Sampling extraction: temperature.", gt=0)
    extraction_prefix: int = option(100, "Sampling extraction: prefix tokens k (a 'prefix' column wins).",
                                    "--prefix-tokens", ge=1)
    extraction_suffix: int = option(100, "Sampling extraction: true suffix tokens m.", "--suffix-tokens", ge=1)
    first_tokens: int = option(50, "Sampling extraction: also count samples reproducing the first m' tokens.", ge=1)
    # scoring
    fprs: tuple[float, ...] | None = option(
        None, "False-positive rates for TPR@FPR (default: 0.01 and 0.001 where the non-members resolve them).",
        "--fpr")
    bootstrap: int = option(1000, "Bootstrap replicates for the 95% intervals (0: none).", ge=0)
    confidence: float = option(0.95, "Confidence level of the intervals.", gt=0.0, lt=1.0)
    batch_size: int = option(8, "Attacks: sequences per forward pass.", "--attack-batch-size", ge=1)
    match_by: str | None = option("auto", "Match the non-members to the members by this column (kind of text), so that "
                                          "a difference of kind cannot make an AUC: 'auto' = the corpus column when "
                                          "both sets have one; none = no matching.")

    @field_validator("match_by", mode="before")
    @classmethod
    def _none_word(cls, v):
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "off") else v

    @field_validator("fprs", mode="before")
    @classmethod
    def _fpr_list(cls, v):
        return as_list(v)

    @field_validator("fprs")
    @classmethod
    def _fprs_in_range(cls, v):
        for a in v or ():
            if not 0.0 < a < 1.0:
                raise ValueError(f"false-positive rate {a} must lie strictly between 0 and 1 (e.g. 0.01 for 1%)")
        return v

    @field_validator("names", mode="before")
    @classmethod
    def _names_list(cls, v):
        return as_list(v)

    @field_validator("names")
    @classmethod
    def _known_names(cls, v):
        unknown = [n for n in v or () if n not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack {unknown[0]!r}; allowed: {', '.join(ATTACKS)}")
        return v

    @field_validator("perturber")
    @classmethod
    def _known_perturber(cls, v):
        from unmemorize.attacks.perturb import PERTURBERS

        if v not in PERTURBERS:
            raise ValueError(f"unknown perturber {v!r}; allowed: {', '.join(PERTURBERS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        miau = self.names is None or "miau" in self.names
        if miau and self.perturber == "t5" and not self.t5_path:
            raise ValueError("perturber t5 needs t5_path (--t5), a local T5 folder (it is never downloaded)")
        from unmemorize.attacks.perturb import LM_PERTURBERS

        if self.refill_model is not None and not (miau and self.perturber in LM_PERTURBERS):
            raise ValueError("refill_model (--refill-model) is for MIAU's lm perturbers: run miau with perturber "
                             f"{' or '.join(LM_PERTURBERS)}")
        return self


class AttackOptions(AttackSettings):
    """The settings plus what a caller decides: the threshold attack's τ and band, and the seed of
    every random draw (neighbours, samples, bootstrap)."""

    tau: float | None = option(None, "Threshold attack: τ (default: mean g on the non-members).", ge=0.0, le=1.0,
                               yaml=False)
    band: Band = option(Band(), "Threshold attack: the acceptable band.", yaml=False)
    seed: int = option(0, "Random seed of the attacks.", yaml=False)
    tau_source: str | None = option(None, "Where a τ the caller passed came from (recorded in the threshold attack's "
                                          "calibration; default: 'given').", yaml=False)

    def as_dict(self) -> dict:
        """Every knob as plain data (the band as {lo, hi}), for manifests and result files."""
        return {**self.model_dump(mode="json"), "band": {"lo": self.band.lo, "hi": self.band.hi}}


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
    plan: Any = None  # the plan.AttackPlan that resolved K and the non-members
    # token statistics a caller already has, by part: the same model, rows and options (top_k, temperature),
    # so that a pass made for τ before matching is not made again for the attacks
    given_stats: dict = field(default_factory=dict)
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
        from unmemorize.attacks.tokens import attack_statistics

        if part in self.given_stats:
            return self.given_stats[part]
        return self.cached(("stats", part), lambda: attack_statistics(
            self.model, self.sets[part], self.options, self.progress, part))

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
    source: str  # the paper that defines it, and the docs/method.md section where there is one
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
