"""One unlearning run, from its spec to its run folder: the recipe every caller shares.

``unmemorize unlearn`` (one spec from flags), ``unmemorize run`` (a grid of specs), the demo and the
benchmarks all call :func:`execute`, so a part of a run exists for all of them or for none::

    model, forget / reference / retain sets ─► τ (given, or mean MA on the reference)
        ├─ original model: full profile (EL, extraction when asked), attacks, utility   (before)
        ├─ unlearning.unlearn  (checkpointed; the input model is never modified)
        └─ unlearned model: reference MA, full profile, attacks, utility                  (after)
    ─► run folder (assembled aside, renamed into place whole): record.json (the typed result),
       manifest.json (provenance), per-sequence frames, plots, attack and utility files, report.html,
       and the unlearned model when asked

What several runs of a grid have in common (a loaded model, τ on its reference, the attacks and the
utility of the original model) lives in :class:`Resources` and is computed once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unmemorize import distributed
from unmemorize.errors import UserError
from unmemorize.models import LoadedModel, ModelSource
from unmemorize.record import (AttackRecord, AttackSummary, ForgetSummary, Labels, RunRecord, UnlearningRecord,
                               UtilityRecord, UtilitySummary, summary_of, write_record)
from unmemorize.spec import RunSpec

BEFORE, AFTER = "before", "after"


@dataclass
class Resources:
    """What several runs share, each computed once: loaded models, and the results on the original
    model that do not depend on the method (τ, the attacks before unlearning, utility).

    ``keep_original=False`` lets a single run unlearn the loaded model in place (one copy of the
    weights in memory); the original is then read again from its untouched files when the attacks
    need it after unlearning.
    """

    progress: Any = None
    log: Callable[[str], None] = lambda message: None
    keep_original: bool = True
    _models: dict = field(default_factory=dict)
    _memo: dict = field(default_factory=dict)

    def model(self, source: ModelSource) -> LoadedModel:
        key = _model_key(source)
        if key not in self._models:
            d = distributed.current()  # under accelerate launch each rank loads onto its own device
            device = source.device or (str(d.device) if d is not None else None)
            self.log(f"loading model {source.path}")
            self._models[key] = source.load(log=self.log, device=device)
        return self._models[key]

    def forget_model(self, source: ModelSource) -> None:
        """Drop a loaded model (it was unlearned in place, or the grid moved on to another model)."""
        self._models.pop(_model_key(source), None)
        for k in [k for k in self._memo if k[0] == _model_key(source)]:
            del self._memo[k]

    def memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


def _model_key(source: ModelSource) -> tuple:
    return (source.path, source.dtype, source.device, source.allow_pickle, source.trust_remote_code)


@dataclass
class _Inputs:
    lm: LoadedModel
    forget: Any  # data.SequenceSet
    reference: Any | None
    retain: Any | None
    tau: float
    tau_from: str
    reference_g: np.ndarray | None  # the original model's MA on each reference sequence


# ---------------------------------------------------------------- the recipe


def execute(spec: RunSpec, out: str | Path, *, resources: Resources | None = None, key: str = "",
            labels: dict | None = None, order: tuple[int, ...] = (), overwrite: bool = False,
            fresh: bool = False, command: str = "unlearn") -> RunRecord:
    """Run ``spec`` and commit its folder ``out``; return the record.

    A stop before the commit leaves no folder, only the unlearning checkpoint beside it
    (``.<out>.checkpoint``), which the next call with the same spec resumes from (``fresh=True``
    starts over).
    """
    from unmemorize.runs import RunDir
    from unmemorize.unlearning import checkpoint as ckpt

    res = resources or Resources(keep_original=False)
    out = Path(out)
    timings: dict[str, float] = {}
    clock = _Clock(timings)
    checkpoint_dir = out.parent / f".{out.name}.checkpoint"
    with RunDir(distributed.output_dir(out), overwrite) as run:  # the output folder is checked before any work
        inputs = _inputs(spec, res)
        clock("inputs")
        before = _before(spec, inputs, res)
        clock("before")
        if fresh:
            ckpt.remove(checkpoint_dir)
        elif ckpt.exists(checkpoint_dir):
            res.log(f"resuming the interrupted run from {checkpoint_dir}")
        result = _unlearn(spec, inputs, res, checkpoint_dir)
        clock("unlearn")
        after = _after(spec, inputs, res, result)
        clock("after")
        record = _record(spec, inputs, result, before, after, key, labels, order, timings)
        _write(run, spec, inputs, result, before, after, record, command)
        run.commit()
    if distributed.is_main():
        ckpt.remove(checkpoint_dir)
    return record


class _Clock:
    def __init__(self, timings: dict[str, float]):
        self.timings, self.t = timings, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self.t, 2)
        self.t = now


def _inputs(spec: RunSpec, res: Resources) -> _Inputs:
    from unmemorize.unlearning import load_retain

    lm = res.model(spec.model)
    tok = lm.tokenizer
    forget = res.memo((_model_key(spec.model), "forget", str(spec.forget.path), spec.forget.sample,
                       spec.forget.sample_seed, spec.length), lambda: load_forget(spec, tok))
    reference = None
    if spec.reference is not None:
        reference = res.memo((_model_key(spec.model), "reference", str(spec.reference), spec.reference_limit,
                              spec.length), lambda: _reference_set(spec, tok))
    if reference is not None and spec.attacks.fprs and attack_plan(spec, True)[0] is not None:
        from unmemorize.attacks.scoring import check_fprs

        check_fprs(tuple(spec.attacks.fprs), len(reference))  # before any work, not a NaN column at the end
    retain = load_retain(spec.retain, tok, spec.length) if spec.retain is not None else None
    ref_g = None
    if reference is not None:
        ref_g = res.memo((_model_key(spec.model), "reference_ma", str(spec.reference), spec.reference_limit,
                          spec.length, spec.training.parity),
                         lambda: _ma(lm.model, reference, spec, res.progress))
    if spec.tau is not None:
        tau, tau_from = float(spec.tau), "given"
    else:
        from unmemorize.thresholds import acceptable_level

        tau, tau_from = acceptable_level(ref_g), f"mean MA of the original model on {len(reference)} reference sequences"
    return _Inputs(lm, forget, reference, retain, tau, tau_from, ref_g)


def load_forget(spec: RunSpec, tokenizer):
    """The run's forget set: the file, or a seeded sample of it (the paper's 16 of 128)."""
    from unmemorize.data import load_sequences

    seqs = load_sequences(spec.forget.path, tokenizer, spec.length)
    n = spec.forget.sample
    if n is not None:
        if n > len(seqs):
            raise UserError(f"forget sample of {n} from {seqs.source}, which holds {len(seqs)} sequences")
        rng = np.random.default_rng(spec.forget.sample_seed)
        seqs = seqs.subset(sorted(rng.choice(len(seqs), n, replace=False).tolist()))
    return seqs


def _reference_set(spec: RunSpec, tokenizer):
    from unmemorize.data import load_sequences

    ref = load_sequences(spec.reference, tokenizer, spec.length)
    if spec.reference_limit is not None:
        ref = ref.subset(range(min(spec.reference_limit, len(ref))))
    return ref


def _ma(model, seqs, spec: RunSpec, progress) -> np.ndarray:
    from unmemorize.memorization import ProfileOptions, profile

    opts = ProfileOptions(metrics=("ma",), batch_size=spec.training.micro_batch, parity=spec.training.parity)
    return profile(model, seqs, opts, progress)["ma"].to_numpy()


# ---------------------------------------------------------------- before and after


def _extra_metrics(spec: RunSpec) -> tuple[str, ...]:
    """Metrics beyond the loop's own MA and loss: a full profile before and after."""
    return tuple(m for m in spec.metrics if m not in ("ma", "loss"))


