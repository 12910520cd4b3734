"""The demo: the whole story on the embedded default model, with its own ground truth.

Synthetic private records from a seeded generator: members are planted into a copy of the model at
different exposure counts (:mod:`unmemorize.lab.plant`), non-members from the same generator are the
unseen reference. The audit must then show memorization rising with exposure while non-members stay
at τ; then GA, SGA and TAU unlearn the members through the experiment runner (the one recipe, with
the attacks before and after and two offline utility tasks), and one HTML report tells it all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import field_validator, model_validator

from unmemorize.options import Options, as_list, option

DEMO_ATTACKS = ("miau", "loss", "reference")


class DemoSpec(Options):
    """The demo's settings (``unmemorize demo``)."""

    out: Path = option(Path("runs/demo"), "Run directory (replaced on each demo run).", "--out", "-o")
    members: int = option(8, "Records to plant.", ge=2)
    forget: int = option(4, "Planted records to forget (spread over the exposures); the others stay, and the retrain "
                            "oracle is planted without the forgotten ones.", ge=1)
    nonmembers: int = option(12, "Unseen records of the same form (τ, and the attacks' non-members).", ge=2)
    exposures: tuple[int, ...] = option((1, 4, 16, 64), "Exposure counts spread over the members.", split=True)
    lr: float = option(3e-4, "Planting learning rate.", gt=0)
    methods: tuple[str, ...] = option(("ga", "sga", "tau", "target"), "Unlearning methods to compare.", split=True)
    stop: str = option("per-sequence", "Stop rule of the paper's methods: per-sequence (every record below the band's "
                                       "top) or mean (the paper's); target stops by its own rule.")
    unlearn_lr: float = option(2e-4, "Unlearning learning rate (the paper: 5e-5; the demo's records need ~4× the "
                                     "steps at that rate).", gt=0)
    max_steps: int = option(30, "At most this many unlearning steps per method.", ge=1)
    neighbours: int = option(5, "MIAU neighbours per record (the paper: 25; fewer keep the demo within 10 minutes "
                                "on a CPU).", "--neighbours", "-k", ge=1)
    seed: int = option(0, "Random seed of the records, the planting and the runs.")
    model: str = option("default", "Model to plant into.")
    device: str | None = option(None, "torch device (default: cuda if available, else cpu).")

    @field_validator("exposures", "methods", mode="before")
    @classmethod
    def _lists(cls, v):
        return as_list(v)

    @model_validator(mode="after")
    def _some_stay(self):
        if self.forget >= self.members:
            raise ValueError(f"forget {self.forget} of {self.members} members leaves none to retain; forget fewer")
        return self

    @field_validator("methods")
    @classmethod
    def _known(cls, v):
        from unmemorize.unlearning import METHODS

        bad = [m for m in v if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method {', '.join(bad)}; choose from {', '.join(METHODS)}")
        return v


@dataclass
class DemoResult:
    folder: Path
    report: Path
    audit: object  # audit.AuditResult
    by_exposure: pd.DataFrame
    comparison: pd.DataFrame
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)


def exposure_table(forget: pd.DataFrame, reference: pd.DataFrame, el_col: str) -> pd.DataFrame:
    """Mean MA, EL_n and exact extraction per exposure count; non-members as exposure 0."""
    rows = []
    ref = reference.assign(exposure=0)
    for e, grp in pd.concat([ref, forget], ignore_index=True).groupby("exposure"):
        row = {"exposure": int(e), "who": "non-members" if e == 0 else "members", "sequences": len(grp),
               "MA": grp["ma"].mean()}
        if el_col in grp:
            row[el_col] = grp[el_col].mean()
        if "extraction_exact" in grp:
            row["exact extraction"] = grp["extraction_exact"].mean()
            row["suffix tokens matched"] = (grp["extraction_matched"] / grp["extraction_suffix"]).mean()
        rows.append(row)
    return pd.DataFrame(rows)


