"""The fast attack battery and the default audit against their slow references.

* MIAU's lm refill (both schedules: each fixed piece prefilled in one pass, or every row one token per
  pass with the cache written in place) samples from the distributions of the token-by-token refill it
  replaced (:class:`unmemorize.reference.TokenByTokenRefill`): logits within 1e-5 at every draw, the
  same neighbours in float64, on a short context too;
* the neighbour cache's key covers every setting that changes a neighbour, and a cached list serves
  (and is extended for) any K;
* the attack plan resolves K (and, on a CPU, the non-members) by device and says why; run_attacks
  runs with what it resolved;
* every sequence is scored once per model (token statistics shared, neighbours in batched passes);
* EL_n is decoded for the sequences at or above the band's top by default, for all on request, NaN with
  the reason elsewhere, and equal to Jang et al.'s per-prefix loop where computed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_set, positions_used

from unmemorize.attacks import AttackOptions, run_attacks
from unmemorize.attacks.perturb import CausalRefill, Masking, NeighbourCache, Perturber, WordPerturber, neighbours_for
from unmemorize.attacks.plan import (
    K_FLOOR,
    PAPER_K,
    AttackPlan,
    min_nonmembers,
    plan_attacks,
    refill_passes,
    sample_nonmembers,
    seconds_per_pass,
)
from unmemorize.attacks.registry import AttackSettings
from unmemorize.audit import audit, summary_rows
from unmemorize.lab.ordinary import stdlib_paragraphs
from unmemorize.lab.records import generate_records
from unmemorize.memorization import EL_COMPUTED, ProfileOptions, profile
from unmemorize.reference import TokenByTokenRefill, extraction_likelihood_reference
from unmemorize.thresholds import Band
from unmemorize.tiny import tiny_model

SMOLLM2_PARAMETERS = 134_515_008


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: thread hand-offs cost more than the work on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _texts(tokenizer, n: int = 5) -> list[str]:
    """Records and prose, cut to 60 tokens as MIAU's texts are (decoded from T token ids)."""
    raw = [r["text"] for r in generate_records(n - 2, seed=11)] + stdlib_paragraphs()[4:6]
    return [tokenizer.decode(tokenizer(t)["input_ids"][:60]) for t in raw]


# ---------------------------------------------------------------- the refill against its reference


@pytest.mark.parametrize("schedule", ["prefill", "lockstep"])
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox", "llama"])
def test_refill_samples_the_reference_distributions(tokenizer, arch, schedule):
    model = tiny_model(arch, vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64, seed=3)
    texts, masking = _texts(tokenizer), Masking(0.4, 2)
    slow = TokenByTokenRefill(masking, model, tokenizer, "tiny")
    slow.trace = {}
    want = slow.neighbours_many(texts, 4, seed=1)
    fast = CausalRefill(masking, model, tokenizer, "tiny")
    fast.schedule, fast.max_rows, fast.trace = schedule, 7, {}  # rows of several texts share a batch
    got = fast.neighbours_many(texts, 4, seed=1)
    # the same draws, each from the same distribution: logits within 1e-5 at every sampled position
    assert set(fast.trace) == set(slow.trace) and len(fast.trace) > 100
    worst = max(float((fast.trace[k] - slow.trace[k]).abs().max()) for k in slow.trace)
    assert worst < 1e-5, worst
    assert got == want and fast.spans == slow.spans
    assert fast.key() == slow.key()  # one cache for both


@pytest.mark.parametrize("schedule", ["prefill", "lockstep"])
def test_refill_gives_the_reference_neighbours_in_float64(tokenizer, schedule):
    model = tiny_model("llama", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64,
                       seed=5).double()
    texts, masking = _texts(tokenizer, 6), Masking(0.3, 1)
    want = TokenByTokenRefill(masking, model, tokenizer, "tiny").neighbours_many(texts, 5, seed=7)
    fast = CausalRefill(masking, model, tokenizer, "tiny")
    fast.schedule = schedule
    assert fast.neighbours_many(texts, 5, seed=7) == want
    # one text alone gets the neighbours it gets among others
    assert fast.neighbours(texts[2], 5, seed=7) == want[2]


