"""Attack score functions, scoring and neighbour generation, each against a hand-computed case."""

from __future__ import annotations

import math
import random
import zlib

import numpy as np
import pytest
import torch

from unmemorize.attacks.extraction import (
    expected_match_fraction,
    greedy_matched_length,
    match_probabilities,
    sample_matched_lengths,
)
from unmemorize.attacks.mia import (
    k_count,
    loss_score,
    min_k_plus_plus_score,
    min_k_plus_plus_token,
    min_k_score,
    reference_score,
    zlib_entropy,
    zlib_score,
)
from unmemorize.attacks.miau import encode_texts, neighbourhood_score
from unmemorize.attacks.perturb import (
    Masking,
    NeighbourCache,
    WordPerturber,
    choose_spans,
    mask_text,
    neighbours_for,
    parse_t5_fills,
)
from unmemorize.attacks.scoring import check_fprs, evaluate, min_nonmembers, resolvable_fprs, tpr_at_fpr
from unmemorize.attacks.threshold import threshold_score
from unmemorize.attacks.tokens import position_statistics, token_mean
from unmemorize.errors import UserError

NAN = math.nan

# ---------------------------------------------------------------- likelihood attacks


def test_loss_and_zlib_by_hand():
    logp = np.array([[-1.0, -2.0, NAN], [-0.5, NAN, NAN], [NAN, NAN, NAN]])
    valid = ~np.isnan(logp)
    got = loss_score(logp, valid)
    assert got[:2].tolist() == [-1.5, -0.5] and math.isnan(got[2])
    # zlib entropy = bytes of zlib.compress(text) (Carlini et al.'s code); "aaaa…" compresses far better
    assert zlib_entropy("abc") == len(zlib.compress(b"abc")) == 11
    assert zlib_entropy("a" * 100) < zlib_entropy("".join(chr(97 + (i * 7) % 26) for i in range(100)))
    z = zlib_score(logp[:2], valid[:2], ["abc", "abc"])
    assert z.tolist() == pytest.approx([-1.5 / 11, -0.5 / 11])


def test_min_k_by_hand():
    logp = np.array([[-1.0, -5.0, -3.0, -2.0, -4.0]])
    valid = np.ones_like(logp, dtype=bool)
    assert min_k_score(logp, valid, 0.4).tolist() == [-4.5]  # ⌊0.4·5⌋ = 2 lowest: −5, −4
    assert min_k_score(logp, valid, 1.0).tolist() == [-3.0]  # all tokens: the loss attack
    assert min_k_score(logp, valid, 0.1).tolist() == [-5.0]  # ⌊0.5⌋ = 0 → at least one token
    assert k_count(5, 0.2) == 1 and k_count(199, 0.2) == 39
    # padding never counts
    padded = np.array([[-1.0, -5.0, NAN]])
    assert min_k_score(padded, ~np.isnan(padded), 0.5).tolist() == [-5.0]


def test_position_statistics_and_min_k_plus_plus_by_hand():
    p = torch.tensor([0.5, 0.25, 0.25])
    logits = p.log()[None, :] + 3.0  # a shift changes nothing
    logp, mu, sigma, q = position_statistics(logits, torch.tensor([0]), top_k=None, temperature=1.0)
    ln = math.log
    want_mu = 0.5 * ln(0.5) + 0.5 * ln(0.25)
    want_sigma = math.sqrt(0.5 * ln(0.5) ** 2 + 0.5 * ln(0.25) ** 2 - want_mu ** 2)
    assert logp.item() == pytest.approx(ln(0.5), abs=1e-6)
    assert mu.item() == pytest.approx(want_mu, abs=1e-6)
    assert sigma.item() == pytest.approx(want_sigma, abs=1e-6)
    assert q.item() == pytest.approx(0.5, abs=1e-6)
    tok = min_k_plus_plus_token(np.array([ln(0.5), ln(0.25)]), np.array([want_mu] * 2), np.array([want_sigma] * 2))
    assert tok.tolist() == pytest.approx([(ln(0.5) - want_mu) / want_sigma, (ln(0.25) - want_mu) / want_sigma])
    # a point-mass distribution (σ = 0) carries no evidence: score 0, not a division by zero
    assert min_k_plus_plus_token(np.array([0.0]), np.array([0.0]), np.array([0.0])).tolist() == [0.0]
    # the sequence score averages the k% lowest token scores
    lp, m, s = np.array([[-1.0, -2.0, -3.0, -4.0]]), np.array([[-1.0, -1.0, -1.0, -1.0]]), np.full((1, 4), 2.0)
    assert min_k_plus_plus_score(lp, m, s, np.ones((1, 4), bool), 0.5).tolist() == [(-1.5 + -1.0) / 2]


