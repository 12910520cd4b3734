"""Attacks on real (tiny) models: separation on a memorizing model, the perturbers, bad input, the command."""

from __future__ import annotations

import copy
import json
import random
import re

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from sklearn.metrics import roc_auc_score

from unmemorize.attacks import ATTACKS, AttackOptions, run_attacks
from unmemorize.attacks.perturb import CausalRefill, Masking, T5Filler, mask_text, text_seed
from unmemorize.attacks.tokens import mean_log_likelihood, token_statistics
from unmemorize.errors import UserError
from unmemorize.memorization import ProfileOptions, profile
from unmemorize.thresholds import Band, outlier_count
from unmemorize.tiny import tiny_model, train_tokenizer

from conftest import make_set


@pytest.fixture(autouse=True)
def one_thread():
    """Decoding steps of a tiny model are microseconds of work: on a shared 2-core machine the thread
    hand-offs cost more than the work, so these tests run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _quick(**kw) -> AttackOptions:
    return AttackOptions(**{"perturber": "words", "neighbours": 4, "bootstrap": 200, "neighbour_cache": False, **kw})


@pytest.fixture(scope="module")
def stranger(tokenizer):
    """A model that never saw the members (random weights), as the reference attack's reference."""
    return tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, seed=2)


def test_every_attack_separates_members_on_a_memorizing_model(memorized, tokenizer, stranger, tmp_path):
    model, members, others = memorized
    # extraction from the record's name prefix (~16 tokens): the attacker knows the name, wants the rest
    res = run_attacks(model, tokenizer, members, others, original=stranger, original_tokenizer=tokenizer,
                      options=_quick(neighbour_cache=tmp_path, extraction_prefix=16))
    assert list(res.attacks) == list(ATTACKS)  # every registered attack ran
    for name, r in res.attacks.items():
        ev = r.evaluation
        assert ev.auc.value >= 0.85 and ev.auc.low > 0.5, (name, ev.auc)
        assert not ev.below_chance
    # one row per sequence, members first, keyed by id
    s = res.scores
    assert len(s) == len(members) + len(others) and s["member"].sum() == len(members)
    assert s.loc[s["member"], "id"].tolist() == members.ids
    # the threshold attack reads the same g(x) as the audit, and its flags on D_f are c(D_f)
    ma = profile(model, members, ProfileOptions(metrics=("ma",)))["ma"].to_numpy()
    assert s.loc[s["member"], "threshold.g"].to_numpy() == pytest.approx(ma, abs=1e-12)
    c_low, c_high = outlier_count(ma, Band())
    summary = res.attacks["threshold"].summary["forget"]
    assert (summary["c_low"], summary["c_high"]) == (c_low, c_high) and c_high > 0
    # nothing is reported at an FPR 12 non-members cannot resolve, and the run says so
    assert res.fprs == () and "needs ≥ 1000" in res.notes[0]
    json.dumps(res.as_dict())  # attacks.json is plain JSON


