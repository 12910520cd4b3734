"""Benchmark: `unmemorize scan` — its speed against a bare forward pass, and whether it finds planted text.

    .venv/bin/python benchmarks/bench_scan.py [--model default] [--members 16] [--exposures 1-16]
        [--reference-rows 300] [--pile-rows 0] [--others 0] [--stride 100] [--batch-size 8] [--top 16]

Set-up: the first ``--members`` sequences of Jang's ``forget/lm_extraction_32_<split>.csv`` are planted
into ``--model`` at exposures 1 … 16 (one each; ``unmemorize.lab.plant.plant_into``, cached by its
inputs). The corpus hides them among the rows of ``eval/pile.csv`` after the first ``--reference-rows``
(those are the unseen reference for τ, per corpus with ``--tau-by corpus``) and every other Jang
sequence of ``forget/`` (``--pile-rows``/``--others`` N: only the first N; 0: all).

(a) Throughput: the scan's corpus pass (reading, tokenizing, deduplicating, MA and loss, chunks
    written) against a bare batched forward pass (``model(ids, mask).logits``) over the same windows,
    same batches, same process: windows/s and the ratio (goal ≥ 0.8). The bare pass runs half its
    batches before the scan and half after, so a change in the machine's load weighs on both.
(b) Recall: which planted sequences have a window among the top ``--top`` windows (a document counts
    once: its best window), ranked by MA − τ of its corpus and by MA alone; from which exposure on
    every planted sequence is found.
(c) On a GPU when there is one (``--parts gpu``): (a) again there, tokens/s (``--gpu-dtype``,
    ``--gpu-batch-size``); skipped and said so otherwise.

Writes ``benchmarks/results/scan.json`` and its section of ``benchmarks/RESULTS.md`` (``--parts none``:
only the section, from the recorded numbers). Needs the data folder (UNMEMORIZE_DATA, docs/data.md).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, RUNS, data, split_list, write_section  # noqa: E402

TITLE = "Scan: what a model memorized in a corpus"
OUT = RESULTS_DIR / "scan.json"
GOAL = 0.8


def exposures(text: str) -> tuple[int, ...]:
    """'1-16' or '1,2,4'."""
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    return tuple(range(int(m[1]), int(m[2]) + 1)) if m else tuple(split_list(text, int))


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


# ---------------------------------------------------------------- set-up


def plant(args, log, progress=None) -> tuple[Path, dict, pd.DataFrame]:
    """The planted model folder, its manifest and the members (cached by every input, like planted_lab)."""
    from unmemorize.lab.plant import plant_into
    from unmemorize.models import cache_dir, load_model

    src = pd.read_csv(data("forget", f"lm_extraction_32_{args.split}.csv"), dtype=str, keep_default_na=False)
    members = src.head(args.members)
    lm = load_model(args.model, log=log)
    levels = exposures(args.exposures)
    lab = cache_dir() / "labs" / (f"scan-{safe(lm.name)}-{lm.fingerprint[:8]}-32_{args.split}-m{args.members}-"
                                  f"e{'_'.join(map(str, levels))}-s{args.seed}")
    lab.parent.mkdir(parents=True, exist_ok=True)
    members_file = lab.parent / f"{lab.name}.members.csv"
    members.to_csv(members_file, index=False)
    folder, manifest = plant_into(lm, members_file, levels, lab, length=args.length, seed=args.seed, log=log,
                                  progress=progress)
    return folder, manifest, members


def corpus(args, members: pd.DataFrame, work: Path) -> tuple[Path, Path, dict]:
    """corpus/ (members.csv, jang_others.csv, pile.csv) and reference.csv in ``work``."""
    pile = pd.read_csv(data("eval", "pile.csv"), dtype=str, keep_default_na=False)
    reference = pile.head(args.reference_rows)
    hay = pile.iloc[args.reference_rows:]
    hay = hay.head(args.pile_rows) if args.pile_rows else hay
    jang = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False)
                      for f in sorted(glob.glob(str(data("forget") / "lm_extraction_*.csv")))])
    jang = jang.drop_duplicates("doc_id")
    others = jang[~jang["doc_id"].isin(members["doc_id"]) & ~jang["text"].isin(members["text"])]
    others = others.head(args.others) if args.others else others
    folder = work / "corpus"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    members.to_csv(folder / "members.csv", index=False)
    others.to_csv(folder / "jang_others.csv", index=False)
    hay.to_csv(folder / "pile.csv", index=False)
    reference.to_csv(work / "reference.csv", index=False)
    return folder, work / "reference.csv", {"pile_rows": len(hay), "jang_others": len(others),
                                            "reference_rows": len(reference), "members": len(members)}


# ---------------------------------------------------------------- (a) and (c): speed


def bare_pass(model, ids: torch.Tensor, lengths: torch.Tensor, batches: list[np.ndarray], log=None) -> float:
    """Seconds of ``model(ids, mask).logits`` over the batches (each trimmed to its longest row); a line
    to ``log`` every 30 s (a clock read per batch: nothing next to a forward pass)."""
    device = next(model.parameters()).device
    t = last = time.perf_counter()
    with torch.no_grad():
        for i, rows in enumerate(batches):
            if log is not None and time.perf_counter() - last > 30:
                last = time.perf_counter()
                log(f"bare forward pass: {i}/{len(batches)} batches · {last - t:.0f} s")
            ln = lengths[rows]
            width = int(ln.max())
            x = ids[rows, :width].to(device)
            mask = (torch.arange(width)[None, :] < ln[:, None]).long().to(device)
            _ = model(input_ids=x, attention_mask=mask, use_cache=False).logits
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def speed(args, planted: Path, corpus_dir: Path, reference: Path, work: Path, device: str, dtype: str,
          batch_size: int, log, progress=None) -> tuple[dict, object, Path]:
    """The scan (its result and folder) with the bare pass around it, on ``device``."""
    from unmemorize.models import load_model
    from unmemorize.scan import ScanSpec, scan_run
    from unmemorize.scan.measure import length_order, pad
    from unmemorize.scan.windows import windows

    lm = load_model(str(planted), dtype=dtype, device=device, log=log)
    tok = lm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tokens = [w.tokens for w in windows([corpus_dir], tok, args.length, args.stride, args.min_tokens,
                                        group_field="corpus")]
    ids, lengths = pad(tokens, pad_id)
    order = length_order(lengths.numpy())
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    every = max(1, round(1 / args.bare_fraction))
    timed = batches[::every]
    bare_tokens = int(sum(int(lengths[b].sum()) for b in timed))
    bare_windows = int(sum(len(b) for b in timed))
    load_before = os.getloadavg()[0]
    log(f"bare forward pass, first half: {len(timed[0::2])} batches of {batch_size}")
    bare_s = bare_pass(lm.model, ids, lengths, timed[0::2], log)
    spec = ScanSpec(model={"path": str(planted), "device": device, "dtype": dtype}, corpus=(corpus_dir,),
                    reference=reference, tau_by="corpus", length=args.length, stride=args.stride,
                    min_tokens=args.min_tokens, top=args.top, chunk=args.chunk,
                    profile={"batch_size": batch_size, "metrics": ("ma", "el", "extraction")})
    out = work / f"scan-{device.split(':')[0]}"
    shutil.rmtree(out.parent / f".{out.name}.partial", ignore_errors=True)  # a fresh scan: nothing resumed
    t = time.perf_counter()
    result, path = scan_run(spec, out, overwrite=True, log=log, progress=progress)
    scan_wall = time.perf_counter() - t
    log(f"bare forward pass, second half: {len(timed[1::2])} batches")
    bare_s += bare_pass(lm.model, ids, lengths, timed[1::2], log)
    tm = result.timings
    bare_wps, scan_wps = bare_windows / bare_s, tm["windows_per_s"]
    facts = {"device": device, "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else
             (platform.processor() or platform.machine()), "dtype": dtype, "batch_size": batch_size,
             "torch_threads": torch.get_num_threads(), "windows": len(tokens), "tokens": int(lengths.sum()),
             "bare_windows": bare_windows, "bare_s": bare_s, "bare_windows_per_s": bare_wps,
             "bare_tokens_per_s": bare_tokens / bare_s, "scan_corpus_s": tm["corpus_s"],
             "scan_forward_s": tm["forward_s"], "scan_windows_per_s": scan_wps, "scan_tokens_per_s": tm["tokens_per_s"],
             "ratio": scan_wps / bare_wps, "scan_wall_s": scan_wall, "candidates_s": tm["candidates_s"],
             "load_before": load_before, "load_after": os.getloadavg()[0]}
    log(json.dumps({k: facts[k] for k in ("bare_windows_per_s", "scan_windows_per_s", "ratio")}))
    return facts, result, path


# ---------------------------------------------------------------- (b): recall


def doc_ranks(frame: pd.DataFrame, score: str) -> pd.DataFrame:
    """Each document's rank by its best window (``score`` descending, then loss, then corpus order)."""
    from unmemorize.scan.rank import rank_order

    ranked = frame.iloc[rank_order(frame[score], frame["loss"], frame["index"])]
    docs = ranked.drop_duplicates(["source", "doc"]).reset_index(drop=True)
    docs["rank"] = np.arange(1, len(docs) + 1)
    return docs


