"""Task arithmetic on weights (PAPER_SPEC §4.3-4.4): θ_u = θ_b + c·(θ_ft − θ_b).

State dicts are plain ``{name: tensor}`` mappings. The base θ_b can live on the CPU while the model
trains on an accelerator (``base_device``): the edit is computed one tensor at a time, so only one
extra tensor is on the accelerator at once. The arithmetic is done in fp32 and cast back, so bf16 and
fp16 weights are edited without an extra rounding step in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

StateDict = Mapping[str, torch.Tensor]


def task_vector(finetuned: StateDict, base: StateDict) -> dict[str, torch.Tensor]:
    """τ_v = θ_ft − θ_b, key by key (the keys must match)."""
    _same_keys(finetuned, base)
    return {k: finetuned[k].float() - base[k].float().to(finetuned[k].device) for k in finetuned}


def add_scaled(base: StateDict, vector: StateDict, coef: float) -> dict[str, torch.Tensor]:
    """θ_b + c·τ_v, in the dtype of θ_b."""
    _same_keys(base, vector)
    return {k: (base[k].float() + coef * vector[k].float().to(base[k].device)).to(base[k].dtype) for k in base}


def edit(base: StateDict, finetuned: StateDict, coef: float) -> dict[str, torch.Tensor]:
    """θ_u = θ_b + c·(θ_ft − θ_b): c = −3 for TA, −1 for TAU's second phase, 0 gives θ_b, 1 gives θ_ft."""
    _same_keys(finetuned, base)
    return {k: _edit_tensor(base[k], finetuned[k], coef) for k in finetuned}


def _edit_tensor(b: torch.Tensor, ft: torch.Tensor, coef: float) -> torch.Tensor:
    b32 = b.to(ft.device, torch.float32)
    return (b32 + coef * (ft.float() - b32)).to(ft.dtype)


def _same_keys(a: StateDict, b: StateDict) -> None:
    if set(a) != set(b):
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"state dicts differ: only in the first {missing[:5]}, only in the second {extra[:5]}")


# ---------------------------------------------------------------- on a live model

def trainable_state(model) -> dict[str, torch.Tensor]:
    """The model's parameters by name (tied weights once), as live tensors."""
    return {n: p for n, p in model.named_parameters()}


def copy_state(model, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A detached copy of the parameters, e.g. the base θ_b kept off the accelerator."""
    return {n: p.detach().to(device, copy=True) for n, p in model.named_parameters()}


@torch.no_grad()
def load_state_(model, state: StateDict) -> None:
    """Copy ``state`` into the model's parameters, in place."""
    params = trainable_state(model)
    _same_keys(params, state)
    for n, p in params.items():
        p.copy_(state[n].to(p.device))


@torch.no_grad()
def apply_edit_(model, base: StateDict, coef: float) -> None:
    """Replace the model's weights θ (taken as θ_ft) by θ_b + c·(θ − θ_b), in place."""
    for n, p in trainable_state(model).items():
        p.copy_(_edit_tensor(base[n], p.detach(), coef))


@contextlib.contextmanager
def edited(model, base: StateDict, coef: float, keep_device: str | torch.device = "cpu") -> Iterator[None]:
    """Evaluate the edited model θ_b + c·(θ − θ_b) inside the block; θ is restored exactly afterwards.

    The fine-tuned weights are kept on ``keep_device`` meanwhile (the code keeps them on the CPU).
    """
    finetuned = copy_state(model, keep_device)
    apply_edit_(model, base, coef)
    try:
        yield
    finally:
        load_state_(model, finetuned)
