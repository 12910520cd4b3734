"""The run record: what one unlearning run found, typed, versioned, on disk as ``record.json``.

Every run folder (``unmemorize unlearn``, each run of ``unmemorize run``, the demo's, the
benchmarks') holds one. Scripts, ``unmemorize report`` and the benchmarks read it with
:func:`read_record` and get typed fields back (``record.attacks.after["miau"].auc.value``); nothing
reads values back by parsing file names, Markdown or flat string keys. :meth:`RunRecord.row` is the
one place where a record becomes a flat table row, for tables that aggregate many runs.

Schema changes bump :data:`SCHEMA`; a record of another schema is refused with a clear message.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from unmemorize.errors import UserError
from unmemorize.probes.summary import ProbesRecord

SCHEMA = "unmemorize.run/1"
RECORD = "record.json"
UTILITY_AGGREGATES = ("average_acc", "average_f1", "average_perplexity")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interval(_Record):
    value: float | None
    low: float | None = None
    high: float | None = None


class AttackSummary(_Record):
    """One attack's evaluation: AUC and TPR at each resolvable FPR, with their bootstrap intervals."""

    title: str
    auc: Interval
    tpr: dict[str, Interval] = Field(default_factory=dict)  # "0.01" → TPR at 1% FPR
    below_chance: bool = False
    members: int = 0
    nonmembers: int = 0

    @classmethod
    def of(cls, result) -> "AttackSummary":
        """From an :class:`unmemorize.attacks.AttackResult`."""
        ev = result.evaluation
        iv = lambda i: Interval(value=_num(i.value), low=_num(i.low), high=_num(i.high))  # noqa: E731
        return cls(title=result.title, auc=iv(ev.auc), tpr={f"{a:g}": iv(t) for a, t in ev.tpr.items()},
                   below_chance=ev.below_chance, members=ev.n_members, nonmembers=ev.n_nonmembers)


class AttackRecord(_Record):
    """Attacks on the original model (before unlearning) and on the unlearned one (after)."""

    before: dict[str, AttackSummary] | None = None
    after: dict[str, AttackSummary] | None = None
    fprs: list[float] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class ForgetSummary(_Record):
    """A set's g(x) (the forget set at one step, or the unseen reference): mean, spread, the band's
    outliers, the distance to τ."""

    sequences: int
    measured: int
    mean: float | None
    std: float | None
    tau: float | None
    c_low: int
    c_high: int
    c: int
    distance_to_tau: float | None
    lo: float
    hi: float


class UnlearningRecord(_Record):
    method: str
    title: str
    stop_rule: str
    steps: int
    seconds: float
    stop_reason: str
    converged: bool
    rolled_back: bool
    events: list[str] = Field(default_factory=list)
    resumed_from: int | None = None
    world_size: int = 1
    seed: int
    before: ForgetSummary
    after: ForgetSummary
    median_iteration_seconds: float | None = None


def summary_of(g, tau: float, band) -> ForgetSummary:
    """:func:`unmemorize.thresholds.summarize` as a record (NaN as null)."""
    from unmemorize.thresholds import summarize

    return ForgetSummary(**{k: _num(v) if isinstance(v, float) else v for k, v in summarize(g, tau, band).as_dict().items()})


class UtilitySummary(_Record):
    """One model's utility: the paper's aggregates and every task's own metrics."""

    mode: str
    aggregates: dict[str, float | None] = Field(default_factory=dict)
    tasks: dict[str, dict[str, float | None]] = Field(default_factory=dict)

    @classmethod
    def of(cls, result: dict) -> "UtilitySummary":
        """From :func:`unmemorize.utility.evaluate_utility`'s result."""
        return cls(mode=result["mode"],
                   aggregates={k: _num(v["value"]) for k, v in result.get("aggregates", {}).items()},
                   tasks={n: {m: _num(v) for m, v in t["metrics"].items()} for n, t in result.get("tasks", {}).items()})


class UtilityRecord(_Record):
    before: UtilitySummary | None = None
    after: UtilitySummary | None = None


class OracleAttack(_Record):
    """One attack on the unlearned model beside the same attack on the oracle (same members, non-members
    and neighbours): the gap is AUC − AUC_oracle with a paired bootstrap interval."""

    auc: float | None
    oracle_auc: float | None
    gap: Interval
    membership_score: float | None  # 1 − 2·|AUC − 0.5|: 1 = an attacker cannot tell
    oracle_membership_score: float | None
    indistinguishable: bool | None  # the gap's interval holds 0 (None without an interval)


class OracleRecord(_Record):
    """The unlearned model judged against the retrain oracle (docs/method.md §3.7)."""

    path: str
    forget_quality_p: float | None  # Kolmogorov–Smirnov p between the per-sequence losses on F
    ks_statistic: float | None
    ma_gap: Interval  # mean |MA − MA_oracle| over F, with its bootstrap interval
    ma_gap_max: float | None
    within_tolerance: int  # sequences with |MA − MA_oracle| ≤ the tolerance
    ma_oracle_mean: float | None
    oracle_c: int | None = None  # c(D_f) of the oracle itself: a never-seen sequence can lie outside the band too
    loss_oracle_mean: float | None
    attacks: dict[str, OracleAttack] = Field(default_factory=dict)
    retain_members: int = 0
    retain_ma_before: float | None = None
    retain_ma_after: float | None = None
    retain_ma_oracle: float | None = None
    retain_gap: Interval | None = None  # retain MA after − oracle's, paired bootstrap interval
    reference_ma_oracle: float | None = None
    utility: UtilitySummary | None = None  # the oracle's utility
    verdicts: list[str] = Field(default_factory=list)


class Labels(_Record):
    """How the run is named in tables (none of it changes a number)."""

    model: str
    forget: str
    split: str = ""
    method: str
    stop: str
    seed: int


