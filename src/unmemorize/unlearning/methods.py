"""Unlearning methods as data: a registry of (objective, selector, phases) compositions.

A :class:`Method` is a sequence of :class:`Phase` s. Each phase names an *objective* (how a
micro-batch's loss is made from the pure functions in :mod:`~unmemorize.unlearning.losses`), a
*selector* (which sequences get gradient, :mod:`~unmemorize.unlearning.selectors`), whether the
model that is measured and stopped on is the task-arithmetic edit θ_b + c·(θ − θ_b) rather than θ
itself, and when to hand over to the next phase. The one loop in :mod:`~unmemorize.unlearning.loop`
runs them all.

=============  =====================================================================  ===========
method         phases                                                                 method.md
=============  =====================================================================  ===========
ga             ascent on every sequence                                               §4.1
sga            ascent on {g ≥ γ = τ+0.4} ∪ {argmax of each micro-batch}               §4.2
ta             ascent until mean g < τ+0.6, then fine-tune θ; measure θ_b − 3(θ − θ_b) §4.3
tau            SGA until mean g < τ+0.2, then fine-tune θ; measure θ_b − 1(θ − θ_b)   §4.4
npo            NPO on the forget set (+ NLL on retain data when given)                Zhang 2024
ga+mismatch    0.5·ascent(tokens ≥ 50) + random-answer descent + CE to θ_0 on normal  §4.7
target         each sequence to its own target ± ε: ascend above, freeze inside,      §4.13
               pull back below; + KL to the original on ordinary text
dpd            no training: differentially-private decoding (a logits processor)     §4.6
=============  =====================================================================  ===========

The constants are relative to τ (docs/method.md §4.13): at GPT-Neo's τ ≈ 0.30, where the paper set
them, they are the paper's 0.7, 0.9 and 0.5; the paper presets (configs/paper_*.yaml) give the
absolute values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch
from pydantic import field_validator, model_validator

from unmemorize.errors import UserError
from unmemorize.options import Options, option
from unmemorize.unlearning import losses
from unmemorize.unlearning.retain import RetainData
from unmemorize.unlearning.selectors import Selector, parse_selector


# ---------------------------------------------------------------- what an objective sees

@dataclass
class MicroBatch:
    """One micro-batch of forget sequences, already run through the model (with gradient)."""

    step: int  # the update this gradient is for, counted from 0
    index: int  # micro-batch number within the step
    input_ids: torch.Tensor  # [b, W], W trimmed to the longest row
    lengths: torch.Tensor  # [b]
    logits: torch.Tensor  # [b, W, V]
    weights: torch.Tensor  # [b] 1.0 = selected, 0.0 = not
    reference_ll: torch.Tensor | None = None  # [b] log π_ref(x) under the model before unlearning
    positions: torch.Tensor | None = None  # [b, W-1] bool, aligned with nll: the tokens an ascent may push down

    @cached_property
    def nll(self) -> torch.Tensor:
        return losses.token_nll(self.logits, self.input_ids)

    @cached_property
    def mask(self) -> torch.Tensor:
        return losses.position_mask(self.lengths, self.input_ids.shape[1])


@dataclass
class ObjectiveContext:
    """What some objectives need beyond the forget micro-batch."""

    model: torch.nn.Module
    seed: int
    pad_id: int
    retain: RetainData | None = None
    reference_model: torch.nn.Module | None = None  # frozen copy of the model before unlearning
    retain_batch: int = 8  # retain sequences per micro-batch (the same whichever forget rows are selected)

    def rng(self, mb: MicroBatch, tag: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, mb.step, mb.index, tag])

    def forward(self, rows: list[torch.Tensor], model: torch.nn.Module | None = None):
        """Right-pad token rows into a batch and run ``model`` (default: the one being trained)."""
        model = model or self.model
        device = next(model.parameters()).device
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        ids, lengths = ids.to(device), lengths.to(device)
        mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
        return ids, lengths, model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    reference_cache_bytes: int = 1 << 30  # the frozen model's logits on retain rows kept at most (then recomputed)
    _reference_cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def retain_pick(self, mb: MicroBatch, tag: int) -> list[int]:
        """``retain_batch`` retain row indices for this micro-batch, drawn reproducibly from (seed, step, index)."""
        n = len(self.retain.normal)
        return [int(i) for i in self.rng(mb, tag).choice(n, size=self.retain_batch, replace=n < self.retain_batch)]

    def retain_row(self, i: int) -> torch.Tensor:
        normal = self.retain.normal
        return normal.input_ids[i, : int(normal.lengths[i])]

    def retain_rows(self, mb: MicroBatch, tag: int) -> list[torch.Tensor]:
        """``retain_batch`` retain sequences for this micro-batch, drawn reproducibly from (seed, step, index)."""
        return [self.retain_row(i) for i in self.retain_pick(mb, tag)]

    def to_reference(self, mb: MicroBatch, tag: int) -> torch.Tensor:
        """The cross-entropy from the frozen model's next-token distribution to the current one on this
        micro-batch's retain rows (KL(p_ref ‖ p_θ) up to a constant; GA+Mismatch's normal term and
        target's retain term)."""
        idx = self.retain_pick(mb, tag)
        ids, lengths, logits = self.forward([self.retain_row(i) for i in idx])
        ref = self.reference_logits(idx, ids.shape[1]).to(logits.device)
        return losses.cross_entropy_to_reference(logits, ref, losses.position_mask(lengths, ids.shape[1]))

    @torch.no_grad()
    def reference_logits(self, idx: list[int], width: int) -> torch.Tensor:
        """The frozen model's logits on retain rows ``idx``, right-padded to ``width`` with zeros (padding
        positions are masked out by every user). The frozen model never changes, so each row's logits are
        computed once and kept while they fit ``reference_cache_bytes``: after the first draws, a retain term
        costs the trained model's forward and backward only, not a frozen forward pass each step."""
        cache = self._reference_cache
        fresh: dict[int, torch.Tensor] = {}
        missing = [i for i in dict.fromkeys(idx) if i not in cache]
        if missing:
            _, lengths, ref = self.forward([self.retain_row(i) for i in missing], self.reference_model)
            used = sum(t.numel() * t.element_size() for t in cache.values())
            for j, i in enumerate(missing):
                t = ref[j, : int(lengths[j])].clone()
                size = t.numel() * t.element_size()
                if used + size <= self.reference_cache_bytes:
                    cache[i], used = t, used + size
                else:
                    fresh[i] = t
        rows = [cache[i] if i in cache else fresh[i] for i in idx]
        out = rows[0].new_zeros((len(idx), width, rows[0].shape[-1]))
        for k, t in enumerate(rows):
            out[k, : len(t)] = t
        return out


