"""unmemorize.stats against slow, obviously correct references.

AUC and TPR@α against scikit-learn's ROC curve, the vectorised bootstrap against the original
one-``roc_curve``-per-replicate loop (unmemorize.reference: same seed, same draws, same intervals to
1e-12), the t-interval against scipy's t distribution and a hand formula, and paired differences
against hand-computed cases.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from scipy.stats import t as student_t
from sklearn.metrics import auc as trapezoid_auc
from sklearn.metrics import roc_curve

from unmemorize import stats
from unmemorize.attacks.scoring import evaluate
from unmemorize.reference import evaluate_reference, roc_metrics_reference, roc_replicates_reference

NAN = math.nan
T2 = 4.3026527  # t_{0.975, 2} from a printed table


def _scores(rng: np.random.Generator, n_m: int, n_n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Member and non-member scores: continuous, rounded (ties), or a few integer levels (many ties)."""
    m, n = rng.normal(0.5, 1.0, n_m), rng.normal(0.0, 1.0, n_n)
    if kind == "rounded":
        m, n = np.round(m, 1), np.round(n, 1)
    elif kind == "levels":
        m, n = np.round(m * 1.5).clip(-3, 3), np.round(n * 1.5).clip(-3, 3)
    return m, n


def _sklearn(m: np.ndarray, n: np.ndarray, alphas=()) -> tuple[float, list[float]]:
    """AUC and TPR@α the textbook way: full ROC curve, trapezoids, max TPR over points with FPR ≤ α."""
    labels = np.r_[np.ones(len(m)), np.zeros(len(n))]
    fpr, tpr, _ = roc_curve(labels, np.r_[m, n], drop_intermediate=False)
    return float(trapezoid_auc(fpr, tpr)), [float(tpr[fpr <= a + 1e-12].max()) for a in alphas]


# ---------------------------------------------------------------- t_interval, paired differences


def test_t_interval_against_scipy_and_hand():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 17):
        v = rng.normal(3.0, 2.0, n)
        for c in (0.95, 0.9, 1 - 0.05 / 8):
            mean, half, k = stats.t_interval(v, c)
            lo, hi = student_t.interval(c, n - 1, loc=v.mean(), scale=v.std(ddof=1) / math.sqrt(n))
            assert k == n and mean == pytest.approx(v.mean(), abs=1e-14)
            assert half == pytest.approx((hi - lo) / 2, rel=1e-12)
    # by hand: [0.2, 0.4, 0.9] → mean 0.5, s² = 0.26 / 2
    mean, half, n = stats.t_interval([0.2, 0.4, 0.9])
    assert (mean, n) == (pytest.approx(0.5), 3) and half == pytest.approx(T2 * math.sqrt(0.13 / 3), rel=1e-6)
    # non-finite values are left out; n < 2: no interval
    assert stats.t_interval([0.2, NAN, 0.4, math.inf, 0.9]) == stats.t_interval([0.2, 0.4, 0.9])
    mean, half, n = stats.t_interval([0.7, NAN])
    assert (mean, n) == (0.7, 1) and math.isnan(half)
    mean, half, n = stats.t_interval([])
    assert math.isnan(mean) and math.isnan(half) and n == 0
    assert stats.t_interval((x for x in [2.0, 2.0, 2.0]))[1] == 0.0  # any iterable; no spread → 0


def _strict(values: list[float], comparisons: int) -> float:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return student_t.ppf(1 - 0.025 / comparisons, len(values) - 1) * sd / math.sqrt(len(values))


@pytest.mark.parametrize("diffs, comparisons, excludes, survives", [
    ([0.10, 0.12, 0.10], 8, True, True),    # tight: excludes 0 even at 1 − 0.05/8
    ([0.07, 0.11, 0.09], 8, True, False),   # excludes 0 at 95 %, not at the Bonferroni level
    ([0.10, -0.05, 0.02], 2, False, False),  # straddles 0
    ([-0.30, -0.31, -0.29], 1, True, True),  # negative differences count by |mean|
])
def test_paired_difference_by_hand(diffs, comparisons, excludes, survives):
    d = stats.paired_difference(diffs, comparisons)
    m = sum(diffs) / 3
    s = math.sqrt(sum((x - m) ** 2 for x in diffs) / 2)
    assert d.mean == pytest.approx(m, abs=1e-15) and d.half == pytest.approx(T2 * s / math.sqrt(3), rel=1e-6)
    assert d.strict == (d.half if comparisons == 1 else pytest.approx(_strict(diffs, comparisons), rel=1e-12))
    assert (d.n, d.comparisons) == (3, comparisons)
    assert (d.excludes_zero, d.survives_correction) == (excludes, survives)


