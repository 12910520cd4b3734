"""Run the probes on an unlearned model and, as the baseline, on the retrain oracle (docs/method.md §3.8).

:func:`run_probes` is the library function (the run recipe and ``unmemorize probe`` call it); every
input is checked before any probe runs (:func:`prepare`). For each probe and each model (the unlearned
model U, the oracle O when given) the forget set is measured before and after the probe, on copies
of the weights where the probe changes them; the original model M, when given, is measured once
without any probe (how memorized each sequence was). :mod:`.resurface` turns the numbers into
per-sequence verdicts.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from unmemorize.data import SequenceSet
from unmemorize.errors import UserError
from unmemorize.probes import resurface as rs
from unmemorize.probes.options import PROBES, ProbeSettings, expand
from unmemorize.probes.summary import ProbesRecord, ProbeSummary

MEASURES = {"weights": ("ma", "el_10", "extraction", "matched"),
            "prompt": ("suffix_ma", "extraction", "matched"),
            "sampling": ("matched", "p_suffix", "p_any", "hits")}
PRIMARY = {"weights": "ma", "prompt": "matched", "sampling": "matched"}
UNLEARNED, ORACLE, ORIGINAL = "unlearned", "oracle", "original"
FORGET, HELD_OUT = "forget set", "held-out half of the forget set"


@dataclass
class ProbeResults:
    """What the probes found: the typed summary (``probes.json``) and one row per probe × sequence."""

    record: ProbesRecord
    frame: pd.DataFrame  # probe, kind, id, measured_on, <measure>_before/_after/_rise[/_oracle_…][/_original], status

    def table(self) -> pd.DataFrame:
        """One row per probe: its verdict's measure before and after, the oracle's, and how many resurfaced."""
        rows = []
        for p in self.record.probes.values():
            m = p.measure
            row = {"probe": p.name, "measure": m, "sequences": p.sequences, "before": p.before.get(m),
                   "after": p.after.get(m), "rise": p.rise.get(m)}
            if p.oracle_after is not None:
                row["oracle before"] = (p.oracle_before or {}).get(m)
                row["oracle after"] = p.oracle_after.get(m)
                row["not forgotten"] = p.not_forgotten
            row["resurfaced"] = f"{p.resurfaced}/{p.sequences - p.unmeasured}"
            row["seconds"] = p.seconds + (p.oracle_seconds or 0.0)
            rows.append(row)
        return pd.DataFrame(rows)


# ---------------------------------------------------------------- checks and plan (before any work)


@dataclass
class Plan:
    """What will run, on which data: the probes (sampling once per temperature), the ones left out and why,
    the relearning sets and the forget set's halves."""

    probes: list[str]  # result names: "relearn-forget", "sampling@0.7", …
    skipped: dict[str, str]
    data: dict[str, tuple[SequenceSet, str]] = field(default_factory=dict)  # relearn probe → (rows, description)
    halves: tuple[list[int], list[int]] | None = None  # (rows relearned, rows measured) for relearn-forget
    notes: list[str] = field(default_factory=list)


def kind_of(name: str) -> str:
    return PROBES[name.split("@")[0]][1]


def title_of(name: str) -> str:
    base, _, t = name.partition("@")
    return f"sampling at temperature {t}" if t else PROBES[base][0]


def check_models(unlearned, oracle=None, original=None) -> None:
    """The oracle and the original must be the same kind of model as U (architecture and vocabulary)."""
    kind = unlearned.config.model_type
    vocab = unlearned.get_input_embeddings().num_embeddings
    for role, m in (("oracle", oracle), ("original model", original)):
        if m is None:
            continue
        if m.config.model_type != kind or m.get_input_embeddings().num_embeddings != vocab:
            raise UserError(f"the {role} is another architecture ({m.config.model_type}, "
                            f"{m.get_input_embeddings().num_embeddings} tokens) than the unlearned model ({kind}, "
                            f"{vocab} tokens): the same probes on it are no baseline")


def _without(seqs: SequenceSet, forget: SequenceSet) -> tuple[SequenceSet, int]:
    """``seqs`` without any sequence whose text is one of the forget set's."""
    texts = set(forget.texts)
    keep = [i for i, t in enumerate(seqs.texts) if t not in texts]
    return (seqs.subset(keep) if len(keep) < len(seqs) else seqs), len(seqs) - len(keep)


