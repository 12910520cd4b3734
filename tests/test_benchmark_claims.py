"""The benchmarks' claim arithmetic (paper_claims.py, attack_evidence.py), checked against slow hand references.

The sentences in benchmarks/RESULTS.md say whether a claim of the paper holds; they are computed from the
recorded runs. These tests feed made-up runs with known numbers and recompute every mean, interval,
pairing and verdict by the most direct loop, so a wrong comparison cannot hide in a sentence.
"""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

T2 = 4.3026527  # t_{0.975, 2} from a printed table: three splits


def _load(name: str):
    return importlib.import_module(f"benchmarks.{name}")


@pytest.fixture(scope="module")
def ae():
    return _load("attack_evidence")


@pytest.fixture(scope="module")
def pc():
    return _load("paper_claims")


def _half(values: list[float]) -> float:
    """Half-width of the 95 % t-interval over three values, the slow way."""
    assert len(values) == 3
    m = sum(values) / 3
    s = math.sqrt(sum((v - m) ** 2 for v in values) / 2)
    return T2 * s / math.sqrt(3)


# ------------------------------------------------------------------ attack_evidence.py

AUC = {  # attack -> method -> AUC per split 0, 1, 2
    # GA's first split is below chance: leakage counts the flipped score (0.70)
    "miau": {"ga": [0.30, 0.80, 0.75], "sga": [0.60, 0.62, 0.58], "tau": [0.55, 0.65, 0.40]},
    "loss": {"ga": [0.90, 0.91, 0.92], "sga": [0.60, 0.61, 0.62], "tau": [0.60, 0.61, 0.62]},
    "zlib": {"ga": [0.60, 0.60, 0.61], "sga": [0.70, 0.72, 0.74], "tau": [0.50, 0.50, 0.50]},
    "min-k": {"ga": [0.60, 0.70, 0.50], "sga": [0.65, 0.60, 0.55], "tau": [0.50, 0.50, 0.50]},
}


def _attack_runs(extra_split: bool = True) -> pd.DataFrame:
    rows = []
    for split in range(3):
        for m in ("ga", "sga", "tau"):
            attacks = {a: {"auc": AUC[a][m][split], "below_chance": AUC[a][m][split] < 0.35, "tpr": {"0.01": [0.1]}}
                       for a in AUC}
            rows.append({"split": split, "stage": m, "stop": "mean", "attacks": attacks,
                         "threshold": {"forget": {"c": split + (2 if m == "ga" else 0)}}})
    if extra_split:  # split 3 ran GA and SGA only: it must not enter the paired comparison
        for m, auc in (("ga", 0.99), ("sga", 0.51)):
            rows.append({"split": 3, "stage": m, "stop": "mean", "threshold": {"forget": {"c": 9}},
                         "attacks": {a: {"auc": auc, "below_chance": False, "tpr": {}} for a in AUC}})
    return pd.DataFrame(rows)


def _reference_verdict(attack: str) -> tuple[dict, bool, tuple[float, float], bool]:
    leak = {m: [max(a, 1 - a) for a in AUC[attack][m]] for m in ("ga", "sga", "tau")}
    mean = {m: sum(v) / 3 for m, v in leak.items()}
    holds = mean["ga"] > mean["sga"] and mean["ga"] > mean["tau"]
    diffs = [g - s for g, s in zip(leak["ga"], leak["sga"])]  # paired: the same split, the same planted model
    d, h = sum(diffs) / 3, _half(diffs)
    return mean, holds, (d, h), abs(d) > h


def test_leakage_flips_below_chance(ae):
    assert ae.leakage(0.3) == pytest.approx(0.7)
    assert ae.leakage(0.8) == 0.8
    assert ae.leakage(0.5) == 0.5


@pytest.mark.parametrize("attack", list(AUC))
def test_compare_against_slow_reference(ae, attack):
    df = _attack_runs()
    sub = df[df["split"].isin([0, 1, 2])]  # claims() keeps the splits where GA, SGA and TAU all ran
    line, diff = ae._compare(sub, attack, "mean")
    mean, holds, (d, h), excludes = _reference_verdict(attack)
    assert f"GA {mean['ga']:.3f}, SGA {mean['sga']:.3f}, TAU {mean['tau']:.3f}" in line
    assert ("GA leaks more than" in line) == holds
    assert ("claim holds" in line) == holds
    assert f"the paired GA − SGA difference over 3 splits is {d:+.3f} ± {h:.3f}" in line
    assert ("which excludes 0" in line) == excludes and ("which includes 0" in line) == (not excludes)
    assert (diff.mean, diff.half, diff.n) == (pytest.approx(d), pytest.approx(h), 3) and diff.excludes_zero == excludes
    leak = {m: [max(a, 1 - a) for a in AUC[attack][m]] for m in ("ga", "sga")}
    for s in range(3):
        assert f"split {s} {leak['ga'][s]:.2f} vs {leak['sga'][s]:.2f}" in line
    # the cases cover every branch: holds and excludes 0, GA below SGA and excludes 0, includes 0
    assert {a: (_reference_verdict(a)[1], _reference_verdict(a)[3]) for a in AUC} == {
        "miau": (True, True), "loss": (True, True), "zlib": (False, True), "min-k": (False, False)}
    # an unpaired comparison would call miau 'inside the intervals'; the paired one sees it
    leak_m = {m: [max(a, 1 - a) for a in AUC["miau"][m]] for m in ("ga", "sga")}
    assert abs(sum(leak_m["ga"]) / 3 - sum(leak_m["sga"]) / 3) <= _half(leak_m["ga"]) + _half(leak_m["sga"])


