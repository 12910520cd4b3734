"""`unmemorize unlearn`: make a model forget a set of sequences, each down to the level of unseen text.

Recipe: load the model and the forget set → τ from the unseen reference (or --tau) → the one
unlearning loop with the chosen method and stop rule → per-sequence profiles, trajectory, plots,
report, and (with --save) the unlearned model as safetensors beside the untouched original.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from unmemorize.commands.common import (
    AllowPickleOpt,
    DeviceOpt,
    DtypeOpt,
    LengthOpt,
    ModelOpt,
    OutOpt,
    OverwriteOpt,
    SeedOpt,
    TrustCodeOpt,
    check_refill_model,
    console,
    default_out,
    err_console,
    frame_table,
    load_model_cli,
    parse_list,
    progress_bar,
)
from unmemorize.errors import UserError

PROFILE_METRICS = ("ma", "loss", "el", "extraction")
# Every attack but sampling extraction (N decoded samples per prefix: minutes per sequence on a CPU);
# "reference" needs the original model, so it runs on the unlearned model only.
DEFAULT_ATTACKS = ("miau", "threshold", "loss", "zlib", "min-k", "min-k++", "reference")


def register(app: typer.Typer) -> None:
    app.command("unlearn", help="Unlearn the sequences of a forget file (GA, SGA, TA, TAU, NPO, GA+Mismatch, DPD).")(unlearn_command)


def unlearn_command(
    forget: Annotated[Path, typer.Option("--forget", "-f", help="Sequences to forget: Jang CSV, JSONL, text file or folder.")],
    model: ModelOpt = "default",
    reference: Annotated[Path | None, typer.Option("--reference", "-r", help="Unseen text of the same form: τ = the model's mean MA on it.")] = None,
    tau: Annotated[float | None, typer.Option("--tau", help="τ given directly (instead of --reference).")] = None,
    method: Annotated[str, typer.Option("--method", help="ga, sga, ta, tau, npo, ga+mismatch or dpd.")] = "sga",
    stop: Annotated[str, typer.Option("--stop", help="mean (the paper: mean MA < τ) or per-sequence (every sequence below the band's top).")] = "mean",
    selector: Annotated[str | None, typer.Option("--selector", help="Override the selector: all, threshold:γ, top:k.")] = None,
    band_lo: Annotated[float, typer.Option("--band-lo", help="Over-forgotten at or below this MA.")] = 0.15,
    band_hi: Annotated[float, typer.Option("--band-hi", help="Extractable at or above this MA.")] = 0.60,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 5e-5,
    max_steps: Annotated[int, typer.Option("--max-steps", help="At most this many optimizer steps.")] = 150,
    micro_batch: Annotated[int, typer.Option("--micro-batch", help="Sequences per forward pass (gradients accumulate over the whole set).")] = 8,
    ta_coef: Annotated[float | None, typer.Option("--ta-coef", help="Task-arithmetic c (ta: −3, tau: −1).")] = None,
    switch_below: Annotated[float | None, typer.Option("--switch-below", help="Mean MA at which ta/tau hand over to task arithmetic (0.9 / 0.5).")] = None,
    reset_optimizer: Annotated[bool, typer.Option("--reset-optimizer", help="Fresh Adam state at a phase switch (the code carries it over).")] = False,
    retain: Annotated[Path | None, typer.Option("--retain", help="Normal/retain data for ga+mismatch and npo (e.g. TruthfulQA.csv).")] = None,
    dpd_lambda: Annotated[float, typer.Option("--dpd-lambda", help="DPD mixing weight λ.")] = 0.2,
    dpd_mode: Annotated[str, typer.Option("--dpd-mode", help="logits (the code) or probs (Majmudar's original).")] = "logits",
    metrics: Annotated[str, typer.Option("--metrics", help="Before/after profile metrics: ma,loss[,el,extraction].")] = "ma,loss",
    attacks: Annotated[str, typer.Option("--attacks", help="Attacks run on the original and the unlearned model (members = forget set, non-members = --reference); see `unmemorize attack`.")] = ",".join(DEFAULT_ATTACKS),
    no_attacks: Annotated[bool, typer.Option("--no-attacks", help="Do not run the privacy attacks.")] = False,
    neighbours: Annotated[int, typer.Option("--neighbours", "-k", help="MIAU: neighbours per sequence (K).")] = 25,
    perturber: Annotated[str, typer.Option("--perturber", help="MIAU neighbours: lm (offline refill with the original model), words (cheap), t5 (with `unmemorize attack --t5`).")] = "lm",
    refill_model: Annotated[str | None, typer.Option("--refill-model", help="MIAU lm perturber: the model that refills the masked spans (default: the original model). One that never saw the forget set keeps neighbours from leaning towards the memorized words.")] = None,
    parity: Annotated[bool, typer.Option("--parity", help="Count padding in MA as the original code does.")] = False,
    save: Annotated[bool, typer.Option("--save", help="Write the unlearned model (safetensors) into the run folder.")] = False,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Steps between checkpoints (0: none).")] = 5,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore a checkpoint of an interrupted run and start over.")] = False,
    mixed_precision: Annotated[str, typer.Option("--mixed-precision", help="no, bf16 (CPU or Ampere+ GPU) or fp16 (CUDA; loss scaling).")] = "no",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute activations in the backward pass (less memory, ~1/3 more compute).")] = False,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="Train a LoRA adapter of this rank instead of the weights (0: off); merged on save.")] = 0,
    lora_alpha: Annotated[float | None, typer.Option("--lora-alpha", help="LoRA α (default 2·rank).")] = None,
    lora_targets: Annotated[str | None, typer.Option("--lora-targets", help="LoRA target modules (comma-separated, or all-linear; default: peft's for the architecture).")] = None,
    base_on_disk: Annotated[bool, typer.Option("--base-on-disk", help="Task arithmetic: keep θ_b memory-mapped from a safetensors file instead of in RAM.")] = False,
    reference_limit: Annotated[int | None, typer.Option("--reference-limit", help="Use only the first N reference sequences.")] = None,
    length: LengthOpt = 200,
    seed: SeedOpt = 42,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustCodeOpt = False,
) -> None:
    from unmemorize.data import load_sequences
    from unmemorize.memorization import ProfileOptions, profile
    from unmemorize.models import save_model
    from unmemorize.attacks import comparison_table, report_sections, write_results
    from unmemorize.report.html import Section, write_report
    from unmemorize.runs import RunDir, build_manifest, write_frame, write_json
    from unmemorize.thresholds import Band, acceptable_level
    from unmemorize.unlearning import UnlearnOptions, load_retain, resolve_method, unlearn
    from unmemorize.unlearning import checkpoint as ckpt
    from unmemorize.unlearning.report import before_after_histogram, sections, trajectory_plot

    if (reference is None) == (tau is None):
        raise UserError("give exactly one of --reference FILE (τ = mean MA of the model on unseen text) and --tau VALUE")
    if tau is not None and not (0.0 <= tau <= 1.0 and math.isfinite(tau)):
        raise UserError(f"--tau must be a memorization accuracy in [0, 1], got {tau}")
    wanted = parse_list(metrics, PROFILE_METRICS, "metric")
    band = Band(band_lo, band_hi)
    opts = UnlearnOptions(lr=lr, max_steps=max_steps, micro_batch=micro_batch, seed=seed, selector=selector,
                          switch_below=switch_below, edit_coef=ta_coef, reset_optimizer_at_switch=reset_optimizer,
                          parity=parity, checkpoint_every=checkpoint_every, dpd_lambda=dpd_lambda, dpd_mode=dpd_mode,
                          mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing,
                          lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets, base_on_disk=base_on_disk)
    m = resolve_method(method, selector, switch_below, ta_coef)
    if m.decoding and save:
        raise UserError("DPD changes decoding, not weights: there is no unlearned model to --save")
    if retain is not None and not m.uses_retain:
        raise UserError(f"--retain is used by ga+mismatch and npo, not by {m.name}")
    attack_opts, attack_note = _attack_plan(None if no_attacks else attacks, reference is not None, m, neighbours,
                                            perturber, tau, band, seed, micro_batch, refill_model)
    out = out or default_out("unlearn")

    from unmemorize import distributed

    with RunDir(distributed.output_dir(out), overwrite) as run:  # rank 0's is `out`; the other ranks' are thrown away
        loaded = load_model_cli(model, dtype, device, allow_pickle, trust_remote_code)
        tok = loaded.tokenizer
        forget_set = load_sequences(forget, tok, length)
        retain_data = load_retain(retain, tok, length) if retain is not None else None
        prof_opts = ProfileOptions(metrics=wanted, batch_size=micro_batch, parity=parity)
        ref_set = None
        ref_before = ref_after = None
        with progress_bar() as p:
            if reference is not None:
                ref_set = load_sequences(reference, tok, length)
                if reference_limit is not None:
                    ref_set = ref_set.subset(range(min(reference_limit, len(ref_set))))
                ref_prof = profile(loaded.model, ref_set, ProfileOptions(metrics=("ma",), batch_size=micro_batch,
                                                                          parity=parity), p)
                tau = acceptable_level(ref_prof["ma"])
                ref_before = float(ref_prof["ma"].mean())
            full_before = profile(loaded.model, forget_set, prof_opts, p) if set(wanted) - {"ma", "loss"} else None
            # MIAU's refill model, loaded once for both runs (default: the original refills)
            refill = (load_model_cli(refill_model, dtype, device, allow_pickle, trust_remote_code)
                      if refill_model is not None and attack_opts is not None else None)
            attacks_before = _attack(loaded, None, forget_set, ref_set, attack_opts, device, p, tau, refill=refill)
            checkpoint_dir = out.parent / f".{out.name}.checkpoint"
            if fresh:
                ckpt.remove(checkpoint_dir)
            elif ckpt.exists(checkpoint_dir):
                err_console.print(f"[cyan]resuming the interrupted run from {checkpoint_dir}[/]")
            try:
                result = unlearn(loaded.model, tok, forget_set, tau=float(tau), method=m, band=band, stop=stop,
                                 options=opts, retain=retain_data,
                                 checkpoint_dir=checkpoint_dir if checkpoint_every and not m.decoding else None,
                                 progress=p, copy=False)
            except KeyboardInterrupt:
                if ckpt.exists(checkpoint_dir):
                    err_console.print(f"[yellow]a checkpoint is kept in {checkpoint_dir}; run the same command "
                                      "again to resume (or add --fresh to start over)[/]")
                raise
            if ref_set is not None:
                ref_after = float(profile(result.model, ref_set, ProfileOptions(metrics=("ma",), batch_size=micro_batch,
                                                                                 parity=parity), p)["ma"].mean())
            full_after = profile(result.model, forget_set, prof_opts, p) if full_before is not None else None
            attacks_after = None
            if attack_opts is not None:
                # the model was unlearned in place: the original comes back from its files for the
                # reference attack and for MIAU's neighbours (refilled by the original both times)
                original = load_model_cli(model, dtype, device, allow_pickle, trust_remote_code)
                attacks_after = _attack(loaded, original, forget_set, ref_set, attack_opts, device, p, tau,
                                        target=result.model, refill=refill)
                del original

        before, after = _profiles(result, forget_set, full_before, full_after)
        write_frame(run.path("profile_before"), before)
        write_frame(run.path("profile_after"), after)
        write_frame(run.path("trajectory"), result.trajectory)
        write_frame(run.path("steps"), result.steps_table())
        summary = result.as_dict()
        summary["reference_ma_before"], summary["reference_ma_after"] = ref_before, ref_after
        write_json(run.path("summary.json"), summary)
        images = {"per-sequence MA at every step, with τ and the band": trajectory_plot(run.path("trajectory.png"), result),
                  "MA before and after": before_after_histogram(run.path("histogram.png"), result)}
        inputs = {"model": loaded.describe(), "forget": forget_set.describe(),
                  "reference": None if ref_set is None else ref_set.describe(),
                  "retain": None if retain_data is None else retain_data.describe(),
                  # MIAU's neighbours depend on who refilled them: the original unless --refill-model
                  "refill_model": None if refill is None else refill.describe()}
        options = {"method": m.describe(), "stop": stop, "tau": tau, "tau_from": "reference" if reference else "--tau",
                   "band": [band.lo, band.hi], "metrics": list(wanted), "save": save, **opts.as_dict(),
                   "attacks": None if attack_opts is None else
                   {("names" if k == "attacks" else k): v for k, v in attack_opts.as_dict().items()}}
        write_json(run.path("manifest.json"), build_manifest("unlearn", options, inputs, result=summary))
        if save and distributed.is_main():
            save_model(result.model, tok, run.path("model"),
                       extra={"unlearned_from": loaded.describe(), "method": m.name, "stop": stop, "tau": tau,
                              "steps": result.steps, "forget": forget_set.describe()})
        report = sections(result, images, None if ref_before is None else (ref_before, ref_after))
        attack_rows = None
        if attacks_after is not None:
            both = {k: v for k, v in (("original", attacks_before), ("unlearned", attacks_after)) if v is not None}
            attack_rows = comparison_table(both)
            write_frame(run.path("attacks_comparison"), attack_rows)
            paths = {label: write_results(r, run.tmp, prefix=f"{label}_") for label, r in both.items()}["unlearned"]
            summary["attacks"] = {label: _auc_summary(r) for label, r in both.items()}
            write_json(run.path("summary.json"), summary)
            report.append(Section("Can an attacker tell? Original against unlearned",
                                  "The same attacks and the same MIAU neighbours on the model before and after "
                                  "unlearning (members = the forget set, non-members = the reference set).",
                                  tables=[("AUC and TPR side by side", attack_rows)]))
            report += report_sections(attacks_after, paths["roc"], heading="Privacy attacks on the unlearned model")
        elif attack_note:
            report.append(Section("Privacy attacks", attack_note))
        write_report(run.path("report.html"), f"Unlearning: {m.title}", report,
                     subtitle=f"model {loaded.name} · forget {forget} · {len(forget_set)} sequences")
        path = run.commit()
    ckpt.remove(out.parent / f".{out.name}.checkpoint")

    s = result.summary()
    s0 = result.summary(int(result.trajectory["step"].min()))
    console.print(f"[bold]{m.name}[/] ({stop} stop): {result.stop_reason}")
    console.print(f"  mean MA {s0.mean:.3f} → {s.mean:.3f} (τ = {result.tau:.3f}, distance {s.distance_to_tau:.1f} points); "
                  f"outside the band: {s0.c_low}+{s0.c_high} → {s.c_low}+{s.c_high} (low+high); "
                  f"{result.steps} steps, {result.seconds:.1f} s")
    if ref_before is not None:
        console.print(f"  unseen reference mean MA {ref_before:.3f} → {ref_after:.3f}")
    if attack_rows is not None:
        console.print(frame_table(attack_rows, "Can an attacker tell? (AUC 0.5 = chance)"))
    elif attack_note:
        console.print(f"[yellow]note[/]: {attack_note}")
    console.print(f"  wrote {path}" + (" (model in model/)" if save else ""))


def _attack_plan(attacks: str | None, has_reference: bool, method, neighbours: int, perturber: str, tau, band,
                 seed: int, batch_size: int, refill_model: str | None = None):
    """AttackOptions for the before/after attacks, or (None, why not); bad options fail before any work."""
    from unmemorize.attacks import ATTACKS, AttackOptions

    if attacks is None:
        return None, ""
    names = parse_list(attacks, tuple(ATTACKS), "attack")
    check_refill_model(refill_model, names, perturber)
    if not has_reference:
        return None, ("privacy attacks not run: they need non-members, the unseen --reference set "
                      "(τ was given with --tau)")
    if method.decoding:
        return None, ("privacy attacks not run: DPD changes decoding, not weights, and the attacks score the "
                      "model's likelihoods")
    if perturber == "t5" and "miau" in names:
        raise UserError("--perturber t5 needs a local T5 folder: run `unmemorize attack --t5 PATH` on the saved model")
    opts = AttackOptions(attacks=names, neighbours=neighbours, perturber=perturber, tau=tau, band=band, seed=seed,
                         batch_size=batch_size)
    opts.validate(names)
    return opts, ""


def _attack(loaded, original, forget_set, ref_set, opts, device, progress, tau, target=None, refill=None):
    """Run the planned attacks on ``target`` (default: the loaded model) with ``original`` as reference model;
    ``refill`` (default: the original) refills MIAU's neighbours."""
    import dataclasses

    from unmemorize.attacks import build_perturber, run_attacks

    if opts is None:
        return None
    names = opts.attacks if original is not None else tuple(n for n in opts.attacks if n != "reference")
    if not names:
        return None
    lm = refill or original or loaded
    pert = build_perturber(opts, lm.model, lm.tokenizer, lm.fingerprint, device) if "miau" in names else None
    # τ of the threshold attack is the run's τ (from the reference set before unlearning) both times
    opts = dataclasses.replace(opts, attacks=names, tau=opts.tau if opts.tau is not None else tau)
    return run_attacks(target if target is not None else loaded.model, loaded.tokenizer, forget_set, ref_set,
                       original=None if original is None else original.model,
                       original_tokenizer=None if original is None else original.tokenizer,
                       options=opts, perturber=pert, progress=progress)


def _auc_summary(results) -> dict:
    """Per attack: AUC and TPR at the first FPR, for summary.json and the experiment report."""
    out = {}
    for name, r in results.attacks.items():
        ev = r.evaluation
        a = results.fprs[0] if results.fprs else None
        out[name] = {"auc": ev.auc.value, "fpr": a, "tpr": ev.tpr[a].value if a in ev.tpr else None,
                     "below_chance": ev.below_chance}
    return out


def _profiles(result, forget_set, full_before, full_after):
    """Before/after per-sequence frames: the trajectory's MA and loss, or full profiles, with the file's columns."""
    import pandas as pd

    frames = []
    for frame, full in ((result.before, full_before), (result.after, full_after)):
        df = full.copy() if full is not None else pd.DataFrame({"id": forget_set.ids, "length": forget_set.lengths.numpy()})
        idx = frame.set_index("id")
        df["ma"] = idx.loc[df["id"], "ma"].to_numpy()  # the loop's MA (under DPD: sampled) is the one reported
        df["loss"] = idx.loc[df["id"], "loss"].to_numpy()
        for col in forget_set.meta.columns:
            if col not in df.columns:
                df[col] = forget_set.meta[col].values
        frames.append(df)
    return frames[0], frames[1]