Objective = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class ObjectiveSpec:
    fn: Objective
    needs_retain: bool = False
    needs_reference_model: bool = False
    needs_reference_ll: bool = False


OBJECTIVES: dict[str, ObjectiveSpec] = {}


def objective(name: str, **needs: bool):
    def register(fn: Objective) -> Objective:
        OBJECTIVES[name] = ObjectiveSpec(fn, **needs)
        return fn
    return register


@objective("ascent")
def _ascent(mb: MicroBatch, ctx: ObjectiveContext) -> torch.Tensor:
    return losses.ascent(mb.nll, mb.mask, mb.weights)


@objective("descent")
def _descent(mb: MicroBatch, ctx: ObjectiveContext) -> torch.Tensor:
    return losses.descent(mb.nll, mb.mask, mb.weights)


@objective("npo", needs_reference_ll=True)
def _npo(mb: MicroBatch, ctx: ObjectiveContext, beta: float = 0.1, retain_weight: float = 1.0) -> torch.Tensor:
    ll = losses.sequence_log_likelihood(mb.nll, mb.mask)
    loss = losses.npo(ll, mb.reference_ll, mb.weights, beta)
    if ctx.retain is not None and retain_weight:
        ids, lengths, logits = ctx.forward(ctx.retain_rows(mb, tag=1))
        nll = losses.token_nll(logits, ids)
        loss = loss + retain_weight * losses.descent(nll, losses.position_mask(lengths, ids.shape[1]),
                                                     torch.ones_like(lengths, dtype=torch.float32))
    return loss


@objective("mismatch", needs_retain=True, needs_reference_model=True)
def _mismatch(mb: MicroBatch, ctx: ObjectiveContext, start: int = 50, k: int = 5, bad: float = 0.5,
              random: float = 1.0, normal: float = 1.0) -> torch.Tensor:
    """GA+Mismatch (§4.7): 0.5·ascent on tokens ≥ 50 + descent on (prefix + random answer) + CE to θ_0."""
    width = mb.input_ids.shape[1]
    loss = bad * losses.ascent(mb.nll, losses.position_mask(mb.lengths, width, start), mb.weights)
    rng = ctx.rng(mb, tag=2)
    rows, starts = [], []
    for i in torch.nonzero(mb.weights > 0).flatten().tolist():
        prefix = mb.input_ids[i, : min(start, int(mb.lengths[i]))].cpu()
        for _ in range(k):
            answer = ctx.retain.answers[int(rng.integers(len(ctx.retain.answers)))]
            rows.append(torch.cat([prefix, answer[: max(1, width - len(prefix))]]))
            starts.append(len(prefix))
    if rows and random:
        ids, lengths, logits = ctx.forward(rows)
        mask = losses.position_mask(lengths, ids.shape[1], torch.tensor(starts, device=lengths.device))
        loss = loss + random * losses.descent(losses.token_nll(logits, ids), mask,
                                              torch.ones_like(lengths, dtype=torch.float32))
    if normal:
        loss = loss + normal * ctx.to_reference(mb, tag=3)
    return loss


