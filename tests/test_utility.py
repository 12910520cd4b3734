"""Utility suite (docs/method.md §6, §2.8): scoring rules by hand, prompt construction on fixed rows,
the batched engine against slow per-choice references, the suite end to end on tiny files, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoConfig

from unmemorize.errors import UserError
from unmemorize.tiny import tiny_model
from unmemorize.utility import compare_utility, evaluate_utility, load_utility, save_utility, utility_sections
from unmemorize.utility.dialogue import cut_at_next_turn, dialogue_prompt, normalize_reply
from unmemorize.utility.engine import _pack, greedy_generate, score_continuations, window
from unmemorize.utility.reference import (
    choice_scores_reference,
    continuation_logprobs_reference,
    greedy_reference,
    right_padded_first_token_reference,
)
from unmemorize.utility.scoring import (
    choice_score,
    clean_up_tokenization,
    exact_match,
    lambada_correct,
    normalize_answer,
    predict_choice,
    rank_mean_ratio,
    ratio_of_sums,
    unigram_f1,
)
from unmemorize.utility.suite import EvalOptions, encode_contexts, encode_continuations
from unmemorize.utility.tasks import (
    TASKS,
    ChoiceExample,
    MalformedRow,
    load_task,
    resolve_tasks,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are op-bound: on a busy 2-core machine, two threads spend their time waiting
    for each other (measured 40× slower); restore the session's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- pure scoring rules


def test_normalize_answer_and_exact_match():
    assert normalize_answer("The  Cat, sat on a mat!") == "cat sat on mat"
    assert normalize_answer("An apple. THE END") == "apple end"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert exact_match(" Glen.", "glen")
    assert not exact_match("glens", "glen")


def test_unigram_f1_by_hand():
    # pred {cat, sat}, gold {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8
    assert unigram_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # multiplicity: pred [yes, yes], gold [yes]: same = 1, P = 1/2, R = 1, F1 = 2/3
    assert unigram_f1("yes yes", "yes") == pytest.approx(2 / 3)
    assert unigram_f1("dog", "cat") == 0.0
    assert unigram_f1("", "cat") == 0.0
    assert unigram_f1("The.", "the") == 0.0  # nothing left after normalisation


def test_clean_up_tokenization_is_the_old_transformers_rule():
    assert clean_up_tokenization("I do n't know , he 's here .") == "I don't know, he's here."


def test_choice_score_and_prediction():
    assert choice_score([-1.0, -2.5]) == pytest.approx(3.5)  # a sum, no length normalisation
    assert predict_choice([3.0, 1.0, 1.0]) == 1  # argmin, first on ties
    assert predict_choice([0.5, 2.0]) == 0


def test_lambada_correct_either_way():
    assert lambada_correct([5, 6], [5, 6], "xx", "yy")  # all greedy tokens right
    assert lambada_correct([5, 7], [5, 6], "Glen!", " glen")  # strings equal after normalisation
    assert not lambada_correct([5, 7], [5, 6], "glens", "glen")
    assert not lambada_correct([5], [5, 6], "a", "b")


def test_ratios_and_rank_average_by_hand():
    nll, tokens, ranks = np.array([2.0, 4, 6, 8]), np.array([1, 1, 2, 4]), np.array([0, 1, 0, 1])
    assert ratio_of_sums(nll, tokens) == pytest.approx(20 / 8)
    assert ratio_of_sums(np.array([1, 0, 1, 1])) == pytest.approx(0.75)
    # rank 0: (2+6)/(1+2); rank 1: (4+8)/(1+4); logged value = their mean
    assert rank_mean_ratio(nll, tokens, ranks) == pytest.approx((8 / 3 + 12 / 5) / 2)
    assert rank_mean_ratio(nll, tokens, np.zeros(4)) == pytest.approx(20 / 8)
    assert math.isnan(ratio_of_sums(np.array([])))


# ---------------------------------------------------------------- dialogue text (§6.3)


@pytest.mark.parametrize("raw, expected", [
    ("hello there. how are you?", "Hello there. How are you?"),
    ("i'm fine", "I'm fine."),
    ("Red is my favorite color.  My house, car, and clothes are all red.",
     "Red is my favorite color. My house, car, and clothes are all red."),
    ("yes i think so , really !", "Yes I think so, really!"),
    (" hi", "hi."),  # quirk: a leading space leaves an empty first token, so "hi" is not capitalised
    ("what?no", "What?no."),  # only the space *before* punctuation is added, so "?no" is one word
])
def test_normalize_reply_examples(raw, expected):
    assert normalize_reply(raw) == expected


def test_dialogue_prompt_labels_and_next_speaker():
    assert dialogue_prompt(["hi there", "hello", "how are you"]) == (
        "User 1: Hi there.\nUser 2: Hello.\nUser 1: How are you.\nUser 2:")
    assert dialogue_prompt(["hi", "hello"]) == "User 1: Hi.\nUser 2: Hello.\nUser 1:"
    with pytest.raises(ValueError):
        dialogue_prompt([])
    assert cut_at_next_turn(" Sure thing.\nUser 1: ok") == " Sure thing."


# ---------------------------------------------------------------- prompt construction (§6.1, §6.2)


def build(name, row):
    return TASKS[name].build(row)


def test_classification_prompts_exact():
    assert build("piqa", {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}) == \
        ChoiceExample("Open a jar", (" twist the lid", " eat the lid"), 0)
    assert build("hellaswag", {"ctx": "A man is sitting on a roof. he", "label": 3,
                               "endings": ["is a.", "is b.", "is c.", "starts pulling up roofing on a roof."]}) == \
        ChoiceExample("A man is sitting on a roof. he",
                      (" is a.", " is b.", " is c.", " starts pulling up roofing on a roof."), 3)
    arc = {"question": "Which?", "answerKey": "3", "choices": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]}}
    assert build("arc_easy", arc) == ChoiceExample("Which?", (" x", " y", " z"), 2)
    assert build("copa", {"premise": "The man turned on the faucet.", "choice1": "The toilet filled.",
                          "choice2": "Water flowed.", "label": 1}) == \
        ChoiceExample("The man turned on the faucet.", (" The toilet filled.", " Water flowed."), 1)
    assert build("winogrande", {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                                "option1": "Sarah", "option2": "Maria", "answer": "2"}) == \
        ChoiceExample("Sarah was a much better surgeon than Maria so",
                      (" Sarah always got the easier cases.", " Maria always got the easier cases."), 1)
    assert build("mathqa", {"Problem": "a shopkeeper sold an article .", "correct": "c",
                            "options": "a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these"}) == \
        ChoiceExample("a shopkeeper sold an article .", ("38", "27.675", "30", "data inadequate", "none of these"), 2)
    assert build("pubmed_qa", {"abstract": "Rapid prescreening works.", "question": "Does it?",
                               "final_decision": "maybe"}) == \
        ChoiceExample("Context: Rapid prescreening works.\nQuestion: Does it?\nAnswer:", (" yes", " maybe", " no"), 1)


def test_lambada_and_dialogue_examples_exact():
    ex = build("lambada", {"text": "He took another step, but he was still in the glen"})
    assert (ex.context, ex.target) == ("He took another step, but he was still in the", " glen")
    ex = build("wizard_of_wikipedia", {"turns": ["i like red.", "me too!", "why?"]})
    assert ex.prompt == "User 1: I like red.\nUser 2: Me too!\nUser 1:"
    assert ex.target == "Why?"


@pytest.mark.parametrize("name, row, message", [
    ("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "label": 2}, "label"),
    ("arc_easy", {"question": "q", "answerKey": "E", "choices": {"text": ["a", "b"], "label": ["A", "B"]}}, "answerKey"),
    ("winogrande", {"sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"}, "' _'"),
    ("mathqa", {"Problem": "p", "options": "garbage", "correct": "a"}, "options"),
    ("pubmed_qa", {"abstract": "a", "question": "q", "final_decision": "perhaps"}, "final_decision"),
    ("lambada", {"text": "oneword"}, "no space"),
    ("blended_skill_talk", {"turns": ["only one"]}, "turns"),
])
def test_malformed_rows_are_refused(name, row, message):
    with pytest.raises(MalformedRow, match=message):
        build(name, row)


def test_encoding_tokens_per_mode(tokenizer):
    full, parity = EvalOptions(max_length=8), EvalOptions(mode="parity", max_length=8)
    text = "The quick brown fox jumps over the lazy dog again and again"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > 8
    assert encode_contexts(tokenizer, [text], full) == [ids]  # full: whole context, the window cuts later
    assert encode_contexts(tokenizer, [text], parity) == [ids[:8]]  # parity: the original's first 512
    eos = tokenizer.eos_token
    assert encode_contexts(tokenizer, ["hello" + eos], parity) == [tokenizer("hello")["input_ids"]]  # pads stripped
    assert encode_contexts(tokenizer, [""], full) == [[tokenizer.eos_token_id]]  # empty context → eos
    assert encode_continuations(tokenizer, [" fox"], full) == [tokenizer(" fox", add_special_tokens=False)["input_ids"]]


def test_window_rule_by_hand():
    assert window([1, 2, 3], [4, 5], 10) == ([1, 2, 3], [4, 5])
    assert window([1, 2, 3], [4, 5], 4) == ([2, 3], [4, 5])  # keep the last 4 tokens
    assert window([1], [2, 3, 4, 5], 3) == ([3], [4, 5])  # a continuation longer than W-1
    assert window([1, 2], [], 5) == ([1, 2], [])


# ---------------------------------------------------------------- the engine against references


def local_attention_neo(vocab_size, eos_id):
    """GPT-Neo with a 4-token local window in every other layer: left padding must not change it."""
    config = GPTNeoConfig(vocab_size=vocab_size, num_layers=2, hidden_size=64, num_heads=4, max_position_embeddings=256,
                          attention_types=[[["global", "local"], 1]], window_size=4, resid_dropout=0.0,
                          embed_dropout=0.0, attention_dropout=0.0, bos_token_id=eos_id, eos_token_id=eos_id,
                          pad_token_id=eos_id)
    torch.manual_seed(3)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module", params=["gpt2", "gpt_neo_local", "llama"])
def model(request, tokenizer):
    if request.param == "gpt_neo_local":
        return local_attention_neo(len(tokenizer), tokenizer.eos_token_id)
    return tiny_model(request.param, vocab_size=len(tokenizer), n_layer=2, d_model=64, eos_id=tokenizer.eos_token_id, seed=2)


QUESTIONS = [
    ("The quick brown fox", [" jumps over the lazy dog", " sleeps", " is quick and brown and red"]),
    ("Customer file 1. Name: Ada Eriksen. Born: 1961-02-03.", [" Email: ada@example.com.", " No email."]),
    ("def f(x):\n    return", [" x + 1", " None"]),
    ("a", [" b", " c d e f g h i j k l m n o p"]),
]


def requests_of(tokenizer, questions):
    out = []
    for ctx, choices in questions:
        c = tokenizer(ctx)["input_ids"]
        out += [(c, tokenizer(x, add_special_tokens=False)["input_ids"]) for x in choices]
    return out


@pytest.mark.parametrize("max_length, batch_tokens", [(512, 4096), (12, 4096), (512, 16)])
def test_score_continuations_matches_reference(model, tokenizer, max_length, batch_tokens):
    """Shared-context batches (and per-choice windows when W = 12 truncates) agree with one forward
    pass per (context, choice); a tiny token budget (many batches) changes nothing."""
    reqs = requests_of(tokenizer, QUESTIONS)
    got = score_continuations(model, reqs, max_length=max_length, batch_tokens=batch_tokens)
    for (ctx, cont), s in zip(reqs, got):
        logprobs, greedy, target = continuation_logprobs_reference(model, ctx, cont, max_length)
        assert s.target == target
        np.testing.assert_allclose(s.logprobs, logprobs, rtol=0, atol=2e-5)
        assert s.greedy.tolist() == greedy


def test_choice_predictions_equal_reference(model, tokenizer):
    reqs = requests_of(tokenizer, QUESTIONS)
    scored = score_continuations(model, reqs, max_length=512)
    k = 0
    for ctx, choices in QUESTIONS:
        fast = [choice_score(scored[k + j].logprobs) for j in range(len(choices))]
        slow = choice_scores_reference(model, tokenizer(ctx)["input_ids"],
                                       [tokenizer(x, add_special_tokens=False)["input_ids"] for x in choices])
        np.testing.assert_allclose(fast, slow, atol=1e-4)
        assert predict_choice(fast) == predict_choice(slow)
        k += len(choices)


def test_batches_respect_the_token_budget():
    """A context shared by many long continuations (perplexity texts all starting with the same
    token) is split over batches instead of overflowing one."""
    lengths = [30] * 10 + [3, 3]
    groups = [((7,), list(range(10))), ((1, 2, 3, 4), [10, 11])]
    batches = list(_pack(groups, lengths, batch_tokens=64, max_logits=1000))
    assert sorted(i for b in batches for _, members in b for i in members) == list(range(12))
    for b in batches:
        rows = sum(len(m) for _, m in b)
        width = max(len(c) for c, _ in b) + max(lengths[i] for _, m in b for i in m) - 1
        assert rows * width <= 64 or rows == 1
    # 2 rows × 29 logits fill a batch: 5 batches for the long group, 1 for the short one
    assert len(list(_pack(groups, lengths, batch_tokens=10_000, max_logits=58))) == 6


def test_empty_continuation_scores_nothing(model, tokenizer):
    got = score_continuations(model, [([1, 2, 3], []), ([4], [5])])
    assert got[0].target == [] and got[0].logprobs.size == 0 and got[0].nll == 0.0
    assert got[1].target == [5]


def test_greedy_generate_left_padded_equals_reference(model, tokenizer):
    prompts = [tokenizer(t)["input_ids"] for t in ("User 1: Hi.\nUser 2:", "The quick brown fox jumps over", "a")]
    refs = [greedy_reference(model, p, 6) for p in prompts]
    assert greedy_generate(model, prompts, 6, batch_size=2) == refs
    stop = refs[0][2]  # stopping at a token cuts the row before it, and only that row's own output
    cut = greedy_generate(model, prompts, 6, stop_ids=[stop], batch_size=3)
    assert cut == [greedy_reference(model, p, 6, stop_ids=[stop]) for p in prompts]
    assert len(cut[0]) <= 2


@pytest.mark.parametrize("max_length", [512, 12])
def test_scoring_pass_also_generates(model, tokenizer, max_length):
    """generate=k decodes from each request's windowed context in the scoring pass, on a copy of
    its cache; the scores are those of the plain call."""
    reqs = requests_of(tokenizer, QUESTIONS)
    stop = [tokenizer.eos_token_id]
    both = score_continuations(model, reqs, max_length=max_length, generate=5, stop_ids=stop, batch_tokens=64)
    plain = score_continuations(model, reqs, max_length=max_length)
    for (ctx, cont), b, p in zip(reqs, both, plain):
        np.testing.assert_allclose(b.logprobs, p.logprobs, atol=2e-5)
        assert b.generated == greedy_reference(model, window(ctx, cont, max_length)[0], 5, stop_ids=stop)


def test_greedy_generate_right_padded_parity_quirk(model, tokenizer):
    pad = tokenizer.pad_token_id
    short = tokenizer("User 1: Hi.\nUser 2:")["input_ids"]
    exact = tokenizer("one two three four five six seven eight nine ten eleven twelve")["input_ids"]
    width = len(exact)
    got = greedy_generate(model, [short, exact], 4, right_pad_to=width, pad_id=pad)
    # the first token comes from the last pad position, as in the original code
    assert got[0][0] == right_padded_first_token_reference(model, short, width, pad)
    # a prompt without pads is ordinary greedy decoding
    assert got[1] == greedy_reference(model, exact, 4)


# ---------------------------------------------------------------- the suite on tiny files


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    write_jsonl(d / "piqa" / "validation.jsonl", [
        {"goal": "How do I open a jar?", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0},
        {"goal": "dresser", "sol1": "replace drawer with bobby pin", "sol2": "finish with bobby pin", "label": 1},
        {"goal": "To boil water", "sol1": "heat it in a pot", "sol2": "freeze it", "label": 0},
        {"goal": "Clean a window", "sol1": "use paper and vinegar", "sol2": "use mud", "label": 0},
    ])
    write_jsonl(d / "arc_easy" / "validation.jsonl", [
        {"id": "q1", "question": "Which is hot?", "answerKey": "B",
         "choices": {"text": ["ice", "fire", "snow"], "label": ["A", "B", "C"]}},
        {"id": "q2", "question": "Which is wet?", "answerKey": "A",
         "choices": {"text": ["water", "sand", "dust", "rock"], "label": ["A", "B", "C", "D"]}},
    ])
    pd.DataFrame({"id": [0, 1, 2], "text": ["He opened the door and saw the garden",
                                            "She said hello to her friend",
                                            "The cat sat on the mat"]}).to_csv(d / "lambada.csv", index=False)
    (d / "empathetic_dialogues.json").write_text(json.dumps({"text": {
        "0": ["i lost my keys.", "oh no, where?", "at the park i think."],
        "1": ["hello", "hi there, how are you?"],
        "5": ["what a day!", "tell me about it.", "my boss yelled.", "that is awful."],
    }}))
    pd.DataFrame({"text": ["The quick brown fox jumps over the lazy dog.", "Customer file 2. Name: Bo."]}).to_csv(
        d / "wikitext.csv")
    return d


def test_evaluate_full_mode_against_references(data_dir, tokenizer):
    model = tiny_model("gpt2", vocab_size=len(tokenizer), n_layer=2, d_model=64, eos_id=tokenizer.eos_token_id, seed=4)
    res = evaluate_utility(model, tokenizer, "piqa,arc_easy,lambada,empathetic_dialogues,wikitext", data_dir,
                           mode="full", max_length=64)
    assert list(res["tasks"]) == ["piqa", "arc_easy", "lambada", "empathetic_dialogues", "wikitext"]
    piqa = res["tasks"]["piqa"]
    assert piqa["n"] == 4 and piqa["examples"]["id"].tolist() == ["1", "2", "3", "4"]  # ids = line numbers
    # accuracy from the slow per-choice reference
    rows = [json.loads(x) for x in (data_dir / "piqa" / "validation.jsonl").read_text().splitlines()]
    correct = []
    for r in rows:
        scores = choice_scores_reference(model, tokenizer(r["goal"])["input_ids"],
                                         [tokenizer(" " + r[k], add_special_tokens=False)["input_ids"]
                                          for k in ("sol1", "sol2")], 64)
        correct.append(predict_choice(scores) == r["label"])
    assert piqa["metrics"]["acc"] == pytest.approx(np.mean(correct))
    assert res["tasks"]["arc_easy"]["examples"]["n_choices"].tolist() == [3, 4]  # full mode keeps 3-choice items
    # dialogue loss = Σ nll / Σ tokens over every reply, from the reference
    dia = res["tasks"]["empathetic_dialogues"]
    assert dia["examples"]["id"].tolist() == ["0", "1", "5"]
    nll = tokens = 0.0
    for ex in load_task(TASKS["empathetic_dialogues"], data_dir, "full", None).items:
        lp, _, tgt = continuation_logprobs_reference(model, tokenizer(ex.example.prompt)["input_ids"],
                                                     tokenizer(ex.example.target, add_special_tokens=False)["input_ids"], 64)
        nll, tokens = nll - sum(lp), tokens + len(tgt)
    assert dia["metrics"]["loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert res["tasks"]["wikitext"]["metrics"]["ppl"] == pytest.approx(math.exp(res["tasks"]["wikitext"]["metrics"]["loss"]))
    # §2.8 aggregates over the tasks present, flagged incomplete; lambada stays out of average_acc
    agg = res["aggregates"]
    assert agg["average_acc"]["tasks"] == ["piqa", "arc_easy"] and not agg["average_acc"]["complete"]
    assert agg["average_acc"]["value"] == pytest.approx((piqa["metrics"]["acc"] + res["tasks"]["arc_easy"]["metrics"]["acc"]) / 2)
    assert agg["average_perplexity"]["value"] == pytest.approx(dia["metrics"]["loss"])
    assert res["logged"]["ai2_arc_ARC-Easy/acc"] == res["tasks"]["arc_easy"]["metrics"]["acc"]


def test_evaluate_parity_mode(data_dir, tokenizer):
    model = tiny_model("gpt2", vocab_size=len(tokenizer), n_layer=2, d_model=64, eos_id=tokenizer.eos_token_id, seed=4)
    res = evaluate_utility(model, tokenizer, ["arc_easy", "empathetic_dialogues", "piqa"], data_dir, mode="parity",
                           limit=3, max_length=64)
    assert res["mode"] == "parity" and "first N" in res["mode_description"]
    arc = res["tasks"]["arc_easy"]
    assert arc["examples"]["id"].tolist() == ["2"]  # the 3-choice item is dropped, as the original did
    assert any("4 choices" in n for n in arc["notes"])
    assert res["tasks"]["piqa"]["n"] == 3  # first N only
    dia = res["tasks"]["empathetic_dialogues"]["examples"]
    assert dia["rank"].tolist() == [0, 1, 0]
    expected = rank_mean_ratio(dia["nll"].to_numpy(), dia["tokens"].to_numpy(), dia["rank"].to_numpy())
    assert res["tasks"]["empathetic_dialogues"]["metrics"]["loss"] == pytest.approx(expected)


def test_save_load_compare_and_report(data_dir, tokenizer, tmp_path):
    model = tiny_model("gpt2", vocab_size=len(tokenizer), n_layer=2, d_model=64, eos_id=tokenizer.eos_token_id, seed=4)
    before = evaluate_utility(model, tokenizer, "piqa,lambada,wikitext", data_dir, max_length=64)
    save_utility(before, tmp_path)
    again = load_utility(tmp_path)
    assert json.loads((tmp_path / "utility.json").read_text())["tasks"]["piqa"]["n"] == 4
    pd.testing.assert_frame_equal(again["tasks"]["piqa"]["examples"], before["tasks"]["piqa"]["examples"],
                                  check_dtype=False)
    save_utility(before, tmp_path, name="utility_before")
    assert load_utility(tmp_path, name="utility_before")["tasks"]["lambada"]["n"] == 3
    same = compare_utility(again, before, n_boot=200)
    assert (same["change"].abs() < 1e-12).all() and (same["ci_low"] == same["ci_high"]).all()
    # flip one piqa answer: the change is −1/4 and lies inside its interval
    after = load_utility(tmp_path)
    ex = after["tasks"]["piqa"]["examples"]
    first_right = int(ex.index[ex["correct"] == 1][0]) if (ex["correct"] == 1).any() else None
    if first_right is None:
        ex.loc[0, "correct"], delta = 1, 0.25
    else:
        ex.loc[first_right, "correct"], delta = 0, -0.25
    after["tasks"]["piqa"]["metrics"]["acc"] = ex["correct"].mean()
    after["aggregates"]["average_acc"]["value"] = ex["correct"].mean()
    diff = compare_utility(before, after, n_boot=500).set_index(["task", "metric"])
    row = diff.loc[("piqa", "acc")]
    assert row["change"] == pytest.approx(delta) and row["ci_low"] <= delta <= row["ci_high"]
    assert diff.loc[("average_acc", "acc"), "change"] == pytest.approx(delta)
    sections = utility_sections(after, before=before, n_boot=100)
    assert [s.title for s in sections] == ["Utility (full mode)", "Utility before and after"]
    assert set(sections[0].tables[0][1]["task"]) == {"piqa", "lambada", "wikitext"}


# ---------------------------------------------------------------- bad input


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown task nosuch.*piqa.*hellaswag"):
        resolve_tasks("piqa,nosuch")
    assert resolve_tasks("classification,piqa")[:2] == ("piqa", "hellaswag")
    assert len(resolve_tasks("paper")) == 13


def test_missing_file_and_folder(tmp_path, data_dir):
    with pytest.raises(UserError, match="no file for task hellaswag: expected hellaswag/validation.jsonl"):
        load_task(TASKS["hellaswag"], data_dir, "full", None)
    with pytest.raises(UserError, match="does not exist"):
        load_task(TASKS["piqa"], tmp_path / "nowhere", "full", None)


@pytest.mark.parametrize("content, where", [
    ('{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}\n{"goal": "g", "sol1": \n', ":2: not valid JSON"),
    ('{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}\n\n{"goal": "g", "sol2": "b", "label": 0}\n',
     ":3: missing field sol1"),
    ('{"goal": "", "sol1": "a", "sol2": "b", "label": 0}\n', ":1: empty field goal"),
    ('{"goal": "g", "sol1": "a", "sol2": "b", "label": "x"}\n', ":1: field 'label' must be an integer"),
    ('[1, 2]\n', ":1: expected a JSON object"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, content, where):
    write_jsonl(tmp_path / "piqa" / "validation.jsonl", [])
    (tmp_path / "piqa" / "validation.jsonl").write_text(content)
    with pytest.raises(UserError, match=f"validation.jsonl{where}"):
        load_task(TASKS["piqa"], tmp_path, "full", None)


def test_malformed_csv_names_the_record_line(tmp_path):
    (tmp_path / "lambada.csv").write_text('id,text\n0,"first line\nsecond line ends here"\n1,two,extra\n')
    with pytest.raises(UserError, match=r"lambada.csv:4: 3 fields, but the header has 2"):
        load_task(TASKS["lambada"], tmp_path, "full", None)
    (tmp_path / "lambada.csv").write_text("id,words\n0,a b\n")
    with pytest.raises(UserError, match=r"lambada.csv:2: missing field text"):
        load_task(TASKS["lambada"], tmp_path, "full", None)


def test_malformed_dialogue_file(tmp_path):
    (tmp_path / "wizard_of_internet.json").write_text('{"dialogues": []}')
    with pytest.raises(UserError, match='expected a JSON object {"text"'):
        load_task(TASKS["wizard_of_internet"], tmp_path, "full", None)
    (tmp_path / "wizard_of_internet.json").write_text('{"text": {"0": ["a", "b"], "7": ["only"]}}')
    with pytest.raises(UserError, match='dialogue "7": field \'turns\' must be a list of at least 2'):
        load_task(TASKS["wizard_of_internet"], tmp_path, "full", None)


@pytest.mark.parametrize("kwargs, message", [
    ({"limit": 0}, "limit': got -?[0-9]+; allowed: a positive number of examples"),
    ({"limit": -3}, "limit': got -?[0-9]+; allowed: a positive number of examples"),
    ({"mode": "fast"}, "mode': got 'fast'; allowed: full, parity"),
    ({"max_length": 1}, "max_length"),
])
def test_bad_options(kwargs, message, data_dir, tokenizer):
    model = tiny_model("gpt2", vocab_size=len(tokenizer), n_layer=1, d_model=32, eos_id=tokenizer.eos_token_id)
    with pytest.raises(UserError, match=message):
        evaluate_utility(model, tokenizer, "piqa", data_dir, **{"mode": "full", **kwargs})


# ---------------------------------------------------------------- the real task files (the data folder's eval/)

SPLIT_SIZES = {"piqa": 1838, "hellaswag": 10042, "arc_easy": 570, "arc_challenge": 299, "copa": 100, "winogrande": 1267,
               "mathqa": 2985, "pubmed_qa": 500, "lambada": 4992, "wizard_of_wikipedia": 967,
               "empathetic_dialogues": 2758, "blended_skill_talk": 1009, "wizard_of_internet": 516, "wikitext": 500,
               "pile": 1500}


@pytest.mark.shared
def test_every_shared_file_reads_whole():
    """Every row of every task file becomes an example (sizes as in each SOURCE.md)."""
    from conftest import shared_data

    data = shared_data("eval")
    from unmemorize.utility.tasks import GROUPS

    # every task with data in the shared folder; the lab tasks' files are generated (tests/test_lab.py)
    assert set(SPLIT_SIZES) == set(TASKS) - set(GROUPS["lab"])
    for name, size in SPLIT_SIZES.items():
        loaded = load_task(TASKS[name], data, "full", None)
        assert len(loaded.items) == size, name
        assert len({it.id for it in loaded.items}) == size, name
    assert load_task(TASKS["mathqa"], data, "full", 1).notes == [
        "the paper evaluated hub math_qa / validation; this is the test split"]


@pytest.mark.shared
def test_first_rows_of_the_shared_files():
    from conftest import shared_data

    data = shared_data("eval")

    def first(name, mode="full", n=1):
        return [it.example for it in load_task(TASKS[name], data, mode, n).items]

    piqa = first("piqa")[0]
    assert piqa.context == "How do I ready a guinea pig cage for it's new occupants?" and piqa.gold == 0
    assert piqa.choices[0].startswith(" Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper")
    hs = first("hellaswag")[0]
    assert hs == ChoiceExample("A man is sitting on a roof. he", (
        " is using wrap to wrap a pair of skis.", " is ripping level tiles off.", " is holding a rubik's cube.",
        " starts pulling up roofing on a roof."), 3)
    assert first("arc_easy")[0] == ChoiceExample("Which technology was developed most recently?",
                                                 (" cellular telephone", " television", " refrigerator", " airplane"), 0)
    # ARC-Easy row 17 (line 18) has 3 choices: full mode keeps it, parity drops it like the original
    assert [it.id for it in load_task(TASKS["arc_easy"], data, "full", 20).items][17] == "18"
    assert "18" not in [it.id for it in load_task(TASKS["arc_easy"], data, "parity", 20).items]
    assert first("copa")[0] == ChoiceExample("The man turned on the faucet.",
                                             (" The toilet filled with water.", " Water flowed from the spout."), 1)
    assert first("winogrande")[0] == ChoiceExample(
        "Sarah was a much better surgeon than Maria so",
        (" Sarah always got the easier cases.", " Maria always got the easier cases."), 1)
    assert first("mathqa")[0].choices == ("38", "27.675", "30", "data inadequate", "none of these")
    pub = first("pubmed_qa")[0]
    assert pub.context.startswith("Context: Rapid prescreening (RPS) is one of the quality assurance (QA) methods")
    assert pub.context.endswith("\nQuestion: Pap smears with glandular cell abnormalities: Are they detected by "
                                "rapid prescreening?\nAnswer:") and pub.gold == 0
    lam = first("lambada")[0]
    assert lam.target == " glen" and lam.context.endswith("He took another step, but he was still in the")
    ed = first("empathetic_dialogues")[0]
    assert ed.prompt == (
        "User 1: My upstairs neighbors make a ton of noise at all hours of the night. It makes it difficult for me "
        "to sleep.\nUser 2: That really sucks. Maybe you should try egging their door? Or just break in and pretend "
        "you're bigfoot while they're trying to sleep.\nUser 1: I'm not trying to get arrested! I think I'll just "
        "wait things out until I move in two months.\nUser 2:")
    assert ed.target == ("I would go with the bigfoot option. You can get a costume on the cheap on ebay nowadays. "
                         "I've used that tactic countless times and it has never failed!")
    assert first("wikitext")[0].text.startswith(" \n = Homarus gammarus = \n")


def test_parity_drops_what_pandas_dropna_drops(tmp_path):
    """In a CSV, an empty or "NA" value in *any* column makes pandas' dropna drop the row (parity);
    full mode only needs the task's own fields."""
    pd.DataFrame({"pubid": [1, 2, 3, 4], "question": ["q1", "q2", "q3", "q4"], "abstract": ["a1", "a2", "a3", "a4"],
                  "final_decision": ["yes", "no", "maybe", "yes"], "long_answer": ["x", "", "NA", "y"]}).to_csv(
        tmp_path / "pubmed_qa.csv", index=False)
    full = load_task(TASKS["pubmed_qa"], tmp_path, "full", None)
    parity = load_task(TASKS["pubmed_qa"], tmp_path, "parity", None)
    assert [it.id for it in full.items] == ["2", "3", "4", "5"]
    assert [it.id for it in parity.items] == ["2", "5"]
    assert parity.notes == ["parity: skipped 2 row(s) the original code drops (empty fields)"]
