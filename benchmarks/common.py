"""What the benchmark scripts share: where the data is, the RESULTS.md sections, the stores of
recorded runs, the planted lab and one unlearning run through the library's recipe.

The data folder (``forget/lm_extraction_{size}_{split}.csv``, ``eval/…``, docs/data.md) is read from
one setting, the environment variable ``UNMEMORIZE_DATA``; it defaults to the ``shared/data``
folder beside this checkout, where this project's machines keep it. Tests read it from here too.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_DIR = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs" / "benchmarks"  # the run folders behind the recorded rows (not kept in the repo)
DATA = Path(os.environ.get("UNMEMORIZE_DATA") or ROOT.parent / "shared" / "data")
HEADER = "# Benchmark results\n\nEvery number here is written by a script in `benchmarks/`; each section names its command.\n"


def data(*parts: str) -> Path:
    """A path under the data folder, or exit with a message that says which setting to fix."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        sys.exit(f"needs {p}: set UNMEMORIZE_DATA to the folder that holds forget/ and eval/ (docs/data.md)")
    return p


def write_section(title: str, body: str) -> None:
    """Each benchmark owns one '## ' section of RESULTS.md and rewrites only it."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    block = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    tmp = RESULTS.with_name(f".{RESULTS.name}.{os.getpid()}.tmp")  # atomic: a reader never sees half a file
    tmp.write_text(text.rstrip("\n") + "\n")
    os.replace(tmp, RESULTS)


def pairs_at_k(rows: list[dict], key: dict, recorded: list[dict], fields: tuple[str, ...],
               k: int) -> list[tuple[dict, dict]]:
    """Each of ``rows`` (runs at some MIAU K) with the recorded run of the same ``fields`` (split, method or
    stage, stop rule) at MIAU K = ``k`` whose other settings equal ``key``'s, both with MIAU: a rerun at the
    paper's K set beside the run it repeats. Rows without such a partner are left out."""
    same = {n: v for n, v in key.items() if n != "neighbours"}
    main = {tuple(r[f] for f in fields): r for r in recorded
            if r["settings"].get("neighbours") == k
            and {n: v for n, v in r["settings"].items() if n != "neighbours"} == same}
    pairs = []
    for r in rows:
        o = main.get(tuple(r[f] for f in fields))
        if o is not None and "miau" in r["attacks"] and "miau" in o["attacks"]:
            pairs.append((r, o))
    return pairs


class RunStore:
    """Recorded runs of a benchmark, one JSON object per line, appended as they finish: a script can
    be stopped and run again, and skips what is recorded under the same settings."""

    def __init__(self, path: Path):
        self.path = path

    def rows(self, settings: dict | None = None) -> list[dict]:
        if not self.path.exists():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return rows if settings is None else [r for r in rows if r.get("settings") == settings]

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")


# ---------------------------------------------------------------- the words of the claims


def t_interval(values) -> tuple[float, float]:
    """(mean, half-width of the 95 % Student-t interval) of the finite values (:func:`unmemorize.stats.t_interval`)."""
    from unmemorize.stats import t_interval as interval

    return interval(values)[:2]


def fmt(mean: float, half: float, digits: int = 1) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def paired_caveat(d, what: str, digits: int = 1) -> str:
    """The sentence for a :class:`PairedDifference`: its interval and whether it excludes 0."""
    if d.n < 2:
        return ", but one split has no interval (not evidence either way)"
    text = f"; the paired {what} difference over {d.n} splits is {d.mean:+.{digits}f} ± {d.half:.{digits}f}, which "
    if not d.excludes_zero:
        return text + "includes 0: not evidence either way"
    if d.comparisons <= 1:
        return text + "excludes 0: evidence at this scale"
    level = f"the Bonferroni level for {d.comparisons} comparisons (± {d.strict:.{digits}f})"
    return text + (f"excludes 0, and still does at {level}: evidence at this scale" if d.survives_correction else
                   f"excludes 0, but not at {level}: weak evidence")



def split_list(text: str, kind=str) -> list:
    return [kind(s.strip()) for s in text.split(",") if s.strip()]


def run_splits(args, run_split, write_results, done) -> None:
    """A split benchmark's main loop: ``run_split(split, args, done(), progress)`` for each of ``args.splits``,
    with the RESULTS section rewritten after each split (a stopped run keeps what finished) and once at the
    end; ``--report-only`` does only the last. Off a terminal the progress prints a line every 30 s, so a run
    under nohup or CI is never silent for minutes."""
    import torch

    from unmemorize.progress import make_progress

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    RESULTS_DIR.mkdir(exist_ok=True)
    if not args.report_only:
        with make_progress(interval=30) as progress:
            for split in split_list(args.splits, int):
                run_split(split, args, done(), progress)
                write_results(args)
    write_results(args)


