"""Weight quantization that runs on a CPU: symmetric round-to-nearest per output channel (docs/method.md §3.8).

Quantizing the weights of an unlearned model to 8 or 4 bits is an attack on unlearning (Zhang et al.
2024, "Does your LLM truly unlearn? An embarrassingly simple approach to recover unlearned knowledge"):
unlearning with a small learning rate moves each weight by less than one quantization step, so
rounding can land the unlearned weights on the same grid points as the original ones. The probe needs
no GPU kernel: the weights are rounded and stored back dequantized, in their own dtype, which is
exactly what a quantized model computes with.
"""

from __future__ import annotations

import copy

import torch


def quantize_rtn(weight: torch.Tensor, bits: int, axis: int = 0) -> torch.Tensor:
    """Symmetric round-to-nearest quantization per output channel, returned dequantized.

    For each output channel c (the slices of ``weight`` along ``axis``), with q_max = 2^(bits−1) − 1:

        s_c = max_j |w_cj| / q_max,    ŵ_cj = s_c · clamp(round(w_cj / s_c), −q_max, q_max)

    (round half to even; a channel of zeros stays zero). Computed in float64, returned in the
    weight's dtype. 8 bits: 255 levels per channel; 4 bits: 15.
    """
    if bits < 2:
        raise ValueError(f"quantization needs at least 2 bits, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().double().movedim(axis, 0)
    flat = w.reshape(w.shape[0], -1)
    scale = flat.abs().amax(dim=1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(flat / safe).clamp(-qmax, qmax) * scale
    return q.reshape(w.shape).movedim(0, axis).to(weight.dtype)


def output_axis(module: torch.nn.Module) -> int | None:
    """The axis of a module's weight that indexes its output channels, or None for a module that is not
    quantized: Linear [out, in] → 0; GPT-2's Conv1D [in, out] → 1; Embedding [vocab, dim] → 0 (a row per
    token: what the module outputs for it)."""
    if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
        return 0
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return 1  # transformers.pytorch_utils.Conv1D: y = x @ W + b with W [in, out]
    return None


@torch.no_grad()
def quantize_model(model: torch.nn.Module, bits: int) -> int:
    """Quantize every Linear, Conv1D and embedding weight of ``model`` in place (biases and norms stay);
    a weight shared by two modules (tied embeddings) is quantized once. Returns how many weights."""
    seen: set[int] = set()
    for module in model.modules():
        axis = output_axis(module)
        w = getattr(module, "weight", None)
        if axis is None or not isinstance(w, torch.Tensor) or id(w) in seen:
            continue
        seen.add(id(w))
        w.copy_(quantize_rtn(w, bits, axis))
    return len(seen)


def quantized_copy(model: torch.nn.Module, bits: int) -> torch.nn.Module:
    """A copy of ``model`` with its weights quantized to ``bits`` bits (the model itself is untouched)."""
    out = copy.deepcopy(model)
    quantize_model(out, bits)
    out.eval()
    return out