def recall(path: Path, manifest: dict, members: pd.DataFrame, top: pd.DataFrame, k: int) -> dict:
    windows = pd.read_parquet(path / "windows")
    planted = windows["source"].map(lambda s: Path(s).name == "members.csv")
    exposure = {str(i): int(e) for i, e in manifest["exposure"].items()}
    out = {"windows": len(windows), "haystack_windows": int((~planted).sum()), "planted_windows": int(planted.sum()),
           "documents": int(windows[["source", "doc"]].drop_duplicates().shape[0]), "k": k}
    for name, score in (("corpus_tau", "excess"), ("global_tau", "ma")):
        docs = doc_ranks(windows, score)
        mine = docs[docs["source"].map(lambda s: Path(s).name == "members.csv")]
        rank = dict(zip(mine["doc"].astype(str), mine["rank"]))
        found = {d: rank.get(d, len(docs) + 1) <= k for d in exposure}
        levels = sorted(set(exposure.values()))
        from_e = next((e for e in levels if all(found[d] for d, x in exposure.items() if x >= e)), None)
        out[name] = {"recall": sum(found.values()) / len(exposure), "found": int(sum(found.values())),
                     "found_from_exposure": from_e,
                     "top_windows_planted": int(planted[rank_order_top(windows, score, k)].sum())}
        out.setdefault("members", {})
        for d, e in exposure.items():
            row = mine[mine["doc"].astype(str) == d]
            m = out["members"].setdefault(d, {"exposure": e})
            m[f"rank_{name}"] = rank.get(d)
            m["ma"] = float(row["ma"].iloc[0]) if len(row) else None
    in_top = top[top["source"].map(lambda s: Path(s).name == "members.csv")]
    for _, r in in_top.drop_duplicates("doc").iterrows():
        m = out["members"].get(str(r["doc"]))
        if m is not None:
            m["extraction_exact"] = bool(r.get("extraction_exact", False))
            m["el"] = None if pd.isna(r.get("el", np.nan)) else float(r["el"])
    out["members"] = dict(sorted(out["members"].items(), key=lambda kv: kv[1]["exposure"]))
    return out


