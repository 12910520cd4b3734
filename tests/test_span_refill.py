"""MIAU's ``lm-independent`` refill against its slow reference.

Every span continues the original's stream, so all spans of all maskings of a text share one prefilled
cache and advance as one sequence of queries under a 4-D mask. The reference
(:func:`unmemorize.reference.independent_span_reference`) draws every sample from a full pass over the
span's own context with no cache. Held to it: the logits at every draw within 1e-5 on four
architectures, the same neighbours in float64, the same on a context too short for some spans (and no
pass past the model's positions), a neighbour that does not depend on K or on the other texts, and a
cache key of its own.
"""

from __future__ import annotations

import pytest
import torch

from unmemorize.attacks.perturb import CausalRefill, Masking, make_perturber
from unmemorize.attacks.span_refill import IndependentSpanRefill, span_contexts
from unmemorize.errors import UserError
from unmemorize.lab.ordinary import stdlib_paragraphs
from unmemorize.lab.records import generate_records
from unmemorize.reference import independent_span_reference
from unmemorize.tiny import tiny_model


@pytest.fixture(autouse=True)
def one_thread(single_thread):
    yield


def _texts(tokenizer, n: int = 4) -> list[str]:
    raw = [r["text"] for r in generate_records(n - 2, seed=11)] + stdlib_paragraphs()[4:6]
    return [tokenizer.decode(tokenizer(t)["input_ids"][:60]) for t in raw]


def _model(tokenizer, arch="llama", **kw):
    return tiny_model(arch, vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64,
                      seed=3, **kw)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox", "llama"])
def test_every_draw_samples_the_reference_distribution(tokenizer, arch):
    model = _model(tokenizer, arch)
    texts, masking = _texts(tokenizer), Masking(0.4, 2)
    slow = IndependentSpanRefill(masking, model, tokenizer, "tiny")
    slow.trace = {}
    want = [independent_span_reference(slow, t, 4, seed=1) for t in texts]
    fast = IndependentSpanRefill(masking, model, tokenizer, "tiny")
    fast.trace = {}
    got = fast.neighbours_many(texts, 4, seed=1)
    assert set(fast.trace) == set(slow.trace) and len(fast.trace) > 100
    worst = max(float((fast.trace[k] - slow.trace[k]).abs().max()) for k in slow.trace)
    assert worst < 1e-5, worst
    assert got == want
    assert all(n != t for ns, t in zip(got, texts) for n in ns)  # every neighbour changed


def test_float64_neighbours_equal_the_reference_and_depend_on_nothing_else(tokenizer):
    model = _model(tokenizer, "llama").double()
    texts, masking = _texts(tokenizer, 5), Masking(0.3, 1)
    refill = IndependentSpanRefill(masking, model, tokenizer, "tiny")
    want = [independent_span_reference(refill, t, 5, seed=7) for t in texts]
    assert refill.neighbours_many(texts, 5, seed=7) == want
    assert refill.neighbours(texts[2], 5, seed=7) == want[2]  # alone as among others
    assert refill.neighbours(texts[2], 3, seed=7) == want[2][:3]  # neighbour j does not depend on K
    # only the first 2 of 5 made: the rest are the same (a cached list is extended)
    assert refill.neighbours_many([texts[1]], 5, seed=7, first=[2])[0] == want[1][2:]


def test_a_short_context_keeps_the_words_of_spans_beyond_it(tokenizer):
    positions = 40
    model = _model(tokenizer, "gpt_neo", n_positions=positions).double()
    paragraphs = stdlib_paragraphs()
    texts = [tokenizer.decode(tokenizer(" ".join(paragraphs[i:i + 2]))["input_ids"][:48]) for i in (0, 2)]
    refill = IndependentSpanRefill(Masking(0.5, 1), model, tokenizer, "short")
    want = [independent_span_reference(refill, t, 3, seed=0) for t in texts]
    seen = []
    forward = model.forward

    def watched(*args, **kwargs):
        cache = kwargs.get("cache")
        pos = kwargs.get("position_ids")
        seen.append(int(pos.max()) + 1 if pos is not None else cache.get_seq_length() + kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    model.forward = watched
    got = refill.neighbours_many(texts, 3, seed=0)
    del model.forward
    assert got == want
    assert refill.fallback_spans > 0, "some spans must lie beyond the context"
    assert max(seen) <= positions


def test_span_contexts_end_before_each_span(tokenizer):
    text = "one two three four five six seven eight"
    refill = IndependentSpanRefill(Masking(0.3, 2), _model(tokenizer), tokenizer, "tiny")
    _, masks = refill.masks(text, 3, seed=4)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ends = [e for _, e in enc["offset_mapping"]]
    for m, lengths in zip(masks, span_contexts(masks, ends)):
        at = 0
        for i, n in enumerate(lengths):
            at += len(m.fixed[i])
            # the n − 1 original tokens before the span decode to the text before its separator
            assert tokenizer.decode(enc["input_ids"][: n - 1]) == text[:at]
            at += len(m.seps[i]) + len(m.originals[i])


def test_its_cache_key_is_not_the_sequential_refills(tokenizer):
    model = _model(tokenizer)
    a = IndependentSpanRefill(Masking(0.3, 2), model, tokenizer, "w")
    b = CausalRefill(Masking(0.3, 2), model, tokenizer, "w")
    assert a.key() != b.key()
    assert make_perturber("lm-independent", Masking(), lm=model, lm_tokenizer=tokenizer, lm_fingerprint="w").key() == a.key()
    with pytest.raises(UserError, match="causal language model"):
        make_perturber("lm-independent", Masking())
    assert torch.get_num_threads() == 1


def test_local_attention_narrower_than_the_context_is_refused(tokenizer):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    config = GPTNeoConfig(num_layers=2, hidden_size=32, num_heads=2, max_position_embeddings=128, window_size=16,
                          attention_types=[[["global", "local"], 1]], vocab_size=len(tokenizer))
    with pytest.raises(UserError, match="local attention"):
        make_perturber("lm-independent", Masking(), lm=GPTNeoForCausalLM(config), lm_tokenizer=tokenizer,
                       lm_fingerprint="w")
    # the default falls back to the sequential refill there, and takes the tree where it can
    assert make_perturber("auto", Masking(), lm=GPTNeoForCausalLM(config), lm_tokenizer=tokenizer,
                          lm_fingerprint="w").name == "lm"
    assert make_perturber("auto", Masking(), lm=_model(tokenizer), lm_tokenizer=tokenizer,
                          lm_fingerprint="w").name == "lm-independent"


def test_models_that_keep_logits_by_count_only_give_the_same_neighbours(tokenizer, monkeypatch):
    """A model whose forward takes no tensor of positions to keep: every position's logits, indexed after."""
    import unmemorize.attacks.span_refill as span_refill

    model = _model(tokenizer, "gpt2").double()
    texts = _texts(tokenizer, 3)
    refill = IndependentSpanRefill(Masking(0.3, 2), model, tokenizer, "tiny")
    want = refill.neighbours_many(texts, 3, seed=2)
    monkeypatch.setattr(span_refill, "_keeps_by_tensor", lambda model: False)
    assert IndependentSpanRefill(Masking(0.3, 2), model, tokenizer, "tiny").neighbours_many(texts, 3, seed=2) == want
