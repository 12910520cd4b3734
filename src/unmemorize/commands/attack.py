"""`unmemorize attack`: can an attacker tell the forget set from unseen text? (PAPER_SPEC §3)"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unmemorize.commands.common import (
    AllowPickleOpt,
    DeviceOpt,
    DtypeOpt,
    LengthOpt,
    ModelOpt,
    OutOpt,
    OverwriteOpt,
    SeedOpt,
    TrustCodeOpt,
    check_refill_model,
    console,
    default_out,
    load_model_cli,
    progress_bar,
)
from unmemorize.errors import UserError

ATTACK_NAMES = "miau, threshold, loss, zlib, min-k, min-k++, reference, sampling"


def attack_command(
    model: ModelOpt = "default",
    forget: Annotated[Path, typer.Option("--forget", "-f", help="Forget set (the members): CSV, JSONL, text file or folder.")] = ...,
    reference: Annotated[Path, typer.Option("--reference", "-r", help="Unseen text of the same form (the non-members).")] = ...,
    original: Annotated[str | None, typer.Option("--original", help="The model before unlearning: enables the reference attack and refills MIAU's neighbours.")] = None,
    attacks: Annotated[str | None, typer.Option("--attacks", "-a", help=f"Comma-separated subset of: {ATTACK_NAMES} (default: all the inputs allow).")] = None,
    neighbours: Annotated[int, typer.Option("--neighbours", "-k", help="MIAU: neighbours per sequence (K).")] = 25,
    perturber: Annotated[str, typer.Option("--perturber", help="MIAU neighbours: lm (offline refill with the original model), t5 (needs --t5), words (cheap).")] = "lm",
    t5: Annotated[Path | None, typer.Option("--t5", help="Local T5 folder for --perturber t5 (never downloaded).")] = None,
    mask_fraction: Annotated[float, typer.Option("--mask-fraction", help="MIAU: share of words masked.")] = 0.3,
    span_words: Annotated[int, typer.Option("--span-words", help="MIAU: words per masked span.")] = 2,
    refill_model: Annotated[str | None, typer.Option("--refill-model", help="MIAU lm perturber: the model that refills the masked spans (default: --original, else --model). One that never saw the forget set keeps neighbours from leaning towards the memorized words, as Mattern et al.'s separate mask filler does.")] = None,
    refill_top_k: Annotated[int, typer.Option("--refill-top-k", help="MIAU lm perturber: sample refills from the top k tokens (0 = all).")] = 50,
    neighbour_cache: Annotated[bool, typer.Option("--neighbour-cache/--no-neighbour-cache", help="Reuse neighbours cached on disk (they hold perturbed copies of the texts).")] = True,
    min_k: Annotated[float, typer.Option("--min-k", help="k for min-k% and min-k%++ (fraction of tokens).")] = 0.2,
    samples: Annotated[int, typer.Option("--samples", help="Sampling extraction: samples per prefix (N).")] = 10,
    top_k: Annotated[int, typer.Option("--top-k", help="Sampling extraction: top-k (0 = the full distribution).")] = 40,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling extraction: temperature.")] = 1.0,
    prefix_tokens: Annotated[int, typer.Option("--prefix-tokens", help="Sampling extraction: prefix length k (a 'prefix' column wins).")] = 100,
    first_tokens: Annotated[int, typer.Option("--first-tokens", help="Sampling extraction: also count samples reproducing the first m tokens.")] = 50,
    tau: Annotated[float | None, typer.Option("--tau", help="Threshold attack: τ (default: mean g on the reference set).")] = None,
    band_lo: Annotated[float, typer.Option("--band-lo", help="Threshold attack: flag g ≤ lo (over-forgotten).")] = 0.15,
    band_hi: Annotated[float, typer.Option("--band-hi", help="Threshold attack: flag g ≥ hi (extractable).")] = 0.60,
    fpr: Annotated[list[float] | None, typer.Option("--fpr", help="FPR for TPR@FPR, repeatable (default: 0.01 and 0.001 where the reference set is large enough).")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap replicates for the 95% intervals.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")] = 8,
    length: LengthOpt = 200,
    seed: SeedOpt = 0,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustCodeOpt = False,
) -> None:
    """Run membership attacks (MIAU, threshold on g(x), loss, zlib, min-k%, min-k%++, reference, sampling
    extraction): members = the forget set, non-members = the reference set. Writes attacks.json,
    per-sequence scores, a ROC plot and report.html."""
    from unmemorize.attacks import (
        ATTACKS,
        AttackOptions,
        build_perturber,
        report_sections,
        run_attacks,
        write_results,
    )
    from unmemorize.attacks.run import select_attacks
    from unmemorize.commands.common import parse_list
    from unmemorize.data import load_sequences
    from unmemorize.report.html import write_report
    from unmemorize.runs import RunDir, build_manifest, write_json
    from unmemorize.thresholds import Band

    requested = parse_list(attacks, tuple(ATTACKS), "attack") if attacks is not None else None
    opts = AttackOptions(
        attacks=requested, neighbours=neighbours, perturber=perturber, t5_path=str(t5) if t5 else None,
        mask_fraction=mask_fraction, span_words=span_words, refill_top_k=refill_top_k or None,
        neighbour_cache=neighbour_cache, min_k=min_k,
        tau=tau, band=Band(band_lo, band_hi), samples=samples, top_k=top_k or None, temperature=temperature,
        extraction_prefix=prefix_tokens, first_tokens=first_tokens, fprs=tuple(fpr) if fpr else None,
        bootstrap=bootstrap, seed=seed, batch_size=batch_size)
    # everything that needs no model is checked before a model is loaded
    names, _ = select_attacks(requested, original is not None)
    opts.validate(names)
    if "miau" in names and perturber == "t5" and t5 is None:
        raise UserError("--perturber t5 needs --t5 PATH, a local T5 model folder (it is never downloaded)")
    check_refill_model(refill_model, names, perturber)
    from unmemorize import distributed

    out_dir = out or default_out("attack")
    # under accelerate launch every rank scores its shard of the sequences; rank 0 writes `out_dir`
    with RunDir(distributed.output_dir(out_dir), overwrite=overwrite) as run:
        target = load_model_cli(model, dtype, device, allow_pickle, trust_remote_code)
        orig = load_model_cli(original, dtype, device, allow_pickle, trust_remote_code) if original else None
        members = load_sequences(forget, target.tokenizer, length)
        nonmembers = load_sequences(reference, target.tokenizer, length)
        pert = None
        if "miau" in names:
            lm = (load_model_cli(refill_model, dtype, device, allow_pickle, trust_remote_code) if refill_model
                  else orig or target)
            pert = build_perturber(opts, lm.model, lm.tokenizer, lm.fingerprint, device)
        with progress_bar() as progress:
            results = run_attacks(target.model, target.tokenizer, members, nonmembers,
                                  original=orig.model if orig else None,
                                  original_tokenizer=orig.tokenizer if orig else None,
                                  options=opts, perturber=pert, progress=progress)
        paths = write_results(results, run.tmp)
        write_report(run.path("report.html"), f"Privacy attacks on {target.name}",
                     report_sections(results, paths["roc"]),
                     subtitle=f"forget {forget} · reference {reference}"
                              + (f" · original {orig.name}" if orig else ""))
        write_json(run.path("manifest.json"), build_manifest(
            "attack", results.as_dict()["options"],
            {"forget": members.describe(), "reference": nonmembers.describe()},
            model=target.describe(), original=orig.describe() if orig else None,
            perturber=pert.config() if pert else None,
            refill_model=lm.describe() if pert is not None and perturber == "lm" else None))
        final = run.commit()
    table = results.table()
    console.print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for note in results.notes:
        console.print(f"[yellow]note[/]: {note}")
    console.print(f"[green]wrote[/] {final}/attacks.json, attack_scores.parquet, roc.png, report.html")


def register(app: typer.Typer) -> None:
    app.command("attack")(attack_command)
