"""Whose forgetting survives which probe? Robustness probes on the unlearned models of the oracle-gap benchmark.

    .venv/bin/python benchmarks/bench_probes.py [--runs runs/benchmarks/oracle_gap] [--probes all]
        [--select NAME,…] [--steps 10] [--lr 1e-5] [--batch 8] [--margin 0.05] [--samples 10] [--seed 0]
        [--report-only]

Every run folder under ``--runs`` (``benchmarks/oracle_gap.py`` writes ``split<k>/<method>-<stop>``, each with
its record.json) names an unlearned model of the planted lab and its retrain oracle. Its model is probed
(docs/method.md §3.8) with the oracle as the baseline:

* a run saved with ``save: true`` holds the unlearned model in ``<run>/model``: it is probed there;
* otherwise the run is re-created through the library's recipe from its recorded spec, with the probes on
  and the attacks and utility off, into ``runs/benchmarks/probes/…``: unlearning is seeded, so the model is
  the same one (the row says whether the forget set's mean MA after unlearning matches the record's).

Each finished run is appended to ``benchmarks/results/probes_runs.jsonl`` (and skipped when the script runs
again with the same settings); the RESULTS.md section is rewritten from every run recorded with the current
settings, its sentences computed from them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import torch

from benchmarks import common
from benchmarks.common import RESULTS_DIR, RUNS, RunStore, split_list

TITLE = "Robustness probes: whose forgetting survives which probe"


def settings_of(args) -> dict:
    """The probe settings every run is probed with (the store's key, with the run's identity)."""
    from unmemorize.probes.options import ProbeSettings

    return ProbeSettings(names=tuple(args.probes), steps=args.steps, lr=args.lr, batch_size=args.batch,
                         samples=args.samples, margin=args.margin, seed=args.seed).model_dump(mode="json")


def run_identity(record) -> str:
    """What decides the unlearned model: the recorded spec without its probes (a hash)."""
    spec = {k: v for k, v in record.spec.items() if k != "probes"}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_runs(root: Path) -> list[Path]:
    """The finished run folders under ``root`` (a folder holds record.json only when it is complete)."""
    return sorted(p.parent for p in Path(root).glob("**/record.json") if not p.parent.name.startswith("."))


def _split_of(folder: Path, record) -> str:
    m = re.search(r"split(\w+)", str(folder))
    return m.group(1) if m else (record.labels.split or "")


def probe_saved(folder: Path, record, settings: dict, out: Path, log, progress=None):
    """Probe ``<folder>/model`` with the run's own inputs and oracle; write the probe files into ``out``."""
    from unmemorize import recipe
    from unmemorize.models import ModelSource
    from unmemorize.probes.options import ProbeSettings
    from unmemorize.probes.run import run_probes, write_report, write_results
    from unmemorize.runs import AtomicDir
    from unmemorize.spec import RunSpec

    spec = RunSpec.model_validate(record.spec)
    unlearned = spec.model.replace(path=str(folder / "model")).load(log=log)
    tok = unlearned.tokenizer
    forget = recipe.load_forget(spec, tok)
    reference = recipe._reference_set(spec, tok) if spec.reference is not None else None
    oracle = retain = None
    if spec.oracle is not None:
        oracle = ModelSource(path=spec.oracle, dtype=spec.model.dtype, device=spec.model.device).load(log=log)
        recipe.check_oracle(unlearned, oracle)
        retain = recipe.retain_members(oracle, forget, tok, spec.length)
    band = spec.band.at(record.tau) if hasattr(spec.band, "at") else spec.band
    results = run_probes(unlearned.model, tok, forget, settings=ProbeSettings(**settings), oracle=oracle.model if oracle else None,
                         reference=reference, retain_members=retain, band=band, log=log, progress=progress)
    with AtomicDir(out) as d:
        images = write_results(results, d.tmp)
        write_report(results, d.tmp / "probes.html", images, f"Robustness probes: {record.labels.method}",
                     subtitle=f"{folder} (saved model)")
    return results.record, "saved model", None


