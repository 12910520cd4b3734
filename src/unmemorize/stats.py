"""The project's statistics, in one place: intervals over runs, paired differences, and the ROC
numbers of a membership attack with their bootstrap intervals.

Pure functions of numpy arrays (scipy where it has the routine). The ROC functions have a scalar
form for one score set (1-D arrays), a ``*_rows`` form for many (2-D arrays, one replicate per
row), and :func:`resampled_roc_metrics` for bootstrap replicates given as index arrays into the
original scores, so that a 1000-replicate bootstrap is a handful of array operations instead of
1000 calls of scikit-learn's ``roc_curve``. :mod:`unmemorize.reference` keeps that slow loop;
``tests/test_stats.py`` checks the two agree to 1e-12 (same seed, same draws, same intervals).

    t_interval, PairedDifference, paired_difference, percentile_interval     intervals
    leakage, membership_score                                                 reading an AUC
    auc, auc_rows, tpr_at_fpr, tpr_at_fpr_rows, allowed_false_positives,
    roc_metrics                                                               ROC numbers
    stratified_indices, resampled_roc_metrics, roc_replicates                 the bootstrap

Convention for the ROC functions: a higher score means "member" (label 1); non-members are label 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from scipy.stats import t as student_t

FPR_SLACK = 1e-12  # an ROC point with FPR ≤ α + FPR_SLACK counts as FPR ≤ α (floating-point division)


# ---------------------------------------------------------------- intervals over runs


def t_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width, n) of the Student-t interval over the finite ``values``:

        mean = Σ v / n,   half = t_{(1+c)/2, n−1} · s / √n,   s = sample std (ddof = 1)

    Why t and not the normal quantile: the runs of one cell are few (the paper's five splits), and
    with an unknown spread estimated from n values the mean's pivot is t-distributed with n − 1
    degrees of freedom. NaN and ±inf (a part that was not run, a TPR the reference set cannot
    resolve) are left out of n; with n = 1 there is no interval (half = NaN), with n = 0 no mean.
    """
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(v.mean())
    if n == 1:
        return mean, math.nan, 1
    half = float(student_t.ppf((1 + confidence) / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return mean, half, n


@dataclass(frozen=True)
class PairedDifference:
    """Per-split differences between two methods: mean, 95 % half-width, and the Bonferroni half-width."""

    mean: float
    half: float
    strict: float  # half-width at 1 − 0.05/comparisons (= half when comparisons == 1)
    n: int
    comparisons: int

    @property
    def excludes_zero(self) -> bool:
        """|mean| > half: the 95 % interval of the difference lies on one side of 0."""
        return self.n >= 2 and abs(self.mean) > self.half

    @property
    def survives_correction(self) -> bool:
        """|mean| > strict: it still does at the Bonferroni level."""
        return self.n >= 2 and abs(self.mean) > self.strict


def paired_difference(diffs: Sequence[float], comparisons: int = 1) -> PairedDifference:
    """The t-interval (:func:`t_interval`, 95 %) of per-split differences d_s = a_s − b_s.

    Paired: in a split both methods start from the same planted model with the same τ (and face the
    same non-members), so the split-to-split spread cancels in the difference; overlapping
    per-method intervals would say less than the data do. With ``comparisons`` = m > 1 the interval
    is also taken at the Bonferroni level 1 − 0.05/m (half-width t_{1−0.025/m, n−1}·s/√n), so that
    the chance of any false "excludes 0" among the m comparisons stays ≤ 5 %.
    ``n`` is ``len(diffs)``.
    """
    mean, half = t_interval(diffs)[:2]
    strict = t_interval(diffs, 1 - 0.05 / comparisons)[1] if comparisons > 1 else half
    return PairedDifference(mean, half, strict, len(diffs), comparisons)


def percentile_interval(replicates, confidence: float = 0.95, *, omit_nan: bool = False):
    """(low, high) percentile-bootstrap interval along axis 0 of ``replicates``: the (1−c)/2 and
    1 − (1−c)/2 quantiles (numpy's default linear interpolation).

    The percentile interval needs no standard error and no normality of the statistic; it is the
    interval of the original scoring and utility code. ``omit_nan`` ignores NaN replicates
    (``np.nanquantile``; a ratio of two sums is NaN on a resample whose denominator is 0).
    Returns floats for 1-D ``replicates``, arrays (one entry per column) for 2-D ones; NaN without
    replicates.
    """
    q = (1 - confidence) / 2
    r = np.asarray(replicates, dtype=float)
    if r.shape[0] == 0:  # no replicates, no interval
        return (math.nan, math.nan) if r.ndim == 1 else (np.full(r.shape[1:], math.nan),) * 2
    lo, hi = (np.nanquantile if omit_nan else np.quantile)(r, [q, 1 - q], axis=0)
    return (float(lo), float(hi)) if r.ndim == 1 else (lo, hi)


# ---------------------------------------------------------------- attack scores


def _scalar_or_array(x: np.ndarray):
    return float(x) if x.ndim == 0 else x


def leakage(auc):
    """max(AUC, 1 − AUC): the AUC of an attacker free to flip the score.

    Over-unlearning (members scored *less* member-like than unseen text, AUC < 0.5) leaks as much as
    under-unlearning: the attacker just reads the score the other way round. NaN stays NaN; works
    on scalars and arrays.
    """
    a = np.asarray(auc, dtype=float)
    return _scalar_or_array(np.maximum(a, 1.0 - a))  # np.maximum propagates NaN


def membership_score(auc):
    """1 − 2·|AUC − 0.5|, the two-sided MIA score of SemEval-2025 Task 4 (unlearning LLMs).

    1 = members and non-members are indistinguishable (AUC 0.5), 0 = perfectly separated in either
    direction (AUC 0 or 1). Equals 2·(1 − :func:`leakage`). NaN stays NaN; scalars and arrays.
    """
    a = np.asarray(auc, dtype=float)
    return _scalar_or_array(1.0 - 2.0 * np.abs(a - 0.5))


def _finite_1d(x) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    return x[~np.isnan(x)]


def auc_rows(members, nonmembers) -> np.ndarray:
    """ROC AUC of every row: ``members`` [B, n_m], ``nonmembers`` [B, n_n] → [B].

    AUC = U / (n_m · n_n), the Mann–Whitney statistic U = #{(i, j): m_i > n_j} + ½·#{m_i = n_j}
    (the probability that a random member outscores a random non-member, ties one half), computed
    from ranks in the pooled row (scipy's ``rankdata``, ties get their average rank):

        U = Σ_i rank(m_i) − n_m (n_m + 1) / 2

    This is exactly the trapezoid area under the ROC curve (scikit-learn's ``roc_curve`` + ``auc``),
    without building a curve per replicate; the rank sums are exact in float64, so U/(n_m·n_n) is the
    correctly rounded AUC. Rows must be NaN-free (a NaN row gives NaN); drop NaNs before resampling.
    """
    m = np.atleast_2d(np.asarray(members, dtype=float))
    n = np.atleast_2d(np.asarray(nonmembers, dtype=float))
    n_m, n_n = m.shape[-1], n.shape[-1]
    if n_m == 0 or n_n == 0:
        return np.full(max(m.shape[0], n.shape[0]), math.nan)
    ranks = rankdata(np.concatenate([m, n], axis=-1), axis=-1)
    u = ranks[:, :n_m].sum(axis=-1) - n_m * (n_m + 1) / 2
    return u / (n_m * n_n)


def auc(members, nonmembers) -> float:
    """ROC AUC of one score set (1-D arrays; NaN scores are left out): see :func:`auc_rows`.
    NaN when either class is empty."""
    m, n = _finite_1d(members), _finite_1d(nonmembers)
    if len(m) == 0 or len(n) == 0:
        return math.nan
    return float(auc_rows(m[None], n[None])[0])


def allowed_false_positives(alpha: float, n_nonmembers: int) -> int:
    """k = ⌊α·n_n + 1e-12·n_n⌋: the most non-members a threshold may let through at FPR ≤ α.

    Computed as #{j ∈ 1..n_n : j/n_n ≤ α + 1e-12}, the very floating-point comparison the ROC curve's
    FPR values (fps / n_n) go through, so the two can never disagree at a boundary.
    """
    return int(np.count_nonzero(np.arange(1, n_nonmembers + 1) / n_nonmembers <= alpha + FPR_SLACK))


def tpr_at_fpr_rows(members, nonmembers, alphas: Sequence[float]) -> np.ndarray:
    """TPR@α of every row for every α: ``members`` [B, n_m], ``nonmembers`` [B, n_n] → [B, len(alphas)].

    TPR@α is the highest true-positive rate among ROC points with FPR ≤ α (Carlini et al. 2022). A
    threshold t (score ≥ t means "member") lets #{n_j ≥ t} non-members through; that is ≤ k =
    :func:`allowed_false_positives` exactly when t > v, v = the (k+1)-th largest non-member score
    (with multiplicity). TPR only grows as t falls, so the best allowed threshold is the smallest
    score above v, and

        TPR@α = #{i : m_i > v} / n_m           (members tied with v do not count),   = 1 when k ≥ n_n.

    One sort of each row's non-members gives v for every α; no ROC curve is built. Rows must be
    NaN-free.
    """
    m = np.atleast_2d(np.asarray(members, dtype=float))
    n = np.atleast_2d(np.asarray(nonmembers, dtype=float))
    n_m, n_n = m.shape[-1], n.shape[-1]
    rows = max(m.shape[0], n.shape[0])
    out = np.full((rows, len(alphas)), math.nan)
    if n_m == 0 or n_n == 0:
        return out
    ordered = np.sort(n, axis=-1)  # ascending: the (k+1)-th largest is column n_n − 1 − k
    for col, alpha in enumerate(alphas):
        k = allowed_false_positives(alpha, n_n)
        if k >= n_n:
            out[:, col] = 1.0
            continue
        v = ordered[:, n_n - 1 - k]
        out[:, col] = np.count_nonzero(m > v[:, None], axis=-1) / n_m
    return out


def tpr_at_fpr(members, nonmembers, alpha: float) -> float:
    """TPR@α of one score set (1-D arrays; NaN scores are left out): see :func:`tpr_at_fpr_rows`.
    NaN when either class is empty. (:func:`unmemorize.attacks.scoring.tpr_at_fpr` reads the same
    number off an ROC curve.)"""
    m, n = _finite_1d(members), _finite_1d(nonmembers)
    if len(m) == 0 or len(n) == 0:
        return math.nan
    return float(tpr_at_fpr_rows(m[None], n[None], (alpha,))[0, 0])


def roc_metrics(members, nonmembers, fprs: Sequence[float] = ()) -> np.ndarray:
    """[AUC, TPR@α for each α in ``fprs``] of one score set (1-D; NaN scores are left out)."""
    m, n = _finite_1d(members), _finite_1d(nonmembers)
    return np.r_[auc(m, n), [tpr_at_fpr(m, n, a) for a in fprs]]


# ---------------------------------------------------------------- stratified bootstrap


def stratified_indices(n_members: int, n_nonmembers: int, bootstrap: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays [B, n_m] and [B, n_n] of a stratified bootstrap: members and non-members are
    resampled with replacement *separately*, so every replicate keeps both classes at their sizes
    (an unstratified resample could lose a class and leave the AUC undefined).

    The draws are those of the original per-replicate loop, in its order: ``rng =
    default_rng(seed)``, then for each replicate the member indices, then the non-member indices.
    Same seed, same replicates.
    """
    rng = np.random.default_rng(seed)
    im = np.empty((bootstrap, n_members), dtype=np.int64)
    inn = np.empty((bootstrap, n_nonmembers), dtype=np.int64)
    for b in range(bootstrap):
        im[b] = rng.integers(0, n_members, n_members)
        inn[b] = rng.integers(0, n_nonmembers, n_nonmembers)
    return im, inn


def resampled_roc_metrics(members, nonmembers, member_idx, nonmember_idx, fprs: Sequence[float] = ()) -> np.ndarray:
    """[AUC, TPR@α …] of every replicate b, whose members are ``members[member_idx[b]]`` and whose
    non-members are ``nonmembers[nonmember_idx[b]]`` → [B, 1 + len(fprs)].

    The same numbers as :func:`auc_rows` and :func:`tpr_at_fpr_rows` on those arrays (bit for bit),
    without sorting any replicate: every resampled score is one of the n_m + n_n original ones, so
    each original score gets its code c, its rank among the D distinct pooled values, once. A
    replicate's non-members are then counts per code, cnt[b, c], and with L[b, c] = Σ_{c' < c}
    cnt[b, c'] (its non-members below code c):

        U_b   = Σ_i (L[b, c_i] + ½·cnt[b, c_i])          over its members i (codes c_i): Mann–Whitney U
        v_b   = max{c : n_n − L[b, c] ≥ k + 1}             its (k+1)-th largest non-member, k as for TPR@α
        TPR_b = #{i : c_i > v_b} / n_m

    All counts are integers, so U is exact and AUC = 2U / (2·n_m·n_n) is correctly rounded.
    Cost O(B·(n_m + n_n + D)) instead of a sort of n_m + n_n values per replicate. Inputs NaN-free.
    """
    m, n = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    im, inn = np.asarray(member_idx), np.asarray(nonmember_idx)
    n_m, n_n, rows = im.shape[-1], inn.shape[-1], len(im)
    out = np.full((rows, 1 + len(fprs)), math.nan)
    if rows == 0 or n_m == 0 or n_n == 0:
        return out
    _, codes = np.unique(np.r_[m, n], return_inverse=True)
    d = int(codes.max()) + 1
    cm, cn = codes[:len(m)], codes[len(m):]
    ks = [allowed_false_positives(a, n_n) for a in fprs]
    chunk = max(1, 2**21 // d)  # [chunk, D] int64 count arrays of at most 16 MiB
    for s in range(0, rows, chunk):
        gm, gn = cm[im[s:s + chunk]], cn[inn[s:s + chunk]]  # codes of the replicates' scores
        b = len(gm)
        cnt = np.bincount((gn + d * np.arange(b)[:, None]).ravel(), minlength=b * d).reshape(b, d)
        below = np.cumsum(cnt, axis=1) - cnt  # L[b, c]
        twice_u = np.take_along_axis(2 * below + cnt, gm, 1).sum(axis=1)  # 2·(below + ½·tied) per member
        out[s:s + chunk, 0] = twice_u / (2 * n_m * n_n)
        for col, k in enumerate(ks, start=1):
            if k >= n_n:
                out[s:s + chunk, col] = 1.0
                continue
            v = np.count_nonzero(n_n - below >= k + 1, axis=1) - 1  # n_n − L[b, c] falls with c
            out[s:s + chunk, col] = np.count_nonzero(gm > v[:, None], axis=1) / n_m
    return out


def roc_replicates(members, nonmembers, fprs: Sequence[float] = (), bootstrap: int = 1000, seed: int = 0) -> np.ndarray:
    """Stratified bootstrap replicates [B, 1 + len(fprs)] of [AUC, TPR@α …] (columns as
    :func:`roc_metrics`): the draws of :func:`stratified_indices`, the metrics of all replicates at
    once by :func:`resampled_roc_metrics`. ``members``, ``nonmembers``: NaN-free 1-D arrays."""
    im, inn = stratified_indices(len(members), len(nonmembers), bootstrap, seed)
    return resampled_roc_metrics(members, nonmembers, im, inn, fprs)
