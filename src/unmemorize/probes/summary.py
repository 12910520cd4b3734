"""What the probes found, typed: ``probes.json``, and the ``probes`` field of a run's record.json.

Only pydantic here (the run record imports it): the probes themselves are in :mod:`unmemorize.probes.run`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "unmemorize.probes/1"


class _Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProbeSummary(_Summary):
    """One probe over the sequences it measures: each measure's mean before and after on the unlearned
    model (and on the oracle, the original), and how many sequences resurfaced."""

    name: str
    title: str
    kind: str  # weights, prompt or sampling
    measure: str  # the one the verdict reads (ma; matched for prompt and sampling probes)
    measured_on: str  # "forget set", or "held-out half of the forget set"
    sequences: int
    before: dict[str, float | None] = Field(default_factory=dict)  # measure → mean on U before the probe
    after: dict[str, float | None] = Field(default_factory=dict)  # … after it
    rise: dict[str, float | None] = Field(default_factory=dict)  # mean of after − before per sequence
    oracle_before: dict[str, float | None] | None = None
    oracle_after: dict[str, float | None] | None = None
    original: dict[str, float | None] | None = None  # the model before unlearning, without any probe
    baseline: str  # "oracle" (the same probe on it) or "before" (U's own level before the probe)
    margin: float
    resurfaced: int
    not_forgotten: int  # above the oracle by more than the margin before any probe
    forgotten: int
    unmeasured: int
    recovered: float | None = None  # Σ rise / Σ (original − before) of the verdict's measure
    seconds: float
    oracle_seconds: float | None = None
    details: dict[str, Any] = Field(default_factory=dict)  # steps and losses, bits, temperature, prompts cut …
    verdict: str = ""


class ProbesRecord(_Summary):
    """Every probe of one unlearned model (docs/method.md §3.8)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field(SCHEMA, alias="schema")
    settings: dict[str, Any]
    oracle: bool  # whether the oracle was probed too (the baseline)
    original: bool
    sequences: int
    probes: dict[str, ProbeSummary] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)  # probe → why it did not run
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def verdicts(self) -> list[str]:
        return [p.verdict for p in self.probes.values()]

    def resurfaced(self) -> dict[str, int]:
        return {n: p.resurfaced for n, p in self.probes.items()}