def demo_config(forget_file: Path, keep_file: Path, nonmembers_file: Path, utility_dir: Path, planted: Path,
                oracle: Path, spec: DemoSpec) -> dict:
    """The experiment the demo runs on the planted model (written to demo.yaml: `unmemorize run` repeats it).
    Data paths are relative to the run folder, where demo.yaml lies, so the file stays valid once the
    folder is moved into place."""
    return {
        "name": "demo", "description": "planted private records: unlearn each down to where a model that never saw it is",
        "model": {"path": str(Path(planted).resolve()), "name": "SmolLM2-135M-Instruct + planted records",
                  **({"device": spec.device} if spec.device else {})},
        "oracle": str(Path(oracle).resolve()),
        "forget": [{"path": str(forget_file), "name": "planted records to forget"}],
        "methods": list(spec.methods), "stop": [spec.stop], "seeds": [spec.seed],
        "reference": str(nonmembers_file),
        # target's per-record levels: the model before planting never saw the records (it is not the oracle)
        # and its retain term holds the records the user keeps (the other methods read no retain data)
        **({"target_rule": "reference-model", "target_model": spec.model, "retain": str(keep_file)}
           if "target" in spec.methods else {}),
        "training": {"lr": spec.unlearn_lr, "max_steps": spec.max_steps, "micro_batch": spec.forget,
                     "checkpoint_every": 0},
        "attacks": {"names": list(DEMO_ATTACKS), "before": True, "neighbours": spec.neighbours,
                    "bootstrap": 200},
        "utility": {"tasks": ["lab"], "data_dir": str(utility_dir), "mode": "full"},
    }


def method_table(records) -> pd.DataFrame:
    """The demo's result, read from the runs' typed records: the planted model before unlearning, each
    method after it, and the retrain oracle (the model that never saw the forgotten records) that every
    row should be compared with."""
    first = records[0]

    def task(summary, name: str, metric: str):
        return None if summary is None else summary.tasks.get(name, {}).get(metric)

    def auc(found, name):
        return found[name].auc.value if found and name in found else None

    b, o = first.unlearning.before, first.oracle
    rows = [{"model": "planted (before)", "steps": 0, "seconds": None, "mean MA": b.mean, "c(D_f)": b.c,
             "|MA − oracle|": None, "KS p": None, "retain MA": None if o is None else o.retain_ma_before,
             **{f"{a} AUC": auc(first.attacks.before, a) for a in DEMO_ATTACKS},
             "series acc": task(first.utility.before, "lab_series", "acc"),
             "docs loss": task(first.utility.before, "lab_docs", "loss")}]
    for r in records:
        a, ro = r.unlearning.after, r.oracle
        rows.append({"model": r.labels.method, "steps": r.unlearning.steps, "seconds": r.unlearning.seconds,
                     "mean MA": a.mean, "c(D_f)": a.c, "|MA − oracle|": None if ro is None else ro.ma_gap.value,
                     "KS p": None if ro is None else ro.forget_quality_p,
                     "retain MA": None if ro is None else ro.retain_ma_after,
                     **{f"{n} AUC": auc(r.attacks.after, n) for n in DEMO_ATTACKS},
                     "series acc": task(r.utility.after, "lab_series", "acc"),
                     "docs loss": task(r.utility.after, "lab_docs", "loss")})
    if o is not None:
        rows.append({"model": "oracle (never saw them)", "steps": None, "seconds": None, "mean MA": o.ma_oracle_mean,
                     "c(D_f)": None, "|MA − oracle|": 0.0, "KS p": None, "retain MA": o.retain_ma_oracle,
                     **{f"{n} AUC": o.attacks[n].oracle_auc if n in o.attacks else None for n in DEMO_ATTACKS},
                     "series acc": task(o.utility, "lab_series", "acc"), "docs loss": task(o.utility, "lab_docs", "loss")})
    table = pd.DataFrame(rows)
    return table.astype({"steps": "Int64", "c(D_f)": "Int64"})  # counts, with gaps: not 2.000 beside a —