def ordinary_text(tokenizer, length: int) -> SequenceSet:
    """The lab's ordinary text (Python standard-library docstrings), as planting mixes it in."""
    from unmemorize.data import TextRecords, tokenize
    from unmemorize.lab.ordinary import stdlib_paragraphs

    paras = stdlib_paragraphs()
    return tokenize(TextRecords(paras, [f"stdlib-{i}" for i in range(len(paras))], pd.DataFrame(index=range(len(paras))),
                                "python standard-library docstrings"), tokenizer, min(length, 128))


def prepare(settings: ProbeSettings, tokenizer, forget: SequenceSet, *, reference: SequenceSet | None = None,
            retain_members: SequenceSet | None = None) -> Plan:
    """The plan, or a one-line :class:`UserError` for a probe asked for by name that the inputs do not
    allow (a probe that comes with a group is left out, with the reason)."""
    from unmemorize.probes.prompts import has_chat_template

    wanted, explicit = expand(settings.names)
    plan = Plan([], {})
    if len(forget) == 0:
        raise UserError("the forget set is empty: nothing to probe")
    for name in wanted:
        why = None
        if name == "relearn-reference":
            data, desc = (reference, f"the reference set {reference.source}") if reference is not None else (
                ordinary_text(tokenizer, forget.length), "ordinary text (Python standard-library docstrings)")
            data, dropped = _without(data, forget)
            if dropped:
                plan.notes.append(f"relearn-reference: {dropped} sequence(s) of {desc} are forget sequences and were "
                                  "left out of its relearning data")
            if len(data) == 0:
                why = f"{desc} holds nothing but forget sequences"
            else:
                plan.data[name] = (data, desc)
        elif name == "relearn-retain":
            if retain_members is None:
                why = ("needs the retain members (--retain-members FILE, or an oracle planted by `unmemorize plant "
                       "--forget`, whose manifest names them)")
            else:
                data, dropped = _without(retain_members, forget)
                if len(data) == 0:
                    why = f"the retain members {retain_members.source} are all forget sequences"
                else:
                    plan.data[name] = (data, f"the retain members {retain_members.source}")
        elif name == "relearn-forget":
            if len(forget) < 2:
                why = "needs at least 2 forget sequences (one half to relearn, the other to measure)"
            else:
                order = np.random.default_rng(settings.seed).permutation(len(forget))
                half = len(forget) // 2
                plan.halves = (sorted(order[:half].tolist()), sorted(order[half:].tolist()))
                plan.data[name] = (forget.subset(plan.halves[0]), f"{half} of the {len(forget)} forget sequences")
        elif name == "prompt-chat" and not has_chat_template(tokenizer):
            why = "the tokenizer has no chat template (only instruct models have one)"
        if why is not None:
            if name in explicit:
                raise UserError(f"probe {name} cannot run: {why}")
            plan.skipped[name] = why
            continue
        if name == "sampling":
            plan.probes += [f"sampling@{t:g}" for t in settings.temperatures]
        else:
            plan.probes.append(name)
    return plan


# ---------------------------------------------------------------- measuring


def weight_measures(prof: pd.DataFrame) -> dict[str, np.ndarray]:
    """MA, EL_10, exact extraction and the matched share of the suffix from a profile frame (NaN where a
    sequence has no extraction window)."""
    suffix = prof["extraction_suffix"].to_numpy(float)
    ok = suffix > 0
    return {"ma": prof["ma"].to_numpy(float), "el_10": prof["el_10"].to_numpy(float),
            "extraction": np.where(ok, prof["extraction_exact"].to_numpy(float), np.nan),
            "matched": np.where(ok, prof["extraction_matched"].to_numpy(float) / np.maximum(suffix, 1), np.nan)}


def _fill(n: int, rows: list[int], values: list[dict[str, float]], measures) -> dict[str, np.ndarray]:
    out = {m: np.full(n, np.nan) for m in measures}
    for r, v in zip(rows, values):
        for m in measures:
            out[m][r] = v[m]
    return out