def test_claims_pair_only_complete_splits(ae):
    out = ae.claims(_attack_runs(), list(AUC))
    # split 3 (GA 0.99 vs SGA 0.51) would change every mean if it were counted
    assert not any("split 3" in line for line in out)
    more = [a for a in AUC if _reference_verdict(a)[1]]
    assert f"mean stop rule: GA leaks more than both SGA and TAU on {len(more)} of {len(AUC)} attacks in the means " \
           f"({', '.join(more)})." in out
    # c(D_f): GA split + 2, SGA and TAU split → means 3, 1, 1
    assert "mean stop rule: band outliers c(D_f) GA 3.0, SGA 1.0, TAU 1.0." in out
    # the plain verdict counts the comparisons (of miau, threshold, loss, reference: here miau and loss) whose
    # paired interval excludes 0 in GA's favour at the Bonferroni level (loss: a constant gap; miau: not)
    compared = [a for a in ("miau", "threshold", "loss", "reference") if a in AUC]
    plain = next(line for line in out if line.startswith("Plainly:"))
    assert f"of the {len(compared)} paired GA-vs-SGA comparisons ({', '.join(compared)} × mean rule)" in plain
    strong = []
    for a in compared:
        _, _, (d, _), _ = _reference_verdict(a)
        leak = {m: [max(x, 1 - x) for x in AUC[a][m]] for m in ("ga", "sga")}
        diffs = [g - s_ for g, s_ in zip(leak["ga"], leak["sga"])]
        if d > 0 and abs(d) > _strict_half(diffs, len(compared)):
            strong.append(a)
    assert f"after a Bonferroni correction in {len(strong)}" in plain
    # no per-sequence runs: no per-sequence statements
    assert not any(line.startswith("per-sequence") for line in out)


def test_claims_name_tau_equal_to_sga_only_where_equal(ae):
    df = _attack_runs(extra_split=False)
    sga = df[df["stage"] == "sga"].set_index("split")["attacks"]
    for i in df.index[(df["stage"] == "tau") & (df["split"] == 1)]:
        df.at[i, "attacks"] = sga[1]
    out = ae.claims(df, list(AUC))
    assert any(line.startswith("mean stop rule: TAU gave exactly SGA's results in split 1 —") for line in out)


# ------------------------------------------------------------------ paper_claims.py

C = {  # (stop, method) -> c(D_f) per split 0, 1, 2
    ("mean", "ga"): [6, 4, 5], ("mean", "sga"): [9, 0, 5], ("mean", "ta"): [8, 7, 7], ("mean", "tau"): [9, 0, 5],
    ("per-sequence", "ga"): [0, 0, 0], ("per-sequence", "sga"): [0, 1, 0],
}
DIST = {("mean", "ga"): 1.0, ("mean", "sga"): 0.7, ("mean", "ta"): 1.6, ("mean", "tau"): 0.7,
        ("per-sequence", "ga"): 12.0, ("per-sequence", "sga"): 8.0}
DROP = {("mean", "ga"): 0.10, ("mean", "sga"): 0.07, ("mean", "ta"): 0.09, ("mean", "tau"): 0.07,
        ("per-sequence", "ga"): 0.16, ("per-sequence", "sga"): 0.13}


def _claim_runs() -> pd.DataFrame:
    rows = []
    for (stop, m), cs in C.items():
        for split, c in enumerate(cs):
            rows.append({"split": split, "method": m, "stop": stop, "c": c,
                         "distance_to_tau": DIST[(stop, m)] + split,  # per-method mean = DIST + 1
                         "reference_ma_before": 0.5, "reference_ma_after": 0.5 - DROP[(stop, m)]})
    return pd.DataFrame(rows)


def test_fewer_against_slow_reference(pc):
    df = _claim_runs()
    line = pc._fewer(df, "sga", "ga", "the paper's claim ")
    ga, sga = C[("mean", "ga")], C[("mean", "sga")]
    m_ga, m_sga = sum(ga) / 3, sum(sga) / 3  # 5.0, 4.67
    assert f"(c = {m_sga:.1f} vs {m_ga:.1f})" in line
    assert "leaves fewer outliers" in line and "the paper's claim holds in the means" in line
    diffs = [s_ - g for s_, g in zip(sga, ga)]  # SGA − GA per split: +3, −4, 0
    d, h = sum(diffs) / 3, _half(diffs)
    assert abs(d) <= h and f"the paired SGA − GA difference over 3 splits is {d:+.1f} ± {h:.1f}, which includes 0" in line
    assert "split by split (GA vs SGA): split 0 6 vs 9, split 1 4 vs 0, split 2 5 vs 5." in line
    # TA 7.3 vs TAU 4.7: fewer in the means
    line = pc._fewer(df, "tau", "ta", "")
    ta, tau = C[("mean", "ta")], C[("mean", "tau")]
    diffs = [u - a for u, a in zip(tau, ta)]
    assert (abs(sum(diffs) / 3) > _half(diffs)) == ("which excludes 0" in line)
    # GA never has fewer than SGA here
    assert "no fewer outliers" in pc._fewer(df, "ga", "sga", "x ") and "x does not hold" in pc._fewer(df, "ga", "sga", "x ")


def test_noise_is_paired_over_splits(pc):
    df = _claim_runs()
    sel = lambda m: (df["stop"] == "mean") & (df["method"] == m)  # noqa: E731
    # a constant gap of 1 outlier per split: the per-method intervals overlap, the paired one excludes 0
    df.loc[sel("ga"), "c"] = [4, 0, 6]
    df.loc[sel("sga"), "c"] = [3, -1, 5]
    assert abs(10 / 3 - 7 / 3) <= _half([4, 0, 6]) + _half([3, -1, 5])
    assert pc._noise(df, "sga", "ga") == ("; the paired SGA − GA difference over 3 splits is -1.0 ± 0.0, which "
                                          "excludes 0, and still does at the Bonferroni level for 2 comparisons "
                                          "(± 0.0): evidence at this scale")
    # differences that change sign: includes 0
    df.loc[sel("sga"), "c"] = [1, 2, 3]
    diffs = [1 - 4, 2 - 0, 3 - 6]
    d, h = sum(diffs) / 3, _half(diffs)
    assert abs(d) <= h
    assert pc._noise(df, "sga", "ga") == (f"; the paired SGA − GA difference over 3 splits is {d:+.1f} ± {h:.1f}, "
                                          "which includes 0: not evidence either way")
    # a split where one method did not run is left out of the pairs
    assert "over 2 splits" in pc._noise(df[~((df["split"] == 2) & sel("ga"))], "sga", "ga")
    one = df[df["split"] == 0]
    assert pc._noise(one, "sga", "ga") == ", but one split has no interval (not evidence either way)"


def _strict_half(values: list[float], comparisons: int) -> float:
    """Half-width at the Bonferroni level 1 − 0.05/m, two-sided, by hand (scipy's t quantile)."""
    from scipy.stats import t

    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return t.ppf(1 - 0.025 / comparisons, len(values) - 1) * sd / math.sqrt(len(values))