def _profile(model, spec: RunSpec, forget, progress):
    from unmemorize.memorization import ProfileOptions, profile

    return profile(model, forget, ProfileOptions(metrics=tuple(dict.fromkeys(("ma", "loss", *spec.metrics))),
                                                 batch_size=spec.training.micro_batch, parity=spec.training.parity),
                   progress)


def _method(spec: RunSpec):
    from unmemorize.unlearning import resolve_method

    return resolve_method(spec.method)


def attack_plan(spec: RunSpec, has_reference: bool) -> tuple[Any, str]:
    """The attacks' options, or (None, why not): attacks need non-members and a model whose weights changed."""
    from unmemorize.attacks.registry import AttackOptions

    names = spec.attacks.names
    if names is not None and not names:
        return None, ""
    if not has_reference:
        return None, ("privacy attacks not run: they need non-members, the unseen --reference set (τ was given "
                      "with --tau)")
    if _method(spec).decoding:
        return None, ("privacy attacks not run: DPD changes decoding, not weights, and the attacks score the "
                      "model's likelihoods")
    return AttackOptions(**spec.attacks.model_dump(), band=spec.band, seed=spec.seed), ""


def _perturber(opts, refill: LoadedModel):
    from unmemorize.attacks import build_perturber

    return build_perturber(opts, refill.model, refill.tokenizer, refill.fingerprint)


