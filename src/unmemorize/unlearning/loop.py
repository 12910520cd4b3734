"""The one unlearning loop under every method (docs/method.md §4.0).

    measure g(x) for every x on the evaluated model (θ, or θ_b + c·(θ − θ_b) in a task-arithmetic phase)
    ├─ record the trajectory; hand over to the next phase if its threshold is crossed
    ├─ stop?  mean rule: mean g < τ  ·  per-sequence rule: no sequence at or above the band's top
    └─ else one optimizer update over the *whole* forget set: a seeded random partition into
       micro-batches; per micro-batch the selector picks rows (only rows still above the band under the
       per-sequence rule), the objective's loss is backpropagated and accumulated; the step's gradient
       is the mean over the micro-batches that contributed; Adam(0.9, 0.98), lr 5e-5, no schedule.

Measuring and training share forward passes: the weights a step's gradient is taken at are the
weights just measured, so when most of a micro-batch will be selected, its one forward pass (with
gradient) yields both the MA of every row and the loss of the selected rows; otherwise the rows are
measured without gradient and only the selected ones are run again with it (fusion is a switch of
the one pass, :func:`unmemorize.forward.logits` with ``grad``). Either way the selection uses the
scores of the weights the gradient is taken at (the code's scores of the previous validation).
Dropout is off (the model stays in eval mode while training).

Scale (issue 7): ``mixed_precision`` autocasts the forward passes (weights stay fp32), gradient
checkpointing recomputes activations in the backward pass, ``lora_rank`` trains a peft LoRA adapter
instead of the weights (task arithmetic then acts on the adapter's weight deltas,
:mod:`.lora`; the returned model is merged). Under ``accelerate launch`` with several processes
(:mod:`unmemorize.distributed`) the step's micro-batches are dealt out round-robin over the ranks,
per-sequence scores are gathered by owner before anything is selected or decided, and each
micro-batch's loss is scaled by W/C (C = micro-batches that contribute, W = ranks) so that the
engine's mean over ranks gives the same mean over micro-batches as one process: the trajectory is
that of one process up to floating-point summation order. Measuring and training are not fused
there (the selection must be known on every rank before a gradient pass). One process is the same
code with one rank, no padding passes and no fusion restriction.

Safety: the input model is not modified (``copy=True``, and the CLI never writes to its folder);
a non-finite loss or gradient stops the run before the update, and non-finite outputs after an
update roll the weights back to the last ones measured finite; every ``checkpoint_every`` updates the
whole state is written so that a resumed run ends with exactly the numbers of an uninterrupted one
(the micro-batch partition of step k depends only on (seed, k)).
"""

from __future__ import annotations

import contextlib
import copy as _copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from unmemorize import distributed, forward
from unmemorize.data import SequenceSet
from unmemorize.errors import UserError
from unmemorize.memorization import masked_mean, memorization_accuracy
from unmemorize.models import MixedPrecision, check_context, check_mixed_precision, enable_gradient_checkpointing
from unmemorize.options import Options, option
from unmemorize.progress import task
from unmemorize.thresholds import Band, Summary, outlier_count, resolve_level, summarize
from unmemorize.unlearning import checkpoint as ckpt
from unmemorize.unlearning import lora as lora_
from unmemorize.unlearning import losses
from unmemorize.unlearning.methods import Method, MethodSpec, MicroBatch, ObjectiveContext, Phase, resolve_method
from unmemorize.unlearning.retain import RetainData
from unmemorize.unlearning.selectors import Target
from unmemorize.unlearning.task_vectors import apply_edit_, copy_state, edited, load_state_, offload_to_disk, trainable_state

STOP_RULES = ("mean", "per-sequence", "target")
Optimizer = Literal["adam", "adamw"]
AdapterKind = Literal["lora", "adalora"]
# name → the optimizer class over the trained parameters (both take lr, betas, eps, weight_decay)
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
_FP16_RETRIES = 20  # loss-scale halvings tried for one update before giving up (2^-20 of the initial scale)
BEFORE = "before"


class UnlearnOptions(Options):
    """The harness (YAML ``training:``); defaults are the paper's (docs/method.md §4.0, §4.9)."""

    lr: float = option(5e-5, "Adam learning rate.", gt=0, allowed="a positive number")
    betas: tuple[float, float] = option((0.9, 0.98), "Adam's β1 and β2.")
    eps: float = option(1e-8, "Adam's ε.", "--adam-eps", gt=0)
    weight_decay: float = option(0.0, "Adam's weight decay (the paper: none).", ge=0)
    max_steps: int = option(150, "At most this many optimizer steps.", ge=0, allowed="an integer ≥ 0")
    micro_batch: int = option(8, "Sequences per forward pass (the update always covers the whole forget set).",
                              ge=1, allowed="a positive integer")
    parity: bool = option(False, "Count padding in MA and attend to it, as the original code does.")
    checkpoint_every: int = option(5, "Updates between checkpoints (0: none).", ge=0,
                                   allowed="an integer ≥ 0 (0: no checkpoints)")
    mixed_precision: MixedPrecision = option("no", "no, bf16 (CPU or Ampere+ GPU) or fp16 (CUDA; loss scaling).")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass (less memory, ~1/3 "
                                                 "more compute).")
    optimizer: Optimizer = option("adam", "adam (the paper's harness: weight decay added to the gradient) or adamw "
                                          "(decoupled weight decay; GA+Mismatch's original, with --weight-decay 0.01).")
    lora_rank: int = option(0, "Train a LoRA adapter of this rank instead of the weights (0: off); merged at the end.",
                            ge=0)
    lora_kind: AdapterKind = option("lora", "The adapter --lora-rank trains: lora, or adalora (the SVD form of "
                                            "GA+Mismatch's original; the rank stays fixed, as there).")
    lora_alpha: float | None = option(None, "LoRA α (default 2·rank).", gt=0)
    lora_targets: str | None = option(None, "LoRA target modules (comma-separated, or all-linear; default: peft's "
                                            "for the architecture).")
    base_on_disk: bool = option(False, "Task arithmetic: keep θ_b memory-mapped from a safetensors file instead of "
                                       "in memory.")
    # the library's own switches (neither keys nor flags)
    base_on_cpu: bool = option(True, "Keep θ_b (and θ_ft while the edit is measured) off the accelerator.", yaml=False)
    fuse: Literal["auto", "always", "never"] = option("auto", "Share forward passes between measuring and training.",
                                                      yaml=False)

    def as_dict(self) -> dict:
        return self.model_dump(mode="json")


