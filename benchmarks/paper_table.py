"""Benchmark: the paper-style table (docs/method.md §7) for one model on Jang et al.'s forget sets.

    .venv/bin/python benchmarks/paper_table.py                       # default model, sizes 8 and 32, splits 0-2
    .venv/bin/python benchmarks/paper_table.py --sizes 8 --splits 0  # a smaller table
    .venv/bin/python benchmarks/paper_table.py --model PATH --no-results   # another model; leave RESULTS.md alone

Builds an experiment config from ``configs/default.yaml`` (methods GA, SGA, TA, TAU; τ from 100
unseen Pile sequences; MIAU + loss + reference attacks; the paper's utility tasks, first 16
examples each) with one forget entry per size, writes it to ``<out>/paper_table.yaml`` and runs it
with :func:`unmemorize.experiments.run_experiment`. The runner skips finished runs, so stopping and
running the same command again resumes where it stopped. Then it aggregates the runs (mean ± 95%
t-interval over the splits) into ``<out>/report`` and rewrites the section of
``benchmarks/RESULTS.md`` named after the model, with the command that made it.

The main section holds MIAU at K = 10 neighbours (the runs recorded first). A run at another
``--neighbours`` (the paper's 25) is a grid of its own (K is in the run key), and writes a section and
kept files of its own beside the main ones, each run set beside the same run (forget set, split,
method, stop rule) of the main table, so the reader sees what K moved and whether the rerun repeated
the unlearning (then only MIAU's neighbours differ).

Needs the data folder (UNMEMORIZE_DATA: the forget sets and the evaluation files; docs/data.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, data, paper_method, write_section  # noqa: E402

NEIGHBOURS = 10  # MIAU's K in the runs of the main section; a run at another K writes beside it
PAIR = ["forget", "split", "method", "stop"]  # what names one run of the table across K


def build_config(args) -> dict:
    """configs/default.yaml with this command's model, sizes, splits, methods and budgets (absolute paths)."""
    cfg = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    cfg["name"] = "paper-table"
    if args.model != "default":
        cfg["model"] = {"path": str(Path(args.model).resolve()), "name": args.model_name or Path(args.model).name}
    cfg["forget"] = [{"name": f"jang{s}", "path": str(data("forget") / f"lm_extraction_{s}_{{split}}.csv"),
                      "splits": args.splits} for s in args.sizes]
    cfg["methods"] = [paper_method(m) for m in args.methods]  # the paper's absolute constants
    cfg["reference"] = str(data("eval", "pile.csv"))
    cfg["reference_limit"] = args.reference_limit
    cfg["length"] = args.length
    cfg["training"] = {**cfg["training"], "max_steps": args.max_steps, "micro_batch": args.micro_batch}
    cfg["attacks"] = {**cfg["attacks"], "neighbours": args.neighbours}
    if args.utility_limit == 0:
        cfg["utility"] = {"tasks": []}
    else:
        cfg["utility"] = {**cfg["utility"], "data_dir": str(data("eval")), "limit": args.utility_limit}
    if args.device:
        cfg["device"] = args.device
    return cfg


def machines(manifests: list[dict]) -> dict[str, int]:
    """How many runs each machine made, from their manifests: {"cuda (torch 2.11.0, Python 3.12.3)": 20, …},
    largest first.

    The runner skips finished runs by a key that leaves the device out (it does not change what is
    computed), so one table can gather runs from several machines; its seconds column is then only
    comparable within one, and the section must say so instead of naming this machine alone."""
    groups: dict[str, int] = {}
    for m in manifests:
        v = m.get("versions", {})
        extra = f", {m['torch_threads']} threads" if m.get("device") == "cpu" and m.get("torch_threads") else ""
        device = m.get("device_name") or m.get("device", "?")
        label = f"{device} (torch {v.get('torch', '?')}, Python {v.get('python', '?')}{extra})"
        groups[label] = groups.get(label, 0) + 1
    return dict(sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])))


def describe_devices(manifests: list[dict]) -> str:
    """machines() as a phrase: "20 on cuda (…), 4 on cpu (…)"."""
    return ", ".join(f"{n} on {label}" for label, n in machines(manifests).items()) or "no runs"


def _span(vals) -> str:
    lo, hi = min(vals), max(vals)
    return f"{lo:g}–{hi:g}" if lo != hi else f"{lo:g}"