def test_sampling_probability_with_top_k_and_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 2)
    _, _, _, q = position_statistics(logits, torch.tensor([0, 2]), top_k=2, temperature=0.5)
    e4, e2 = math.exp(4.0), math.exp(2.0)  # logits / 0.5 of the two kept tokens
    assert q[0].item() == pytest.approx(e4 / (e4 + e2), abs=1e-6)
    assert q[1].item() == 0.0  # outside the top 2: a sampler never draws it


def test_reference_threshold_and_neighbourhood_by_hand():
    assert reference_score(np.array([-1.0, -2.0]), np.array([-1.5, -1.0])).tolist() == [0.5, 1.0]
    assert threshold_score(np.array([0.9, 0.1, 0.4]), 0.4).tolist() == pytest.approx([0.5, 0.3, 0.0])
    # memorized (ℓ(x) above its neighbours) and over-forgotten (below) both score |gap| = 2
    got = neighbourhood_score(np.array([-1.0, -3.0]), np.array([[-2.0, -4.0], [-1.0, -1.0]]))
    assert got.tolist() == [2.0, 2.0]
    assert token_mean(np.array([[1.0, 3.0, 99.0]]), np.array([[True, True, False]])).tolist() == [2.0]


# ---------------------------------------------------------------- sampling extraction


def test_match_probabilities_by_hand():
    q = np.array([0.5, 0.5, 1.0])
    assert match_probabilities(q).tolist() == [0.5, 0.25, 0.25]
    assert expected_match_fraction(q) == pytest.approx((0.5 + 0.25 + 0.25) / 3)
    assert expected_match_fraction(np.ones(4)) == 1.0
    assert greedy_matched_length(np.array([True, True, False, True])) == 2
    assert greedy_matched_length(np.array([True, True])) == 2


def test_sampled_matches_follow_their_expectation():
    q = np.array([0.9, 0.8, 0.5])
    lengths = sample_matched_lengths(q, 40_000, np.random.default_rng(0))
    assert set(np.unique(lengths)) <= {0, 1, 2, 3}
    for j, p in enumerate(match_probabilities(q), start=1):
        assert (lengths >= j).mean() == pytest.approx(p, abs=0.01)
    assert lengths.mean() / 3 == pytest.approx(expected_match_fraction(q), abs=0.01)


# ---------------------------------------------------------------- scoring


def test_auc_and_tpr_by_hand():
    # pairs (member > non-member): 0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1 → AUC 3/4
    ev = evaluate([0.9, 0.4], [0.5, 0.1], fprs=(), bootstrap=0)
    assert ev.auc.value == pytest.approx(0.75)
    # ties count one half
    assert evaluate([1.0], [1.0], fprs=(), bootstrap=0).auc.value == 0.5
    # TPR@α: highest TPR with FPR ≤ α; 100 non-members at 0..99, members at 99.5 (beats all), 50.5, −1
    members, nonmembers = [99.5, 50.5, -1.0], list(range(100))
    ev = evaluate(members, nonmembers, fprs=(0.01, 0.5), bootstrap=0)
    assert ev.tpr[0.01].value == pytest.approx(1 / 3)  # at FPR 1/100 only 99.5 is above the threshold
    assert ev.tpr[0.5].value == pytest.approx(2 / 3)  # 50.5 beats 51 non-members → FPR 49/100 ≤ 0.5
    fpr, tpr = np.array([0.0, 0.0, 0.1, 0.2, 1.0]), np.array([0.0, 0.3, 0.5, 0.6, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.15) == 0.5 and tpr_at_fpr(fpr, tpr, 0.0) == 0.3


def test_bootstrap_interval_and_below_chance_flag():
    rng = np.random.default_rng(1)
    m, n = rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 60)
    ev = evaluate(m, n, fprs=(), bootstrap=300, seed=0)
    assert ev.auc.low < ev.auc.value < ev.auc.high and ev.auc.low > 0.5 and not ev.below_chance
    flipped = evaluate(-m, -n, fprs=(), bootstrap=300, seed=0)
    assert flipped.auc.value == pytest.approx(1 - ev.auc.value)
    assert flipped.below_chance and flipped.as_dict()["flipped_auc"] == pytest.approx(ev.auc.value)
    chance = evaluate(rng.normal(0, 1, 60), rng.normal(0, 1, 60), fprs=(), bootstrap=300, seed=0)
    assert not chance.below_chance  # an interval that straddles 0.5 is not flagged
    # NaN scores (unmeasurable sequences) are left out and counted
    ev = evaluate([1.0, NAN], [0.0, 0.5, NAN], fprs=(), bootstrap=0)
    assert (ev.n_members, ev.nan_members, ev.n_nonmembers, ev.nan_nonmembers) == (1, 1, 2, 1)


