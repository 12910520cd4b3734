"""The one unlearning loop on a tiny model that has memorized 8 sequences to different degrees:
gradients of the selected sequences, task arithmetic, the phase switch, both stop rules, NaN
roll-back, resume, the CLI's outputs and the untouched input files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from unmemorize.memorization import ProfileOptions, profile
from unmemorize.record import read_record
from unmemorize.runs import sha256_file
from unmemorize.thresholds import Band, acceptable_level
from unmemorize.unlearning import METHODS, UnlearnOptions, load_retain, unlearn
from unmemorize.unlearning import losses
from unmemorize.unlearning.methods import Method, MethodSpec, Phase, objective
from unmemorize.unlearning.selectors import Threshold

from conftest import shared_data
from unlearning_fixtures import assert_same_weights, small_lab, weights

FAST = dict(lr=2e-3, micro_batch=3)  # 8 sequences → micro-batches of 3, 3, 2


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def lab(single_thread):
    tok, model, forget, unseen = small_lab()
    ma = profile(model, forget, ProfileOptions(metrics=("ma",)))["ma"].to_numpy()
    tau = acceptable_level(profile(model, unseen, ProfileOptions(metrics=("ma",)))["ma"])
    assert (ma >= 0.7).sum() >= 2 and (ma < 0.7).sum() >= 2, ma  # the fixture spans SGA's γ
    assert tau < ma.mean()
    return tok, model, forget, tau, ma


# ---------------------------------------------------------------- gradients

def _capture_first_gradient():
    """Install a global optimizer pre-step hook that copies the gradient of the first step."""
    captured: dict[str, torch.Tensor] = {}

    def hook(optimizer, args, kwargs):
        if not captured:
            for i, p in enumerate(optimizer.param_groups[0]["params"]):
                captured[i] = None if p.grad is None else p.grad.detach().clone()
    handle = register_optimizer_step_pre_hook(hook)
    return captured, handle


@pytest.mark.parametrize("fuse", ["always", "never"])
def test_sga_ascends_exactly_the_selected_sequences(lab, fuse):
    tok, model, forget, tau, ma = lab
    opts = UnlearnOptions(max_steps=1, fuse=fuse, **FAST)
    captured, handle = _capture_first_gradient()
    try:
        result = unlearn(model, forget, tau=0.0, method=MethodSpec(name="sga", selector="threshold:0.7"), options=opts)
    finally:
        handle.remove()
    # by hand: the same partition, SGA's selection by the scores of θ_0, −CE over the selected
    # sequences of each micro-batch, averaged over the micro-batches
    perm = np.random.default_rng([result.seed, 0]).permutation(len(forget))
    parts = [perm[s:s + 3] for s in range(0, len(forget), 3)]
    ref = [p for p in model.parameters()]
    for p in ref:
        p.grad = None
    chosen_all = []
    for rows in parts:
        chosen = rows[Threshold(0.7)(ma[rows], np.ones(len(rows), bool))]
        chosen_all.extend(chosen.tolist())
        ids, lengths = forget.input_ids[chosen], forget.lengths[chosen]
        logits = model(input_ids=ids, attention_mask=forget.attention_mask[chosen]).logits
        nll = losses.token_nll(logits, ids)
        mask = losses.position_mask(lengths, ids.shape[1])
        loss = -(nll * mask).sum() / mask.sum() / len(parts)
        loss.backward()
    assert 0 < len(chosen_all) < len(forget)
    # the trajectory says who got gradient in update 1
    step1 = result.at(1).set_index("id")
    assert sorted(np.flatnonzero(step1.loc[forget.ids, "selected"].to_numpy()).tolist()) == sorted(chosen_all)
    for i, p in enumerate(ref):
        # float32 sums in another order (the loop trims each batch to its longest row): tolerance
        # relative to the tensor's scale, not to each element (elements near 0 differ by ~1e-7)
        scale = p.grad.abs().max().item()
        assert torch.allclose(captured[i], p.grad, rtol=1e-4, atol=1e-4 * scale + 1e-7), i
        p.grad = None


def test_unselected_sequences_do_not_move_the_gradient(lab):
    """Changing the tokens of a sequence that is not selected leaves the step's gradient unchanged."""
    tok, model, forget, tau, ma = lab
    low = int(np.argmin(ma))  # the least memorized is never selected under threshold:0.95 (unless a maximum)
    opts = UnlearnOptions(max_steps=1, micro_batch=8, lr=1e-3)
    ga = MethodSpec(name="ga", selector="threshold:0.95")
    grads = []
    for tweak in (False, True):
        f = forget.subset(range(len(forget)))
        if tweak:
            f.input_ids[low, 5:20] = (f.input_ids[low, 5:20] + 7) % len(tok)
        captured, handle = _capture_first_gradient()
        try:
            unlearn(model, f, tau=0.0, method=ga, options=opts)
        finally:
            handle.remove()
        grads.append(captured)
    for i in grads[0]:
        assert torch.allclose(grads[0][i], grads[1][i], rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- task arithmetic in the loop

def test_ta_measures_and_returns_the_edited_model(lab):
    tok, model, forget, tau, ma = lab
    theta0 = weights(model)
    opts = dict(max_steps=3, lr=5e-4, micro_batch=3)
    runs = {c: unlearn(model, forget, tau=0.0, method=MethodSpec(name="ta", edit_coef=c, switch_below=0.9), options=UnlearnOptions(**opts))
            for c in (0.0, 1.0, -3.0)}
    # mean MA < 0.9 at the start, so TA switches at step 0 and θ_b = θ_0
    assert runs[-3.0].trajectory["phase"].unique().tolist() == ["before", "ta"]
    assert any("ga → ta" in e for e in runs[-3.0].events)
    # c = 0 measures θ_b: the MA never moves, although θ_ft was fine-tuned; the model returned is θ_0
    r0 = runs[0.0]
    assert r0.steps == 3
    for step in range(4):
        assert np.array_equal(r0.at(step)["ma"].to_numpy(), r0.at(0)["ma"].to_numpy())
    assert_same_weights(weights(r0.model), theta0)
    # the fine-tuning is the same whatever c (selection: all); c = 1 returns ≈ θ_ft
    ft = weights(runs[1.0].model)
    got = weights(runs[-3.0].model)
    assert any(not torch.equal(ft[k], theta0[k]) for k in ft)
    for k in got:
        assert torch.allclose(got[k], theta0[k] - 3.0 * (ft[k] - theta0[k]), rtol=1e-5, atol=1e-6), k
    # fine-tuning makes the forget set more likely under θ_ft, so less likely under the edited model
    assert runs[1.0].after["loss"].mean() < r0.before["loss"].mean() < runs[-3.0].after["loss"].mean()
    assert ma.mean() > runs[-3.0].after["ma"].mean()
    # and the reported MA is that of the returned model
    again = profile(runs[-3.0].model, forget, ProfileOptions(metrics=("ma",)))["ma"].to_numpy()
    assert np.allclose(again, runs[-3.0].after["ma"].to_numpy())


def test_tau_switches_phase_at_the_threshold(lab):
    tok, model, forget, tau, ma = lab
    switch = float(ma.mean()) - 0.04
    results = {reset: unlearn(model, forget, tau=0.0,
                              method=MethodSpec(name="tau", switch_below=switch, reset_optimizer=reset),
                              options=UnlearnOptions(max_steps=8, **FAST))
               for reset in (False, True)}
    steps = results[False].steps_table()
    below = steps.index[steps["mean_ma"] < switch]
    assert len(below) and below[0] < 7, steps
    s = int(steps.loc[below[0], "step"])
    assert (steps.loc[steps["step"] <= s, "phase"].isin(["before", "sga"])).all()
    assert (steps.loc[steps["step"] > s, "phase"] == "ta").all()
    assert (steps.loc[steps["step"] < s, "mean_ma"] >= switch).all()
    assert any(f"step {s}: mean MA" in e and "sga → ta" in e for e in results[False].events)
    # the optimizer state is carried over by default: resetting it changes only what follows the switch
    a, b = results[False].trajectory, results[True].trajectory
    upto = a["step"] <= s
    pd.testing.assert_frame_equal(a[upto].reset_index(drop=True), b[b["step"] <= s].reset_index(drop=True))
    assert not np.array_equal(a[a["step"] == s + 1]["ma"].to_numpy(), b[b["step"] == s + 1]["ma"].to_numpy()) or \
        not np.array_equal(a[a["step"] == s + 1]["loss"].to_numpy(), b[b["step"] == s + 1]["loss"].to_numpy())


# ---------------------------------------------------------------- stop rules

def test_mean_stop_rule(lab):
    tok, model, forget, tau, ma = lab
    r = unlearn(model, forget, tau=tau, method="ga", stop="mean", options=UnlearnOptions(max_steps=40, **FAST))
    steps = r.steps_table()
    assert r.converged and 0 < r.steps < 40
    assert steps["mean_ma"].iloc[-1] < tau
    assert (steps["mean_ma"].iloc[:-1] >= tau).all()
    assert "mean MA" in r.stop_reason
    # GA gives every sequence gradient at every step
    assert r.trajectory.loc[r.trajectory["step"] > 0, "selected"].all()


def test_per_sequence_stop_rule_and_in_band_sequences_get_no_gradient(lab):
    tok, model, forget, tau, ma = lab
    band = Band(0.15, 0.60)
    r = unlearn(model, forget, tau=tau, method="ga", stop="per-sequence", band=band,
                options=UnlearnOptions(max_steps=40, **FAST))
    assert r.converged
    wide_ma = r.trajectory.pivot(index="step", columns="id", values="ma")
    wide_sel = r.trajectory.pivot(index="step", columns="id", values="selected")
    above = (wide_ma >= band.hi).sum(axis=1)
    assert above.iloc[-1] == 0 and (above.iloc[:-1] > 0).all()
    # a sequence gets gradient in update k+1 exactly when it was at or above the band's top at step k
    for k in wide_ma.index[:-1]:
        assert ((wide_ma.loc[k] >= band.hi) == wide_sel.loc[k + 1].astype(bool)).all(), k
    assert 0 < r.trajectory["selected"].sum() < len(forget) * r.steps  # in-band ones were spared
    # the paper's rule on the same run: it stops only once the mean is below τ, later
    m = unlearn(model, forget, tau=tau, method="ga", stop="mean", band=band,
                options=UnlearnOptions(max_steps=40, **FAST))
    assert m.steps >= r.steps


def test_stop_before_any_step_when_already_below(lab):
    tok, model, forget, tau, ma = lab
    theta0 = weights(model)
    r = unlearn(model, forget, tau=1.0, method="sga", options=UnlearnOptions(**FAST))
    assert r.steps == 0 and r.converged
    assert_same_weights(weights(r.model), theta0)
    assert_same_weights(weights(model), theta0)  # copy=True: the caller's model is untouched


# ---------------------------------------------------------------- NaN roll-back

@objective("_test_nan_at_update_3")
def _nan_at_update_3(mb, ctx):
    loss = losses.ascent(mb.nll, mb.mask, mb.weights)
    return loss * float("nan") if mb.step == 2 else loss  # the update from step 2 to 3


def test_nan_loss_stops_with_the_last_good_weights(lab):
    tok, model, forget, tau, ma = lab
    poisoned = Method("nan-ga", "GA with a NaN loss in update 3", "test", (Phase("ga", "_test_nan_at_update_3"),))
    r = unlearn(model, forget, tau=0.0, method=poisoned, options=UnlearnOptions(max_steps=10, **FAST))
    clean = unlearn(model, forget, tau=0.0, method="ga", options=UnlearnOptions(max_steps=2, **FAST))
    assert r.rolled_back and not r.converged and r.steps == 2
    assert "non-finite loss" in r.stop_reason
    assert_same_weights(weights(r.model), weights(clean.model))
    pd.testing.assert_frame_equal(r.trajectory, clean.trajectory)


def test_non_finite_outputs_roll_back_to_the_last_good_weights(lab):
    tok, model, forget, tau, ma = lab
    m = small_lab()[1]
    state = {"poison": False}
    m.lm_head.register_forward_hook(lambda mod, inp, out: out * float("nan") if state["poison"] else out)

    def on_step(info):
        if info.step == 3:
            state["poison"] = True  # from now on the model outputs NaN, as if update 4 had broken it

    r = unlearn(m, forget, tau=0.0, method="ga", options=UnlearnOptions(max_steps=10, **FAST), on_step=on_step,
                copy=False)
    clean = unlearn(model, forget, tau=0.0, method="ga", options=UnlearnOptions(max_steps=3, **FAST))
    assert r.rolled_back and r.steps == 3 and "rolled back to the weights of step 3" in r.stop_reason
    assert_same_weights(weights(r.model), weights(clean.model))


# ---------------------------------------------------------------- resume

def test_interrupted_run_resumes_with_identical_numbers(lab, tmp_path):
    tok, model, forget, tau, ma = lab
    opts = UnlearnOptions(max_steps=7, checkpoint_every=2, **FAST)
    tau_method = MethodSpec(name="tau", switch_below=float(ma.mean()) - 0.03)
    full = unlearn(model, forget, tau=0.0, method=tau_method, options=opts)
    assert full.trajectory["phase"].eq("ta").any() and full.trajectory["phase"].eq("sga").any()

    def interrupt(info):
        if info.step == 5:
            raise KeyboardInterrupt
    ck = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        unlearn(model, forget, tau=0.0, method=tau_method, options=opts, checkpoint_dir=ck, on_step=interrupt)
    resumed = unlearn(model, forget, tau=0.0, method=tau_method, options=opts, checkpoint_dir=ck)
    assert resumed.resumed_from == 4  # the last checkpoint before the interruption at step 5
    pd.testing.assert_frame_equal(resumed.trajectory, full.trajectory)
    assert_same_weights(weights(resumed.model), weights(full.model))
    assert resumed.stop_reason == full.stop_reason
    # a checkpoint of another run is refused, not silently mixed in
    from unmemorize.errors import UserError
    with pytest.raises(UserError):
        unlearn(model, forget, tau=0.0, method="ga", options=opts, checkpoint_dir=ck)


def test_same_seed_same_numbers_other_seed_other_partition(lab):
    tok, model, forget, tau, ma = lab
    a = unlearn(model, forget, tau=0.0, method="sga", options=UnlearnOptions(max_steps=3, **FAST))
    b = unlearn(model, forget, tau=0.0, method="sga", options=UnlearnOptions(max_steps=3, **FAST))
    c = unlearn(model, forget, tau=0.0, method="sga", seed=7, options=UnlearnOptions(max_steps=3, **FAST))
    pd.testing.assert_frame_equal(a.trajectory, b.trajectory)
    assert not a.trajectory["ma"].equals(c.trajectory["ma"])


# ---------------------------------------------------------------- the other methods

def test_dpd_lowers_ma_under_sampling_without_training(lab):
    tok, model, forget, tau, ma = lab
    theta0 = weights(model)
    r = unlearn(model, forget, tau=tau, method=MethodSpec(name="dpd", dpd_lambda=0.2))
    assert r.steps == 0 and np.allclose(r.before["ma"].to_numpy(), ma)
    assert r.after["ma"].mean() < ma.mean() - 0.2
    assert_same_weights(weights(r.model), theta0)
    # λ = 1 and top-1 sampling is greedy decoding: exactly the greedy MA
    g = unlearn(model, forget, tau=tau, method=MethodSpec(name="dpd", dpd_lambda=1.0, dpd_top_k=1))
    assert np.array_equal(g.after["ma"].to_numpy(), g.before["ma"].to_numpy())


@pytest.mark.shared
def test_npo_and_mismatch_with_truthfulqa(lab):
    tok, model, forget, tau, ma = lab
    retain = load_retain(shared_data("eval", "truthfulqa", "TruthfulQA.csv"), tok, length=40)
    assert retain.kind == "truthfulqa" and len(retain.normal) > 800 and len(retain.answers) > 1000
    assert tok.decode(retain.normal.input_ids[0, :12]).startswith("### Question:")
    for name in ("npo", "ga+mismatch"):
        r = unlearn(model, forget, tau=0.0, method=name, retain=retain,
                    options=UnlearnOptions(max_steps=2, lr=2e-3, micro_batch=4))
        assert r.steps == 2 and not r.rolled_back, name
        assert r.after["loss"].mean() > r.before["loss"].mean(), name  # the forget set is less likely


def test_methods_that_need_retain_data_say_so(lab):
    tok, model, forget, tau, ma = lab
    from unmemorize.errors import UserError
    with pytest.raises(UserError, match="retain"):
        unlearn(model, forget, tau=tau, method="ga+mismatch")
    with pytest.raises(UserError, match="stop rule"):
        unlearn(model, forget, tau=tau, method="ga", stop="median")


def test_selective_npo_with_the_threshold_selector(lab):
    tok, model, forget, tau, ma = lab
    r = unlearn(model, forget, tau=0.0, method=MethodSpec(name="npo", selector="threshold:0.7"),
                options=UnlearnOptions(max_steps=1, **FAST))
    sel = r.at(1).set_index("id").loc[forget.ids, "selected"].to_numpy()
    assert sel[ma >= 0.7].all() and sel.sum() < len(forget)
    assert METHODS["npo"].phases[0].selector == "all"


# ---------------------------------------------------------------- the command

def test_cli_run_outputs_and_untouched_input_model(lab, tmp_path):
    import typer
    from typer.testing import CliRunner
    from transformers import AutoModelForCausalLM

    from unmemorize.commands import unlearn as unlearn_cmd
    from unmemorize.models import save_model

    tok, model, forget, tau, ma = lab
    model_dir = save_model(model, tok, tmp_path / "model")
    forget_file = tmp_path / "forget.jsonl"
    forget_file.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(forget.ids, forget.texts)))
    before = {p.name: sha256_file(p) for p in model_dir.iterdir()}
    app = typer.Typer()
    unlearn_cmd.register(app)
    app.command("noop", hidden=True)(lambda: None)  # a second command keeps typer's subcommand syntax
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["unlearn", "--model", str(model_dir), "--forget", str(forget_file),
                                   "--tau", f"{tau:.4f}", "--method", "sga", "--stop", "per-sequence",
                                   "--lr", "2e-3", "--max-steps", "4", "--micro-batch", "3", "--length", "40",
                                   "--save", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert {p.name: sha256_file(p) for p in model_dir.iterdir()} == before
    for name in ("manifest.json", "record.json", "profile_before.parquet", "profile_after.parquet",
                 "trajectory.parquet", "trajectory.csv", "steps.csv", "trajectory.png", "histogram.png", "report.html"):
        assert (out / name).is_file(), name
    traj = pd.read_parquet(out / "trajectory.parquet")
    assert {"step", "id", "ma", "loss", "selected", "phase"} <= set(traj.columns)
    assert len(traj) == len(forget) * (traj["step"].max() + 1)
    summary = read_record(out).unlearning
    assert summary.stop_rule == "per-sequence" and summary.method == "sga"
    assert "per-sequence" in (out / "report.html").read_text()
    saved = AutoModelForCausalLM.from_pretrained(out / "model")
    after = pd.read_parquet(out / "profile_after.parquet").set_index("id")
    again = profile(saved, forget, ProfileOptions(metrics=("ma",))).set_index("id")
    assert np.allclose(again.loc[after.index, "ma"], after["ma"])
    assert not list(tmp_path.glob(".run.checkpoint*"))  # removed once the run is complete
    bad = CliRunner().invoke(app, ["unlearn", "--model", str(model_dir), "--forget", str(forget_file),
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "--reference" in str(bad.exception)


def test_unlearn_passes_each_non_member_once_per_model(lab, tmp_path, monkeypatch):
    """τ's pass over the reference set (the original's MA) and the after-state's MA pass also give the attacks
    their non-members' token statistics, so each model passes each non-member once: τ is the mean of the
    same MA a profile pass gives, and the attacks' scores are those of their own pass. Under parity (MA
    counts padding as the original code did; the attacks never do) the passes stay apart."""
    import typer
    from typer.testing import CliRunner

    import unmemorize.attacks.tokens as tokens
    import unmemorize.memorization as memorization
    from unmemorize.attacks import AttackOptions, run_attacks
    from unmemorize.commands import unlearn as unlearn_cmd
    from unmemorize.data import load_sequences
    from unmemorize.models import save_model
    from unlearning_fixtures import records

    tok, model, forget, tau, ma = lab
    model_dir = save_model(model, tok, tmp_path / "model")
    forget_file, ref_file = tmp_path / "forget.jsonl", tmp_path / "unseen.jsonl"
    forget_file.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(forget.ids, forget.texts)))
    n_ref = len(forget) + 3  # row counts tell the two sets' passes apart
    ref_file.write_text("".join(json.dumps({"id": f"u{i}", "text": t}) + "\n"
                                for i, t in enumerate(records(n_ref, seed=8))))
    made, real_stats, real_greedy = [], tokens._token_statistics, memorization.greedy_pass
    monkeypatch.setattr(tokens, "_token_statistics", lambda m, seqs, **kw: made.append(
        ("statistics", kw["label"], len(seqs))) or real_stats(m, seqs, **kw))
    monkeypatch.setattr(memorization, "greedy_pass", lambda m, seqs, *a, **kw: made.append(
        ("ma", "", len(seqs))) or real_greedy(m, seqs, *a, **kw))
    app = typer.Typer()
    unlearn_cmd.register(app)
    app.command("noop", hidden=True)(lambda: None)
    args = ["unlearn", "--model", str(model_dir), "--forget", str(forget_file), "--reference", str(ref_file),
            "--method", "ga", "--lr", "2e-3", "--max-steps", "2", "--micro-batch", "4", "--length", "40",
            "--attacks", "loss,threshold", "--match-by", "none", "--bootstrap", "0", "--checkpoint-every", "0"]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    on_reference = [m for m in made if m[2] == n_ref]
    assert on_reference == [("statistics", "on the reference set", n_ref)] * 2, made  # original, then unlearned
    ref = load_sequences(ref_file, tok, 40)
    by_profile = profile(model, ref, ProfileOptions(metrics=("ma",), batch_size=4))["ma"].to_numpy()
    record = read_record(tmp_path / "run")
    assert record.tau == pytest.approx(acceptable_level(by_profile), abs=1e-12)
    own = run_attacks(model, tok, forget, ref, options=AttackOptions(names=("loss",), bootstrap=0, match_by=None))
    before = pd.read_parquet(tmp_path / "run" / "before_attack_scores.parquet")
    pd.testing.assert_series_equal(before["loss"].reset_index(drop=True), own.scores["loss"].reset_index(drop=True),
                                   atol=1e-6)
    made.clear()
    res = CliRunner().invoke(app, args + ["--parity", "--out", str(tmp_path / "parity")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert sorted(m for m in made if m[2] == n_ref) == [("ma", "", n_ref)] * 2 + [("statistics", "reference", n_ref)] * 2


def test_cli_runs_attacks_on_original_and_unlearned(lab, tmp_path):
    """`unlearn` answers "can an attacker tell?" by default: the same attacks before and after, the
    reference attack only after (it compares with the original, reloaded from its untouched files)."""
    import typer
    from typer.testing import CliRunner

    from unmemorize.commands import unlearn as unlearn_cmd
    from unmemorize.models import save_model
    from unlearning_fixtures import records

    tok, model, forget, tau, ma = lab
    model_dir = save_model(model, tok, tmp_path / "model")
    forget_file, ref_file = tmp_path / "forget.jsonl", tmp_path / "unseen.jsonl"
    forget_file.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(forget.ids, forget.texts)))
    ref_file.write_text("".join(json.dumps({"id": f"u{i}", "text": t}) + "\n" for i, t in enumerate(records(8, seed=8))))
    app = typer.Typer()
    unlearn_cmd.register(app)
    app.command("noop", hidden=True)(lambda: None)
    out = tmp_path / "run"
    args = ["unlearn", "--model", str(model_dir), "--forget", str(forget_file), "--reference", str(ref_file),
            "--method", "ga", "--lr", "2e-3", "--max-steps", "3", "--micro-batch", "4", "--length", "40",
            "--attacks", "loss,threshold,reference,miau", "--perturber", "words", "--neighbours", "2",
            "--checkpoint-every", "0", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    attacks = read_record(out).attacks
    assert set(attacks.before) == {"loss", "threshold", "miau"}
    assert set(attacks.after) == {"loss", "threshold", "miau", "reference"}
    for label, prefix in (("before", "before_"), ("after", "")):
        assert (out / f"{prefix}attacks.json").is_file() and (out / f"{prefix}roc.png").is_file()
        for name, row in getattr(attacks, label).items():
            assert 0.0 <= row.auc.value <= 1.0, (label, name)
    # the original model's loss attack separates the memorized forget set from unseen records
    assert attacks.before["loss"].auc.value > 0.6
    comparison = pd.read_csv(out / "attacks_comparison.csv")
    assert list(comparison["attack"]) == ["miau", "threshold", "loss", "reference"]
    assert np.isnan(comparison.set_index("attack").loc["reference", "AUC original"])
    assert "Original against unlearned" in (out / "report.html").read_text()
    # switched off, and impossible without non-members: no attack files, a note instead of an error
    res = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "off")] + ["--no-attacks"])
    assert res.exit_code == 0 and not list((tmp_path / "off").glob("*attacks*"))
    no_ref = [a for a in args if a not in ("--reference", str(ref_file))] + ["--tau", f"{tau:.4f}"]
    no_ref[no_ref.index("--out") + 1] = str(tmp_path / "tau")
    res = CliRunner().invoke(app, no_ref)
    assert res.exit_code == 0 and "need non-members" in res.output
    bad = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "bad")] + ["--attacks", "nope"])
    assert bad.exit_code != 0 and "unknown attack 'nope'" in str(bad.exception)
    # --refill-model: a third model refills MIAU's neighbours before and after (recorded by fingerprint)
    from unmemorize.models import load_model
    from unmemorize.tiny import tiny_model

    other_dir = save_model(tiny_model("gpt2", vocab_size=len(tok), eos_id=tok.eos_token_id, n_layer=1, d_model=32,
                                      seed=5), tok, tmp_path / "refill")
    refill_args = args[:-1] + [str(tmp_path / "refill_run")] + ["--attacks", "miau", "--perturber", "lm",
                                                                  "--refill-model", str(other_dir)]
    res = CliRunner().invoke(app, refill_args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    want = load_model(str(other_dir)).fingerprint
    for prefix in ("before_", ""):
        miau = json.loads((tmp_path / "refill_run" / f"{prefix}attacks.json").read_text())["attacks"]["miau"]
        assert miau["summary"]["perturber"]["model"] == want != load_model(str(model_dir)).fingerprint
    manifest = json.loads((tmp_path / "refill_run" / "manifest.json").read_text())
    assert manifest["inputs"]["refill_model"]["path"] == str(other_dir)
    assert manifest["options"]["attacks"]["names"] == ["miau"] and manifest["options"]["attacks"]["perturber"] == "lm"
    assert json.loads((out / "manifest.json").read_text())["inputs"]["refill_model"] is None  # the original refilled
    bad = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "bad2")] + ["--refill-model", str(other_dir)])
    assert bad.exit_code != 0 and "lm perturber" in str(bad.exception) and not (tmp_path / "bad2").exists()