@pytest.mark.parametrize("diffs, survives", [([0.10, 0.12, 0.10], True), ([0.07, 0.11, 0.09], False)])
def test_paired_caveat_bonferroni(pc, diffs, survives):
    d, h, strict = sum(diffs) / 3, _half(diffs), _strict_half(diffs, 8)
    assert abs(d) > h and (abs(d) > strict) == survives  # both cases exclude 0 at 95 %
    line = pc.paired_caveat(pc.paired_difference(diffs, comparisons=8), "GA − SGA", digits=3)
    assert line.startswith(f"; the paired GA − SGA difference over 3 splits is {d:+.3f} ± {h:.3f}, which excludes 0")
    assert f"(± {strict:.3f})" in line
    assert ("and still does at the Bonferroni level for 8 comparisons" in line) == survives
    assert ("but not at the Bonferroni level for 8 comparisons" in line) == (not survives)
    assert pc.paired_caveat(pc.paired_difference(diffs), "x").endswith("excludes 0: evidence at this scale")


def test_per_sequence_price_against_slow_reference(pc):
    line = pc._per_sequence_price(_claim_runs())
    per_runs = [c for (stop, _), cs in C.items() if stop == "per-sequence" for c in cs]
    assert f"left {sum(per_runs)} sequences outside the band over all {len(per_runs)} of its runs" in line
    mean_c = [sum(cs) / 3 for (stop, _), cs in C.items() if stop == "mean"]
    assert f"(the mean rule: c = {min(mean_c):.1f}–{max(mean_c):.1f} on average per method)" in line
    dist_per = [DIST[k] + 1 for k in DIST if k[0] == "per-sequence"]
    dist_mean = [DIST[k] + 1 for k in DIST if k[0] == "mean"]
    assert f"forget set ends {min(dist_per):.1f}–{max(dist_per):.1f} MA points below τ" in line
    assert f"(the mean rule: {min(dist_mean):.1f}–{max(dist_mean):.1f})" in line
    drop_per = [100 * DROP[k] for k in DROP if k[0] == "per-sequence"]
    drop_mean = [100 * DROP[k] for k in DROP if k[0] == "mean"]
    assert f"unseen text loses {min(drop_per):.1f}–{max(drop_per):.1f} MA points" in line
    assert f"(the mean rule: {min(drop_mean):.1f}–{max(drop_mean):.1f})" in line
    # SGA overshoots τ less than GA under the per-sequence rule (9.0 vs 13.0)
    assert "overshoot τ less than GA (distance to τ: sga 9.0, ga 13.0)" in line


# ------------------------------------------------------------------ paper_table.py


def test_paper_table_config_is_valid_and_spans_the_issue_grid(tmp_path):
    """The benchmark's default command must describe a runnable grid: sizes 8 and 32, splits 0-2,
    GA/SGA/TA/TAU — validated by the same reader as `unmemorize run` (no model is loaded)."""
    import argparse

    from unmemorize.experiments import config_from_dict
    from unmemorize.experiments.grid import expand

    pt = _load("paper_table")
    args = argparse.Namespace(model="default", model_name=None, sizes=[8, 32], splits=[0, 1, 2],
                              methods=["ga", "sga", "ta", "tau"], reference_limit=100, length=200, max_steps=150,
                              micro_batch=8, neighbours=10, utility_limit=16, device=None)
    raw = pt.build_config(args)
    cfg = config_from_dict(raw, source=str(tmp_path / "paper_table.yaml"))
    runs = expand(cfg)
    assert len(runs) == 2 * 3 * 4
    assert {(r.labels["forget"], r.split, r.spec.method.name) for r in runs} == {
        (f"jang{s}", str(k), m) for s in (8, 32) for k in range(3) for m in ("ga", "sga", "ta", "tau")}
    assert cfg.training.micro_batch == 8 and all(int(r.labels["forget"][4:]) % 8 == 0 for r in runs)
    assert raw["forget"][1]["path"].endswith("lm_extraction_32_{split}.csv")
    assert raw["utility"]["limit"] == 16 and raw["attacks"]["neighbours"] == 10
    # no utility: the tasks list is emptied, not left pointing at the data
    assert pt.build_config(argparse.Namespace(**{**vars(args), "utility_limit": 0}))["utility"] == {"tasks": []}


def test_refill_comparison_pairs_runs_that_differ_only_in_the_refill(ae):
    base = {"members": 16, "neighbours": 5, "attacks": []}
    key = {**base, "attacks": ["miau"], "refill": "base"}
    miau = lambda auc: {"miau": {"auc": auc, "below_chance": False, "tpr": {}}}  # noqa: E731
    recorded = [
        {"split": 0, "stage": "before", "stop": "-", "settings": base, "attacks": miau(0.52)},
        {"split": 0, "stage": "before", "stop": "-", "settings": {**base, "neighbours": 25}, "attacks": miau(0.9)},
        {"split": 1, "stage": "before", "stop": "-", "settings": base, "attacks": miau(0.7)},
    ]
    df = pd.DataFrame([{"split": 0, "stage": "before", "stop": "-", "settings": key, "attacks": miau(0.64)},
                       {"split": 2, "stage": "before", "stop": "-", "settings": key, "attacks": miau(0.6)}])
    out = ae.refill_comparison(df, key, recorded)
    # split 0 pairs with the K = 5 run (not the K = 25 one); split 2 has no planted-refill run
    assert out == ["Split 0, before (-): MIAU AUC 0.64 with the unplanted model refilling vs 0.52 with the planted "
                   "model refilling (same members, non-members, masks and seed; only the refills differ)."]


