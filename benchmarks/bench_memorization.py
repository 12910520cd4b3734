"""Benchmark: our MA and EL_10 against the original code's loops, on the default model and real text.

    .venv/bin/python benchmarks/bench_memorization.py [--el-sequences 4] [--ma-sequences 32]

1. MA: one teacher-forced pass per batch (ours) vs the original per-position ``generate`` loop,
   batched over sequences as the original code runs it. Time ratio and max |difference|.
2. EL_10: our disagreement-only, batched, KV-cached decoding vs Jang et al.'s per-prefix loop
   (one batched ``generate`` per prefix length). Jang's loop costs ~T²/2 decode steps, so it runs on
   the first ``--el-sequences`` sequences only; ours runs on the same ones.
3. The audit of SmolLM2-135M on Jang's forget sets (size 32, splits 0-2) with τ from
   ``eval/pile.csv``: MA distribution, c_low, c_high (global τ and τ by corpus).
4. ``--parts el-rate``: the EL_10 decode rate against its limit. On the sequences the default audit
   decodes (MA at or above the band's top, up to ``--el-rate-sequences``), our EL (tokens decoded per
   second, the whole measurement) against a bare batched greedy decode of the same continuations:
   the same jobs in the same batches of 64, each prompt prefilled (timed apart), then one token per
   step with Hugging Face's cache, finished jobs leaving the batch.

Writes ``benchmarks/results/memorization.json`` and rewrites its section of ``benchmarks/RESULTS.md``.
Needs the data folder (UNMEMORIZE_DATA, docs/data.md: Jang's forget sets, eval/pile.csv).
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

from benchmarks.common import DATA, ROOT, data, write_section  # noqa: E402

from unmemorize import forward  # noqa: E402
from unmemorize.audit import audit  # noqa: E402
from unmemorize.data import load_sequences  # noqa: E402
from unmemorize.memorization import ProfileOptions, profile  # noqa: E402
from unmemorize.models import load_model  # noqa: E402
from unmemorize.reference import jang_extraction_likelihood, memorization_accuracy_generate_loop  # noqa: E402
from unmemorize.thresholds import Band  # noqa: E402


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ma-sequences", type=int, default=32)
    ap.add_argument("--el-sequences", type=int, default=4)
    ap.add_argument("--pile-rows", type=int, default=1500)
    ap.add_argument("--model", default="default", help="'default' or a saved model folder (smoke tests)")
    ap.add_argument("--el-rate-sequences", type=int, default=4)
    ap.add_argument("--parts", default="ma,el,audit",
                    help="which parts to measure now (ma, el, audit, el-rate); the others keep their last recorded "
                         "results; 'none' only rewrites the RESULTS.md section")
    args = ap.parse_args()
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    out = ROOT / "benchmarks" / "results" / "memorization.json"
    if parts == {"none"}:  # rewrite the RESULTS.md section from the recorded numbers
        _write(out, json.loads(out.read_text()))
        return
    forget_path = data("forget", "lm_extraction_32_0.csv")
    if not forget_path.exists():
        sys.exit(f"needs {forget_path} (set UNMEMORIZE_DATA to the data folder, docs/data.md)")
    torch.manual_seed(0)
    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    seqs = load_sequences(forget_path, tok, 200)
    full = [i for i in range(len(seqs)) if int(seqs.lengths[i]) == 200]  # the original loops assume T = 200
    results: dict = json.loads(out.read_text()) if out.exists() else {}
    results.update({"model": lm.name, "forget": str(forget_path.relative_to(DATA.parent)), "torch_threads":
                     torch.get_num_threads(), "machine": platform.machine(), "T": 200,
               "load_average_before": os.getloadavg()[0]})
    results.setdefault("argv", {})
    for part in parts:
        results["argv"][part] = " ".join(sys.argv[1:])

    # 1. MA, against the loop as transformers runs it today (logits of the last prompt position
    # only) and as the original code's transformers ran it (logits of every prompt position)
    if "ma" in parts:
        ma_set = seqs.subset(full[: args.ma_sequences])
        ours, t_ours = timed(profile, model, ma_set, ProfileOptions(metrics=("ma",), batch_size=8))
        ref, t_ref = timed(memorization_accuracy_generate_loop, model, ma_set.input_ids)
        ref_full, t_full = timed(memorization_accuracy_generate_loop, model, ma_set.input_ids, full_logits=True)
        diff = float(max(np.max(np.abs(ours["ma"].to_numpy() - np.array(r))) for r in (ref, ref_full)))
        results["ma"] = {"sequences": len(ma_set), "ours_s": t_ours, "generate_loop_s": t_ref,
                         "speedup": t_ref / t_ours, "generate_loop_full_logits_s": t_full,
                         "speedup_full_logits": t_full / t_ours, "max_abs_diff": diff,
                         "mean_ma": float(ours["ma"].mean())}
        print(json.dumps(results["ma"], indent=2), flush=True)
        _write(out, results)

    # 2. EL_10
    if "el" in parts:
        _el(model, seqs, full, args, results)
        _write(out, results)

    # 3. The audit of SmolLM2 on Jang's forget sets, τ from unseen Pile text
    if "audit" in parts:
        _audit(model, tok, args, results)
        _write(out, results)

    # 4. The EL decode rate against a bare batched greedy decode of the same tokens
    if "el-rate" in parts:
        _el_rate(model, seqs, full, args, results)
        _write(out, results)


def _write(out: Path, results: dict) -> None:
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if "ma" in results and "el_10" in results:
        write_section("Memorization metrics (issue 2)", render(results))


def _el(model, seqs, full, args, results) -> None:
    el_set = seqs.subset(full[: args.el_sequences])
    ours, t_ours = timed(profile, model, el_set, ProfileOptions(metrics=("el",), batch_size=8, decode_batch_size=64))
    ref, t_ref = timed(jang_extraction_likelihood, model, el_set.input_ids, 10)
    diff = float(np.max(np.abs(ours["el_10"].to_numpy() - np.array(ref))))
    disagreements = int(sum(((ours["length"] - 1) * (1 - profile(model, el_set, ProfileOptions(metrics=("ma",)))["ma"])).round()))
    results["el_10"] = {"sequences": len(el_set), "ours_s": t_ours, "jang_loop_s": t_ref, "speedup": t_ref / t_ours,
                        "max_abs_diff": diff, "mean_el_10": float(ours["el_10"].mean()),
                        "decoded_continuations_ours": disagreements,
                        "decoded_continuations_jang": len(el_set) * 190}
    print(json.dumps(results["el_10"], indent=2), flush=True)


def el_jobs(model, seqs) -> dict[tuple[int, int], int]:
    """EL's decoding jobs: (sequence, disagreement position j) → L − j tokens (docs/method.md §2.3)."""
    jobs = {}
    with torch.no_grad():
        for batch, logits in forward.teacher_forced(model, seqs.input_ids, seqs.lengths, batch_size=8):
            greedy = logits.argmax(-1)
            for b, r in enumerate(batch.rows):
                L = int(seqs.lengths[r])
                wrong = (greedy[b, : L - 1] != seqs.input_ids[r, 1:L]).nonzero().flatten() + 1
                jobs.update({(int(r), int(j)): L - int(j) for j in wrong})
    return jobs


