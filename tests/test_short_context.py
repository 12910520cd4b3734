"""Models whose context holds the sequence length T and little more (GPT-Neo's ``max_position_embeddings``).

Every job fits such a model, but a batch of them can outgrow it: EL/extraction decoding left-pads
prompts of several lengths, MIAU's lm refill makes texts longer than they were. Neither may ever ask
the model for more positions than it has. A model whose context is shorter than T is refused in one
line, before any work.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from unmemorize.attacks.perturb import CausalRefill, Masking
from unmemorize.attacks.registry import AttackOptions
from unmemorize.attacks.run import run_attacks
from unmemorize.errors import UserError
from unmemorize.lab.ordinary import stdlib_paragraphs
from unmemorize.memorization import ProfileOptions, decode_from_prefixes, profile
from unmemorize.models import check_context, max_positions, save_model
from unmemorize.reference import extraction_likelihood_reference, greedy_reference
from unmemorize.tiny import tiny_model
from unmemorize.unlearning.loop import unlearn

from conftest import make_set, positions_used

T, POSITIONS = 48, 56  # fast unit tests; the CLI also runs the realistic T = 200 on 256 positions


def neo(tokenizer, positions: int, seed: int = 3):
    return tiny_model("gpt_neo", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64,
                      n_positions=positions, seed=seed)


def widened(model, tokenizer, positions: int):
    """The same weights with a longer context (position embeddings appended): the same model on
    every sequence that fits the shorter one, so its results are those without any context limit."""
    wide = neo(tokenizer, positions)
    state = model.state_dict()
    wpe = wide.transformer.wpe.weight.detach().clone()
    wpe[: state["transformer.wpe.weight"].shape[0]] = state["transformer.wpe.weight"]
    state["transformer.wpe.weight"] = wpe
    wide.load_state_dict(state)
    return wide.eval()


def prose(n: int, start: int, join: int = 2) -> list[str]:
    """n texts of ``join`` standard-library paragraphs each (a paragraph: 40 tokens or more). Prose,
    mostly one token per word: refills (random tokens here) run longer than the words they replace."""
    p = stdlib_paragraphs()
    return [" ".join(p[start + join * i:start + join * (i + 1)]) for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run as fast on one thread, and two threads that spin-wait for each other on a busy
    machine can be ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def short(tokenizer):
    model = neo(tokenizer, POSITIONS)
    assert max_positions(model) == POSITIONS
    return model


@pytest.fixture(scope="module")
def sets(tokenizer):
    forget, reference = make_set(tokenizer, prose(3, 0), length=T), make_set(tokenizer, prose(3, 10), length=T)
    assert (forget.lengths == T).all() and (reference.lengths == T).all()
    return forget, reference


# ---------------------------------------------------------------- EL and extraction decoding


@pytest.mark.parametrize("arch", ["gpt_neo", "gpt2", "gpt_neox", "llama"])
def test_decoding_fits_the_context_and_equals_full_recomputation(tokenizer, sets, arch):
    """Prompts of 1 … 47 tokens with their continuations to T in one batch: 47 + 47 positions
    left-padded, on a model with 56."""
    seqs = sets[0]
    short = tiny_model(arch, vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64,
                       n_positions=POSITIONS, seed=3)
    greedy = short(input_ids=seqs.input_ids).logits.argmax(-1)
    jobs = {(0, 1): T - 1, (0, T - 1): 1, (1, 30): T - 30, (1, 7): T - 7, (2, 20): T - 20, (2, 44): 2}
    assert max(j for _, j in jobs) + max(jobs.values()) > POSITIONS, "the batch must outgrow the context"
    with positions_used(short) as seen:
        outs = decode_from_prefixes(short, seqs, jobs, greedy, seq_batch=3, batch_size=4)
    assert max(seen) <= POSITIONS
    for (r, j), n in jobs.items():
        assert outs[(r, j)] == greedy_reference(short, seqs.input_ids[r, :j], n), (r, j)


def test_profile_el_and_extraction_on_a_short_context(short, tokenizer, sets):
    seqs = sets[0].subset([0, 1])
    opts = ProfileOptions(metrics=("ma", "el", "extraction"), el_n=4, el_for="all", extraction_prefix=8,
                          extraction_suffix=40)
    with positions_used(short) as seen:
        prof = profile(short, seqs, opts)
    assert max(seen) <= POSITIONS
    wide = widened(short, tokenizer, 256)
    with positions_used(wide) as wide_seen:
        unlimited = profile(wide, seqs, opts)
    assert max(wide_seen) > POSITIONS, "without the limit these batches would outgrow the short context"
    pd.testing.assert_frame_equal(prof, unlimited)  # the same tokens as decoding without a limit
    for r in range(len(seqs)):
        x = seqs.input_ids[r, : seqs.lengths[r]]
        assert prof.loc[r, "el_4"] == extraction_likelihood_reference(short, x, 4), r
        k, m = int(prof.loc[r, "extraction_prefix"]), int(prof.loc[r, "extraction_suffix"])
        assert (k, m) == (8, 40)
        assert prof.loc[r, "extraction_tokens"] == greedy_reference(short, x[:k], m), r


# ---------------------------------------------------------------- MIAU's lm refill


def test_lm_refill_never_outgrows_the_context(short, tokenizer, sets):
    """Refills longer than their words push texts past the context: those rows stop there (later
    spans keep their words, counted); texts that fit get exactly the neighbours of an unlimited model."""
    masking = Masking(0.5, 1)
    texts = ["A short note: the kite, the lamp and the anchor stay home.", *sets[0].texts]
    refill = CausalRefill(masking, short, tokenizer, "short")
    with positions_used(short) as seen:
        got = refill.neighbours_many(texts, 3, seed=0)
    assert max(seen) <= POSITIONS
    assert refill.fallback_spans > 0, "some spans must lie beyond the context"
    wide = widened(short, tokenizer, 512)
    fitting = 0
    for text, mine in zip(texts, got):
        unlimited = CausalRefill(masking, wide, tokenizer, "wide")
        with positions_used(wide) as wide_seen:
            theirs = unlimited.neighbours(text, 3, seed=0)
        if len(wide_seen) <= POSITIONS:  # one position per step: this text's rows fit the short context
            fitting += 1
            assert mine == theirs and refill.neighbours(text, 3, seed=0) == theirs
        else:
            assert len(mine) == 3 and all(isinstance(n, str) and n for n in mine)
    assert 0 < fitting < len(texts)


@pytest.mark.parametrize("perturber", ["lm", "lm-independent"])
def test_miau_with_lm_neighbours_on_a_short_context(short, tokenizer, sets, perturber):
    """No pass holds more columns than the model has positions: lm stops a row at the context (spans after
    it keep their words); lm-independent splits a text's spans into trees that fit."""
    forget, reference = sets
    opts = AttackOptions(names=("miau", "loss"), perturber=perturber, neighbours=3, mask_fraction=0.5, span_words=1,
                         neighbour_cache=False, bootstrap=0)
    with positions_used(short) as seen:
        res = run_attacks(short, tokenizer, forget, reference, options=opts)
    assert max(seen) <= POSITIONS
    summary = res.attacks["miau"].summary
    assert summary["perturber"]["perturber"] == perturber and summary["spans_filled_this_run"] > 0
    if perturber == "lm":  # refills longer than their words push later spans past the context
        assert summary["spans_kept_original"] > 0
    assert res.scores["miau"].notna().all()


