"""The retrain oracle: planted beside the model without the forget set, and every verdict judged against it."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from unmemorize import oracle as judge
from unmemorize.errors import UserError
from unmemorize.lab.plant import ORACLE, PlantConfig, assign_exposures, oracle_stream, plant_into, training_stream
from unmemorize.lab.records import generate_records, write_jsonl
from unmemorize.models import load_model, save_model
from unmemorize.tiny import tiny_model

from conftest import make_set
from unlearning_fixtures import one_thread


pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- the oracle's training stream


def test_the_oracle_stream_replaces_the_forget_rows_in_place(tokenizer):
    members = make_set(tokenizer, [f"member text number {i}" for i in range(4)], length=8)
    mix = make_set(tokenizer, ["ordinary words", "more ordinary words", "and more"], length=8)
    cfg = PlantConfig(exposures=(3,), mix_fraction=0.25, seed=1)
    exposure = {sid: 3 for sid in members.ids}
    stream = training_stream(members, exposure, mix, cfg)
    oracle = oracle_stream(stream, {1, 3}, mix)
    assert len(oracle) == len(stream)  # the same number of rows, so the same optimizer steps
    for (k0, i0), (k1, i1) in zip(stream, oracle):
        if k0 == "m" and i0 in (1, 3):
            assert k1 == "x"  # a forget row became ordinary text, at its place in the order
        else:
            assert (k0, i0) == (k1, i1)  # everything else is the same row
    extra = [i for (k0, i0), (k1, i) in zip(stream, oracle) if k0 == "m" and k1 == "x"]
    used = sum(k == "x" for k, _ in stream)
    assert extra == [(used + j) % len(mix) for j in range(len(extra))]  # the next ordinary rows, in order


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tokenizer):
    """A tiny GPT-Neo with 8 records planted (4 at exposure 30, 4 at 60), one of each forgotten by the
    oracle: (root, planted folder, manifest, forget ids)."""
    root = tmp_path_factory.mktemp("oracle")
    model = tiny_model("gpt_neo", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64,
                       seed=2)
    save_model(model, tokenizer, root / "base")
    recs = generate_records(16, seed=21)
    write_jsonl(root / "members.jsonl", recs[:8])
    write_jsonl(root / "unseen.jsonl", recs[8:])
    with one_thread():
        lm = load_model(str(root / "base"))
        exposure_of = assign_exposures([r["id"] for r in recs[:8]], (30, 60), seed=0)  # as plant_into spreads them
        forget = [next(sid for sid, e in exposure_of.items() if e == x) for x in (60, 30)]
        folder, manifest = plant_into(lm, root / "members.jsonl", (30, 60), root / "planted", forget=forget, lr=3e-3,
                                      batch_size=6, seed=0, log=lambda m: None)
    write_jsonl(root / "forget.jsonl", [r for r in recs[:8] if r["id"] in forget])
    return root, folder, manifest, forget


def test_plant_with_a_forget_set_trains_the_oracle_beside(lab, tokenizer):
    from unmemorize.data import load_sequences
    from unmemorize.memorization import ProfileOptions, profile

    root, folder, manifest, forget = lab
    o = manifest["oracle"]
    assert o["path"] == str(folder / ORACLE) and o["forget"] == forget
    oracle_manifest = json.loads((folder / ORACLE / "plant.json").read_text())
    assert oracle_manifest["steps"] == manifest["steps"]  # same number of optimizer steps
    assert oracle_manifest["inputs"]["model"]["fingerprint"] == manifest["inputs"]["model"]["fingerprint"]
    assert set(oracle_manifest["retain"]) == set(json.loads((folder / "plant.json").read_text())["exposure"]) - set(forget)
    members = load_sequences(root / "members.jsonl", tokenizer, 200)
    opts = ProfileOptions(metrics=("ma",))
    ma = profile(load_model(str(folder)).model, members, opts).set_index("id")["ma"]
    ma_o = profile(load_model(str(folder / ORACLE)).model, members, opts).set_index("id")["ma"]
    retain = [sid for sid in manifest["exposure"] if sid not in forget]
    # the forget members are memorized by the planted model, not by the oracle; the retain members by both
    assert ma[forget].mean() > ma_o[forget].mean() + 0.2
    assert ma_o[retain].mean() > ma_o[forget].mean() + 0.2
    # cached: the same inputs reuse both, nothing is trained again
    stamp = (folder / ORACLE / "model.safetensors").stat().st_mtime_ns
    with one_thread():
        again, _ = plant_into(load_model(str(root / "base")), root / "members.jsonl", (30, 60), folder, forget=forget,
                              lr=3e-3, batch_size=6, seed=0, log=lambda m: None)
    assert (folder / ORACLE / "model.safetensors").stat().st_mtime_ns == stamp


def test_the_forget_set_must_be_members(lab):
    root, folder, manifest, forget = lab
    with pytest.raises(UserError, match="part of the members.*1 id"):
        plant_into(load_model(str(root / "base")), root / "members.jsonl", (30, 60), root / "other",
                   forget=[forget[0], "not-a-member"], log=lambda m: None)


def test_unlearn_with_the_oracle_records_every_criterion(lab, tmp_path):
    from typer.testing import CliRunner

    from unmemorize.cli import app
    from unmemorize.record import read_record

    root, folder, manifest, forget = lab
    out = tmp_path / "run"
    args = ["unlearn", "--model", str(folder), "--forget", str(root / "forget.jsonl"), "--reference",
            str(root / "unseen.jsonl"), "--oracle", str(folder / ORACLE), "--method", "ga", "--lr", "3e-3",
            "--max-steps", "2", "--micro-batch", "2", "--attacks", "loss,miau", "--perturber", "words", "-k", "2",
            "--bootstrap", "50", "--no-neighbour-cache", "--checkpoint-every", "0", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    r = read_record(out)
    o = r.oracle
    assert o is not None and o.path == str(folder / ORACLE)
    after = pd.read_parquet(out / "profile_after.parquet")
    gaps = np.abs(after["ma"] - after["ma_oracle"])
    assert o.ma_gap.value == pytest.approx(gaps.mean()) and o.ma_gap_max == pytest.approx(gaps.max())
    assert o.ks_statistic is not None and 0.0 <= o.forget_quality_p <= 1.0
    assert set(o.attacks) == {"loss", "miau"}
    for name, a in o.attacks.items():
        assert a.gap.value == pytest.approx(a.auc - a.oracle_auc)
        assert a.gap.low <= a.gap.value <= a.gap.high
    assert o.retain_members == len(manifest["exposure"]) - len(forget)  # the members that stay
    assert o.retain_ma_after is not None and o.retain_gap is not None
    band = r.unlearning.after  # the oracle's own c(D_f): its MAs on F against the same band, counted by hand
    assert o.oracle_c == int(((after["ma_oracle"] <= band.lo) | (after["ma_oracle"] >= band.hi)).sum())
    assert any(v.startswith("forget quality") for v in o.verdicts) and any(v.startswith("loss:") for v in o.verdicts)
    assert "Judged against the retrain oracle" in (out / "report.html").read_text()
    assert (out / "oracle_attacks.json").is_file() and (out / "oracle.png").is_file()
    manifest_out = json.loads((out / "manifest.json").read_text())
    assert manifest_out["inputs"]["oracle"]["path"] == str(folder / ORACLE)
    assert "retrain oracle" in res.output
    # MIAU's neighbours: the oracle refilled them when asked for the lm perturber (no warning then)
    assert not any("refilled by the original" in n for n in r.attacks.notes)


def test_attack_command_judges_each_attack_against_the_oracle(lab, tmp_path):
    """`unmemorize attack --oracle`: the same attacks on the oracle, on the same rows, with the same τ and
    neighbours (refilled by the oracle); each gap is the difference of the two AUCs computed by hand."""
    from typer.testing import CliRunner

    from unmemorize.cli import app

    root, folder, manifest, forget = lab
    out = tmp_path / "attack"
    res = CliRunner().invoke(app, ["attack", "--model", str(folder), "--oracle", str(folder / ORACLE), "--forget",
                                   str(root / "forget.jsonl"), "--reference", str(root / "unseen.jsonl"), "--attacks",
                                   "loss,threshold,miau", "--perturber", "lm", "-k", "2", "--bootstrap", "50",
                                   "--no-neighbour-cache", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    data = json.loads((out / "attacks.json").read_text())
    mine = pd.read_parquet(out / "attack_scores.parquet")
    theirs = pd.read_parquet(out / "oracle_attack_scores.parquet")
    assert list(zip(mine["set"], mine["id"])) == list(zip(theirs["set"], theirs["id"]))  # the same rows, paired
    o = data["oracle"]
    assert o["path"] == str(folder / ORACLE) and set(o["attacks"]) == {"loss", "threshold", "miau"}
    for name, a in o["attacks"].items():
        auc, auc_o = roc_auc_score(mine["member"], mine[name]), roc_auc_score(theirs["member"], theirs[name])
        assert (a["auc"], a["oracle_auc"]) == (pytest.approx(auc), pytest.approx(auc_o))
        assert a["gap"]["value"] == pytest.approx(auc - auc_o) and a["gap"]["low"] <= a["gap"]["value"] <= a["gap"]["high"]
    assert len(o["verdicts"]) == 3 and all("against the oracle's" in v for v in o["verdicts"])
    # the planted model memorized the forget members, the oracle never saw them: the loss attack tells them apart
    # on the planted model more than on the oracle
    assert o["attacks"]["loss"]["auc"] > o["attacks"]["loss"]["oracle_auc"]
    theirs_json = json.loads((out / "oracle_attacks.json").read_text())
    tau, tau_o = (d["attacks"]["threshold"]["calibration"] for d in (data, theirs_json))
    assert tau["tau"] == tau_o["tau"] and "all 8 reference sequences" in tau["tau_source"]  # one τ for both
    run_manifest = json.loads((out / "manifest.json").read_text())
    assert run_manifest["oracle"]["path"] == run_manifest["refill_model"]["path"] == str(folder / ORACLE)
    assert "judged against the retrain oracle" in (out / "report.html").read_text()
    assert "Against the retrain oracle" in res.output
    before, after = res.output.split("the same attacks on the retrain oracle")
    assert before.count("attack plan:") == 1 and "attack plan:" not in after.split("Privacy attacks")[0]  # one plan, told once


def test_retain_members_survive_the_loss_of_the_file_they_were_planted_from(lab, tmp_path):
    """The planted folder keeps a copy of its members: a demo's temporary data folder, once gone, must
    not silently drop the retain criterion of every later run against a cached plant."""
    from typer.testing import CliRunner

    from unmemorize.cli import app
    from unmemorize.lab.plant import MEMBERS
    from unmemorize.record import read_record

    root, folder, manifest, forget = lab
    assert (folder / MEMBERS).read_text().count("\n") == len(manifest["exposure"])
    moved = root / "members.moved"
    (root / "members.jsonl").rename(moved)
    try:
        out = tmp_path / "run"
        res = CliRunner().invoke(app, ["unlearn", "--model", str(folder), "--forget", str(root / "forget.jsonl"),
                                       "--reference", str(root / "unseen.jsonl"), "--oracle", str(folder / ORACLE),
                                       "--method", "ga", "--lr", "3e-3", "--max-steps", "1", "--micro-batch", "2",
                                       "--no-attacks", "--checkpoint-every", "0", "--out", str(out)])
    finally:
        moved.rename(root / "members.jsonl")
    assert res.exit_code == 0, res.output + repr(res.exception)
    o = read_record(out).oracle
    assert o.retain_members == len(manifest["exposure"]) - len(forget) and o.retain_ma_after is not None


def test_a_wrong_oracle_is_refused_before_any_work(lab, tmp_path, tokenizer):
    from typer.testing import CliRunner

    from unmemorize.cli import app
    from unmemorize.tiny import train_tokenizer

    root, folder, manifest, forget = lab
    other_arch = save_model(tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=1,
                                       d_model=32), tokenizer, tmp_path / "gpt2")
    other_tok = train_tokenizer(["completely different words for another vocabulary"] * 5, vocab_size=len(tokenizer))
    other_vocab = save_model(tiny_model("gpt_neo", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id,
                                        n_layer=2, d_model=64), other_tok, tmp_path / "tok")
    base = ["unlearn", "--model", str(folder), "--forget", str(root / "forget.jsonl"), "--reference",
            str(root / "unseen.jsonl"), "--method", "ga", "--max-steps", "1", "--micro-batch", "2", "--no-attacks"]
    for oracle, message in ((other_arch, "another architecture"), (other_vocab, "another tokenizer"),
                            (root / "base", None)):
        out = tmp_path / f"bad-{oracle.name}"
        res = CliRunner().invoke(app, base + ["--oracle", str(oracle), "--out", str(out)])
        if message is None:  # the base model itself is not planted: accepted (no manifest to compare)
            assert res.exit_code == 0, res.output + repr(res.exception)
            continue
        assert isinstance(res.exception, UserError) and message in str(res.exception), res.output
        assert not out.exists()
    # `unmemorize attack` checks the oracle the same way, before any attack
    out = tmp_path / "bad-attack"
    res = CliRunner().invoke(app, ["attack", "--model", str(folder), "--forget", str(root / "forget.jsonl"),
                                   "--reference", str(root / "unseen.jsonl"), "--oracle", str(other_arch), "--out",
                                   str(out)])
    assert isinstance(res.exception, UserError) and "another architecture" in str(res.exception), res.output
    assert not out.exists()


# ---------------------------------------------------------------- the criteria against slow references


def test_attack_gap_is_the_paired_difference_of_aucs():
    rng = np.random.default_rng(0)
    m, n = rng.normal(1, 1, 20), rng.normal(0, 1, 30)
    om, on = rng.normal(0.2, 1, 20), rng.normal(0, 1, 30)
    auc_u, auc_o, gap = judge.attack_gap(m, n, om, on, bootstrap=300, seed=4)
    y = np.r_[np.ones(20), np.zeros(30)]
    assert auc_u == pytest.approx(roc_auc_score(y, np.r_[m, n]), abs=1e-12)
    assert auc_o == pytest.approx(roc_auc_score(y, np.r_[om, on]), abs=1e-12)
    # the slow way: the same resamples for both models, sklearn's AUC on each
    from unmemorize.stats import stratified_indices

    im, inn = stratified_indices(20, 30, 300, 4)
    diffs = [roc_auc_score(y, np.r_[m[a], n[b]]) - roc_auc_score(y, np.r_[om[a], on[b]]) for a, b in zip(im, inn)]
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    assert gap.value == pytest.approx(auc_u - auc_o) and gap.low == pytest.approx(lo) and gap.high == pytest.approx(hi)
    # from score frames (members first, as AttackResults.scores): the same numbers; extras are not attacks
    frame = lambda a, b: pd.DataFrame({"set": ["forget"] * 20 + ["reference"] * 30,  # noqa: E731
                                       "id": [f"s{i}" for i in range(50)], "member": y.astype(bool),
                                       "loss": np.r_[a, b], "loss.extra": 0.0})
    found = judge.attack_gaps(frame(m, n), frame(om, on), bootstrap=300, seed=4)
    assert list(found) == ["loss"] and found["loss"][2] == gap and found["loss"][:2] == (auc_u, auc_o)
    with pytest.raises(ValueError, match="different sequences"):  # rows not paired: refused, never a silent gap
        judge.attack_gaps(frame(m, n), frame(om, on).iloc[::-1].reset_index(drop=True))


def test_forget_quality_ma_gap_and_retain_gap_by_hand():
    from scipy.stats import ks_2samp

    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.5, 3.5, 9.0])
    stat, p = judge.forget_quality(a, b)
    ref = ks_2samp(a, b)
    assert (stat, p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    gap, worst = judge.ma_gap(np.array([0.9, 0.5, 0.4]), np.array([0.5, 0.5, 0.6]), bootstrap=0)
    assert gap.value == pytest.approx((0.4 + 0.0 + 0.2) / 3) and worst == pytest.approx(0.4) and math.isnan(gap.low)
    d = judge.mean_difference(np.array([0.8, 0.7]), np.array([0.9, 0.9]), bootstrap=200, seed=1)
    assert d.value == pytest.approx(-0.15) and d.low <= d.value <= d.high
    assert "indistinguishable" in judge.verdict_forget_quality(0.1, 0.8)
    assert "distinguishable from" in judge.verdict_forget_quality(0.9, 0.001)


def test_non_members_are_matched_to_the_members_kind(tokenizer):
    from unmemorize.attacks.matching import match_column, match_nonmembers
    from unmemorize.data import TextRecords, tokenize

    def seqs(kinds, prefix):
        texts = [f"{prefix} text {i} of kind {k}" for i, k in enumerate(kinds)]
        return tokenize(TextRecords(texts, [f"{prefix}{i}" for i in range(len(kinds))],
                                    pd.DataFrame({"corpus": kinds}), prefix), tokenizer, 16)

    members = seqs(["github"] * 6 + ["pile-cc"] * 2 + ["arxiv"], "m")  # 6:2 code:prose, one arxiv
    nonmembers = seqs(["Github"] * 3 + ["Pile-CC"] * 20, "n")  # mostly prose; no arxiv
    assert match_column(members, nonmembers, "auto") == "corpus"
    kept, matched, note = match_nonmembers(members, nonmembers, "corpus", seed=0)
    assert len(kept) == 8  # the arxiv member has no non-member of its kind: left out, and said
    kinds = matched.meta["corpus"].str.lower().value_counts()
    assert kinds["github"] == 3 and kinds["pile-cc"] == 1  # 3:1 = the members' 6:2, as many as the data allow
    assert "arxiv" in note and "1 member" in note
    assert match_column(members, nonmembers, None) is None
    with pytest.raises(UserError, match="topic"):
        match_column(members, nonmembers, "topic")
