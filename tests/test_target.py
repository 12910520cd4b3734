"""Method ``target`` (docs/method.md §4.13): each sequence to its own target ± ε. Ascended while above,
frozen inside, pulled back below, checked against a trajectory computed by hand on a tiny model; the
constants relative to τ; the per-sequence targets of the recipe (τ per group, a reference model)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from unmemorize.errors import UserError
from unmemorize.thresholds import Band, parse_level, resolve_level, tau_per_sequence
from unmemorize.unlearning import UnlearnOptions, unlearn
from unmemorize.unlearning import losses
from unmemorize.unlearning.methods import MethodSpec
from unmemorize.unlearning.selectors import Target, Threshold, parse_selector

from unlearning_fixtures import small_lab

EPS = 0.05


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def lab(single_thread):
    tok, model, forget, unseen = small_lab()
    return tok, model, forget, unseen


# ---------------------------------------------------------------- by hand

def _ma_by_hand(model, forget) -> np.ndarray:
    """MA_i = mean over t = 1..L_i−1 of [argmax p(· | x_<t) = x_t], one sequence at a time."""
    out = []
    with torch.no_grad():
        for i in range(len(forget)):
            n = int(forget.lengths[i])
            ids = forget.input_ids[i:i + 1, :n]
            pred = model(input_ids=ids).logits[0, :-1].argmax(-1)
            out.append(int((pred == ids[0, 1:]).sum()) / (n - 1))  # exact: a level at a boundary stays there
    return np.array(out)


def _loss_by_hand(model, forget, up: list[int], down: list[int], positions=None) -> torch.Tensor:
    """− token-mean NLL over the rows to ascend (over their tokens t with ``positions[i, t]`` when given)
    + token-mean NLL over the rows to pull back (every token)."""
    total = torch.zeros(())
    for rows, sign in ((up, -1.0), (down, 1.0)):
        if not rows:
            continue
        nll_sum, count = torch.zeros(()), 0
        for i in rows:
            n = int(forget.lengths[i])
            ids = forget.input_ids[i:i + 1, :n]
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            for t in range(1, n):
                if sign < 0 and positions is not None and not bool(positions[i, t]):
                    continue
                nll_sum = nll_sum - logp[t - 1, ids[0, t]]
                count += 1
        total = total + sign * nll_sum / max(count, 1)
    return total


def _target_by_hand(model, forget, targets, steps, lr, micro_batch, seed=42, positions=None):
    """The method's trajectory, written out: targets lowered to the start, the stop rule, the seeded
    partition of each step, the directions, one Adam step on the mean over contributing micro-batches."""
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.98), eps=1e-8)
    t = np.asarray(targets, dtype=float).copy()
    mas, directions = [], []
    for k in range(steps + 1):
        g = _ma_by_hand(model, forget)
        if k == 0:
            t = np.minimum(t, g)
        mas.append(g)
        if np.all(np.abs(g - t) <= EPS) or k == steps:
            break
        d = np.where(g > t + EPS, 1, np.where(g < t - EPS, -1, 0))
        directions.append(d)
        perm = np.random.default_rng([seed, k]).permutation(len(forget))
        parts = [perm[s:s + micro_batch] for s in range(0, len(forget), micro_batch)]
        contributing = 0
        for rows in parts:
            up = [int(i) for i in rows if d[i] > 0]
            down = [int(i) for i in rows if d[i] < 0]
            if up or down:
                _loss_by_hand(model, forget, up, down, positions).backward()
                contributing += 1
        for p in params:
            if p.grad is not None:
                p.grad /= contributing
        opt.step()
        opt.zero_grad(set_to_none=True)
    return np.array(mas), directions, t, model


def test_ascend_freeze_and_pull_back_match_a_hand_computed_trajectory(lab):
    tok, model, forget, _ = lab
    targets = np.full(len(forget), 0.55)
    steps, lr, mb = 6, 4e-3, 3
    spec = MethodSpec(name="target", retain_weight=0.0, epsilon=EPS)
    r = unlearn(model, forget, tau=0.55, method=spec, options=UnlearnOptions(max_steps=steps, lr=lr, micro_batch=mb),
                targets=targets)
    mas, dirs, t, hand = _target_by_hand(model, forget, targets, steps, lr, mb)
    wide = r.trajectory.pivot(index="step", columns="id", values="ma")[forget.ids].to_numpy()
    assert wide.shape == mas.shape
    # one token in ~40 may flip on a float-order tie; the trajectories are otherwise the same
    np.testing.assert_allclose(wide, mas, atol=0.03)
    got_dirs = r.trajectory.pivot(index="step", columns="id", values="direction")[forget.ids].to_numpy()[1:]
    np.testing.assert_array_equal(got_dirs, np.array(dirs))
    assert (got_dirs == -1).any(), "the trajectory must include a pull-back for this test to test it"
    assert (got_dirs == 1).any() and (got_dirs == 0).any()
    np.testing.assert_allclose(r.targets, t)
    # a row inside target ± ε at a measurement gets no gradient in the update that follows
    inside = np.abs(wide[:-1] - t) <= EPS
    assert not r.trajectory.pivot(index="step", columns="id", values="selected")[forget.ids].to_numpy()[1:][inside].any()
    # the updates agree (Adam divides by √v, so an element whose gradient is ~0 may step by ±lr on
    # float noise: compared as whole vectors, not element by element)
    def delta(m):
        return torch.cat([(a.detach() - b.detach()).flatten() for a, b in zip(m.parameters(), model.parameters())])

    mine, theirs = delta(r.model), delta(hand)
    assert torch.nn.functional.cosine_similarity(mine, theirs, dim=0) > 0.99
    assert (mine - theirs).norm() < 0.05 * theirs.norm()


def _memorized_by_hand(reference, forget) -> torch.Tensor:
    """[N, T]: token t of sequence i is one the reference model's greedy prediction from x_<t misses."""
    out = torch.zeros_like(forget.input_ids, dtype=torch.bool)
    with torch.no_grad():
        for i in range(len(forget)):
            n = int(forget.lengths[i])
            for t in range(1, n):
                pred = int(reference(input_ids=forget.input_ids[i:i + 1, :t]).logits[0, -1].argmax())
                out[i, t] = pred != int(forget.input_ids[i, t])
    return out


