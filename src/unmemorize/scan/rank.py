"""Which windows are the most memorized: the order of a scan's table and its candidates (pure).

A window's *excess* is MA − τ, with τ of its group under ``--tau-by`` (so code is held against
unseen code, prose against unseen prose); without groups it orders like MA. The order is total:
excess descending, then loss ascending (the better-predicted of two equal MAs first), then corpus
order; a window without MA (NaN) comes last. Because the order is total, the k first of a whole
corpus are among the k first of each chunk of it: a chunk keeps the tokens of its own top k (and
of every window at or above the level), and the scan's top k is found among those.
"""

from __future__ import annotations

import numpy as np


def rank_order(excess, loss, order) -> np.ndarray:
    """Indices from most to least memorized (see the module docstring)."""
    excess = np.asarray(excess, dtype=float)
    loss = np.asarray(loss, dtype=float)
    order = np.asarray(order)
    e = np.where(np.isnan(excess), np.inf, -excess)  # ascending sort of −excess; NaN last
    lo = np.where(np.isnan(loss), np.inf, loss)
    return np.lexsort((order, lo, e))


def top_k(excess, loss, order, k: int) -> np.ndarray:
    """The first ``k`` indices of :func:`rank_order`."""
    return rank_order(excess, loss, order)[: max(0, int(k))]


def candidates(excess, loss, order, ma, level, k: int) -> np.ndarray:
    """Boolean mask: in the top ``k``, or MA at or above ``level`` (a number or one per window; None: no level)."""
    mask = np.zeros(len(np.asarray(excess)), dtype=bool)
    mask[top_k(excess, loss, order, k)] = True
    if level is not None:
        ma = np.asarray(ma, dtype=float)
        mask |= ~np.isnan(ma) & (ma >= np.asarray(level, dtype=float))
    return mask