def rank_order_top(windows: pd.DataFrame, score: str, k: int) -> np.ndarray:
    from unmemorize.scan.rank import rank_order

    return windows.index.to_numpy()[rank_order(windows[score], windows["loss"], windows["index"])[:k]]


# ---------------------------------------------------------------- the section


def render(r: dict) -> str:
    cpu, rec = r.get("cpu"), r.get("recall")
    lines = [f"Command: `.venv/bin/python benchmarks/bench_scan.py {r['argv']}` — raw numbers in "
             "`benchmarks/results/scan.json`.", ""]
    s = r["setup"]
    lines.append(f"Model {r['model']}; {s['members']} of Jang's sequences (`lm_extraction_32_{r['split']}.csv`) "
                 f"planted at exposures {r['exposures'][0]}–{r['exposures'][-1]}, hidden among {s['pile_rows']:,} rows "
                 f"of `eval/pile.csv` and {s['jang_others']:,} other Jang sequences; τ per corpus from the first "
                 f"{s['reference_rows']:,} rows of `eval/pile.csv`. Windows of T = {r['length']} tokens, stride "
                 f"{r['stride']}, at least {r['min_tokens']} tokens.")
    if cpu:
        meets = "meets" if cpu["ratio"] >= GOAL else "falls short of"
        lines += ["", "| where | windows | bare forward (windows/s) | scan (windows/s) | scan (tokens/s) | ratio |",
                  "|---|---|---|---|---|---|"]
        for key in ("cpu", "gpu"):
            x = r.get(key)
            if isinstance(x, dict) and "ratio" in x:
                lines.append(f"| {x['device_name']} ({x['device']}, {x['dtype']}, batch {x['batch_size']}) | "
                             f"{x['windows']:,} | {x['bare_windows_per_s']:.2f} | {x['scan_windows_per_s']:.2f} | "
                             f"{x['scan_tokens_per_s']:,.0f} | {x['ratio']:.2f}× |")
        lines += ["", f"On the CPU the scan's corpus pass runs at {cpu['ratio']:.2f}× the bare forward pass over the "
                  f"same windows, which {meets} the goal of {GOAL}× (load average {cpu['load_before']:.1f} before, "
                  f"{cpu['load_after']:.1f} after; the bare pass measured {cpu['bare_windows']:,} windows, half before "
                  f"and half after the scan). Of the scan's {cpu['scan_corpus_s']:.0f} s, "
                  f"{cpu['scan_forward_s']:.0f} s were spent in the measuring passes; loading the model, τ on the "
                  f"reference, the candidates and the files took {cpu['scan_wall_s'] - cpu['scan_corpus_s']:.0f} s "
                  f"more ({cpu['candidates_s']:.0f} s for the candidates' EL and extraction)."]
    gpu = r.get("gpu")
    if isinstance(gpu, dict) and "ratio" in gpu:
        lines.append("")
        lines.append(f"On {gpu['device_name']}: {gpu['scan_tokens_per_s']:,.0f} tokens/s ({gpu['ratio']:.2f}× "
                     "the bare pass there).")
    elif gpu:
        lines.append("")
        lines.append(f"GPU: not measured ({gpu.get('skipped', 'no GPU')}).")
    if rec:
        lines += ["", f"**Recall@{rec['k']}** among {rec['windows']:,} windows ({rec['haystack_windows']:,} not "
                  f"planted, {rec['documents']:,} documents): each document is ranked by its best window, and a "
                  f"planted sequence is found when its document is among the first {rec['k']}.", "",
                  "| ranked by | recall | found | every planted sequence found from exposure | planted windows among "
                  "the top windows |", "|---|---|---|---|---|"]
        for name, words in (("corpus_tau", "MA − τ of its corpus (`--tau-by corpus`)"), ("global_tau", "MA")):
            x = rec[name]
            fe = "none" if x["found_from_exposure"] is None else str(x["found_from_exposure"])
            lines.append(f"| {words} | {x['recall']:.2f} | {x['found']} of {len(rec['members'])} | {fe} | "
                         f"{x['top_windows_planted']} of {rec['k']} |")
        ms = list(rec["members"].values())
        lines += ["", "| exposure | " + " | ".join(str(m["exposure"]) for m in ms) + " |", "|---" * (len(ms) + 1) + "|",
                  "| MA | " + " | ".join("–" if m["ma"] is None else f"{m['ma']:.2f}" for m in ms) + " |",
                  "| rank (MA − τ) | " + " | ".join(str(m.get("rank_corpus_tau") or "–") for m in ms) + " |",
                  "| rank (MA) | " + " | ".join(str(m.get("rank_global_tau") or "–") for m in ms) + " |"]
        missed = [m["exposure"] for m in rec["members"].values() if (m.get("rank_corpus_tau") or 10 ** 9) > rec["k"]]
        lines += ["", (f"Not found within the top {rec['k']}: the sequences planted {', '.join(map(str, missed))} "
                       "time(s)." if missed else f"Every planted sequence is within the top {rec['k']}.")]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--exposures", default="1-16", help="one level per member: '1-16' or '1,2,4,8'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference-rows", type=int, default=300, help="first rows of eval/pile.csv: the reference for τ")
    ap.add_argument("--pile-rows", type=int, default=0, help="pile rows in the corpus after the reference (0: all)")
    ap.add_argument("--others", type=int, default=0, help="other Jang sequences in the corpus (0: all)")
    ap.add_argument("--length", type=int, default=200)
    ap.add_argument("--stride", type=int, default=100)
    ap.add_argument("--min-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--top", type=int, default=16)
    ap.add_argument("--bare-fraction", type=float, default=1.0, help="share of the batches the bare pass times")
    ap.add_argument("--gpu-dtype", default="bfloat16")
    ap.add_argument("--gpu-batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--parts", default="cpu,gpu", help="cpu (a and b), gpu (c where CUDA is), none (only the section)")
    ap.add_argument("--work", type=Path, default=RUNS / "scan")
    args = ap.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts == {"none"}:
        write_section(TITLE, render(json.loads(OUT.read_text())))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    from unmemorize.progress import make_progress

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with make_progress(interval=30) as progress:  # off a terminal: a line every 30 s, never silent for minutes
        folder, manifest, members = plant(args, log, progress)
        work = args.work / safe(Path(str(args.model)).name)
        corpus_dir, reference, setup = corpus(args, members, work)
        results = json.loads(OUT.read_text()) if OUT.exists() else {}
        results.update({"model": args.model if args.model != "default" else "SmolLM2-135M-Instruct (default)",
                        "argv": " ".join(sys.argv[1:]), "date": _dt.date.today().isoformat(), "data": "$UNMEMORIZE_DATA",
                        "split": args.split, "exposures": list(exposures(args.exposures)), "length": args.length,
                        "stride": args.stride, "min_tokens": args.min_tokens, "top": args.top, "setup": setup,
                        "machine": platform.machine()})
        if "cpu" in parts:
            cpu, result, path = speed(args, folder, corpus_dir, reference, work, "cpu", "float32", args.batch_size, log,
                                        progress)
            results["cpu"] = cpu
            results["recall"] = recall(path, manifest, members, result.top, args.top)
            results["tau"] = result.levels.tau
        if "gpu" in parts:
            if torch.cuda.is_available():
                results["gpu"] = speed(args, folder, corpus_dir, reference, work, "cuda", args.gpu_dtype,
                                       args.gpu_batch_size, log, progress)[0]
            else:
                results["gpu"] = {"skipped": "no CUDA device on this machine"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2, default=float) + "\n")
    if "cpu" in results and "recall" in results:
        write_section(TITLE, render(results))
    print(render(results))


if __name__ == "__main__":
    main()
