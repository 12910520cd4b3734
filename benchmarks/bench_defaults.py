"""What a new user waits for: `unmemorize audit` and `unmemorize unlearn` with their defaults, on the
default model, run as a user runs them (issue 21, items 6 and 7).

    .venv/bin/python benchmarks/bench_defaults.py [--parts audit,unlearn] [--split 0] [--render-only]

* **audit**: ``unmemorize audit --model default`` on the 32 sequences of Jang's ``lm_extraction_32_<split>``
  (held out: the default model never saw them planted) against 64 unseen Pile texts (``eval/pile.csv``).
  Goal: at most 5 minutes on the 2-core CPU, with EL for every sequence that could be extractable.
* **unlearn**: ``unmemorize unlearn`` (its default method and attacks, before and after) of 8 planted
  sequences, the 8 most exposed of the oracle-gap lab's forget set (``benchmarks/oracle_gap.py``; planted
  once and cached), against 32 unplanted Jang sequences. Goal: at most 10 minutes, with the attack plan
  printed before it starts; the plan's estimate is set beside what the attacks took.

Each command runs in a subprocess exactly as typed in a shell, without a terminal (so it prints a
progress line every few seconds). Baseline, in the same run: one bare batched forward pass of the
default model over the sequences the command profiles (no metric, no decoding), the limit any audit
approaches. Writes ``benchmarks/results/defaults.json`` and its RESULTS.md section; the reading is
computed from the recorded values.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import torch

from benchmarks.common import RESULTS_DIR, RUNS, data, unplanted_jang, write_section

TITLE = "Defaults on the CPU: the audit and an unlearning run as a new user starts them"
OUT = RESULTS_DIR / "defaults.json"
AUDIT_GOAL_S, UNLEARN_GOAL_S = 300.0, 600.0
CLI = [sys.executable, "-m", "unmemorize.cli"]  # the installed `unmemorize` command, in this interpreter


def timed(cmd: list[str], log) -> tuple[float, str]:
    """Run ``cmd`` as a user would (no terminal), echo its lines, return (seconds, output)."""
    env = {**os.environ, "COLUMNS": "120"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        log("  | " + line.rstrip())
    if proc.wait() != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode})")
    return time.perf_counter() - t, "".join(lines)


def bare_forward(files: list[Path], batch_size: int = 8) -> tuple[float, int]:
    """Seconds of one bare batched forward pass of the default model over the files' sequences (T = 200)."""
    from unmemorize.data import load_sequences
    from unmemorize.models import load_model

    lm = load_model("default", log=lambda _: None)
    sets = [load_sequences(f, lm.tokenizer, 200) for f in files]
    n = sum(len(s) for s in sets)
    t = time.perf_counter()
    with torch.inference_mode():
        for s in sets:
            for i in range(0, len(s), batch_size):
                ids, lengths = s.input_ids[i:i + batch_size], s.lengths[i:i + batch_size]
                mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
                lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    return time.perf_counter() - t, n


def audit_part(args, work: Path, log) -> dict:
    forget = data("forget", f"lm_extraction_32_{args.split}.csv")
    pile = pd.read_csv(data("eval", "pile.csv"), dtype=str, keep_default_na=False)
    reference = work / "pile64.csv"
    pile.head(64).to_csv(reference, index=False)
    out = work / "audit"
    cmd = [*CLI, "audit", "--model", "default", "--forget", str(forget), "--reference", str(reference),
           "--out", str(out), "--overwrite"]
    log("$ unmemorize " + " ".join(cmd[3:]))
    seconds, text = timed(cmd, log)
    prof = pd.read_parquet(out / "profile.parquet")
    summary = json.loads((out / "summary.json").read_text())
    hi = summary["hi"]
    el = prof[next(c for c in prof.columns if re.fullmatch(r"el_\d+", c))]
    could = int((prof["ma"] >= hi).sum())
    bare, n = bare_forward([forget, reference])
    return {"command": "unmemorize " + " ".join(cmd[3:]).replace(str(work), "<work>"), "seconds": seconds,
            "sequences": n, "bare_seconds": bare, "ratio": seconds / bare, "el_computed": int(el.notna().sum()),
            "extractable_by_ma": could, "band_hi": hi, "goal_s": AUDIT_GOAL_S, "tau": summary.get("tau")}