# ---------------------------------------------------------------- a context shorter than T


def test_a_context_shorter_than_T_is_refused_in_one_line(tokenizer, sets):
    forget, reference = sets
    small = neo(tokenizer, T - 8)
    calls = {
        "profile": lambda: profile(small, forget, ProfileOptions(metrics=("ma",))),
        "attacks": lambda: run_attacks(small, tokenizer, forget, reference,
                                       options=AttackOptions(names=("loss",), bootstrap=0)),
        "unlearn": lambda: unlearn(small, forget, tau=0.5, method="ga"),
    }
    for name, call in calls.items():
        with positions_used(small) as seen, pytest.raises(UserError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and f"{T - 8} tokens" in message and f"T = {T}" in message, (name, message)
        assert "--length" in message and not seen, name  # before any model pass
    check_context(small, T - 8)  # a context of exactly T is enough
    check_context(neo(tokenizer, T), T)
    check_context(SimpleNamespace(config=SimpleNamespace(rope_theta=1e4)), 10_000)  # states no context: accepted
    assert max_positions(SimpleNamespace(config=SimpleNamespace())) is None


# ---------------------------------------------------------------- the commands, end to end


def _write(path, texts, prefix):
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "text": t}) + "\n" for i, t in enumerate(texts)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer, short):
    d = tmp_path_factory.mktemp("short_context")
    save_model(short, tokenizer, d / "model")
    save_model(neo(tokenizer, 256, seed=4), tokenizer, d / "model256")
    save_model(neo(tokenizer, T - 8), tokenizer, d / "small")
    _write(d / "forget.jsonl", prose(4, 20), "f")
    _write(d / "reference.jsonl", prose(4, 30), "r")
    _write(d / "forget200.jsonl", prose(1, 40, join=6), "f")
    return d