def _refill_model(spec: RunSpec, res: Resources) -> LoadedModel | None:
    if spec.attacks.refill_model is None:
        return None
    return res.model(spec.model.replace(path=spec.attacks.refill_model))


def _attack(target, tokenizer, inputs: _Inputs, opts, original: LoadedModel | None, refill: LoadedModel, progress):
    """The planned attacks on ``target``; the reference attack only with an original to compare with."""
    from unmemorize.attacks import ATTACKS, run_attacks

    chosen = opts.names if opts.names is not None else tuple(ATTACKS)
    names = tuple(n for n in chosen if original is not None or not ATTACKS[n].needs_original)
    if not names:
        return None
    pert = _perturber(opts, refill) if "miau" in names else None
    # τ of the threshold attack is the run's τ (from the reference before unlearning) both times
    opts = opts.replace(names=names, tau=opts.tau if opts.tau is not None else inputs.tau)
    return run_attacks(target, tokenizer, inputs.forget, inputs.reference,
                       original=None if original is None else original.model,
                       original_tokenizer=None if original is None else original.tokenizer,
                       options=opts, perturber=pert, progress=progress)


def _utility(model, tokenizer, spec: RunSpec, progress) -> dict:
    from unmemorize.utility import evaluate_utility

    u = spec.utility
    options = {k: getattr(u, k) for k in type(u).model_fields if k not in ("tasks", "data_dir", "mode", "limit")}
    return evaluate_utility(model, tokenizer, list(u.tasks), u.data_dir, mode=u.mode, limit=u.limit,
                            progress=progress, **options)


@dataclass
class _Stage:
    profile: pd.DataFrame | None = None  # full profile (when metrics beyond MA and loss are asked)
    attacks: Any = None  # AttackResults
    utility: dict | None = None
    reference_g: np.ndarray | None = None  # MA on each reference sequence
    refill: LoadedModel | None = None
    notes: list[str] = field(default_factory=list)


def _before(spec: RunSpec, inputs: _Inputs, res: Resources) -> _Stage:
    """What the original model shows, before unlearning (shared by every run of a grid that starts from it)."""
    lm, mk = inputs.lm, _model_key(spec.model)
    st = _Stage(reference_g=inputs.reference_g)
    if _extra_metrics(spec):
        st.profile = res.memo((mk, "profile", inputs.forget.sha256, tuple(inputs.forget.ids), spec.metrics,
                               spec.training.parity), lambda: _profile(lm.model, spec, inputs.forget, res.progress))
    opts, note = attack_plan(spec, inputs.reference is not None)
    if note:
        st.notes.append(note)
    if opts is not None:
        st.refill = _refill_model(spec, res)
        if spec.attacks.before:
            refill = st.refill or lm
            st.attacks = res.memo((mk, "attacks", inputs.forget.sha256, tuple(inputs.forget.ids),
                                   inputs.reference.sha256, spec.attacks.model_dump_json(), spec.seed, inputs.tau,
                                   spec.band),
                                  lambda: _attack(lm.model, lm.tokenizer, inputs, opts, None, refill, res.progress))
    if spec.utility.tasks:
        st.utility = res.memo((mk, "utility", spec.utility.model_dump_json()),
                              lambda: _utility(lm.model, lm.tokenizer, spec, res.progress))
    return st


