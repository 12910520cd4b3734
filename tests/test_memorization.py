"""Every memorization metric against a slow, obviously correct reference (exact equality, fp32)."""

from __future__ import annotations

import math

import pytest
import torch

from unmemorize.memorization import (
    ProfileOptions,
    extraction_likelihood,
    decode_from_prefixes,
    memorization_accuracy,
    overlap,
    profile,
    sequence_loss,
)
from unmemorize.reference import (
    extraction_likelihood_reference,
    greedy_reference,
    memorization_accuracy_reference,
)
from unmemorize.tiny import tiny_model

from conftest import make_set

TEXTS = [
    "Customer file 1. Name: Ada Eriksen. Born: 1961-02-03. Email: ada@example.com.",
    "The quick brown fox jumps over the lazy dog, again and again and again.",
    "Short one.",
    "def f(x):\n    return x + 1\n\nprint(f(2))\n",
    "a",
]


def test_overlap_by_hand():
    # pred 2-grams: (1,2) (2,3) (3,9); label 2-grams: (1,2) (2,3) (3,4) → 2 of 3
    assert overlap([1, 2, 3, 9], [1, 2, 3, 4], 2) == pytest.approx(2 / 3)
    # multiplicity counts on the prediction side, denominator on the label side
    assert overlap([5, 5, 5], [5, 5, 7], 2) == pytest.approx(2 / 2)
    with pytest.raises(ValueError):
        overlap([1], [1], 2)


def test_memorization_accuracy_by_hand():
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    greedy = torch.tensor([[2, 9, 4, 7], [6, 1, 1, 1]])  # a[t] = greedy[:, t-1]
    ma = memorization_accuracy(greedy, ids, torch.tensor([4, 2]))
    assert ma.tolist() == [2 / 3, 1.0]
    assert math.isnan(memorization_accuracy(greedy[:1], ids[:1], torch.tensor([1]))[0])


def test_sequence_loss_by_hand():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(2) = 3/6 at position 0
    ids = torch.tensor([[0, 2, 1]])
    loss = sequence_loss(logits, ids, torch.tensor([2]))  # only position 1 counts
    assert loss.item() == pytest.approx(-math.log(0.5))
    loss2 = sequence_loss(logits, ids, torch.tensor([3]))  # plus p(1) = 1/6 at position 1 (uniform)
    assert loss2.item() == pytest.approx((-math.log(0.5) + math.log(4)) / 2)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox", "llama"])
def test_ma_and_el_equal_reference_random_models(tokenizer, arch):
    model = tiny_model(arch, vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64,
                       seed=3)
    seqs = make_set(tokenizer, TEXTS, length=24)
    assert (seqs.lengths < 24).any(), "the test needs padded rows"
    prof = profile(model, seqs, ProfileOptions(el_n=3, el_for="all", batch_size=2, decode_batch_size=5,
                                               extraction_prefix=8, extraction_suffix=6))
    for r in range(len(seqs)):
        x = seqs.input_ids[r, : seqs.lengths[r]]
        ref_ma = memorization_accuracy_reference(model, x)
        ref_el = extraction_likelihood_reference(model, x, 3)
        got_ma, got_el = prof.loc[r, "ma"], prof.loc[r, "el_3"]
        assert (math.isnan(ref_ma) and math.isnan(got_ma)) or got_ma == ref_ma, (r, got_ma, ref_ma)
        assert (math.isnan(ref_el) and math.isnan(got_el)) or got_el == ref_el, (r, got_el, ref_el)


def test_profile_equals_reference_on_memorized_model(memorized):
    model, members, _ = memorized
    prof = profile(model, members, ProfileOptions(el_n=10, el_for="all", batch_size=5, decode_batch_size=7,
                                                  extraction_prefix=20, extraction_suffix=30))
    # The fixture memorizes its records to different degrees (MA ≈ 0.4 … 0.7 with these records),
    # so both the agreement shortcut and the decoding path of EL are exercised.
    assert prof["ma"].max() - prof["ma"].min() > 0.25, "fixture should memorize to different degrees"
    order = prof["ma"].sort_values().index.tolist()
    for r in range(len(members)):
        x = members.input_ids[r, : members.lengths[r]]
        assert prof.loc[r, "ma"] == memorization_accuracy_reference(model, x)
        if r in order[:2] + order[-2:]:  # the slow EL reference on the least and most memorized
            assert prof.loc[r, "el_10"] == extraction_likelihood_reference(model, x, 10)
        k, m = int(prof.loc[r, "extraction_prefix"]), int(prof.loc[r, "extraction_suffix"])
        truth = x[k:k + m].tolist()
        cont = greedy_reference(model, x[:k], m)
        assert prof.loc[r, "extraction_tokens"] == cont
        matched = next((i for i, (a, b) in enumerate(zip(cont, truth)) if a != b), m)
        assert prof.loc[r, "extraction_matched"] == matched
        assert prof.loc[r, "extraction_exact"] == (cont == truth)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoding_from_cached_prefixes_matches_full_recomputation(tokenizer, arch):
    """Continuations started from slices of the teacher-forced cache (mixed prompt lengths, rows of
    different sequences in one batch, jobs leaving the batch early) equal greedy decoding by full
    recomputation of each prompt."""
    model = tiny_model(arch, vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64)
    seqs = make_set(tokenizer, TEXTS[:4], length=24)
    logits = model(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask).logits
    greedy = logits.argmax(-1)
    jobs = {(0, 3): 5, (1, 9): 2, (3, 1): 7, (2, 2): 4, (1, 4): 6}
    outs = decode_from_prefixes(model, seqs, jobs, greedy, seq_batch=2, batch_size=3)
    assert set(outs) == set(jobs)
    for (r, j), n in jobs.items():
        assert outs[(r, j)] == greedy_reference(model, seqs.input_ids[r, :j], n), (r, j)


def test_extraction_likelihood_formula_by_hand():
    x = [1, 2, 3, 4]
    # n = 2: prefixes i = 1, 2; continuations of x[:1] and x[:2]
    conts = [[2, 3, 4], [3, 9]]
    # i=1: label (2,3),(3,4): pred (2,3),(3,4) → 1; i=2: label (3,4): pred (3,9) → 0
    assert extraction_likelihood(x, conts, 2) == pytest.approx(0.5)
    assert math.isnan(extraction_likelihood([1, 2], [[2]], 2))


def test_parity_counts_padding(tokenizer):
    model = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64)
    seqs = make_set(tokenizer, TEXTS[:3], length=24)
    clean = profile(model, seqs, ProfileOptions(metrics=("ma",)))
    parity = profile(model, seqs, ProfileOptions(metrics=("ma",), parity=True))
    full = int(seqs.lengths.argmax())
    assert seqs.lengths[full] == 24
    assert parity.loc[full, "ma"] == clean.loc[full, "ma"]  # no pads: identical
    # a padded row: parity counts 23 positions, pads included, against the unmasked pass
    r = int(seqs.lengths.argmin())
    with torch.no_grad():
        g = model(input_ids=seqs.input_ids[r:r + 1]).logits.argmax(-1)[0]
    want = (g[:-1] == seqs.input_ids[r, 1:]).double().mean().item()
    assert parity.loc[r, "ma"] == pytest.approx(want, abs=0)