@pytest.mark.parametrize("schedule", ["prefill", "lockstep"])
def test_refill_on_a_short_context_equals_the_reference(tokenizer, schedule):
    """Refills longer than their words push texts past a 56-position context: rows stop there, later
    spans keep their words (counted), exactly as the token-by-token reference does, and no pass ever
    holds more positions than the model has."""
    positions = 56
    model = tiny_model("gpt_neo", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64,
                       n_positions=positions, seed=3).double()
    paragraphs = stdlib_paragraphs()
    texts = ["A short note: the kite, the lamp and the anchor stay home."] + [
        tokenizer.decode(tokenizer(" ".join(paragraphs[i:i + 2]))["input_ids"][:48]) for i in (0, 2, 4)]
    masking = Masking(0.5, 1)
    slow = TokenByTokenRefill(masking, model, tokenizer, "short")
    want = slow.neighbours_many(texts, 3, seed=0)
    fast = CausalRefill(masking, model, tokenizer, "short")
    fast.schedule = schedule
    with positions_used(model) as seen:
        got = fast.neighbours_many(texts, 3, seed=0)
    assert max(seen) <= positions
    assert slow.fallback_spans > 0, "some spans must lie beyond the context"
    assert got == want and fast.fallback_spans == slow.fallback_spans


def test_prefill_feeds_each_fixed_piece_in_one_pass(tokenizer):
    """The prefill schedule: a row takes one pass per fixed piece and one per sample; the lockstep
    schedule (and the reference) one pass per token."""
    model = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64, seed=3)
    row_passes = {}
    for schedule in ("prefill", "lockstep"):
        refill = CausalRefill(Masking(0.3, 2), model, tokenizer, "tiny")
        refill.schedule, refill.trace = schedule, {}
        calls = []
        forward = model.forward
        model.forward = lambda *a, **k: calls.append(k["input_ids"].shape) or forward(*a, **k)
        try:
            refill.neighbours_many(_texts(tokenizer, 3), 2, seed=0)
        finally:
            del model.forward
        row_passes[schedule] = sum(rows for rows, _ in calls)
        draws = len(refill.trace)
    assert row_passes["prefill"] < 0.6 * row_passes["lockstep"]
    assert row_passes["prefill"] <= draws + 6 * 30  # samples + pieces (at most one per span and row)


# ---------------------------------------------------------------- the neighbour cache


def test_cache_key_covers_every_setting_that_changes_a_neighbour(tokenizer):
    model = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=1, d_model=32)
    text = "Customer file 7. Name: Ada Eriksen. Email: ada7@example.com. Note: none."

    def key(masking=Masking(0.3, 2), lm=model, tok=tokenizer, fingerprint="w", top_k=50, temperature=1.0,
            text=text, seed=0, k=5):
        return NeighbourCache.key(CausalRefill(masking, lm, tok, fingerprint, top_k, temperature), text, seed, k)

    base = key()
    changed = {
        "text": key(text=text + " "), "seed": key(seed=1),
        "mask fraction": key(masking=Masking(0.15, 2)), "span words": key(masking=Masking(0.3, 1)),
        "refill model": key(fingerprint="other weights"), "top-k": key(top_k=None), "temperature": key(temperature=0.7),
        "dtype": key(lm=tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=1,
                                   d_model=32).double()),
        "context": key(lm=tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=1,
                                     d_model=32, n_positions=64)),
    }
    for what, k in changed.items():
        assert k != base, what
    # what does not change a neighbour does not change the key: K (neighbour j depends on j alone), the
    # schedule and the batch size
    assert key(k=25) == base
    p = CausalRefill(Masking(0.3, 2), model, tokenizer, "w")
    p.schedule, p.max_rows = "prefill", 3
    assert NeighbourCache.key(p, text, 0, 5) == base
    # a perturber whose neighbours depend on K keeps K in its key
    joint = WordPerturber(Masking(0.3, 2))
    joint.prefix_stable = False
    assert NeighbourCache.key(joint, text, 0, 5) != NeighbourCache.key(joint, text, 0, 6)


