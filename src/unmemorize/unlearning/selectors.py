"""Selectors: which sequences of a micro-batch receive gradient this step (docs/method.md §4.2).

A selector sees the micro-batch's current memorization scores g(x) (MA measured on the weights the
gradient is taken at; NaN = not measured, which counts as selected, as in the code's
``scores.get(doc_id, default=γ)``) and which rows are *eligible* (the per-sequence stop rule takes
sequences already inside the band out), and returns a boolean mask. Selectors are independent of
losses: ``threshold:0.7`` turns gradient ascent into SGA and NPO into selective NPO.

Spelled on the command line as ``all``, ``threshold:γ`` or ``top:k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unmemorize.errors import UserError


@dataclass(frozen=True)
class All:
    """Every eligible sequence (GA, and TA's fine-tuning)."""

    def __call__(self, scores: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        return eligible.copy()

    def __str__(self) -> str:
        return "all"


@dataclass(frozen=True)
class Threshold:
    """SGA's rule (§4.2): {i : g_i ≥ γ} ∪ {argmax_i g_i}, among the eligible rows of the micro-batch.

    The micro-batch's most memorized sequence is always included, so the selection is never empty
    while anything is eligible; once every score is below γ, only the maximum of each micro-batch is
    ascended, which pulls the high tail down instead of shifting the whole distribution.
    """

    gamma: float = 0.7

    def __call__(self, scores: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        s = np.where(np.isnan(scores), self.gamma, scores)  # unmeasured counts as γ: selected
        selected = eligible & (s >= self.gamma)
        if eligible.any():
            selected[int(np.argmax(np.where(eligible, s, -np.inf)))] = True
        return selected

    def __str__(self) -> str:
        return f"threshold:{self.gamma:g}"


@dataclass(frozen=True)
class TopK:
    """The k most memorized eligible sequences of each micro-batch (ties: the earlier row)."""

    k: int = 1

    def __call__(self, scores: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        s = np.where(np.isnan(scores), np.inf, scores)
        order = np.argsort(-np.where(eligible, s, -np.inf), kind="stable")
        selected = np.zeros_like(eligible)
        chosen = [i for i in order[: self.k] if eligible[i]]
        selected[chosen] = True
        return selected

    def __str__(self) -> str:
        return f"top:{self.k}"


Selector = All | Threshold | TopK


def parse_selector(spec: str) -> Selector:
    """``all`` | ``threshold:γ`` (0 ≤ γ ≤ 1) | ``top:k`` (k ≥ 1)."""
    text = spec.strip().lower()
    name, _, arg = text.partition(":")
    try:
        if name == "all" and not arg:
            return All()
        if name == "threshold":
            gamma = float(arg) if arg else 0.7
            if not 0.0 <= gamma <= 1.0:
                raise ValueError
            return Threshold(gamma)
        if name == "top":
            k = int(arg) if arg else 1
            if k < 1:
                raise ValueError
            return TopK(k)
    except ValueError:
        pass
    raise UserError(f"selector {spec!r} not understood; use 'all', 'threshold:γ' with 0 ≤ γ ≤ 1 "
                    "(e.g. threshold:0.7, SGA's), or 'top:k' with k ≥ 1")