def test_paired_difference_one_split_is_no_evidence():
    d = stats.paired_difference([0.5], comparisons=4)
    assert d.mean == 0.5 and math.isnan(d.half) and math.isnan(d.strict) and d.n == 1
    assert not d.excludes_zero and not d.survives_correction
    assert not stats.paired_difference([]).excludes_zero


def test_percentile_interval_is_numpys_quantile():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(500, 3))
    lo, hi = stats.percentile_interval(r, 0.9)
    q = (1 - 0.9) / 2  # as the original code computed it (not the literal 0.05)
    assert np.array_equal(lo, np.quantile(r, q, axis=0)) and np.array_equal(hi, np.quantile(r, 1 - q, axis=0))
    one, q = r[:, 0].copy(), (1 - 0.95) / 2
    assert stats.percentile_interval(one) == (np.quantile(one, q), np.quantile(one, 1 - q))
    one[::7] = NAN  # omit_nan: the utility report's nanquantile
    assert stats.percentile_interval(one, omit_nan=True) == (np.nanquantile(one, q), np.nanquantile(one, 1 - q))
    assert all(math.isnan(x) for x in stats.percentile_interval(np.empty(0)))


# ---------------------------------------------------------------- reading an AUC


def test_leakage_and_membership_score():
    assert stats.leakage(0.3) == pytest.approx(0.7) and stats.leakage(0.8) == 0.8 and stats.leakage(0.5) == 0.5
    assert stats.membership_score(0.5) == 1.0 and stats.membership_score(1.0) == 0.0
    assert stats.membership_score(0.0) == 0.0 and stats.membership_score(0.8) == pytest.approx(0.4)
    assert stats.membership_score(0.2) == pytest.approx(0.4)  # two-sided: flipping the score leaks as much
    assert math.isnan(stats.leakage(NAN)) and math.isnan(stats.membership_score(NAN))
    a = np.array([0.1, 0.5, 0.75, NAN])
    assert np.allclose(stats.membership_score(a), 2 * (1 - stats.leakage(a)), equal_nan=True)
    assert isinstance(stats.leakage(0.3), float) and stats.leakage(a).shape == (4,)


# ---------------------------------------------------------------- AUC and TPR@α against scikit-learn


@pytest.mark.parametrize("kind", ["continuous", "rounded", "levels"])
@pytest.mark.parametrize("n_m, n_n", [(1, 1), (1, 7), (5, 3), (64, 64), (37, 250)])
def test_auc_equals_sklearn(kind, n_m, n_n):
    rng = np.random.default_rng(n_m * 1000 + n_n)
    for _ in range(5):
        m, n = _scores(rng, n_m, n_n, kind)
        expected = _sklearn(m, n)[0]
        assert abs(stats.auc(m, n) - expected) <= 1e-12
        u = mannwhitneyu(m, n, method="asymptotic").statistic  # U of the members
        assert stats.auc(m, n) == pytest.approx(u / (n_m * n_n), abs=1e-15)


def test_auc_by_hand_ties_nans_and_empty():
    assert stats.auc([0.9, 0.4], [0.5, 0.1]) == 0.75  # 3 of 4 pairs
    assert stats.auc([1.0], [1.0]) == 0.5 and stats.auc([1.0, 1.0], [1.0, 0.0]) == 0.75
    assert stats.auc([0.9, NAN, 0.4], [NAN, 0.5, 0.1]) == 0.75  # NaN scores are left out
    assert math.isnan(stats.auc([], [1.0])) and math.isnan(stats.auc([NAN], [1.0]))


def test_auc_rows_equal_row_by_row():
    rng = np.random.default_rng(2)
    m, n = np.round(rng.normal(0.3, 1, (40, 30)), 1), np.round(rng.normal(0, 1, (40, 50)), 1)
    rows = stats.auc_rows(m, n)
    assert rows.shape == (40,)
    assert all(abs(rows[b] - _sklearn(m[b], n[b])[0]) <= 1e-12 for b in range(40))


