"""Selectors: which sequences of a micro-batch receive gradient this step (docs/method.md §4.2).

A selector sees the micro-batch's current memorization scores g(x) (MA measured on the weights the
gradient is taken at; NaN = not measured, which counts as selected, as in the code's
``scores.get(doc_id, default=γ)``), which rows are *eligible* (the per-sequence stop rule takes
sequences already inside the band out) and each row's target level (its τ: the run's, or its
group's), and returns each row's direction: +1 ascend, 0 leave alone, −1 pull back by a descent
step (only ``target`` pulls back). Selectors are independent of losses: ``threshold:0.7`` turns
gradient ascent into SGA and NPO into selective NPO.

Spelled on the command line as ``all``, ``threshold:γ`` (γ absolute, or relative to τ:
``threshold:tau+0.4``), ``top:k`` or ``target:ε``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unmemorize.errors import UserError
from unmemorize.thresholds import parse_level, resolve_level


@dataclass(frozen=True)
class All:
    """Every eligible sequence (GA, and TA's fine-tuning)."""

    def __call__(self, scores: np.ndarray, eligible: np.ndarray, targets=None) -> np.ndarray:
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

    gamma: float | str = 0.7  # or relative to each row's τ: "tau+0.4"

    def __call__(self, scores: np.ndarray, eligible: np.ndarray, targets=None) -> np.ndarray:
        gamma = resolve_level(self.gamma, np.asarray(targets, float)) if isinstance(self.gamma, str) else self.gamma
        s = np.where(np.isnan(scores), gamma, scores)  # unmeasured counts as γ: selected
        selected = eligible & (s >= gamma)
        if eligible.any():
            selected[int(np.argmax(np.where(eligible, s, -np.inf)))] = True
        return selected

    def __str__(self) -> str:
        return f"threshold:{self.gamma:g}" if isinstance(self.gamma, float) else f"threshold:{self.gamma}"


@dataclass(frozen=True)
class TopK:
    """The k most memorized eligible sequences of each micro-batch (ties: the earlier row)."""

    k: int = 1

    def __call__(self, scores: np.ndarray, eligible: np.ndarray, targets=None) -> np.ndarray:
        s = np.where(np.isnan(scores), np.inf, scores)
        order = np.argsort(-np.where(eligible, s, -np.inf), kind="stable")
        selected = np.zeros_like(eligible)
        chosen = [i for i in order[: self.k] if eligible[i]]
        selected[chosen] = True
        return selected

    def __str__(self) -> str:
        return f"top:{self.k}"


@dataclass(frozen=True)
class Target:
    """To each sequence its own target t_i (its τ, or an estimate of where a model that never saw it
    would be): ascend while g > t + ε, leave alone inside [t − ε, t + ε] (frozen: no gradient), and pull
    back by a descent step when g < t − ε. Unmeasured rows are left alone."""

    epsilon: float = 0.05

    def __call__(self, scores: np.ndarray, eligible: np.ndarray, targets=None) -> np.ndarray:
        if targets is None:
            raise ValueError("the target selector needs each sequence's target")
        t = np.asarray(targets, dtype=float)
        up = eligible & (scores > t + self.epsilon)
        down = eligible & (scores < t - self.epsilon)
        return up.astype(np.int8) - down.astype(np.int8)

    def __str__(self) -> str:
        return f"target:{self.epsilon:g}"


Selector = All | Threshold | TopK | Target


def parse_selector(spec: str) -> Selector:
    """``all`` | ``threshold:γ`` (0 ≤ γ ≤ 1, or relative to τ: ``threshold:tau+0.4``) | ``top:k`` (k ≥ 1) |
    ``target:ε`` (0 < ε < 1)."""
    text = spec.strip().lower()
    name, _, arg = text.partition(":")
    try:
        if name == "all" and not arg:
            return All()
        if name == "threshold":
            gamma = parse_level(arg) if arg else 0.7
            if isinstance(gamma, tuple):
                return Threshold(arg.replace(" ", ""))
            if not 0.0 <= gamma <= 1.0:
                raise ValueError
            return Threshold(gamma)
        if name == "target":
            eps = float(arg) if arg else 0.05
            if not 0.0 < eps < 1.0:
                raise ValueError
            return Target(eps)
        if name == "top":
            k = int(arg) if arg else 1
            if k < 1:
                raise ValueError
            return TopK(k)
    except ValueError:
        pass
    raise UserError(f"selector {spec!r} not understood; use 'all', 'threshold:γ' with 0 ≤ γ ≤ 1 or relative to τ "
                    "(threshold:0.7, SGA's; threshold:tau+0.4), 'top:k' with k ≥ 1, or 'target:ε' with 0 < ε < 1")
