"""Several processes, one answer: the recipes under ``accelerate launch`` (or ``torchrun``).

The engine is accelerate's (:class:`accelerate.Accelerator`: DDP, FSDP; the process group, devices,
gathers); this module only decides *what* is split and *how* the pieces are put back, so that every
per-sequence number, selection and stop decision is the same whatever the number of processes:

* Work is split by a rule every rank can compute: the unlearning loop deals the step's global
  micro-batches out round-robin (micro-batch j goes to rank j mod W), profiles split the sequences
  into contiguous shards. No rank ever decides anything from its own part alone.
* Per-sequence values are put back by *owner* (:meth:`Distributed.combine`): each row is taken
  verbatim from the rank that measured it, so the gathered array is bit-for-bit what that rank
  computed, and selections and stop rules run on the full array, identically on every rank.
* Every rank runs the same number of forward and backward passes (a rank with nothing left runs a
  padding pass whose loss is multiplied by zero): DDP's buffer broadcasts and gradient all-reduces,
  and FSDP's weight gathers, are collectives that hang if one rank skips them.
* Only rank 0 writes files (:func:`output_dir` gives the other ranks a throwaway folder, so a recipe
  is the same code on every rank).

Started without a launcher (one process), :func:`current` is None and nothing here runs: the
single-process code paths are untouched.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from unmemorize.errors import UserError

_CURRENT: "Distributed | None" = None


def launched() -> bool:
    """True when a launcher started several processes (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


class Distributed:
    """The accelerate :class:`~accelerate.Accelerator` of a multi-process run, with the gathers we need."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.rank = accelerator.process_index
        self.world_size = accelerator.num_processes
        self.device = accelerator.device
        self.kind = str(accelerator.distributed_type).split(".")[-1]  # MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED, …

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        return {"world_size": self.world_size, "distributed_type": self.kind, "rank_device": str(self.device)}

    # ---------------------------------------------------------------- collectives

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def combine(self, local: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """The full per-row array: row i taken verbatim from rank ``owner[i]``'s ``local`` array.

        Every rank passes an array of the same length (its own rows filled, the others anything).
        Gathering whole arrays and picking by owner copies values instead of adding them, so the
        result does not depend on the reduction order (an all-reduce of NaN-masked sums would).
        """
        t = torch.as_tensor(np.ascontiguousarray(local, dtype=np.float64), device=self.device)
        gathered = self.accelerator.gather(t[None]).cpu().numpy()  # [W, N]
        return gathered[owner, np.arange(len(owner))]

    def all_true(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.accelerator.gather(t).min().item() == 1.0)

    def gather_objects(self, obj) -> list:
        """One picklable object per rank, in rank order, on every rank."""
        from accelerate.utils import gather_object

        return gather_object([obj])

    # ---------------------------------------------------------------- models

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model wrapped by the launch configuration's engine (DDP or FSDP).

        DeepSpeed owns the optimizer step and the gradient buffers (loss scaling, ZeRO partitions),
        which the unlearning loop needs to see: the NaN guard, the exact mean over micro-batches and
        the roll-back all act on the gradients before the step. That is not wired, so it is refused.
        """
        if self.kind == "DEEPSPEED":
            raise UserError("unlearning under a DeepSpeed launch configuration is not supported yet (DeepSpeed "
                            "owns the optimizer step, which the loop's NaN guard and exact gradient mean need); use "
                            "configs/accelerate/ddp.yaml or fsdp.yaml, with --lora and --mixed-precision bf16 for "
                            "large models (docs/scaling.md). audit runs under any configuration.")
        return self.accelerator.prepare_model(model)


def setup(mixed_precision: str | None = None) -> Distributed | None:
    """Join the launcher's process group (once per process); None when there is a single process.

    ``mixed_precision`` is passed to the Accelerator only when given; otherwise the launch
    configuration's setting applies (FSDP and DeepSpeed read theirs from it).
    """
    global _CURRENT
    if _CURRENT is not None or not launched():
        return _CURRENT
    from accelerate import Accelerator

    kwargs = {} if mixed_precision in (None, "no") else {"mixed_precision": mixed_precision}
    if not torch.cuda.is_available():
        # without cpu=True accelerate treats a GPU-less launch as one process per rank (no process
        # group); with it, the ranks join a gloo group (MULTI_CPU)
        kwargs["cpu"] = True
    if not torch.cuda.is_available():
        for engine, flag in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
            if os.environ.get(flag, "false").lower() == "true":
                # accelerate builds these engines for accelerators only (its own error names none of this)
                raise UserError(f"the launch configuration asks for {engine}, which accelerate runs on GPUs "
                                "only, and this machine has none; on CPUs launch with "
                                "configs/accelerate/ddp.yaml (data parallel over gloo)")
    _CURRENT = Distributed(Accelerator(**kwargs))
    return _CURRENT


def one_process_only(command: str, why: str) -> None:
    """Refuse a multi-process launch of a command that runs in one process, saying why."""
    if launched():
        raise UserError(f"`unmemorize {command}` runs in one process ({why}); start it without accelerate launch")


def current() -> Distributed | None:
    """The multi-process context, joining it on first use when launched; None for one process."""
    return _CURRENT if _CURRENT is not None else setup()


def is_main() -> bool:
    d = current()
    return d is None or d.is_main


def shard(n: int, world_size: int, rank: int) -> np.ndarray:
    """Contiguous shard of ``range(n)`` for ``rank``: sizes differ by at most one, in rank order."""
    bounds = np.linspace(0, n, world_size + 1).round().astype(int)
    return np.arange(bounds[rank], bounds[rank + 1])


def map_shards(n: int, fn):
    """``fn`` over the rows of a set, split over the ranks: a list of results in rank order.

    Each rank calls ``fn(indices)`` on its contiguous shard of ``range(n)`` and every rank gets all
    ranks' results back (the caller concatenates them, so rows keep their order). With one process,
    or fewer rows than ranks, it is ``[fn(range(n))]`` on every rank. Every rank must call it: the
    gather is a collective. Used for work whose rows are independent (the attacks' teacher-forced
    passes and neighbours, the utility tasks' examples).
    """
    d = current()
    if d is None or n < d.world_size:
        return [fn(np.arange(n))]
    return d.gather_objects(fn(shard(n, d.world_size, d.rank)))


def output_dir(out: str | os.PathLike) -> Path:
    """Where this rank writes its run folder: ``out`` on rank 0, a private throwaway folder elsewhere.

    A recipe runs the same code on every rank; giving the other ranks a folder that is deleted at
    exit keeps that true without a rank check around every write, and ``out`` is written once.
    """
    if is_main():
        return Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f"unmemorize-rank{current().rank}-"))
    atexit.register(shutil.rmtree, tmp, True)
    return tmp / Path(out).name