@pytest.fixture
def cli(folder, monkeypatch):
    from unmemorize.cli import app

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(folder / "cache"))  # no neighbours from earlier runs

    def invoke(*args: str):
        return CliRunner().invoke(app, [str(a) for a in args])

    return invoke


def test_cli_audit_attack_unlearn_on_a_short_context(folder, cli):
    d = folder
    data = ["--forget", d / "forget.jsonl", "--reference", d / "reference.jsonl", "--length", T]
    res = cli("audit", "--model", d / "model", *data, "--metrics", "ma,el,extraction", "--el-n", 4, "--el-for", "all",
              "--prefix", 8, "--suffix", 30, "--out", d / "audit")
    assert res.exit_code == 0, res.output + repr(res.exception)
    prof = pd.read_parquet(d / "audit" / "profile.parquet")
    assert len(prof) == 4 and prof["el_4"].notna().all()
    res = cli("attack", "--model", d / "model", *data, "--attacks", "miau,loss", "--perturber", "lm", "-k", 2,
              "--mask-fraction", 0.5, "--span-words", 1, "--bootstrap", 0, "--no-neighbour-cache", "--out",
              d / "attack")
    assert res.exit_code == 0, res.output + repr(res.exception)
    miau = json.loads((d / "attack" / "attacks.json").read_text())["attacks"]["miau"]
    assert miau["summary"]["spans_kept_original"] > 0
    res = cli("unlearn", "--model", d / "model", *data, "--method", "ga", "--lr", "1e-3", "--neighbours", 2,
              "--max-steps", 2, "--micro-batch", 4, "--checkpoint-every", 0, "--out", d / "unlearn")
    assert res.exit_code == 0, res.output + repr(res.exception)
    # the default attacks ran on the model before and after unlearning, MIAU with the default neighbours
    # (auto: lm-independent, as this GPT-Neo's local window spans its context)
    runs = [json.loads(f.read_text()) for f in (d / "unlearn").glob("*attacks.json")]
    assert len(runs) == 2 and all(r["attacks"]["miau"]["summary"]["perturber"]["perturber"] == "lm-independent"
                                  for r in runs)
    assert (d / "unlearn" / "profile_after.parquet").is_file()


def test_cli_audit_at_T_200_on_a_256_position_model(folder, cli):
    """The case as reported: T = 200 on a GPT-Neo with 256 positions. A random model: every prefix is
    decoded, prompts of 1 … 199 tokens to length 200, 64 in a batch (the first: 64 + 199 positions)."""
    d = folder
    res = cli("audit", "--model", d / "model256", "--forget", d / "forget200.jsonl", "--tau", 0.5, "--length", 200,
              "--metrics", "ma,el,extraction", "--el-for", "all", "--out", d / "audit256")
    assert res.exit_code == 0, res.output + repr(res.exception)
    prof = pd.read_parquet(d / "audit256" / "profile.parquet")
    assert (prof["length"] == 200).all() and prof["el_10"].notna().all()
    assert (prof["extraction_suffix"] == 100).all()


def test_cli_refuses_a_context_shorter_than_T(folder, cli):
    d = folder
    for command in ("audit", "attack", "unlearn"):
        out = d / f"refused_{command}"
        res = cli(command, "--model", d / "small", "--forget", d / "forget.jsonl", "--reference",
                  d / "reference.jsonl", "--length", T, "--out", out)
        assert isinstance(res.exception, UserError), (command, res.output, repr(res.exception))
        assert f"T = {T}" in str(res.exception) and "--length" in str(res.exception)
        assert not out.exists(), command
