"""The memorization audit as a library call: profile a forget set against unseen reference text.

``audit`` is what the `unmemorize audit` command, the demo and later recipes share: measure every
forget sequence (MA, EL_n, exact extraction, loss), calibrate τ on the reference set (globally or per
group), give each sequence its verdict, and summarize with c(D_f) and the distance to τ.

EL_n costs a greedy decoding from every prefix where the model disagrees with the text (tens of
seconds per weakly memorized 200-token sequence on a CPU), so by default it is measured where it can
matter: for the sequences with MA at or above the band's top, those that could be extractable, on the
forget set and on the reference alike (``ProfileOptions.el_for = "all"``: every sequence). The others
have NaN, with the reason in ``el_status``; τ_EL is then the mean over the reference sequences that
were measured, and the summary says over which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from pathlib import Path

from pydantic import model_validator

from unmemorize.data import SequenceSet
from unmemorize.errors import UserError
from unmemorize.memorization import ProfileOptions, profile
from unmemorize.models import ModelSource
from unmemorize.options import Options, option
from unmemorize.thresholds import (Band, Summary, acceptable_level, acceptable_level_by_group, group_key, summarize,
                                   verdict)


class AuditSpec(Options):
    """One audit (``unmemorize audit``): which sequences does a model memorize, against unseen text?"""

    model: ModelSource = option(ModelSource(), "The model to audit (only read).")
    forget: Path = option(..., "Sequences to audit: Jang CSV, JSONL, text file or folder.", "--forget", "-f")
    reference: Path | None = option(None, "Unseen text of the same form, for τ.", "--reference", "-r")
    length: int = option(200, "Tokens per sequence T (the paper: 200).", ge=2)
    tau: float | None = option(None, "Use this τ instead of the reference's mean MA.", ge=0.0, le=1.0)
    tau_by: str | None = option(None, "Column shared by both sets (e.g. corpus): τ per group.")
    band: Band = option(Band("tau-0.15", "tau+0.3"), "The acceptable band of g(x) (relative to τ by default: the "
                                                     "paper's 0.15 / 0.60 at τ = 0.3).")
    profile: ProfileOptions = option(ProfileOptions(metrics=("ma", "el", "extraction")), "What to measure.")

    @model_validator(mode="after")
    def _tau_known(self):
        if self.reference is None and self.tau is None:
            raise ValueError("give --reference FILE (unseen text of the same form) or --tau VALUE")
        return self


@dataclass
class AuditResult:
    forget: pd.DataFrame  # one row per forget sequence: metrics, tau, verdict
    reference: pd.DataFrame  # one row per reference sequence
    summary: Summary
    tau: float  # global τ (mean MA of the reference)
    tau_by_group: dict[str, float] = field(default_factory=dict)
    tau_el: float | None = None  # mean EL_n over the reference sequences where it was measured (el_status)
    warnings: list[str] = field(default_factory=list)
    options: ProfileOptions = field(default_factory=ProfileOptions)
    band: Band = field(default_factory=Band)


def _short_warnings(seqs: SequenceSet, opts: ProfileOptions, what: str) -> list[str]:
    out = []
    lengths = seqs.lengths.tolist()
    if "ma" in opts.metrics:
        bad = [i for i, n in zip(seqs.ids, lengths) if n < 2]
        if bad:
            out.append(f"{what}: {len(bad)} sequence(s) under 2 tokens, no MA: {', '.join(bad[:5])}")
    if "el" in opts.metrics:
        bad = [i for i, n in zip(seqs.ids, lengths) if n < opts.el_n + 1]
        if bad:
            out.append(f"{what}: {len(bad)} sequence(s) under {opts.el_n + 1} tokens, no EL_{opts.el_n}: "
                       f"{', '.join(bad[:5])}")
    return out


def _tau_first(model, reference, opts: ProfileOptions, tau, reference_profile, progress) -> float:
    """τ before anything else (a band relative to τ needs it before the EL decode): given, from a
    reference profile passed in, or one teacher-forced MA pass over the reference (the EL decode the
    band then limits costs far more)."""
    if tau is not None:
        return float(tau)
    if reference_profile is not None and "ma" in reference_profile:
        return acceptable_level(reference_profile["ma"])
    return acceptable_level(profile(model, reference, opts.replace(metrics=("ma",)), progress)["ma"])


def audit(model, forget: SequenceSet, reference: SequenceSet | None, opts: ProfileOptions,
          band: Band = Band(), tau: float | None = None, tau_by: str | None = None,
          progress=None, reference_metrics: tuple[str, ...] | None = None,
          reference_profile: pd.DataFrame | None = None) -> AuditResult:
    """Profile ``forget``; τ from ``reference`` (mean MA) unless ``tau`` is given.

    The reference gets MA, loss and (when asked for the forget set) EL_n, for τ and τ_EL;
    ``reference_metrics`` asks for more (the demo adds extraction to show non-members stay unextracted).
    ``reference_profile``: the reference already profiled on this model (``AuditResult.reference`` of
    an earlier audit), so that several forget sets are held against one reference at the cost of one.
    """
    if reference is None and tau is None:
        raise UserError("give a reference set of unseen text (--reference) or a τ value (--tau)")
    metrics = tuple(dict.fromkeys(("ma", "loss", *opts.metrics)))  # MA is the paper's g(x): always
    opts = opts.replace(metrics=metrics)
    if band.relative and "el" in metrics and opts.el_for != "all":  # EL is decoded only at the band's top: τ first
        band = band.at(_tau_first(model, reference, opts, tau, reference_profile, progress))
    warnings = _short_warnings(forget, opts, "forget set")
    prof = profile(model, forget, opts, progress, band)
    if prof["ma"].isna().all():
        raise UserError(f"{forget.source}: no sequence can be measured (all are shorter than 2 tokens)")
    ref_prof = pd.DataFrame()
    tau_el = None
    if reference is not None:
        ref_metrics = reference_metrics or tuple(m for m in metrics if m in ("ma", "loss", "el"))
        ref_metrics = tuple(dict.fromkeys(("ma", *ref_metrics)))
        ref_opts = opts.replace(metrics=ref_metrics)
        warnings += _short_warnings(reference, ref_opts, "reference set")
        if reference_profile is not None:
            if list(reference_profile["id"]) != list(reference.ids) or "ma" not in reference_profile:
                raise ValueError("reference_profile is not a profile (with MA) of this reference set")
            ref_prof = reference_profile
        else:
            ref_prof = profile(model, reference, ref_opts, progress, band)
        global_tau = acceptable_level(ref_prof["ma"])
        el_col = f"el_{opts.el_n}"
        if el_col in ref_prof and ref_prof[el_col].notna().any():
            tau_el = float(ref_prof[el_col].mean())
    else:
        global_tau = float(tau)
    if tau is not None:
        global_tau = float(tau)
    band = band.at(global_tau)  # a band relative to τ, in numbers (at the global τ under --tau-by)
    by_group: dict[str, float] = {}
    prof["tau"] = global_tau
    prof["tau_source"] = "reference" if tau is None else "given"
    if tau_by:
        if reference is None:
            raise UserError("--tau-by needs a reference set")
        if tau_by not in prof.columns:
            raise UserError(f"--tau-by {tau_by}: the forget set has no column {tau_by!r}")
        by_group = acceptable_level_by_group(ref_prof, tau_by)
        by_key = {group_key(label): label for label in by_group}  # "pile-cc" finds the reference's "Pile-CC"
        groups = prof[tau_by].astype(str)
        matched = [by_key.get(group_key(g)) for g in groups]
        prof["tau"] = [global_tau if m is None else by_group[m] for m in matched]
        prof["tau_source"] = ["reference (no such group in reference)" if m is None else f"{tau_by}={m}"
                              for m in matched]
        missing = sorted({g for g, m in zip(groups, matched) if m is None})
        if missing:
            warnings.append(f"--tau-by {tau_by}: no reference text for {', '.join(missing)}; "
                            f"those sequences are held against the global τ = {global_tau:.3f}")
    prof["verdict"] = [verdict(g, band) for g in prof["ma"]]
    summary = summarize(prof["ma"].to_numpy(), prof["tau"].to_numpy(), band)
    return AuditResult(prof, ref_prof, summary, global_tau, by_group, tau_el, warnings, opts, band)


def profile_table(result: AuditResult, tokenizer=None) -> pd.DataFrame:
    """The per-sequence table for files: decoded continuations instead of token lists."""
    df = result.forget.copy()
    if "extraction_tokens" in df.columns:
        if tokenizer is not None:
            df["extraction_text"] = [tokenizer.decode(t) for t in df["extraction_tokens"]]
        df = df.drop(columns=["extraction_tokens"])
    return df


def el_row(result: AuditResult) -> tuple[str, str]:
    """The summary's EL line: mean EL_n of the forget set and τ_EL, and over which sequences each is taken."""
    n, el_col = result.options.el_n, f"el_{result.options.el_n}"
    forget = result.forget[el_col]
    scope = "" if result.options.el_for == "all" else f", MA ≥ {result.band.hi:.2f} only"
    measured = int(forget.notna().sum())
    if measured:
        value = f"{forget.mean():.3f} (n = {measured})"
    else:
        value = "— (no sequence at MA ≥ {:.2f})".format(result.band.hi) if scope else "— (no sequence long enough)"
    if result.tau_el is not None:
        ref = result.reference[el_col] if el_col in result.reference else forget.iloc[:0]
        value += f" ({result.tau_el:.3f}, n = {int(ref.notna().sum())})"
    elif len(result.reference) and el_col in result.reference:
        value += " (— on reference)"
    return f"mean EL_{n} (τ_EL on reference){scope}", value


