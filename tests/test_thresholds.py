"""τ, the band, c(D_f) and the distance to τ against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from unmemorize.errors import UserError
from unmemorize.thresholds import (
    Band, acceptable_level, acceptable_level_by_group, distance_to_tau, group_key, outlier_count, summarize, verdict,
)


def test_outliers_and_verdicts_use_inclusive_edges():
    band = Band(0.15, 0.60)
    g = np.array([0.10, 0.15, 0.16, 0.59, 0.60, 0.95, math.nan])
    assert outlier_count(g, band) == (2, 2)
    assert [verdict(x, band) for x in g] == ["over-forgotten", "over-forgotten", "in band", "in band",
                                             "extractable", "extractable", "unmeasured"]


def test_summary_by_hand():
    g = np.array([0.9, 0.5, 0.1, 0.3])
    s = summarize(g, 0.3, Band())
    assert (s.c_low, s.c_high, s.c) == (1, 1, 2)
    assert s.mean == pytest.approx(0.45)
    assert s.std == pytest.approx(np.std([0.9, 0.5, 0.1, 0.3]))
    assert s.distance_to_tau == pytest.approx(15.0)  # |45 − 30| MA points


def test_tau_is_reference_mean_and_by_group():
    ref = pd.DataFrame({"ma": [0.2, 0.4, 0.6, math.nan], "corpus": ["prose", "prose", "code", "code"]})
    assert acceptable_level(ref["ma"]) == pytest.approx(0.4)
    assert acceptable_level_by_group(ref, "corpus") == {"code": pytest.approx(0.6), "prose": pytest.approx(0.3)}
    spelled = pd.DataFrame({"ma": [0.2, 0.4, 0.6], "corpus": ["Pile-CC", "pile-cc", "USPTO Backgrounds"]})
    assert acceptable_level_by_group(spelled, "corpus") == {"Pile-CC": pytest.approx(0.3),
                                                            "USPTO Backgrounds": pytest.approx(0.6)}
    assert group_key("uspto_backgrounds") == group_key("USPTO Backgrounds") != group_key("Pile-CC")
    with pytest.raises(UserError, match="no column 'kind'"):
        acceptable_level_by_group(ref, "kind")
    with pytest.raises(UserError):
        acceptable_level([math.nan])


def test_per_sequence_tau_distance_and_bad_band():
    assert distance_to_tau([0.5, 0.7], [0.4, 0.6]) == pytest.approx(10.0)
    with pytest.raises(UserError, match="lo < hi"):
        Band(0.6, 0.15)


def test_audit_reuses_a_profiled_reference(tokenizer):
    """Several forget sets against one reference: passing the first audit's reference profile gives the
    same τ and verdicts without profiling the reference again; a profile of another set is refused."""
    from unittest import mock

    import unmemorize.audit as audit_mod
    from unmemorize.memorization import ProfileOptions
    from unmemorize.tiny import tiny_model

    from conftest import make_set

    model = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, seed=3)
    forget = make_set(tokenizer, ["alpha beta gamma delta epsilon zeta", "one two three four five six seven"])
    other = make_set(tokenizer, ["red green blue yellow purple orange", "north south east west up down"])
    reference = make_set(tokenizer, ["the quick brown fox jumps over the lazy dog", "a b c d e f g h i j k"],
                         ids=["r0", "r1"])
    first = audit_mod.audit(model, forget, reference, ProfileOptions(metrics=("ma",)))
    fresh = audit_mod.audit(model, other, reference, ProfileOptions(metrics=("ma",)))
    with mock.patch.object(audit_mod, "profile", wraps=audit_mod.profile) as spy:
        again = audit_mod.audit(model, other, reference, ProfileOptions(metrics=("ma",)),
                                reference_profile=first.reference)
    assert spy.call_count == 1  # the forget set only
    assert again.tau == fresh.tau and list(again.forget["verdict"]) == list(fresh.forget["verdict"])
    with pytest.raises(ValueError, match="not a profile"):
        audit_mod.audit(model, other, forget, ProfileOptions(metrics=("ma",)), reference_profile=first.reference)