def _forget_sets(runs: pd.DataFrame):
    """(forget set, its runs) in order of size: the report's run frame (load_runs), one row per run."""
    for forget in sorted(runs["forget"].unique(), key=lambda f: runs.loc[runs["forget"] == f, "size"].iloc[0]):
        yield forget, runs[runs["forget"] == forget]


def _starts(g: pd.DataFrame) -> pd.DataFrame:
    """One row per split: the methods of a split share the original model, so its start counts once."""
    first = g.drop_duplicates("split")
    key = first["split"].astype(str)
    return first.iloc[sorted(range(len(first)), key=lambda i: (len(key.iloc[i]), key.iloc[i]))]  # 2 before 10


def before_lines(runs: pd.DataFrame) -> list[str]:
    """One line per forget set: what there was to forget — mean MA, τ and c(D_f) of the original model,
    per split. The table shows only the after-state; without the start a reader cannot tell a method
    that did little from a forget set that held little."""
    lines = []
    for forget, g in _forget_sets(runs):
        st = _starts(g)
        lines.append(f"- {forget} (|D_f| = {int(st['size'].iloc[0])}), splits {', '.join(map(str, st['split']))}: "
                     f"mean MA before unlearning {', '.join(f'{v:.3f}' for v in st['mean_ma_before'])}; "
                     f"τ {', '.join(f'{v:.3f}' for v in st['tau'])}; sequences outside the band before, c(D_f): "
                     f"{', '.join(str(int(v)) for v in st['c_before'])}")
    return lines


def reading(runs: pd.DataFrame, methods: list[str]) -> list[str]:
    """What the runs say, per forget set, from the report's run frame: how many steps the stop rule
    needed, c(D_f) before and after, MIAU after unlearning against chance, and how far the average
    accuracy moved. Ranges are over runs, means over splits; the table beside it has the intervals."""
    out = []
    for forget, g in _forget_sets(runs):
        by = {m: g[g["method"] == m] for m in methods if (g["method"] == m).any()}
        n = len(_starts(g))
        line = (f"- {forget} (|D_f| = {int(g['size'].iloc[0])}, {n} split{'s' * (n != 1)}): the stop rule held after "
                f"{_span(g['steps'].astype(int))} steps ("
                + ", ".join(f"{m.upper()} {_span(r['steps'].astype(int))}" for m, r in by.items())
                + f"); c(D_f) {_starts(g)['c_before'].mean():.1f} before → "
                + ", ".join(f"{m.upper()} {r['c'].mean():.1f}" for m, r in by.items()) + " after (means over splits)")
        miau = g["miau_auc"].dropna() if "miau_auc" in g else pd.Series(dtype=float)
        if len(miau):
            line += ("; MIAU AUC after unlearning "
                     + ", ".join(f"{m.upper()} {r['miau_auc'].mean():.2f}" for m, r in by.items() if r["miau_auc"].notna().all())
                     + f", under 0.5 in {int((miau < 0.5).sum())} of {len(miau)} runs (the score now ranks the unlearned "
                       "members below unseen text: a trace of unlearning that an attacker reads by flipping the score)")
        acc = g["average_acc_delta"].dropna() if "average_acc_delta" in g else pd.Series(dtype=float)
        if len(acc):
            line += f"; average accuracy moved by {acc.min():+.3f} to {acc.max():+.3f}"
        out.append(line + ".")
    return out


def section_title(label: str, k: int) -> str:
    """The main section holds the runs at K = NEIGHBOURS; a run at another K writes beside it, never over it."""
    title = f"Paper table: {label} on Jang's forget sets"
    return title if k == NEIGHBOURS else f"{title}, MIAU K = {k}"


def artifact_stem(label: str, k: int) -> str:
    """File-name stem of the kept CSVs and plots: the main table's, or its own for a run at another K."""
    stem = "paper_table_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return stem if k == NEIGHBOURS else f"{stem}_k{k}"


