"""Run the registered attacks on a model: check the inputs, score every sequence, evaluate, write.

One loop over the registry; every attack's scores go through :func:`scoring.evaluate`. Inputs are
checked before any model pass, so bad input fails fast and leaves nothing behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from unmemorize.attacks.perturb import LM_PERTURBERS, Masking, NeighbourCache, Perturber, make_perturber
from unmemorize.attacks.plan import resolve as resolve_plan
from unmemorize.attacks.registry import ATTACKS, MEMBERS, NONMEMBERS, PARTS, AttackContext, AttackOptions
from unmemorize.attacks.scoring import DEFAULT_FPRS, Evaluation, check_fprs, evaluate, resolvable_fprs
from unmemorize.data import SequenceSet
from unmemorize.errors import UserError
from unmemorize.models import check_context
from unmemorize.runs import to_jsonable, write_frame, write_json


@dataclass
class AttackResult:
    name: str
    title: str
    source: str
    evaluation: Evaluation
    calibration: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"title": self.title, "source": self.source, **self.evaluation.as_dict(),
                "calibration": self.calibration, "summary": self.summary}


@dataclass
class AttackResults:
    """Everything one attack run found: per-attack evaluations and one row of scores per sequence."""

    attacks: dict[str, AttackResult]
    scores: pd.DataFrame  # columns: set, id, member, <attack> (score), <attack>.<extra>
    fprs: tuple[float, ...]
    options: AttackOptions
    inputs: dict
    notes: list[str] = field(default_factory=list)
    oracle: OracleComparison | None = None  # the same attacks on the retrain oracle, when one was given

    def as_dict(self) -> dict:
        return to_jsonable({"inputs": self.inputs, "fprs": list(self.fprs), "options": self.options.as_dict(),
                            "notes": self.notes,
                            "attacks": {n: r.as_dict() for n, r in self.attacks.items()},
                            **({"oracle": self.oracle.as_dict()} if self.oracle is not None else {})})

    def table(self) -> pd.DataFrame:
        """One row per attack: AUC and TPR@FPR with their intervals, and the below-chance flag."""
        rows = []
        for name, r in self.attacks.items():
            ev = r.evaluation
            row = {"attack": name, "AUC": ev.auc.value, "AUC 95% CI": _ci(ev.auc)}
            for a in self.fprs:
                iv = ev.tpr.get(a)
                row[f"TPR@{100 * a:g}%FPR"] = iv.value if iv else math.nan
                row[f"TPR@{100 * a:g}% CI"] = _ci(iv) if iv else "n/a"
            row["flag"] = "BELOW CHANCE (over-unlearned: flip the score)" if ev.below_chance else ""
            rows.append(row)
        return pd.DataFrame(rows)


def _ci(iv) -> str:
    return "n/a" if iv is None or math.isnan(iv.low) else f"[{iv.low:.3f}, {iv.high:.3f}]"


@dataclass
class OracleComparison:
    """The same attacks on the retrain oracle (same members, non-members, neighbours and τ), and each
    attack's gap AUC − AUC_oracle with its paired bootstrap interval (docs/method.md §3.7): an attack
    reads "forgotten" when it cannot tell the model from a model that never saw the members, not
    when its AUC is 0.5 — a never-seen but predictable text is told apart from unseen prose too."""

    path: str
    results: AttackResults
    gaps: dict  # attack → (AUC, AUC oracle, oracle.Gap), from unmemorize.oracle.attack_gaps

    def verdicts(self) -> list[str]:
        from unmemorize.oracle import verdict_attack

        return [verdict_attack(n, auc, auc_o, g) for n, (auc, auc_o, g) in self.gaps.items()]

    def table(self) -> pd.DataFrame:
        from unmemorize.stats import membership_score

        return pd.DataFrame([{"attack": n, "AUC": auc, "AUC oracle": auc_o, "gap": g.value,
                              "gap 95% CI": "n/a" if math.isnan(g.low) else f"[{g.low:+.3f}, {g.high:+.3f}]",
                              "membership score": float(membership_score(auc)),
                              "oracle membership score": float(membership_score(auc_o)),
                              "indistinguishable": "" if math.isnan(g.low) else ("yes" if g.includes_zero else "no")}
                             for n, (auc, auc_o, g) in self.gaps.items()])

    def as_dict(self) -> dict:
        return {"path": self.path, "verdicts": self.verdicts(),
                "attacks": {n: {"auc": auc, "oracle_auc": auc_o, "gap": g.as_dict(),
                                "indistinguishable": None if math.isnan(g.low) else g.includes_zero}
                            for n, (auc, auc_o, g) in self.gaps.items()}}


# ---------------------------------------------------------------- input checks


def select_attacks(requested: tuple[str, ...] | None, has_original: bool) -> tuple[tuple[str, ...], list[str]]:
    """The attacks to run, in registry order, and notes on the ones left out."""
    notes = []
    if requested is None:
        names = [n for n, a in ATTACKS.items() if has_original or not a.needs_original]
        skipped = [n for n in ATTACKS if n not in names]
        if skipped:
            notes.append(f"not run: {', '.join(skipped)} (needs the original model: pass --original)")
        return tuple(names), notes
    unknown = [n for n in requested if n not in ATTACKS]
    if unknown or not requested:
        raise UserError(f"unknown attack {', '.join(unknown) or '(none given)'}; choose from {', '.join(ATTACKS)}")
    needs = [n for n in requested if ATTACKS[n].needs_original and not has_original]
    if needs:
        raise UserError(f"attack {', '.join(needs)} compares with the original (pre-unlearning) model: "
                        "pass --original MODEL, or leave it out of --attacks")
    return tuple(n for n in ATTACKS if n in requested), notes


def same_tokenizer(a, b) -> bool:
    """Same vocabulary (token ↔ id) and the same special tokens: ids mean the same text in both."""
    return (a.get_vocab() == b.get_vocab()
            and (a.eos_token_id, a.bos_token_id) == (b.eos_token_id, b.bos_token_id))


def check_inputs(model, forget: SequenceSet, reference: SequenceSet, options: AttackOptions,
                 names: tuple[str, ...], tokenizer=None, original=None, original_tokenizer=None) -> tuple[float, ...]:
    """Raise a :class:`UserError` for anything that would make the attack meaningless; return the FPRs."""
    for role, seqs in (("forget (member) set", forget), ("reference (non-member) set", reference)):
        if len(seqs) == 0:
            raise UserError(f"the {role} {seqs.source} is empty: membership attacks need members and non-members")
    check_context(model, max(forget.length, reference.length))
    if original is not None:
        check_context(original, max(forget.length, reference.length))
    vocab = model.get_input_embeddings().num_embeddings
    for role, seqs in (("forget", forget), ("reference", reference)):
        top = int(seqs.input_ids.max())
        if top >= vocab:
            raise UserError(f"the {role} set {seqs.source} holds token id {top}, beyond the model's vocabulary "
                            f"of {vocab}: it was tokenized with another tokenizer")
    if original is not None:
        if original_tokenizer is not None and tokenizer is not None and not same_tokenizer(tokenizer, original_tokenizer):
            raise UserError("the model and the original (reference) model use different tokenizers "
                            f"({len(tokenizer)} vs {len(original_tokenizer)} tokens, or different ids): their "
                            "likelihoods of the same token ids are not comparable")
        original_vocab = original.get_input_embeddings().num_embeddings
        top = int(max(forget.input_ids.max(), reference.input_ids.max()))
        if top >= original_vocab:
            raise UserError(f"the sequences hold token id {top}, beyond the original model's vocabulary of "
                            f"{original_vocab}: the two models use different tokenizers")
    if options.fprs is not None:
        check_fprs(tuple(options.fprs), len(reference))
        return tuple(options.fprs)
    return DEFAULT_FPRS


# ---------------------------------------------------------------- the run


def build_perturber(options: AttackOptions, lm, lm_tokenizer, lm_fingerprint: str | None = None,
                    device: str | None = None) -> Perturber:
    """The perturber named in ``options``; ``lm`` refills spans for the offline default."""
    return make_perturber(options.perturber, Masking(options.mask_fraction, options.span_words),
                          lm=lm, lm_tokenizer=lm_tokenizer, lm_fingerprint=lm_fingerprint,
                          top_k=options.refill_top_k, temperature=options.refill_temperature,
                          t5_path=options.t5_path, device=device)


def neighbour_cache(options: AttackOptions) -> NeighbourCache:
    from unmemorize.models import cache_dir

    root = options.neighbour_cache
    if root is True:
        return NeighbourCache(cache_dir() / "neighbours")
    return NeighbourCache(None if root in (False, None) else Path(root))


def run_attacks(model, tokenizer, forget: SequenceSet, reference: SequenceSet, *, original=None,
                original_tokenizer=None, options: AttackOptions | None = None, perturber: Perturber | None = None,
                progress=None, log=None, stats: dict | None = None) -> AttackResults:
    """Run the attacks in ``options.attacks`` (default: all the inputs allow) on ``model``.

    Members are ``forget``, non-members ``reference`` (same form, never trained on). ``original`` is the
    pre-unlearning model for the reference attack (its tokenizer must match; pass ``original_tokenizer``
    to have that checked). MIAU's neighbours come from ``perturber``, else from the one named in the
    options, refilling with ``original`` (else ``model``) so that the original and the unlearned model
    are compared on the same neighbours. ``log`` gets the attack plan's line (K, sets, expected cost)
    before any attack runs. ``stats`` maps a part (:data:`MEMBERS`, :data:`NONMEMBERS`) to (ids, token
    statistics) that ``model`` already computed with the same top_k and temperature on a superset of its
    sequences: those rows are not passed again.
    """
    opts = options or AttackOptions()
    names, notes = select_attacks(opts.names, original is not None)
    if "miau" in names and perturber is None:
        lm = original if original is not None else model
        perturber = build_perturber(opts, lm, original_tokenizer or tokenizer, device=None)
    # K and the non-members: "auto" resolved by the attack plan (attacks/plan.py), never None past here; the
    # refill priced is the one built (auto may have fallen back to lm)
    opts, reference, plan = resolve_plan(opts, model, forget, reference, original=original,
                                         perturber=perturber.name if "miau" in names and perturber else None)
    fprs = check_inputs(model, forget, reference, opts, names, tokenizer, original, original_tokenizer)
    if opts.fprs is None:
        fprs, dropped = resolvable_fprs(fprs, len(reference))
        if dropped:
            notes.append(f"TPR at {', '.join(f'{100 * a:g}%' for a in dropped)} FPR not reported: the reference set "
                         f"has {len(reference)} sequences (needs ≥ {math.ceil(1 / min(dropped))})")
    if "miau" in names or plan.capped:
        notes.append(plan.describe())
        if log is not None:
            log(plan.describe())
    ctx = AttackContext(model=model, tokenizer=tokenizer, sets={MEMBERS: forget, NONMEMBERS: reference},
                        options=opts, original=original, perturber=perturber,
                        neighbour_cache=neighbour_cache(opts) if "miau" in names else None, progress=progress,
                        plan=plan, given_stats=_given_stats(stats, {MEMBERS: forget, NONMEMBERS: reference}))
    results: dict[str, AttackResult] = {}
    columns: dict[str, list[pd.DataFrame]] = {p: [] for p in PARTS}
    for name in names:
        a = ATTACKS[name]
        calibration = ctx.setup(name)
        frames = {part: a.score(ctx, part).reset_index(drop=True) for part in PARTS}
        summary = a.summarize(ctx, frames) if a.summarize else {}
        ev = evaluate(frames[MEMBERS]["score"], frames[NONMEMBERS]["score"], fprs, opts.bootstrap,
                      opts.confidence, opts.seed)
        results[name] = AttackResult(name, a.title, a.source, ev, calibration, summary)
        for part in PARTS:
            columns[part].append(frames[part].rename(
                columns={c: name if c == "score" else f"{name}.{c}" for c in frames[part].columns}))
    scores = pd.concat([
        pd.concat([pd.DataFrame({"set": part, "id": ctx.sets[part].ids, "member": part == MEMBERS}), *columns[part]],
                  axis=1)
        for part in PARTS], ignore_index=True)
    inputs = {part: ctx.sets[part].describe() for part in PARTS}
    return AttackResults(results, scores, tuple(fprs), opts, inputs, notes)


def _given_stats(stats: dict | None, sets: dict[str, SequenceSet]) -> dict:
    """The rows of ``stats`` (part → (ids, TokenStats)) that the attacked sets hold, by id: the plan may have
    sampled the non-members after the caller's pass. An id without statistics is a caller's bug."""
    out = {}
    for part, (ids, found) in (stats or {}).items():
        row = {sid: i for i, sid in enumerate(ids)}
        missing = [sid for sid in sets[part].ids if sid not in row]
        if missing or len(ids) != len(found):
            raise ValueError(f"token statistics given for {part!r} do not cover its sequences "
                             f"({len(missing)} of {len(sets[part])} missing, {len(found)} rows for {len(ids)} ids)")
        out[part] = found.subset([row[sid] for sid in sets[part].ids])
    return out


def write_results(results: AttackResults, folder: str | Path, prefix: str = "") -> dict[str, Path]:
    """Write ``{prefix}attacks.json``, ``{prefix}attack_scores.parquet`` (+ .csv) and ``{prefix}roc.png``."""
    from unmemorize.attacks.report import roc_plot

    folder = Path(folder)
    paths = {"json": folder / f"{prefix}attacks.json", "scores": folder / f"{prefix}attack_scores.parquet",
             "roc": folder / f"{prefix}roc.png"}
    write_json(paths["json"], results.as_dict())
    write_frame(paths["scores"].with_suffix(""), results.scores)
    roc_plot(paths["roc"], results)
    return paths


def attack_sets(model, members: SequenceSet, nonmembers: SequenceSet, opts: AttackOptions, names: tuple[str, ...],
                seed: int, fix_tau: bool = False, progress=None):
    """(members, non-members, options, notes, stats) as the attacks compare them: non-members matched to the
    members by kind of text under ``opts.match_by`` (:mod:`~unmemorize.attacks.matching`), as ``unlearn``
    matches them. τ of the threshold attack stays the model's mean g on the whole reference set, computed
    here before matching (or with ``fix_tau``, so that a second model is attacked under the same τ). That
    pass's token statistics come back in ``stats`` (for :func:`run_attacks` on ``model``), so no non-member
    is passed twice."""
    from unmemorize.attacks.matching import matched_sets

    kept, matched, note = matched_sets(members, nonmembers, opts.match_by, seed)
    notes = [note] if note else []
    stats = {}
    if note and opts.fprs is not None:
        cut = note if len(matched) < len(nonmembers) else None  # the matching, not the file, left too few
        check_fprs(tuple(opts.fprs), len(matched), cut)  # before any pass, not at the end of one
    if opts.tau is None and "threshold" in names and (note or fix_tau):
        from unmemorize.attacks.tokens import attack_statistics
        from unmemorize.thresholds import acceptable_level

        check_context(model, nonmembers.length)
        found = attack_statistics(model, nonmembers, opts, progress, "τ on the reference set")
        opts = opts.replace(tau=float(acceptable_level(found.ma)),
                            tau_source=f"mean g on all {len(nonmembers)} reference sequences"
                                       + (", before matching" if note else ""))
        stats[NONMEMBERS] = (nonmembers.ids, found)
    return kept, matched, opts, notes, stats


def attack_run(spec, out: str | Path, *, overwrite: bool = False, progress=None, log=print):
    """``unmemorize attack``'s work: load the models named in ``spec`` (an :class:`~unmemorize.spec.
    AttackRunSpec`), run the attacks and write the run folder ``out`` (attacks.json, per-sequence
    scores, ROC, report.html, manifest.json). With ``spec.oracle`` the same attacks run on the retrain
    oracle too (oracle_attacks.json, …) and attacks.json holds each attack's gap to it. MIAU's
    neighbours are refilled by ``attacks.refill_model``, else the oracle (it never saw the members),
    else the original, else the attacked model. Returns (results, folder)."""
    from unmemorize import distributed
    from unmemorize.attacks.report import report_sections
    from unmemorize.data import load_sequences
    from unmemorize.oracle import attack_gaps
    from unmemorize.report.html import write_report
    from unmemorize.runs import RunDir, build_manifest, write_json

    opts = spec.attack_options()
    names, _ = select_attacks(opts.names, spec.original is not None)  # before any model is loaded
    # under accelerate launch every rank scores its shard of the sequences; rank 0 writes `out`
    with RunDir(distributed.output_dir(out), overwrite=overwrite) as run:
        source = spec.model
        target = source.load(log=log)
        orig = source.replace(path=spec.original).load(log=log) if spec.original else None
        oracle = None
        if spec.oracle:
            from unmemorize.recipe import check_oracle

            oracle = source.replace(path=spec.oracle).load(log=log)
            check_oracle(target, oracle)
        members = load_sequences(spec.forget, target.tokenizer, spec.length)
        nonmembers = load_sequences(spec.reference, target.tokenizer, spec.length)
        check_inputs(target.model, members, nonmembers, opts, names, target.tokenizer, orig.model if orig else None,
                     orig.tokenizer if orig else None)  # before the first pass; run_attacks checks the matched sets
        members, nonmembers, opts, notes, stats = attack_sets(target.model, members, nonmembers, opts, names,
                                                              spec.seed, fix_tau=oracle is not None, progress=progress)
        pert = refill = None
        if "miau" in names:
            refill = (source.replace(path=opts.refill_model).load(log=log) if opts.refill_model
                      else oracle or orig or target)
            pert = build_perturber(opts, refill.model, refill.tokenizer, refill.fingerprint, source.device)
        attack = lambda lm, **kw: run_attacks(  # noqa: E731  (one perturber: both models see the same neighbours)
            lm.model, lm.tokenizer, members, nonmembers, original=orig.model if orig else None,
            original_tokenizer=orig.tokenizer if orig else None, options=opts, perturber=pert, progress=progress,
            **kw)
        results = attack(target, log=log, stats=stats)  # the τ pass's statistics are the target's
        results.notes[:0] = notes
        if oracle is not None:
            log(f"the same attacks on the retrain oracle ({oracle.name})")  # the plan line was printed once, above
            found = attack(oracle)
            results.oracle = OracleComparison(str(spec.oracle), found,
                                              attack_gaps(results.scores, found.scores, opts.bootstrap, opts.seed))
            write_results(found, run.tmp, prefix="oracle_")
        paths = write_results(results, run.tmp)
        write_report(run.path("report.html"), f"Privacy attacks on {target.name}", report_sections(results, paths["roc"]),
                     subtitle=f"forget {spec.forget} · reference {spec.reference}"
                              + (f" · original {orig.name}" if orig else "")
                              + (f" · oracle {oracle.name}" if oracle else ""))
        write_json(run.path("manifest.json"), build_manifest(
            "attack", results.as_dict()["options"], {"forget": members.describe(), "reference": nonmembers.describe()},
            device=source.device, model=target.describe(), original=orig.describe() if orig else None,
            oracle=oracle.describe() if oracle else None, perturber=pert.config() if pert else None,
            refill_model=refill.describe() if pert is not None and opts.perturber in LM_PERTURBERS else None))
        return results, run.commit()