def run_demo(spec: DemoSpec, *, progress=None, log=print, say=lambda headline, detail="": print(headline, detail)
             ) -> DemoResult:
    """Plant, audit, unlearn with every method, attack, check utility, write one report; ``say`` gets the
    story's headline of each stage (and a line of detail)."""
    import torch
    import yaml

    from unmemorize import distributed
    from unmemorize.audit import audit
    from unmemorize.data import load_sequences
    from unmemorize.experiments import config_from_dict, run_experiment
    from unmemorize.lab.plant import plant_into, spread_forget
    from unmemorize.lab.records import members_and_nonmembers, write_jsonl
    from unmemorize.lab.utility_tasks import write_lab_tasks
    from unmemorize.memorization import ProfileOptions, profile
    from unmemorize.models import cache_dir, load_model
    from unmemorize.record import read_record
    from unmemorize.report.audit import write_audit
    from unmemorize.report.experiments import write_experiment_report
    from unmemorize.report.plots import by_category
    from unmemorize.runs import RunDir, atomic_write_text, build_manifest, write_frame, write_json
    from unmemorize.thresholds import Band

    distributed.one_process_only("demo", "it is the single-machine walk-through; `unmemorize run` with a config "
                                         "runs the same pipeline under several processes")
    t0 = time.perf_counter()
    band = Band("tau-0.15", "tau+0.3")  # the runs' default band, relative to τ (docs/method.md §4.13)
    torch.manual_seed(spec.seed)
    stages: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        stages[name] = round(now - t, 1)
        t = now

    with RunDir(spec.out, overwrite=True) as run:
        mem, non = members_and_nonmembers(spec.members, spec.nonmembers, spec.seed)
        members_file = write_jsonl(run.path("data/members.jsonl"), mem)
        nonmembers_file = write_jsonl(run.path("data/nonmembers.jsonl"), non)
        forgotten = spread_forget([r["id"] for r in mem], spec.exposures, spec.forget, spec.seed)
        forget_file = write_jsonl(run.path("data/forget.jsonl"), [r for r in mem if r["id"] in forgotten])
        keep_file = write_jsonl(run.path("data/keep.jsonl"), [r for r in mem if r["id"] not in forgotten])
        say("1 · synthetic private records", f"{spec.members} members and {spec.nonmembers} non-members from one "
                                            f"seeded generator (seed {spec.seed}); e.g. {mem[0]['text']}")

        say("2 · plant the members at exposures " + ",".join(map(str, spec.exposures)))
        lm = load_model(spec.model, device=spec.device, log=log)
        before = profile(lm.model, load_sequences(members_file, lm.tokenizer, 200), ProfileOptions(metrics=("ma",)))
        lab = cache_dir() / "lab" / f"demo-{spec.model.replace('/', '_')}"
        folder, manifest = plant_into(lm, members_file, spec.exposures, lab, forget=forgotten, seed=spec.seed,
                                      lr=spec.lr, log=log, progress=progress)
        described = lm.describe()
        del lm
        planted = load_model(str(folder), device=spec.device, log=log)
        lap("plant")

        say("3 · audit the planted model")
        forget_set = load_sequences(members_file, planted.tokenizer, 200)
        ref_set = load_sequences(nonmembers_file, planted.tokenizer, 200)
        # EL_10 of the members (its decoding is the audit's cost); exact extraction of both sets, to show
        # that unseen records do not come out
        # (EL for every record, not only those at the band's top: the by-exposure table shows all of them)
        result = audit(planted.model, forget_set, ref_set, ProfileOptions(metrics=("ma", "el", "extraction"),
                                                                          el_for="all"),
                       band, progress=progress, reference_metrics=("ma", "extraction"))
        band = result.band  # in numbers at τ
        result.forget["exposure"] = result.forget["id"].map(manifest["exposure"]).astype(int)
        result.forget["ma_before_planting"] = before["ma"].to_numpy()
        ref_full = result.reference
        result.reference = ref_full.drop(columns=["extraction_tokens"])
        images = write_audit(run, result, planted.tokenizer, band, label="members (planted)",
                             reference_label="non-members (unseen)")
        table = exposure_table(result.forget, ref_full, "el_10")
        write_frame(run.path("by_exposure"), table)
        series = {"MA": table["MA"].tolist(), "EL_10": table["el_10"].tolist(),
                  "exact extraction of the secret": table["exact extraction"].tolist()}
        images["exposure"] = by_category(run.path("by_exposure.png"), table["exposure"].tolist(), series,
                                         result.tau, band, xlabel="exposures during planting (0 = non-members)",
                                         title="Memorization rises with exposure")
        tokenizer = planted.tokenizer
        del planted
        lap("audit")

        say(f"4 · unlearn with {', '.join(spec.methods)} ({spec.stop} stop rule), attack, check utility")
        utility_dir = write_lab_tasks(run.path("data/utility"), seed=spec.seed, docs=12)
        rel = lambda p: Path(p).relative_to(run.path("."))  # noqa: E731
        raw = demo_config(rel(forget_file), rel(keep_file), rel(nonmembers_file), rel(utility_dir), folder,
                          Path(manifest["oracle"]["path"]), spec)
        atomic_write_text(run.path("demo.yaml"), yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        cfg = config_from_dict(raw, source=str(run.path("demo.yaml")))
        dirs = run_experiment(cfg, run.path("runs"), progress=progress, log=log)
        lap("unlearn + attacks + utility")

        comparison = method_table([read_record(d) for d in dirs])
        write_frame(run.path("comparison"), comparison)  # results.csv is the experiment report's
        seconds = time.perf_counter() - t0
        write_json(run.path("manifest.json"), build_manifest(
            "demo", spec.model_dump(mode="json"), {"model": described, "planted": str(folder),
                                                   "plant_key": manifest["key"]},
            device=spec.device, seed=spec.seed, seconds=round(seconds, 1), stages=stages))
        lead = _lead_sections(spec, described, folder, table, images, result, tokenizer, comparison)
        written = write_experiment_report(dirs, run.tmp, title="unmemorize demo: planted private records", lead=lead,
                                          subtitle=f"model {described['name']} · {seconds:.0f} s")
        final = run.commit()
    return DemoResult(final, final / written.html.name, result, table, comparison, seconds, stages)


def _lead_sections(spec: DemoSpec, described: dict, planted: Path, table: pd.DataFrame, images: dict, result,
                   tokenizer, comparison: pd.DataFrame) -> list:
    from unmemorize.report.audit import audit_sections
    from unmemorize.report.html import Section

    lead = [Section(
        "The lab", f"{spec.members} synthetic private records were planted into {described['name']} at exposure "
        f"counts {', '.join(map(str, spec.exposures))} (fine-tuning on the records mixed with ordinary text; planted "
        f"model cached in {planted}). {spec.forget} of them are to be forgotten; the retrain oracle was planted the "
        "same way with those rows replaced by ordinary text: the model that never saw them, against which every "
        f"result below is judged. {spec.nonmembers} non-members from the same generator were never seen: they "
        "are the unseen reference for τ and the attacks' non-members. Extraction gives the model each record's "
        "prefix (file number and name) and checks whether greedy decoding reproduces the secret part (birth date, "
        "e-mail, phone, address, account).",
        tables=[("By exposure (0 = non-members)", table.round(3))],
        images=[("Mean MA, EL_10 and exact extraction by exposure; τ and the band", images["exposure"])])]
    audited = audit_sections(result, tokenizer, images, f"{spec.nonmembers} unseen records")
    for sec in audited:
        sec.title = f"Audit before unlearning: {sec.title.lower()}"
    lead += audited
    lead.append(Section(
        "Unlearning, attacks and utility: the result",
        f"Each method starts from the planted model and unlearns the {spec.forget} records to forget ({spec.stop} stop "
        f"rule, lr {spec.unlearn_lr:g}, at most {spec.max_steps} steps, the whole set per step). MIAU (K = "
        f"{spec.neighbours} neighbours refilled by the oracle) and the loss attack score the forgotten records against "
        "the unseen ones; the reference attack compares each model with the planted one. The last row is the oracle "
        "under the same attacks: a method has forgotten when it is where the oracle is (|MA − oracle| per record near "
        "0, the losses indistinguishable: KS p ≥ 0.05, the same AUCs, the retained records as memorized), not when "
        "an AUC is 0.5. Utility: two offline tasks (series continuation accuracy, loss on held-out standard-library "
        "docstrings); they are not the paper's suite.",
        tables=[("Planted model before unlearning, each method after, and the retrain oracle", comparison.round(3))]))
    return lead