@dataclass
class StepInfo:
    """What the loop knows after measuring step k (passed to ``on_step``)."""

    step: int
    phase: str  # the phase of the update that led here ("before" at step 0)
    mean: float
    above: int  # sequences with g ≥ band.hi (still extractable)
    below: int  # sequences with g ≤ band.lo (over-forgotten)
    sequences: int
    selected: int  # sequences that received gradient in the update that led here


@dataclass
class UnlearningResult:
    """The unlearned model with its per-sequence history.

    ``trajectory`` has one row per sequence per measured step: step, id, ma, loss, selected (received
    gradient in the update that led to this step), phase (of that update; "before" at step 0). For
    task-arithmetic phases ma and loss are those of the edited model, which is also the model returned.
    """

    model: torch.nn.Module
    method: Method
    stop_rule: str
    tau: float
    band: Band
    options: UnlearnOptions
    trajectory: pd.DataFrame
    steps: int
    seconds: float
    stop_reason: str
    converged: bool  # the stop rule was met (not the step cap, not a non-finite loss)
    rolled_back: bool
    events: list[str] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)  # measure + update, per update
    resumed_from: int | None = None
    world_size: int = 1  # processes that ran it (the numbers do not depend on it)
    seed: int = 42
    targets: np.ndarray | None = None  # each sequence's target (τ, or its own; lowered to its start if lower)

    def at(self, step: int) -> pd.DataFrame:
        return self.trajectory[self.trajectory["step"] == step].reset_index(drop=True)

    @property
    def before(self) -> pd.DataFrame:
        return self.at(int(self.trajectory["step"].min()))

    @property
    def after(self) -> pd.DataFrame:
        return self.at(int(self.trajectory["step"].max()))

    def summary(self, step: int | None = None) -> Summary:
        frame = self.after if step is None else self.at(step)
        return summarize(frame["ma"].to_numpy(), self.tau, self.band)

    def steps_table(self) -> pd.DataFrame:
        """One row per measured step: phase, mean, std, c_low, c_high, selected."""
        rows = []
        for step, grp in self.trajectory.groupby("step", sort=True):
            s = summarize(grp["ma"].to_numpy(), self.tau, self.band)
            rows.append({"step": int(step), "phase": grp["phase"].iloc[0], "mean_ma": s.mean, "std_ma": s.std,
                         "c_low": s.c_low, "c_high": s.c_high, "selected": int(grp["selected"].sum()),
                         "mean_loss": float(grp["loss"].mean())})
        return pd.DataFrame(rows)

    def as_dict(self) -> dict:
        return {"method": self.method.name, "title": self.method.title, "stop_rule": self.stop_rule,
                "tau": self.tau, "band": [self.band.lo, self.band.hi], "steps": self.steps,
                "seconds": self.seconds, "stop_reason": self.stop_reason, "converged": self.converged,
                "rolled_back": self.rolled_back, "events": self.events, "resumed_from": self.resumed_from,
                "world_size": self.world_size, "seed": self.seed,
                "before": self.summary(int(self.trajectory["step"].min())).as_dict(),
                "after": self.summary().as_dict(),
                "median_iteration_seconds": float(np.median(self.iteration_seconds)) if self.iteration_seconds else None}