def test_attack_evidence_k_comparison_pairs_the_same_stage_at_the_main_k(ae):
    """A rerun at the paper's K = 25 sits beside the same split, stage and stop rule at K = 5 (all else equal;
    never a run of other settings), and says whether what K cannot change came out the same."""
    base = {"members": 16, "neighbours": ae.NEIGHBOURS, "attacks": []}
    key = {**base, "neighbours": 25}

    def row(split, stage, stop, settings, miau, loss, mean_ma=None):
        return {"split": split, "stage": stage, "stop": stop, "settings": settings, "mean_ma": mean_ma, "steps": 4,
                "attacks": {"miau": {"auc": miau, "auc_ci": [miau - 0.1, miau + 0.1], "below_chance": False},
                            "loss": {"auc": loss, "auc_ci": [0, 1], "below_chance": False}}}

    recorded = [row(0, "before", "-", base, 0.52, 0.8), row(0, "ga", "mean", base, 0.30, 0.6, 0.2),
                row(1, "before", "-", base, 0.70, 0.9), row(0, "ga", "mean", {**base, "members": 32}, 0.9, 0.9, 0.1)]
    df = pd.DataFrame([row(0, "before", "-", key, 0.60, 0.8), row(0, "ga", "mean", key, 0.25, 0.6, 0.2),
                       row(1, "before", "-", key, 0.80, 0.9), row(2, "before", "-", key, 0.5, 0.5)])
    out = ae.k_comparison(df, key, recorded)
    assert out == [
        "MIAU AUC, mean over the splits run at both K, at K = 25 vs K = 5: before 0.700 vs 0.610 (2 splits), "
        "ga (mean) 0.250 vs 0.300 (1 split).",
        "The unlearning and every attack without neighbours came out the same at both K in all 3 paired stages: "
        "only MIAU's neighbours differ between the readings.",
        "Split 0, before: MIAU AUC 0.600 [0.500, 0.700] at K = 25 vs 0.520 [0.420, 0.620] at K = 5; "
        "leakage 0.600 vs 0.520.",
        "Split 0, ga (mean): MIAU AUC 0.250 [0.150, 0.350] at K = 25 vs 0.300 [0.200, 0.400] at K = 5; "
        "leakage 0.750 vs 0.700.",
        "Split 1, before: MIAU AUC 0.800 [0.700, 0.900] at K = 25 vs 0.700 [0.600, 0.800] at K = 5; "
        "leakage 0.800 vs 0.700."]
    # a stage whose attacks compared fewer non-members (the notes say so) is flagged as more than a change of K
    fewer = [{**row(0, "ga", "mean", key, 0.25, 0.6, 0.2), "notes": ["… the reference set has 16 sequences …"]}]
    assert ae.k_comparison(pd.DataFrame(fewer), key, [{**recorded[1], "notes": [
        "TPR at 0.1% FPR not reported: the reference set has 100 sequences (needs ≥ 1000)"]}])[-1].endswith(
        "leakage 0.750 vs 0.700; the attacks compared 16 non-members at K = 25 against 100 at K = 5, so the readings "
        "differ in more than K.")
    # the count recorded with the row (since the K = 25 reruns) is read before the notes
    recorded_count = [{**fewer[0], "nonmembers": 32}]
    assert ae._nonmembers(recorded_count[0]) == 32 and ae._nonmembers(fewer[0]) == 16
    assert "compared 32 non-members at K = 25 against 100" in ae.k_comparison(
        pd.DataFrame(recorded_count), key, [{**recorded[1], "notes": ["the reference set has 100 sequences"]}])[-1]
    # a stage without steps (before unlearning) reads NaN in a frame where other stages have them: not a difference
    df.loc[0, "steps"] = math.nan
    recorded[0] = {f: v for f, v in recorded[0].items() if f != "steps"}
    assert ae.k_comparison(df, key, recorded)[1].startswith("The unlearning and every attack without neighbours")
    df.loc[1, "mean_ma"] = 0.23  # the unlearning did not repeat
    assert ae.k_comparison(df, key, recorded)[1] == (
        "Between the K = 25 and the K = 5 run of a stage, the unlearning took other steps in 0 of 3 stages and the "
        "forget set's mean MA after it moved by up to 0.03; the attacks without neighbours moved by up to 0.000 in AUC "
        "(the rerun did not exactly repeat the run).")
    assert ae.k_comparison(df[df["split"] == 2], key, recorded) == []
    assert ae.section_title(SimpleNamespace(neighbours=ae.NEIGHBOURS, refill="planted")) == ae.TITLE
    assert ae.section_title(SimpleNamespace(neighbours=25, refill="planted")) == f"{ae.TITLE}, MIAU K = 25"
    assert ae.section_title(SimpleNamespace(neighbours=25, refill="base")).endswith("unplanted model, MIAU K = 25")


def _runs_frame(summaries: list[dict]) -> pd.DataFrame:
    """The shape of the report's load_runs frame: a run's labels beside its flat metrics."""
    return pd.DataFrame([{**{k: v for k, v in s.items() if k != "metrics"}, **s["metrics"]} for s in summaries])


def test_paper_table_names_every_machine_its_runs_came_from():
    """A resumed table can hold runs from several machines (the run key leaves the device out), so the
    RESULTS section counts them per device from the manifests instead of naming the last machine."""
    pt = _load("paper_table")
    gpu = {"device": "cuda", "torch_threads": 16, "versions": {"torch": "2.11.0", "python": "3.12.3"}}
    cpu = {"device": "cpu", "torch_threads": 2, "versions": {"torch": "2.13.0+cpu", "python": "3.11.7"}}
    assert pt.describe_devices([cpu, gpu, gpu]) == (
        "2 on cuda (torch 2.11.0, Python 3.12.3), 1 on cpu (torch 2.13.0+cpu, Python 3.11.7, 2 threads)")
    assert pt.describe_devices([cpu]) == "1 on cpu (torch 2.13.0+cpu, Python 3.11.7, 2 threads)"
    assert pt.describe_devices([]) == "no runs"
    assert list(pt.machines([cpu, gpu, gpu]).values()) == [2, 1]  # two machines: the section warns about seconds
    h100 = {**gpu, "device_name": "NVIDIA H100 80GB HBM3"}  # newer manifests name the card
    assert pt.describe_devices([h100]) == "1 on NVIDIA H100 80GB HBM3 (torch 2.11.0, Python 3.12.3)"


def test_paper_table_states_the_start_once_per_split():
    """The before-state line counts each (forget set, split) once although four methods share it, and
    orders forget sets by size and splits numerically."""
    pt = _load("paper_table")

    def run(forget, size, split, method, ma, c):
        return {"forget": forget, "size": size, "split": split, "method": method, "tau": 0.4,
                "metrics": {"mean_ma_before": ma, "c_before": c}}

    summaries = [run("jang32", 32, "0", "ga", 0.5, 7), run("jang8", 8, "10", "ga", 0.61, 3),
                 run("jang8", 8, "2", "ga", 0.55, 2), run("jang8", 8, "2", "sga", 0.55, 2)]
    assert pt.before_lines(_runs_frame(summaries)) == [
        "- jang8 (|D_f| = 8), splits 2, 10: mean MA before unlearning 0.550, 0.610; τ 0.400, 0.400; "
        "sequences outside the band before, c(D_f): 2, 3",
        "- jang32 (|D_f| = 32), splits 0: mean MA before unlearning 0.500; τ 0.400; "
        "sequences outside the band before, c(D_f): 7",
    ]