def test_reference_attack_sees_unlearning_that_moves_members(memorized, tokenizer):
    """A few steps of gradient ascent on the members: the original model as reference exposes them."""
    model, members, others = memorized
    unlearned = copy.deepcopy(model).train()
    opt = torch.optim.Adam(unlearned.parameters(), lr=3e-4)
    for _ in range(5):
        ids, mask = members.input_ids, members.attention_mask
        loss = -unlearned(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    unlearned.eval()
    res = run_attacks(unlearned, tokenizer, members, others, original=model, original_tokenizer=tokenizer,
                      options=_quick(names=("reference",)))
    r = res.attacks["reference"]
    assert r.evaluation.auc.value >= 0.9
    delta = res.scores.groupby("member")["reference.delta"].mean()
    assert delta[True] < delta[False] < 0  # members lost far more likelihood than unseen text


def test_token_statistics_agree_with_the_memorization_module(memorized):
    model, members, _ = memorized
    stats = token_statistics(model, members, top_k=None, batch_size=5)
    ll = mean_log_likelihood(model, members.input_ids, members.lengths, batch_size=7)
    assert (stats.logp[stats.valid].reshape(-1) <= 0).all()
    from unmemorize.attacks.mia import loss_score

    assert loss_score(stats.logp, stats.valid) == pytest.approx(ll, abs=1e-5)
    assert stats.q[stats.valid] == pytest.approx(np.exp(stats.logp[stats.valid]), abs=1e-5)  # no top-k, T = 1: q = p
    assert stats.ma == pytest.approx(profile(model, members, ProfileOptions(metrics=("ma",)))["ma"], abs=1e-12)


@pytest.fixture
def passes(monkeypatch) -> list[tuple[str, int]]:
    """(label, rows) of every token-statistics pass made while the test runs."""
    import unmemorize.attacks.tokens as tokens

    made, real = [], tokens._token_statistics
    monkeypatch.setattr(tokens, "_token_statistics", lambda model, seqs, **kw: made.append(
        (kw["label"], len(seqs))) or real(model, seqs, **kw))
    return made


def test_given_token_statistics_are_used_by_id_and_refused_when_they_do_not_cover(memorized, tokenizer, passes):
    """Statistics a caller already has (attack's τ pass over the whole reference set) serve the attacks on a
    subset of it: the rows are picked by id, the results are those of the attacks' own pass, and no pass
    is made; statistics that miss a sequence are a bug, refused."""
    model, members, others = memorized
    opts = _quick(names=("loss", "min-k++", "threshold"), bootstrap=0, match_by=None)
    kept = others.subset([7, 2, 9, 4])
    own = run_attacks(model, tokenizer, members, kept, options=opts)
    whole = token_statistics(model, others, top_k=opts.top_k, temperature=opts.temperature, batch_size=5)
    passes.clear()
    given = run_attacks(model, tokenizer, members, kept, options=opts, stats={"reference": (others.ids, whole)})
    assert [label for label, _ in passes] == ["forget"]
    pd.testing.assert_frame_equal(given.scores, own.scores, atol=1e-6)
    with pytest.raises(ValueError, match="1 of 4 missing"):
        run_attacks(model, tokenizer, members, kept, options=opts,
                    stats={"reference": (others.ids[:9], whole.subset(range(9)))})


def test_sampling_extraction_equals_real_top_k_sampling(memorized):
    """The exact match probability from one teacher-forced pass equals what real samplers produce."""
    model, members, _ = memorized
    r = int(profile(model, members, ProfileOptions(metrics=("ma",)))["ma"].idxmax())
    k, m, top_k, temperature, n = 20, 3, 5, 1.5, 4000
    x = members.input_ids[r]
    stats = token_statistics(model, members.subset([r]), top_k=top_k, temperature=temperature)
    exact = float(stats.q[0, k - 1:k - 1 + m].prod())
    gen = torch.Generator().manual_seed(0)
    ids = x[:k].repeat(n, 1)
    with torch.no_grad():
        for _ in range(m):  # plain top-k sampling, full recomputation at every step (once per distinct context)
            contexts, which = torch.unique(ids, dim=0, return_inverse=True)
            logits = model(input_ids=contexts).logits[:, -1] / temperature
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")), -1)[which]
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], dim=1)
    empirical = (ids[:, k:] == x[k:k + m]).all(1).float().mean().item()
    assert 0.05 < exact < 0.95, "pick settings where sampling is neither certain nor hopeless"
    assert empirical == pytest.approx(exact, abs=4 * (exact * (1 - exact) / n) ** 0.5)


def test_lm_refill_changes_only_the_spans(memorized, tokenizer):
    model, members, _ = memorized
    masking = Masking(0.3, 2)
    p = CausalRefill(masking, model, tokenizer, fingerprint="test")
    text = members.texts[0]
    got = p.neighbours(text, 3, seed=5)
    assert got == CausalRefill(masking, model, tokenizer, fingerprint="test").neighbours(text, 3, seed=5)
    assert len(set(got)) == 3 and text not in got
    base = text_seed(text, 5)
    for j, neighbour in enumerate(got):
        m = mask_text(text, masking, random.Random(base + j))
        pattern = re.escape(m.fixed[0]) + "".join(
            re.escape(sep) + "(.*?)" + re.escape(rest) for sep, rest in zip(m.seps, m.fixed[1:]))
        match = re.fullmatch(pattern, neighbour, flags=re.DOTALL)
        assert match, (neighbour, m)
        assert all(len(fill.split()) <= 2 for fill in match.groups())