def k_comparison(runs: pd.DataFrame, main: pd.DataFrame, k: int) -> list[str]:
    """MIAU at this K beside the main table's run of the same forget set, split, method and stop rule
    (``main``: its kept runs CSV, at K = NEIGHBOURS), and whether what K cannot change came out the same —
    the unlearning (steps, the forget set's mean MA after it) and the attacks without neighbours — so a
    moved MIAU reading can be read as the neighbours' doing. Runs without a partner are left out."""
    if main is None or main.empty or "miau_auc" not in runs or "miau_auc" not in main:
        return []
    key = lambda f: f.assign(split=f["split"].astype(str), stop=f["stop"].astype(str))[PAIR + [  # noqa: E731
        c for c in ("steps", "mean_ma", "miau_auc", "loss_auc", "reference_auc") if c in f]]
    both = key(runs).merge(key(main), on=PAIR, suffixes=("", "_main")).dropna(subset=["miau_auc", "miau_auc_main"])
    if both.empty:
        return []
    out = []
    for forget, g in _forget_sets(both.assign(size=both["forget"].map(runs.groupby("forget")["size"].first()))):
        means = []
        for method, r in g.groupby("method", sort=False):
            n = r["split"].nunique()
            means.append(f"{method.upper()} {r['miau_auc'].mean():.3f} vs {r['miau_auc_main'].mean():.3f} "
                         f"({n} split{'s' * (n != 1)})")
        out.append(f"- {forget}: MIAU AUC after unlearning, mean over the splits run at both K, at K = {k} vs "
                   f"K = {NEIGHBOURS}: " + ", ".join(means) + f"; under 0.5 in {int((g['miau_auc'] < 0.5).sum())} vs "
                   f"{int((g['miau_auc_main'] < 0.5).sum())} of {len(g)} runs.")
    steps = int((both["steps"] != both["steps_main"]).sum()) if "steps_main" in both else 0
    ma = (both["mean_ma"] - both["mean_ma_main"]).abs().max() if "mean_ma_main" in both else 0.0
    others = [c for c in ("loss_auc", "reference_auc") if f"{c}_main" in both]
    auc = max([(both[c] - both[f"{c}_main"]).abs().max() for c in others], default=0.0)
    if steps == 0 and ma < 5e-4 and auc < 5e-4:
        out.append(f"- The unlearning and the attacks without neighbours (loss, reference) came out the same at both K "
                   f"in all {len(both)} paired runs: only MIAU's neighbours differ between the readings.")
    else:
        out.append(f"- Between the K = {k} and the K = {NEIGHBOURS} run, the unlearning took other steps in {steps} of "
                   f"{len(both)} runs and the forget set's mean MA after it moved by up to {ma:.3f}; the attacks without "
                   f"neighbours (loss, reference) moved by up to {auc:.3f} in AUC (the rerun did not exactly repeat the "
                   "run, so the readings differ in more than K).")
    return out


