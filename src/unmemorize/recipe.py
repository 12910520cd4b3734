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
    reference_stats: Any | None = None  # the attacks' token statistics of that same pass (None: not shared)
    oracle: LoadedModel | None = None  # the retrain oracle (never trained on; it judges)
    retain_members: Any | None = None  # the planted members that were not forgotten (from the oracle's manifest)
    attack_members: Any | None = None  # the members and non-members the attacks compare (matched by kind)
    attack_nonmembers: Any | None = None
    band: Any = None  # the acceptable band in numbers (a band relative to τ resolved at this τ)
    targets: np.ndarray | None = None  # each forget sequence's target level (None: τ for all)
    targets_from: str = ""
    ascent_positions: Any | None = None  # [N, T] bool: the tokens target's ascent may push down (None: all)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the recipe


def execute(spec: RunSpec, out: str | Path, *, resources: Resources | None = None, key: str = "",
            labels: dict | None = None, order: tuple[int, ...] = (), overwrite: bool = False,
            fresh: bool = False, command: str = "unlearn") -> RunRecord:
    """Run ``spec`` and commit its folder ``out``; return the record.

    A stop before the commit leaves no folder, only the unlearning checkpoint beside it
    (``.<out>.checkpoint``), which the next call with the same spec resumes from (``fresh=True``
    starts over).
    """
    from unmemorize.probes.run import check_stage as check_probes
    from unmemorize.probes.run import run_stage as run_probes
    from unmemorize.runs import RunDir
    from unmemorize.unlearning import checkpoint as ckpt

    res = resources or Resources(keep_original=False)
    out = Path(out)
    timings: dict[str, float] = {}
    clock = _Clock(timings)
    checkpoint_dir = out.parent / f".{out.name}.checkpoint"
    with RunDir(distributed.output_dir(out), overwrite) as run:  # the output folder is checked before any work
        inputs = _inputs(spec, res)
        check_probes(spec, inputs)  # probes: one asked for by name that these inputs do not allow fails here
        clock("inputs")
        before = _before(spec, inputs, res)
        oracle = _oracle_stage(spec, inputs, res, before)
        clock("before")
        if fresh:
            ckpt.remove(checkpoint_dir)
        elif ckpt.exists(checkpoint_dir):
            res.log(f"resuming the interrupted run from {checkpoint_dir}")
        result = _unlearn(spec, inputs, res, checkpoint_dir)
        clock("unlearn")
        after = _after(spec, inputs, res, result)
        clock("after")
        # -- robustness probes of the unlearned model (unmemorize.probes): their files into the run folder,
        #    their summary into the record
        probes = run_probes(spec, inputs, res, result, run.tmp)
        if probes is not None:
            clock("probes")
        # --
        record = _record(spec, inputs, result, before, after, oracle, key, labels, order, timings)
        record.probes = probes.record if probes is not None else None
        _write(run, spec, inputs, result, before, after, oracle, record, command,
               probes.sections if probes is not None else [])
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
    retain = load_retain(spec.retain, tok, spec.length) if spec.retain is not None else None
    ref_g = ref_stats = None
    if reference is not None and _shares_reference_pass(spec, before=True):
        ref_stats = res.memo((_model_key(spec.model), "reference_stats", str(spec.reference), spec.reference_limit,
                              spec.length, spec.attacks.top_k, spec.attacks.temperature, spec.attacks.batch_size),
                             lambda: _reference_stats(lm.model, reference, spec, res.progress))
        ref_g = ref_stats.ma
    elif reference is not None:
        ref_g = res.memo((_model_key(spec.model), "reference_ma", str(spec.reference), spec.reference_limit,
                          spec.length, spec.training.parity),
                         lambda: _ma(lm.model, reference, spec, res.progress))
    if spec.tau is not None:
        tau, tau_from = float(spec.tau), "given"
    else:
        from unmemorize.thresholds import acceptable_level

        tau, tau_from = acceptable_level(ref_g), f"mean MA of the original model on {len(reference)} reference sequences"
    inputs = _Inputs(lm, forget, reference, retain, tau, tau_from, ref_g, ref_stats, band=spec.band.at(tau))
    inputs.targets, inputs.targets_from = sequence_targets(spec, inputs, res)
    if inputs.retain is None and _method(spec).name == "target" and spec.method.retain_weight > 0:
        from unmemorize.unlearning.retain import sampled_retain

        inputs.retain = res.memo((_model_key(spec.model), "sampled_retain", spec.length, spec.seed),
                                 lambda: sampled_retain(lm.model, tok, length=spec.length, seed=spec.seed))
        inputs.notes.append(f"retain term: KL to the original model on {inputs.retain.source} (no --retain given)")
    if spec.oracle is not None:
        inputs.oracle = res.model(spec.model.replace(path=spec.oracle))
        check_oracle(lm, inputs.oracle)
        inputs.retain_members = retain_members(inputs.oracle, forget, tok, spec.length)
    if reference is not None:
        _attack_sets(spec, inputs)
    return inputs