@torch.no_grad()
def bare_greedy(model, seqs, jobs: dict, batch_size: int = 64) -> tuple[float, float, int]:
    """(prefill seconds, decode seconds, tokens) of a bare batched greedy decode of ``jobs``: longest
    first in batches of ``batch_size``, prompts left-padded and prefilled, then one token per step
    with Hugging Face's DynamicCache, finished jobs leaving the batch."""
    from transformers import DynamicCache

    device = forward.device_of(model)
    order = sorted(jobs, key=lambda key: (-jobs[key], key))
    prefill = decode = 0.0
    tokens = 0
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        need = [jobs[key] for key in chunk]
        P = max(j for _, j in chunk)
        ids = torch.zeros(len(chunk), P, dtype=torch.long)
        mask = torch.zeros(len(chunk), P + need[0], dtype=torch.long)
        for b, (r, j) in enumerate(chunk):
            ids[b, P - j:] = seqs.input_ids[r, :j]
            mask[b, P - j:] = 1
        pos = (mask[:, :P].cumsum(1) - 1).clamp(min=0)
        t = time.perf_counter()
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids.to(device), attention_mask=mask[:, :P].to(device), position_ids=pos.to(device),
                    cache=cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1)
        last = pos[:, -1].to(device)
        prefill += time.perf_counter() - t
        t = time.perf_counter()
        alive = len(chunk)
        cache = out.cache
        for step in range(1, need[0]):
            while need[alive - 1] <= step:
                alive -= 1
            if alive < len(nxt):
                nxt, last = nxt[:alive], last[:alive]
                cache.batch_select_indices(torch.arange(alive, device=device))
            last = last + 1
            step_out = model(input_ids=nxt[:, None], attention_mask=mask[:alive, : P + step].to(device),
                             position_ids=last[:, None], cache=cache, use_cache=True)
            cache = step_out.cache
            nxt = step_out.logits[:, -1].argmax(-1)
        decode += time.perf_counter() - t
        tokens += sum(need)
    return prefill, decode, tokens