def _unlearn(spec: RunSpec, inputs: _Inputs, res: Resources, checkpoint_dir: Path):
    from unmemorize.unlearning import unlearn

    method = _method(spec)
    in_place = not res.keep_original
    try:
        result = unlearn(inputs.lm.model, inputs.forget, tau=inputs.tau, method=spec.method, band=spec.band,
                         stop=spec.stop, seed=spec.seed, options=spec.training, retain=inputs.retain,
                         checkpoint_dir=checkpoint_dir if spec.training.checkpoint_every and not method.decoding
                         else None, progress=res.progress, copy=not in_place)
    except KeyboardInterrupt:
        from unmemorize.unlearning import checkpoint as ckpt

        if ckpt.exists(checkpoint_dir):
            res.log(f"a checkpoint is kept in {checkpoint_dir}; run the same command again to resume")
        raise
    if in_place:
        res.forget_model(spec.model)  # its weights are the unlearned ones now
    return result


def _after(spec: RunSpec, inputs: _Inputs, res: Resources, result) -> _Stage:
    st = _Stage()
    model, tok = result.model, inputs.lm.tokenizer
    if inputs.reference is not None:
        st.reference_g = _ma(model, inputs.reference, spec, res.progress)
    if _extra_metrics(spec):
        st.profile = _profile(model, spec, inputs.forget, res.progress)
    opts, note = attack_plan(spec, inputs.reference is not None)
    if opts is not None:
        # the original for the reference attack (and as refill model unless another is named): the one
        # in memory, or its untouched files when this run unlearned it in place
        original = res.model(spec.model)
        refill = _refill_model(spec, res) or original
        st.attacks = _attack(model, tok, inputs, opts, original, refill, res.progress)
        st.refill = refill if spec.attacks.refill_model is not None else None
        if not res.keep_original:
            res.forget_model(spec.model)
    if spec.utility.tasks:
        st.utility = _utility(model, tok, spec, res.progress)
    if result.method.decoding:
        st.notes.append("DPD changes decoding only: the weights are unchanged, so no attack scores them and the "
                        "utility tasks see the original model")
    return st


# ---------------------------------------------------------------- the record and the folder


def _record(spec: RunSpec, inputs: _Inputs, result, before: _Stage, after: _Stage, key: str, labels: dict | None,
            order: tuple[int, ...], timings: dict[str, float]) -> RunRecord:
    from unmemorize.runs import device_description

    u = result.as_dict()
    unlearning = UnlearningRecord(**{k: u[k] for k in UnlearningRecord.model_fields if k not in ("before", "after")},
                                  before=ForgetSummary(**_jsonable(u["before"])),
                                  after=ForgetSummary(**_jsonable(u["after"])))
    attacks = AttackRecord(notes=before.notes + [n for r in (before.attacks, after.attacks) if r is not None
                                                 for n in r.notes])
    for which, r in ((BEFORE, before.attacks), (AFTER, after.attacks)):
        if r is not None:
            setattr(attacks, which, {n: AttackSummary.of(a) for n, a in r.attacks.items()})
    attacks.notes = list(dict.fromkeys(attacks.notes))
    if attacks.before is not None or attacks.after is not None:
        from unmemorize.attacks.scoring import DEFAULT_FPRS

        attacks.fprs = list(spec.attacks.fprs or DEFAULT_FPRS)  # unresolvable ones too: a column of NaN
    utility = UtilityRecord(before=None if before.utility is None else UtilitySummary.of(before.utility),
                            after=None if after.utility is None else UtilitySummary.of(after.utility))
    lab = labels or {"model": inputs.lm.name, "forget": Path(spec.forget.path).stem, "split": "",
                     "method": result.method.name, "stop": spec.stop, "seed": spec.seed}
    return RunRecord(key=key, labels=Labels(**lab), order=list(order), spec=spec.model_dump(mode="json"),
                     size=len(inputs.forget), tau=inputs.tau, tau_from=inputs.tau_from,
                     band=[spec.band.lo, spec.band.hi],
                     reference_before=None if before.reference_g is None else summary_of(before.reference_g, inputs.tau,
                                                                                          spec.band),
                     reference_after=None if after.reference_g is None else summary_of(after.reference_g, inputs.tau,
                                                                                        spec.band),
                     unlearning=unlearning, attacks=attacks, utility=utility,
                     notes=after.notes, device=device_description(), timings=timings)