def sequence_targets(spec: RunSpec, inputs: _Inputs, res: Resources) -> tuple[np.ndarray | None, str]:
    """Each forget sequence's target level (docs/method.md §4.13), never from the oracle:

    - ``tau``: τ, or with ``tau_by`` the τ of the sequence's group;
    - ``reference-model``: MA_ref(x) + (τ − τ_ref), where MA_ref is the MA of a model that never saw
      the forget set and τ_ref its mean MA on the same reference set (per group with ``tau_by``): the
      reference model says which sequences are predictable text, the shift maps its scale onto the
      model's. Returns (None, "") when every target is the run's τ."""
    from unmemorize.thresholds import tau_per_sequence

    n = len(inputs.forget)
    tau_seq, how = np.full(n, inputs.tau), ""
    if spec.tau_by:
        if spec.tau_by not in inputs.forget.meta.columns or spec.tau_by not in inputs.reference.meta.columns:
            raise UserError(f"--tau-by {spec.tau_by}: both the forget and the reference set need a column "
                            f"{spec.tau_by!r}")
        tau_seq, by_group, missing = tau_per_sequence(inputs.forget.meta[spec.tau_by], inputs.reference.meta[spec.tau_by],
                                                      inputs.reference_g, inputs.tau)
        how = f"τ per {spec.tau_by} (" + ", ".join(f"{g} {t:.3f}" for g, t in by_group.items()) + ")"
        if missing:
            inputs.notes.append(f"--tau-by {spec.tau_by}: no reference text for {', '.join(missing)}; those sequences "
                                f"are held to the global τ = {inputs.tau:.3f}")
    uses_targets = spec.stop == "target" or any(p.selector.startswith("target") for p in _method(spec).phases)
    if spec.target_rule == "reference-model" and uses_targets:  # SGA's relative γ stays relative to τ
        ref_lm = res.model(spec.model.replace(path=spec.target_model))
        from unmemorize.attacks.run import same_tokenizer

        if not same_tokenizer(inputs.lm.tokenizer, ref_lm.tokenizer):
            raise UserError(f"the reference model {ref_lm.path} has another tokenizer than {inputs.lm.path}: its MA "
                            "on the same text is not on the same tokens")
        ref_key = _model_key(spec.model.replace(path=spec.target_model))
        # one teacher-forced pass gives its MA on F and the tokens it misses (used under --tokens memorized)
        ma_f, missed = res.memo((ref_key, "forget_ma_missed", inputs.forget.sha256, tuple(inputs.forget.ids),
                                 spec.length, spec.training.parity),
                                lambda: _ma_and_missed(ref_lm.model, inputs.forget, spec, res.progress))
        if spec.method.tokens == "memorized":
            inputs.ascent_positions = missed
            share = float(missed.sum() / max(1, int((inputs.forget.lengths - 1).clamp(min=0).sum())))
            inputs.notes.append(f"ascent on memorized tokens only: the {100 * share:.0f} % of the forget set's tokens "
                                f"that {ref_lm.name} does not predict")
        ma_r = res.memo((ref_key, "reference_ma", str(spec.reference), spec.reference_limit, spec.length,
                         spec.training.parity),
                        lambda: _ma(ref_lm.model, inputs.reference, spec, res.progress))
        tau_ref = np.full(n, float(np.nanmean(ma_r)))
        if spec.tau_by:
            tau_ref = tau_per_sequence(inputs.forget.meta[spec.tau_by], inputs.reference.meta[spec.tau_by], ma_r,
                                       float(np.nanmean(ma_r)))[0]
        targets = np.clip(np.where(np.isnan(ma_f), tau_seq, ma_f + tau_seq - tau_ref), 0.0, 1.0)
        return targets, (f"MA of {ref_lm.name} (never saw the forget set) + (τ − its τ = "
                         f"{float(np.nanmean(ma_r)):.3f})" + (f"; {how}" if how else ""))
    return (tau_seq, how) if spec.tau_by else (None, "")


