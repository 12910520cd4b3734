"""Benchmark: the attack battery (MIAU with K = 25 and the likelihood attacks) against its forward passes.

    .venv/bin/python benchmarks/bench_attacks.py [--model default] [--members 32] [--nonmembers 32] [--k 25]

Members: the first ``--members`` sequences of Jang's ``forget/lm_extraction_32_0.csv``; non-members: the
first ``--nonmembers`` rows of ``eval/pile.csv`` (unseen Pile text), T = ``--length`` tokens; the data
folder is UNMEMORIZE_DATA (benchmarks/common.py). Every attack that needs no original model runs: MIAU
(``lm`` refill by the attacked model, neighbours made in this run: a fresh cache), threshold, loss,
zlib, min-k, min-k++. Timed in one run, on the same loaded model:

* **bare**: the forward passes the battery needs, (members + non-members)·(K + 1) teacher-forced
  sequences (the texts and this run's neighbours), batched, logits only: the floor;
* **ours**: ``run_attacks`` as it runs now, neighbour generation included, once per perturber named in
  ``--perturbers`` (default both causal-LM refills: ``lm``, each span given the text refilled so far, and
  ``lm-independent``, each span given the original text to its left; each with a fresh cache);
* **old**: the same battery with the slow reference refill (one token per row per pass, a growing
  cache: :class:`unmemorize.reference.TokenByTokenRefill`) and each part's passes in file order.

The old refill and ``lm`` draw from the same seeded generators with the same sampler, so they make the
same neighbours (checked) and every attack the same AUC (checked); ``lm-independent`` makes other
neighbours (its AUCs are reported beside). The bare passes run over the first perturber's neighbours.
Goal: ours ≤ 2× bare.

Writes ``benchmarks/results/attacks.json`` and its section of ``benchmarks/RESULTS.md``; ``--model`` and
the size options let it run on a tiny saved model (a smoke test: its files are not results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DATA, RESULTS_DIR, data, write_section  # noqa: E402

TITLE = "Attack battery: MIAU (K = 25) and the likelihood attacks against their forward passes"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="'default' or a saved model folder")
    ap.add_argument("--members", type=int, default=32)
    ap.add_argument("--nonmembers", type=int, default=32)
    ap.add_argument("--k", type=int, default=25, help="MIAU neighbours per sequence")
    ap.add_argument("--length", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8, help="attacks' sequences per pass (neighbours: twice)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--perturbers", default="lm,lm-independent", help="the refills timed as 'ours', comma-separated")
    ap.add_argument("--skip-old", action="store_true", help="time ours and bare only")
    ap.add_argument("--render-only", action="store_true", help="rewrite the RESULTS.md section from attacks.json")
    args = ap.parse_args()
    out = RESULTS_DIR / "attacks.json"
    if args.render_only:
        write_section(TITLE, render(json.loads(out.read_text())))
        return
    torch.set_num_threads(args.threads)
    from unmemorize.data import load_sequences
    from unmemorize.models import load_model

    forget_path, pile_path = data("forget", "lm_extraction_32_0.csv"), data("eval", "pile.csv")
    lm = load_model(args.model)
    members = load_sequences(forget_path, lm.tokenizer, args.length)
    members = members.subset(range(min(args.members, len(members))))
    nonmembers = load_sequences(pile_path, lm.tokenizer, args.length)
    nonmembers = nonmembers.subset(range(min(args.nonmembers, len(nonmembers))))
    res = measure(lm, members, nonmembers, args)
    res.update({"data": {"members": str(forget_path.relative_to(DATA.parent)),
                         "nonmembers": str(pile_path.relative_to(DATA.parent))},
                "argv": " ".join(sys.argv[1:]), "machine": platform.machine(), "cpus": os.cpu_count()})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    body = render(res)
    write_section(TITLE, body)
    print(body)


@contextlib.contextmanager
def stopwatch(into: dict, key: str):
    t = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - t


def timed_perturber(perturber, times: dict, key: str):
    """Time the perturber's neighbour making (inside the attack run) under ``key``."""
    make = perturber.neighbours_many

    def timed(*a, **k):
        with stopwatch(times, key):
            return make(*a, **k)

    perturber.neighbours_many = timed
    return perturber