class _Measurer:
    """Measures the forget set on one model (or on a probed copy of it)."""

    def __init__(self, settings: ProbeSettings, tokenizer, forget: SequenceSet, band, progress):
        from unmemorize.memorization import ProfileOptions
        from unmemorize.probes.prompts import windows

        self.s, self.tokenizer, self.forget, self.band, self.progress = settings, tokenizer, forget, band, progress
        self.opts = ProfileOptions(metrics=("ma", "el", "extraction"), batch_size=settings.batch_size, el_n=10,
                                   el_for=settings.el_for, extraction_prefix=settings.prefix,
                                   extraction_suffix=settings.suffix)
        self.win = windows(forget, settings.prefix, settings.suffix)

    def weights(self, model, rows: list[int] | None = None) -> dict[str, np.ndarray]:
        from unmemorize.memorization import profile

        seqs = self.forget if rows is None else self.forget.subset(rows)
        return weight_measures(profile(model, seqs, self.opts, self.progress, self.band))

    def stats(self, model, prompts=None, temperatures=(), label="prompt pass"):
        from unmemorize.probes.prompts import suffix_statistics

        return suffix_statistics(model, self.win.prefixes if prompts is None else prompts, self.win.suffixes,
                                 pad_id=self.forget.pad_id, temperatures=temperatures, top_k=self.s.top_k,
                                 batch_size=self.s.batch_size, progress=self.progress, label=label)

    def greedy(self, st) -> dict[str, np.ndarray]:
        from unmemorize.probes.prompts import greedy_measures

        return _fill(len(self.forget), self.win.rows, [greedy_measures(c) for c in st.correct], MEASURES["prompt"])

    def greedy_sampling(self, st) -> dict[str, np.ndarray]:
        from unmemorize.probes.prompts import greedy_as_sampling

        return _fill(len(self.forget), self.win.rows, [greedy_as_sampling(c, self.s.samples) for c in st.correct],
                     MEASURES["sampling"])

    def sampled(self, st, temperature: float, seed) -> dict[str, np.ndarray]:
        from unmemorize.probes.prompts import sampling_measures

        rng = np.random.default_rng(seed)  # the same draws for U and the oracle: paired
        return _fill(len(self.forget), self.win.rows,
                     [sampling_measures(q, self.s.samples, rng) for q in st.q[temperature]], MEASURES["sampling"])


