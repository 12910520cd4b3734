"""The probes' options: which probes, and how hard each one pushes (docs/method.md §3.8).

:class:`ProbeSettings` is one pydantic model: its fields are the keys under ``probes:`` in run configs,
the ``--probe-…`` flags of ``unmemorize unlearn`` and of ``unmemorize probe`` (generated from the same
fields, so the defaults cannot differ). :class:`ProbeSpec` is ``unmemorize probe``'s whole spec.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from unmemorize.models import ModelSource
from unmemorize.options import Options, as_list, option

# name → (title, kind). kind "weights": the probe changes a copy of the weights, then F is profiled;
# "prompt": the weights stay, the prefix the model is given changes; "sampling": the decoding changes.
PROBES: dict[str, tuple[str, str]] = {
    "relearn-reference": ("relearning on ordinary text (no forget sequence in it)", "weights"),
    "relearn-retain": ("relearning on the retain members", "weights"),
    "relearn-forget": ("relearning on one half of the forget set, measured on the other half", "weights"),
    "quant-8bit": ("8-bit round-to-nearest weight quantization", "weights"),
    "quant-4bit": ("4-bit round-to-nearest weight quantization", "weights"),
    "prompt-case": ("the prefix in other letter case", "prompt"),
    "prompt-whitespace": ("the prefix with more whitespace", "prompt"),
    "prompt-truncate": ("a truncated prefix (its last tokens only)", "prompt"),
    "prompt-chat": ("the prefix inside the model's chat template", "prompt"),
    "sampling": ("sampling instead of greedy decoding (one probe per temperature)", "sampling"),
}
GROUPS: dict[str, tuple[str, ...]] = {
    "relearn": ("relearn-reference", "relearn-retain", "relearn-forget"),
    "quantize": ("quant-8bit", "quant-4bit"),
    "prompts": ("prompt-case", "prompt-whitespace", "prompt-truncate", "prompt-chat"),
    "all": tuple(PROBES),
}
ALLOWED = ", ".join([*GROUPS, *PROBES, "none"])


def expand(names) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every probe the names ask for, in registry order; those asked for by their own name). A group
    (relearn, quantize, prompts, all) asks for its members only where the inputs allow them."""
    wanted, explicit = set(), set()
    for n in names:
        if n in GROUPS:
            wanted |= set(GROUPS[n])
        else:
            wanted.add(n)
            explicit.add(n)
    return tuple(p for p in PROBES if p in wanted), tuple(p for p in PROBES if p in explicit)