def summary_rows(result: AuditResult) -> list[tuple[str, str]]:
    s = result.summary
    rows = [("sequences (measured)", f"{s.sequences} ({s.measured})"),
            ("mean g(x) = MA ± std", f"{s.mean:.3f} ± {s.std:.3f}"),
            ("τ (unseen reference)", f"{result.tau:.3f}"),
            ("acceptable band", f"[{s.lo:.2f}, {s.hi:.2f}]"),
            ("c_high (extractable, g ≥ hi)", str(s.c_high)),
            ("c_low (over-forgotten, g ≤ lo)", str(s.c_low)),
            ("c(D_f) = c_low + c_high", str(s.c)),
            ("distance to τ (MA points)", f"{s.distance_to_tau:.2f}")]
    el_col = f"el_{result.options.el_n}"
    if el_col in result.forget:
        rows.insert(3, el_row(result))
    if "extraction_exact" in result.forget:
        ex = result.forget["extraction_exact"]
        rows.append(("exact extraction (greedy suffix)", f"{int(ex.sum())} of {len(ex)}"))
    for g, t in sorted(result.tau_by_group.items()):
        rows.append((f"τ[{g}]", f"{t:.3f}"))
    return rows



def audit_run(spec: AuditSpec, out: str | Path, *, overwrite: bool = False, progress=None, log=print):
    """``unmemorize audit``'s work: load, measure, write the run folder ``out`` (profiles, summary,
    histogram, report.html, manifest.json). Returns (result, folder, description of τ's source)."""
    from unmemorize import distributed
    from unmemorize.data import load_sequences
    from unmemorize.report.audit import audit_sections, write_audit
    from unmemorize.report.html import write_report
    from unmemorize.runs import RunDir, build_manifest, write_json

    # the output folder is checked before any slow work; under a launch rank 0 writes `out`
    with RunDir(distributed.output_dir(out), overwrite) as run:
        lm = spec.model.load(log=log)
        forget_set = load_sequences(spec.forget, lm.tokenizer, spec.length)
        ref_set = load_sequences(spec.reference, lm.tokenizer, spec.length) if spec.reference is not None else None
        result = audit(lm.model, forget_set, ref_set, spec.profile, spec.band, spec.tau, spec.tau_by, progress)
        images = write_audit(run, result, lm.tokenizer, result.band)
        ref_desc = f"{ref_set.source} ({len(ref_set)} sequences)" if ref_set is not None else "a given value"
        options = {**spec.model_dump(mode="json", exclude={"model", "forget", "reference"}),
                   "padding": "counted (parity)" if spec.profile.parity else "masked"}
        write_json(run.path("manifest.json"), build_manifest(
            "audit", options, {"model": lm.describe(), "forget": forget_set.describe(),
                               "reference": ref_set.describe() if ref_set is not None else None},
            device=spec.model.device))
        write_report(run.path("report.html"), "unmemorize audit", audit_sections(result, lm.tokenizer, images, ref_desc),
                     subtitle=f"model {lm.name} · forget {forget_set.source} · reference {ref_desc}")
        return result, run.commit(), ref_desc