@objective("target", needs_reference_model=True, needs_reference_ll=True)
def _target(mb: MicroBatch, ctx: ObjectiveContext, loss: str = "ga", retain_weight: float = 1.0,
            beta: float = 0.1) -> torch.Tensor:
    """To each sequence its own target (docs/method.md §4.13): the rows above their target + ε are
    ascended (``loss``: gradient ascent, or NPO), the rows below target − ε pulled back by a descent
    step, the rows inside get no gradient; plus ``retain_weight`` × the cross-entropy from the original
    model's next-token distribution to the current one on ordinary (retain) text, which holds the rest
    of the model where it was (KL(p_original ‖ p_θ) up to a constant)."""
    up, down = (mb.weights > 0).float(), (mb.weights < 0).float()
    total = mb.logits.new_zeros((), dtype=torch.float32)
    if bool(up.any()):
        if loss == "npo":
            total = total + losses.npo(losses.sequence_log_likelihood(mb.nll, mb.mask), mb.reference_ll, up, beta)
        else:  # with positions (--tokens memorized) only the tokens a never-seen model misses are pushed down
            total = total + losses.ascent(mb.nll, mb.mask if mb.positions is None else mb.mask & mb.positions, up)
    if bool(down.any()):
        total = total + losses.descent(mb.nll, mb.mask, down)
    if retain_weight and ctx.retain is not None:
        total = total + retain_weight * ctx.to_reference(mb, tag=4)
    return total


# ---------------------------------------------------------------- methods

@dataclass(frozen=True)
class Phase:
    name: str
    objective: str
    selector: str = "all"
    objective_args: dict[str, Any] = field(default_factory=dict)
    edit_coef: float | None = None  # measure/stop on θ_b + c·(θ − θ_b), θ_b = the weights at phase start
    until_mean_below: float | str | None = None  # hand over once mean g < this (a number, or relative to τ)
    selective: bool = True  # whether a user's --selector replaces this phase's selector

    @property
    def spec(self) -> ObjectiveSpec:
        return OBJECTIVES[self.objective]

    def make_selector(self) -> Selector:
        return parse_selector(self.selector)

    def objective_fn(self) -> Callable[[MicroBatch, ObjectiveContext], torch.Tensor]:
        fn, args = self.spec.fn, dict(self.objective_args)
        return lambda mb, ctx: fn(mb, ctx, **args)


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    paper: str
    phases: tuple[Phase, ...]
    decoding: bool = False  # no training: a decoding-time defence (DPD)
    description: str = ""
    reset_optimizer: bool = False  # a fresh Adam state at a phase switch (the code carries it over, §8.7)
    stop_rule: str | None = None  # a method that stops by its own rule (target: every sequence at its target)
    dpd: dict[str, Any] = field(default_factory=dict)  # DPD's λ, mode and top-k (decoding methods only)

    @property
    def needs_retain(self) -> bool:
        return any(p.spec.needs_retain for p in self.phases)

    @property
    def uses_retain(self) -> bool:
        return self.needs_retain or any(p.objective in ("npo", "target") for p in self.phases)

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title, "paper": self.paper,
                "phases": [dataclasses.asdict(p) for p in self.phases], "decoding": self.decoding,
                "reset_optimizer": self.reset_optimizer, **({"dpd": self.dpd} if self.decoding else {})}


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    for p in method.phases:
        if p.objective not in OBJECTIVES:
            raise ValueError(f"method {method.name}: unknown objective {p.objective!r}")
        parse_selector(p.selector)
    METHODS[method.name] = method
    return method


register(Method("ga", "Gradient ascent (Jang et al.)", "§4.1",
                (Phase("ga", "ascent", "all"),),
                description="ascent on every sequence until the stop rule holds"))
register(Method("sga", "Selective gradient ascent", "§4.2",
                (Phase("sga", "ascent", "threshold:tau+0.4"),),
                description="ascent only on sequences with g ≥ γ = τ + 0.4 (the paper's 0.7 at τ = 0.3), plus each "
                            "micro-batch's most memorized"))