def probe_recreated(resources, record, settings: dict, out: Path):
    """Re-create the run with the probes on (attacks and utility off): (probes record, source, ΔMA after)."""
    from unmemorize.recipe import execute
    from unmemorize.spec import RunSpec

    data = dict(record.spec)
    data["probes"] = settings
    data["attacks"] = {**data.get("attacks", {}), "names": []}
    data["utility"] = {**data.get("utility", {}), "tasks": []}
    data["save"] = False
    spec = RunSpec.model_validate(data)
    again = execute(spec, out, resources=resources, overwrite=True, command="benchmark")
    a, b = again.unlearning.after.mean, record.unlearning.after.mean
    return again.probes, "re-created", None if a is None or b is None else a - b


def row_of(folder: Path, record, probes, source: str, drift, settings: dict, wall: float) -> dict:
    return {"run": str(folder), "identity": run_identity(record), "split": _split_of(folder, record),
            "method": record.labels.method, "stop": record.labels.stop, "settings": settings, "source": source,
            "ma_after_drift": drift, "oracle": probes.oracle, "wall_seconds": wall,
            "skipped": probes.skipped, "notes": probes.notes,
            "probes": {n: {"measure": p.measure, "sequences": p.sequences, "unmeasured": p.unmeasured,
                           "resurfaced": p.resurfaced, "not_forgotten": p.not_forgotten,
                           "before": p.before.get(p.measure), "after": p.after.get(p.measure),
                           "oracle_after": (p.oracle_after or {}).get(p.measure), "rise": p.rise.get(p.measure),
                           "seconds": p.seconds, "oracle_seconds": p.oracle_seconds}
                       for n, p in probes.probes.items()}}


def run_all(args, store: RunStore) -> None:
    from unmemorize.progress import make_progress

    with make_progress(interval=30) as progress:  # off a terminal: a line every 30 s, never silent for minutes
        _run_all(args, store, progress)


def _run_all(args, store: RunStore, progress) -> None:
    from unmemorize.recipe import Resources
    from unmemorize.record import read_record

    settings = settings_of(args)
    done = {r["identity"] for r in store.rows(settings)}
    log = lambda msg: print(msg, flush=True)
    resources: dict[str, Resources] = {}  # one per planted model: it and its oracle are loaded once
    for folder in find_runs(args.runs):
        if args.select and folder.name not in args.select:
            continue
        record = read_record(folder)
        if run_identity(record) in done:
            print(f"{folder}: already probed", flush=True)
            continue
        out = args.out / folder.relative_to(args.runs)
        t = time.perf_counter()
        if (folder / "model" / "config.json").is_file():
            probes, source, drift = probe_saved(folder, record, settings, out, log, progress)
        else:
            res = resources.setdefault(record.spec["model"]["path"], Resources(log=log, progress=progress))
            probes, source, drift = probe_recreated(res, record, settings, out)
        row = row_of(folder, record, probes, source, drift, settings, time.perf_counter() - t)
        store.append(row)
        done.add(row["identity"])
        print(f"{folder}: " + ", ".join(f"{n} {p['resurfaced']}/{p['sequences'] - p['unmeasured']}"
                                         for n, p in row["probes"].items()), flush=True)


# ---------------------------------------------------------------- the RESULTS.md section


def frame(rows: list[dict]) -> pd.DataFrame:
    """One row per run × probe."""
    out = []
    for r in rows:
        # oracle_gap's folder names tell its runs apart where the method does not (target, target-ref, …)
        method = Path(r["run"]).name.removesuffix(f"-{r['stop']}") or r["method"]
        for name, p in r["probes"].items():
            out.append({"split": r["split"], "method": method, "stop": r["stop"], "probe": name, **p,
                        "measured": p["sequences"] - p["unmeasured"],
                        "excess": None if p["oracle_after"] is None or p["after"] is None
                        else p["after"] - p["oracle_after"]})
    return pd.DataFrame(out)