def _el_rate(model, seqs, full, args, results) -> None:
    from unmemorize import memorization

    band = Band()
    candidates = seqs.subset(full)
    ma = profile(model, candidates, ProfileOptions(metrics=("ma",)))["ma"].to_numpy()
    high = [full[i] for i in np.flatnonzero(ma >= band.hi)]
    pick = (high or full)[: args.el_rate_sequences]
    sub = seqs.subset(pick)
    jobs = el_jobs(model, sub)
    tokens = sum(jobs.values())
    decode_s = {}
    original = memorization.decode_from_prefixes

    def timed_decode(*a, **k):
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            decode_s["s"] = decode_s.get("s", 0.0) + time.perf_counter() - t

    memorization.decode_from_prefixes = timed_decode
    try:
        ours, t_ours = timed(profile, model, sub, ProfileOptions(metrics=("el",), el_for="all", batch_size=8,
                                                                 decode_batch_size=64))
    finally:
        memorization.decode_from_prefixes = original
    t_prefill, t_bare, bare_tokens = bare_greedy(model, sub, jobs, 64)
    assert bare_tokens == tokens
    results["el_rate"] = {
        "sequences": len(sub), "selected": "MA ≥ band top" if high else "first full-length (none at the band's top)",
        "mean_ma": float(np.mean(ma[[full.index(i) for i in pick]])), "continuations": len(jobs),
        "tokens": tokens, "ours_s": t_ours, "ours_decode_s": decode_s.get("s", 0.0),
        "bare_prefill_s": t_prefill, "bare_decode_s": t_bare,
        "ours_tokens_per_s": tokens / t_ours, "bare_tokens_per_s": tokens / t_bare,
        "ours_over_bare_decode": t_ours / t_bare, "ours_over_bare_with_prefill": t_ours / (t_bare + t_prefill),
        "seconds_per_sequence": t_ours / len(sub), "mean_el_10": float(ours["el_10"].mean()),
    }
    print(json.dumps(results["el_rate"], indent=2), flush=True)