def test_claims_state_the_start_and_below_chance_miau(ae):
    """The before-unlearning line: mean AUC over splits per attack, strongest first, weak ones (< 0.6)
    named; the MIAU line names exactly the methods whose MIAU AUC fell below chance in some split."""
    before = {"miau": [0.50, 0.62, 0.56], "loss": [0.80, 0.90, 0.85], "zlib": [0.70, 0.60, 0.65],
              "min-k": [0.55, 0.60, 0.59]}
    rows = [{"split": s, "stage": ae.BEFORE, "stop": "-", "threshold": None,
             "attacks": {a: {"auc": v[s], "below_chance": False, "tpr": {}} for a, v in before.items()}}
            for s in range(3)]
    df = pd.concat([_attack_runs(extra_split=False), pd.DataFrame(rows)], ignore_index=True)
    out = ae.claims(df, list(AUC))
    mean = {a: sum(v) / 3 for a, v in before.items()}  # loss .85, zlib .65, min-k .58, miau .56
    assert ("Before unlearning (planted model): loss 0.85, zlib 0.65, min-k 0.58, miau 0.56; barely above chance: "
            f"miau ({mean['miau']:.2f}), min-k ({mean['min-k']:.2f}) — an attack that cannot see the planted members "
            "says little about what unlearning leaves.") in out
    # in _attack_runs only GA's split-0 MIAU (0.30) is below chance
    below = [line for line in out if "fell below chance" in line]
    assert len(below) == 1 and below[0].startswith("mean stop rule: MIAU's AUC fell below chance after ga in at least")
    df.loc[df["stage"] == "ga", "attacks"] = df.loc[df["stage"] == "ga", "attacks"].map(
        lambda a: {**a, "miau": {**a["miau"], "below_chance": False}})
    assert not any("fell below chance" in line for line in ae.claims(df, list(AUC)))


def test_paper_table_reading_against_hand_computed_values():
    """reading(): step ranges over runs, c(D_f) before once per split, c after / MIAU as means over the
    method's runs, the count of runs under chance, the accuracy range; methods in the given order."""
    pt = _load("paper_table")

    def run(split, method, steps, c_before, c, miau, acc):
        return {"forget": "jang8", "size": 8, "split": split, "method": method,
                "metrics": {"steps": steps, "c_before": c_before, "c": c, "miau_auc": miau, "average_acc_delta": acc}}

    runs = [run("0", "sga", 10, 3, 0, 0.40, 0.0), run("0", "ga", 4, 3, 1, 0.60, -0.016),
            run("1", "sga", 3, 1, 1, 0.30, 0.008), run("1", "ga", 4, 1, 0, 0.20, -0.008)]
    assert pt.reading(_runs_frame(runs), ["ga", "sga", "ta"]) == [
        "- jang8 (|D_f| = 8, 2 splits): the stop rule held after 3–10 steps (GA 4, SGA 3–10); c(D_f) 2.0 before → "
        "GA 0.5, SGA 0.5 after (means over splits); MIAU AUC after unlearning GA 0.40, SGA 0.35, under 0.5 in 3 of "
        "4 runs (the score now ranks the unlearned members below unseen text: a trace of unlearning that an "
        "attacker reads by flipping the score); average accuracy moved by -0.016 to +0.008."]


def test_paper_table_keeps_its_tables_and_plots_in_the_repo(tmp_path, monkeypatch):
    """The report lives under the ignored runs/ folder; the CSVs and before/after plots that RESULTS.md
    cites are copied into benchmarks/results/, smaller forget sets first, and linked."""
    pt = _load("paper_table")
    report = tmp_path / "report"
    (report / "images").mkdir(parents=True)
    (report / "results.csv").write_text("method,c\nga,1\n")
    (report / "runs.csv").write_text("method\nga\n")
    plots = {}
    for (forget, size) in (("jang32", 32), ("jang8", 8)):
        found = plots.setdefault(("M", forget, size), {})
        for kind in ("before_after", "roc"):
            found[kind] = report / "images" / f"M_{forget}_{size}_{kind}.png"
            found[kind].write_bytes(b"png")
    written = SimpleNamespace(html=report / "report.html", plots=plots)  # what write_experiment_report returns
    monkeypatch.setattr(pt, "ROOT", tmp_path / "repo")
    md = pt.keep_artifacts(written, "Smol LM/2")
    kept = tmp_path / "repo" / "benchmarks" / "results"
    assert sorted(f.name for f in kept.iterdir()) == [
        "paper_table_Smol_LM_2_jang32_32_before_after.png", "paper_table_Smol_LM_2_jang8_8_before_after.png",
        "paper_table_Smol_LM_2_results.csv", "paper_table_Smol_LM_2_runs.csv"]
    assert (kept / "paper_table_Smol_LM_2_results.csv").read_text() == "method,c\nga,1\n"
    assert md.index("jang8_8_before_after") < md.index("jang32_32_before_after")
    assert "`benchmarks/results/paper_table_Smol_LM_2_runs.csv`" in md