def check_oracle(lm: LoadedModel, oracle: LoadedModel) -> None:
    """The oracle must be the same kind of model, with the same tokenizer, planted from the same base."""
    from unmemorize.attacks.run import same_tokenizer
    from unmemorize.lab.plant import read_plant_manifest

    if lm.model.config.model_type != oracle.model.config.model_type or \
            lm.model.get_input_embeddings().num_embeddings != oracle.model.get_input_embeddings().num_embeddings:
        raise UserError(f"the oracle {oracle.path} is another architecture ({oracle.model.config.model_type}) than the "
                        f"model {lm.path} ({lm.model.config.model_type}): it cannot judge it")
    if not same_tokenizer(lm.tokenizer, oracle.tokenizer):
        raise UserError(f"the oracle {oracle.path} has another tokenizer than the model {lm.path}: their likelihoods "
                        "of the same token ids are not comparable")
    mine, theirs = read_plant_manifest(Path(lm.path)), read_plant_manifest(Path(oracle.path))
    if mine is not None and theirs is not None:
        a, b = mine["inputs"]["model"]["fingerprint"], theirs["inputs"]["model"]["fingerprint"]
        if a != b:
            raise UserError(f"the oracle {oracle.path} was planted from another base model than {lm.path} "
                            f"(fingerprints {b[:12]} and {a[:12]}): it is not this model's retrain oracle")


def retain_members(oracle: LoadedModel, forget, tokenizer, length: int):
    """The members planted in both the model and its oracle (the oracle's manifest names them), or None
    for an oracle that does not come from the lab."""
    from unmemorize.data import load_sequences
    from unmemorize.lab.plant import members_of, read_plant_manifest

    manifest = read_plant_manifest(Path(oracle.path))
    if manifest is None or not manifest.get("retain"):
        return None
    # the copy kept in the planted folder first; the file they were planted from may be gone
    source = members_of(Path(oracle.path)) or Path(manifest["inputs"]["members"]["source"])
    if not source.exists():
        return None
    members = load_sequences(source, tokenizer, length)
    keep = set(manifest["retain"]) - set(forget.ids)
    rows = [i for i, sid in enumerate(members.ids) if sid in keep]
    return members.subset(rows) if rows else None


def _attack_sets(spec: RunSpec, inputs: _Inputs) -> None:
    """The members and non-members the attacks compare: matched by kind of text where the sets say it."""
    from unmemorize.attacks.matching import matched_sets

    inputs.attack_members, inputs.attack_nonmembers, note = matched_sets(inputs.forget, inputs.reference,
                                                                         spec.attacks.match_by, spec.seed)
    if note:
        inputs.notes.append(note)
    if spec.attacks.fprs and attack_plan(spec, True)[0] is not None:
        from unmemorize.attacks.scoring import check_fprs

        cut = note if len(inputs.attack_nonmembers) < len(inputs.reference) else None  # the matching left too few
        check_fprs(tuple(spec.attacks.fprs), len(inputs.attack_nonmembers), cut)  # before any work, not NaN at the end


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