def _audit(model, tok, args, results) -> None:
    pile = load_sequences(data("eval", "pile.csv"), tok, 200)
    pile = pile.subset(range(min(args.pile_rows, len(pile))))
    band = Band()
    audits = {}
    ref_prof = None
    for split in (0, 1, 2):
        f = load_sequences(data("forget", f"lm_extraction_32_{split}.csv"), tok, 200)
        res = audit(model, f, pile, ProfileOptions(metrics=("ma",)), band, tau_by="corpus",
                    reference_profile=ref_prof)  # the reference is profiled once, for split 0
        g = res.forget["ma"].to_numpy()
        ref_prof = res.reference
        audits[f"32_{split}"] = {
            "mean": float(g.mean()), "std": float(g.std()), "min": float(g.min()),
            "quartiles": [float(q) for q in np.quantile(g, [0.25, 0.5, 0.75])], "max": float(g.max()),
            "c_low": res.summary.c_low, "c_high": res.summary.c_high, "tau": res.tau,
            "distance_to_tau": float(abs(100 * g.mean() - 100 * res.tau)),
            "distance_to_tau_by_corpus": float(res.summary.distance_to_tau),
            "held_against_corpus_tau": int((res.forget["tau_source"] != "reference (no such group in reference)").sum()),
            "corpora": res.forget["corpus"].value_counts().to_dict(),
            "extractable_ids": res.forget.loc[res.forget["ma"] >= band.hi, "id"].tolist(),
            "mean_by_corpus": res.forget.groupby("corpus")["ma"].mean().round(3).to_dict()}
        print(split, json.dumps(audits[f"32_{split}"]), flush=True)
    results["audit"] = {"reference": "eval/pile.csv", "reference_rows": len(pile),
                        "tau": float(ref_prof["ma"].mean()),
                        "tau_by_corpus": ref_prof.groupby("corpus")["ma"].mean().round(3).to_dict(),
                        "reference_rows_by_corpus": ref_prof["corpus"].value_counts().to_dict(),
                        "splits": audits}