def run_probes(unlearned_model, tokenizer, forget: SequenceSet, *, settings: ProbeSettings, original=None, oracle=None,
               reference: SequenceSet | None = None, retain_members: SequenceSet | None = None, band=None,
               oracle_cache: dict | None = None, progress=None,
               log: Callable[[str], None] | None = None) -> ProbeResults:
    """Run the probes of ``settings`` on ``unlearned_model`` (U) and, when given, on ``oracle`` (O, the
    baseline); ``original`` (M) is measured once without a probe. No model passed in is modified.

    ``reference``: ordinary text without F for relearn-reference (default: the lab's ordinary text);
    ``retain_members``: the members that stay, for relearn-retain; ``band``: its top decides which
    sequences get EL_10 (``settings.el_for``). Every input is checked before any work.

    ``oracle_cache``: a dict the caller keeps for one oracle across calls. Every probe is seeded, so what it
    does to the oracle depends only on the probe's inputs (:func:`baseline_key`); several unlearned models
    probed against one oracle (the methods of one lab) then probe the oracle once, and later calls reuse
    its outcome (a note says so, with the seconds it took when it ran).
    """
    from unmemorize.models import check_context
    from unmemorize.thresholds import Band

    s = settings
    say = log or (lambda message: None)
    plan = prepare(s, tokenizer, forget, reference=reference, retain_members=retain_members)
    check_models(unlearned_model, oracle, original)
    for m in (unlearned_model, oracle, original):
        if m is not None:
            check_context(m, forget.length)
    started = time.perf_counter()
    models = {UNLEARNED: unlearned_model, **({ORACLE: oracle} if oracle is not None else {})}
    band = band or Band()
    meas = _Measurer(s, tokenizer, forget, band, progress)
    kinds = {kind_of(n) for n in plan.probes}
    base_w: dict[str, dict] = {}
    base_st: dict[str, object] = {}
    reuse = oracle is not None and oracle_cache is not None
    keys = {n: baseline_key(s, n, forget, plan, band) for n in plan.probes} if reuse else {}
    reused = [n for n in plan.probes if keys.get(n) in oracle_cache] if reuse else []
    measured = {**models, **({ORIGINAL: original} if original is not None else {})}
    if reused and len(reused) == len(plan.probes):
        measured.pop(ORACLE)  # every outcome of the oracle is known: it is not run at all
    for role, m in measured.items():
        if "weights" in kinds:
            say(f"probes: measuring the {role} model's forget set")
            base_w[role] = meas.weights(m)
        if kinds & {"prompt", "sampling"}:
            base_st[role] = meas.stats(m, temperatures=s.temperatures if "sampling" in kinds else (),
                                       label=f"prompt pass ({role})")
    summaries: dict[str, ProbeSummary] = {}
    frames = []
    for index, name in enumerate(plan.probes):
        kind = kind_of(name)
        rows = plan.halves[1] if name == "relearn-forget" else list(range(len(forget)))
        before, after, seconds, details = {}, {}, {}, {}
        for role, model in models.items():
            if role == ORACLE and name in reused:
                before[role], after[role], seconds[role], info = oracle_cache[keys[name]]
                details.update(info)
                continue
            say(f"probe {name} on the {role} model")
            t = time.perf_counter()
            before[role], after[role], info = _probe(name, model, role, meas, plan, base_w, base_st, rows,
                                                      seed=[s.seed, index], progress=progress)
            seconds[role] = round(time.perf_counter() - t, 2)
            details.update(info)
            if role == ORACLE and reuse:
                oracle_cache[keys[name]] = (before[role], after[role], seconds[role],
                                            {k: v for k, v in info.items() if not k.endswith(f"_{UNLEARNED}")})
            gc.collect()
        original_values = None
        if original is not None:
            original_values = _before_of(kind, ORIGINAL, meas, base_w, base_st, rows)
        summary, frame = _summarize(name, kind, forget, rows, before, after, original_values, s.margin, seconds,
                                    details)
        summaries[name] = summary
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["probe", "kind", "id", "status"])
    notes = list(plan.notes)
    if reused:
        notes.append(f"the oracle's outcome of {', '.join(reused)} reused from an earlier probe of the same oracle with "
                     "the same inputs and seeds (its seconds are those it took then)")
    if oracle is None and plan.probes:
        notes.append("no oracle: a sequence has resurfaced when the probe lifts its measure by more than the margin "
                     "above the model's own level before the probe (with an oracle, above the oracle's after the same "
                     "probe)")
    record = ProbesRecord(settings=s.model_dump(mode="json"), oracle=oracle is not None, original=original is not None,
                          sequences=len(forget), probes=summaries, skipped=plan.skipped, notes=notes,
                          seconds=round(time.perf_counter() - started, 2))
    return ProbeResults(record, frame)