def _ma_and_missed(model, seqs, spec: RunSpec, progress):
    """MA of ``model`` (one that never saw ``seqs``) on each sequence, and the tokens it does not predict."""
    from unmemorize.memorization import ProfileOptions, greedy_pass
    from unmemorize.models import check_context
    from unmemorize.unlearning.loop import memorized_positions

    check_context(model, seqs.length)  # as profile() does: a clear error, not an index error, on a short context
    opts = ProfileOptions(metrics=("ma",), batch_size=spec.training.micro_batch, parity=spec.training.parity)
    greedy, ma, _ = greedy_pass(model, seqs, opts, progress)
    return ma.numpy(), memorized_positions(greedy, seqs.input_ids, seqs.lengths)


def _ma(model, seqs, spec: RunSpec, progress) -> np.ndarray:
    from unmemorize.memorization import ProfileOptions, profile

    opts = ProfileOptions(metrics=("ma",), batch_size=spec.training.micro_batch, parity=spec.training.parity)
    return profile(model, seqs, opts, progress)["ma"].to_numpy()


def _shares_reference_pass(spec: RunSpec, before: bool = False) -> bool:
    """Whether the pass that measures a model's MA on the reference set also gives the attacks their
    token statistics of the non-members, so that no non-member is passed twice by one model: when the
    attacks will run on that model (``before``: the original, whose attacks may be switched off), and
    not under parity, whose MA counts padding as the original code did (the attacks never do)."""
    opts, _ = attack_plan(spec, spec.reference is not None)
    return opts is not None and not spec.training.parity and (spec.attacks.before or not before)


def _reference_stats(model, seqs, spec: RunSpec, progress):
    """The attacks' token statistics of ``model`` on the reference set (MA in ``.ma``: the same g as
    :func:`_ma` without parity), with the attacks' top-k, temperature and batch size."""
    from unmemorize.attacks.tokens import attack_statistics
    from unmemorize.models import check_context

    check_context(model, seqs.length)
    return attack_statistics(model, seqs, spec.attacks, progress, "on the reference set")


def _reference_pass(model, seqs, spec: RunSpec, progress):
    """(MA on the reference set, token statistics of the same pass or None) for a model the attacks will run on."""
    if _shares_reference_pass(spec):
        found = _reference_stats(model, seqs, spec, progress)
        return found.ma, found
    return _ma(model, seqs, spec, progress), None


# ---------------------------------------------------------------- before and after


def _extra_metrics(spec: RunSpec) -> tuple[str, ...]:
    """Metrics beyond the loop's own MA and loss: a full profile before and after."""
    return tuple(m for m in spec.metrics if m not in ("ma", "loss"))


def _profile(model, spec: RunSpec, forget, progress, band=None):
    """The full profile; EL (when asked for) only at the band's top, as in the audit."""
    from unmemorize.memorization import ProfileOptions, profile

    return profile(model, forget, ProfileOptions(metrics=tuple(dict.fromkeys(("ma", "loss", *spec.metrics))),
                                                 batch_size=spec.training.micro_batch, parity=spec.training.parity),
                   progress, band)


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
    return AttackOptions(**spec.attacks.model_dump(), band=spec.band, seed=spec.seed), ""


def _perturber(opts, refill: LoadedModel):
    from unmemorize.attacks import build_perturber

    return build_perturber(opts, refill.model, refill.tokenizer, refill.fingerprint)


def _refill_model(spec: RunSpec, res: Resources, inputs: _Inputs) -> LoadedModel | None:
    """Who refills MIAU's neighbours: the named refill model, else the oracle (it never saw the members),
    else None — the original, which did, and pulls its neighbours towards the memorized words."""
    if spec.attacks.refill_model is not None:
        return res.model(spec.model.replace(path=spec.attacks.refill_model))
    return inputs.oracle


