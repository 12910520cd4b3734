"""`unmemorize demo`: the whole story on the embedded default model, with its own ground truth.

Synthetic private records from a seeded generator: members are planted into SmolLM2-135M at
different exposure counts, non-members from the same generator are the unseen reference. The audit
must then show memorization rising with exposure while non-members stay at τ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unmemorize.commands.common import DeviceOpt, console, err_console, frame_table, load_model_cli, progress_bar


def exposure_table(forget, reference, el_col: str):
    """Mean MA, EL_n and exact extraction per exposure count; non-members as exposure 0."""
    import pandas as pd

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


DEMO_ATTACKS = ("miau", "loss", "reference")


def demo_config(members_file: Path, nonmembers_file: Path, utility_dir: Path, planted: Path, *, methods: tuple[str, ...],
                stop: str, lr: float, max_steps: int, micro_batch: int, neighbours: int, seed: int) -> dict:
    """The experiment the demo runs on the planted model (written to demo.yaml: `unmemorize run` repeats it).
    Data paths are relative to the run folder, where demo.yaml lies, so the file stays valid once the
    folder is moved into place."""
    return {
        "name": "demo", "description": "planted private records: unlearn each down to the unseen level",
        "model": {"path": str(Path(planted).resolve()), "name": "SmolLM2-135M + planted records"},
        "forget": [{"path": str(members_file), "name": "planted records"}],
        "methods": list(methods), "stop": [stop], "seeds": [seed],
        "reference": str(nonmembers_file),
        "training": {"lr": lr, "max_steps": max_steps, "micro_batch": micro_batch, "checkpoint_every": 0},
        "attacks": {"names": list(DEMO_ATTACKS), "neighbours": neighbours, "perturber": "lm", "bootstrap": 200},
        "utility": {"tasks": ["lab"], "data_dir": str(utility_dir), "mode": "full"},
    }


def method_table(runs, original_attacks: dict[str, float]):
    """One row for the planted model before unlearning, one per method after it (the demo's result)."""
    import pandas as pd

    first = runs.iloc[0]
    rows = [{"model": "planted (before)", "steps": 0, "seconds": float("nan"), "mean MA": first["mean_ma_before"],
             "c(D_f)": first["c_before"], "distance to τ": first["distance_to_tau_before"],
             **{f"{a} AUC": original_attacks.get(a, float("nan")) for a in DEMO_ATTACKS},
             "series acc": first.get("lab_series/acc_before"), "docs loss": first.get("lab_docs/loss_before")}]
    for _, r in runs.iterrows():
        rows.append({"model": r["method"], "steps": int(r["steps"]), "seconds": r["seconds"], "mean MA": r["mean_ma"],
                     "c(D_f)": r["c"], "distance to τ": r["distance_to_tau"],
                     **{f"{a} AUC": r.get(f"{a}_auc", float("nan")) for a in DEMO_ATTACKS},
                     "series acc": r.get("lab_series/acc"), "docs loss": r.get("lab_docs/loss")})
    return pd.DataFrame(rows)


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (replaced on each demo run).")] = Path("runs/demo"),
    members: Annotated[int, typer.Option("--members", help="Records to plant.")] = 8,
    nonmembers: Annotated[int, typer.Option("--nonmembers", help="Unseen records of the same form (τ, and the attacks' non-members).")] = 12,
    exposures: Annotated[str, typer.Option("--exposures", help="Exposure counts spread over the members.")] = "1,4,16,64",
    lr: Annotated[float, typer.Option("--lr", help="Planting learning rate.")] = 3e-4,
    methods: Annotated[str, typer.Option("--methods", help="Unlearning methods to compare.")] = "ga,sga,tau",
    stop: Annotated[str, typer.Option("--stop", help="Stop rule: per-sequence (every record below the band's top) or mean (the paper's).")] = "per-sequence",
    unlearn_lr: Annotated[float, typer.Option("--unlearn-lr", help="Unlearning learning rate (the paper: 5e-5; the demo's records need ~4× the steps at that rate).")] = 2e-4,
    max_steps: Annotated[int, typer.Option("--max-steps", help="At most this many unlearning steps per method.")] = 30,
    neighbours: Annotated[int, typer.Option("--neighbours", "-k", help="MIAU neighbours per record (the paper: 25; fewer keep the demo within 10 minutes on a CPU).")] = 5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    model: Annotated[str, typer.Option("--model", help="Model to plant into.")] = "default",
    device: DeviceOpt = None,
):
    """The whole story on the embedded default: plant private records, audit, unlearn them with GA, SGA
    and TAU, attack, check utility, and write one HTML report (about 10 minutes on 2 CPU cores)."""
    import dataclasses
    import time

    import torch
    import yaml

    from unmemorize.attacks import run_attacks, write_results
    from unmemorize.audit import audit
    from unmemorize.commands.common import parse_list
    from unmemorize.commands.plant import parse_exposures, plant_into
    from unmemorize.data import load_sequences
    from unmemorize.experiments import config_from_dict, run_experiment
    from unmemorize.experiments.config import attack_options
    from unmemorize.lab.records import members_and_nonmembers, write_jsonl
    from unmemorize.lab.utility_tasks import write_lab_tasks
    from unmemorize.memorization import ProfileOptions, profile
    from unmemorize.models import cache_dir
    from unmemorize.report.audit import audit_sections, sequence_table, summary_table, write_audit
    from unmemorize.report.experiments import load_runs, write_experiment_report
    from unmemorize.report.html import Section
    from unmemorize.report.plots import by_category
    from unmemorize.runs import RunDir, atomic_write_text, build_manifest, write_frame, write_json
    from unmemorize.thresholds import Band
    from unmemorize.unlearning import METHODS

    from unmemorize import distributed

    distributed.one_process_only("demo", "it is the single-machine walk-through; `unmemorize run` with a config "
                                         "runs the same pipeline under several processes")
    t0 = time.perf_counter()
    counts = parse_exposures(exposures)
    chosen = parse_list(methods, tuple(METHODS), "method")
    band = Band()
    torch.manual_seed(seed)
    stages: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = round(now - since, 1)
        return now

    with RunDir(out, overwrite=True) as run:
        mem, non = members_and_nonmembers(members, nonmembers, seed)
        members_file = write_jsonl(run.path("data/members.jsonl"), mem)
        nonmembers_file = write_jsonl(run.path("data/nonmembers.jsonl"), non)
        console.rule("1 · synthetic private records")
        console.print(f"{members} members and {nonmembers} non-members from one seeded generator (seed {seed}); "
                      f"e.g. [dim]{mem[0]['text']}[/]")

        console.rule("2 · plant the members at exposures " + ",".join(map(str, counts)))
        t = time.perf_counter()
        lm = load_model_cli(model, device=device)
        base = load_sequences(members_file, lm.tokenizer, 200)
        before = profile(lm.model, base, ProfileOptions(metrics=("ma",)))
        lab = cache_dir() / "lab" / f"demo-{model.replace('/', '_')}"
        folder, manifest = plant_into(lm, members_file, counts, lab, seed=seed, lr=lr,
                                      log=lambda m: err_console.print(f"[cyan]{m}[/]"))
        described = lm.describe()
        del lm
        planted = load_model_cli(str(folder), device=device)
        t = lap("plant", t)

        console.rule("3 · audit the planted model")
        tok = planted.tokenizer
        forget_set = load_sequences(members_file, tok, 200)
        ref_set = load_sequences(nonmembers_file, planted.tokenizer, 200)
        with progress_bar() as progress:
            # EL_10 of the members (its decoding is the audit's cost); exact extraction of both sets,
            # to show that unseen records do not come out
            result = audit(planted.model, forget_set, ref_set, ProfileOptions(metrics=("ma", "el", "extraction")),
                           band, progress=progress, reference_metrics=("ma", "extraction"))
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
        console.print(frame_table(table, "Memorization by exposure (0 = non-members, the unseen reference)"))
        t = lap("audit", t)

        console.rule(f"4 · unlearn with {', '.join(chosen)} ({stop} stop rule), attack, check utility")
        utility_dir = write_lab_tasks(run.path("data/utility"), seed=seed, docs=12)
        rel = lambda p: Path(p).relative_to(run.path("."))  # noqa: E731
        raw = demo_config(rel(members_file), rel(nonmembers_file), rel(utility_dir), folder, methods=chosen, stop=stop, lr=unlearn_lr,
                          max_steps=max_steps, micro_batch=members, neighbours=neighbours, seed=seed)
        atomic_write_text(run.path("demo.yaml"), yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        cfg = config_from_dict(raw, source=str(run.path("demo.yaml")))
        with progress_bar() as progress:
            # the planted model itself, attacked with the same options (the reference attack needs an
            # original to compare with, so it runs on the unlearned models only)
            opts = attack_options(cfg, seed)
            original = run_attacks(planted.model, planted.tokenizer, forget_set, ref_set, progress=progress,
                                   options=dataclasses.replace(opts, attacks=("miau", "loss")))
            write_results(original, run.tmp, prefix="planted_")
            del planted
            dirs = run_experiment(cfg, run.path("runs"), progress=progress,
                                  log=lambda m: err_console.print(f"[cyan]{m}[/]"))
        t = lap("unlearn + attacks + utility", t)

        runs = load_runs(dirs)
        results = method_table(runs, {n: r.evaluation.auc.value for n, r in original.attacks.items()})
        write_frame(run.path("comparison"), results)  # results.csv is the experiment report's
        seconds = time.perf_counter() - t0
        write_json(run.path("manifest.json"), build_manifest(
            "demo", {"members": members, "nonmembers": nonmembers, "exposures": list(counts), "seed": seed, "lr": lr,
                     "methods": list(chosen), "stop": stop, "unlearn_lr": unlearn_lr, "max_steps": max_steps,
                     "neighbours": neighbours},
            {"model": described, "planted": str(folder), "plant_key": manifest["key"]},
            seed=seed, seconds=round(seconds, 1), stages=stages))
        lead = [Section(
            "The lab", f"{members} synthetic private records were planted into {described['name']} at exposure counts "
            f"{', '.join(map(str, counts))} (fine-tuning on the records mixed with ordinary text; planted model "
            f"cached in {folder}). {nonmembers} non-members from the same generator were never seen: they are the "
            "unseen reference for τ and the attacks' non-members. Extraction gives the model each record's prefix "
            "(file number and name) and checks whether greedy decoding reproduces the secret part (birth date, "
            "e-mail, phone, address, account).",
            tables=[("By exposure (0 = non-members)", table.round(3))],
            images=[("Mean MA, EL_10 and exact extraction by exposure; τ and the band", images["exposure"])])]
        audited = audit_sections(result, tok, images, f"{nonmembers} unseen records")
        for sec in audited:
            sec.title = f"Audit before unlearning: {sec.title.lower()}"
        lead += audited
        lead.append(Section(
            "Unlearning, attacks and utility: the result",
            f"Each method starts from the planted model and unlearns the {members} records ({stop} stop rule, "
            f"lr {unlearn_lr:g}, at most {max_steps} steps, the whole set per step). MIAU (K = {neighbours} "
            "neighbours refilled by the planted model) and the loss attack score members against the unseen "
            "records; the reference attack compares each unlearned model with the planted one. AUC 0.5 = an "
            "attacker cannot tell. Utility: two offline tasks (series continuation accuracy, loss on held-out "
            "standard-library docstrings); they are not the paper's suite.",
            tables=[("Planted model before unlearning, and each method after", results.round(3))]))
        path = write_experiment_report(dirs, run.tmp, title="unmemorize demo: planted private records", lead=lead,
                                       subtitle=f"model {described['name']} · {seconds:.0f} s")
        final = run.commit()

    console.print(sequence_table(result, 6, title="Most memorized members before unlearning"))
    console.print(summary_table(result))
    console.print(frame_table(results, "Before and after unlearning (AUC 0.5 = an attacker cannot tell)"))
    console.print(f"Stages (s): {', '.join(f'{k} {v:.0f}' for k, v in stages.items())}")
    console.print(f"Finished in {seconds:.0f} s. Report: [bold]{final / path.name}[/]")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
