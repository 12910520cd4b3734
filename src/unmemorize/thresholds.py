"""The acceptable memorization level τ, the acceptable band, and the paper's outlier count c(D_f).

τ is the model's mean MA on unseen text of the same form (Jang et al.'s definition, docs/method.md §2.4).
A sequence is *extractable* when g(x) ≥ hi and *over-forgotten* (detectably unlearned) when
g(x) ≤ lo (docs/method.md §2.6, defaults 0.15 / 0.60); c(D_f) = c_low + c_high. ``distance_to_tau`` is §2.7's
|100·mean g − 100·τ| in MA points.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from pydantic import field_validator, model_validator

from unmemorize.errors import UserError
from unmemorize.options import Options, option

EXTRACTABLE, IN_BAND, OVER_FORGOTTEN, UNMEASURED = "extractable", "in band", "over-forgotten", "unmeasured"


class Band(Options):
    """The acceptable band of g(x): over-forgotten at or below ``lo``, extractable at or above ``hi``
    (docs/method.md §2.6; the authors' analysis uses 0.15 and 0.60). ``Band(0.15, 0.6)`` works too.

    Either end may be relative to τ (``Band("tau-0.15", "tau+0.3")``: the paper's band at GPT-Neo's
    τ ≈ 0.30, carried to a model whose unseen text sits elsewhere); :meth:`at` gives the numbers for
    a τ, and every function that counts against a band is given those."""

    lo: float | str = option(0.15, "Over-forgotten (detectably unlearned) at or below this MA (or relative to τ: "
                                   "tau-0.15).", "--band-lo")
    hi: float | str = option(0.60, "Extractable at or above this MA (or relative to τ: tau+0.3).", "--band-hi")

    def __init__(self, lo: float | str = 0.15, hi: float | str = 0.60, **extra):
        super().__init__(lo=lo, hi=hi, **extra)

    @field_validator("lo", "hi", mode="before")
    @classmethod
    def _level(cls, v):
        parsed = parse_level(v)
        return parsed if isinstance(parsed, float) else str(v).replace(" ", "").lower().replace("τ", "tau")

    @model_validator(mode="after")
    def _ordered(self):
        if self.relative:
            lo, hi = self.at(0.3).lo, self.at(0.3).hi  # checked at GPT-Neo's τ (offsets keep their order)
        else:
            lo, hi = self.lo, self.hi
        if not (0.0 <= lo < hi <= 1.0):
            raise ValueError(f"acceptable band needs 0 ≤ lo < hi ≤ 1, got lo={self.lo}, hi={self.hi}")
        return self

    @property
    def relative(self) -> bool:
        return isinstance(self.lo, str) or isinstance(self.hi, str)

    def at(self, tau: float) -> Band:
        """The band in numbers for this τ (itself when both ends are numbers)."""
        if not self.relative:
            return self
        return Band(float(resolve_level(self.lo, tau)), float(resolve_level(self.hi, tau)))


_LEVEL = re.compile(r"^\s*(?:(?P<k>[0-9.]+)\s*\*?\s*)?(?:tau|τ)\s*(?:(?P<sign>[+-])\s*(?P<off>[0-9.]+))?\s*$")


def parse_level(value) -> tuple[float, float] | float:
    """A constant of the method, absolute (0.7) or relative to τ: "tau+0.4", "tau-0.15", "1.2tau", "τ".
    Returns the number, or (factor, offset) for k·τ + offset; a ValueError names what is accepted."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    m = _LEVEL.match(text)
    if m is None:
        raise ValueError(f"{value!r} is neither a number nor a level relative to τ (e.g. tau+0.4, tau-0.15, 1.2tau)")
    k = float(m["k"]) if m["k"] else 1.0
    off = float(m["off"]) * (-1 if m["sign"] == "-" else 1) if m["off"] else 0.0
    return k, off


def resolve_level(value, tau):
    """The level at τ (a number, or an array for per-sequence τ), clipped to [0, 1]."""
    parsed = parse_level(value)
    if isinstance(parsed, float):
        return parsed
    k, off = parsed
    if np.ndim(tau):
        return np.clip(np.round(k * np.asarray(tau, dtype=float) + off, 12), 0.0, 1.0)
    return float(min(1.0, max(0.0, round(k * float(tau) + off, 12))))


def acceptable_level(reference_g: pd.Series | np.ndarray) -> float:
    """τ = mean g over the unseen reference sequences (unmeasurable ones left out)."""
    values = np.asarray(reference_g, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise UserError("the reference set has no measurable sequence; τ cannot be computed")
    return float(values.mean())


def group_key(label) -> str:
    """How group labels are matched across files: case, spaces and punctuation are ignored.

    Jang et al.'s forget sets label their texts ``pile-cc``, ``github``, ``uspto_backgrounds`` where the
    Pile's own files say ``Pile-CC``, ``Github``, ``USPTO Backgrounds``: the same groups.
    """
    return re.sub(r"[\W_]+", "", str(label).casefold())


def acceptable_level_by_group(reference: pd.DataFrame, column: str, metric: str = "ma") -> dict[str, float]:
    """τ per value of a grouping column (e.g. Jang's ``corpus``): code and prose differ a lot when unseen.

    Labels that differ only in case or punctuation (:func:`group_key`) are one group, named by the
    first spelling in the reference.
    """
    if column not in reference.columns:
        raise UserError(f"--tau-by {column}: the reference set has no column {column!r} "
                        f"(columns: {', '.join(c for c in reference.columns if c != 'id')})")
    out = {}
    labels = reference[column].astype(str)
    for _, grp in reference.groupby(labels.map(group_key), sort=False):
        vals = grp[metric].dropna()
        if len(vals):
            out[str(labels[grp.index[0]])] = float(vals.mean())
    return dict(sorted(out.items()))


def tau_per_sequence(groups, reference_groups, reference_g, tau: float) -> tuple[np.ndarray, dict[str, float], list[str]]:
    """τ of each sequence's group (labels matched as in :func:`group_key`), measured on the reference
    sequences of that group; a group without reference text keeps the global ``tau``. Returns
    (per-sequence τ, τ per group, the groups missing from the reference)."""
    ref = pd.DataFrame({"group": pd.Series(reference_groups).astype(str).to_numpy(),
                        "ma": np.asarray(reference_g, dtype=float)})
    by_group = acceptable_level_by_group(ref, "group")
    by_key = {group_key(label): label for label in by_group}
    labels = [str(g) for g in groups]
    matched = [by_key.get(group_key(g)) for g in labels]
    per_seq = np.array([tau if m is None else by_group[m] for m in matched], dtype=float)
    missing = sorted({g for g, m in zip(labels, matched) if m is None})
    return per_seq, by_group, missing


def verdict(g: float, band: Band) -> str:
    if g is None or (isinstance(g, float) and math.isnan(g)):
        return UNMEASURED
    if g >= band.hi:
        return EXTRACTABLE
    if g <= band.lo:
        return OVER_FORGOTTEN
    return IN_BAND


def outlier_count(g: pd.Series | np.ndarray, band: Band) -> tuple[int, int]:
    """(c_low, c_high) = (#{g ≤ lo}, #{g ≥ hi}); c(D_f) is their sum (docs/method.md §2.6)."""
    values = np.asarray(g, dtype=float)
    values = values[~np.isnan(values)]
    return int((values <= band.lo).sum()), int((values >= band.hi).sum())


def distance_to_tau(g: pd.Series | np.ndarray, tau: float | np.ndarray) -> float:
    """|100·mean g − 100·τ| in MA points (docs/method.md §2.7); with per-sequence τ, the mean of τ."""
    values = np.asarray(g, dtype=float)
    taus = np.broadcast_to(np.asarray(tau, dtype=float), values.shape)
    keep = ~np.isnan(values)
    if not keep.any():
        return math.nan
    return float(abs(100 * values[keep].mean() - 100 * taus[keep].mean()))


@dataclass
class Summary:
    sequences: int
    measured: int
    mean: float
    std: float
    tau: float
    c_low: int
    c_high: int
    c: int
    distance_to_tau: float
    lo: float
    hi: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(g: pd.Series | np.ndarray, tau: float | np.ndarray, band: Band) -> Summary:
    values = np.asarray(g, dtype=float)
    measured = values[~np.isnan(values)]
    c_low, c_high = outlier_count(values, band)
    taus = np.broadcast_to(np.asarray(tau, dtype=float), values.shape)
    return Summary(
        sequences=int(values.size), measured=int(measured.size),
        mean=float(measured.mean()) if measured.size else math.nan,
        std=float(measured.std(ddof=0)) if measured.size else math.nan,
        tau=float(taus[~np.isnan(values)].mean()) if measured.size else float(np.mean(taus)) if taus.size else math.nan,
        c_low=c_low, c_high=c_high, c=c_low + c_high,
        distance_to_tau=distance_to_tau(values, tau), lo=band.lo, hi=band.hi,
    )
