"""One run of the grid: τ → unlearn → attacks → utility → a run folder, committed in one rename.

    forget set (split, optional seeded sample) ─┐
    τ: given, or mean MA on the reference ──────┼─► unlearning.unlearn (copy of the model; checkpointed)
                                                │        │
                                                │        ├─► attacks.run_attacks(unlearned, forget vs reference, original)
                                                │        └─► utility.evaluate_utility(unlearned) vs the original's
                                                ▼
    <out>/<model>__<forget>-<split>__<method>__<stop>__seed<n>__<key>/   (runs.RunDir: appears complete or not at all)
        summary.json          labels, settings, and the flat ``metrics`` row the report aggregates
        manifest.json         the same plus versions, inputs with their hashes
        profile_before/after  per-sequence MA and loss (.parquet + .csv)
        trajectory, steps     per sequence per step; per step
        attacks.json, attack_scores.parquet, roc.png      (when attacks are configured)
        utility_before/after.json (+ _examples.parquet)  (when utility tasks are configured)
        trajectory.png

What is the same for every run of a model — the loaded model, the reference set, τ and the original
model's utility — is computed once and shared through :class:`ModelContext`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unmemorize.errors import UserError
from unmemorize.experiments.config import ExperimentConfig, attack_options, forget_path, model_location, resolve_path
from unmemorize.experiments.grid import SUMMARY, RunSpec, input_files, resolved_settings

UTILITY_AGGREGATES = ("average_acc", "average_f1", "average_perplexity")


@dataclass
class ModelContext:
    """A loaded model and what every run on it shares (filled on first use)."""

    loaded: object  # models.LoadedModel
    reference: object | None = None  # data.SequenceSet
    reference_ma: float | None = None  # the original model's mean MA on the reference
    utility_before: dict | None = None
    memo: dict = field(default_factory=dict)


def load_context(cfg: ExperimentConfig, run: RunSpec, log=None) -> ModelContext:
    from unmemorize import distributed
    from unmemorize.models import load_model

    d = distributed.current()  # under accelerate launch each rank loads the model onto its own device
    device = cfg.device or (str(d.device) if d is not None else None)
    loaded = load_model(model_location(cfg, run.model), dtype=run.model.dtype, device=device,
                        log=log or (lambda m: None))
    return ModelContext(loaded)


def _reference(cfg: ExperimentConfig, ctx: ModelContext):
    from unmemorize.data import load_sequences

    if cfg.reference is None:
        return None
    if ctx.reference is None:
        ref = load_sequences(resolve_path(cfg, cfg.reference), ctx.loaded.tokenizer, cfg.length)
        if cfg.reference_limit is not None:
            ref = ref.subset(range(min(cfg.reference_limit, len(ref))))
        ctx.reference = ref
    return ctx.reference


def _tau(cfg: ExperimentConfig, run: RunSpec, ctx: ModelContext, progress) -> tuple[float, str]:
    """τ and where it came from: the model's entry, the config, or the original model on the reference."""
    from unmemorize.memorization import ProfileOptions, profile
    from unmemorize.thresholds import acceptable_level

    if run.model.tau is not None:
        return run.model.tau, "models[].tau"
    if cfg.tau is not None:
        return cfg.tau, "tau"
    if ctx.reference_ma is None:
        ref = _reference(cfg, ctx)
        prof = profile(ctx.loaded.model, ref, ProfileOptions(metrics=("ma",), batch_size=cfg.training.micro_batch,
                                                             parity=cfg.training.parity), progress)
        ctx.reference_ma = acceptable_level(prof["ma"])
    return ctx.reference_ma, f"mean MA of the original model on {len(ctx.reference)} reference sequences"


def load_forget(cfg: ExperimentConfig, run: RunSpec, tokenizer):
    """The run's forget set: the split's file, or a seeded sample of it (the paper's 16 of 128)."""
    from unmemorize.data import load_sequences

    seqs = load_sequences(forget_path(cfg, run.forget, run.split), tokenizer, cfg.length)
    if run.forget.sample is not None:
        if run.forget.sample > len(seqs):
            raise UserError(f"{cfg.source}: forget sample of {run.forget.sample} from {seqs.source}, which holds "
                            f"{len(seqs)} sequences")
        rng = np.random.default_rng(run.forget.sample_seed)
        seqs = seqs.subset(sorted(rng.choice(len(seqs), run.forget.sample, replace=False).tolist()))
    return seqs


