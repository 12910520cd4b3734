"""`unmemorize demo`: the whole story on the embedded default model, with its own ground truth.

Synthetic private records from a seeded generator: members are planted into SmolLM2-135M at
different exposure counts, non-members from the same generator are the unseen reference. The audit
must then show memorization rising with exposure while non-members stay at τ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unmemorize.commands.common import DeviceOpt, console, err_console, load_model_cli, progress_bar


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


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (replaced on each demo run).")] = Path("runs/demo"),
    members: Annotated[int, typer.Option("--members", help="Records to plant.")] = 12,
    nonmembers: Annotated[int, typer.Option("--nonmembers", help="Unseen records of the same form (τ).")] = 12,
    exposures: Annotated[str, typer.Option("--exposures", help="Exposure counts spread over the members.")] = "1,4,16,64",
    lr: Annotated[float, typer.Option("--lr", help="Planting learning rate.")] = 3e-4,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    model: Annotated[str, typer.Option("--model", help="Model to plant into.")] = "default",
    device: DeviceOpt = None,
):
    """Plant synthetic private records into the default model and audit it (minutes on 2 CPU cores)."""
    import time

    import torch
    from rich.table import Table

    from unmemorize.audit import audit
    from unmemorize.commands.plant import parse_exposures, plant_into
    from unmemorize.data import load_sequences
    from unmemorize.lab.records import members_and_nonmembers, write_jsonl
    from unmemorize.memorization import ProfileOptions, profile
    from unmemorize.models import cache_dir
    from unmemorize.report.audit import audit_sections, sequence_table, summary_table, write_audit
    from unmemorize.report.html import Section, write_report
    from unmemorize.report.plots import by_category
    from unmemorize.runs import RunDir, build_manifest, write_frame, write_json
    from unmemorize.thresholds import Band

    t0 = time.perf_counter()
    counts = parse_exposures(exposures)
    band = Band()
    torch.manual_seed(seed)
    with RunDir(out, overwrite=True) as run:
        mem, non = members_and_nonmembers(members, nonmembers, seed)
        members_file = write_jsonl(run.path("data/members.jsonl"), mem)
        nonmembers_file = write_jsonl(run.path("data/nonmembers.jsonl"), non)
        console.rule("1 · synthetic private records")
        console.print(f"{members} members and {nonmembers} non-members from one seeded generator (seed {seed}); "
                      f"e.g. [dim]{mem[0]['text']}[/]")

        console.rule("2 · plant the members at exposures " + ",".join(map(str, counts)))
        lm = load_model_cli(model, device=device)
        base = load_sequences(members_file, lm.tokenizer, 200)
        before = profile(lm.model, base, ProfileOptions(metrics=("ma",)))
        lab = cache_dir() / "lab" / f"demo-{model.replace('/', '_')}"
        folder, manifest = plant_into(lm, members_file, counts, lab, seed=seed, lr=lr,
                                      log=lambda m: err_console.print(f"[cyan]{m}[/]"))
        planted = load_model_cli(str(folder), device=device)

        console.rule("3 · audit the planted model")
        forget_set = load_sequences(members_file, planted.tokenizer, 200)
        ref_set = load_sequences(nonmembers_file, planted.tokenizer, 200)
        opts = ProfileOptions(metrics=("ma", "el", "extraction"))
        with progress_bar() as progress:
            # EL and extraction of the non-members too, to show they stay at the unseen level.
            result = audit(planted.model, forget_set, ref_set, opts, band, progress=progress,
                           reference_metrics=opts.metrics)
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
        seconds = time.perf_counter() - t0
        write_json(run.path("manifest.json"), build_manifest(
            "demo", {"members": members, "nonmembers": nonmembers, "exposures": list(counts), "seed": seed, "lr": lr},
            {"model": lm.describe(), "planted": str(folder), "plant_key": manifest["key"]},
            seed=seed, seconds=round(seconds, 1)))
        sections = [Section(
            "The lab", f"{members} synthetic private records were planted into {lm.name} at exposure counts "
            f"{', '.join(map(str, counts))} (fine-tuning on the records mixed with ordinary text; planted model "
            f"cached in {folder}). {nonmembers} non-members from the same generator were never seen: they are the "
            "unseen reference for τ. Extraction gives the model each record's prefix (file number and name) and "
            "checks whether greedy decoding reproduces the secret part (birth date, e-mail, phone, address, "
            "account).",
            tables=[("By exposure (0 = non-members)", table.round(3))],
            images=[("Mean MA, EL_10 and exact extraction by exposure; τ and the band", images["exposure"])])]
        sections += audit_sections(result, planted.tokenizer, images, f"{nonmembers} unseen records")
        write_report(run.path("report.html"), "unmemorize demo: planted private records", sections,
                     subtitle=f"model {lm.name} · {seconds:.0f} s")
        path = run.commit()

    t = Table(title="Memorization by exposure (0 = non-members, the unseen reference)", title_justify="left")
    for c in table.columns:
        t.add_column(str(c), justify="right")
    for _, r in table.iterrows():
        t.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.tolist()])
    console.print(sequence_table(result, 10, title="Most memorized members"))
    console.print(t)
    console.print(summary_table(result))
    console.print(f"Finished in {seconds:.0f} s. Report: [bold]{path / 'report.html'}[/]")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