def test_paper_table_at_another_k_pairs_each_run_with_the_main_table():
    """A table at the paper's K = 25 sits beside the main one (K = 10): each run paired with the kept run of
    the same forget set, split, method and stop rule (a split read back from CSV as a number still pairs), MIAU
    means over the paired splits by hand, and a verdict on whether the unlearning repeated."""
    pt = _load("paper_table")
    cols = ["forget", "size", "split", "method", "stop", "steps", "mean_ma", "miau_auc", "loss_auc", "reference_auc"]

    def frame(rows):
        return pd.DataFrame(rows, columns=cols)

    main = frame([["jang8", 8, 0, "ga", "mean", 4, 0.38, 0.30, 0.18, 1.0],
                  ["jang8", 8, 1, "ga", "mean", 1, 0.40, 0.22, 0.47, 1.0],
                  ["jang8", 8, 0, "sga", "mean", 10, 0.40, 0.39, 0.26, 0.85],
                  ["jang32", 32, 0, "ga", "mean", 3, 0.39, 0.26, 0.38, 0.99],
                  ["jang8", 8, 0, "ga", "per-sequence", 9, 0.30, 0.90, 0.90, 0.9]])  # another stop rule: no partner
    runs = frame([["jang32", 32, "0", "ga", "mean", 3, 0.39, 0.52, 0.38, 0.99],
                  ["jang8", 8, "0", "ga", "mean", 4, 0.38, 0.40, 0.18, 1.0],
                  ["jang8", 8, "1", "ga", "mean", 1, 0.40, 0.20, 0.47, 1.0],
                  ["jang8", 8, "0", "sga", "mean", 10, 0.40, 0.45, 0.26, 0.85],
                  ["jang8", 8, "2", "ga", "mean", 2, 0.41, 0.10, 0.20, 1.0]])  # split 2 not in the main table
    out = pt.k_comparison(runs, main, 25)
    ga8, ga8_main = (0.40 + 0.20) / 2, (0.30 + 0.22) / 2
    assert out == [
        f"- jang8: MIAU AUC after unlearning, mean over the splits run at both K, at K = 25 vs K = 10: GA {ga8:.3f} vs "
        f"{ga8_main:.3f} (2 splits), SGA 0.450 vs 0.390 (1 split); under 0.5 in 3 vs 3 of 3 runs.",
        "- jang32: MIAU AUC after unlearning, mean over the splits run at both K, at K = 25 vs K = 10: GA 0.520 vs "
        "0.260 (1 split); under 0.5 in 0 vs 1 of 1 runs.",
        "- The unlearning and the attacks without neighbours (loss, reference) came out the same at both K in all 4 "
        "paired runs: only MIAU's neighbours differ between the readings."]
    runs.loc[1, ["steps", "mean_ma"]] = [5, 0.35]  # the GA run of split 0 did not repeat
    runs.loc[3, "reference_auc"] = 0.80
    assert pt.k_comparison(runs, main, 25)[-1] == (
        "- Between the K = 25 and the K = 10 run, the unlearning took other steps in 1 of 4 runs and the forget set's "
        "mean MA after it moved by up to 0.030; the attacks without neighbours (loss, reference) moved by up to 0.050 "
        "in AUC (the rerun did not exactly repeat the run, so the readings differ in more than K).")
    assert pt.k_comparison(runs, None, 25) == [] and pt.k_comparison(runs[runs["split"] == "2"], main, 25) == []
    # never over the main section or its kept files
    assert pt.section_title("M", pt.NEIGHBOURS) == "Paper table: M on Jang's forget sets"
    assert pt.section_title("M", 25) == "Paper table: M on Jang's forget sets, MIAU K = 25"
    assert pt.artifact_stem("Smol LM/2", pt.NEIGHBOURS) == "paper_table_Smol_LM_2"
    assert pt.artifact_stem("Smol LM/2", 25) == "paper_table_Smol_LM_2_k25"


def test_defaults_reading_is_computed_from_the_recorded_values():
    """bench_defaults: within/over each goal, the × bare ratio and the stages come from the recorded numbers."""
    bd = _load("bench_defaults")
    res = {"split": 0, "threads": 2, "date": "2026-12-01",
           "audit": {"command": "unmemorize audit --model default", "seconds": 250.0, "sequences": 96,
                     "bare_seconds": 50.0, "el_computed": 3, "extractable_by_ma": 3, "band_hi": 0.8123,
                     "goal_s": 300.0},
           "unlearn": {"command": "unmemorize unlearn", "seconds": 700.0, "timings": {"inputs": 20.0, "before": 300.0,
                                                                                   "unlearn": 100.0, "after": 250.0},
                       "plan": "attack plan: MIAU K = 9 (CPU), ≈ 7 min", "plan_seconds": 420.0, "method": "sga",
                       "steps": 4, "sequences": 40, "bare_seconds": 20.0, "goal_s": 600.0}}
    text = bd.render(res)
    assert "| 250 | 300 | yes | 50.0 | 5.0 |" in text and "| 700 | 600 | no | 20.0 | 35.0 |" in text
    assert "took 250 s (within the 5-minute goal), 5.0× a bare forward pass over the same 96 sequences" in text
    assert "default audit of 32 sequences" in text and "EL₁₀ was decoded for 3 sequence(s); 3 had MA" in text
    assert "took 700 s (over the 10-minute goal)" in text and "took 550 s against the plans' 420 s (before and after)" in text


def test_attack_battery_reading_is_computed_from_the_recorded_values():
    """bench_attacks: each perturber's × bare, the refill in sequence passes and the verdict on the 2× goal."""
    ba = _load("bench_attacks")
    times = {"bare": 100.0, "lm": 250.0, "lm_neighbours": 150.0, "lm-independent": 150.0,
             "lm-independent_neighbours": 45.0}

    def results(auc):
        iv = SimpleNamespace(value=auc, low=auc - 0.1, high=auc + 0.1)
        return SimpleNamespace(attacks={"miau": SimpleNamespace(evaluation=SimpleNamespace(auc=iv))})

    runs = {"lm": ba.perturber_run(times, "lm", 4, 9, results(0.75)),
            "lm-independent": ba.perturber_run(times, "lm-independent", 4, 9, results(0.5))}
    # 4 sequences × 10 passes in 100 s: 2.5 s a pass; 36 neighbours made in 150 s = 60 passes → 1.667 each
    assert runs["lm"]["refill_passes_per_neighbour"] == pytest.approx(150 / 2.5 / 36)
    assert runs["lm"]["ratio_to_bare"] == 2.5 and runs["lm"]["neighbours_share"] == pytest.approx(0.6)
    res = {"model": "m", "parameters": 1e6, "device": "cpu", "torch_threads": 2, "load_before": 0.1, "load_after": 1.0,
           "members": 2, "nonmembers": 2, "data": {"members": "a.csv", "nonmembers": "b.csv"}, "length": 200, "k": 9,
           "bare_neighbours_of": "lm", "sequences_scored": 40, "refill_schedule": "lockstep", "argv": "--x",
           "seconds": times, "runs": runs, "auto_plan": {"line": "attack plan: …"}}
    text = ba.render(res)
    assert "| ours, `--perturber lm` (schedule lockstep) | 250.0 | 2.50 | 150.0 | 1.67 |" in text
    assert "| ours, `--perturber lm-independent` | 150.0 | 1.50 | 45.0 | 0.50 |" in text
    assert "`lm`: the battery took **2.50×** its bare forward passes, over the goal" in text
    assert "`lm-independent`: the battery took **1.50×** its bare forward passes, within the goal" in text
    assert "MIAU's AUC differs by 0.250" in text and "`lm` orders 3, `lm-independent` orders 2 of the 4" in text