def _attack(target, tokenizer, inputs: _Inputs, opts, original: LoadedModel | None, refill: LoadedModel, progress,
            log=None, reference_stats=None):
    """The planned attacks on ``target``; the reference attack only with an original to compare with.
    ``reference_stats``: ``target``'s token statistics on the whole reference set, from its MA pass."""
    from unmemorize.attacks import ATTACKS, run_attacks
    from unmemorize.attacks.registry import NONMEMBERS

    chosen = opts.names if opts.names is not None else tuple(ATTACKS)
    names = tuple(n for n in chosen if original is not None or not ATTACKS[n].needs_original)
    if not names:
        return None
    pert = _perturber(opts, refill) if "miau" in names else None
    # τ of the threshold attack is the run's τ (from the reference before unlearning) both times
    opts = opts.replace(names=names, tau=opts.tau if opts.tau is not None else inputs.tau)
    opts = opts.replace(band=opts.band.at(opts.tau))
    return run_attacks(target, tokenizer, inputs.attack_members, inputs.attack_nonmembers,
                       original=None if original is None else original.model,
                       original_tokenizer=None if original is None else original.tokenizer,
                       options=opts, perturber=pert, progress=progress, log=log,
                       stats=None if reference_stats is None else {NONMEMBERS: (inputs.reference.ids, reference_stats)})


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
    retain_g: np.ndarray | None = None  # MA on each retain member
    refill: LoadedModel | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _OracleStage:
    """What the oracle shows on the same sets: the level every verdict is judged against."""

    ma: np.ndarray  # per forget sequence
    loss: np.ndarray
    reference_g: np.ndarray | None = None
    retain_g: np.ndarray | None = None
    attacks: Any = None
    utility: dict | None = None


def _before(spec: RunSpec, inputs: _Inputs, res: Resources) -> _Stage:
    """What the original model shows, before unlearning (shared by every run of a grid that starts from it)."""
    from unmemorize.attacks.perturb import LM_PERTURBERS

    lm, mk = inputs.lm, _model_key(spec.model)
    st = _Stage(reference_g=inputs.reference_g)
    if _extra_metrics(spec):
        st.profile = res.memo((mk, "profile", inputs.forget.sha256, tuple(inputs.forget.ids), spec.metrics,
                               spec.training.parity, inputs.band),
                              lambda: _profile(lm.model, spec, inputs.forget, res.progress, inputs.band))
    if inputs.retain_members is not None:
        st.retain_g = res.memo((mk, "retain_members", inputs.retain_members.sha256, tuple(inputs.retain_members.ids)),
                               lambda: _ma(lm.model, inputs.retain_members, spec, res.progress))
    opts, note = attack_plan(spec, inputs.reference is not None)
    if note:
        st.notes.append(note)
    st.notes += inputs.notes
    if opts is not None:
        st.refill = _refill_model(spec, res, inputs)
        miau = opts.names is None or "miau" in opts.names
        if miau and opts.perturber in LM_PERTURBERS and st.refill is None:
            st.notes.append("MIAU's neighbours were refilled by the original model, which saw the members: its refills "
                            "lean towards the memorized words (pass an oracle or --refill-model: a model that never "
                            "saw them)")
        if spec.attacks.before:
            refill = st.refill or lm
            st.attacks = res.memo((mk, "attacks", inputs.forget.sha256, tuple(inputs.forget.ids),
                                   inputs.reference.sha256, spec.attacks.model_dump_json(), spec.seed, inputs.tau,
                                   inputs.band),
                                  lambda: _attack(lm.model, lm.tokenizer, inputs, opts, None, refill, res.progress,
                                                  res.log, inputs.reference_stats))
    if spec.utility.tasks:
        st.utility = res.memo((mk, "utility", spec.utility.model_dump_json()),
                              lambda: _utility(lm.model, lm.tokenizer, spec, res.progress))
    return st


