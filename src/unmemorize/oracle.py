"""Judging forgetting against the retrain oracle: the model that never saw the forget set.

"Forgotten" means "as if never trained on it". In the memorization lab that model exists
(``unmemorize plant --forget F`` trains it beside the planted model: same base, seed, stream and
steps, F's rows replaced by ordinary text), and every verdict about an unlearned model is its gap
to that oracle — not its distance from chance: a perfectly retrained model is separated by the
reference attack too (its members' loss rose against the planted model's), and a never-seen but
predictable text has a high MA. The oracle judges; no method trains on it.

The criteria (docs/method.md §3.7), each a pure function of per-sequence arrays, each with its
interval, each giving one computed verdict line:

* **forget quality** — the two-sample Kolmogorov–Smirnov test between the unlearned and the oracle
  per-sequence losses on F (as TOFU): p ≥ α means no evidence the two distributions differ;
* **MA gap** — |MA_u(x) − MA_o(x)| per sequence: mean (bootstrap interval) and max;
* **attack gap** — each attack's AUC on the unlearned model minus the oracle's on the same members
  and non-members, with a paired stratified bootstrap (the same resamples for both models); beside
  it the two-sided membership score 1 − 2·|AUC − 0.5| of each;
* **retain members** — the members that were not forgotten must stay as memorized as in the oracle:
  their mean MA after unlearning minus the oracle's (bootstrap interval);
* **utility** — the unlearned model's utility aggregates beside the oracle's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unmemorize.stats import membership_score, percentile_interval, resampled_roc_metrics, stratified_indices

ALPHA = 0.05  # the KS test's level and 1 − the intervals' confidence
MA_TOLERANCE = 0.05  # per-sequence MA gap under which a sequence counts as at the oracle's level


@dataclass(frozen=True)
class Gap:
    """A difference to the oracle with its bootstrap interval (NaN bounds without replicates)."""

    value: float
    low: float
    high: float

    @property
    def includes_zero(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high)) and self.low <= 0.0 <= self.high

    def as_dict(self) -> dict:
        return {"value": _none(self.value), "low": _none(self.low), "high": _none(self.high)}


def _none(v: float):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _bootstrap_mean(values: np.ndarray, bootstrap: int, seed: int) -> Gap:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Gap(math.nan, math.nan, math.nan)
    if bootstrap <= 0 or v.size < 2:
        return Gap(float(v.mean()), math.nan, math.nan)
    rng = np.random.default_rng(seed)
    reps = v[rng.integers(0, v.size, (bootstrap, v.size))].mean(axis=1)
    low, high = percentile_interval(reps, 1 - ALPHA)
    return Gap(float(v.mean()), float(low), float(high))


def forget_quality(losses: np.ndarray, oracle_losses: np.ndarray) -> tuple[float, float]:
    """(KS statistic, p) of the two-sample Kolmogorov–Smirnov test between the unlearned and the oracle
    per-sequence losses on the forget set (TOFU's forget quality). NaN when either side is empty."""
    from scipy.stats import ks_2samp

    a, b = np.asarray(losses, float), np.asarray(oracle_losses, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan
    res = ks_2samp(a, b)
    return float(res.statistic), float(res.pvalue)


def ma_gap(ma: np.ndarray, oracle_ma: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> tuple[Gap, float]:
    """(mean |MA − MA_oracle| with its bootstrap interval, the max): how far each sequence is from where a
    model that never saw it would be, in both directions."""
    d = np.abs(np.asarray(ma, float) - np.asarray(oracle_ma, float))
    return _bootstrap_mean(d, bootstrap, seed), float(np.nanmax(d)) if np.isfinite(d).any() else math.nan


def mean_difference(a: np.ndarray, b: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> Gap:
    """mean(a − b) over paired values (e.g. a retain member's MA after unlearning minus the oracle's)."""
    return _bootstrap_mean(np.asarray(a, float) - np.asarray(b, float), bootstrap, seed)


def attack_gap(members: np.ndarray, nonmembers: np.ndarray, oracle_members: np.ndarray,
               oracle_nonmembers: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> tuple[float, float, Gap]:
    """(AUC of the unlearned model, AUC of the oracle, their difference with a paired bootstrap interval).

    Both models score the same members and non-members (row i is the same sequence for both), so each
    replicate resamples the rows once and computes both AUCs on it: the interval is of the difference,
    not of two separate AUCs. Rows a score misses (NaN) on either model are left out of both.
    """
    m, n = np.asarray(members, float), np.asarray(nonmembers, float)
    om, on = np.asarray(oracle_members, float), np.asarray(oracle_nonmembers, float)
    keep_m = np.isfinite(m) & np.isfinite(om)
    keep_n = np.isfinite(n) & np.isfinite(on)
    m, om, n, on = m[keep_m], om[keep_m], n[keep_n], on[keep_n]
    if m.size == 0 or n.size == 0:
        return math.nan, math.nan, Gap(math.nan, math.nan, math.nan)
    full = np.arange(m.size)[None], np.arange(n.size)[None]
    auc_u = float(resampled_roc_metrics(m, n, *full)[0, 0])
    auc_o = float(resampled_roc_metrics(om, on, *full)[0, 0])
    if bootstrap <= 0:
        return auc_u, auc_o, Gap(auc_u - auc_o, math.nan, math.nan)
    idx_m, idx_n = stratified_indices(m.size, n.size, bootstrap, seed)
    diff = resampled_roc_metrics(m, n, idx_m, idx_n)[:, 0] - resampled_roc_metrics(om, on, idx_m, idx_n)[:, 0]
    low, high = percentile_interval(diff, 1 - ALPHA)
    return auc_u, auc_o, Gap(auc_u - auc_o, float(low), float(high))


def attack_gaps(scores, oracle_scores, bootstrap: int = 1000, seed: int = 0) -> dict[str, tuple[float, float, Gap]]:
    """:func:`attack_gap` for every attack scored on both models, from two per-sequence score frames
    (``set``, ``id``, ``member`` and one column per attack, as ``AttackResults.scores``).

    The pairing is row by row, so both frames must hold the same sequences in the same order (the same
    members and non-members attacked): anything else is a caller's error, raised, never a silent gap."""
    if list(zip(scores["set"], scores["id"])) != list(zip(oracle_scores["set"], oracle_scores["id"])):
        raise ValueError("the model and the oracle were attacked on different sequences: the gaps are not paired")
    member = scores["member"].to_numpy(bool)
    names = [c for c in scores.columns if c not in ("set", "id", "member") and "." not in c and c in oracle_scores]
    out = {}
    for name in names:
        u, o = scores[name].to_numpy(float), oracle_scores[name].to_numpy(float)
        out[name] = attack_gap(u[member], u[~member], o[member], o[~member], bootstrap, seed)
    return out


# ---------------------------------------------------------------- verdicts (computed, never fixed)


def _iv(g: Gap, digits: int = 3) -> str:
    if math.isnan(g.low):
        return f"{g.value:+.{digits}f}"
    return f"{g.value:+.{digits}f} [{g.low:+.{digits}f}, {g.high:+.{digits}f}]"


def verdict_forget_quality(statistic: float, p: float) -> str:
    if math.isnan(p):
        return "forget quality: not measured (no losses on one side)"
    same = p >= ALPHA
    return (f"forget quality: the per-sequence losses on the forget set are {'indistinguishable from' if same else 'distinguishable from'} "
            f"the oracle's (Kolmogorov–Smirnov D = {statistic:.3f}, p = {p:.3g}; {'≥' if same else '<'} {ALPHA:g})")


def verdict_ma_gap(gap: Gap, worst: float, n_within: int, n: int) -> str:
    close = gap.value <= MA_TOLERANCE if math.isnan(gap.high) else gap.high <= MA_TOLERANCE
    iv = f"{gap.value:.3f}" + ("" if math.isnan(gap.low) else f" [{gap.low:.3f}, {gap.high:.3f}]")
    return (f"MA per sequence: {'at' if close else 'not at'} the oracle's level — mean |MA − MA_oracle| = {iv} "
            f"(tolerance {MA_TOLERANCE:g}), max {worst:.3f}; {n_within} of {n} sequences within {MA_TOLERANCE:g}")


def verdict_attack(name: str, auc_u: float, auc_o: float, gap: Gap) -> str:
    if math.isnan(gap.value):
        return f"{name}: not comparable (no scores on one model)"
    if math.isnan(gap.low):
        state = "no interval (bootstrap off)"
    else:
        state = ("indistinguishable from the oracle (the interval holds 0)" if gap.includes_zero else
                 f"{'more' if gap.value > 0 else 'less'} separable than on the oracle")
    return (f"{name}: AUC {auc_u:.3f} against the oracle's {auc_o:.3f}, gap {_iv(gap)} — {state}; membership score "
            f"{float(membership_score(auc_u)):.3f} vs {float(membership_score(auc_o)):.3f}")


def verdict_retain(gap: Gap, after: float, oracle: float, before: float) -> str:
    if math.isnan(gap.value):
        return "retain members: none to measure"
    state = ("as memorized as in the oracle (the interval holds 0)" if gap.includes_zero else
             f"{'more' if gap.value > 0 else 'less'} memorized than in the oracle")
    return (f"retain members: mean MA {before:.3f} before, {after:.3f} after, the oracle's {oracle:.3f}; after − "
            f"oracle {_iv(gap)} — {state}")


def verdict_utility(name: str, value: float, oracle: float) -> str:
    return f"utility {name}: {value:.4f} after unlearning, {oracle:.4f} on the oracle ({value - oracle:+.4f})"