def unlearn_part(args, work: Path, log) -> dict:
    from benchmarks.oracle_gap import lab

    progress = None
    folder, forget_file, manifest = lab(args.split, SimpleNamespace(members=32, forget=16, exposures="1,2,4,8,16",
                                                                   seed=42), log, progress)
    exposure = manifest["exposure"]
    f16 = pd.read_csv(forget_file, dtype=str, keep_default_na=False)
    f16["exposure"] = f16["doc_id"].map(exposure)
    f8 = f16.sort_values("exposure", ascending=False, kind="stable").head(8)
    forget = work / "forget8.csv"
    f8.drop(columns="exposure").to_csv(forget, index=False)
    nonmembers = unplanted_jang(args.split, set(exposure), 32, "defaults")
    out = work / "unlearn"
    cmd = [*CLI, "unlearn", "--model", str(folder), "--forget", str(forget), "--reference", str(nonmembers),
           "--out", str(out), "--overwrite"]
    log("$ unmemorize " + " ".join(cmd[3:]))
    seconds, text = timed(cmd, log)
    record = json.loads((out / "record.json").read_text())
    # the plan lines as recorded (the terminal may wrap them): before, and after (with the reference attack)
    plans = [n for n in record.get("attacks", {}).get("notes", []) if n.startswith("attack plan:")]
    plan = plans[0] if plans else next((line.strip() for line in text.splitlines() if "attack plan:" in line), None)
    estimates = [re.search(r"≈ ([\d,.]+) (s|min)\s*$", p) for p in plans]
    plan_s = (sum(float(e.group(1).replace(",", "")) * (60 if e.group(2) == "min" else 1) for e in estimates)
              if estimates and all(estimates) else None)
    timings = record.get("timings", {})
    bare, n = bare_forward([forget, nonmembers])
    from unmemorize.models import cache_dir

    command = ("unmemorize " + " ".join(cmd[3:])).replace(str(work), "<work>").replace(str(folder), "<planted>")
    return {"command": command.replace(str(cache_dir()), "<cache>"),
            "seconds": seconds, "timings": timings, "plan": plan, "plan_seconds": plan_s,
            "method": record.get("labels", {}).get("method"), "steps": record.get("unlearning", {}).get("steps"),
            "sequences": n, "bare_seconds": bare, "goal_s": UNLEARN_GOAL_S}


def render(res: dict) -> str:
    lines = [f"Command: `.venv/bin/python benchmarks/bench_defaults.py --split {res.get('split', 0)}` "
             f"(CPU, {res.get('threads')} threads, {res.get('date')}). Each command ran as typed, in a subprocess "
             "without a terminal; bare = one batched forward pass of the default model over the same sequences "
             "(no metric), in the same run.", ""]
    lines += ["| command | seconds | goal | within | bare forward (s) | × bare |", "|---|---:|---:|---|---:|---:|"]
    for part in ("audit", "unlearn"):
        r = res.get(part)
        if r:
            lines.append(f"| `{r['command']}` | {r['seconds']:.0f} | {r['goal_s']:.0f} | "
                         f"{'yes' if r['seconds'] <= r['goal_s'] else 'no'} | {r['bare_seconds']:.1f} | "
                         f"{r['seconds'] / r['bare_seconds']:.1f} |")
    lines += ["", "What the runs say (computed by the script):", ""]
    a = res.get("audit")
    if a:
        lines.append(f"- The default audit of {a['sequences'] - 64} sequences against 64 unseen texts took "
                     f"{a['seconds']:.0f} s ({'within' if a['seconds'] <= a['goal_s'] else 'over'} the "
                     f"{a['goal_s'] / 60:.0f}-minute goal), {a['seconds'] / a['bare_seconds']:.1f}× a bare forward "
                     f"pass over the same {a['sequences']} sequences (model loading and writing included). EL₁₀ was "
                     f"decoded for {a['el_computed']} sequence(s); "
                     + f"{a['extractable_by_ma']} had MA at or above the band's top {a['band_hi']:.3f}.")
    u = res.get("unlearn")
    if u:
        t = u["timings"]
        attacks = sum(v for k, v in t.items() if k in ("before", "after"))
        lines.append(f"- `unmemorize unlearn` of 8 planted sequences with its defaults ({u['method']}, "
                     f"{u['steps']} steps, attacks before and after) took {u['seconds']:.0f} s "
                     f"({'within' if u['seconds'] <= u['goal_s'] else 'over'} the {u['goal_s'] / 60:.0f}-minute goal). "
                     "Stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()) + ".")
        if u.get("plan"):
            lines.append(f"- It printed `{u['plan']}` before starting; the stages that hold the attacks (before, "
                         f"after; they also profile) took {attacks:.0f} s"
                         + (f" against the plans' {u['plan_seconds']:.0f} s (before and after)." if u.get("plan_seconds")
                            else "."))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="audit,unlearn")
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--work", type=Path, default=RUNS / "defaults")
    ap.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md from results/defaults.json")
    args = ap.parse_args(argv)
    res = json.loads(OUT.read_text()) if OUT.exists() else {}
    if not args.render_only:
        import datetime as _dt

        log = lambda msg: print(msg, flush=True)  # noqa: E731
        args.work.mkdir(parents=True, exist_ok=True)
        parts = {"audit": audit_part, "unlearn": unlearn_part}
        for name in [p.strip() for p in args.parts.split(",") if p.strip()]:
            res[name] = parts[name](args, args.work, log)
            res.update(split=args.split, threads=torch.get_num_threads(), date=_dt.date.today().isoformat())
            OUT.parent.mkdir(parents=True, exist_ok=True)
            OUT.write_text(json.dumps(res, indent=2, default=float) + "\n")
    if res:
        write_section(TITLE, render(res))


if __name__ == "__main__":
    main()