def measure(lm, members, nonmembers, args) -> dict:
    from unmemorize import forward
    from unmemorize.attacks import AttackOptions, build_perturber, run_attacks
    from unmemorize.attacks.miau import encode_texts
    from unmemorize.attacks.perturb import Masking, NeighbourCache, neighbours_for
    from unmemorize.attacks.plan import model_parameters, plan_attacks
    from unmemorize.reference import TokenByTokenRefill

    model, tok = lm.model, lm.tokenizer
    device = forward.device_of(model)
    n = len(members) + len(nonmembers)
    auto = plan_attacks(AttackOptions(), len(members), len(nonmembers), device.type, model_parameters(model),
                        length=args.length, threads=torch.get_num_threads())
    times: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    perturbers = [p.strip() for p in args.perturbers.split(",") if p.strip()]
    ours: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = AttackOptions(neighbours=args.k, perturber=perturbers[0], batch_size=args.batch_size, bootstrap=1000)
        # warm-up: one small pass (first-call allocations are not what is measured)
        for _ in forward.teacher_forced(model, members.input_ids[:2], members.lengths[:2], batch_size=2):
            pass
        neighbours = {}
        for name in perturbers:  # ours, neighbours made in this run
            opts = base.replace(perturber=name, neighbour_cache=Path(tmp) / name)
            made = timed_perturber(build_perturber(opts, model, tok, lm.fingerprint), times, f"{name}_neighbours")
            with stopwatch(times, name):
                ours[name] = run_attacks(model, tok, members, nonmembers, options=opts, perturber=made)
            if not neighbours:
                neighbours = {part: neighbours_for(seqs.texts, made, args.k, opts.seed, NeighbourCache(Path(tmp) / name))
                              for part, seqs in (("forget", members), ("reference", nonmembers))}
                schedule = getattr(made, "_schedule", lambda: None)()
        # bare: the teacher-forced passes over the texts and their neighbours, logits only
        flat = [x for part in ("forget", "reference") for ns in neighbours[part] for x in ns]
        ids, lengths = encode_texts(tok, flat, args.length, members.pad_id)
        with stopwatch(times, "bare"):
            for seqs in (members, nonmembers):
                for _ in forward.teacher_forced(model, seqs.input_ids, seqs.lengths, batch_size=args.batch_size):
                    pass
            for _ in forward.teacher_forced(model, ids, lengths, batch_size=2 * args.batch_size):
                pass
        old = None
        if not args.skip_old:
            opts = base.replace(perturber="lm", neighbour_cache=Path(tmp) / "old")
            slow = TokenByTokenRefill(Masking(opts.mask_fraction, opts.span_words), model, tok, lm.fingerprint,
                                      top_k=opts.refill_top_k, temperature=opts.refill_temperature)
            slow = timed_perturber(slow, times, "old_neighbours")
            with stopwatch(times, "old"), file_order():
                old = run_attacks(model, tok, members, nonmembers, perturber=slow, options=opts)
            old_neighbours = {part: neighbours_for(seqs.texts, slow, args.k, opts.seed, NeighbourCache(Path(tmp) / "old"))
                              for part, seqs in (("forget", members), ("reference", nonmembers))}
    res = {
        "model": lm.name, "parameters": model_parameters(model), "device": device.type,
        "torch_threads": torch.get_num_threads(), "members": len(members), "nonmembers": len(nonmembers),
        "k": args.k, "length": args.length, "batch_size": args.batch_size,
        "refill_schedule": schedule, "bare_neighbours_of": perturbers[0],
        "sequences_scored": n * (args.k + 1), "neighbour_tokens": int(lengths.sum()),
        "load_before": load_before, "load_after": os.getloadavg()[0],
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "runs": {name: perturber_run(times, name, n, args.k, ours[name]) for name in perturbers},
        "auto_plan": auto.as_dict(),
    }
    if old is not None and "lm" in ours:
        same = sum(a == b for part in neighbours for a, b in zip(neighbours[part], old_neighbours[part]))
        res["old"] = {
            "seconds": times["old"], "ratio_to_bare": times["old"] / times["bare"],
            "speedup_of_lm": times["old"] / times["lm"], "refill_speedup_of_lm": times["old_neighbours"] / times["lm_neighbours"],
            "texts_with_identical_neighbours": same if perturbers[0] == "lm" else None, "texts": n,
            "auc": {a: r.evaluation.auc.value for a, r in old.attacks.items()},
            "auc_identical_to_lm": all(np.isclose(r.evaluation.auc.value, old.attacks[a].evaluation.auc.value,
                                                  rtol=0, atol=1e-12, equal_nan=True)
                                       for a, r in ours["lm"].attacks.items()),
        }
    return res


def perturber_run(times: dict, name: str, n: int, k: int, results) -> dict:
    """One perturber's row: its time against the bare passes, the refill's share, the refill in sequence
    passes per neighbour (one bare pass costs bare / (n·(K + 1)); the refill made n·K neighbours), and the
    AUCs with their intervals (``results``: its AttackResults)."""
    made = times[f"{name}_neighbours"]
    return {"seconds": times[name], "neighbour_seconds": made, "ratio_to_bare": times[name] / times["bare"],
            "neighbours_share": made / times[name],
            "refill_passes_per_neighbour": made / (times["bare"] / (n * (k + 1))) / (n * k),
            "auc": {a: r.evaluation.auc.value for a, r in results.attacks.items()},
            "auc_ci": {a: [r.evaluation.auc.low, r.evaluation.auc.high] for a, r in results.attacks.items()}}