def render(r: dict) -> str:
    ma, el = r["ma"], r["el_10"]
    argv = r["argv"]
    commands = sorted({v for v in argv.values()})
    lines = [
        "Commands: " + "; ".join(f"`.venv/bin/python benchmarks/bench_memorization.py {c}`".replace(" `", "`")
                                 + " (" + ", ".join(k for k, v in argv.items() if v == c) + ")" for c in commands)
        + " — raw numbers in `benchmarks/results/memorization.json`.",
        f"Model {r['model']}, forget set `{r['forget']}`, T = 200, {r['torch_threads']} torch threads, CPU "
        "(2 cores, otherwise idle).",
        "",
        "| metric | sequences | ours (s) | original loop (s) | speed-up | max abs diff |",
        "|---|---|---|---|---|---|",
        f"| MA | {ma['sequences']} | {ma['ours_s']:.2f} | {ma['generate_loop_s']:.1f} (per-position `generate`, "
        f"today's transformers) | {ma['speedup']:.0f}× | {ma['max_abs_diff']:.2g} |",
    ]
    if "generate_loop_full_logits_s" in ma:
        lines.append(f"| MA | {ma['sequences']} | {ma['ours_s']:.2f} | {ma['generate_loop_full_logits_s']:.1f} "
                     "(the same loop with every prompt position's logits, as the original code's transformers 4.x "
                     f"computed them) | {ma['speedup_full_logits']:.0f}× | {ma['max_abs_diff']:.2g} |")
    lines += [
        f"| EL_10 | {el['sequences']} | {el['ours_s']:.1f} | {el['jang_loop_s']:.1f} (Jang's per-prefix loop) | "
        f"{el['speedup']:.1f}× | {el['max_abs_diff']:.2g} |",
        "",
        "Why MA's ratio stays under 100× against today's `generate`: the loop's work is Σ_{i<T} i ≈ T²/2 prompt "
        "tokens per sequence against our T, a ratio of (T−1)/2 ≈ 100 in tokens; but today's `generate` applies the "
        "output layer (576 × 49,152 for SmolLM2, 21 % of its FLOPs per token) to the last prompt position only, "
        "while MA needs the argmax at every position, so at equal FLOP rates the ratio would be ≈ 100 × 0.79 ≈ 79× (measured higher: our batched pass runs at a better FLOP rate than the loop's short prompts). "
        + (f"Against the loop as the original code ran it (logits of every prompt position) the ratio is "
           f"{ma['speedup_full_logits']:.0f}×." if "speedup_full_logits" in ma else ""),
        "",
        f"EL_10 decoded {el['decoded_continuations_ours']} continuations (one per teacher-forced disagreement) where "
        f"Jang's loop decodes {el['decoded_continuations_jang']}; mean MA of these sequences "
        f"{1 - el['decoded_continuations_ours'] / max(1, el['sequences'] * 199):.2f}. The speed-up grows with "
        "memorization: a fully memorized sequence needs no decoding at all. Where it comes from, on these weakly "
        "memorized texts: fewer continuations (disagreements only), no prompt re-reading (each continuation "
        "starts from its sequence's teacher-forced KV cache, cut at the prompt, and from the greedy token that "
        "pass already predicted), and batches of up to 64 continuations that shed the ones already long enough. "
        "On a GPU the batching is worth more than on these 2 CPU cores (not measured: no GPU was lent).",
    ]
    if "el_rate" in r:
        e = r["el_rate"]
        lines += ["", f"**EL_10 decode rate against its limit** (`--parts el-rate`): {e['sequences']} sequences "
                  f"({e['selected']}, mean MA {e['mean_ma']:.2f}), {e['continuations']} continuations, "
                  f"{e['tokens']:,} tokens decoded.", "",
                  "| | seconds | tokens / s |", "|---|---:|---:|",
                  f"| ours: the whole EL_10 measurement | {e['ours_s']:.1f} | {e['ours_tokens_per_s']:.0f} |",
                  f"| ours: its decoding alone | {e['ours_decode_s']:.1f} | {e['tokens'] / max(e['ours_decode_s'], 1e-9):.0f} |",
                  f"| bare batched greedy decode of the same tokens (prompt prefill excluded) | {e['bare_decode_s']:.1f} | "
                  f"{e['bare_tokens_per_s']:.0f} |",
                  f"| … its prompt prefill | {e['bare_prefill_s']:.1f} | – |", "",
                  f"Reading: our EL_10 takes {e['ours_over_bare_decode']:.2f}× the bare decode of its tokens "
                  f"({e['ours_over_bare_with_prefill']:.2f}× the bare decode with its prefill), "
                  f"{e['seconds_per_sequence']:.1f} s per sequence at this MA: EL costs what its greedy decoding "
                  "costs, so the default audit decodes it only where MA reaches the band's top."]
    if "audit" in r:
        a = r["audit"]
        lines += ["", f"**Audit of {r['model']} on Jang's forget sets** — τ = {a['tau']:.3f}, the mean MA on the first "
                  f"{a['reference_rows']} rows of `eval/pile.csv` (unseen Pile text); band [0.15, 0.60].", "",
                  "| split | mean MA ± std | min / quartiles / max | c_low | c_high | distance to τ (global) | "
                  "distance to τ (by corpus) | MA by corpus |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, s in a["splits"].items():
            q = " / ".join(f"{v:.2f}" for v in [s["min"], *s["quartiles"], s["max"]])
            corp = ", ".join(f"{c} {v:.2f}" for c, v in sorted(s["mean_by_corpus"].items()))
            by = (f"{s['distance_to_tau_by_corpus']:.1f} ({s['held_against_corpus_tau']} of {sum(s['corpora'].values())} "
                  "matched a reference corpus)") if "distance_to_tau_by_corpus" in s else "–"
            lines.append(f"| {k} | {s['mean']:.3f} ± {s['std']:.3f} | {q} | {s['c_low']} | {s['c_high']} | "
                         f"{s['distance_to_tau']:.1f} | {by} | {corp} |")
        if all("distance_to_tau_by_corpus" in v for v in a["splits"].values()):
            worst = max(v["distance_to_tau_by_corpus"] for v in a["splits"].values())
            glob = min(v["distance_to_tau"] for v in a["splits"].values())
            lines += ["", f"Finding: held against the global τ, every split sits {glob:.0f}+ MA points above unseen text; "
                      f"held against unseen text *of its own corpus* (`--tau-by corpus`), within {worst:.1f} points. "
                      "SmolLM2's high MA on Jang's sequences is mostly the kind of text (three quarters are GitHub "
                      "code, which is predictable when unseen), not memorization of these sequences, and the band's "
                      "c_high counts code as 'extractable'. This is why the unlearning benchmarks plant their own "
                      "ground truth (issue 3's paper_claims, the demo)."]
        lines += ["", "τ by corpus of the reference: " + ", ".join(
            f"{c} {v:.3f} (n={a['reference_rows_by_corpus'].get(c, 0)})" for c, v in sorted(a["tau_by_corpus"].items()))]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
