"""Resurfacing: what a probe brings back, per sequence, and whether that is more than the oracle shows
(docs/method.md §3.8). Pure functions of per-sequence arrays; the probes only measure.

Notation for one sequence x and one measure g (MA, EL_10, exact extraction, the matched share of the
suffix): g_U and g_U' on the unlearned model before and after the probe, g_O and g_O' on the retrain
oracle before and after the same probe, δ the margin.

* resurfacing(x) = g_U'(x) − g_U(x)
* with the oracle, x is *not forgotten* when g_U(x) − g_O(x) > δ (above the oracle before any probe);
  otherwise it has *resurfaced* when g_U'(x) − g_O'(x) > δ (the probe lifts it above where it lifts a
  model that never saw it), and stays *forgotten* when not;
* without an oracle the model's own level before the probe is the baseline: resurfaced when
  g_U'(x) − g_U(x) > δ.

A sequence whose values are missing (NaN) is *unmeasured*.
"""

from __future__ import annotations

import math

import numpy as np

FORGOTTEN, RESURFACED, NOT_FORGOTTEN, UNMEASURED = "forgotten", "resurfaced", "not forgotten", "unmeasured"
STATUSES = (FORGOTTEN, RESURFACED, NOT_FORGOTTEN, UNMEASURED)
_EPS = 1e-9  # "more than the margin": a difference equal to it (up to float noise) is not more


def resurfacing(before, after) -> np.ndarray:
    """g_U'(x) − g_U(x) per sequence (NaN where either is missing)."""
    return np.asarray(after, dtype=float) - np.asarray(before, dtype=float)


def status(before, after, margin: float, oracle_before=None, oracle_after=None) -> np.ndarray:
    """Each sequence's verdict under a probe: forgotten, resurfaced, not forgotten or unmeasured (see the
    module docstring); the oracle's values are the baseline when given, else the model's own before."""
    b, a = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    out = np.full(b.shape, FORGOTTEN, dtype=object)
    if oracle_after is None:
        missing = np.isnan(b) | np.isnan(a)
        out[(a - b) > margin + _EPS] = RESURFACED
    else:
        oa = np.asarray(oracle_after, dtype=float)
        missing = np.isnan(b) | np.isnan(a) | np.isnan(oa)
        above_before = np.zeros(b.shape, dtype=bool)
        if oracle_before is not None:
            ob = np.asarray(oracle_before, dtype=float)
            missing |= np.isnan(ob)
            above_before = (b - ob) > margin + _EPS
        out[(a - oa) > margin + _EPS] = RESURFACED
        out[above_before] = NOT_FORGOTTEN
    out[missing] = UNMEASURED
    return out


def share_recovered(before, after, original) -> float:
    """The share of the forgotten memorization a probe brought back: Σ (g_U' − g_U) / Σ (g_M − g_U) over
    the sequences measured on all three, where g_M is the original model's (NaN when nothing was forgotten)."""
    b, a, m = (np.asarray(v, dtype=float) for v in (before, after, original))
    ok = ~(np.isnan(b) | np.isnan(a) | np.isnan(m))
    forgotten = float((m[ok] - b[ok]).sum())
    if not ok.any() or forgotten <= 0:
        return math.nan
    return float((a[ok] - b[ok]).sum()) / forgotten


def nanmean(values) -> float | None:
    """The mean of the finite values, None when there is none (for JSON)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None
