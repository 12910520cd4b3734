"""Privacy attacks: can an attacker tell the forget set from unseen text? (docs/method.md §3)

Every attack gives each sequence a score, higher = "member"; members are the forget set,
non-members an unseen reference set of the same form. Registered attacks:

========== =====================================================================================
miau       neighbourhood gap |ℓ(x) − mean ℓ(neighbours)|, K neighbours by span masking + refill
threshold  |g(x) − τ| on the memorization score g = MA; its band flags on D_f are c(D_f)
loss       mean token log-likelihood (Yeom et al. 2018)
zlib       mean log-likelihood / zlib bytes (Carlini et al. 2021)
min-k      mean of the k% lowest token log-probabilities (Shi et al. 2024)
min-k++    the same over (ℓ_t − μ_t)/σ_t (Zhang et al. 2024)
reference  |ℓ_θ(x) − ℓ_original(x)| against the pre-unlearning model (needs the original)
sampling   how often N top-k samples from the 100-token prefix reproduce the true suffix
========== =====================================================================================

Library entry point (what ``unmemorize attack`` and ``unmemorize unlearn`` call)::

    from unmemorize.attacks import AttackOptions, run_attacks, write_results, report_sections

    results = run_attacks(model, tokenizer, forget, reference,            # SequenceSets
                          original=original_model, original_tokenizer=original_tok,
                          options=AttackOptions(attacks=None, neighbours=25))
    results.table()                     # AUC, TPR@1%/0.1% FPR with 95% bootstrap CIs, below-chance flag
    results.scores                      # one row per sequence: set, id, member, <attack>, <attack>.<extra>
    paths = write_results(results, run_dir, prefix="after_")   # attacks.json, attack_scores.parquet, roc.png
    sections = report_sections(results, paths["roc"])          # for unmemorize.report.html.write_report
    comparison_table({"original": before, "unlearned": after}) # AUC side by side

Run it on the original model (``original=None``) and on the unlearned one (``original=`` the original)
with the same options: MIAU then refills neighbours with the original model both times, so both runs
read the same cached neighbours. Bad input (an empty set, too few non-members for an FPR asked for,
tokenizers that differ, K = 0) raises :class:`unmemorize.errors.UserError` before any model pass.
New attacks register with ``@attack(name, title=…, source=…)`` in :mod:`.registry`.
"""

# Importing the attack modules fills the registry, in this (display) order.
from unmemorize.attacks import miau, threshold, mia, extraction  # noqa: F401, I001
from unmemorize.attacks.perturb import PERTURBERS, Masking, NeighbourCache, Perturber, make_perturber
from unmemorize.attacks.registry import ATTACKS, AttackContext, AttackOptions, attack
from unmemorize.attacks.report import comparison_table, report_sections, roc_plot
from unmemorize.attacks.run import AttackResult, AttackResults, build_perturber, run_attacks, write_results
from unmemorize.attacks.scoring import Evaluation, evaluate

__all__ = [
    "ATTACKS", "PERTURBERS", "AttackContext", "AttackOptions", "AttackResult", "AttackResults", "Evaluation",
    "Masking", "NeighbourCache", "Perturber", "attack", "build_perturber", "comparison_table", "evaluate",
    "make_perturber", "report_sections", "roc_plot", "run_attacks", "write_results",
]
