"""`unmemorize evaluate`: the paper's utility suite on one model, plus optional lm-eval tasks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from unmemorize.commands.common import (
    AllowPickleOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutOpt,
    OverwriteOpt,
    TrustCodeOpt,
    console,
    default_out,
    load_model_cli,
    progress_bar,
)
from unmemorize.errors import UserError

TasksOpt = Annotated[str, typer.Option(
    "--tasks", "-t", help="Comma-separated tasks or groups: paper (the 13 of the paper), classification, dialogue, "
                          "perplexity, all, or task names (piqa, hellaswag, arc_easy, …); 'none' to run only "
                          "--harness-tasks.")]
DataOpt = Annotated[Path | None, typer.Option(
    "--data", "-d", help="Folder laid out like ../shared/data/eval: piqa/validation.jsonl, …, lambada.csv, "
                         "wizard_of_wikipedia.json, … (each task folder's SOURCE.md lists its fields).")]
ModeOpt = Annotated[str, typer.Option(
    "--mode", help="full: whole splits, masks, left-padded generation. parity: the original code's first-N "
                   "examples and quirks, for comparing with published numbers.")]
LimitOpt = Annotated[int | None, typer.Option(
    "--limit", help="full: score the first N examples of each task. parity: N (default 16 = 8 per GPU × 2 GPUs, "
                    "as SGA/TA/TAU; 32 for GA/DPD).")]
MaxLengthOpt = Annotated[int, typer.Option("--max-length", help="Token window per example (the paper: 512).")]
BatchTokensOpt = Annotated[int, typer.Option("--batch-tokens", help="Tokens per forward pass; lower it if memory runs out.")]
HarnessOpt = Annotated[str | None, typer.Option(
    "--harness-tasks", help="lm-evaluation-harness tasks to run as well, on the same in-memory model "
                            "(needs: pip install 'unmemorize[harness]').")]
HarnessIncludeOpt = Annotated[Path | None, typer.Option(
    "--harness-include", help="Folder of extra lm-eval task YAMLs (e.g. dataset_path: json with local data_files).")]


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_tables(result: dict | None, harness: dict | None) -> None:
    from rich.table import Table

    if result is not None:
        from unmemorize.utility.report import METRIC_COLUMNS, summary_frame

        df = summary_frame(result)
        metrics = [m for m in METRIC_COLUMNS if m in df.columns]
        table = Table(title=f"Utility — {result['mode']} mode", title_justify="left")
        for col in ("task", "n", *metrics, "chance", "seconds"):
            table.add_column(col, justify="left" if col == "task" else "right", no_wrap=col == "task")
        for _, row in df.iterrows():
            table.add_row(row["task"], str(row["n"]), *[_fmt(row[m]) for m in metrics],
                          _fmt(row.get("chance")), f"{row['seconds']:.1f}")
        console.print(table)
        for name, agg in result["aggregates"].items():
            tail = "" if agg["complete"] else f" (over {len(agg['tasks'])} of its tasks)"
            console.print(f"{name} = {agg['value']:.4f}{tail}")
        for note in result.get("notes", []):
            console.print(f"[yellow]note[/]: {note}")
    if harness is not None:
        table = Table(title=f"lm-evaluation-harness {harness['lm_eval']}", title_justify="left")
        for col in ("task", "n", "metric", "value"):
            table.add_column(col, justify="left" if col in ("task", "metric") else "right")
        for name, entry in harness["tasks"].items():
            for metric, value in entry["metrics"].items():
                table.add_row(name, str(entry["n"]), metric, _fmt(value))
        console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        model: ModelOpt = "default",
        tasks: TasksOpt = "paper",
        data: DataOpt = None,
        mode: ModeOpt = "full",
        limit: LimitOpt = None,
        max_length: MaxLengthOpt = 512,
        batch_tokens: BatchTokensOpt = 4096,
        harness_tasks: HarnessOpt = None,
        harness_include: HarnessIncludeOpt = None,
        out: OutOpt = None,
        overwrite: OverwriteOpt = False,
        dtype: DtypeOpt = "float32",
        device: DeviceOpt = None,
        allow_pickle: AllowPickleOpt = False,
        trust_remote_code: TrustCodeOpt = False,
    ) -> None:
        """Measure utility on the paper's tasks (PAPER_SPEC §6): 8 classification tasks, LAMBADA,
        4 dialogue tasks, perplexity. Writes utility.json, utility_examples.parquet and report.html."""
        import pandas as pd

        from unmemorize.report.html import Section, write_report
        from unmemorize.runs import RunDir, build_manifest, sha256_file, write_json
        from unmemorize.utility import EvalOptions, evaluate_utility, save_utility, utility_sections
        from unmemorize.utility.harness import run_harness
        from unmemorize.utility.tasks import TASKS, find_file, resolve_tasks

        # Check everything the user typed before the model is loaded.
        names = () if tasks.strip().lower() == "none" else resolve_tasks(tasks)
        if not names and not harness_tasks:
            raise UserError("nothing to evaluate: --tasks none and no --harness-tasks")
        options = dict(max_length=max_length, batch_tokens=batch_tokens)
        EvalOptions(mode=mode, limit=limit, **options)
        files = {}
        if names:
            if data is None:
                raise UserError("--data is required for the paper's tasks: a folder laid out like ../shared/data/eval")
            files = {n: find_file(TASKS[n], data) for n in names}
        from unmemorize import distributed

        if harness_tasks and distributed.launched():
            raise UserError("--harness-tasks runs lm-evaluation-harness in one process; run it without "
                            "accelerate launch (the paper's tasks, --tasks, are split over the processes)")
        out = out or default_out("evaluate")
        # under accelerate launch every rank scores its shard of each task's examples; rank 0 writes `out`
        with RunDir(distributed.output_dir(out), overwrite=overwrite) as run:
            lm = load_model_cli(model, dtype=dtype, device=device, allow_pickle=allow_pickle,
                                trust_remote_code=trust_remote_code)
            result = harness = None
            with progress_bar() as progress:
                if names:
                    result = evaluate_utility(lm.model, lm.tokenizer, names, data, mode=mode, limit=limit,
                                              progress=progress, **options)
            if harness_tasks:
                harness = run_harness(lm.model, lm.tokenizer, harness_tasks, include_path=harness_include, limit=limit)
            harness_summary = None if harness is None else {
                "lm_eval": harness["lm_eval"],
                "tasks": {t: {"metrics": e["metrics"], "n": e["n"]} for t, e in harness["tasks"].items()}}
            manifest = build_manifest(
                "evaluate",
                options={"tasks": list(names), "mode": mode, "limit": limit, "max_length": max_length,
                         "batch_tokens": batch_tokens, "harness_tasks": harness_tasks,
                         "harness_include": harness_include, "dtype": dtype},
                inputs={"model": lm.describe(),
                        "data": {n: {"file": str(p), "sha256": sha256_file(p)} for n, p in files.items()}})
            write_json(run.path("manifest.json"), manifest)
            sections = []
            if result is not None:
                if harness_summary is not None:
                    result["harness"] = harness_summary
                save_utility(result, run.tmp)
                sections += utility_sections(result)
            else:
                write_json(run.path("utility.json"), {"harness": harness_summary})
            if harness_summary is not None:
                rows = [{"task": t, "n": e["n"], "metric": m, "value": v}
                        for t, e in harness_summary["tasks"].items() for m, v in e["metrics"].items()]
                sections.append(Section("lm-evaluation-harness tasks",
                                        "lm-eval's own prompts and metrics on the same in-memory model; not the "
                                        "paper's scoring.", tables=[("", pd.DataFrame(rows))]))
            write_report(run.path("report.html"), "unmemorize evaluate", sections, subtitle=f"model {lm.name}")
            run.commit()
        _print_tables(result, harness_summary)
        console.print(f"wrote [bold]{out}[/] (utility.json, report.html)")