def _jsonable(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _write(run, spec: RunSpec, inputs: _Inputs, result, before: _Stage, after: _Stage, record: RunRecord,
           command: str) -> None:
    from unmemorize.attacks import comparison_table, write_results
    from unmemorize.models import save_model
    from unmemorize.runs import build_manifest, write_frame
    from unmemorize.unlearning.report import before_after_histogram, trajectory_plot
    from unmemorize.utility import save_utility

    frames = profiles(result, inputs.forget, before.profile, after.profile)
    write_frame(run.path("profile_before"), frames[0])
    write_frame(run.path("profile_after"), frames[1])
    write_frame(run.path("trajectory"), result.trajectory)
    write_frame(run.path("steps"), result.steps_table())
    images = {"per-sequence MA at every step, with τ and the band": trajectory_plot(run.path("trajectory.png"), result),
              "MA before and after": before_after_histogram(run.path("histogram.png"), result)}
    paths = {}
    for prefix, r in (("before_", before.attacks), ("", after.attacks)):
        if r is not None:
            paths[prefix] = write_results(r, run.tmp, prefix=prefix)
    if before.attacks is not None or after.attacks is not None:
        both = {label: r for label, r in (("original", before.attacks), ("unlearned", after.attacks)) if r is not None}
        write_frame(run.path("attacks_comparison"), comparison_table(both))
    if before.utility is not None:
        save_utility(before.utility, run.tmp, name="utility_before")
    if after.utility is not None:
        save_utility(after.utility, run.tmp, name="utility_after")
    refill = after.refill or before.refill
    inputs_desc = {"model": inputs.lm.describe(), "forget": inputs.forget.describe(),
                   "reference": None if inputs.reference is None else inputs.reference.describe(),
                   "retain": None if inputs.retain is None else inputs.retain.describe(),
                   # MIAU's neighbours depend on who refilled them: the original unless attacks.refill_model
                   "refill_model": None if refill is None else refill.describe()}
    run_manifest = build_manifest(command, spec.model_dump(mode="json"), inputs_desc, key=record.key,
                                  labels=record.labels.model_dump())
    from unmemorize.runs import write_json

    write_json(run.path("manifest.json"), run_manifest)
    if spec.save and distributed.is_main():
        save_model(result.model, inputs.lm.tokenizer, run.path("model"),
                   extra={"unlearned_from": inputs.lm.describe(), "method": result.method.name, "stop": spec.stop,
                          "tau": inputs.tau, "steps": result.steps, "forget": inputs.forget.describe()})
    from unmemorize.report.run import write_run_report

    write_run_report(run.path("report.html"), record, result, images, before.attacks, after.attacks,
                     paths, before.utility, after.utility, subtitle=f"model {inputs.lm.name} · forget "
                     f"{inputs.forget.source} · {len(inputs.forget)} sequences")
    write_record(run.tmp, record)  # last: a folder with a record is a finished run


def profiles(result, forget, full_before: pd.DataFrame | None, full_after: pd.DataFrame | None):
    """Before/after per-sequence frames: the loop's MA and loss (under DPD: sampled), the full profile's
    other metrics when measured, and the forget file's own columns."""
    frames = []
    for frame, full in ((result.before, full_before), (result.after, full_after)):
        df = full.copy() if full is not None else pd.DataFrame({"id": forget.ids, "length": forget.lengths.numpy()})
        idx = frame.set_index("id")
        df["ma"] = idx.loc[df["id"], "ma"].to_numpy()
        df["loss"] = idx.loc[df["id"], "loss"].to_numpy()
        for col in forget.meta.columns:
            if col not in df.columns:
                df[col] = forget.meta[col].values
        frames.append(df)
    return frames[0], frames[1]