@contextlib.contextmanager
def file_order():
    """The old scoring: every part's passes in file order (no length sorting)."""
    from unmemorize.attacks import tokens

    sorted_order = tokens.longest_first
    tokens.longest_first = lambda lengths: np.arange(len(lengths))
    try:
        yield
    finally:
        tokens.longest_first = sorted_order


def render(r: dict) -> str:
    """The RESULTS.md section, every number and every verdict computed from the recorded values."""
    s, runs = r["seconds"], r["runs"]
    lines = [
        f"Command: `.venv/bin/python benchmarks/bench_attacks.py {r['argv']}`".replace(" `", "`"),
        "",
        f"Model {r['model']} ({r['parameters'] / 1e6:.0f}M parameters) on {r['device'].upper()}, {r['torch_threads']} "
        f"torch threads, load average {r['load_before']:.1f} before and {r['load_after']:.1f} after. Members: the "
        f"first {r['members']} sequences of `{r['data']['members']}`; non-members: the first {r['nonmembers']} rows "
        f"of `{r['data']['nonmembers']}`; T = {r['length']}. MIAU with K = {r['k']} neighbours per sequence "
        f"(refilled by the attacked model, made in this run), threshold, loss, zlib, min-k, min-k++; 1,000 "
        f"bootstrap replicates. The bare passes run over the neighbours of `{r['bare_neighbours_of']}`.",
        "",
        "| run | seconds | × bare | neighbour making (s) | refill, in sequence passes per neighbour |",
        "|---|---:|---:|---:|---:|",
        f"| bare forward passes: {r['sequences_scored']:,} sequences ((members + non-members)·(K + 1)) | "
        f"{s['bare']:.1f} | 1.00 | – | – |",
    ]
    for name, run in runs.items():
        label = f"ours, `--perturber {name}`" + (f" (schedule {r['refill_schedule']})" if name == "lm" and
                                                 r.get("refill_schedule") else "")
        lines.append(f"| {label} | {run['seconds']:.1f} | {run['ratio_to_bare']:.2f} | {run['neighbour_seconds']:.1f} | "
                     f"{run['refill_passes_per_neighbour']:.2f} |")
    old = r.get("old")
    if old:
        lines.append(f"| old: token-by-token refill, passes in file order | {old['seconds']:.1f} | "
                     f"{old['ratio_to_bare']:.2f} | {s['old_neighbours']:.1f} | – |")
    lines.append("")
    for name, run in runs.items():
        goal = "within" if run["ratio_to_bare"] <= 2.0 else "over"
        lines.append(f"- `{name}`: the battery took **{run['ratio_to_bare']:.2f}×** its bare forward passes, {goal} "
                     f"the goal of 2×; neighbour making was {100 * run['neighbours_share']:.0f} % of it.")
    if old:
        same = old.get("texts_with_identical_neighbours")
        lines.append(f"- Against the old implementation, `lm` is **{old['speedup_of_lm']:.2f}×** faster in all, its "
                     f"refill {old['refill_speedup_of_lm']:.2f}× faster"
                     + (f"; identical neighbours for {same} of {old['texts']} texts" if same is not None else "")
                     + "; AUCs " + ("identical for every attack." if old["auc_identical_to_lm"] else
                                    "differ (see attacks.json)."))
    names = list(runs)
    attacks = list(runs[names[0]]["auc"])
    lines += ["", "AUCs (members vs unseen Pile text; not a finding about unlearning; only MIAU depends on the "
                  "perturber):", "", "| attack | " + " | ".join(f"`{n}`" for n in names) + " |",
              "|---|" + "---:|" * len(names)]
    for a in attacks:
        lines.append(f"| {a} | " + " | ".join(f"{runs[n]['auc'].get(a, float('nan')):.3f}" for n in names) + " |")
    if len(names) > 1 and all("miau" in runs[n]["auc"] for n in names):
        miau = [runs[n]["auc"]["miau"] for n in names]
        cis = "; ".join(f"`{n}` [{runs[n]['auc_ci']['miau'][0]:.3f}, {runs[n]['auc_ci']['miau'][1]:.3f}]" for n in names)
        pairs = r["members"] * r["nonmembers"]
        lines += ["", f"MIAU's AUC differs by {max(miau) - min(miau):.3f} between the perturbers: "
                      + ", ".join(f"`{n}` orders {round(runs[n]['auc']['miau'] * pairs):,}" for n in names)
                      + f" of the {pairs:,} member/non-member pairs correctly (one draw of neighbours each; 95 % "
                      f"bootstrap intervals {cis})."]
    lines += ["", f"What `K` auto would choose here: {r['auto_plan']['line']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