def test_ascent_on_memorized_tokens_only_matches_a_hand_computed_trajectory(lab):
    """--tokens memorized: the ascent's token mean runs over the tokens a never-seen model misses, and nothing
    else changes (selection, freezing, pull-back on every token); all positions on is the plain method."""
    from unmemorize.memorization import ProfileOptions, greedy_pass
    from unmemorize.tiny import tiny_model
    from unmemorize.unlearning.loop import memorized_positions

    tok, model, forget, _ = lab
    reference = tiny_model("gpt2", vocab_size=len(tok), eos_id=tok.eos_token_id, n_layer=2, d_model=64, n_head=2,
                           n_positions=64, seed=5)
    greedy = greedy_pass(reference, forget, ProfileOptions(metrics=("ma",)), None)[0]
    pos = memorized_positions(greedy, forget.input_ids, forget.lengths)
    by_hand = _memorized_by_hand(reference, forget)
    valid = torch.arange(forget.length)[None, :] < forget.lengths[:, None]
    assert torch.equal(pos, by_hand) and 0 < int(by_hand.sum()) < int(valid.sum()) - len(forget)
    targets = np.full(len(forget), 0.55)
    steps, lr, mb = 4, 4e-3, 3
    spec = MethodSpec(name="target", retain_weight=0.0, epsilon=EPS, tokens="memorized")
    r = unlearn(model, forget, tau=0.55, method=spec, options=UnlearnOptions(max_steps=steps, lr=lr, micro_batch=mb),
                targets=targets, ascent_positions=pos)
    mas, dirs, t, hand = _target_by_hand(model, forget, targets, steps, lr, mb, positions=by_hand)
    wide = r.trajectory.pivot(index="step", columns="id", values="ma")[forget.ids].to_numpy()
    np.testing.assert_allclose(wide, mas, atol=0.03)

    def delta(m):
        return torch.cat([(a.detach() - b.detach()).flatten() for a, b in zip(m.parameters(), model.parameters())])

    mine, theirs = delta(r.model), delta(hand)
    assert torch.nn.functional.cosine_similarity(mine, theirs, dim=0) > 0.99
    plain = _target_by_hand(model, forget, targets, steps, lr, mb)[3]  # the masked run is not the plain one
    assert torch.nn.functional.cosine_similarity(mine, delta(plain), dim=0) < 0.99
    every = unlearn(model, forget, tau=0.55, method=MethodSpec(name="target", retain_weight=0.0, epsilon=EPS),
                    options=UnlearnOptions(max_steps=2, lr=lr, micro_batch=mb), targets=targets,
                    ascent_positions=torch.ones_like(pos))
    none = unlearn(model, forget, tau=0.55, method=MethodSpec(name="target", retain_weight=0.0, epsilon=EPS),
                   options=UnlearnOptions(max_steps=2, lr=lr, micro_batch=mb), targets=targets)
    for a, b in zip(every.model.parameters(), none.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_memorized_tokens_options_are_checked(lab, tmp_path):
    from unmemorize.spec import RunSpec

    tok, model, forget, _ = lab
    with pytest.raises(UserError, match="apply to method target"):
        MethodSpec(name="sga", tokens="memorized")
    with pytest.raises(UserError, match="takes --loss ga"):
        MethodSpec(name="target", tokens="memorized", loss="npo")
    with pytest.raises(UserError, match="one flag per token"):
        unlearn(model, forget, tau=0.3, method="target", ascent_positions=torch.ones(2, 3, dtype=torch.bool),
                options=UnlearnOptions(max_steps=1))
    with pytest.raises(UserError, match="apply to method target, not sga"):
        unlearn(model, forget, tau=0.3, method="sga", ascent_positions=torch.ones_like(forget.input_ids, dtype=torch.bool),
                options=UnlearnOptions(max_steps=1))
    with pytest.raises(Exception, match="needs target_rule reference-model"):
        RunSpec.model_validate({"forget": {"path": str(tmp_path / "f.csv")}, "reference": str(tmp_path / "r.csv"),
                                "method": {"name": "target", "tokens": "memorized"}})


def test_a_sequence_inside_its_target_never_gets_gradient(lab):
    """Targets at each sequence's own MA: every one is inside, the run stops at step 0 untouched; and a
    row inside its target does not move the gradient of a step (its tokens can change freely)."""
    tok, model, forget, _ = lab
    g0 = _ma_by_hand(model, forget)
    r = unlearn(model, forget, tau=0.3, method=MethodSpec(name="target", retain_weight=0.0),
                options=UnlearnOptions(max_steps=5, lr=1e-3), targets=g0)
    assert r.steps == 0 and r.converged and "within ε" in r.stop_reason
    for p, q in zip(r.model.parameters(), model.parameters()):
        assert torch.equal(p, q)
    # one row inside (its target = its MA), the others ascended to 0
    inside = int(np.argmax(g0))
    t = np.zeros(len(forget))
    t[inside] = g0[inside]
    stepped = []
    for tweak in (False, True):
        f = forget.subset(range(len(forget)))
        if tweak:  # another text in that row; its target moves with its MA, so it stays inside
            f.input_ids[inside, 3:] = f.input_ids[(inside + 1) % len(f), 3:]
            t[inside] = _ma_by_hand(model, f)[inside]
        res = unlearn(model, f, tau=0.3, method=MethodSpec(name="target", retain_weight=0.0),
                      options=UnlearnOptions(max_steps=1, lr=1e-3, micro_batch=8), targets=t)
        assert not bool(res.at(1).set_index("id").loc[f.ids[inside], "selected"])
        assert res.at(1)["selected"].sum() > 0
        stepped.append([p.detach().clone() for p in res.model.parameters()])
    for a, b in zip(*stepped):  # the update does not depend on the row inside its target
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_target_with_the_retain_term_converges_every_sequence_inside(lab):
    tok, model, forget, unseen = lab
    from unmemorize.unlearning.retain import RetainData

    retain = RetainData(unseen, [], "unseen records", "text")
    r = unlearn(model, forget, tau=0.5, method="target", retain=retain,
                options=UnlearnOptions(max_steps=60, lr=3e-3, micro_batch=4))
    assert r.stop_rule == "target"
    after = r.after["ma"].to_numpy()
    if r.converged:
        assert np.all(np.abs(after - r.targets) <= EPS + 1e-12)
    else:  # the cap: say so rather than pass silently
        pytest.fail(r.stop_reason)
    assert np.all(r.targets <= 0.5 + 1e-12)


# ---------------------------------------------------------------- selectors and levels

def test_target_selector_directions():
    s = Target(0.05)
    scores = np.array([0.9, 0.52, 0.48, 0.2, np.nan, 0.9])
    eligible = np.array([True, True, True, True, True, False])
    got = s(scores, eligible, np.full(6, 0.5))
    assert got.tolist() == [1, 0, 0, -1, 0, 0]
    assert str(parse_selector("target:0.1")) == "target:0.1"
    with pytest.raises(UserError):
        parse_selector("target:1.5")


def test_relative_constants_are_the_papers_at_gpt_neos_tau():
    assert parse_level("tau+0.4") == (1.0, 0.4) and parse_level("1.2tau") == (1.2, 0.0) and parse_level(0.7) == 0.7
    assert resolve_level("tau+0.4", 0.30) == 0.7 and resolve_level("tau+0.6", 0.30) == 0.9
    assert resolve_level("tau+0.2", 0.30) == 0.5 and resolve_level("tau+0.4", 0.8) == 1.0  # clipped
    np.testing.assert_allclose(resolve_level("tau-0.15", np.array([0.3, 0.5])), [0.15, 0.35])
    assert Band("tau-0.15", "tau+0.3").at(0.30) == Band(0.15, 0.6)
    assert Band("tau-0.15", "tau+0.3").at(0.55) == Band(0.40, 0.85)
    # a relative γ per row: the same selection as the absolute one at each row's τ
    scores = np.array([0.75, 0.69, 0.95, 0.8])
    eligible = np.ones(4, bool)
    rel = Threshold("tau+0.4")(scores, eligible, np.array([0.3, 0.3, 0.5, 0.5]))
    assert rel.tolist() == [True, False, True, False]
    assert Threshold("tau+0.4")(scores[:2], eligible[:2], np.full(2, 0.3)).tolist() == \
        Threshold(0.7)(scores[:2], eligible[:2]).tolist()
    with pytest.raises(ValueError, match="relative to τ"):
        parse_level("tau*banana")


def test_tau_per_sequence_by_group():
    t, by_group, missing = tau_per_sequence(["pile-cc", "github", "arxiv"], ["Pile-CC", "Pile-CC", "Github"],
                                            [0.2, 0.4, 0.6], 0.45)
    assert by_group == {"Github": 0.6, "Pile-CC": pytest.approx(0.3)}
    np.testing.assert_allclose(t, [0.3, 0.6, 0.45])
    assert missing == ["arxiv"]


def test_target_options_are_checked(lab):
    tok, model, forget, _ = lab
    with pytest.raises(UserError, match="apply to method target"):
        MethodSpec(name="sga", epsilon=0.1)
    with pytest.raises(UserError, match="only the target objective"):
        unlearn(model, forget, tau=0.3, method=MethodSpec(name="ga", selector="target:0.05"),
                options=UnlearnOptions(max_steps=1))
    with pytest.raises(UserError, match="3 targets for 8"):
        unlearn(model, forget, tau=0.3, method="target", targets=[0.1, 0.2, 0.3], options=UnlearnOptions(max_steps=1))


# ---------------------------------------------------------------- the recipe's targets

def _saved_lab(lab, tmp_path):
    """The lab's model, a reference model that never saw F (another seed) and the forget / unseen files, on disk
    for the CLI: (model, reference, forget, unseen)."""
    from unmemorize.models import save_model
    from unmemorize.tiny import tiny_model

    from unlearning_fixtures import records

    tok, model, forget, unseen = lab
    save_model(model, tok, tmp_path / "model")
    other = tiny_model("gpt2", vocab_size=len(tok), eos_id=tok.eos_token_id, n_layer=2, d_model=64, n_head=2,
                       n_positions=64, seed=5)
    save_model(other, tok, tmp_path / "ref")
    pd.DataFrame({"id": forget.ids, "text": forget.texts}).to_csv(tmp_path / "forget.csv", index=False)
    pd.DataFrame({"id": unseen.ids, "text": records(8, seed=8)}).to_csv(tmp_path / "unseen.csv", index=False)
    return model, other, forget, unseen


def test_cli_target_with_reference_model_targets(lab, tmp_path):
    """--target-rule reference-model: each target is the reference model's MA + (τ − its τ)."""
    from typer.testing import CliRunner

    from unmemorize.cli import app
    from unmemorize.memorization import ProfileOptions, profile
    from unmemorize.record import read_record
    from unmemorize.thresholds import acceptable_level

    model, other, forget, unseen = _saved_lab(lab, tmp_path)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["unlearn", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.csv"),
                                   "--reference", str(tmp_path / "unseen.csv"), "--method", "target",
                                   "--target-rule", "reference-model", "--target-model", str(tmp_path / "ref"),
                                   "--retain-weight", "0", "--max-steps", "2", "--lr", "1e-3", "--length", "40",
                                   "--attacks", "", "--checkpoint-every", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    r = read_record(out)
    assert r.unlearning.stop_rule == "target" and "never saw the forget set" in r.targets_from
    after = pd.read_parquet(out / "profile_after.parquet").set_index("id")
    opts = ProfileOptions(metrics=("ma",))
    ma_ref = profile(other, forget, opts).set_index("id")["ma"]
    tau_ref = acceptable_level(profile(other, unseen, opts)["ma"])
    g0 = profile(model, forget, opts).set_index("id")["ma"]
    want = np.minimum(np.clip(ma_ref + (r.tau - tau_ref), 0, 1), g0)
    np.testing.assert_allclose(after.loc[forget.ids, "target"].to_numpy(), want.loc[forget.ids].to_numpy(), atol=1e-9)
    # the band is relative by default: the record holds it in numbers at this τ
    assert r.band == pytest.approx([max(0.0, r.tau - 0.15), min(1.0, r.tau + 0.3)])


def test_cli_target_on_memorized_tokens(lab, tmp_path):
    """--tokens memorized through the recipe: the reference model's missed tokens reach the loop (the record says
    what share of the tokens that is, and the spec keeps the choice)."""
    from typer.testing import CliRunner

    from unmemorize.cli import app
    from unmemorize.record import read_record

    model, other, forget, unseen = _saved_lab(lab, tmp_path)
    args = ["unlearn", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.csv"),
            "--reference", str(tmp_path / "unseen.csv"), "--method", "target", "--tokens", "memorized",
            "--retain-weight", "0", "--max-steps", "1", "--lr", "1e-3", "--length", "40", "--attacks", "",
            "--checkpoint-every", "0", "--out", str(tmp_path / "run")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and "needs target_rule reference-model" in str(res.exception)  # before any work
    assert not (tmp_path / "run").exists()
    res = CliRunner().invoke(app, args + ["--target-rule", "reference-model", "--target-model", str(tmp_path / "ref")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    r = read_record(tmp_path / "run")
    assert r.spec["method"]["tokens"] == "memorized"
    share = _memorized_by_hand(other, forget).sum().item() / int((forget.lengths - 1).sum())
    assert f"the {100 * share:.0f} % of the forget set's tokens" in " ".join(r.notes)


def test_retain_term_reads_the_frozen_models_logits_once_per_row(lab):
    """The frozen model's logits on a retain row never change: the cached retain term equals the one that
    runs the frozen model every step, and the frozen model sees each row once (within the budget)."""
    from unmemorize.unlearning.methods import MicroBatch, ObjectiveContext
    from unmemorize.unlearning.retain import RetainData

    tok, model, forget, unseen = lab
    frozen = copy.deepcopy(model).eval()
    seen = []
    hook = frozen.register_forward_hook(lambda m, a, kw, out: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    retain = RetainData(unseen, [], "unseen records", "text")
    cached = ObjectiveContext(model, 7, forget.pad_id, retain, frozen, retain_batch=3)
    plain = ObjectiveContext(model, 7, forget.pad_id, retain, frozen, retain_batch=3, reference_cache_bytes=0)
    with torch.no_grad():
        for step in range(6):
            mb = MicroBatch(step=step, index=0, input_ids=forget.input_ids[:2], lengths=forget.lengths[:2],
                            weights=torch.ones(2), logits=None)
            idx = cached.retain_pick(mb, 4)
            rows = [cached.retain_row(i) for i in idx]
            ids, lengths, logits = cached.forward(rows)
            by_hand = losses.cross_entropy_to_reference(logits, cached.forward(rows, frozen)[2],
                                                        losses.position_mask(lengths, ids.shape[1]))
            for ctx in (cached, plain):
                assert ctx.to_reference(mb, 4).item() == pytest.approx(by_hand.item(), rel=1e-5)
    hook.remove()
    drawn = {i for step in range(6) for i in cached.retain_pick(MicroBatch(step=step, index=0, input_ids=None,
                                                                          lengths=None, weights=None, logits=None), 4)}
    assert set(cached._reference_cache) == drawn and not plain._reference_cache
    # by hand 6 × 3 rows, the uncached context 6 × 3, the cached one each drawn row once
    assert sum(seen) == 6 * 3 + 6 * 3 + len(drawn)