# ---------------------------------------------------------------- the planted lab on Jang's sequences


def unplanted_jang(split: int, planted: set[str], n: int, name: str) -> Path:
    """``n`` unplanted Jang sequences as a CSV (cached as ``labs/<name>-nonmembers-<split>-<n>.csv``):
    this split's 128-set first, then the other splits' (deduplicated), none of the ``planted`` doc ids."""
    import pandas as pd

    from unmemorize.models import cache_dir

    frames = [pd.read_csv(data("forget", f"lm_extraction_128_{s}.csv"), dtype=str, keep_default_na=False)
              for s in [split] + [s for s in (0, 1, 2) if s != split]]
    pool = pd.concat(frames).drop_duplicates("doc_id")
    pool = pool[~pool["doc_id"].isin(planted)]
    if len(pool) < n:
        sys.exit(f"only {len(pool)} unplanted Jang sequences for split {split}; lower --nonmembers")
    path = cache_dir() / "labs" / f"{name}-nonmembers-{split}-{n}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pool.head(n).to_csv(path, index=False)
    return path


def planted_lab(split: int, members: int, exposures: str, seed: int, log=print, progress=None):
    """The first ``members`` sequences of Jang's ``lm_extraction_32_<split>`` planted into the default
    model at ``exposures`` (cached by every input): (planted model folder, members file, plant manifest).
    ``progress`` shows the planting (minutes on a CPU when the cache does not hold it)."""
    import pandas as pd

    from unmemorize.lab.plant import plant_into
    from unmemorize.models import cache_dir, load_model

    src = pd.read_csv(data("forget", f"lm_extraction_32_{split}.csv"), dtype=str, keep_default_na=False)
    lab = cache_dir() / "labs" / f"paper-claims-32_{split}-m{members}-e{exposures.replace(',', '_')}"
    lab.parent.mkdir(parents=True, exist_ok=True)
    members_file = lab.parent / f"{lab.name}.members.csv"
    src.head(members).to_csv(members_file, index=False)
    lm = load_model("default", log=log)
    folder, manifest = plant_into(lm, members_file, tuple(split_list(exposures, int)), lab, seed=seed, log=log,
                                  progress=progress)
    return folder, members_file, manifest


# The paper's absolute constants (docs/method.md §4.13): the library's defaults are relative to τ, and
# the benchmarks that reproduce the paper's claims run the paper's numbers.
PAPER_CONSTANTS = {"sga": {"selector": "threshold:0.7"}, "ta": {"switch_below": 0.9}, "tau": {"switch_below": 0.5}}


def paper_method(name: str) -> dict:
    """The method spec of ``name`` with the paper's absolute constants."""
    return {"name": name, **PAPER_CONSTANTS.get(name, {})}


def unlearning_run(resources, planted: Path, forget: Path, reference: Path, out: Path, *, method: str | dict,
                   stop: str | None, seed: int, lr: float, max_steps: int, micro_batch: int,
                   band: tuple[float | str, float | str], attacks: dict | None = None, oracle: str | None = None,
                   **spec):
    """One unlearning run of the planted model through the library's recipe (``unmemorize unlearn``'s):
    its record, and its folder under ``runs/benchmarks``. ``method`` is a name or a method spec; ``spec``
    holds any further run setting (``target_rule``, ``target_model``, ``tau_by``)."""
    from unmemorize.models import ModelSource
    from unmemorize.recipe import execute
    from unmemorize.spec import ForgetSource, RunSpec
    from unmemorize.thresholds import Band
    from unmemorize.unlearning import UnlearnOptions

    spec = RunSpec(model=ModelSource(path=str(planted)), forget=ForgetSource(path=forget), reference=reference,
                   method=method if isinstance(method, dict) else {"name": method}, stop=stop, seed=seed,
                   band=Band(*band), **spec,
                   training=UnlearnOptions(lr=lr, max_steps=max_steps, micro_batch=micro_batch, checkpoint_every=0),
                   attacks={"names": [], **(attacks or {})}, oracle=oracle)
    return execute(spec, out, resources=resources, overwrite=True, command="benchmark"), out