def _oracle_stage(spec: RunSpec, inputs: _Inputs, res: Resources, before: _Stage) -> _OracleStage | None:
    """The oracle on the forget set, the reference, the retain members, under the same attacks (with the
    original as the reference attack's reference) and utility tasks — once per oracle and sets."""
    o = inputs.oracle
    if o is None:
        return None
    ok = _model_key(spec.model.replace(path=spec.oracle))

    def compute() -> _OracleStage:
        prof = _profile(o.model, spec.model_copy(update={"metrics": ("ma", "loss")}), inputs.forget, res.progress)
        st = _OracleStage(ma=prof["ma"].to_numpy(), loss=prof["loss"].to_numpy())
        ref_stats = None
        if inputs.reference is not None:
            st.reference_g, ref_stats = _reference_pass(o.model, inputs.reference, spec, res.progress)
        if inputs.retain_members is not None:
            st.retain_g = _ma(o.model, inputs.retain_members, spec, res.progress)
        opts, _ = attack_plan(spec, inputs.reference is not None)
        if opts is not None:
            original = res.model(spec.model)
            st.attacks = _attack(o.model, o.tokenizer, inputs, opts, original, before.refill or original, res.progress,
                                 res.log, ref_stats)
        if spec.utility.tasks:
            st.utility = _utility(o.model, o.tokenizer, spec, res.progress)
        return st

    return res.memo((ok, "oracle", _model_key(spec.model), inputs.forget.sha256, tuple(inputs.forget.ids),
                     spec.reference and str(spec.reference), spec.reference_limit, spec.attacks.model_dump_json(),
                     spec.seed, inputs.tau, inputs.band, spec.utility.model_dump_json(), spec.training.parity), compute)


