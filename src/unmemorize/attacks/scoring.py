"""The one place where every attack's scores become numbers: ROC AUC, TPR at low FPR, bootstrap CIs.

Convention: a higher score means "member". Members are the forget set (label 1), non-members the
unseen reference set of the same form (label 0). Sequences whose score is NaN (too short to be
measured) are left out and counted, as the original code drops NaNs (docs/method.md §3.3).

* AUC = area under the ROC curve = the Mann–Whitney U / (n_m·n_n) (ties count one half;
  :func:`unmemorize.stats.auc`).
* TPR@α = the highest true-positive rate among ROC points with FPR ≤ α (Carlini et al. 2022, "Membership
  inference attacks from first principles"; :func:`unmemorize.stats.tpr_at_fpr`). With n non-members the
  smallest non-zero FPR is 1/n, so TPR@α is only resolvable when n ≥ ⌈1/α⌉; :func:`resolvable_fprs` says
  which are.
* 95% intervals: percentile bootstrap, members and non-members resampled separately (stratified),
  so every replicate has both classes (:func:`unmemorize.stats.roc_replicates`, all replicates at once;
  the original one-``roc_curve``-per-replicate loop is :func:`unmemorize.reference.evaluate_reference`).
* ``below_chance``: the whole AUC interval lies below 0.5 (without bootstrap: AUC ≤ 0.4). Members
  then look *less* like members than unseen text does — the model was pushed past the unseen-data
  level (over-unlearning), which an attacker sees just as well by flipping the score (AUC 1 − AUC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_curve

from unmemorize import stats
from unmemorize.errors import UserError

DEFAULT_FPRS = (0.01, 0.001)
NO_BOOTSTRAP_MARGIN = 0.1  # without an interval, "far below chance" means AUC ≤ 0.4


def min_nonmembers(fpr: float) -> int:
    """Non-members needed before a false-positive rate of ``fpr`` can be observed at all: ⌈1/fpr⌉."""
    return math.ceil(1.0 / fpr - 1e-9)


def resolvable_fprs(fprs: tuple[float, ...], n_nonmembers: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Split ``fprs`` into (resolvable, not resolvable) with ``n_nonmembers`` non-members."""
    ok = tuple(a for a in fprs if n_nonmembers >= min_nonmembers(a))
    return ok, tuple(a for a in fprs if a not in ok)


def check_fprs(fprs: tuple[float, ...], n_nonmembers: int, matched: str | None = None) -> None:
    """Raise a :class:`UserError` for requested FPRs outside (0, 1) or too small for the non-member set.

    ``matched`` is the matching's note when the set was cut down to the members' kinds of text: then the
    matching, not the file, left too few, and the message says so and how to compare them all."""
    for a in fprs:
        if not 0.0 < a < 1.0:
            raise UserError(f"false-positive rate {a} must lie strictly between 0 and 1 (e.g. 0.01 for 1%)")
    _, bad = resolvable_fprs(fprs, n_nonmembers)
    if bad:
        need = max(min_nonmembers(a) for a in bad)
        which = f"the reference (non-member) set has {n_nonmembers} sequences"
        fix = "use a larger reference set or a larger --fpr"
        if matched:
            which += f" after matching ({matched})"
            fix = ("use a larger reference set, a larger --fpr, or --match-by none (attacks.match_by: none) to compare "
                   "every non-member, whatever its kind of text")
        raise UserError(
            f"{which}, too few for TPR at {', '.join(f'{100 * a:g}%' for a in bad)} FPR (needs at least {need}: with "
            f"n non-members the smallest false-positive rate is 1/n); {fix}")


def roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the full ROC curve, every threshold kept."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, alpha: float) -> float:
    """TPR@α = max{ tpr_i : fpr_i ≤ α } over the ROC points (the curve starts at (0, 0))."""
    return float(tpr[fpr <= alpha + 1e-12].max())


@dataclass
class Interval:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}

    def __str__(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass
class Evaluation:
    """How well one attack's scores separate members from non-members."""

    auc: Interval
    tpr: dict[float, Interval]  # α → TPR@α, only for resolvable α
    unresolved_fprs: tuple[float, ...]
    n_members: int
    n_nonmembers: int
    nan_members: int
    nan_nonmembers: int
    below_chance: bool
    fpr_curve: np.ndarray = field(repr=False)
    tpr_curve: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        return {
            "auc": self.auc.as_dict(),
            "tpr_at_fpr": {f"{a:g}": iv.as_dict() for a, iv in self.tpr.items()},
            "unresolved_fprs": list(self.unresolved_fprs),
            "members": self.n_members, "nonmembers": self.n_nonmembers,
            "unscored_members": self.nan_members, "unscored_nonmembers": self.nan_nonmembers,
            "below_chance": self.below_chance,
            "flipped_auc": None if math.isnan(self.auc.value) else 1.0 - self.auc.value,
        }


def evaluate(member_scores, nonmember_scores, fprs: tuple[float, ...] = DEFAULT_FPRS, bootstrap: int = 1000,
             confidence: float = 0.95, seed: int = 0) -> Evaluation:
    """AUC and TPR@α for each resolvable α, each with a stratified percentile-bootstrap interval."""
    m = np.asarray(member_scores, dtype=float)
    n = np.asarray(nonmember_scores, dtype=float)
    m_ok, n_ok = m[~np.isnan(m)], n[~np.isnan(n)]
    ok_fprs, unresolved = resolvable_fprs(tuple(fprs), len(n_ok))
    if len(m_ok) == 0 or len(n_ok) == 0:
        nan = Interval(math.nan, math.nan, math.nan)
        return Evaluation(nan, {}, tuple(fprs), len(m_ok), len(n_ok), len(m) - len(m_ok), len(n) - len(n_ok),
                          False, np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    point_auc, *point_tprs = (float(v) for v in stats.roc_metrics(m_ok, n_ok, ok_fprs))
    fpr_c, tpr_c = roc(np.r_[np.ones(len(m_ok)), np.zeros(len(n_ok))], np.r_[m_ok, n_ok])
    boot = stats.roc_replicates(m_ok, n_ok, ok_fprs, bootstrap, seed)

    def interval(col: int, value: float) -> Interval:
        if bootstrap == 0:
            return Interval(value, math.nan, math.nan)
        lo, hi = stats.percentile_interval(boot[:, col], confidence)
        return Interval(value, lo, hi)

    auc_iv = interval(0, point_auc)
    return Evaluation(
        auc=auc_iv,
        tpr={a: interval(1 + i, point_tprs[i]) for i, a in enumerate(ok_fprs)},
        unresolved_fprs=unresolved,
        n_members=len(m_ok), n_nonmembers=len(n_ok),
        nan_members=len(m) - len(m_ok), nan_nonmembers=len(n) - len(n_ok),
        below_chance=bool(auc_iv.high < 0.5) if bootstrap else point_auc <= 0.5 - NO_BOOTSTRAP_MARGIN,
        fpr_curve=fpr_c, tpr_curve=tpr_c,
    )