def test_allowed_false_positives_is_the_floor_formula():
    for n_n in (1, 3, 7, 64, 99, 100, 101, 999, 1000, 1001, 4096):
        for a in (1e-4, 0.001, 0.01, 0.05, 0.1, 1 / 3, 0.5, 0.99, 1.0):
            k = stats.allowed_false_positives(a, n_n)
            assert k == min(n_n, math.floor(a * n_n + 1e-12 * n_n))
            # the ROC curve's own comparison: j false positives are allowed iff j/n_n ≤ α + 1e-12
            assert k == sum(j / n_n <= a + 1e-12 for j in range(1, n_n + 1))


ALPHAS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.9, 1.0)


@pytest.mark.parametrize("kind", ["continuous", "rounded", "levels"])
@pytest.mark.parametrize("n_m, n_n", [(1, 1), (3, 9), (10, 100), (64, 64), (50, 1000)])
def test_tpr_at_fpr_equals_sklearn(kind, n_m, n_n):
    rng = np.random.default_rng(7 * n_m + n_n)
    for _ in range(5):
        m, n = _scores(rng, n_m, n_n, kind)
        expected = _sklearn(m, n, ALPHAS)[1]
        assert [stats.tpr_at_fpr(m, n, a) for a in ALPHAS] == expected
        assert stats.tpr_at_fpr_rows(m[None], n[None], ALPHAS)[0].tolist() == expected


def test_tpr_at_fpr_members_tied_with_the_threshold():
    # 100 non-members 0..99; α = 1 % → k = 1, v = the 2nd largest = 98: members must beat 98
    n = np.arange(100.0)
    m = np.array([98.0, 98.0, 98.0, 99.0, 99.5, 150.0])
    assert stats.tpr_at_fpr(m, n, 0.01) == 3 / 6 == _sklearn(m, n, (0.01,))[1][0]
    # v inside a block of three tied non-members at 98 (threshold 98 has FPR 3/100): for α = 1 %, 2 %
    # v = 98 and only 98.5 beats it; for α = 3 % v = 96, the next lower non-member, and all four do
    n2 = np.r_[np.arange(97.0), 98.0, 98.0, 98.0]
    m2 = np.array([98.0, 98.0, 97.5, 98.5])
    for a in (0.01, 0.02, 0.03, 0.04):
        assert stats.tpr_at_fpr(m2, n2, a) == _sklearn(m2, n2, (a,))[1][0]
    assert stats.tpr_at_fpr(m2, n2, 0.01) == stats.tpr_at_fpr(m2, n2, 0.02) == 1 / 4
    assert stats.tpr_at_fpr(m2, n2, 0.03) == 1.0
    # k = 0 (fewer non-members than 1/α): only members above every non-member count; α = 1: TPR 1
    assert stats.tpr_at_fpr([5.0, 3.0, 3.0], [3.0, 1.0], 0.01) == 1 / 3
    assert stats.tpr_at_fpr([-5.0], [3.0, 1.0], 1.0) == 1.0
    assert math.isnan(stats.tpr_at_fpr([1.0], [], 0.5))


def test_roc_metrics_equals_the_reference():
    rng = np.random.default_rng(4)
    m, n = _scores(rng, 30, 200, "rounded")
    got, ref = stats.roc_metrics(m, n, (0.01, 0.1)), roc_metrics_reference(m, n, (0.01, 0.1))
    assert np.max(np.abs(got - ref)) <= 1e-12


# ---------------------------------------------------------------- the bootstrap against the original loop


def test_stratified_indices_are_the_loops_draws():
    im, inn = stats.stratified_indices(5, 8, 20, seed=3)
    rng = np.random.default_rng(3)
    for b in range(20):
        assert np.array_equal(im[b], rng.integers(0, 5, 5)) and np.array_equal(inn[b], rng.integers(0, 8, 8))
    assert stats.stratified_indices(5, 8, 0)[0].shape == (0, 5)