def _unlearn(spec: RunSpec, inputs: _Inputs, res: Resources, checkpoint_dir: Path):
    from unmemorize.unlearning import unlearn

    method = _method(spec)
    in_place = not res.keep_original
    try:
        result = unlearn(inputs.lm.model, inputs.forget, tau=inputs.tau, method=spec.method, band=inputs.band,
                         stop=spec.stop, seed=spec.seed, options=spec.training, retain=inputs.retain,
                         targets=inputs.targets, ascent_positions=inputs.ascent_positions,
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
    if result.method.decoding:  # DPD: attacked and evaluated through its decoding, as the paper ran it
        from unmemorize.decoding import DPDModel

        d = result.method.dpd
        model = DPDModel(model, d["lambda"], d["mode"])
    ref_stats = None
    if inputs.reference is not None:
        st.reference_g, ref_stats = _reference_pass(model, inputs.reference, spec, res.progress)
    if _extra_metrics(spec):
        st.profile = _profile(model, spec, inputs.forget, res.progress, inputs.band)
    opts, note = attack_plan(spec, inputs.reference is not None)
    if opts is not None:
        # the original for the reference attack (and as refill model unless another is named): the one
        # in memory, or its untouched files when this run unlearned it in place
        original = res.model(spec.model)
        refill = _refill_model(spec, res, inputs) or original
        st.attacks = _attack(model, tok, inputs, opts, original, refill, res.progress, res.log, ref_stats)
        st.refill = refill if refill is not original else None
        if not res.keep_original:
            res.forget_model(spec.model)
    if inputs.retain_members is not None:
        st.retain_g = _ma(model, inputs.retain_members, spec, res.progress)
    if spec.utility.tasks:
        st.utility = _utility(model, tok, spec, res.progress)
    if result.method.decoding:
        st.notes.append(f"DPD (λ = {d['lambda']:g}, {d['mode']} mixing): the attacks score, and the utility tasks "
                        "read, the mixed next-token distribution; greedy decoding is the plain model's (the mixing "
                        "keeps the order of the tokens), so greedy extraction and greedy dialogue are unchanged")
    return st


# ---------------------------------------------------------------- the record and the folder


def _record(spec: RunSpec, inputs: _Inputs, result, before: _Stage, after: _Stage, oracle: _OracleStage | None,
            key: str, labels: dict | None, order: tuple[int, ...], timings: dict[str, float]) -> RunRecord:
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
    attacks.notes = [n for n in dict.fromkeys(attacks.notes) if n not in inputs.notes]  # those go to the run's notes
    if attacks.before is not None or attacks.after is not None:
        from unmemorize.attacks.scoring import DEFAULT_FPRS

        attacks.fprs = list(spec.attacks.fprs or DEFAULT_FPRS)  # unresolvable ones too: a column of NaN
    utility = UtilityRecord(before=None if before.utility is None else UtilitySummary.of(before.utility),
                            after=None if after.utility is None else UtilitySummary.of(after.utility))
    lab = labels or {"model": inputs.lm.name, "forget": Path(spec.forget.path).stem, "split": "",
                     "method": result.method.name, "stop": spec.stop, "seed": spec.seed}
    return RunRecord(key=key, labels=Labels(**lab), order=list(order), spec=spec.model_dump(mode="json"),
                     size=len(inputs.forget), tau=inputs.tau, tau_from=inputs.tau_from,
                     targets_from=inputs.targets_from,
                     band=[inputs.band.lo, inputs.band.hi],
                     reference_before=None if before.reference_g is None else summary_of(before.reference_g, inputs.tau,
                                                                                          inputs.band),
                     reference_after=None if after.reference_g is None else summary_of(after.reference_g, inputs.tau,
                                                                                        inputs.band),
                     unlearning=unlearning, attacks=attacks, utility=utility,
                     oracle=None if oracle is None else oracle_record(spec, inputs, result, before, after, oracle),
                     # the inputs' notes (retain text, targets, tokens) are about the run, not only its attacks
                     notes=list(dict.fromkeys(inputs.notes + after.notes)), device=device_description(),
                     timings=timings)


def oracle_record(spec: RunSpec, inputs: _Inputs, result, before: _Stage, after: _Stage, o: _OracleStage):
    """The unlearned model judged against the oracle: every criterion with its interval and its verdict."""
    from unmemorize import oracle as judge
    from unmemorize.record import Interval, OracleAttack, OracleRecord
    from unmemorize.stats import membership_score
    from unmemorize.thresholds import outlier_count

    boot, seed = spec.attacks.bootstrap, spec.seed
    iv = lambda g: Interval(value=_num(g.value), low=_num(g.low), high=_num(g.high))  # noqa: E731
    ma_u, loss_u = result.after["ma"].to_numpy(), result.after["loss"].to_numpy()
    stat, p = judge.forget_quality(loss_u, o.loss)
    gap, worst = judge.ma_gap(ma_u, o.ma, boot, seed)
    within = int((np.abs(ma_u - o.ma) <= judge.MA_TOLERANCE).sum())
    verdicts = [judge.verdict_forget_quality(stat, p), judge.verdict_ma_gap(gap, worst, within, len(ma_u))]
    rec = OracleRecord(path=str(spec.oracle), forget_quality_p=_num(p), ks_statistic=_num(stat), ma_gap=iv(gap),
                       ma_gap_max=_num(worst), within_tolerance=within, ma_oracle_mean=_num(np.nanmean(o.ma)),
                       loss_oracle_mean=_num(np.nanmean(o.loss)), oracle_c=sum(outlier_count(o.ma, inputs.band)),
                       reference_ma_oracle=None if o.reference_g is None else _num(np.nanmean(o.reference_g)))
    if after.attacks is not None and o.attacks is not None:
        for name, (auc_u, auc_o, g) in judge.attack_gaps(after.attacks.scores, o.attacks.scores, boot, seed).items():
            rec.attacks[name] = OracleAttack(auc=_num(auc_u), oracle_auc=_num(auc_o), gap=iv(g),
                                             membership_score=_num(membership_score(auc_u)),
                                             oracle_membership_score=_num(membership_score(auc_o)),
                                             indistinguishable=None if np.isnan(g.low) else g.includes_zero)
            verdicts.append(judge.verdict_attack(name, auc_u, auc_o, g))
    if o.retain_g is not None and before.retain_g is not None and after.retain_g is not None:
        rg = judge.mean_difference(after.retain_g, o.retain_g, boot, seed)
        rec.retain_members, rec.retain_gap = len(o.retain_g), iv(rg)
        rec.retain_ma_before, rec.retain_ma_after = _num(np.nanmean(before.retain_g)), _num(np.nanmean(after.retain_g))
        rec.retain_ma_oracle = _num(np.nanmean(o.retain_g))
        verdicts.append(judge.verdict_retain(rg, rec.retain_ma_after, rec.retain_ma_oracle, rec.retain_ma_before))
    if o.utility is not None and after.utility is not None:
        rec.utility = UtilitySummary.of(o.utility)
        mine = UtilitySummary.of(after.utility).aggregates
        for agg, value in rec.utility.aggregates.items():
            if value is not None and mine.get(agg) is not None:
                verdicts.append(judge.verdict_utility(agg, mine[agg], value))
    rec.verdicts = verdicts
    return rec


def _num(v) -> float | None:
    v = None if v is None else float(v)
    return None if v is None or np.isnan(v) else v


def _jsonable(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _write(run, spec: RunSpec, inputs: _Inputs, result, before: _Stage, after: _Stage, oracle: _OracleStage | None,
           record: RunRecord, command: str, probe_sections: list) -> None:
    from unmemorize.attacks import comparison_table, write_results
    from unmemorize.models import save_model
    from unmemorize.runs import build_manifest, write_frame
    from unmemorize.unlearning.report import before_after_histogram, trajectory_plot
    from unmemorize.utility import save_utility

    frames = profiles(result, inputs.forget, before.profile, after.profile)
    if oracle is not None:  # each sequence beside where a model that never saw it is
        frames[1]["ma_oracle"], frames[1]["loss_oracle"] = oracle.ma, oracle.loss
        frames[1]["ma_gap"] = frames[1]["ma"] - oracle.ma
    write_frame(run.path("profile_before"), frames[0])
    write_frame(run.path("profile_after"), frames[1])
    write_frame(run.path("trajectory"), result.trajectory)
    write_frame(run.path("steps"), result.steps_table())
    images = {"per-sequence MA at every step, with τ and the band": trajectory_plot(run.path("trajectory.png"), result),
              "MA before and after": before_after_histogram(run.path("histogram.png"), result)}
    if oracle is not None:
        from unmemorize.oracle import MA_TOLERANCE
        from unmemorize.report.plots import oracle_scatter

        images["oracle"] = oracle_scatter(run.path("oracle.png"), oracle.ma, result.before["ma"].to_numpy(),
                                          result.after["ma"].to_numpy(), inputs.band, MA_TOLERANCE)
    paths = {}
    for prefix, r in (("before_", before.attacks), ("", after.attacks)):
        if r is not None:
            paths[prefix] = write_results(r, run.tmp, prefix=prefix)
    if oracle is not None and oracle.attacks is not None:
        paths["oracle_"] = write_results(oracle.attacks, run.tmp, prefix="oracle_")
    both = {label: r for label, r in (("original", before.attacks), ("unlearned", after.attacks),
                                      ("oracle", oracle.attacks if oracle is not None else None)) if r is not None}
    if both:
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
                   "refill_model": None if refill is None else refill.describe(),
                   "oracle": None if inputs.oracle is None else inputs.oracle.describe(),
                   "retain_members": None if inputs.retain_members is None else inputs.retain_members.describe()}
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
                     paths, before.utility, after.utility, probe_sections, subtitle=f"model {inputs.lm.name} · forget "
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
        if result.targets is not None and (result.stop_rule == "target" or np.ptp(result.targets) > 0):
            df["target"] = df["id"].map(dict(zip(forget.ids, result.targets))).to_numpy()  # where it was taken to
        frames.append(df)
    return frames[0], frames[1]