def test_oracle_gap_utility_columns_against_hand_computed_values():
    """acc Δ = after − before and after − oracle's, in points, only over runs measured under the same settings;
    runs recorded without utility show – and the oracle's own distance from the planted model is read out."""
    og = _load("oracle_gap")
    settings = {"tasks": ["classification"], "limit": 32}

    def row(split, method, before, after, oracle, utility=settings):
        base = {"split": split, "method": method, "stop": "mean", "c": 0, "oracle_c": 1, "ma_gap": 0.1,
                "ma_gap_max": 0.2, "ks_p": 0.5, "attacks": {}, "retain_before": 0.8, "retain_after": 0.7,
                "unseen_before": 0.5, "unseen_after": 0.45, "steps": 5, "converged": True}
        if utility is not None:
            base["utility"] = {"settings": utility, "before": {"average_acc": before},
                               "after": {"average_acc": after}, "oracle": {"average_acc": oracle}}
        return base

    rows = [row(0, "ga", 0.50, 0.45, 0.49), row(1, "ga", 0.40, 0.41, 0.43),
            row(0, "sga", 0.50, 0.48, 0.49, utility=None), row(1, "sga", 0.4, 0.3, 0.4, {"tasks": ["x"], "limit": 2})]
    assert og.recorded_utility(rows) == {"tasks": ["x"], "limit": 2}  # the last recorded settings
    assert og.recorded_utility(rows[:3]) == settings
    df = pd.DataFrame(rows)
    lines = og.table(df, [], settings).splitlines()
    assert "acc Δ (runs)" in lines[0] and "acc − oracle's" in lines[0]
    ga = [c.strip() for c in lines[2].split("|")[1:-1]]
    deltas, vs_oracle = [-5.0, 1.0], [-4.0, -2.0]  # (0.45 − 0.50), (0.41 − 0.40); (0.45 − 0.49), (0.41 − 0.43)
    assert ga[-3] == f"{sum(deltas) / 2:.1f} ± {_half2(deltas):.1f} (2)"
    assert ga[-2] == f"{sum(vs_oracle) / 2:.1f} ± {_half2(vs_oracle):.1f}"
    sga = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert sga[-3] == "–" and sga[-2] == "–"  # one run without utility, one under other settings
    assert "acc" not in og.table(df, [], None)
    text = og.utility_reading(df, settings)[0]
    assert "ga (mean) -2.0 over 2 runs" in text and "sga" not in text
    assert "-1.0 (split 0), +3.0 (split 1)" in text  # oracle − planted: 0.49 − 0.50, 0.43 − 0.40
    assert text.endswith("Within that distance (|Δ| ≤ 3.0): ga (mean).")  # |−2.0| ≤ max(|−1.0|, |+3.0|)
    df.loc[1, "utility"]["after"]["average_acc"] = 0.35  # ga's mean Δ: (−5 − 5) / 2 = −5.0, beyond 3.0
    assert og.utility_reading(df, settings)[0].endswith("Within that distance (|Δ| ≤ 3.0): none.")
    assert og.utility_reading(df, None) == []
    assert "no run recorded it" in og.utility_reading(df, {"tasks": ["y"], "limit": 1})[0]


def _half2(values: list[float]) -> float:
    """Half-width of the 95 % t-interval over two values, the slow way (t_{0.975, 1} = 12.7062)."""
    m = sum(values) / 2
    s = math.sqrt(sum((v - m) ** 2 for v in values))
    return 12.7062047 * s / math.sqrt(2)


def test_oracle_gap_target_variants():
    """The run names oracle_gap takes for target: its base rule, NPO as the loss, a retain weight; nothing else."""
    og = _load("oracle_gap")
    assert og.target_variant("target") == ("target", {})
    assert og.target_variant("target-ref-r4") == ("target-ref", {"retain_weight": 4.0})
    assert og.target_variant("target-ref-npo") == ("target-ref", {"loss": "npo"})
    assert og.target_variant("target-retain-npo-r0.5") == ("target-retain", {"loss": "npo", "retain_weight": 0.5})
    assert og.target_variant("target-ref-retain-r2") == ("target-ref-retain", {"retain_weight": 2.0})
    assert og.target_variant("target-ref-retain-mem") == ("target-ref-retain", {"tokens": "memorized"})
    assert og.target_variant("target-ref-mix-r2") == ("target-ref-mix", {"retain_weight": 2.0})
    assert og.target_variant("target-retain-mix") == ("target-retain-mix", None)  # one retain text at a time
    assert og.target_variant("sga") == ("sga", None) and og.target_variant("target-x") == ("target-x", None)
    assert og.target_variant("target-retain-ref") == ("target-retain-ref", None)  # one spelling per variant
    args = type("A", (), {"forget": 16})()
    assert og.target_inputs("target", Path("/lab/x"), args) == {}
    assert og.target_inputs("target-ref", Path("/lab/x"), args) == {"target_rule": "reference-model",
                                                                     "target_model": "default"}
    assert og.target_inputs("target-retain", Path("/lab/x"), args) == {"retain": "/lab/x.retain16.csv"}
    assert og.target_inputs("target-ref-retain", Path("/lab/x"), args) == {
        "target_rule": "reference-model", "target_model": "default", "retain": "/lab/x.retain16.csv"}
    assert og.target_inputs("target-ref-mix", Path("/lab/x"), args) == {
        "target_rule": "reference-model", "target_model": "default", "retain": "/lab/x.mix16.csv"}