def keep_artifacts(written, label: str, k: int = NEIGHBOURS) -> str:
    """Copy the table's CSVs and the per-sequence before/after plots from the report (under the ignored
    runs/ folder) into benchmarks/results/, so that what RESULTS.md states can be checked in the repo.
    Returns the Markdown that links them."""
    import shutil

    stem = artifact_stem(label, k)
    dest = ROOT / "benchmarks" / "results"
    dest.mkdir(parents=True, exist_ok=True)
    report = written.html.parent
    links = []
    for name, what in (("results.csv", "the table"), ("runs.csv", "one row per run")):
        shutil.copyfile(report / name, dest / f"{stem}_{name}")
        links.append(f"{what}: `benchmarks/results/{stem}_{name}`")
    plots = []
    for (model, forget, size), found in sorted(written.plots.items(), key=lambda kv: (kv[0][2], str(kv[0][1]))):
        target = f"{stem}_{forget}_{size}_before_after.png"
        shutil.copyfile(found["before_after"], dest / target)
        plots.append(f"![per-sequence MA before and after]({'results/' + target})")
    return "Kept in the repo: " + "; ".join(links) + ".\n\n" + "\n\n".join(plots)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct) or a Hugging Face model folder")
    p.add_argument("--model-name", default=None, help="label of --model in the table")
    p.add_argument("--sizes", default="8,32", help="forget-set sizes (Jang: 1, 4, 8, 32, 128)")
    p.add_argument("--splits", default="0,1,2", help="splits per size (the data folder has 0-2)")
    p.add_argument("--methods", default="ga,sga,ta,tau")
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--micro-batch", type=int, default=8, help="must divide every size")
    p.add_argument("--reference-limit", type=int, default=100)
    p.add_argument("--neighbours", type=int, default=NEIGHBOURS,
                   help=f"MIAU neighbours per sequence (not {NEIGHBOURS}: a section of its own beside the main one)")
    p.add_argument("--utility-limit", type=int, default=16, help="examples per utility task (0: no utility)")
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None,
                   help=f"run folders and report (default runs/paper_table, runs/paper_table_k<K> at K ≠ {NEIGHBOURS})")
    p.add_argument("--no-results", action="store_true", help="do not rewrite benchmarks/RESULTS.md")
    args = p.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.splits = [int(s) for s in args.splits.split(",") if s.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    command = " ".join([".venv/bin/python benchmarks/paper_table.py", *map(shlex.quote, sys.argv[1:])])
    if args.out is None:  # a table at another K keeps its own config and report beside the main one's
        args.out = ROOT / "runs" / ("paper_table" if args.neighbours == NEIGHBOURS else f"paper_table_k{args.neighbours}")

    import torch

    from unmemorize.errors import UserError
    from unmemorize.experiments import config_from_dict, run_experiment
    from unmemorize.progress import make_progress
    from unmemorize.report.experiments import write_experiment_report
    from unmemorize.runs import atomic_write_text

    args.out.mkdir(parents=True, exist_ok=True)
    config_path = args.out / "paper_table.yaml"
    raw = build_config(args)
    atomic_write_text(config_path, yaml.safe_dump(raw, sort_keys=False))
    print(f"command: {command}\nconfig:  {config_path}", flush=True)
    t0 = time.perf_counter()
    try:
        cfg = config_from_dict(raw, source=str(config_path))
        with make_progress() as progress:
            folders = run_experiment(cfg, args.out, progress=progress, log=lambda m: progress.console.print(m))
    except UserError as e:
        sys.exit(f"error: {e}")
    written = write_experiment_report(folders, args.out / "report", title="Paper table")
    html = written.html
    minutes = (time.perf_counter() - t0) / 60
    tables = written.markdown
    print(tables)
    print(f"report: {html}")
    if args.no_results:
        return
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    manifests = [json.loads((f / "manifest.json").read_text()) for f in folders]
    made_on = describe_devices(manifests)
    mixed = "; the seconds column mixes machines, so compare it only within one" if len(machines(manifests)) > 1 else ""
    runs = written.runs
    said, start = "\n".join(reading(runs, args.methods)), "\n".join(before_lines(runs))
    label = raw["model"]["name"] if isinstance(raw["model"], dict) else raw["model"]
    main_csv = ROOT / "benchmarks" / "results" / f"{artifact_stem(label, NEIGHBOURS)}_runs.csv"
    beside = []
    if args.neighbours != NEIGHBOURS:  # read before keep_artifacts writes this K's own files
        main_runs = pd.read_csv(main_csv) if main_csv.exists() else None
        beside = k_comparison(runs, main_runs, args.neighbours)
    kept = keep_artifacts(written, label, args.neighbours)
    compared = (f"\nBeside the same runs at K = {NEIGHBOURS} (the main section, `{main_csv.relative_to(ROOT)}`):\n\n"
                + "\n".join(beside) + "\n") if beside else ""
    utility = (f"the paper's 13 tasks, first {args.utility_limit} examples each (full mode)" if args.utility_limit
               else "not measured (--utility-limit 0)")
    body = f"""Command (resumable: finished runs are skipped):

```
{command}
```

{len(folders)} run{'s' * (len(folders) != 1)}, made {made_on}{mixed}. This invocation: {minutes:.1f} min on {device}
(finished runs are skipped, whichever machine made them). Config: `{config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path}`
(from `configs/default.yaml`); report with plots: `{html.relative_to(ROOT) if html.is_relative_to(ROOT) else html}`.
τ = the model's mean MA on the first {args.reference_limit} sequences of `pile.csv`; the same sequences are the
attacks' non-members; MIAU with K = {args.neighbours} neighbours per sequence. Stop rule: mean MA < τ, at most
{args.max_steps} steps. Utility: {utility}. Cells: mean ± half-width of the 95% Student-t interval over
splits {', '.join(map(str, args.splits))} (n = {len(args.splits)}).

Where the methods started (the original model, per split):

{start}

What the runs say (computed from their summaries):

{said}
{compared}
{tables}

{kept}
"""
    write_section(section_title(label, args.neighbours), body)
    print("wrote its section of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
