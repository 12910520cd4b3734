"""τ, the band, c(D_f) and the distance to τ against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from unmemorize.errors import UserError
from unmemorize.thresholds import (
    Band, acceptable_level, acceptable_level_by_group, distance_to_tau, outlier_count, summarize, verdict,
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
    with pytest.raises(UserError, match="no column 'kind'"):
        acceptable_level_by_group(ref, "kind")
    with pytest.raises(UserError):
        acceptable_level([math.nan])


def test_per_sequence_tau_distance_and_bad_band():
    assert distance_to_tau([0.5, 0.7], [0.4, 0.6]) == pytest.approx(10.0)
    with pytest.raises(UserError, match="lo < hi"):
        Band(0.6, 0.15)