@pytest.mark.parametrize("kind", ["continuous", "rounded", "levels"])
def test_resampled_metrics_equal_the_rows_functions(kind):
    rng = np.random.default_rng(5)
    m, n = _scores(rng, 23, 140, kind)
    im, inn = stats.stratified_indices(len(m), len(n), 300, seed=1)
    got = stats.resampled_roc_metrics(m, n, im, inn, ALPHAS)
    want = np.c_[stats.auc_rows(m[im], n[inn]), stats.tpr_at_fpr_rows(m[im], n[inn], ALPHAS)]
    assert np.array_equal(got, want)  # bit for bit


@pytest.mark.parametrize("seed", [0, 1, 12345])
@pytest.mark.parametrize("kind", ["continuous", "rounded", "levels"])
@pytest.mark.parametrize("n_m, n_n, fprs", [(1, 2, ()), (8, 12, (0.1, 0.5)), (64, 64, (0.05,)), (40, 300, (0.01, 0.1))])
def test_replicates_equal_the_original_loop(seed, kind, n_m, n_n, fprs):
    rng = np.random.default_rng(seed + n_m)
    m, n = _scores(rng, n_m, n_n, kind)
    got = stats.roc_replicates(m, n, fprs, bootstrap=120, seed=seed)
    ref = roc_replicates_reference(m, n, fprs, bootstrap=120, seed=seed)
    assert got.shape == ref.shape == (120, 1 + len(fprs))
    assert np.max(np.abs(got - ref)) <= 1e-12


def _same(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12


def _assert_same_evaluation(new, old):
    for x, y in [(new.auc, old.auc), *((new.tpr[a], old.tpr[a]) for a in old.tpr)]:
        assert _same(x.value, y.value) and _same(x.low, y.low) and _same(x.high, y.high), (x, y)
    assert new.tpr.keys() == old.tpr.keys() and new.unresolved_fprs == old.unresolved_fprs
    assert (new.n_members, new.n_nonmembers, new.nan_members, new.nan_nonmembers, new.below_chance) == \
        (old.n_members, old.n_nonmembers, old.nan_members, old.nan_nonmembers, old.below_chance)
    assert np.array_equal(new.fpr_curve, old.fpr_curve) and np.array_equal(new.tpr_curve, old.tpr_curve)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("n_m, n_n", [(20, 150), (64, 64), (9, 1000)])
def test_evaluate_equals_the_original(seed, n_m, n_n):
    rng = np.random.default_rng(seed)
    m, n = _scores(rng, n_m, n_n, "rounded")
    m[rng.random(n_m) < 0.1] = NAN  # unmeasurable sequences are left out and counted
    n[rng.random(n_n) < 0.1] = NAN
    kwargs = dict(fprs=(0.01, 0.001, 0.1), bootstrap=150, confidence=0.9, seed=seed)
    _assert_same_evaluation(evaluate(m, n, **kwargs), evaluate_reference(m, n, **kwargs))
    # below chance: the flipped scores
    _assert_same_evaluation(evaluate(-m, -n, **kwargs), evaluate_reference(-m, -n, **kwargs))


def test_evaluate_without_bootstrap_is_unchanged():
    rng = np.random.default_rng(3)
    for m, n in [_scores(rng, 30, 120, "levels"), (np.array([0.1, 0.2]), np.array([0.5, 0.9, 0.7])),
                 (np.array([NAN, 1.0]), np.array([0.0, NAN]))]:
        new, old = evaluate(m, n, bootstrap=0), evaluate_reference(m, n, bootstrap=0)
        _assert_same_evaluation(new, old)
        assert math.isnan(new.auc.low) and math.isnan(new.auc.high)
        assert all(math.isnan(iv.low) and math.isnan(iv.high) for iv in new.tpr.values())
        assert new.as_dict() == old.as_dict() or math.isnan(new.auc.value)
    assert evaluate([0.1, 0.2], [0.5, 0.9, 0.7], bootstrap=0).below_chance  # AUC 0 ≤ 0.4
    empty = evaluate([NAN], [1.0], bootstrap=0)
    assert math.isnan(empty.auc.value) and empty.tpr == {} and not empty.below_chance


def test_no_warnings_on_degenerate_scores():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = evaluate(np.ones(10), np.ones(200), fprs=(0.01,), bootstrap=50)
    assert (ev.auc.value, ev.auc.low, ev.auc.high) == (0.5, 0.5, 0.5) and ev.tpr[0.01].value == 0.0
