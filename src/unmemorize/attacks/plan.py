"""The attack plan: how many MIAU neighbours (K) and non-members a run can afford, and what it will cost.

MIAU scores every sequence and its K neighbours and refills the neighbours first, so its cost grows
as (members + non-members) × K sequence passes; every other attack costs one pass per sequence. On a
GPU the paper's K = 25 is cheap. On a CPU it is not: an ``unmemorize unlearn`` of 8 sequences (about
2.5 minutes with attacks off) attacks the model before and after unlearning, and K = 25 over 8 + 32
sequences would add about 12 minutes. So ``neighbours`` left to "auto" (None) resolves here:

* GPU (or any accelerator): K = 25, every non-member.
* CPU: the largest K ≤ 25 whose estimated attack time for an unlearning run (attacks before and after,
  neighbours refilled once and cached in between) fits :data:`CPU_BUDGET_S` per 8 members. When even
  K = :data:`K_FLOOR` does not fit with every non-member and no non-member limit was given, the
  non-members are sampled down (never below :func:`min_nonmembers`) so that it does.

The estimate counts sequence passes (one teacher-forced pass over a T-token sequence; a refilled
neighbour costs :data:`REFILL_PASSES` of one) and turns them into seconds at a FLOP rate per device
(2 FLOPs per parameter per token). It is a plan, not a promise: measured on this project's 2-core CPU,
SmolLM2-135M passes 200 tokens in 0.2–0.35 s (the machine's speed varied between days).

:func:`plan_attacks` is pure (everything it reads is an argument), so a command can print the plan
before any model pass; :func:`unmemorize.attacks.run.run_attacks` resolves "auto" through it, so the
library never runs with K = None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

PAPER_K = 25
K_FLOOR = 5  # below this many neighbours MIAU's mean is too noisy: sample the non-members down instead
CPU_BUDGET_S = 420.0  # attacks before + after of an unlearning run of 8 members: 7 of its 10 minutes
MIN_NONMEMBERS = 32
# one neighbour's refill, in sequence passes, as measured on a 2-core CPU (benchmarks/bench_attacks.py, K = 25):
REFILL_PASSES = 1.6  # lm: each neighbour its own token stream (1.62)
INDEPENDENT_REFILL_PASSES = 0.65  # lm-independent, the default: one prefill per text, only the samples decode (0.63)
T5_REFILL_PASSES = 3.0  # the T5 filler (t5-large is 5.5× SmolLM2) decodes only the fills
FLOPS = {"cpu": 7.5e10, "cuda": 2.0e13, "mps": 2.0e12, "xpu": 1.0e13}  # per thread on a CPU; effective rates


@dataclass(frozen=True)
class AttackPlan:
    """What an attack run will do: K and the non-members (each with the reason), and its estimated cost."""

    neighbours: int | None  # K, or None when MIAU is not run
    neighbours_reason: str
    n_members: int
    n_nonmembers: int  # non-members the attacks will use
    nonmembers_available: int
    nonmembers_reason: str
    passes: float  # sequence passes of this run (estimate)
    seconds: float  # at the device's rate (estimate)
    device_type: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def capped(self) -> bool:
        return self.n_nonmembers < self.nonmembers_available

    def describe(self) -> str:
        """One line for the terminal, before the run starts."""
        miau = "no MIAU" if self.neighbours is None else f"MIAU K = {self.neighbours} ({self.neighbours_reason})"
        non = (f"{self.n_nonmembers} of {self.nonmembers_available} non-members ({self.nonmembers_reason})"
               if self.capped else f"{self.n_nonmembers} non-members")
        return (f"attack plan: {miau}, {self.n_members} members + {non}, ≈ {self.passes:,.0f} sequence passes, "
                f"≈ {_duration(self.seconds)}")

    def as_dict(self) -> dict:
        return {"neighbours": self.neighbours, "neighbours_reason": self.neighbours_reason,
                "members": self.n_members, "nonmembers": self.n_nonmembers,
                "nonmembers_available": self.nonmembers_available, "nonmembers_reason": self.nonmembers_reason,
                "passes": round(self.passes, 1), "seconds": round(self.seconds, 1), "device": self.device_type,
                "line": self.describe()}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def seconds_per_pass(model_parameters: int, length: int, device_type: str, threads: int = 2) -> float:
    """Seconds of one teacher-forced pass over ``length`` tokens: 2 FLOPs per parameter per token."""
    rate = FLOPS.get(device_type, FLOPS["cuda"])
    if device_type == "cpu":
        rate *= max(1, threads)
    return 2.0 * model_parameters * length / rate


def min_nonmembers(n_members: int, fprs: tuple[float, ...] | None = None) -> int:
    """The fewest non-members a plan samples down to: 32, twice the members, and what the asked FPRs need."""
    need = max(MIN_NONMEMBERS, 2 * n_members)
    if fprs:
        need = max(need, max(math.ceil(1.0 / a - 1e-9) for a in fprs))
    return need


def run_passes(n: int, k: int, *, miau: bool, refill: float, token_stats: bool = True, original: bool = False,
               refill_cached: bool = False) -> float:
    """Sequence passes of one attack run over ``n`` sequences with K = ``k``."""
    passes = float(n) if token_stats or miau else 0.0
    if miau:
        passes += n * k * (1.0 + (0.0 if refill_cached else refill))
    if original:
        passes += n
    return passes


def unlearning_passes(n: int, k: int, refill: float) -> float:
    """An unlearning run's attacks: token statistics before and after, the original's ℓ for the reference
    attack after, neighbours scored before and after, refilled once (cached between the two)."""
    return n * (3.0 + k * (2.0 + refill))


def refill_passes(perturber: str) -> float:
    return {"auto": INDEPENDENT_REFILL_PASSES, "lm": REFILL_PASSES, "lm-independent": INDEPENDENT_REFILL_PASSES,
            "t5": T5_REFILL_PASSES}.get(perturber, 0.0)


def plan_attacks(options, n_members: int, n_nonmembers: int, device_type: str, model_parameters: int, *,
                 length: int = 200, threads: int = 2, has_original: bool = False,
                 refill_cached: bool = False, perturber: str | None = None) -> AttackPlan:
    """Resolve K (``options.neighbours`` None = auto) and the non-member count (``options.nonmembers`` None =
    auto) for ``n_members`` members against ``n_nonmembers`` available non-members, and estimate the run.

    ``options`` is an :class:`~unmemorize.attacks.registry.AttackSettings` (or AttackOptions);
    ``device_type`` is ``torch.device.type`` ("cpu", "cuda", …); ``threads`` the CPU threads torch uses.
    The resolution never depends on ``has_original`` or ``refill_cached``, so the attacks before and
    after unlearning resolve to the same K and the same non-members. ``perturber`` names the refill that
    will run when it is known (``auto`` falls back to ``lm`` on some models, which costs more than the
    ``lm-independent`` it is priced at otherwise): K depends on it, a costlier refill fitting fewer
    neighbours, and it is the same refill before and after unlearning, so K still agrees between them.
    """
    from unmemorize.attacks.registry import ATTACKS

    names = options.names if options.names is not None else tuple(
        n for n, a in ATTACKS.items() if n != "sampling" and (has_original or not a.needs_original))
    miau = "miau" in names
    refill = refill_passes(perturber or options.perturber)
    per_pass = seconds_per_pass(model_parameters, length, device_type, threads)
    budget = CPU_BUDGET_S * max(1.0, n_members / 8)
    gpu = device_type != "cpu"
    limit = options.nonmembers
    n_non = n_nonmembers if limit is None else min(limit, n_nonmembers)
    non_reason = "--nonmembers" if limit is not None and limit < n_nonmembers else "all"

    def fit_k(n_non_: int) -> int:
        """The largest K whose unlearning-run estimate fits the budget (0 if none does)."""
        n = n_members + n_non_
        left = budget / per_pass / max(n, 1) - 3.0
        return max(0, min(PAPER_K, math.floor(left / (2.0 + refill) + 1e-9)))

    if not miau:
        k, k_reason = None, "not run"
    elif options.neighbours is not None:
        k, k_reason = options.neighbours, "--neighbours"
    elif gpu:
        k, k_reason = PAPER_K, f"the paper's; {'GPU' if device_type == 'cuda' else device_type.upper()}"
    else:
        k = fit_k(n_non)
        if k < K_FLOOR and limit is None:
            # sample the non-members down until K_FLOOR fits (never below the minimum)
            floor = min(n_nonmembers, min_nonmembers(n_members, options.fprs))
            n_fit = n_non
            while n_fit > floor and fit_k(n_fit) < K_FLOOR:
                n_fit -= 1
            if n_fit < n_non:
                n_non, non_reason = n_fit, f"CPU time; all with --nonmembers {n_nonmembers}"
            k = fit_k(n_non)
        k = max(1, k)
        k_reason = ("CPU" if k == PAPER_K else f"CPU; the paper's K = {PAPER_K} with --neighbours {PAPER_K}")
    passes = run_passes(n_members + n_non, k or 0, miau=miau, refill=refill, original=has_original and
                        "reference" in names, refill_cached=refill_cached)
    return AttackPlan(k, k_reason, n_members, n_non, n_nonmembers, non_reason, passes, passes * per_pass,
                      device_type)


def sample_nonmembers(n_available: int, n: int, seed: int) -> np.ndarray:
    """Which non-members a plan keeps: a seeded sample of ``n`` rows, in their file order (all when n ≥ available).
    The same for the attacks before and after unlearning."""
    if n >= n_available:
        return np.arange(n_available)
    rng = np.random.default_rng([seed, 0x6E6F6E])  # its own stream: not the neighbours' nor the bootstrap's
    return np.sort(rng.choice(n_available, n, replace=False))


def model_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def resolve(options, model, forget, reference, *, original=None, threads: int | None = None,
            perturber: str | None = None):
    """(options with K and the non-member limit resolved, the non-members to use, the plan) for
    :func:`~unmemorize.attacks.run.run_attacks`; ``perturber`` is the name of the one built, if any."""
    import torch

    from unmemorize.forward import device_of

    plan = plan_attacks(options, len(forget), len(reference), device_of(model).type, model_parameters(model),
                        length=max(forget.length, reference.length),
                        threads=torch.get_num_threads() if threads is None else threads,
                        has_original=original is not None, perturber=perturber)
    if plan.n_nonmembers < len(reference):
        reference = reference.subset(sample_nonmembers(len(reference), plan.n_nonmembers, options.seed).tolist())
    resolved = options.replace(neighbours=plan.neighbours if plan.neighbours is not None else options.neighbours,
                               nonmembers=options.nonmembers)
    return resolved, reference, plan