register(Method("ta", "Task arithmetic", "§4.3",
                (Phase("ga", "ascent", "all", until_mean_below="tau+0.6"),
                 Phase("ta", "descent", "all", edit_coef=-3.0, selective=False)),
                description="fine-tune on the forget set; measure and report θ_b − 3·(θ_ft − θ_b) "
                            "(gradient ascent first while mean g ≥ τ + 0.6, the code's 0.9 at τ = 0.3)"))
register(Method("tau", "Task arithmetic for unlearning (SGA → TA)", "§4.4",
                (Phase("sga", "ascent", "threshold:tau+0.4", until_mean_below="tau+0.2"),
                 Phase("ta", "descent", "all", edit_coef=-1.0, selective=False)),
                description="SGA until mean g < τ + 0.2 (the paper's 0.5 at τ = 0.3), then TA with c = −1 from the "
                            "SGA model, Adam state carried over"))
register(Method("npo", "Negative preference optimization (Zhang et al. 2024)", "baseline",
                (Phase("npo", "npo", "all", {"beta": 0.1, "retain_weight": 1.0}),),
                description="NPO on the forget set, β = 0.1; plus NLL on retain data when --retain is given"))
register(Method("ga+mismatch", "GA + Mismatch (Yao et al. 2023)", "§4.7",
                (Phase("mismatch", "mismatch", "all", {"start": 50, "k": 5, "bad": 0.5, "random": 1.0, "normal": 1.0}),),
                description="0.5·ascent on tokens ≥ 50 + descent on prefix + random answers + CE to θ_0 on normal data; "
                            "full-parameter, in the shared harness (the code: AdaLoRA, AdamW 2e-4, batch 1)"))
register(Method("target", "Per-sequence targets", "§4.13",
                (Phase("target", "target", "target:0.05", {"loss": "ga", "retain_weight": 1.0, "beta": 0.1}),),
                stop_rule="target",
                description="each sequence to its own target level (its τ): ascend while above target + ε, freeze inside "
                            "± ε, pull back below target − ε; a retain term holds the rest of the model"))
register(Method("dpd", "Differentially-private decoding (Majmudar et al.)", "§4.6", (), decoding=True,
                dpd={"lambda": 0.2, "mode": "logits", "top_k": 50},
                description="no training: sample from λ·z + (1−λ)·mean(z) (the code), or λ·p + (1−λ)/|V| (the original)"))