def _utility(cfg: ExperimentConfig, model, tokenizer, progress) -> dict:
    from unmemorize.utility import evaluate_utility

    u = cfg.utility
    return evaluate_utility(model, tokenizer, list(u.tasks), resolve_path(cfg, u.data_dir), mode=u.mode,
                            limit=u.limit, progress=progress, max_length=u.max_length,
                            parity_batch_size=u.parity_batch_size)


def metrics_row(unlearning: dict, attacks: dict, utility_before: dict | None, utility_after: dict | None,
                fprs: tuple[float, ...]) -> dict:
    """The flat row the report aggregates (one per run). NaN where a part was not run.

    ``unlearning``: ``UnlearningResult.as_dict()``; ``attacks``: ``AttackResults.as_dict()["attacks"]``;
    utility: :func:`unmemorize.utility.evaluate_utility` results. Utility deltas are after − before.
    """
    before, after = unlearning["before"], unlearning["after"]
    row = {"mean_ma_before": before["mean"], "mean_ma": after["mean"], "std_ma": after["std"],
           "c_low": after["c_low"], "c_high": after["c_high"], "c": after["c"],
           "c_before": before["c"], "distance_to_tau": after["distance_to_tau"],
           "distance_to_tau_before": before["distance_to_tau"],
           "steps": unlearning["steps"], "seconds": unlearning["seconds"],
           "converged": float(bool(unlearning["converged"]))}
    for name, a in attacks.items():
        row[f"{name}_auc"] = _num(a["auc"]["value"])
        for fpr in fprs:
            got = a["tpr_at_fpr"].get(f"{fpr:g}")
            row[f"{name}_tpr@{100 * fpr:g}%"] = _num(got["value"]) if got else math.nan
    for agg in UTILITY_AGGREGATES:
        b = _agg(utility_before, agg)
        a = _agg(utility_after, agg)
        row[agg] = a
        row[f"{agg}_before"] = b
        row[f"{agg}_delta"] = a - b
    # every task's own metrics too: tasks outside the paper's aggregates (e.g. the offline lab tasks)
    # would otherwise leave no trace in the table
    for name, t in ((utility_after or {}).get("tasks") or {}).items():
        for metric, a in t["metrics"].items():
            b = ((utility_before or {}).get("tasks", {}).get(name, {}).get("metrics", {})).get(metric)
            row[f"{name}/{metric}"] = _num(a)
            row[f"{name}/{metric}_before"] = _num(b)
            row[f"{name}/{metric}_delta"] = _num(a) - _num(b)
    return row


def _agg(result: dict | None, name: str) -> float:
    if not result or name not in result.get("aggregates", {}):
        return math.nan
    return _num(result["aggregates"][name]["value"])


def _num(v) -> float:
    return math.nan if v is None else float(v)


