"""Non-members matched to the members by kind of text, so that the kind cannot make an AUC.

Jang et al.'s forget sets are mostly code (24–26 of 32 GitHub) while unseen Pile text is mostly
prose (about 10 % GitHub); code is far more predictable than prose to a language model, so any
likelihood attack separates such sets whether or not the members were memorized. Matching keeps
the members' mix of kinds among the non-members: with p_g the members' share of group g and n_g
the non-members of g, the matched set has N = min_g ⌊n_g / p_g⌋ rows, round(N·p_g) of each group
(a seeded draw). Members of a group with no non-member at all are left out of the attack, and the
note says how many.
"""

from __future__ import annotations

import math

import numpy as np

from unmemorize.data import SequenceSet
from unmemorize.thresholds import group_key


def match_column(forget: SequenceSet, reference: SequenceSet, match_by: str | None) -> str | None:
    """The column to match on: ``match_by``, or for "auto" the corpus column when both sets have one."""
    if match_by is None:
        return None
    column = "corpus" if match_by == "auto" else match_by
    if column in forget.meta.columns and column in reference.meta.columns:
        return column
    if match_by == "auto":
        return None
    from unmemorize.errors import UserError

    raise UserError(f"attacks.match_by {column}: both the forget set and the reference set need a {column!r} column "
                    f"(forget: {', '.join(forget.meta.columns) or 'none'}; reference: "
                    f"{', '.join(reference.meta.columns) or 'none'})")


def match_nonmembers(forget: SequenceSet, reference: SequenceSet, column: str,
                     seed: int = 0) -> tuple[SequenceSet, SequenceSet, str]:
    """(members kept, matched non-members, a note) for attacks matched on ``column``."""
    fk = [group_key(v) for v in forget.meta[column].astype(str)]
    rk = [group_key(v) for v in reference.meta[column].astype(str)]
    by_ref: dict[str, list[int]] = {}
    for i, k in enumerate(rk):
        by_ref.setdefault(k, []).append(i)
    keep = [i for i, k in enumerate(fk) if k in by_ref]
    dropped = sorted({k for k in fk if k not in by_ref})
    if not keep:
        return forget, reference, (f"non-members not matched by {column}: no non-member shares a {column} with the "
                                   "members, so the attacks compare unmatched sets")
    counts: dict[str, int] = {}
    for i in keep:
        counts[fk[i]] = counts.get(fk[i], 0) + 1
    share = {g: c / len(keep) for g, c in counts.items()}
    total = min(math.floor(len(by_ref[g]) / p) for g, p in share.items())
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for g, p in share.items():
        take = min(len(by_ref[g]), max(1, round(total * p)))
        chosen += sorted(rng.choice(by_ref[g], take, replace=False).tolist())
    chosen.sort()
    note = (f"non-members matched to the members by {column}: {len(chosen)} of {len(reference)} kept, in the members' "
            f"proportions ({', '.join(f'{g} {share[g]:.0%}' for g in sorted(share))})")
    if dropped:
        note += (f"; {len(forget) - len(keep)} member(s) of {', '.join(dropped)} left out of the attacks (no non-member "
                 "of that kind)")
    return forget.subset(keep), reference.subset(chosen), note


def matched_sets(forget: SequenceSet, reference: SequenceSet, match_by: str | None,
                 seed: int = 0) -> tuple[SequenceSet, SequenceSet, str | None]:
    """(members, non-members, note or None) as the attacks compare them under ``match_by``: what both
    ``unlearn`` and ``attack`` call, so the two commands never match differently."""
    column = match_column(forget, reference, match_by)
    if column is None:
        return forget, reference, None
    return match_nonmembers(forget, reference, column, seed)