def unlearn(model, forget: SequenceSet, *, tau: float, method: str | MethodSpec | Method = "sga",
            band: Band = Band(), stop: str | None = None, seed: int = 42, options: UnlearnOptions | None = None,
            retain: RetainData | None = None, checkpoint_dir: str | Path | None = None,
            progress=None, on_step: Callable[[StepInfo], None] | None = None,
            copy: bool = True, targets=None, ascent_positions: torch.Tensor | None = None) -> UnlearningResult:
    """Unlearn ``forget`` from ``model`` with a registered method, stopping by ``stop``.

    ``tau`` is the acceptable memorization level (mean MA of the original model on unseen text of
    the same form, :func:`unmemorize.thresholds.acceptable_level`). ``seed`` fixes the micro-batch
    partition of every step (and the retain draws, the LoRA initialisation, DPD's samples). With
    ``copy=True`` the model passed in is left untouched and the result holds a trained copy. With
    ``checkpoint_dir`` the run is checkpointed every ``options.checkpoint_every`` updates, and a
    compatible checkpoint found there is resumed.

    ``stop`` defaults to the method's own rule (``target`` for method target, else ``mean``).
    ``targets`` gives each sequence its own acceptable level (default: τ for every one): the level
    that relative constants (``threshold:tau+0.4``) and the ``target`` selector and stop rule refer
    to, e.g. τ of the sequence's own group, or a calibrated estimate from a reference model.
    ``ascent_positions`` ([N, T] bool, aligned with ``forget.input_ids``; method target only) says which
    tokens its gradient ascent may push down, e.g. those a model that never saw F does not predict
    (:func:`memorized_positions`): the rest of each sequence, text any model would predict, is left alone.
    """
    check_context(model, forget.length)
    opts = options or UnlearnOptions()
    m = resolve_method(method)
    stop = stop or m.stop_rule or "mean"
    if stop not in STOP_RULES:
        raise UserError(f"unknown stop rule {stop!r}; choose from {', '.join(STOP_RULES)}")
    if not isinstance(tau, (int, float)) or not math.isfinite(tau):
        raise UserError(f"τ must be a finite number, got {tau!r}")
    if len(forget) == 0:
        raise UserError("the forget set is empty")
    targets = _targets(targets, float(tau), len(forget))
    if ascent_positions is not None:
        ascent_positions = torch.as_tensor(ascent_positions, dtype=torch.bool)
        if tuple(ascent_positions.shape) != tuple(forget.input_ids.shape):
            raise UserError(f"ascent positions of shape {tuple(ascent_positions.shape)} for forget tokens of shape "
                            f"{tuple(forget.input_ids.shape)}: give one flag per token")
        if any(p.objective != "target" for p in m.phases) or not m.phases:
            raise UserError(f"ascent positions apply to method target, not {m.name}")
    band = band.at(float(tau))
    if m.needs_retain and retain is None:
        raise UserError(f"method {m.name} needs retain data: pass --retain FILE (e.g. a TruthfulQA CSV)")
    if m.decoding and opts.lora_rank:
        raise UserError("DPD changes decoding, not weights: there is nothing for a LoRA adapter to learn; drop --lora-rank")
    if opts.lora_kind != "lora" and not opts.lora_rank:
        raise UserError(f"--lora-kind {opts.lora_kind} names the adapter --lora-rank trains: give --lora-rank too")
    if opts.lora_kind == "adalora" and any(p.edit_coef is not None for p in m.phases):
        raise UserError(f"method {m.name} edits the task vector of a LoRA adapter (B·A); an AdaLoRA adapter (P·Λ·Q) "
                        "cannot be edited that way: use --lora-kind lora")
    if copy:
        model = _copy.deepcopy(model)
    if m.decoding:
        return _decode_only(model, forget, m, float(tau), band, stop, seed, opts, progress)
    dist = distributed.current()
    check_mixed_precision(opts.mixed_precision, dist.device if dist is not None else forward.device_of(model))
    loop = lambda net: _Loop(net, forget, m, float(tau), band, stop, seed, opts, retain, checkpoint_dir,  # noqa: E731
                             progress, on_step, targets, ascent_positions)
    if not opts.lora_rank:
        return loop(model).run()
    peft_model = lora_.add_lora(model, opts.lora_rank, opts.lora_alpha, opts.lora_targets, seed=seed,
                                kind=opts.lora_kind, total_steps=opts.max_steps)
    try:
        result = loop(peft_model).run()
    except BaseException:
        peft_model.unload()  # take the adapter out again: a model trained in place (copy=False) is left as it was
        raise
    result.model = lora_.merge(result.model)  # a plain transformers model, saved and profiled as usual
    return result