def table(df: pd.DataFrame) -> str:
    """Methods as rows, probes as columns: sequences resurfaced / measured, summed over the splits, and the mean
    gap to the oracle after the probe (the verdict's measure)."""
    probes = list(dict.fromkeys(df["probe"]))
    head = ["method", "stop", "splits", *probes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (method, stop), g in df.groupby(["method", "stop"], sort=False):
        cells = [method, stop, str(g["split"].nunique())]
        for p in probes:
            h = g[g["probe"] == p]
            if h.empty:
                cells.append("–")
                continue
            gap = pd.to_numeric(h["excess"], errors="coerce").mean()
            cells.append(f"{int(h['resurfaced'].sum())}/{int(h['measured'].sum())}"
                         + ("" if pd.isna(gap) else f" ({gap:+.2f})"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading(df: pd.DataFrame) -> list[str]:
    """What the runs say, computed from them.

    Methods are ranked by the share of probed sequences *held*: at the oracle's level before the probe and
    still there after it. Ranking by resurfaced sequences alone would reward a method that forgot little: a
    sequence above the oracle before any probe cannot resurface.
    """
    out = []
    df = df.assign(held=df["measured"] - df["resurfaced"] - df["not_forgotten"],
                   forgotten_before=df["measured"] - df["not_forgotten"])
    by = df.groupby(["method", "stop"], sort=False)
    sums = by[["held", "measured", "resurfaced", "forgotten_before"]].sum()
    held = (sums["held"] / sums["measured"].clip(lower=1)).sort_values(ascending=False, kind="stable")
    out.append("Sequences held at the oracle's level through the probes (at it before the probe and after), over "
               "every probe and split: " + ", ".join(f"{m} ({s}) {100 * v:.0f}%" for (m, s), v in held.items())
               + ".")
    lost = sums["resurfaced"] / sums["forgotten_before"].clip(lower=1)
    out.append("Of the sequences at the oracle's level before a probe, resurfaced after it: "
               + ", ".join(f"{m} ({s}) {100 * lost[(m, s)]:.0f}% ({int(sums.loc[(m, s), 'resurfaced'])} of "
                           f"{int(sums.loc[(m, s), 'forgotten_before'])})" for m, s in held.index) + ".")
    weights = df[df["measure"] == "ma"]
    if not weights.empty:
        before = weights.groupby(["method", "stop"], sort=False).apply(
            lambda g: (int(g["not_forgotten"].max()), int(g["measured"].max())), include_groups=False)
        out.append("Above the oracle before any probe (not forgotten, so unable to resurface), by MA: "
                   + ", ".join(f"{m} ({s}) {n} of {k}" for (m, s), (n, k) in before.items()) + ".")
    for p, g in df.groupby("probe", sort=False):
        robust = [f"{m} ({s})" for (m, s), h in g.groupby(["method", "stop"], sort=False) if h["resurfaced"].sum() == 0]
        total = int(g["resurfaced"].sum())
        out.append(f"{p}: {total} of {int(g['measured'].sum())} sequences resurfaced over all runs; "
                   + (f"none after {', '.join(robust)}." if robust else "some resurfaced after every method."))
    return out


def described(ran: list[str], s: dict) -> str:
    """The probes that ran, each with its settings (never a probe that was not asked for)."""
    relearn = {"relearn-reference": "on unseen text", "relearn-retain": "on the retain members",
               "relearn-forget": "on one half of the forget set (measured on the other half)"}
    prompt = {"prompt-case": "in other case", "prompt-whitespace": "with more whitespace",
              "prompt-truncate": f"truncated to its last {100 * s['keep']:.0f}%",
              "prompt-chat": "in the chat template (where the tokenizer has one)"}
    parts = []
    if on := [v for k, v in relearn.items() if k in ran]:
        parts.append(f"relearning for {s['steps']} Adam steps (lr {s['lr']:g}, {s['batch_size']} rows a step) "
                     + ", ".join(on))
    if bits := [k.split("-")[1][:-3] for k in ("quant-8bit", "quant-4bit") if k in ran]:
        parts.append(f"{'- and '.join(bits)}-bit round-to-nearest weight quantization")
    if variants := [v for k, v in prompt.items() if k in ran]:
        parts.append("the prefix " + ", ".join(variants))
    if temps := [p.split("@", 1)[1] for p in ran if p.startswith("sampling@")]:
        parts.append(f"sampling at temperature{'s' if len(temps) > 1 else ''} {', '.join(temps)} (top-{s['top_k']})")
    return "; ".join(parts) if parts else "none"


def write_results(args, store: RunStore) -> None:
    rows = store.rows(settings_of(args))
    if not rows:
        return
    df = frame(rows)
    if df.empty:
        return
    s = settings_of(args)
    sources = pd.Series([r["source"] for r in rows]).value_counts().to_dict()
    drift = [abs(r["ma_after_drift"]) for r in rows if r.get("ma_after_drift") is not None]
    cmd = (f"benchmarks/bench_probes.py --probes {','.join(args.probes)} --steps {args.steps} --lr {args.lr:g} "
           f"--batch {args.batch} --margin {args.margin:g} --samples {args.samples} --seed {args.seed}"
           + (f" --select {','.join(sorted({r['run'].rstrip('/').rsplit('/', 1)[-1] for r in rows}))}" if args.select else ""))
    oracle = all(r["oracle"] for r in rows)
    body = f"""Command: `.venv/bin/python {cmd}` (CPU, {torch.get_num_threads()} threads), over the unlearned models of
`benchmarks/oracle_gap.py` ({len(rows)} runs: {', '.join(f'{n} {k}' for k, n in sources.items())}{
        f'; forget-set MA after re-created unlearning within {max(drift):.1e} of the recorded' if drift else ''}).

Probes (docs/method.md §3.8): {described(list(dict.fromkeys(df['probe'])), s)}. Verdict measure: MA for the weight probes, the
matched share of the {s['suffix']}-token suffix for the others. {'A sequence has resurfaced when the probe lifts it more than ' + f"{s['margin']:g}" + ' above the retrain oracle after the same probe (and it was not above the oracle before).' if oracle else 'No oracle for some runs: there a sequence has resurfaced when the probe lifts it more than the margin above its own level.'}
Cells: sequences resurfaced / measured, summed over the splits (mean gap to the oracle after the probe).

{table(df)}

What the runs say (computed by the script):

{chr(10).join('- ' + line for line in reading(df))}
"""
    common.write_section(TITLE, body)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=RUNS / "oracle_gap", help="the run folders to probe")
    ap.add_argument("--out", type=Path, default=RUNS / "probes", help="where re-created runs and probe files go")
    ap.add_argument("--store", type=Path, default=RESULTS_DIR / "probes_runs.jsonl")
    ap.add_argument("--results", type=Path, default=None, help="the RESULTS.md to write (default: benchmarks/RESULTS.md)")
    ap.add_argument("--select", default="", help="only these run folders, by name (e.g. target-ref-target); "
                                                "default: every run under --runs")
    ap.add_argument("--probes", default="all")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from the recorded runs")
    args = ap.parse_args(argv)
    args.probes = split_list(args.probes)
    args.select = set(split_list(args.select))
    if args.results is not None:
        common.RESULTS = args.results
    if args.threads:
        torch.set_num_threads(args.threads)
    store = RunStore(args.store)
    settings_of(args)  # bad settings: one line before any work
    if not args.report_only:
        if not args.runs.is_dir():
            sys.exit(f"no runs in {args.runs}: run benchmarks/oracle_gap.py first (or pass --runs)")
        run_all(args, store)
    write_results(args, store)


if __name__ == "__main__":
    main()