def run_one(cfg: ExperimentConfig, run: RunSpec, key: str, folder: Path, ctx: ModelContext,
            progress=None) -> Path:
    """Do one run and commit its folder ``folder``; returns it. A stop before the commit leaves no
    folder (only the unlearning checkpoint beside it, which the next attempt resumes from)."""
    from unmemorize.attacks import run_attacks, write_results
    from unmemorize.runs import RunDir, build_manifest, write_frame, write_json
    from unmemorize.thresholds import Band
    from unmemorize.unlearning import UnlearnOptions, unlearn
    from unmemorize.unlearning import checkpoint as ckpt
    from unmemorize.unlearning.report import trajectory_plot
    from unmemorize.utility import save_utility

    tok = ctx.loaded.tokenizer
    forget = load_forget(cfg, run, tok)
    micro = run.method.micro_batch or cfg.training.micro_batch
    if len(forget) % micro:
        raise UserError(f"{cfg.source}: micro-batch {micro} does not divide the {len(forget)} sequences of "
                        f"{forget.source} (after cutting it into {cfg.length}-token windows)")
    tau, tau_from = _tau(cfg, run, ctx, progress)
    band = Band(cfg.band.lo, cfg.band.hi)
    m = run.method
    opts = UnlearnOptions(lr=m.lr or cfg.training.lr, max_steps=cfg.training.max_steps, micro_batch=micro,
                          seed=run.seed, selector=m.selector, switch_below=m.switch_below, edit_coef=m.edit_coef,
                          reset_optimizer_at_switch=m.reset_optimizer, parity=cfg.training.parity,
                          checkpoint_every=cfg.training.checkpoint_every, dpd_lambda=m.dpd_lambda, dpd_mode=m.dpd_mode)
    checkpoint_dir = folder.parent / f".{folder.name}.checkpoint"
    result = unlearn(ctx.loaded.model, tok, forget, tau=float(tau), method=m.name, band=band, stop=run.stop,
                     options=opts, checkpoint_dir=checkpoint_dir if cfg.training.checkpoint_every else None,
                     progress=progress, copy=True)

    attacks = None
    if cfg.attacks.names:
        attacks = run_attacks(result.model, tok, forget, _reference(cfg, ctx), original=ctx.loaded.model,
                              original_tokenizer=tok, options=attack_options(cfg, seed=run.seed), progress=progress)
    utility_after = None
    if cfg.utility.tasks:
        if ctx.utility_before is None:
            ctx.utility_before = _utility(cfg, ctx.loaded.model, tok, progress)
        utility_after = _utility(cfg, result.model, tok, progress)

    unlearning = result.as_dict()
    attack_dict = attacks.as_dict() if attacks is not None else {"attacks": {}, "notes": []}
    fprs = tuple(cfg.attacks.fprs)
    row = metrics_row(unlearning, attack_dict["attacks"], ctx.utility_before, utility_after, fprs)
    settings = resolved_settings(cfg, run)
    summary = {
        "kind": "unmemorize experiment run", "key": key, **run.labels, "size": len(forget),
        "order": [cfg.models.index(run.model), cfg.forget.index(run.forget),
                  [str(x) for x in run.forget.splits].index(run.split), cfg.methods.index(run.method),
                  cfg.stop.index(run.stop), cfg.seeds.index(run.seed)],  # the config's order, for tables
        "tau": tau, "tau_from": tau_from, "band": [band.lo, band.hi],
        "reference_ma_original": ctx.reference_ma,
        "metrics": row, "settings": settings, "unlearning": unlearning,
        "attack_notes": attack_dict.get("notes", []), "fprs": list(fprs),
        "utility_mode": cfg.utility.mode if cfg.utility.tasks else None,
        "notes": (["DPD changes decoding only: the attacks and utility see the unchanged weights"]
                  if result.method.decoding else []),
    }
    from unmemorize import distributed

    with RunDir(distributed.output_dir(folder), overwrite=True) as rd:  # rank 0 writes `folder`
        write_frame(rd.path("profile_before"), result.before)
        write_frame(rd.path("profile_after"), result.after)
        write_frame(rd.path("trajectory"), result.trajectory)
        write_frame(rd.path("steps"), result.steps_table())
        trajectory_plot(rd.path("trajectory.png"), result)
        if attacks is not None:
            write_results(attacks, rd.tmp)
        if utility_after is not None:
            save_utility(ctx.utility_before, rd.tmp, name="utility_before")
            save_utility(utility_after, rd.tmp, name="utility_after")
        inputs = {role: str(p) for role, p in input_files(cfg, run).items()}
        write_json(rd.path("manifest.json"), build_manifest(
            "run", settings, {"files": inputs, "forget": forget.describe(),
                              "reference": None if ctx.reference is None else ctx.reference.describe()},
            model=ctx.loaded.describe(), key=key, config=cfg.source, labels=run.labels))
        write_json(rd.path(SUMMARY), summary)  # last: a folder with a summary is a finished run
        rd.commit()
    if distributed.is_main():
        ckpt.remove(checkpoint_dir)
    del result
    return folder