def test_cached_neighbours_serve_and_extend_any_k(tmp_path, tokenizer):
    model = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=1, d_model=32)
    texts = _texts(tokenizer, 3)
    p = CausalRefill(Masking(0.3, 2), model, tokenizer, "w")
    cache = NeighbourCache(tmp_path)
    three = neighbours_for(texts, p, 3, 0, cache)
    spans = p.spans
    five = neighbours_for(texts, p, 5, 0, cache)  # the first three from the cache, two more made
    assert [n[:3] for n in five] == three and cache.extended == len(texts) and cache.hits == 0
    assert five == CausalRefill(Masking(0.3, 2), model, tokenizer, "w").neighbours_many(texts, 5, 0)
    made = p.spans - spans
    assert 0 < made < spans  # only the new maskings were refilled
    again = NeighbourCache(tmp_path)
    assert neighbours_for(texts, p, 2, 0, again) == [n[:2] for n in five] and again.hits == len(texts)
    assert p.spans == spans + made


# ---------------------------------------------------------------- the attack plan


def test_attack_plan_resolves_k_by_device_and_says_why():
    auto = AttackSettings()
    assert auto.neighbours is None and auto.nonmembers is None  # "auto" until planned
    cpu = plan_attacks(auto, 8, 32, "cpu", SMOLLM2_PARAMETERS, threads=2)
    assert K_FLOOR <= cpu.neighbours < PAPER_K and cpu.n_nonmembers == 32 and not cpu.capped
    assert "CPU" in cpu.neighbours_reason and "--neighbours 25" in cpu.neighbours_reason
    line = cpu.describe()
    assert line.startswith(f"attack plan: MIAU K = {cpu.neighbours} (CPU; the paper's K = 25 with --neighbours 25), "
                           "8 members + 32 non-members, ≈ ")
    assert "sequence passes" in line and line.endswith(("s", "min"))
    # the estimate: 40 sequences, each scored with its K neighbours, which are refilled first
    refill = refill_passes(auto.perturber)  # the default refill, in sequence passes per neighbour
    assert 0 < refill < 1
    assert cpu.passes == pytest.approx(40 * (1 + cpu.neighbours * (1 + refill)))
    assert cpu.seconds == pytest.approx(cpu.passes * seconds_per_pass(SMOLLM2_PARAMETERS, 200, "cpu", 2))
    # an unlearning run of 8 sequences: the attacks before and after fit in about 7 of its 10 minutes
    per = seconds_per_pass(SMOLLM2_PARAMETERS, 200, "cpu", 2)
    assert 40 * (3 + cpu.neighbours * (2 + refill)) * per <= 420 < 40 * (3 + (cpu.neighbours + 1) * (2 + refill)) * per
    gpu = plan_attacks(auto, 8, 32, "cuda", SMOLLM2_PARAMETERS)
    assert gpu.neighbours == PAPER_K and "GPU" in gpu.neighbours_reason and gpu.n_nonmembers == 32
    # a given K is kept, on any device; a tiny model affords the paper's K on a CPU
    assert plan_attacks(AttackSettings(neighbours=25), 8, 32, "cpu", SMOLLM2_PARAMETERS).neighbours == 25
    assert plan_attacks(AttackSettings(neighbours=3), 8, 32, "cuda", 10**6).neighbours_reason == "--neighbours"
    assert plan_attacks(auto, 8, 32, "cpu", 200_000).neighbours == PAPER_K
    # without MIAU there is no K
    assert plan_attacks(AttackSettings(names=("loss",)), 8, 32, "cpu", SMOLLM2_PARAMETERS).neighbours is None
    # before and after unlearning resolve alike (the reference attack only runs after)
    assert plan_attacks(auto, 8, 32, "cpu", SMOLLM2_PARAMETERS, has_original=True).neighbours == cpu.neighbours


def test_attack_plan_prices_the_refill_that_runs():
    """auto is priced as lm-independent, unless the perturber built (auto's fallback on GPT-Neo) is lm."""
    auto = AttackSettings()
    default = plan_attacks(auto, 8, 32, "cpu", SMOLLM2_PARAMETERS)
    fallback = plan_attacks(auto, 8, 32, "cpu", SMOLLM2_PARAMETERS, perturber="lm")
    assert default == plan_attacks(auto, 8, 32, "cpu", SMOLLM2_PARAMETERS, perturber="lm-independent")
    assert fallback == plan_attacks(AttackSettings(perturber="lm"), 8, 32, "cpu", SMOLLM2_PARAMETERS)
    assert refill_passes("lm") > refill_passes("auto") and fallback.neighbours < default.neighbours


