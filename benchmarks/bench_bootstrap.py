"""Benchmark: an attack's scoring (AUC, TPR@FPR, 1000-replicate stratified bootstrap), the original
one-``roc_curve``-per-replicate loop against the vectorised ``unmemorize.stats`` bootstrap.

    .venv/bin/python benchmarks/bench_bootstrap.py [--bootstrap 1000] [--repeats 3]

Scores: synthetic (members N(0.5, 1), non-members N(0, 1), rounded to 0.01 so there are ties), at
64 + 64 and 1000 + 1000 sequences, TPR at 10 %, 1 %, 0.1 % FPR where resolvable. Old:
``unmemorize.reference.evaluate_reference``; new: ``unmemorize.attacks.scoring.evaluate``; both in
the same run, same seed, best of ``--repeats``.
The two must give the same intervals (largest difference recorded). Writes
``benchmarks/results/bootstrap.json``; it does not touch RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from unmemorize.attacks.scoring import evaluate
from unmemorize.reference import evaluate_reference

SIZES = ((64, 64), (1000, 1000))


def _best(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def _numbers(ev) -> list[float]:
    return [x for iv in (ev.auc, *ev.tpr.values()) for x in (iv.value, iv.low, iv.high)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    load = os.getloadavg()[0]
    for n_m, n_n in SIZES:
        m, n = np.round(rng.normal(0.5, 1.0, n_m), 2), np.round(rng.normal(0.0, 1.0, n_n), 2)
        fprs = (0.1, 0.01, 0.001)  # evaluate keeps the resolvable ones: α needs ⌈1/α⌉ non-members
        kw = dict(fprs=fprs, bootstrap=args.bootstrap, seed=0)
        t_old, old = _best(lambda: evaluate_reference(m, n, **kw), args.repeats)
        t_new, new = _best(lambda: evaluate(m, n, **kw), args.repeats)
        diff = max(abs(a - b) for a, b in zip(_numbers(old), _numbers(new)))
        rows.append({"members": n_m, "nonmembers": n_n, "bootstrap": args.bootstrap,
                     "resolvable_fprs": list(new.tpr), "seconds_old_loop": t_old, "seconds_vectorised": t_new,
                     "ratio": t_old / t_new, "max_abs_difference": diff})
        print(f"{n_m:>5} + {n_n:<5} members + non-members, {args.bootstrap} replicates: old loop {t_old:.3f} s, "
              f"vectorised {t_new:.4f} s → {t_old / t_new:.1f}× faster; largest difference {diff:.1e}", flush=True)
    res = {"what": "scoring.evaluate: old per-replicate roc_curve loop vs vectorised stats bootstrap",
           "repeats": args.repeats, "timing": "best of repeats, seconds", "cpus": os.cpu_count(),
           "load_before": load, "load_after": os.getloadavg()[0], "runs": rows}
    out = Path(__file__).resolve().parent / "results" / "bootstrap.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