def _tokens_digest(seqs: SequenceSet) -> str:
    h = hashlib.sha256()
    for t in (seqs.input_ids, seqs.lengths):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def baseline_key(settings: ProbeSettings, name: str, forget: SequenceSet, plan: Plan, band) -> str:
    """Everything that decides what probe ``name`` does to a given model: the settings (seeds, steps, lr,
    samples…), the probe's position in the plan (its sampling seed), the forget set's tokens, the probe's own
    data (relearning text) and the band (which sequences get EL_10)."""
    data = plan.data.get(name)
    parts = {"settings": settings.model_dump(mode="json"), "name": name, "index": plan.probes.index(name),
             "forget": _tokens_digest(forget), "data": _tokens_digest(data[0]) if data else None,
             "halves": [list(h) for h in plan.halves] if name == "relearn-forget" else None,
             "band": [str(band.lo), str(band.hi)]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _before_of(kind: str, role: str, meas: _Measurer, base_w, base_st, rows: list[int]) -> dict[str, np.ndarray]:
    if kind == "weights":
        values = base_w[role]
    elif kind == "prompt":
        values = meas.greedy(base_st[role])
    else:
        values = meas.greedy_sampling(base_st[role])
    return {m: v[rows] for m, v in values.items()}


def _probe(name: str, model, role: str, meas: _Measurer, plan: Plan, base_w, base_st, rows: list[int], *, seed,
           progress) -> tuple[dict, dict, dict]:
    """(before, after, details) of one probe on one model, on ``rows`` of the forget set."""
    kind, s = kind_of(name), meas.s
    before = _before_of(kind, role, meas, base_w, base_st, rows)
    if name.startswith("relearn-"):
        from unmemorize.probes.relearn import relearn

        data, desc = plan.data[name]
        copy, losses = relearn(model, data, steps=s.steps, lr=s.lr, batch_size=s.batch_size, seed=s.seed,
                               progress=progress, label=f"{name} ({role})")
        after = meas.weights(copy, None if name != "relearn-forget" else rows)
        del copy
        return before, after, {"data": desc, "rows": len(data), "steps": s.steps, "lr": s.lr,
                               "batch_size": min(s.batch_size, len(data)), f"loss_first_{role}": losses[0],
                               f"loss_last_{role}": losses[-1]}
    if name.startswith("quant-"):
        from unmemorize.probes.quantize import quantized_copy

        bits = int(name.removeprefix("quant-").removesuffix("bit"))
        copy = quantized_copy(model, bits)
        after = meas.weights(copy)
        del copy
        return before, after, {"bits": bits, "scheme": "symmetric round-to-nearest per output channel"}
    if kind == "prompt":
        from unmemorize.probes.prompts import variant

        tok = meas.tokenizer
        prompts = [variant(name, tok, p, s.keep) for p in meas.win.prefixes]
        st = meas.stats(model, prompts, label=f"{name} ({role})")
        after = {m: v[rows] for m, v in meas.greedy(st).items()}
        return before, after, {"mean_prompt_tokens": float(np.mean([len(p) for p in prompts])) if prompts else None,
                               "prompts_cut_to_context": st.cut, **({"keep": s.keep} if name == "prompt-truncate"
                                                                     else {})}
    temperature = float(name.split("@")[1])
    after = {m: v[rows] for m, v in meas.sampled(base_st[role], temperature, seed).items()}
    return before, after, {"temperature": temperature, "top_k": s.top_k, "samples": s.samples}


def _summarize(name: str, kind: str, forget: SequenceSet, rows: list[int], before: dict, after: dict,
               original: dict | None, margin: float, seconds: dict, details: dict) -> tuple[ProbeSummary, pd.DataFrame]:
    measures, primary = MEASURES[kind], PRIMARY[kind]
    has_oracle = ORACLE in after
    frame = pd.DataFrame({"probe": name, "kind": kind, "id": [forget.ids[r] for r in rows],
                          "measured_on": HELD_OUT if name == "relearn-forget" else FORGET})
    for m in measures:
        frame[f"{m}_before"] = before[UNLEARNED][m]
        frame[f"{m}_after"] = after[UNLEARNED][m]
        frame[f"{m}_rise"] = rs.resurfacing(before[UNLEARNED][m], after[UNLEARNED][m])
        if has_oracle:
            frame[f"{m}_oracle_before"] = before[ORACLE][m]
            frame[f"{m}_oracle_after"] = after[ORACLE][m]
            frame[f"{m}_oracle_rise"] = rs.resurfacing(before[ORACLE][m], after[ORACLE][m])
        if original is not None:
            frame[f"{m}_original"] = original[m]
    b, a = before[UNLEARNED][primary], after[UNLEARNED][primary]
    if has_oracle:
        frame["excess"] = a - after[ORACLE][primary]
        st = rs.status(b, a, margin, before[ORACLE][primary], after[ORACLE][primary])
    else:
        st = rs.status(b, a, margin)
    frame["status"] = st
    means = lambda d: {m: rs.nanmean(d[m]) for m in measures}
    counts = {k: int((st == k).sum()) for k in rs.STATUSES}
    summary = ProbeSummary(
        name=name, title=title_of(name), kind=kind, measure=primary,
        measured_on=HELD_OUT if name == "relearn-forget" else FORGET, sequences=len(rows),
        before=means(before[UNLEARNED]), after=means(after[UNLEARNED]),
        rise={m: rs.nanmean(rs.resurfacing(before[UNLEARNED][m], after[UNLEARNED][m])) for m in measures},
        oracle_before=means(before[ORACLE]) if has_oracle else None,
        oracle_after=means(after[ORACLE]) if has_oracle else None,
        original=means(original) if original is not None else None,
        baseline="oracle" if has_oracle else "before", margin=margin, resurfaced=counts[rs.RESURFACED],
        not_forgotten=counts[rs.NOT_FORGOTTEN], forgotten=counts[rs.FORGOTTEN], unmeasured=counts[rs.UNMEASURED],
        recovered=_finite(rs.share_recovered(b, a, original[primary])) if original is not None else None,
        seconds=seconds[UNLEARNED], oracle_seconds=seconds.get(ORACLE), details=details)
    summary.verdict = verdict(summary)
    return summary, frame


def _finite(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def verdict(p: ProbeSummary) -> str:
    """One line: how many sequences the probe brought back, against what baseline, and the means."""
    m, n = p.measure, p.sequences - p.unmeasured
    where = "" if p.measured_on == FORGET else f" of the {p.measured_on}"
    text = f"{p.name}: {p.resurfaced} of {n} sequences{where} resurfaced"
    if p.baseline == "oracle":
        text += f" ({m} more than {p.margin:g} above the oracle's after the same probe)"
        if p.not_forgotten:
            text += f"; {p.not_forgotten} were above the oracle already before any probe"
        text += (f"; mean {m} {_f(p.before.get(m))} → {_f(p.after.get(m))}, oracle {_f(p.oracle_before.get(m))} → "
                 f"{_f(p.oracle_after.get(m))}")
    else:
        text += f" ({m} up by more than {p.margin:g}; no oracle to compare with); mean {m} " \
                f"{_f(p.before.get(m))} → {_f(p.after.get(m))}"
    if p.recovered is not None:
        pct = 100 * p.recovered
        text += f"; share of the forgotten {m} back: {0.0 if abs(pct) < 0.5 else pct:+.0f}%"
    return text + "."


# ---------------------------------------------------------------- files


def safe_name(name: str) -> str:
    return name.replace("@", "-t")


def write_results(results: ProbeResults, folder: str | Path) -> dict[str, Path]:
    """``probes.json`` (the typed summary), ``probes.parquet`` (+ .csv, one row per probe × sequence) and
    ``probe_<name>.png`` per probe; returns the plots by probe."""
    from unmemorize.probes.report import probe_plot
    from unmemorize.runs import atomic_write_text, write_frame

    folder = Path(folder)
    atomic_write_text(folder / "probes.json", results.record.model_dump_json(by_alias=True, indent=2) + "\n")
    write_frame(folder / "probes", results.frame)
    images = {}
    for name, p in results.record.probes.items():
        images[name] = probe_plot(folder / f"probe_{safe_name(name)}.png", results.frame[results.frame["probe"] == name],
                                  p)
    return images


def write_report(results: ProbeResults, path: str | Path, images: dict[str, Path], title: str,
                 subtitle: str = "", sections: list | None = None) -> Path:
    """probes.html: the probes' sections (made from ``results`` unless already made)."""
    from unmemorize.probes.report import report_sections
    from unmemorize.report.html import write_report as write_html

    return write_html(path, title, sections if sections is not None else report_sections(results, images),
                      subtitle=subtitle)


# ---------------------------------------------------------------- `unmemorize probe` and the run recipe


def probe_run(spec, out: str | Path, *, overwrite: bool = False, progress=None, log=print):
    """``unmemorize probe``'s work: load the models and sets named in ``spec`` (a :class:`~unmemorize.probes.
    options.ProbeSpec`), check them, run the probes and write the folder ``out`` (probes.json, probes.parquet,
    a plot per probe, report.html, manifest.json). Returns (results, folder)."""
    from unmemorize.data import load_sequences
    from unmemorize.recipe import check_oracle
    from unmemorize.runs import RunDir, build_manifest, write_json

    with RunDir(out, overwrite=overwrite) as run:
        target = spec.model.load(log=log)
        original = spec.model.replace(path=spec.original).load(log=log)
        oracle = spec.model.replace(path=spec.oracle).load(log=log) if spec.oracle else None
        _check_original(target, original)
        if oracle is not None:
            check_oracle(target, oracle)
        tok = target.tokenizer
        forget = load_sequences(spec.forget, tok, spec.length)
        reference = load_sequences(spec.reference, tok, spec.length) if spec.reference else None
        retain = load_sequences(spec.retain_members, tok, spec.length) if spec.retain_members else None
        results = run_probes(target.model, tok, forget, settings=spec.probes, original=original.model,
                             oracle=oracle.model if oracle else None, reference=reference, retain_members=retain,
                             progress=progress, log=log)
        images = write_results(results, run.tmp)
        write_report(results, run.path("report.html"), images, f"Robustness probes of {target.name}",
                     subtitle=f"forget {spec.forget} · original {original.name}"
                              + (f" · oracle {oracle.name}" if oracle else ""))
        write_json(run.path("manifest.json"), build_manifest(
            "probe", spec.probes.model_dump(mode="json"), {
                "model": target.describe(), "original": original.describe(),
                "oracle": oracle.describe() if oracle else None, "forget": forget.describe(),
                "reference": reference.describe() if reference else None,
                "retain_members": retain.describe() if retain else None},
            device=spec.model.device, seed=spec.probes.seed))
        return results, run.commit()


def _check_original(target, original) -> None:
    """The original must be the kind of model U was unlearned from: same architecture and tokenizer."""
    from unmemorize.attacks.run import same_tokenizer

    check_models(target.model, original=original.model)
    if not same_tokenizer(target.tokenizer, original.tokenizer):
        raise UserError(f"the original model {original.path} has another tokenizer than the model {target.path}: "
                        "the same token ids are not the same text")


def check_stage(spec, inputs) -> None:
    """The run recipe's check before any work: the probes asked for by name are possible with its inputs."""
    if spec.probes.names:
        prepare(spec.probes, inputs.lm.tokenizer, inputs.forget, reference=inputs.reference,
                retain_members=inputs.retain_members)


@dataclass
class ProbeStage:
    """The run recipe's probes: the summary for the run record and their sections for the run's report.html
    (probes.html beside it holds the same sections alone)."""

    record: ProbesRecord
    sections: list


def run_stage(spec, inputs, res, result, folder: str | Path) -> ProbeStage | None:
    """The run recipe's probes of the unlearned model (``spec.probes``), with the run's oracle as the
    baseline: writes probes.json, probes.parquet, the plots and probes.html into ``folder`` and returns the
    summary for the run record with the report sections (None when no probe is asked for)."""
    from unmemorize.probes.report import report_sections
    from unmemorize.report.html import Section

    s = spec.probes
    if not s.names:
        return None
    if result.method.decoding:
        why = ("probes not run: DPD changes decoding, not weights (the unlearned weights are the "
               "original ones)")
        return ProbeStage(ProbesRecord(settings=s.model_dump(mode="json"), oracle=False, original=False,
                                       sequences=len(inputs.forget), notes=[why]),
                          [Section("Robustness probes: does it come back?", why)])
    oracle = inputs.oracle.model if inputs.oracle is not None else None
    # runs that share the recipe's resources (a grid, a benchmark's methods on one lab) probe their oracle once
    cache = res.memo(("probe-oracle", spec.oracle, spec.model.dtype, spec.model.device), dict) if oracle is not None else None
    results = run_probes(result.model, inputs.lm.tokenizer, inputs.forget, settings=s, oracle=oracle,
                         reference=inputs.reference, retain_members=inputs.retain_members,
                         band=getattr(inputs, "band", None) or spec.band, oracle_cache=cache,
                         progress=res.progress, log=res.log)
    images = write_results(results, folder)
    sections = report_sections(results, images)  # probes.html and the run's report.html show the same
    write_report(results, Path(folder) / "probes.html", images, f"Robustness probes: {result.method.title}",
                 subtitle=f"model {inputs.lm.name} · forget {inputs.forget.source}"
                          + (f" · oracle {spec.oracle}" if oracle is not None else ""), sections=sections)
    return ProbeStage(results.record, sections)
