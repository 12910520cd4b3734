"""Unlearning memorized sequences: GA, SGA, TA, TAU, NPO, GA+Mismatch and DPD, over one loop.

Library entry point (what ``unmemorize unlearn`` calls; attack and experiment code call it directly)::

    from unmemorize.unlearning import unlearn, UnlearnOptions
    from unmemorize.thresholds import Band, acceptable_level

    tau = acceptable_level(profile(model, unseen, ProfileOptions(metrics=("ma",)))["ma"])
    result = unlearn(model, tokenizer, forget, tau=tau, method="sga", stop="per-sequence",
                     band=Band(0.15, 0.60), options=UnlearnOptions(max_steps=150, seed=42))
    result.model            # the unlearned copy (the model passed in is untouched; copy=False trains it in place)
    result.trajectory       # one row per sequence per step: step, id, ma, loss, selected, phase
    result.before, result.after, result.summary()   # per-sequence MA/loss frames; c_low, c_high, distance to τ
    result.stop_reason, result.steps, result.seconds

Modules: :mod:`.loop` (the loop, stop rules, NaN roll-back, checkpoints), :mod:`.methods` (the
registry: a method is phases of objective + selector), :mod:`.losses` (pure loss functions),
:mod:`.selectors`, :mod:`.task_vectors` (θ_b + c·(θ_ft − θ_b)), :mod:`.retain` (normal data for the
baselines), :mod:`.report` (plots and report sections); DPD's logits processor is in
:mod:`unmemorize.decoding`.
"""

from unmemorize.unlearning.loop import STOP_RULES, StepInfo, UnlearningResult, UnlearnOptions, unlearn
from unmemorize.unlearning.methods import METHODS, Method, Phase, resolve_method
from unmemorize.unlearning.retain import RetainData, load_retain
from unmemorize.unlearning.selectors import parse_selector

__all__ = ["unlearn", "UnlearnOptions", "UnlearningResult", "StepInfo", "STOP_RULES", "METHODS", "Method", "Phase",
           "resolve_method", "parse_selector", "RetainData", "load_retain"]
