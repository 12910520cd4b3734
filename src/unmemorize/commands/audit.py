"""`unmemorize audit`: which sequences does the model memorize, compared with unseen text?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unmemorize.commands.common import (
    AllowPickleOpt, DeviceOpt, DtypeOpt, LengthOpt, ModelOpt, OutOpt, OverwriteOpt, SeedOpt, TrustCodeOpt,
    console, default_out, err_console, load_model_cli, parse_list, progress_bar,
)

AUDIT_METRICS = ("ma", "el", "extraction")


def audit_command(
    forget: Annotated[Path, typer.Option("--forget", "-f", help="Sequences to audit: Jang CSV, JSONL, text file or folder.")],
    reference: Annotated[Path | None, typer.Option("--reference", "-r", help="Unseen text of the same form, for τ.")] = None,
    model: ModelOpt = "default",
    out: OutOpt = None,
    metrics: Annotated[str, typer.Option("--metrics", help="Comma-separated subset of ma,el,extraction.")] = "ma,el,extraction",
    length: LengthOpt = 200,
    band_lo: Annotated[float, typer.Option("--band-lo", help="g(x) ≤ lo: over-forgotten.")] = 0.15,
    band_hi: Annotated[float, typer.Option("--band-hi", help="g(x) ≥ hi: extractable.")] = 0.60,
    tau: Annotated[float | None, typer.Option("--tau", help="Use this τ instead of the reference's mean MA.")] = None,
    tau_by: Annotated[str | None, typer.Option("--tau-by", help="Column shared by both sets (e.g. corpus): τ per group.")] = None,
    el_n: Annotated[int, typer.Option("--el-n", help="n of EL_n.")] = 10,
    prefix: Annotated[int, typer.Option("--prefix", help="Extraction: prefix tokens k (a 'prefix' column overrides).")] = 100,
    suffix: Annotated[int, typer.Option("--suffix", help="Extraction: true suffix tokens m.")] = 100,
    parity: Annotated[bool, typer.Option("--parity", help="Count padding as the original code does (PAPER_SPEC §2.2).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")] = 8,
    show: Annotated[int, typer.Option("--show", help="Rows of the table to print.")] = 40,
    overwrite: OverwriteOpt = False,
    seed: SeedOpt = 0,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustCodeOpt = False,
):
    """Measure per-sequence memorization (MA, EL_n, exact extraction) against τ from unseen text."""
    import torch

    from unmemorize.audit import audit
    from unmemorize.data import load_sequences
    from unmemorize.errors import UserError
    from unmemorize.memorization import ProfileOptions
    from unmemorize.report.audit import audit_sections, sequence_table, summary_table, write_audit
    from unmemorize.report.html import write_report
    from unmemorize.runs import RunDir, build_manifest, write_json
    from unmemorize.thresholds import Band

    chosen = parse_list(metrics, AUDIT_METRICS, "metric")
    if el_n < 1 or prefix < 1 or suffix < 1 or batch_size < 1:
        raise UserError("--el-n, --prefix, --suffix and --batch-size must be positive")
    if reference is None and tau is None:
        raise UserError("give --reference FILE (unseen text of the same form) or --tau VALUE")
    band = Band(band_lo, band_hi)
    out = out or default_out("audit")
    torch.manual_seed(seed)
    from unmemorize import distributed

    with RunDir(distributed.output_dir(out), overwrite) as run:  # checks the output folder before any slow work; rank 0 writes `out`
        lm = load_model_cli(model, dtype, device, allow_pickle, trust_remote_code)
        forget_set = load_sequences(forget, lm.tokenizer, length)
        ref_set = load_sequences(reference, lm.tokenizer, length) if reference is not None else None
        opts = ProfileOptions(metrics=chosen, batch_size=batch_size, el_n=el_n, extraction_prefix=prefix,
                              extraction_suffix=suffix, parity=parity)
        with progress_bar() as progress:
            result = audit(lm.model, forget_set, ref_set, opts, band, tau, tau_by, progress)
        for w in result.warnings:
            err_console.print(f"[yellow]warning:[/] {w}")
        images = write_audit(run, result, lm.tokenizer, band)
        ref_desc = (f"{ref_set.source} ({len(ref_set)} sequences)" if ref_set is not None else "a given value")
        write_json(run.path("manifest.json"), build_manifest(
            "audit",
            {"metrics": chosen, "length": length, "band": [band.lo, band.hi], "tau": tau, "tau_by": tau_by,
             "el_n": el_n, "extraction_prefix": prefix, "extraction_suffix": suffix, "parity": parity,
             "padding": "counted (parity)" if parity else "masked", "batch_size": batch_size, "dtype": dtype},
            {"model": lm.describe(), "forget": forget_set.describe(),
             "reference": ref_set.describe() if ref_set is not None else None},
            seed=seed))
        write_report(run.path("report.html"), "unmemorize audit",
                     audit_sections(result, lm.tokenizer, images, ref_desc),
                     subtitle=f"model {lm.name} · forget {forget_set.source} · reference {ref_desc}")
        path = run.commit()
    console.print(sequence_table(result, show))
    console.print(f"τ = {result.tau:.3f} from {ref_desc}" + (f"; padding counted (parity mode)" if parity else ""))
    console.print(summary_table(result))
    console.print(f"Run directory: [bold]{path}[/]  (report: {path / 'report.html'})")


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
