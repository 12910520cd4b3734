"""The threshold attack on the memorization score g(x) (docs/method.md §3.2).

The attacker measures g(x) = MA under the model and flags a candidate when it lies outside the
acceptable band: "still extractable" when g ≥ hi, "unlearned" (a visible member of D_f) when g ≤ lo.
On the forget set the flags are exactly the paper's outlier count c(D_f) = c_low + c_high (§2.6); on
the reference set they are the attack's false positives. For the ROC, the continuous version of the
same idea ranks by the distance to the unseen-data level, s(x) = |g(x) − τ| (§3.2, "optionally").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from unmemorize.attacks.registry import MEMBERS, NONMEMBERS, AttackContext, attack
from unmemorize.thresholds import acceptable_level, outlier_count, verdict


def threshold_score(g: np.ndarray, tau: float) -> np.ndarray:
    """s(x) = |g(x) − τ|: both the still-memorized and the over-forgotten end look like members."""
    return np.abs(np.asarray(g, dtype=float) - tau)


def _setup(ctx: AttackContext) -> dict:
    o = ctx.options
    tau = o.tau if o.tau is not None else acceptable_level(ctx.stats(NONMEMBERS).ma)
    band = o.band.at(float(tau))  # a band relative to τ, in numbers at this τ
    source = (o.tau_source or "given") if o.tau is not None else "mean g on the reference set"
    return {"tau": float(tau), "tau_source": source,
            "lo": band.lo, "hi": band.hi}


def _band(ctx: AttackContext):
    return ctx.options.band.at(ctx.setup("threshold")["tau"])


def _summarize(ctx: AttackContext, frames: dict[str, pd.DataFrame]) -> dict:
    out = {}
    for part, df in frames.items():
        c_low, c_high = outlier_count(df["g"].to_numpy(), _band(ctx))
        n = int(df["g"].notna().sum())
        out[part] = {"c_low": c_low, "c_high": c_high, "c": c_low + c_high, "measured": n,
                     "flagged_rate": (c_low + c_high) / n if n else float("nan")}
    # The band rule as one operating point: TPR = c(D_f)/|D_f|, FPR = flagged unseen / |reference|.
    out["band_tpr"] = out[MEMBERS]["flagged_rate"]
    out["band_fpr"] = out[NONMEMBERS]["flagged_rate"]
    return out


@attack("threshold", title="threshold on g(x)", source="docs/method.md §3.2 (counts = c(D_f), §2.6)",
        setup=_setup, summarize=_summarize)
def _threshold(ctx: AttackContext, part: str) -> pd.DataFrame:
    tau = ctx.setup("threshold")["tau"]
    g = ctx.stats(part).ma
    return pd.DataFrame({"score": threshold_score(g, tau), "g": g,
                         "verdict": [verdict(float(v), _band(ctx)) for v in g]})