def test_lm_refill_batched_over_texts_gives_each_text_its_own_neighbours(memorized, tokenizer):
    """Refilling many texts in one decoding batch gives every text the neighbours it gets alone."""
    model, members, _ = memorized
    masking = Masking(0.3, 2)
    texts = members.texts[:5]
    alone = [CausalRefill(masking, model, tokenizer, fingerprint="t").neighbours(t, 3, seed=2) for t in texts]
    batched = CausalRefill(masking, model, tokenizer, fingerprint="t")
    batched.max_rows = 7  # chunks of 2 texts × 3 maskings: rows of different texts share a batch
    finished = []
    assert batched.neighbours_many(texts, 3, seed=2, done=finished.append) == alone
    assert sum(finished) == len(texts) and len(finished) == 3
    assert batched.spans == sum(len(mask_text(t, masking, random.Random(text_seed(t, 2) + j)).originals)
                                for t in texts for j in range(3))


def _tiny_t5(tmp_path, tokenizer):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),
                                  eos_token="</s>", pad_token="<pad>",
                                  additional_special_tokens=[f"<extra_id_{i}>" for i in range(30)])
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
                   d_kv=16, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(cfg).save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    return tmp_path / "t5"


def test_t5_filler_from_a_local_folder(tmp_path, tokenizer):
    with pytest.raises(UserError, match="never downloads"):
        T5Filler(Masking(), tmp_path / "t5-large")
    path = _tiny_t5(tmp_path, tokenizer)
    text = "Customer file 1. Name: Ada Eriksen. Born: 1961-02-03. Email: ada@example.com. Note: none."
    # an untrained T5 never closes its sentinels: every span keeps its words, and that is counted
    p = T5Filler(Masking(), path, attempts=1)
    assert p.neighbours(text, 2, 0) == [text, text] and p.fallback_spans == p.spans > 0
    # a T5 that answers in the expected format: its fills land in the spans
    p = T5Filler(Masking(), path)

    def answer(input_ids, **kw):
        rows = []
        for row in p.tokenizer.batch_decode(input_ids):
            n = len(re.findall(r"<extra_id_\d+>", row))
            rows.append("<pad>" + "".join(f"<extra_id_{i}> new{i} word{i}" for i in range(n)) + f"<extra_id_{n}>")
        return p.tokenizer(rows, return_tensors="pt", padding=True, add_special_tokens=False)["input_ids"]

    p.model.generate = answer
    got = p.neighbours(text, 2, 0)
    assert p.fallback_spans == 0 and all("new0 word0" in g for g in got) and text not in got


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small(tokenizer):
    texts = [f"Customer file {i}. Name: Ada Eriksen. Email: ada{i}@example.com." for i in range(6)]
    model = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=1, d_model=32)
    return model, make_set(tokenizer, texts[:3], 24), make_set(tokenizer, texts[3:], 24)


@pytest.mark.parametrize("change, message", [
    (dict(forget="empty"), "forget .*is empty"),
    (dict(reference="empty"), "reference .*is empty"),
    (dict(options=dict(neighbours=0)), "neighbours.*at least 1"),
    (dict(options=dict(fprs=(0.01,))), "3 sequences, too few for TPR at 1% FPR"),
    (dict(options=dict(names=("reference",))), "pass --original"),
    (dict(options=dict(names=("loss", "nope"))), "unknown attack 'nope'"),
    (dict(original="other tokenizer"), "different tokenizers"),
])
def test_bad_input_fails_before_any_model_pass(small, tokenizer, change, message):
    model, forget, reference = small
    kwargs: dict = {}
    if change.get("forget") == "empty":
        forget = forget.subset([])
    if change.get("reference") == "empty":
        reference = reference.subset([])
    if "original" in change:
        other = train_tokenizer(["a completely different corpus of words"] * 3, vocab_size=300)
        kwargs.update(original=model, original_tokenizer=other)

    def no_pass(*args, **kwargs):
        raise AssertionError("a model pass ran before the input was checked")

    model = copy.deepcopy(model)
    model.forward = no_pass
    with pytest.raises(UserError, match=message):  # bad options are refused when they are made
        run_attacks(model, tokenizer, forget, reference, options=_quick(**change.get("options", {})), **kwargs)


def test_sequences_from_another_tokenizer_are_refused(small, tokenizer):
    model, forget, reference = small
    big = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=0, n_layer=1, d_model=32)
    forget = copy.deepcopy(forget)
    forget.input_ids[0, 0] = len(tokenizer) + 5
    with pytest.raises(UserError, match="beyond the model's vocabulary"):
        run_attacks(big, tokenizer, forget, reference, options=_quick())


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def command_inputs(memorized, tokenizer, tmp_path_factory):
    from unmemorize.models import save_model

    model, members, others = memorized
    root = tmp_path_factory.mktemp("attack_cli")
    save_model(model, tokenizer, root / "model")
    other_tok = train_tokenizer(["a completely different corpus of words"] * 3, vocab_size=300)
    save_model(tiny_model("gpt2", vocab_size=len(other_tok), eos_id=other_tok.eos_token_id, n_layer=1, d_model=32),
               other_tok, root / "other")
    for name, seqs in (("forget", members), ("reference", others)):
        pd.DataFrame({"id": seqs.ids, "text": seqs.texts}).to_json(root / f"{name}.jsonl", orient="records",
                                                                  lines=True)
    return root


