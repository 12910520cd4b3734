"""Task arithmetic on weights (docs/method.md §4.3-4.4): θ_u = θ_b + c·(θ_ft − θ_b).

State dicts are plain ``{name: tensor}`` mappings. The base θ_b can live on the CPU while the model
trains on an accelerator (``base_device``), or in a memory-mapped safetensors file
(:func:`offload_to_disk`): the edit is computed one tensor at a time, so only one extra tensor is on
the accelerator (or read from disk) at once, and the edited model is evaluated in place and restored.
The arithmetic is done in fp32 and cast back, so bf16 and fp16 weights are edited without an extra
rounding step in between.

Only parameters that require a gradient take part: frozen ones never move, so θ_b + c·(θ − θ_b) = θ
for them exactly, and leaving them out spares a copy of everything a partial fine-tune froze. (LoRA
adapters have their own arithmetic in :mod:`unmemorize.unlearning.lora`.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

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
    """The model's trainable parameters by name (tied weights once), as live tensors."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def copy_state(model, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A detached copy of the trainable parameters, e.g. the base θ_b kept off the accelerator."""
    return {n: p.detach().to(device, copy=True) for n, p in trainable_state(model).items()}


class DiskState(Mapping):
    """A state dict in a safetensors file, read one tensor at a time through a memory map.

    For the base θ_b of a long task-arithmetic phase on a model whose CPU copy would not fit beside
    everything else: the edit reads each base tensor when it needs it and lets it go.
    """

    def __init__(self, path: str | os.PathLike):
        from safetensors import safe_open

        self.path = Path(path)
        self._file = safe_open(str(self.path), framework="pt", device="cpu")
        self._keys = list(self._file.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def offload_to_disk(state: StateDict, path: str | os.PathLike) -> DiskState:
    """Write ``state`` to ``path`` (safetensors) and return its memory-mapped view."""
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
    return DiskState(path)


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