def test_oracle_gap_signed_gap_says_which_way():
    """MA − oracle's is the forget set's mean MA after minus the oracle's: its sign says whether a method forgot too
    little or too much, which |MA − oracle| cannot."""
    og = _load("oracle_gap")

    def row(split, method, ma, oracle):
        return {"split": split, "method": method, "stop": "mean", "c": 0, "oracle_c": 1, "ma_gap": abs(ma - oracle),
                "ma_gap_max": 0.3, "ks_p": 0.5, "attacks": {}, "retain_before": 0.8, "retain_after": 0.7,
                "unseen_before": 0.5, "unseen_after": 0.45, "steps": 5, "converged": True, "mean_ma": ma,
                "oracle_ma": oracle}

    df = pd.DataFrame([row(0, "ga", 0.70, 0.50), row(1, "ga", 0.60, 0.50), row(0, "sga", 0.45, 0.50),
                       row(1, "sga", 0.50, 0.50)])
    lines = og.table(df, [], None).splitlines()
    cells = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]  # noqa: E731 (Markdown's split)
    assert len(cells(lines[0])) == len(cells(lines[2])) == len(cells(lines[1]))  # every header a single cell
    col = cells(lines[0]).index("MA − oracle's")
    ga = cells(lines[2])
    assert ga[col] == f"0.150 ± {_half2([0.20, 0.10]):.3f}"  # (0.70 − 0.50 + 0.60 − 0.50) / 2
    line = og.direction(df)
    assert "above it (forgot too little) ga (mean) +0.150" in line
    assert "at or below it (forgot as much or more) sga (mean) -0.025" in line
    assert og.direction(df.drop(columns=["mean_ma"])) == ""


def test_oracle_gap_ranks_only_runs_on_as_many_splits():
    """A method run on one split has no interval and no pairing: the reading ranks the methods run on the most splits
    and lists the others apart, however close their single split came."""
    og = _load("oracle_gap")

    def row(split, method, gap):
        return {"split": split, "method": method, "stop": "target", "c": 0, "oracle_c": 1, "ma_gap": gap,
                "ma_gap_max": 0.3, "ks_p": 0.5, "attacks": {}, "retain_before": 0.8, "retain_after": 0.7,
                "retain_oracle": 0.8, "unseen_before": 0.5, "unseen_after": 0.45, "steps": 5, "converged": True, "mean_ma": 0.6,
                "oracle_ma": 0.5}

    df = pd.DataFrame([row(0, "a", 0.05), row(1, "a", 0.07), row(0, "b", 0.10), row(1, "b", 0.14),
                       row(0, "lucky", 0.01)])
    lines = og.reading(df, [])
    assert lines[0] == ("Closest to the oracle per sequence, among the runs on 2 splits: a (target rule), mean "
                        "|MA − MA_oracle| 0.060; farthest: b (target) 0.120.")
    assert lines[1] == "On fewer splits, not ranked: lucky (target) 0.010 (1 split)."
    assert any(line.startswith("b (target) − a (target), mean |MA − oracle|: +0.060") for line in lines)


def test_oracle_gap_k_comparison_pairs_the_same_run_at_the_main_k():
    """A rerun at the paper's K = 25 sits beside the run of the same split and method at K = 5 (all else equal),
    and says whether what K cannot change (the unlearning, the attacks without neighbours) came out the same."""
    og = _load("oracle_gap")
    base = {"members": 32, "max_steps": 40, "neighbours": og.NEIGHBOURS, "attacks": ["miau", "loss"]}
    key = {**base, "neighbours": 25}

    def row(split, method, settings, miau, loss, ma_gap):
        return {"split": split, "method": method, "stop": "target", "settings": settings, "ma_gap": ma_gap,
                "attacks": {"miau": {"auc": miau, "oracle_auc": 0.6, "gap": miau - 0.6, "low": miau - 0.7,
                                     "high": miau - 0.5, "indistinguishable": miau - 0.7 <= 0 <= miau - 0.5},
                            "loss": {"auc": loss, "oracle_auc": 0.5, "gap": loss - 0.5, "low": 0, "high": 0}}}

    recorded = [row(0, "a", base, 0.5, 0.55, 0.04), row(0, "b", base, 0.5, 0.55, 0.04),
                row(0, "a", {**base, "max_steps": 20}, 0.9, 0.9, 0.2),  # other settings: never paired
                row(1, "a", base, 0.5, 0.55, 0.04), row(0, "c", base, 0.5, 0.55, 0.04)]
    df = pd.DataFrame([row(0, "a", key, 0.62, 0.55, 0.04), row(0, "b", key, 0.58, 0.60, 0.04),
                       row(2, "a", key, 0.6, 0.5, 0.1),  # split 2 has no K = 5 run
                       row(0, "c", key, 0.6, 0.55, 0.0403)])  # |MA − oracle| 3e-4 off: within, not the same
    out = og.k_comparison(df, key, recorded)
    assert out == [
        "Split 0, a (target): MIAU AUC 0.620 vs the oracle's 0.600, gap +0.020 [-0.080, +0.120] at K = 25; at K = 5 "
        "0.500 vs 0.600, gap -0.100 [-0.200, +0.000]; the unlearning and the attacks without neighbours came out the "
        "same as at K = 5.",
        "Split 0, b (target): MIAU AUC 0.580 vs the oracle's 0.600, gap -0.020 [-0.120, +0.080] at K = 25; at K = 5 "
        "0.500 vs 0.600, gap -0.100 [-0.200, +0.000]; |MA − oracle| and the attacks without neighbours moved by up "
        "to 0.050 from the K = 5 run (the unlearning did not repeat).",
        "Split 0, c (target): MIAU AUC 0.600 vs the oracle's 0.600, gap +0.000 [-0.100, +0.100] at K = 25; at K = 5 "
        "0.500 vs 0.600, gap -0.100 [-0.200, +0.000]; |MA − oracle| and the attacks without neighbours came out "
        "within 0.0003 of the K = 5 run."]
    # Over the splits run at both K: split 2 has no partner, so a is summed over split 0 alone here.
    recorded.append(row(1, "b", base, 0.7, 0.6, 0.04))
    df = pd.concat([df, pd.DataFrame([row(1, "b", key, 0.75, 0.6, 0.04)])], ignore_index=True)
    assert og.k_summary(df, key, recorded) == [
        "The oracle's MIAU AUC at K = 25 vs K = 5: split 0 0.600 vs 0.600, split 1 0.600 vs 0.600.",
        "MIAU's gap to the oracle, mean over the splits run at both K, at K = 25 vs K = 5 (splits whose interval "
        "holds 0): a (target) +0.020 (1/1) vs -0.100 (1/1), b (target) +0.065 (1/2) vs +0.000 (2/2), "
        "c (target) +0.000 (1/1) vs -0.100 (1/1)."]
    assert og.k_summary(df[df["split"] == 2], key, recorded) == []
    assert og.section_title(SimpleNamespace(neighbours=og.NEIGHBOURS)) == og.TITLE
    assert og.section_title(SimpleNamespace(neighbours=25)).endswith("MIAU K = 25")