class ProbeSettings(Options):
    """Robustness probes of the unlearned model (YAML ``probes:``; none by default). A bare name or list
    is ``names``: ``probes: all``, ``probes: [relearn, quantize]``."""

    names: tuple[str, ...] = option((), f"Robustness probes of the unlearned model, comma-separated ({ALLOWED}: "
                                        "no probe).", "--probes", split=True)
    steps: int = option(10, "Relearning: fine-tuning steps n on the copy.", "--probe-steps", ge=1,
                        allowed="a positive number of steps")
    lr: float = option(1e-5, "Relearning: Adam learning rate.", "--probe-lr", gt=0, allowed="a positive number")
    batch_size: int = option(8, "Relearning: rows per step; also sequences per measuring pass.", "--probe-batch",
                             ge=1, allowed="a positive integer")
    temperatures: tuple[float, ...] = option((0.7, 1.0), "Sampling: temperatures, one probe each.",
                                             "--probe-temperatures", split=True)
    samples: int = option(10, "Sampling: samples n drawn per prefix (seeded; the exact probabilities beside).",
                          "--probe-samples", ge=1, allowed="a positive number of samples")
    top_k: int | None = option(40, "Sampling: top-k (none: the full distribution).", "--probe-top-k", ge=1)
    keep: float = option(0.5, "Truncated prefix: share of the prefix's tokens kept (its last ones).", "--probe-keep",
                         gt=0.0, lt=1.0, allowed="a number in (0, 1)")
    prefix: int = option(100, "Extraction window: prefix tokens k (a 'prefix' column wins).", "--probe-prefix", ge=1)
    suffix: int = option(100, "Extraction window: true suffix tokens m.", "--probe-suffix", ge=1)
    el_for: Literal["extractable", "all"] = option(
        "extractable", "Which sequences get EL_10 after a weight probe: extractable = MA at or above the band's top "
                       "(as the audit), all = every one (slow: greedy decoding from every disagreement).",
        "--probe-el-for")
    margin: float = option(0.05, "A sequence has resurfaced when the probe lifts its measure (MA; for prompt and "
                                 "sampling probes the matched share of the suffix) more than this above the oracle's "
                                 "(without an oracle: above its own level before the probe).", "--probe-margin",
                           ge=0.0, le=1.0, allowed="a number in [0, 1]")
    seed: int = option(0, "Seed of the probes (relearning order and initialisation, the forget halves, the samples).",
                       "--probe-seed")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"names": value} if isinstance(value, (str, list, tuple)) else value

    @field_validator("names", mode="before")
    @classmethod
    def _names(cls, v):
        if v is None:
            return ()
        v = as_list(v)
        if isinstance(v, (list, tuple)) and len(v) == 1 and isinstance(v[0], str) and "," in v[0]:
            v = [w.strip() for w in v[0].split(",") if w.strip()]
        return tuple(v)

    @field_validator("names")
    @classmethod
    def _known(cls, v):
        words = tuple(str(n).strip().lower() for n in v)
        if words in ((), ("none",)):
            return ()
        unknown = [n for n in words if n not in PROBES and n not in GROUPS]
        if unknown:
            raise ValueError(f"unknown probe {', '.join(map(repr, unknown))}; choose from {ALLOWED}")
        return tuple(dict.fromkeys(words))

    @field_validator("temperatures", mode="before")
    @classmethod
    def _temperature_list(cls, v):
        return as_list(v)

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, v):
        if not v:
            raise ValueError("give at least one sampling temperature (e.g. 0.7,1.0)")
        bad = [t for t in v if not t > 0]
        if bad:
            raise ValueError(f"sampling temperatures must be > 0, got {', '.join(map(str, bad))}")
        return tuple(dict.fromkeys(float(t) for t in v))

    def probes(self) -> tuple[str, ...]:
        """Every probe asked for (groups expanded), in registry order."""
        return expand(self.names)[0]


class ProbeSpec(Options):
    """``unmemorize probe``: does the forgotten text come back? Robustness probes of an unlearned model,
    with the same probes on the retrain oracle as the baseline."""

    model: ModelSource = option(ModelSource(), "The unlearned model U (only read: every probe works on a copy).")
    original: str = option(..., "The model before unlearning M (how memorized each sequence was).", "--original")
    oracle: str | None = option(None, "The retrain oracle O (never saw the forget set): the same probes on it are the "
                                      "baseline.", "--oracle")
    forget: Path = option(..., "The forget set F: CSV, JSONL, text file or folder.", "--forget", "-f")
    reference: Path | None = option(None, "Ordinary text with none of F (relearning data; default: Python "
                                          "standard-library docstrings).", "--reference", "-r")
    retain_members: Path | None = option(None, "The retain set (members that stay memorized): relearn-retain "
                                               "fine-tunes on it.", "--retain-members")
    length: int = option(200, "Tokens per sequence T.", ge=2, allowed="an integer ≥ 2 (tokens per sequence)")
    probes: ProbeSettings = option(ProbeSettings(names=("all",)), "The probes and their settings.")

    @field_validator("reference", "retain_members", mode="before")
    @classmethod
    def _no_empty_path(cls, v):
        return None if v in (None, "") else v

    @field_validator("original", "oracle", mode="before")
    @classmethod
    def _path_text(cls, v):
        return str(v) if isinstance(v, os.PathLike) else v
