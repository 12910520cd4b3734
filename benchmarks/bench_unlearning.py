"""Benchmark: one unlearning step *including* re-profiling vs a bare PyTorch forward+backward+Adam step.

    .venv/bin/python benchmarks/bench_unlearning.py [--model default|tiny] [--sequences 8] [--micro-batch 4]
                                                    [--steps 3] [--rounds 2] [--threads N]

The bare step is what any fine-tuning script does on the same batch: for each micro-batch,
``(-model(ids, attention_mask, labels=ids).loss / M).backward()``, then ``Adam.step()`` — no
measurement at all. Our step is one iteration of :func:`unmemorize.unlearning.unlearn`: measure every
sequence's MA (and loss) on the current weights, check the stop rule and phase switch, then the
update over the whole forget set, plus the NaN guard (finite checks and a copy of the last good
weights). Methods: GA (every row gets gradient; the measurement shares the training forward pass),
SGA (γ = 0.7; unselected rows are only measured, without gradient) and TA (the edited model
θ_b − 3(θ − θ_b) is measured in a separate pass, then θ is fine-tuned). Bare and ours alternate in
rounds so that other work on the machine hits both alike; medians are reported.

Writes ``benchmarks/results/unlearning_step.json`` and rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, data, write_section  # noqa: E402

from unmemorize.data import load_sequences  # noqa: E402
from unmemorize.unlearning import UnlearnOptions, unlearn  # noqa: E402

METHODS = ("ga", "sga", "ta")


def load(kind: str, sequences: int):
    if kind == "tiny":
        import pandas as pd

        from unmemorize.data import TextRecords, tokenize
        from unmemorize.lab.records import generate_records
        from unmemorize.tiny import tiny_model, train_tokenizer

        texts = [" ".join(r["text"] for r in generate_records(4, seed=s)) for s in range(sequences)]
        tok = train_tokenizer(texts * 4, vocab_size=4096)
        seqs = tokenize(TextRecords(texts, [f"t{i}" for i in range(len(texts))], pd.DataFrame(index=range(len(texts))),
                                    "synthetic"), tok, 200)
        model = tiny_model("gpt2", vocab_size=len(tok), eos_id=tok.eos_token_id, seed=0)
        return model, tok, seqs, "tiny GPT-2 (4 layers, d=128, vocab 4096)", "synthetic records"
    from unmemorize.models import load_model

    lm = load_model(kind)
    path = data("forget", "lm_extraction_32_0.csv")
    if path.exists():
        seqs = load_sequences(path, lm.tokenizer, 200)
        source = f"Jang lm_extraction_32_0 (first {sequences})"
    else:
        import pandas as pd

        from unmemorize.data import TextRecords, tokenize
        from unmemorize.lab.records import generate_records

        texts = [" ".join(r["text"] for r in generate_records(4, seed=s)) for s in range(sequences)]
        seqs = tokenize(TextRecords(texts, None, pd.DataFrame(index=range(len(texts))), "synthetic"), lm.tokenizer, 200)
        source = "synthetic records"
    return lm.model, lm.tokenizer, seqs.subset(range(min(sequences, len(seqs)))), lm.name, source


def bare_steps(model, seqs, micro_batch: int, steps: int) -> list[float]:
    """A plain fine-tuning step on the same batch: forward, backward (gradient ascent), Adam."""
    import copy

    m = copy.deepcopy(model)
    m.eval()
    opt = torch.optim.Adam(m.parameters(), lr=5e-5, betas=(0.9, 0.98), eps=1e-8)
    parts = [range(s, min(len(seqs), s + micro_batch)) for s in range(0, len(seqs), micro_batch)]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        for rows in parts:
            idx = list(rows)
            width = int(seqs.lengths[idx].max())
            ids = seqs.input_ids[idx, :width]
            mask = seqs.attention_mask[idx, :width]
            loss = -m(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss / len(parts)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def our_steps(model, tok, seqs, method: str, micro_batch: int, steps: int) -> tuple[list[float], int]:
    """Iterations 2..steps+1 of the loop (the first has no earlier scores and, for TA, switches phase)."""
    # τ = 0: the mean stop rule never fires, so every iteration is a full measure + update step
    r = unlearn(model, tok, seqs, tau=0.0, method=method,
                options=UnlearnOptions(max_steps=steps + 1, micro_batch=micro_batch))
    return r.iteration_seconds[1:], int(r.trajectory.loc[r.trajectory["step"] > 1, "selected"].sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="'default' (SmolLM2-135M), 'tiny', or a model folder")
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per round and per method")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok, seqs, model_name, source = load(args.model, args.sequences)
    load_before = os.getloadavg()
    bare: list[float] = []
    ours: dict[str, list[float]] = {m: [] for m in METHODS}
    ratios: dict[str, list[float]] = {m: [] for m in METHODS}
    selected: dict[str, int] = {m: 0 for m in METHODS}
    bare_steps(model, seqs, args.micro_batch, 1)  # warm-up (allocator, kernels)
    for r in range(args.rounds):
        b_round = bare_steps(model, seqs, args.micro_batch, args.steps)
        bare += b_round
        for m in METHODS:
            t, s = our_steps(model, tok, seqs, m, args.micro_batch, args.steps)
            ours[m] += t
            ratios[m].append(float(np.median(t) / np.median(b_round)))
            selected[m] += s
        print(f"round {r + 1}: bare {np.median(b_round):.3f} s; " +
              "; ".join(f"{m} {np.median(ours[m][-len(t):]):.3f} s ({ratios[m][-1]:.2f}×)" for m in METHODS), flush=True)
    load_after = os.getloadavg()
    b = float(np.median(bare))
    rows = []
    for m in METHODS:
        rows.append({"method": m, "median_step_s": float(np.median(ours[m])), "ratio_to_bare": float(np.median(ratios[m])),
                     "ratio_per_round": ratios[m], "steps_timed": len(ours[m]),
                     "rows_with_gradient_per_step": selected[m] / max(1, len(ours[m]))})
    result = {"model": model_name, "data": source, "sequences": len(seqs), "tokens_per_sequence": int(seqs.lengths.max()),
              "micro_batch": args.micro_batch, "bare_median_step_s": b, "bare_steps_timed": len(bare),
              "rows": rows, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_after,
              "torch": torch.__version__,
              "command": "benchmarks/bench_unlearning.py " + " ".join(sys.argv[1:])}
    print(json.dumps(result, indent=2))
    if args.no_write:
        return
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "unlearning_step.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ["| method | our step (median s) | bare fwd+bwd+Adam (median s) | ratio (median over rounds) | per round | rows with gradient per step |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['method']} | {row['median_step_s']:.3f} | {b:.3f} | **{row['ratio_to_bare']:.2f}×** | "
                     f"{', '.join(f'{x:.2f}' for x in row['ratio_per_round'])} | "
                     f"{row['rows_with_gradient_per_step']:.1f} of {len(seqs)} |")
    body = f"""Command: `.venv/bin/python {result['command']}`

{model_name}, {len(seqs)} sequences × {result['tokens_per_sequence']} tokens ({source}), micro-batches of
{args.micro_batch}, {result['threads']} torch threads on {result['cores']} cores (load average
{load_before[0]:.1f} before, {load_after[0]:.1f} after: other work shared the machine, so bare and ours
alternate in {args.rounds} rounds of {args.steps} timed steps each and the ratio is taken within each round; the
loop's first iteration, which has no earlier scores, is not timed). Our step = measure MA and loss of
every sequence on the current weights + stop/phase checks + the whole-set update with the NaN guard;
the bare step = forward + backward + Adam on the same batch, nothing measured. Target: ≤ 1.5×.

{chr(10).join(table)}

GA measures inside its training forward pass (every row needs gradient), so re-profiling costs an
argmax and a finite check. SGA measures every row without gradient and back-propagates only the
selected ones, so its step can be cheaper than the bare full-batch step. TA measures the edited model
θ_b − 3(θ − θ_b) in its own forward pass (no gradient) before fine-tuning θ, plus two copies of the
weights (edit and restore): one extra forward on top of the bare step.
"""
    write_section("Unlearning step cost (issue 3)", body)


if __name__ == "__main__":
    main()