def _invoke(args):
    from unmemorize.commands import attack

    app = typer.Typer()
    attack.register(app)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    return CliRunner().invoke(app, ["attack", *args])


def test_attack_command_writes_a_complete_run(command_inputs):
    root = command_inputs
    out = root / "run"
    base = ["--model", str(root / "model"), "--forget", str(root / "forget.jsonl"), "--reference",
            str(root / "reference.jsonl"), "--length", "64", "--bootstrap", "50", "--no-neighbour-cache"]
    res = _invoke([*base, "--original", str(root / "model"), "--perturber", "words", "-k", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    data = json.loads((out / "attacks.json").read_text())
    assert list(data["attacks"]) == list(ATTACKS)
    assert data["attacks"]["miau"]["summary"]["perturber"]["perturber"] == "words"  # which perturber, recorded
    scores = pd.read_parquet(out / "attack_scores.parquet")
    assert len(scores) == 24 and {"miau", "loss", "reference.delta"} <= set(scores.columns)
    assert (out / "roc.png").stat().st_size > 0 and "Privacy attacks" in (out / "report.html").read_text()
    assert json.loads((out / "manifest.json").read_text())["perturber"]["perturber"] == "words"
    # bad input: a clear error, and nothing under the output name
    for extra, message in ((["-k", "0"], "at least 1"),
                           (["--original", str(root / "other")], "different tokenizers"),
                           (["--attacks", "loss,reference"], "pass --original")):
        bad = root / f"bad{len(extra)}{extra[0]}"
        res = _invoke([*base, *extra, "--out", str(bad)])
        assert isinstance(res.exception, UserError) and re.search(message, str(res.exception)), res.output
        assert not bad.exists() and not list(root.glob(f".{bad.name}*"))


def test_attack_command_refills_with_a_separate_model(command_inputs):
    """--refill-model: MIAU's neighbours come from a third model (here one with its own tokenizer: the
    refill model only writes text, the target scores it)."""
    from unmemorize.models import load_model

    root = command_inputs
    out = root / "refill"
    base = ["--model", str(root / "model"), "--forget", str(root / "forget.jsonl"), "--reference",
            str(root / "reference.jsonl"), "--length", "64", "--bootstrap", "20", "--no-neighbour-cache",
            "--attacks", "miau", "-k", "2"]
    res = _invoke([*base, "--refill-model", str(root / "other"), "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    manifest = json.loads((out / "manifest.json").read_text())
    other = load_model(str(root / "other"))
    assert manifest["refill_model"]["path"] == str(root / "other")
    assert manifest["perturber"]["model"] == other.fingerprint != load_model(str(root / "model")).fingerprint
    summary = json.loads((out / "attacks.json").read_text())["attacks"]["miau"]["summary"]
    assert summary["perturber"]["model"] == other.fingerprint and summary["spans_filled_this_run"] > 0
    # without it the target refills (no --original): another fingerprint, recorded as such
    res = _invoke([*base, "--out", str(root / "self_refill")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert json.loads((root / "self_refill" / "manifest.json").read_text())["refill_model"]["path"] == str(root / "model")
    # bad input: a refill model for a perturber that takes none, and one that is not there
    for extra, message in ((["--perturber", "words", "--refill-model", str(root / "other")], "lm perturber"),
                           (["--refill-model", str(root / "missing")], "missing")):
        bad = root / f"bad_refill_{extra[1]}"
        res = _invoke([*base, *extra, "--out", str(bad)])
        assert isinstance(res.exception, UserError) and re.search(message, str(res.exception)), res.output
        assert not bad.exists()


def test_attack_command_matches_non_members_by_kind_of_text(command_inputs, memorized, tokenizer, passes):
    """With a corpus column in both files the command compares the members with non-members in the members'
    proportions of each kind (as `unlearn` does); τ stays the mean g over the whole reference set, and that
    pass's statistics serve the attacks: no non-member is passed twice, and the kept rows are the right ones."""
    root = command_inputs
    _, members, others = memorized
    kinds = {"forget": ["Github"] * 9 + ["Pile-CC"] * 3, "reference": ["github"] * 3 + ["pile-cc"] * 9}
    for name, seqs in (("forget", members), ("reference", others)):
        pd.DataFrame({"id": seqs.ids, "text": seqs.texts, "corpus": kinds[name]}).to_json(
            root / f"{name}_kinds.jsonl", orient="records", lines=True)
    base = ["--model", str(root / "model"), "--forget", str(root / "forget_kinds.jsonl"), "--reference",
            str(root / "reference_kinds.jsonl"), "--length", "64", "--bootstrap", "20", "--attacks", "loss,threshold"]
    tau_by_hand = float(np.mean(profile(memorized[0], others, ProfileOptions(metrics=("ma",)))["ma"]))
    runs = {}
    for match in ("auto", "none"):
        out = root / f"match_{match}"
        passes.clear()
        res = _invoke([*base, "--match-by", match, "--out", str(out)])
        assert res.exit_code == 0, res.output + repr(res.exception)
        runs[match] = (json.loads((out / "attacks.json").read_text()), pd.read_parquet(out / "attack_scores.parquet"))
        # matched: one pass over all 12 non-members (τ, and the attacks' statistics of the kept 4), one over
        # the members; unmatched: τ comes from the attacks' own pass
        assert sorted(passes) == ([("forget", 12), ("τ on the reference set", 12)] if match == "auto"
                                  else [("forget", 12), ("reference", 12)]), passes
    data, scores = runs["auto"]
    chosen = scores.loc[~scores["member"], "id"].tolist()
    # 9:3 code:prose members; 3 code texts among the non-members allow 4 non-members, 3 of code and 1 of prose
    assert data["inputs"]["reference"]["sequences"] == 4 == len(chosen)
    kind_of = dict(zip(others.ids, kinds["reference"]))
    assert sorted(kind_of[i] for i in chosen) == ["github", "github", "github", "pile-cc"]
    assert any("matched to the members by corpus" in n for n in data["notes"])
    loss = scores["loss"].to_numpy(float)
    assert data["attacks"]["loss"]["auc"]["value"] == pytest.approx(roc_auc_score(scores["member"], loss))
    kept = others.subset([others.ids.index(i) for i in chosen])  # ℓ(x) of each kept non-member, passed alone
    by_hand = mean_log_likelihood(memorized[0], kept.input_ids, kept.lengths, batch_size=1)
    np.testing.assert_allclose(scores.loc[~scores["member"], "loss"].to_numpy(float), by_hand, atol=1e-5)
    calib = data["attacks"]["threshold"]["calibration"]
    assert calib["tau"] == pytest.approx(tau_by_hand, abs=1e-6) and "all 12 reference sequences" in calib["tau_source"]
    data, scores = runs["none"]  # no matching: every non-member, τ from the same 12
    assert data["inputs"]["reference"]["sequences"] == 12 and not any("matched" in n for n in data["notes"])
    assert data["attacks"]["threshold"]["calibration"]["tau"] == pytest.approx(tau_by_hand, abs=1e-6)


def test_command_help_names_every_attack():
    from unmemorize.attacks.registry import AttackSettings

    words = AttackSettings.model_fields["names"].description
    listed = words[words.index("(") + 1:words.index(";")].split(", ")
    assert listed == list(ATTACKS)


def test_results_write_and_report_for_other_commands(small, tokenizer, tmp_path):
    """What `unmemorize unlearn` uses: write_results with a prefix, report sections, a before/after table."""
    from unmemorize.attacks import comparison_table, report_sections, write_results

    model, forget, reference = small
    res = run_attacks(model, tokenizer, forget, reference,
                      options=_quick(names=("threshold", "loss", "sampling"), bootstrap=0))
    paths = write_results(res, tmp_path, prefix="after_")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "after_attack_scores.csv", "after_attack_scores.parquet", "after_attacks.json", "after_roc.png"]
    sections = report_sections(res, paths["roc"], heading="Attacks after unlearning")
    assert sections[0].title == "Attacks after unlearning" and sections[0].images
    assert any("c(D_f)" in caption for caption, _ in sections[1].tables)
    table = comparison_table({"original": res, "unlearned": res})
    assert table["attack"].tolist() == ["threshold", "loss", "sampling"]
    assert (table["AUC original"] == table["AUC unlearned"]).all()
