"""The HTML report of one unlearning run: the forget set before and after, the attacks on the original
and the unlearned model side by side, the verdicts against the oracle, the robustness probes, and utility
before and after."""

from __future__ import annotations

from pathlib import Path

from unmemorize.report.html import Section, write_report


def write_run_report(path: str | Path, record, result, images: dict[str, Path], attacks_before, attacks_after,
                     attack_paths: dict[str, dict], utility_before: dict | None, utility_after: dict | None,
                     probe_sections: list[Section] = (), subtitle: str = "") -> Path:
    from unmemorize.attacks import comparison_table, report_sections
    from unmemorize.unlearning.report import sections
    from unmemorize.utility import utility_sections

    ref = None
    if record.reference_ma_before is not None:
        ref = (record.reference_ma_before, record.reference_ma_after)
    out = sections(result, {k: v for k, v in images.items() if k != "oracle"}, ref)
    both = {label: r for label, r in (("original", attacks_before), ("unlearned", attacks_after)) if r is not None}
    if len(both) == 2:
        out.append(Section("Can an attacker tell? Original against unlearned",
                           "The same attacks and the same MIAU neighbours on the model before and after unlearning "
                           "(members = the forget set, non-members = the reference set).",
                           tables=[("AUC and TPR side by side", comparison_table(both))]))
    if attacks_after is not None:
        out += report_sections(attacks_after, attack_paths[""]["roc"], heading="Privacy attacks on the unlearned model")
    elif attacks_before is not None:
        out += report_sections(attacks_before, attack_paths["before_"]["roc"],
                               heading="Privacy attacks on the original model")
    if record.attacks.notes and not both:
        out.append(Section("Privacy attacks", "\n\n".join(record.attacks.notes)))
    if record.oracle is not None:
        out.append(oracle_section(record, images.get("oracle")))
    out += list(probe_sections)  # does it come back? (the same sections as probes.html beside)
    if utility_after is not None:
        out += utility_sections(utility_after, utility_before)
    if record.notes:
        out.append(Section("Notes", "\n\n".join(record.notes)))
    return write_report(path, f"Unlearning: {result.method.title}", out, subtitle=subtitle)


def oracle_section(record, scatter: Path | None) -> Section:
    """The verdicts against the retrain oracle, one line per criterion, and a table per attack."""
    import pandas as pd

    o = record.oracle
    rows = [{"attack": n, "AUC": a.auc, "AUC oracle": a.oracle_auc, "gap": a.gap.value, "gap low": a.gap.low,
             "gap high": a.gap.high, "membership score": a.membership_score,
             "oracle membership score": a.oracle_membership_score,
             "indistinguishable": "" if a.indistinguishable is None else ("yes" if a.indistinguishable else "no")}
            for n, a in o.attacks.items()]
    text = ("The retrain oracle is the model planted the same way without the forget set: where each sequence would "
            "be had the model never seen it. Every criterion is the unlearned model's gap to it, with a 95% interval "
            f"(oracle: {o.path}).\n\n" + "\n\n".join(o.verdicts))
    sec = Section("Judged against the retrain oracle", text, tables=[("each attack on the unlearned model and on the "
                                                                       "oracle (same members, non-members, neighbours)",
                                                                       pd.DataFrame(rows))] if rows else [])
    if scatter is not None:
        sec.images.append(("each forget sequence's MA against the oracle's, before and after", scatter))
    return sec
