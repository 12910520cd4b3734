"""LoRA (via peft) for every gradient method, and task arithmetic on adapter deltas (docs/method.md §4.3-4.4, §4.8).

With LoRA each targeted weight is W = W₀ + s·B·A (A: r × in, B: out × r, s = α/r), W₀ frozen, and only
A and B train. Task arithmetic must act on the *weight* deltas, not on A and B one by one: editing
both factors, (B_b + cΔB)(A_b + cΔA), carries a c²·ΔB·ΔA term, which for TA's c = −3 is nine times the
fine-tuning product with a *positive* sign, i.e. it partly re-learns what the edit should remove.
The weight-space edit

    W_u = W₀ + s·B_b·A_b + c·s·(B·A − B_b·A_b) = W₀ + s·[(1−c)·B_b | c·B]·[A_b ; A]

is a rank-2r adapter with the same scale s. So the edited model is a second peft adapter,
``"edited"``, whose factors are those concatenations: measuring θ_u switches the active adapter and
back, the trained adapter is never touched (restoring is exact, with no copy of θ), and θ_b costs
two r-rank factors per targeted layer instead of a copy of the model.

On return :func:`merge` folds the active adapter into W₀ (``merge_and_unload``): the result is a
plain transformers model, saved as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from unmemorize.errors import UserError

TRAINED = "default"
EDITED = "edited"


def _lora_config(rank: int, alpha: float, target_modules, total_steps: int):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=target_modules,
                      task_type="CAUSAL_LM")


def _adalora_config(rank: int, alpha: float, target_modules, total_steps: int):
    """AdaLoRA (W = W₀ + α/r · P·diag(λ)·Q, λ = 0 at the start) as GA+Mismatch's original trains it: the
    rank stays at ``rank`` (the original never calls peft's rank reallocation, ``update_and_allocate``)
    and no orthogonality penalty enters the loss (its loss is computed from the logits). peft reads the
    initial rank from ``init_r``; the original passed ``r = 512``, which AdaLoRA ignores, so its adapters
    had peft's default ``init_r`` = 12 at scale 1024/12 (docs/method.md §4.7)."""
    from peft import AdaLoraConfig

    return AdaLoraConfig(init_r=rank, target_r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                         target_modules=target_modules, total_step=max(1, total_steps), task_type="CAUSAL_LM")


# kind → its peft config; "lora" is the only one task arithmetic can edit (B·A factors, below)
ADAPTERS = {"lora": _lora_config, "adalora": _adalora_config}


def add_lora(model, rank: int, alpha: float | None = None, targets: str | None = None, seed: int = 0,
             kind: str = "lora", total_steps: int = 1):
    """Wrap ``model`` with a LoRA adapter (in place; returns the peft model).

    ``targets``: comma-separated module names, ``all-linear``, or None for peft's default for the
    architecture (GPT-2: ``c_attn``; GPT-Neo, Llama: ``q_proj,v_proj``). Dropout is 0 and B (AdaLoRA:
    λ) starts at 0, so the wrapped model computes exactly the original function before the first step.
    The random initialisation is drawn from ``seed`` (not the global generator), so a run is
    reproducible and every process of a multi-process run starts from the same adapter. ``kind``:
    ``lora`` or ``adalora`` (:data:`ADAPTERS`).
    """
    import warnings

    from peft import get_peft_model

    if rank < 1:
        raise UserError(f"LoRA rank must be ≥ 1, got {rank}")
    if kind not in ADAPTERS:
        raise UserError(f"unknown adapter kind {kind!r}; known: {', '.join(ADAPTERS)}")
    alpha = float(2 * rank if alpha is None else alpha)
    target_modules = None
    if targets:
        target_modules = "all-linear" if targets.strip() == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    try:
        config = ADAPTERS[kind](rank, alpha, target_modules, total_steps)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(seed)
            # GPT-2's Conv1D stores weights transposed; peft notices, says so, and does the right thing
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")  # peft asks the old name
            peft_model = get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"cannot add LoRA to {type(model).__name__}: {str(e).splitlines()[0]} "
                        "(name the layers with --lora-targets, e.g. q_proj,v_proj or all-linear)") from None
    peft_model.eval()
    return peft_model


def is_lora(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _layers(model) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and TRAINED in m.lora_A}


def adapter_state(model, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A detached copy of the trained adapter's factors, ``{"<layer>.A": A, "<layer>.B": B}`` (θ_b)."""
    out = {}
    for name, m in _layers(model).items():
        out[f"{name}.A"] = m.lora_A[TRAINED].weight.detach().to(device, copy=True)
        out[f"{name}.B"] = m.lora_B[TRAINED].weight.detach().to(device, copy=True)
    return out


@torch.no_grad()
def _write_edit(model, base: Mapping[str, torch.Tensor], coef: float) -> None:
    """Set the ``edited`` adapter to [(1−c)·B_b | c·B]·[A_b ; A] (created on first use)."""
    layers = _layers(model)
    if EDITED not in model.peft_config:
        cfg = model.peft_config[TRAINED]
        import dataclasses

        model.add_adapter(EDITED, dataclasses.replace(cfg, r=2 * cfg.r, lora_alpha=2 * cfg.lora_alpha))
    for name, m in layers.items():
        a, b = m.lora_A[TRAINED].weight, m.lora_B[TRAINED].weight
        a_b, b_b = base[f"{name}.A"].to(a.device, torch.float32), base[f"{name}.B"].to(b.device, torch.float32)
        if abs(m.scaling[EDITED] - m.scaling[TRAINED]) > 1e-12 * max(1.0, abs(m.scaling[TRAINED])):
            raise RuntimeError(f"{name}: edited adapter scale {m.scaling[EDITED]} ≠ trained {m.scaling[TRAINED]}")
        m.lora_A[EDITED].weight.copy_(torch.cat([a_b, a.float()], 0).to(m.lora_A[EDITED].weight.dtype))
        m.lora_B[EDITED].weight.copy_(torch.cat([(1.0 - coef) * b_b, coef * b.float()], 1).to(m.lora_B[EDITED].weight.dtype))


def _activate(model, name: str) -> None:
    model.set_adapter(name)  # peft makes the active adapter trainable and the other one frozen
    if name == EDITED:
        model.base_model.set_requires_grad(EDITED, False)


@contextlib.contextmanager
def edited(model, base: Mapping[str, torch.Tensor], coef: float) -> Iterator[None]:
    """Evaluate θ_b + c·(θ − θ_b) (in weight space) inside the block; the trained adapter is untouched."""
    _write_edit(model, base, coef)
    _activate(model, EDITED)
    try:
        yield
    finally:
        _activate(model, TRAINED)


def apply_edit_(model, base: Mapping[str, torch.Tensor], coef: float) -> None:
    """Make the edited model θ_u the active one for good (the run ends in a task-arithmetic phase)."""
    _write_edit(model, base, coef)
    _activate(model, EDITED)


def merge(model):
    """Fold the active adapter into the frozen weights and drop peft: a plain transformers model."""
    active = model.active_adapter
    merged = model.merge_and_unload(adapter_names=[active])
    merged.eval()
    return merged
