"""Unlearning losses as pure functions of tensors (docs/method.md §4).

Conventions: a batch of B sequences x_i padded to width W; ``nll[i, t-1] = −log p_θ(x_{i,t} | x_{i,<t})``
for t = 1..W-1, and ``mask[i, t-1]`` says whether that position counts (a real token, past the
loss's start position). ``weights`` w_i ∈ {0, 1} say which sequences are selected (a selector's output,
:mod:`unmemorize.unlearning.selectors`); every loss is normalised over the selected sequences only
(§4.2: "the loss is normalised over the selected examples"). Nothing here knows about models,
optimizers or steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the one per-token NLL and its position mask, defined with the metrics; every loss here is made of them
from unmemorize.memorization import position_mask, token_nll  # noqa: F401


def _selected_token_mean(nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    m = mask.float() * weights.float()[:, None]
    return (nll * m).sum() / m.sum().clamp(min=1.0)


def ascent(nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Gradient ascent (GA, §4.1; SGA with a selection, §4.2): minimise

        L_GA = − Σ_i w_i Σ_t m_it · nll_it  /  Σ_i w_i Σ_t m_it

    i.e. minus the token-mean cross-entropy over the selected sequences (the code's ``negative_loss``).
    """
    return -_selected_token_mean(nll, mask, weights)


def descent(nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Plain fine-tuning (TA's θ_ft, §4.3; the retain terms): L = + Σ w m nll / Σ w m."""
    return _selected_token_mean(nll, mask, weights)


def sequence_log_likelihood(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log π(x_i) = − Σ_t m_it · nll_it  (a sum over the counted tokens, [B])."""
    return -(nll * mask.float()).sum(1)


def npo(log_likelihood: torch.Tensor, reference_log_likelihood: torch.Tensor, weights: torch.Tensor,
        beta: float = 0.1) -> torch.Tensor:
    """Negative Preference Optimization (Zhang et al. 2024), over the selected sequences:

        L_NPO = (2/β) · Σ_i w_i · log(1 + (π_θ(x_i) / π_ref(x_i))^β)  /  Σ_i w_i
              = (2/β) · mean_{selected} softplus(β · (log π_θ(x_i) − log π_ref(x_i)))

    π_ref is the model before unlearning. At θ = θ_ref every term is (2/β)·log 2, and as β → 0 the
    gradient tends to that of gradient ascent on the sequence likelihood.
    """
    w = weights.float()
    terms = F.softplus(beta * (log_likelihood - reference_log_likelihood))
    return (2.0 / beta) * (terms * w).sum() / w.sum().clamp(min=1.0)


def cross_entropy_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor,
                               mask: torch.Tensor) -> torch.Tensor:
    """GA+Mismatch's "normal" term (§4.7): the mean over counted positions of the cross-entropy from
    the frozen model's next-token distribution to the current one,

        L_normal = Σ_it m_it · ( − Σ_v p_ref(v | x_{i,<t}) · log p_θ(v | x_{i,<t}) )  /  Σ_it m_it

    which equals KL(p_ref ‖ p_θ) plus a constant (the reference's entropy).
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    p_ref = F.softmax(reference_logits[:, :-1].float(), dim=-1)
    ce = -(p_ref * logp).sum(-1)
    m = mask.float()
    return (ce * m).sum() / m.sum().clamp(min=1.0)