class MethodSpec(Options):
    """A registered method and the user's overrides of its constants (YAML ``method:``, flags below)."""

    name: str = option("sga", f"{', '.join(list(METHODS)[:-1])} or {list(METHODS)[-1]}.", "--method")
    selector: str | None = option(None, "Override the selector of the selective phases: all, threshold:γ, top:k.")
    switch_below: float | str | None = option(None, "Mean MA at which ta/tau hand over to task arithmetic (default tau+0.6 / tau+0.2: the "
                                                    "paper's 0.9 / 0.5 at τ = 0.3; or a number).",
                                              allowed="a number in [0, 1] or a level relative to τ (tau+0.2)")
    edit_coef: float | None = option(None, "Task-arithmetic coefficient c (ta: −3, tau: −1).", "--edit-coef", "--ta-coef")
    reset_optimizer: bool = option(False, "Fresh Adam state at a phase switch (the code carries it over).")
    dpd_lambda: float = option(0.2, "DPD mixing weight λ.", ge=0.0, le=1.0, allowed="a number in [0, 1]")
    dpd_mode: Literal["logits", "probs"] = option("logits", "DPD: logits (the code) or probs (Majmudar's original).")
    dpd_top_k: int = option(50, "DPD: sample from the top k tokens (the code's Hugging Face default).", ge=1)
    # target's knobs, left out of the dumped spec at their defaults (the run keys of other methods stay as they were)
    epsilon: float = option(0.05, "target: the tolerance ε around each sequence's target.", gt=0.0, lt=1.0,
                            exclude_if=lambda v: v == 0.05)
    loss: Literal["ga", "npo"] = option("ga", "target: the loss that moves a sequence down (ga or npo).",
                                        exclude_if=lambda v: v == "ga")
    retain_weight: float = option(1.0, "target: weight of the retain term (KL to the original on ordinary or "
                                       "retain text; 0: none).", ge=0.0, exclude_if=lambda v: v == 1.0)
    tokens: Literal["all", "memorized"] = option(
        "all", "target: the tokens the ascent pushes down: all, or memorized (only those the --target-model, which "
               "never saw the forget set, does not predict; needs --target-rule reference-model and --loss ga).",
        exclude_if=lambda v: v == "all")

    @field_validator("switch_below", mode="before")
    @classmethod
    def _level(cls, v):
        from unmemorize.thresholds import parse_level

        if v is None:
            return v
        parsed = parse_level(v)
        if isinstance(parsed, float):
            if not 0.0 <= parsed <= 1.0:
                raise ValueError(f"got {v!r}; allowed: a number in [0, 1] or a level relative to τ (tau+0.2)")
            return parsed
        return str(v).replace(" ", "")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _registered(cls, v):
        if v.strip().lower() not in METHODS:
            raise ValueError(f"unknown method {v!r}; allowed: {', '.join(METHODS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        try:
            method = resolve_method(self)
        except UserError as e:
            raise ValueError(str(e).replace("--ta-coef", "edit_coef").replace("--switch-below", "switch_below")) from None
        if not method.decoding and (self.dpd_lambda != 0.2 or self.dpd_mode != "logits" or self.dpd_top_k != 50):
            raise ValueError(f"dpd_lambda, dpd_mode and dpd_top_k apply to method dpd, not {self.name}")
        if method.name != "target" and (self.epsilon != 0.05 or self.loss != "ga" or self.retain_weight != 1.0
                                        or self.tokens != "all"):
            raise ValueError(f"epsilon, loss, retain_weight and tokens apply to method target, not {self.name}")
        if self.tokens == "memorized" and self.loss != "ga":
            raise ValueError("tokens: memorized restricts gradient ascent to some tokens; NPO compares whole-sequence "
                             "likelihoods with the model before unlearning, so it takes --loss ga")
        return self


def resolve_method(name: str | Method | MethodSpec, selector: str | None = None, switch_below: float | None = None,
                   edit_coef: float | None = None) -> Method:
    """A registered method with the user's overrides applied.

    ``selector`` replaces the selector of every selective phase; ``switch_below`` the hand-over
    threshold of the phase before task arithmetic (TA's 0.9, TAU's 0.5; 1.0 skips that phase for
    TAU, i.e. plain TA); ``edit_coef`` the task-arithmetic coefficient c. A :class:`MethodSpec`
    brings its own overrides (and the optimizer and DPD settings).
    """
    spec = None
    if isinstance(name, MethodSpec):
        spec = name
        name, selector, switch_below, edit_coef = spec.name, spec.selector, spec.switch_below, spec.edit_coef
    if isinstance(name, Method):
        method = name
    else:
        key = name.strip().lower()
        if key not in METHODS:
            raise UserError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
        method = METHODS[key]
    if selector is not None:
        parse_selector(selector)
    if isinstance(switch_below, (int, float)) and not 0.0 <= switch_below <= 1.0:
        raise UserError(f"the phase switch threshold must be in [0, 1], got {switch_below}")
    phases = []
    for i, p in enumerate(method.phases):
        changes: dict[str, Any] = {}
        if selector is not None and p.selective:
            changes["selector"] = selector
        nxt = method.phases[i + 1] if i + 1 < len(method.phases) else None
        if switch_below is not None and p.until_mean_below is not None and nxt is not None and nxt.edit_coef is not None:
            changes["until_mean_below"] = switch_below
        if edit_coef is not None and p.edit_coef is not None:
            changes["edit_coef"] = edit_coef
        phases.append(dataclasses.replace(p, **changes))
    if selector is not None and method.phases and not any(p.selective for p in method.phases):
        raise UserError(f"method {method.name} has no phase a selector applies to")
    if edit_coef is not None and not any(p.edit_coef is not None for p in method.phases):
        raise UserError(f"method {method.name} uses no task arithmetic; --ta-coef applies to ta and tau")
    if switch_below is not None and not any(p.until_mean_below is not None for p in method.phases):
        raise UserError(f"method {method.name} has a single phase; --switch-below applies to ta and tau")
    extra: dict[str, Any] = {}
    if spec is not None and method.name == "target":
        phases = [dataclasses.replace(p, selector=f"target:{spec.epsilon:g}" if selector is None else p.selector,
                                      objective_args={**p.objective_args, "loss": spec.loss,
                                                      "retain_weight": spec.retain_weight})
                  for p in phases]
    if spec is not None:
        extra["reset_optimizer"] = spec.reset_optimizer
        if method.decoding:
            extra["dpd"] = {"lambda": spec.dpd_lambda, "mode": spec.dpd_mode, "top_k": spec.dpd_top_k}
    return dataclasses.replace(method, phases=tuple(phases), **extra)