def test_fpr_resolution_rules():
    assert min_nonmembers(0.01) == 100 and min_nonmembers(0.001) == 1000
    assert resolvable_fprs((0.01, 0.001), 150) == ((0.01,), (0.001,))
    check_fprs((0.01,), 100)
    with pytest.raises(UserError, match="too few for TPR at 0.1% FPR.*at least 1000"):
        check_fprs((0.01, 0.001), 999)
    with pytest.raises(UserError, match="strictly between 0 and 1"):
        check_fprs((1.5,), 10_000)
    # cut down by the matching: the message names the matching and how to compare every non-member
    note = "non-members matched to the members by corpus: 14 of 100 kept, in the members' proportions (github 75%)"
    with pytest.raises(UserError) as e:
        check_fprs((0.01,), 14, note)
    assert str(e.value).startswith(f"the reference (non-member) set has 14 sequences after matching ({note}), too few "
                                   "for TPR at 1% FPR (needs at least 100")
    assert "--match-by none (attacks.match_by: none)" in str(e.value)
    check_fprs((0.01,), 100, note)  # enough left: no error, whatever the note


# ---------------------------------------------------------------- masking and perturbers

TEXT = "def f(x):\n    return x + 1\n\n# the quick brown fox jumps over the lazy dog, twice  over\tagain"


def test_masking_cuts_whole_words_and_reassembles_exactly():
    masking = Masking(0.3, 2)
    n_words = len(TEXT.split())
    for seed in range(30):
        m = mask_text(TEXT, masking, random.Random(seed))
        assert m.assemble(m.originals) == TEXT  # nothing but the spans changes
        assert len(m.originals) == round(0.3 * n_words / 2)
        assert all(len(o.split()) == 2 for o in m.originals)
        assert all(f.split() for f in m.fixed[1:-1])  # at least one unmasked word between spans
        assert all(f[:1].isspace() for f in m.fixed[1:] if f)  # the whitespace after a span stays
        assert all(s.isspace() or s == "" for s in m.seps)


def test_span_placement_is_uniform_over_all_placements():
    counts = {}
    rng = random.Random(0)
    for _ in range(2000):
        starts = tuple(choose_spans(7, Masking(0.6, 2), rng))  # round(0.6·7/2) = 2 spans of 2 in 7 words
        counts[starts] = counts.get(starts, 0) + 1
    # placements with a gap: (0,3) (0,4) (0,5) (1,4) (1,5) (2,5) → 6, each ≈ 1/6
    assert set(counts) == {(0, 3), (0, 4), (0, 5), (1, 4), (1, 5), (2, 5)}
    assert min(counts.values()) > 2000 / 6 * 0.8
    assert choose_spans(1, Masking(0.3, 2), rng) == []  # too short for one span


def test_word_perturber_is_per_text_and_seeded():
    p = WordPerturber(Masking(0.3, 2))
    a = p.neighbours(TEXT, 5, seed=0)
    assert a == p.neighbours(TEXT, 5, seed=0)
    assert a != p.neighbours(TEXT, 5, seed=1)
    assert len(a) == 5 and len(set(a)) > 1 and TEXT not in a
    vocab = set(TEXT.split())
    for n in a:
        assert set(n.split()) <= vocab  # spans refilled with the text's own words


def test_neighbour_cache_by_text_perturber_and_seed(tmp_path):
    texts = [TEXT, "another text with a handful of words in it for masking"]
    cache = NeighbourCache(tmp_path)
    p = WordPerturber(Masking(0.3, 2))
    first = neighbours_for(texts, p, 4, 0, cache)
    spans = p.spans
    again = neighbours_for(list(reversed(texts)), p, 4, 0, cache)  # order does not matter: keyed by text
    assert again == list(reversed(first)) and cache.hits == 2 and p.spans == spans
    assert neighbours_for(texts[:1], p, 4, 1, cache) != first[:1]  # another seed is another entry
    assert neighbours_for(texts[:1], WordPerturber(Masking(0.5, 2)), 4, 0, cache) != first[:1]
    for f in tmp_path.rglob("*.json"):  # a damaged entry is recomputed, not trusted
        f.write_text("{not json")
    assert neighbours_for(texts, p, 4, 0, NeighbourCache(tmp_path)) == first


def test_parse_t5_fills():
    assert parse_t5_fills("<pad><extra_id_0> a b<extra_id_1> c d<extra_id_2></s>", 2) == ["a b", "c d"]
    assert parse_t5_fills("<pad><extra_id_0> a b<extra_id_1>  c\n d</s>", 2) == ["a b", "c d"]
    assert parse_t5_fills("<pad><extra_id_0> a b<extra_id_1> c", 2) is None  # cut off mid-fill
    assert parse_t5_fills("<pad><extra_id_0> a b<extra_id_2> c</s>", 2) is None  # sentinel 1 missing


def test_encode_texts_truncates_and_pads(tokenizer):
    ids, lengths = encode_texts(tokenizer, ["Customer file 1.", "a " * 80], 16, pad_id=0)
    assert ids.shape == (2, 16) and lengths[1] == 16 and 0 < lengths[0] < 16
    assert (ids[0, lengths[0]:] == 0).all()