def test_run_attacks_plans_with_autos_fallback(tokenizer, monkeypatch):

    """A GPT-Neo whose local window is narrower than its context gets lm from auto, and the plan says so."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    import unmemorize.attacks.run as attack_run

    config = GPTNeoConfig(num_layers=2, hidden_size=32, num_heads=2, max_position_embeddings=128, window_size=16,
                          attention_types=[[["global", "local"], 1]], vocab_size=len(tokenizer))
    model = GPTNeoForCausalLM(config).eval()
    seen = []
    real = attack_run.resolve_plan
    monkeypatch.setattr(attack_run, "resolve_plan", lambda *a, **kw: seen.append(kw["perturber"]) or real(*a, **kw))
    members = make_set(tokenizer, [r["text"] for r in generate_records(4, seed=7)], length=64)
    others = make_set(tokenizer, [r["text"] for r in generate_records(4, seed=8)], length=64)
    res = run_attacks(model, tokenizer, members, others,
                      options=AttackOptions(names=("miau",), neighbours=2, bootstrap=0, neighbour_cache=False))
    assert seen == ["lm"] and res.attacks["miau"].summary["perturber"]["perturber"] == "lm"


def test_attack_plan_samples_a_large_reference_down_on_a_cpu():
    auto = AttackSettings()
    big = plan_attacks(auto, 8, 1000, "cpu", SMOLLM2_PARAMETERS)
    assert big.capped and min_nonmembers(8) <= big.n_nonmembers < 1000 and big.neighbours >= 1
    assert "--nonmembers 1000" in big.nonmembers_reason and "of 1000 non-members" in big.describe()
    assert plan_attacks(auto, 8, 1000, "cuda", SMOLLM2_PARAMETERS).n_nonmembers == 1000
    # a limit the user gave is kept; so is every non-member when K was given
    assert plan_attacks(AttackSettings(nonmembers=100), 8, 1000, "cpu", SMOLLM2_PARAMETERS).n_nonmembers == 100
    assert plan_attacks(AttackSettings(neighbours=10), 8, 1000, "cpu", SMOLLM2_PARAMETERS).n_nonmembers == 1000
    # never fewer than the false-positive rates asked for need
    assert plan_attacks(AttackSettings(fprs=(0.01,)), 8, 1000, "cpu", SMOLLM2_PARAMETERS).n_nonmembers >= 100
    # the sample is seeded and in file order: the same before and after unlearning
    a, b = sample_nonmembers(1000, 64, seed=3), sample_nonmembers(1000, 64, seed=3)
    assert (a == b).all() and (np.diff(a) > 0).all() and len(a) == 64
    assert (sample_nonmembers(10, 64, seed=3) == np.arange(10)).all()


def test_run_attacks_resolves_the_plan(memorized, tokenizer):
    model, members, others = memorized
    res = run_attacks(model, tokenizer, members, others,
                      options=AttackOptions(names=("miau", "loss"), perturber="words", bootstrap=0,
                                            neighbour_cache=False))
    assert res.options.neighbours == PAPER_K  # a tiny model on a CPU affords the paper's K
    summary = res.attacks["miau"].summary
    assert summary["neighbours"] == PAPER_K and summary["neighbours_reason"] == "CPU"
    assert any(n.startswith("attack plan: MIAU K = 25") for n in res.notes)
    given = run_attacks(model, tokenizer, members, others,
                        options=AttackOptions(names=("miau",), perturber="words", neighbours=3, nonmembers=5,
                                              bootstrap=0, neighbour_cache=False))
    assert given.options.neighbours == 3 and (~given.scores["member"]).sum() == 5
    assert isinstance(AttackPlan, type)


# ---------------------------------------------------------------- nothing is computed twice


def test_every_sequence_is_scored_once_per_model(memorized, tokenizer):
    """Token statistics are shared by every attack (MIAU's ℓ(x) included), each neighbour is scored
    once, and the original model reads each sequence once, for the reference attack."""
    model, members, others = memorized
    target = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, seed=4)
    rows = {"target": 0, "original": 0}

    def counting(m, name):
        forward = m.forward

        def counted(*args, **kwargs):
            rows[name] += kwargs.get("input_ids", args[0] if args else None).shape[0]
            return forward(*args, **kwargs)
        m.forward = counted

    counting(target, "target")
    counting(model, "original")
    K = 3
    try:
        run_attacks(target, tokenizer, members, others, original=model, original_tokenizer=tokenizer,
                    options=AttackOptions(perturber="words", neighbours=K, bootstrap=0, neighbour_cache=False))
    finally:
        del target.forward, model.forward
    n = len(members) + len(others)
    assert rows == {"target": n * (1 + K), "original": n}


# ---------------------------------------------------------------- EL where it can matter


def test_el_for_the_sequences_that_could_be_extractable(memorized):
    model, members, others = memorized
    seqs = members.subset([0, 5, 11])
    ma = profile(model, seqs, ProfileOptions(metrics=("ma",)))["ma"].to_numpy()
    assert ma.max() - ma.min() > 0.1, "the fixture memorizes to different degrees"
    band = Band(0.15, float(np.median(ma)))  # the top at the middle one: EL for two of three
    prof = profile(model, seqs, ProfileOptions(metrics=("ma", "el"), el_n=10), band=band)
    measured = prof["el_status"] == EL_COMPUTED
    assert measured.tolist() == (ma >= band.hi).tolist() and measured.sum() == 2
    assert prof.loc[~measured, "el_10"].isna().all()  # not computed is NaN, never 0
    assert prof.loc[~measured, "el_status"].str.contains("below the band's top").all()
    everything = profile(model, seqs, ProfileOptions(metrics=("ma", "el"), el_n=10, el_for="all"), band=band)
    assert (everything["el_status"] == EL_COMPUTED).all() and everything["el_10"].notna().all()
    for r in range(len(seqs)):
        x = seqs.input_ids[r, : seqs.lengths[r]]
        want = extraction_likelihood_reference(model, x, 10)
        assert everything.loc[r, "el_10"] == want
        if measured[r]:
            assert prof.loc[r, "el_10"] == want
    # too short for EL_n: NaN with its own reason, whatever el_for says
    short = profile(model, seqs, ProfileOptions(metrics=("el",), el_n=80, el_for="all"), band=band)
    assert short["el_10" if "el_10" in short else "el_80"].isna().all()
    assert short["el_status"].str.contains("under 81 tokens").all()


def test_audit_measures_el_and_tau_el_by_the_same_rule(memorized):
    model, members, others = memorized
    ma = profile(model, members, ProfileOptions(metrics=("ma",)))["ma"].to_numpy()
    band = Band(0.15, float(np.sort(ma)[-3]))  # three members at or above the top
    opts = ProfileOptions(metrics=("ma", "el"), el_n=10)
    res = audit(model, members, others.subset([0, 1, 2, 3]), opts, band)
    assert (res.forget["el_status"] == EL_COMPUTED).sum() == 3
    assert res.forget.loc[res.forget["ma"] < band.hi, "el_10"].isna().all()
    ref = res.reference
    ref_measured = ref["el_status"] == EL_COMPUTED
    assert ref_measured.tolist() == (ref["ma"] >= band.hi).tolist()
    if ref_measured.any():
        assert res.tau_el == pytest.approx(ref.loc[ref_measured, "el_10"].mean())
    else:
        assert res.tau_el is None
    what, value = next(row for row in summary_rows(res) if row[0].startswith("mean EL_10"))
    assert f"MA ≥ {band.hi:.2f} only" in what and "n = 3" in value
    full = audit(model, members, others.subset([0, 1, 2, 3]), opts.replace(el_for="all"), band)
    assert full.forget["el_10"].notna().all() and full.reference["el_10"].notna().all()
    assert full.tau_el == pytest.approx(full.reference["el_10"].mean())
    measured = res.forget["el_status"] == EL_COMPUTED
    pd.testing.assert_series_equal(res.forget.loc[measured, "el_10"], full.forget.loc[measured, "el_10"])
    assert not math.isnan(full.tau_el)


def test_perturber_base_extends_only_prefix_stable_lists():
    class Joint(Perturber):
        name = "joint"
        prefix_stable = False

        def fill(self, text, masks, seed):
            return [["x"] * len(m.words) for m in masks]

    with pytest.raises(ValueError, match="cannot extend"):
        Joint(Masking()).neighbours_many(["one two three four five six"], 3, 0, first=[1])
    words = WordPerturber(Masking(0.3, 1))
    text = "one two three four five six seven eight nine ten"
    assert words.neighbours_many([text], 5, 0, first=[2])[0] == words.neighbours(text, 5, 0)[2:]