def memorized_positions(reference_greedy: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[N, T] bool: token t of each sequence is one the reference model does not predict, greedy a[t] ≠ x[t]
    (``reference_greedy[:, t-1]`` is a[t], as in :func:`unmemorize.memorization.memorization_accuracy`);
    position 0 and padding (t ≥ length) are never one. MA counts the other tokens: a model that never saw
    the sequence gets them right anyway, so pushing them down forgets ordinary language, not the sequence."""
    out = torch.zeros_like(input_ids, dtype=torch.bool)
    out[:, 1:] = reference_greedy[:, :-1] != input_ids[:, 1:]
    return out & (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None])


def _targets(targets, tau: float, n: int) -> np.ndarray:
    if targets is None:
        return np.full(n, tau)
    t = np.asarray(targets, dtype=float).reshape(-1)
    if t.shape != (n,):
        raise UserError(f"{t.size} targets for {n} forget sequences: give one per sequence")
    if not np.isfinite(t).all() or (t < 0).any() or (t > 1).any():
        raise UserError("every per-sequence target must be a finite level in [0, 1]")
    return t


# ---------------------------------------------------------------- DPD: no training

def _decode_only(model, forget, m: Method, tau, band, stop, seed, opts, progress) -> UnlearningResult:
    from unmemorize.decoding import sampled_memorization_accuracy
    from unmemorize.memorization import ProfileOptions, profile

    t0 = time.perf_counter()
    d = m.dpd
    greedy = profile(model, forget, ProfileOptions(metrics=("ma", "loss"), batch_size=opts.micro_batch,
                                                   parity=opts.parity), progress)
    sampled = sampled_memorization_accuracy(model, forget, d["lambda"], d["mode"], d["top_k"], seed,
                                            opts.micro_batch, opts.parity, progress)
    frames = [pd.DataFrame({"step": 0, "id": forget.ids, "ma": greedy["ma"].to_numpy(),
                            "loss": greedy["loss"].to_numpy(), "selected": False, "phase": "greedy"}),
              pd.DataFrame({"step": 1, "id": forget.ids, "ma": sampled, "loss": greedy["loss"].to_numpy(),
                            "selected": False, "phase": f"dpd λ={d['lambda']:g} ({d['mode']})"})]
    rule = _Rule(stop, tau, band, np.full(len(forget), tau))
    met = rule.met(sampled)
    return UnlearningResult(model, m, stop, tau, band, opts, pd.concat(frames, ignore_index=True), steps=0,
                            seconds=time.perf_counter() - t0,
                            stop_reason=f"decoding-time defence: MA under sampling, {rule.text(sampled)}",
                            converged=met, rolled_back=False, seed=seed)


# ---------------------------------------------------------------- the loop

@dataclass
class _Rule:
    """The stop rule (docs/method.md §4.0, §4.13): ``mean`` (mean g < τ, the paper's), ``per-sequence``
    (no sequence at or above the band's top) or ``target`` (every sequence within ε of its own
    target, or of where it started when that is lower)."""

    name: str
    tau: float
    band: Band
    targets: np.ndarray
    epsilon: float = 0.05

    def outside(self, g: np.ndarray) -> tuple[int, int]:
        """(below t − ε, above t + ε) among the measured sequences."""
        known = ~np.isnan(g)
        return (int((known & (g < self.targets - self.epsilon)).sum()),
                int((known & (g > self.targets + self.epsilon)).sum()))

    def met(self, g: np.ndarray) -> bool:
        measured = g[~np.isnan(g)]
        if measured.size == 0:
            return True
        if self.name == "mean":
            return bool(measured.mean() < self.tau)
        if self.name == "target":
            return sum(self.outside(g)) == 0
        return bool((measured >= self.band.hi).sum() == 0)

    def text(self, g: np.ndarray) -> str:
        if self.name == "mean":
            return f"mean MA {np.nanmean(g):.4f} {'<' if np.nanmean(g) < self.tau else '≥'} τ = {self.tau:.4f}"
        if self.name == "target":
            low, high = self.outside(g)
            if low == high == 0:
                return f"every sequence within ε = {self.epsilon:g} of its target"
            return f"{high} sequences above their target + {self.epsilon:g}, {low} below target − {self.epsilon:g}"
        c_low, c_high = outlier_count(g, self.band)
        if c_high == 0 and c_low == 0:
            return f"every sequence inside the band [{self.band.lo:g}, {self.band.hi:g}]"
        if c_high == 0:
            return (f"no sequence at or above {self.band.hi:g}; {c_low} below {self.band.lo:g} (over-forgotten, "
                    "which more unlearning cannot repair)")
        return f"{c_high} sequences still at or above {self.band.hi:g}"


@dataclass
class _Measurement:
    ma: np.ndarray
    loss: np.ndarray
    selected: np.ndarray  # selection for the next update (by the measured scores)
    direction: np.ndarray | None = None  # +1 ascend, −1 pull back, 0 none (selected = direction ≠ 0)
    finite: bool = True  # every logit finite
    loss_finite: bool = True  # every objective value that was backpropagated finite
    done: set[int] = field(default_factory=set)  # micro-batches whose gradient is already accumulated
    contributed: int = 0
    scaled: bool = False  # the losses were already divided by the number of contributing micro-batches


class _Loop:
    def __init__(self, model, forget: SequenceSet, method: Method, tau: float, band: Band, stop: str, seed: int,
                 opts: UnlearnOptions, retain: RetainData | None, checkpoint_dir, progress, on_step,
                 targets: np.ndarray, ascent_positions: torch.Tensor | None = None):
        if not method.phases:
            raise UserError(f"method {method.name} has no training phase")
        for p in method.phases:
            if isinstance(p.make_selector(), Target) and p.objective != "target":
                raise UserError(f"the target selector pulls sequences back up, which only the target objective does; "
                                f"phase {p.name} of {method.name} uses {p.objective}")
        self.model, self.forget, self.method = model, forget, method
        self.tau, self.band, self.stop, self.seed, self.opts = tau, band, stop, seed, opts
        self.progress, self.on_step = progress, on_step
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.dist = distributed.current()
        if self.dist is not None:
            self._check_distributable(retain)
        self.lora = lora_.is_lora(model)
        self.N = len(forget)
        model.eval()  # dropout off, as in the paper's harness; gradients flow in eval mode too
        if opts.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        # the network forward passes go through: the engine's wrapper (DDP/FSDP) when distributed
        self.net = self.dist.prepare_model(model) if self.dist is not None else model
        self.device = forward.device_of(model)
        check_mixed_precision(opts.mixed_precision, self.device)
        self.base_device = torch.device("cpu") if opts.base_on_cpu else self.device
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        if not self.params:
            raise UserError("the model has no trainable parameters")
        self.optimizer = self._new_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type) if opts.mixed_precision == "fp16" else None
        needs = [p.spec for p in method.phases]
        reference_model = None
        if any(s.needs_reference_model for s in needs):
            reference_model = _copy.deepcopy(model).requires_grad_(False)
        self.ctx = ObjectiveContext(model, seed, forget.pad_id, retain, reference_model, opts.micro_batch)
        self.reference_ll = self._reference_ll() if any(s.needs_reference_ll for s in needs) else None
        # the state that a checkpoint saves
        self.k = 0
        self.phase_idx = 0
        self.base: dict[str, torch.Tensor] | None = None
        self.prev_scores = np.full(self.N, np.nan)
        self.pending_selected = np.zeros(self.N, dtype=bool)
        self.pending_direction = np.zeros(self.N, dtype=np.int8)
        self.pending_phase = BEFORE
        # each sequence's target: its τ, lowered to where it started when that is lower (unlearning
        # never makes a sequence more memorized than it was); fixed at the first measurement
        self.targets = np.asarray(targets, dtype=float).copy()
        self.ascent_positions = ascent_positions
        eps = [s.epsilon for s in (p.make_selector() for p in method.phases) if isinstance(s, Target)]
        self.rule = _Rule(stop, tau, band, self.targets, eps[0] if eps else 0.05)
        self.frames: list[pd.DataFrame] = []
        self.events: list[str] = []
        self.iteration_seconds: list[float] = []
        self.elapsed = 0.0
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.snapshot_step: int | None = None
        self.snapshot_phase: int | None = None
        self.resumed_from: int | None = None
        self.fingerprint = self._fingerprint(retain)

    # ------------------------------------------------------------ setup helpers

    def _check_distributable(self, retain) -> None:
        """Objectives that run extra forward passes (retain data, a reference model) would break the
        lockstep of collectives between ranks; they are refused rather than left to hang."""
        for p in self.method.phases:
            if p.spec.needs_retain or p.spec.needs_reference_model or (p.objective == "npo" and retain is not None):
                raise UserError(f"method {self.method.name} runs extra forward passes on retain data, which is not "
                                "supported with several processes yet; run it in one process (no accelerate launch)")

    def _new_optimizer(self) -> torch.optim.Optimizer:
        o = self.opts
        return OPTIMIZERS[o.optimizer](self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                       weight_decay=o.weight_decay)

    @property
    def phase(self) -> Phase:
        return self.method.phases[self.phase_idx]

    def _fingerprint(self, retain: RetainData | None) -> str:
        h = hashlib.sha256()
        opts = {k: v for k, v in self.opts.as_dict().items() if k != "checkpoint_every"}
        h.update(json.dumps({"method": self.method.describe(), "options": opts, "stop": self.stop, "seed": self.seed,
                             "tau": self.tau, "band": [self.band.lo, self.band.hi], "ids": self.forget.ids,
                             "retain": None if retain is None else retain.describe()},
                            sort_keys=True, default=str).encode())
        h.update(self.forget.input_ids.numpy().tobytes())
        h.update(self.forget.lengths.numpy().tobytes())
        if not np.all(self.targets == self.tau):
            h.update(self.targets.tobytes())
        if self.ascent_positions is not None:
            h.update(b"ascent_positions" + self.ascent_positions.numpy().tobytes())
        for n, p in self.model.named_parameters():
            h.update(f"{n}{tuple(p.shape)}{p.dtype}".encode())
        first = next(self.model.parameters())
        h.update(first.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:24]

    def _batch(self, rows: np.ndarray) -> forward.Batch:
        return forward.make_batch(self.forget.input_ids, self.forget.lengths, rows, self.device, self.opts.parity)

    def _logits(self, batch: forward.Batch, grad: bool) -> torch.Tensor:
        return forward.logits(self.net, batch, grad=grad, mixed_precision=self.opts.mixed_precision)

    @torch.no_grad()
    def _reference_ll(self) -> torch.Tensor:
        """log π_ref(x) of every forget sequence under the model before unlearning (for NPO)."""
        out = torch.empty(self.N, dtype=torch.float32)
        for s in range(0, self.N, self.opts.micro_batch):
            batch = self._batch(np.arange(s, min(self.N, s + self.opts.micro_batch)))
            logits = self._logits(batch, grad=False)
            nll = losses.token_nll(logits, batch.input_ids)
            mask = losses.position_mask(batch.lengths, batch.input_ids.shape[1])
            out[batch.rows] = losses.sequence_log_likelihood(nll, mask).cpu()
        return out

    def _partition(self, step: int) -> list[np.ndarray]:
        perm = np.random.default_rng([self.seed, step]).permutation(self.N)
        return [perm[s:s + self.opts.micro_batch] for s in range(0, self.N, self.opts.micro_batch)]

    def _ranks(self) -> tuple[int, int]:
        return (1, 0) if self.dist is None else (self.dist.world_size, self.dist.rank)

    def _my_parts(self, parts: list[np.ndarray]) -> Iterator[tuple[int | None, np.ndarray]]:
        """This rank's micro-batches (j ≡ rank mod W), with j None for a padding pass: every rank makes
        the same number of passes, so collectives inside them (DDP buffers, FSDP gathers) stay in step."""
        W, rank = self._ranks()
        for slot in range(math.ceil(len(parts) / W)):
            j = slot * W + rank
            yield (j, parts[j]) if j < len(parts) else (None, parts[0])

    def _eligible(self, scores: np.ndarray, unknown_ok: bool) -> np.ndarray:
        nan = np.isnan(scores)
        if self.stop == "per-sequence":
            ok = np.where(nan, unknown_ok, scores >= self.band.hi)
        else:
            ok = np.where(nan, unknown_ok, True)
        return ok.astype(bool)

    # ------------------------------------------------------------ one measurement (+ fused gradient)

    def _objective_batch(self, batch: forward.Batch, logits, weights) -> MicroBatch:
        ref = None if self.reference_ll is None else self.reference_ll[batch.rows].to(self.device)
        pos = None
        if self.ascent_positions is not None:  # aligned with nll: token t at column t-1, trimmed to the batch
            pos = self.ascent_positions[torch.as_tensor(batch.rows), 1:batch.input_ids.shape[1]].to(self.device)
        return MicroBatch(self.k, 0, batch.input_ids, batch.lengths, logits,
                          torch.as_tensor(weights, dtype=torch.float32, device=self.device), ref, pos)

    def _backward(self, mb: MicroBatch, index: int, meas: _Measurement, scale: float | None = None) -> bool:
        """Backpropagate the objective of one micro-batch (times ``scale`` when given); False if not finite."""
        mb.index = index
        with forward.autocast(self.opts.mixed_precision, self.device):
            loss = self.phase.objective_fn()(mb, self.ctx)
        if not torch.isfinite(loss):
            meas.loss_finite = False
            self.events.append(f"step {self.k + 1}: non-finite loss ({loss.item()}) in micro-batch {index}")
            return False
        if scale is not None:
            loss = loss * scale
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        meas.contributed += 1
        return True

    def _edit_context(self, phase: Phase):
        if phase.edit_coef is None:
            return contextlib.nullcontext()
        if self.lora:
            return lora_.edited(self.model, self.base, phase.edit_coef)
        return edited(self.model, self.base, phase.edit_coef, self.base_device)

    def _copy_base(self):
        """θ_b at a switch to task arithmetic: the adapter's factors (LoRA), else the weights, kept on
        ``base_device`` or memory-mapped from a file (``base_on_disk``)."""
        state = lora_.adapter_state(self.model, self.base_device) if self.lora else copy_state(self.model, self.base_device)
        if self.opts.base_on_disk and not self.lora:
            import tempfile
            folder = self.checkpoint_dir.parent if self.checkpoint_dir is not None else Path(tempfile.gettempdir())
            state = offload_to_disk(state, folder / f".unmemorize-base-{self.fingerprint}-{self._ranks()[1]}.safetensors")
        return state

    def _measure(self, train: bool) -> _Measurement:
        """g(x) and the loss of every sequence on the evaluated model, and the selection for the next
        update. In one process a micro-batch whose rows will mostly be selected is measured with
        gradient and its objective backpropagated at once (fused); under several processes each rank
        measures its micro-batches and every row is taken from its owner."""
        phase = self.phase
        selector = phase.make_selector()
        edit = phase.edit_coef is not None
        meas = _Measurement(np.full(self.N, np.nan), np.full(self.N, np.nan), np.zeros(self.N, dtype=bool))
        parts = self._partition(self.k)
        finite = True
        with self._edit_context(phase):
            for j, rows in self._my_parts(parts):
                fuse = train and not edit and self.dist is None and self._fuse(selector, rows)
                batch = self._batch(rows)
                logits = self._logits(batch, grad=fuse)
                if j is None:
                    continue  # a padding pass
                if not bool(torch.isfinite(logits).all()):
                    finite = False
                    if self.dist is None:
                        break
                mb = self._objective_batch(batch, logits, np.zeros(len(rows)))
                ma = memorization_accuracy(logits.detach().argmax(-1), batch.input_ids, batch.counted).cpu().numpy()
                meas.ma[rows] = ma
                meas.loss[rows] = masked_mean(mb.nll.detach(), mb.mask).cpu().numpy()
                if self.k == 0 and self.resumed_from is None:
                    self.targets[rows] = np.fmin(self.targets[rows], ma)
                if fuse:
                    meas.done.add(j)
                    sel = self._select(selector, ma, rows, unknown_ok=False)
                    if sel.any():
                        mb.weights = torch.as_tensor(sel, dtype=torch.float32, device=self.device)
                        self._backward(mb, j, meas)
                del logits, mb
        if self.dist is not None:
            owner = self._owner(parts)
            meas.ma, meas.loss = self.dist.combine(meas.ma, owner), self.dist.combine(meas.loss, owner)
            finite = self.dist.all_true(finite)
        meas.finite = finite
        if self.k == 0 and self.resumed_from is None:  # every rank: the targets of the rows it did not measure
            self.targets[:] = np.fmin(self.targets, meas.ma)
        if finite:
            meas.direction = self._reselect(meas.ma)
            meas.selected = meas.direction != 0
        return meas

    def _select(self, selector, scores: np.ndarray, rows: np.ndarray, unknown_ok: bool) -> np.ndarray:
        """The selector's direction per row (int8: +1 ascend, −1 pull back, 0 none)."""
        return np.asarray(selector(scores, self._eligible(scores, unknown_ok), self.targets[rows])).astype(np.int8)

    def _fuse(self, selector, rows: np.ndarray) -> bool:
        if self.opts.fuse != "auto":
            return self.opts.fuse == "always"
        until = self._until(self.phase)
        if until is not None:
            known = self.prev_scores[~np.isnan(self.prev_scores)]
            if known.size == 0 or known.mean() < until + 0.05:
                return False  # a phase switch may come at this measurement; its gradient would be thrown away
        prior = self.prev_scores[rows]
        return bool((self._select(selector, prior, rows, unknown_ok=True) != 0).mean() >= 0.5)

    def _until(self, phase: Phase) -> float | None:
        """The phase's hand-over level (a number, or relative to τ: "tau+0.2")."""
        return None if phase.until_mean_below is None else float(resolve_level(phase.until_mean_below, self.tau))

    def _owner(self, parts: list[np.ndarray]) -> np.ndarray:
        owner = np.empty(self.N, dtype=np.int64)
        for j, rows in enumerate(parts):
            owner[rows] = j % self.dist.world_size
        return owner

    def _no_sync(self, last: bool):
        """DDP: accumulate locally and all-reduce once, in the last slot (every rank has the same
        number of slots, so they all reach it). FSDP keeps its per-pass reduce-scatter: skipping it
        would hold unsharded gradients, the memory FSDP is there to save."""
        if self.dist is None or last or self.dist.kind not in ("MULTI_GPU", "MULTI_CPU"):
            return contextlib.nullcontext()
        return self.dist.accelerator.no_sync(self.net)

    def _train(self, meas: _Measurement) -> None:
        """Gradient of the selected rows of the micro-batches not already done while measuring.

        Several processes: the C contributing micro-batches are dealt out round-robin, each loss
        scaled by W/C, so that the engine's mean over W ranks is the mean over C micro-batches; a rank
        without a micro-batch left runs a zero-gradient padding pass. One process: W = 1, and the
        gradient is divided by C after accumulation (see ``run``)."""
        jobs = [(j, rows[meas.selected[rows]]) for j, rows in enumerate(self._partition(self.k))
                if j not in meas.done and meas.selected[rows].any()]
        C = len(jobs)
        if C == 0:
            return
        W, rank = self._ranks()
        scale = None if self.dist is None else W / C
        ok = True
        slots = math.ceil(C / W)
        for slot in range(slots):
            i = slot * W + rank
            j, chosen = jobs[i] if i < C else jobs[0]
            batch = self._batch(chosen)
            with self._no_sync(last=slot == slots - 1):
                logits = self._logits(batch, grad=True)
                done = i < C and self._backward(self._objective_batch(batch, logits, meas.direction[chosen]),
                                                j, meas, scale)
                if not done and self.dist is not None:  # a zero gradient keeps every rank in the all-reduce
                    ok &= i >= C
                    (logits.float().sum() * 0.0).backward()
            del logits
        if self.dist is not None:
            meas.loss_finite = self.dist.all_true(ok)
            meas.contributed = C
            meas.scaled = True

    # ------------------------------------------------------------ bookkeeping

    def _record(self, meas: _Measurement) -> StepInfo:
        self.frames.append(pd.DataFrame({"step": self.k, "id": self.forget.ids, "ma": meas.ma, "loss": meas.loss,
                                         "selected": self.pending_selected.copy(), "phase": self.pending_phase,
                                         "direction": self.pending_direction.copy()}))
        c_low, c_high = outlier_count(meas.ma, self.band)
        return StepInfo(self.k, self.pending_phase, float(np.nanmean(meas.ma)) if not np.isnan(meas.ma).all() else math.nan,
                        c_high, c_low, self.N, int(self.pending_selected.sum()))

    def _switch_phases(self, g: np.ndarray) -> bool:
        switched = False
        while self._until(self.phase) is not None and self.phase_idx + 1 < len(self.method.phases) \
                and float(np.nanmean(g)) < self._until(self.phase):
            old = self.phase
            self.phase_idx += 1
            switched = True
            if self.phase.edit_coef is not None:
                self.base = self._copy_base()
            if self.method.reset_optimizer:
                self.optimizer = self._new_optimizer()
            self.events.append(f"step {self.k}: mean MA {np.nanmean(g):.4f} < {self._until(old):g}: "
                               f"phase {old.name} → {self.phase.name}"
                               + (f" (θ_b = the weights of step {self.k})" if self.phase.edit_coef is not None else "")
                               + (", optimizer reset" if self.method.reset_optimizer else ", optimizer carried over"))
        return switched

    def _grads_finite(self) -> bool:
        grads = [p.grad for p in self.params if p.grad is not None]
        # one fused pass over the gradients (a NaN or inf anywhere makes the norm non-finite)
        ok = not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, foreach=True)))
        return self.dist.all_true(ok) if self.dist is not None else ok

    def _train_step(self, meas: _Measurement) -> None:
        """The gradient of the update; under fp16, overflowing gradients lower the loss scale and the
        gradient is recomputed (the update is not skipped, so step counts do not depend on the scale)."""
        train = self._train
        train(meas)
        if self.scaler is None:
            return
        for attempt in range(_FP16_RETRIES):
            self.scaler.unscale_(self.optimizer)
            if not meas.loss_finite or self._grads_finite():
                return
            self.scaler.update()  # halves the scale: the inf found by unscale_ is recorded
            self.events.append(f"step {self.k + 1}: fp16 gradient overflow, loss scale lowered to "
                               f"{self.scaler.get_scale():g} and the gradient recomputed")
            self.optimizer.zero_grad(set_to_none=True)
            meas.done.clear()
            meas.contributed = 0
            train(meas)

    def _take_snapshot(self) -> None:
        if self.snapshot is None:
            self.snapshot = copy_state(self.model, self.base_device)
        else:
            with torch.no_grad():
                for n, p in trainable_state(self.model).items():
                    self.snapshot[n].copy_(p)
        self.snapshot_step, self.snapshot_phase = self.k, self.phase_idx

    def _trajectory(self) -> pd.DataFrame:
        if not self.frames:
            return pd.DataFrame(columns=["step", "id", "ma", "loss", "selected", "phase", "direction"])
        return pd.concat(self.frames, ignore_index=True)

    # ------------------------------------------------------------ checkpoints

    def _save_checkpoint(self) -> None:
        if self.dist is not None and not self.dist.is_main:
            self.dist.barrier()  # rank 0 writes; every rank holds the same state
            return
        ckpt.save(self.checkpoint_dir,
                  state={"fingerprint": self.fingerprint, "k": self.k, "phase_idx": self.phase_idx,
                         "pending_phase": self.pending_phase, "events": self.events, "elapsed": self.elapsed,
                         "iteration_seconds": self.iteration_seconds, "snapshot_step": self.snapshot_step,
                         "snapshot_phase": self.snapshot_phase, "method": self.method.name},
                  weights=trainable_state(self.model), base=None if self.base is None else dict(self.base.items()),
                  snapshot=self.snapshot,
                  optimizer=self.optimizer.state_dict(),
                  arrays={"prev_scores": self.prev_scores, "pending_selected": self.pending_selected.astype(np.uint8),
                          "pending_direction": self.pending_direction.astype(np.int8), "targets": self.targets},
                  trajectory=self._trajectory())
        if self.dist is not None:
            self.dist.barrier()

    def _resume(self) -> None:
        if self.dist is not None:
            self.dist.barrier()  # a --fresh removal by rank 0 comes before any rank looks
        found = ckpt.load(self.checkpoint_dir)
        if found is None:
            return
        st = found.state
        if st.get("fingerprint") != self.fingerprint:
            raise UserError(f"checkpoint {self.checkpoint_dir} belongs to a different run (method, options, data or "
                            "model differ); delete it (on the command line: --fresh) to start over")
        load_state_(self.model, found.weights)
        self.k, self.phase_idx = int(st["k"]), int(st["phase_idx"])
        self.base = None if found.base is None else {k: v.to(self.base_device) for k, v in found.base.items()}
        self.snapshot = None if found.snapshot is None else {k: v.to(self.base_device) for k, v in found.snapshot.items()}
        self.snapshot_step, self.snapshot_phase = st["snapshot_step"], st["snapshot_phase"]
        self.optimizer.load_state_dict(found.optimizer)
        self.prev_scores = found.arrays["prev_scores"].astype(np.float64)
        self.pending_selected = found.arrays["pending_selected"].astype(bool)
        if "pending_direction" in found.arrays:
            self.pending_direction = found.arrays["pending_direction"].astype(np.int8)
            self.targets[:] = found.arrays["targets"]
        else:
            self.pending_direction = self.pending_selected.astype(np.int8)
        self.pending_phase = st["pending_phase"]
        self.events = list(st["events"]) + [f"resumed at step {self.k} from {self.checkpoint_dir}"]
        self.iteration_seconds = list(st["iteration_seconds"])
        self.elapsed = float(st["elapsed"])
        traj = found.trajectory
        self.frames = [traj[traj["step"] == s].reset_index(drop=True) for s in sorted(traj["step"].unique())]
        self.resumed_from = self.k

    # ------------------------------------------------------------ the loop itself

    def run(self) -> UnlearningResult:
        if self.checkpoint_dir is not None:
            self._resume()
        opts = self.opts
        reason, converged, rolled_back = "", False, False
        t_start = time.perf_counter() - self.elapsed
        with task(self.progress, f"{self.method.name} unlearning", opts.max_steps) as bar:
            bar.update(completed=self.k)
            while True:
                t0 = time.perf_counter()
                train = self.k < opts.max_steps
                meas = self._measure(train)
                if not meas.finite:
                    rolled_back = self._roll_back()
                    reason = (f"non-finite outputs after step {self.k}: rolled back to the weights of step "
                              f"{self.snapshot_step}, the last ones measured finite")
                    self.events.append(reason)
                    break
                info = self._record(meas)
                if self.on_step is not None:
                    self.on_step(info)
                bar.update(description=f"{self.method.name} step {self.k} · mean MA {info.mean:.3f} · "
                                       f"{info.above} above band")
                switched = self._switch_phases(meas.ma)
                if self.rule.met(meas.ma):
                    reason, converged = f"stop rule met at step {self.k}: {self.rule.text(meas.ma)}", True
                    break
                if not train:
                    reason = f"reached the step cap ({opts.max_steps}): {self.rule.text(meas.ma)}"
                    break
                if switched:  # the gradient accumulated while measuring was for the previous phase
                    self.optimizer.zero_grad(set_to_none=True)
                    meas.done.clear()
                    meas.contributed = 0
                    meas.direction = self._reselect(meas.ma)
                    meas.selected = meas.direction != 0
                self._train_step(meas)
                if not meas.loss_finite or not self._grads_finite():
                    reason = (f"non-finite loss or gradient in update {self.k + 1}: no update made; the model is "
                              f"the one of step {self.k}, the last good weights")
                    self.events.append(reason)
                    rolled_back = True
                    break
                if meas.contributed == 0:
                    reason = f"no sequence selected for update {self.k + 1}: nothing left to unlearn"
                    break
                if not meas.scaled:
                    with torch.no_grad():
                        for p in self.params:
                            if p.grad is not None:
                                p.grad.div_(meas.contributed)
                self._take_snapshot()
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.prev_scores = meas.ma
                self.pending_selected = meas.selected
                self.pending_direction = meas.direction
                self.pending_phase = self.phase.name
                self.k += 1
                self.iteration_seconds.append(time.perf_counter() - t0)
                bar.advance(1)
                self.elapsed = time.perf_counter() - t_start
                if self.checkpoint_dir is not None and opts.checkpoint_every and self.k % opts.checkpoint_every == 0:
                    self._save_checkpoint()
        self.optimizer.zero_grad(set_to_none=True)
        if self.phase.edit_coef is not None:
            if self.lora:
                lora_.apply_edit_(self.model, self.base, self.phase.edit_coef)
            else:
                apply_edit_(self.model, self.base, self.phase.edit_coef)
        trajectory = self._trajectory()
        return UnlearningResult(self.model, self.method, self.stop, self.tau, self.band, opts, trajectory,
                                steps=int(trajectory["step"].max()), seconds=time.perf_counter() - t_start,
                                stop_reason=reason, converged=converged, rolled_back=rolled_back, events=self.events,
                                iteration_seconds=self.iteration_seconds, resumed_from=self.resumed_from,
                                world_size=self._ranks()[0], seed=self.seed, targets=self.targets.copy())

    def _reselect(self, g: np.ndarray) -> np.ndarray:
        selector = self.phase.make_selector()
        direction = np.zeros(self.N, dtype=np.int8)
        for rows in self._partition(self.k):
            direction[rows] = self._select(selector, g[rows], rows, unknown_ok=False)
        return direction

    def _roll_back(self) -> bool:
        self.optimizer.zero_grad(set_to_none=True)
        if self.snapshot is None or self.snapshot_step is None:
            raise UserError("the model's outputs are not finite before any unlearning step; check the model and dtype")
        load_state_(self.model, self.snapshot)
        self.k, self.phase_idx = self.snapshot_step, self.snapshot_phase
        return True