class RunRecord(_Record):
    """What one unlearning run found."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field(SCHEMA, alias="schema")
    key: str = ""  # the run key of a grid run (settings + input hashes); "" for a single run
    labels: Labels
    order: list[int] = Field(default_factory=list)  # the grid's order, for tables
    spec: dict[str, Any]  # the RunSpec, as given
    size: int  # sequences in the forget set
    tau: float
    tau_from: str
    targets_from: str = ""  # how each sequence's own target was set ("": τ for all)
    band: list[float]
    reference_before: ForgetSummary | None = None  # g on the unseen reference, original model (τ is its mean)
    reference_after: ForgetSummary | None = None  # the unlearned model's (collateral forgetting)
    unlearning: UnlearningRecord
    attacks: AttackRecord = Field(default_factory=AttackRecord)
    utility: UtilityRecord = Field(default_factory=UtilityRecord)
    oracle: OracleRecord | None = None  # the verdicts against the retrain oracle, when one was given
    probes: ProbesRecord | None = None  # robustness probes of the unlearned model, when asked for (probes.json)
    notes: list[str] = Field(default_factory=list)
    device: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)  # seconds per stage

    @property
    def reference_ma_before(self) -> float | None:
        return None if self.reference_before is None else self.reference_before.mean

    @property
    def reference_ma_after(self) -> float | None:
        return None if self.reference_after is None else self.reference_after.mean

    def row(self) -> dict[str, Any]:
        """The run as one flat row for tables over many runs (NaN where a part was not run).

        Columns: the labels, ``size``, ``tau``, ``band_lo/hi``; the forget set after unlearning
        (``mean_ma``, ``std_ma``, ``c_low``, ``c_high``, ``c``, ``distance_to_tau``) and before it
        (``mean_ma_before``, ``c_before``, ``distance_to_tau_before``); ``steps``, ``seconds``,
        ``converged``; ``reference_ma_before/after``; per attack ``<name>_auc`` and
        ``<name>_tpr@<100·α>%`` after unlearning (``_before`` for the original); the utility
        aggregates after, before and their ``_delta``, and each task's metrics as ``task/metric``.
        """
        u = self.unlearning
        row: dict[str, Any] = {**self.labels.model_dump(), "size": self.size, "tau": self.tau,
                               "band_lo": self.band[0], "band_hi": self.band[1],
                               "mean_ma_before": _nan(u.before.mean), "mean_ma": _nan(u.after.mean),
                               "std_ma": _nan(u.after.std), "c_low": u.after.c_low, "c_high": u.after.c_high,
                               "c": u.after.c, "c_before": u.before.c, "distance_to_tau": _nan(u.after.distance_to_tau),
                               "distance_to_tau_before": _nan(u.before.distance_to_tau), "steps": u.steps,
                               "seconds": u.seconds, "converged": float(u.converged),
                               "reference_ma_before": _nan(self.reference_ma_before),
                               "reference_ma_after": _nan(self.reference_ma_after)}
        for when, found in (("", self.attacks.after), ("_before", self.attacks.before)):
            for name, a in (found or {}).items():
                row[f"{name}_auc{when}"] = _nan(a.auc.value)
                for fpr in self.attacks.fprs:
                    got = a.tpr.get(f"{fpr:g}")
                    row[f"{name}_tpr@{100 * fpr:g}%{when}"] = _nan(got.value) if got else math.nan
        before, after = self.utility.before, self.utility.after
        for agg in UTILITY_AGGREGATES:
            b = _nan(before.aggregates.get(agg)) if before else math.nan
            a = _nan(after.aggregates.get(agg)) if after else math.nan
            row[agg], row[f"{agg}_before"], row[f"{agg}_delta"] = a, b, a - b
        o = self.oracle
        if o is not None:
            row.update({"forget_quality_p": _nan(o.forget_quality_p), "ma_gap_mean": _nan(o.ma_gap.value),
                        "ma_gap_max": _nan(o.ma_gap_max), "retain_ma_before": _nan(o.retain_ma_before),
                        "retain_ma_after": _nan(o.retain_ma_after), "retain_ma_oracle": _nan(o.retain_ma_oracle),
                        "retain_ma_drop": _nan(o.retain_ma_before) - _nan(o.retain_ma_after),
                        "retain_gap": _nan(o.retain_gap.value) if o.retain_gap else math.nan})
            for name, a in o.attacks.items():
                row[f"{name}_oracle_auc"], row[f"{name}_auc_gap"] = _nan(a.oracle_auc), _nan(a.gap.value)
        for task, metrics in (after.tasks if after else {}).items():
            for metric, a in metrics.items():
                b = before.tasks.get(task, {}).get(metric) if before else None
                row[f"{task}/{metric}"], row[f"{task}/{metric}_before"] = _nan(a), _nan(b)
                row[f"{task}/{metric}_delta"] = _nan(a) - _nan(b)
        return row


def _num(v) -> float | None:
    """A JSON-able number: NaN becomes None."""
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _nan(v) -> float:
    return math.nan if v is None else float(v)


def write_record(folder: str | Path, record: RunRecord) -> Path:
    from unmemorize.runs import atomic_write_text

    path = Path(folder) / RECORD
    atomic_write_text(path, record.model_dump_json(by_alias=True, indent=2) + "\n")
    return path


def read_record(folder: str | Path) -> RunRecord:
    """The record of a run folder (or of the file itself); a clear error for anything else."""
    path = Path(folder)
    path = path / RECORD if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable run record ({e})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else None
        raise UserError(f"{path}: run record of schema {found!r}; this version reads {SCHEMA!r} (rerun the run)")
    return RunRecord.model_validate(data)


def is_record(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run record of this schema (a run folder appears only complete)."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False
