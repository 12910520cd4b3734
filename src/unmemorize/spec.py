"""What a run is: typed descriptions of one unlearning run, one attack run, and a grid of runs.

A run is described once, as a :class:`RunSpec`: the model, the forget/reference/retain sets, τ and
the band, the method, the stop rule, the harness, the attacks, the utility tasks. ``unmemorize
unlearn`` builds it from flags (generated from these fields), ``unmemorize run`` expands a YAML
:class:`ExperimentConfig` (lists where a spec has one value) into many, the demo and the benchmarks
build them in code; :func:`unmemorize.recipe.execute` runs every one of them the same way.

YAML keys are the field names (``training.lr``, ``methods[1].switch_below``); every error names the
file, the key and what would be accepted, because a typo found after two hours of unlearning is two
hours lost. Two levels of checking:

* validation of the config itself (unknown keys, wrong types, impossible values, a method option
  the method does not have, an unknown task or attack, a micro-batch that does not divide the
  forget set): always fatal;
* :func:`missing_inputs`: what must exist on this machine to *run* (model folders, ``${VAR}``
  placeholders for user-supplied models and data). ``unmemorize run --check`` lists them without
  failing; ``unmemorize run`` refuses.

Relative paths in a config file are anchored at the file's folder; ``${VAR}`` is read from the
environment (an unset variable is a missing input, not a syntax error).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import field_validator, model_validator

from unmemorize.attacks.registry import AttackSettings
from unmemorize.errors import UserError
from unmemorize.memorization import Metric, known_metrics
from unmemorize.models import ModelSource
from unmemorize.options import KeyedError, Options, as_list, option, validate
from unmemorize.probes.options import ProbeSettings
from unmemorize.thresholds import Band
from unmemorize.unlearning.loop import STOP_RULES, UnlearnOptions
from unmemorize.unlearning.methods import MethodSpec
from unmemorize.utility.suite import EvalOptions

StopRule = Literal["mean", "per-sequence", "target"]
TargetRule = Literal["tau", "reference-model"]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_VAR_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")  # ${VAR:-default}
# every attack but sampling extraction (N decoded samples per prefix: minutes per sequence on a CPU)
RUN_ATTACKS = ("miau", "threshold", "loss", "zlib", "min-k", "min-k++", "reference")


class ForgetSource(Options):
    """The sequences to forget (YAML ``forget:``; a bare string is the path)."""

    path: Path = option(..., "Sequences to forget: Jang CSV, JSONL, text file or folder.", "--forget", "-f")
    sample: int | None = option(None, "Forget a seeded sample of this many sequences of the file (e.g. the paper's "
                                      "16 of 128).", "--forget-sample", ge=1, allowed="a positive number of sequences")
    sample_seed: int = option(0, "Seed of that sample.", "--forget-sample-seed")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"path": value} if isinstance(value, (str, os.PathLike)) else value


class UtilitySettings(EvalOptions):
    """Utility tasks run on the model before and after unlearning (YAML ``utility:``; none by default)."""

    tasks: tuple[str, ...] = option((), "Utility tasks before and after unlearning: paper, classification, dialogue, "
                                        "perplexity, all, lab or task names (none: skip).", "--utility-tasks", split=True)
    data_dir: Path | None = option(None, "Folder of the tasks' data, laid out as docs/data.md says.", "--utility-data")

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_list(cls, v):
        return () if v is None else as_list(v)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v):
        from unmemorize.utility.tasks import resolve_tasks

        if v:
            try:
                resolve_tasks(list(v))
            except UserError as e:
                raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _data_for_tasks(self):
        from unmemorize.utility.tasks import needs_folder

        if self.tasks and self.data_dir is None and needs_folder(self.tasks, self.data_source):
            raise KeyedError("data_dir", "utility tasks need a data folder (--utility-data) laid out as docs/data.md says")
        return self


# flags of the utility section carry its name (--utility-mode, …): `evaluate` uses the bare ones
UTILITY_FLAGS = {name: f"--utility-{name.replace('_', '-')}" for name in EvalOptions.model_fields}


def _path_or_none(v):
    return None if v in (None, "") else v


class _Shared(Options):
    """The settings a single run and a grid of runs have in common."""

    reference: Path | None = option(None, "Unseen text of the same form: τ = the model's mean MA on it, and the "
                                          "attacks' non-members.", "--reference", "-r")
    reference_limit: int | None = option(None, "Use only the first N reference sequences.", ge=1,
                                         allowed="a positive number of sequences")
    retain: Path | None = option(None, "Normal/retain data for ga+mismatch, npo and target (e.g. TruthfulQA.csv, or "
                                       "the members to keep).")
    length: int = option(200, "Tokens per sequence T (the paper: 200).", ge=2,
                         allowed="an integer ≥ 2 (tokens per sequence)")
    tau: float | None = option(None, "τ given directly (instead of the model's mean MA on the reference).",
                               ge=0.0, le=1.0, allowed="a number in [0, 1]")
    band: Band = option(Band("tau-0.15", "tau+0.3"), "The acceptable band of g(x) (default relative to τ: the "
                                                     "paper's 0.15 / 0.60 at τ = 0.3).")
    tau_by: str | None = option(None, "A column of both the forget and the reference set (e.g. corpus): τ per group; "
                                      "each sequence's target and a selection threshold relative to τ (tau+0.4) use its "
                                      "group's.", exclude_if=lambda v: v is None)
    # (left out of the dumped spec at their defaults, so that the run keys of earlier runs stay valid)
    target_rule: TargetRule = option("tau", "Each sequence's target level: tau (τ of its kind) or reference-model (the "
                                            "MA of a model that never saw the forget set, shifted by τ minus that "
                                            "model's τ on the reference).", exclude_if=lambda v: v == "tau")
    target_model: str | None = option(None, "target_rule reference-model: a model that never saw the forget set and "
                                            "shares the tokenizer (e.g. the base model before fine-tuning).",
                                exclude_if=lambda v: v is None)
    training: UnlearnOptions = option(UnlearnOptions(), "The unlearning harness.")
    metrics: tuple[Metric, ...] = option(("ma", "loss"), "Before/after profile metrics: ma,loss[,el,extraction].",
                                         split=True)
    attacks: AttackSettings = option(AttackSettings(names=RUN_ATTACKS), "Attacks on the original and the unlearned "
                                                                         "model (members = forget set, non-members = "
                                                                         "the reference).")
    utility: UtilitySettings = option(UtilitySettings(), "Utility tasks before and after unlearning.")
    save: bool = option(False, "Write the unlearned model (safetensors) into the run folder.")
    oracle: str | None = option(None, "The retrain oracle: the model planted like this one without the forget set "
                                      "(`unmemorize plant --forget`, its oracle/ folder); every verdict is then judged "
                                      "against it, and it refills MIAU's neighbours.")
    # robustness probes of the unlearned model; left out of the dumped spec (and so of run keys) when none is asked for
    probes: ProbeSettings = option(ProbeSettings(), "Robustness probes of the unlearned model (docs/method.md §3.8).",
                                   exclude_if=lambda p: not p.names)

    @field_validator("reference", "retain", mode="before")
    @classmethod
    def _no_empty_path(cls, v):
        return _path_or_none(v)

    _metrics = field_validator("metrics", mode="before")(known_metrics)


def _check_targets(spec) -> None:
    if spec.tau_by and spec.reference is None:
        raise ValueError("tau_by (--tau-by) needs a reference set: τ of each group is measured on it")
    if spec.target_rule == "reference-model":
        if not spec.target_model:
            raise ValueError("target_rule reference-model needs target_model (--target-model): a model that never "
                             "saw the forget set")
        if spec.reference is None:
            raise ValueError("target_rule reference-model needs a reference set to calibrate the reference model on")
    elif spec.target_model:
        raise ValueError("target_model applies to target_rule reference-model")
    method = getattr(spec, "method", None)
    if method is not None and getattr(method, "tokens", "all") == "memorized" and spec.target_rule != "reference-model":
        raise ValueError("method tokens: memorized needs target_rule reference-model (--target-rule reference-model "
                         "--target-model M): the model that never saw the forget set says which tokens were memorized")


class RunSpec(_Shared):
    """One unlearning run: everything that decides its numbers (and where its inputs are)."""

    model: ModelSource = option(ModelSource(), "The model to unlearn from (never modified).")
    forget: ForgetSource = option(..., "The sequences to forget.")
    method: MethodSpec = option(MethodSpec(), "The unlearning method and its constants.")
    stop: StopRule | None = option(None, "mean (the paper: mean MA < τ), per-sequence (every sequence below the "
                                         "band's top) or target (every sequence within ε of its own target). Default: "
                                         "the method's own (target for target, else mean).")
    seed: int = option(42, "Random seed: micro-batch partitions, retain draws, LoRA init, the attacks' draws.")

    @model_validator(mode="after")
    def _consistent(self):
        from unmemorize.unlearning.methods import resolve_method

        m = resolve_method(self.method)
        if self.retain is not None and not m.uses_retain:
            raise ValueError(f"retain data (--retain) is used by ga+mismatch, npo and target, not by {m.name}")
        if m.decoding and self.save:
            raise ValueError("DPD changes decoding, not weights: there is no unlearned model to save")
        if self.reference is None and self.tau is None:
            raise ValueError("give a reference set of unseen text (--reference; τ = the model's mean MA on it) or "
                             "τ itself (--tau)")
        if self.stop is None:
            object.__setattr__(self, "stop", m.stop_rule or "mean")  # the method's own rule unless one is asked for
        _check_targets(self)
        return self


class AttackRunSpec(Options):
    """One attack run (``unmemorize attack``): can an attacker tell members from non-members?"""

    model: ModelSource = option(ModelSource(), "The model under attack.")
    original: str | None = option(None, "The model before unlearning: enables the reference attack and refills "
                                        "MIAU's neighbours.")
    forget: Path = option(..., "Forget set (the members): CSV, JSONL, text file or folder.", "--forget", "-f")
    reference: Path = option(..., "Unseen text of the same form (the non-members).", "--reference", "-r")
    length: int = option(200, "Tokens per sequence T (the paper: 200).", ge=2)
    tau: float | None = option(None, "Threshold attack: τ (default: mean g on the reference set).", ge=0.0, le=1.0)
    band: Band = option(Band("tau-0.15", "tau+0.3"), "Threshold attack: the acceptable band (relative to τ by "
                                                     "default).")
    seed: int = option(0, "Random seed of the attacks (neighbours, samples, bootstrap).")
    oracle: str | None = option(None, "The retrain oracle (a model that never saw the members): the same attacks on "
                                      "it are the baseline, and it refills MIAU's neighbours.")
    attacks: AttackSettings = option(AttackSettings(), "The attacks and their settings.")

    def attack_options(self):
        from unmemorize.attacks.registry import AttackOptions

        return AttackOptions(**self.attacks.model_dump(), tau=self.tau, band=self.band, seed=self.seed)


# ---------------------------------------------------------------- a grid of runs (YAML)


class ModelEntry(ModelSource):
    name: str = option("", "Label in tables (default: the folder name).", cli=False)
    tau: float | None = option(None, "τ for this model (overrides the top-level tau).", ge=0.0, le=1.0, cli=False,
                               allowed="a number in [0, 1]")


class ForgetEntry(ForgetSource):
    path: Path = option(..., "The forget file; may hold {split} (Jang's lm_extraction_32_{split}.csv).")
    name: str = option("", "Label in tables (default: the file stem without the split).", cli=False)
    splits: tuple[int | str, ...] = option((0,), "The splits put into {split}.", cli=False)

    @field_validator("splits", mode="before")
    @classmethod
    def _split_list(cls, v):
        return as_list(v)


class MethodEntry(MethodSpec):
    label: str = option("", "Row label in tables (default: the name).", cli=False)
    lr: float | None = option(None, "This method's learning rate (default: training.lr).", gt=0, cli=False,
                              allowed="a positive number")
    micro_batch: int | None = option(None, "This method's micro-batch (default: training.micro_batch).", ge=1,
                                     cli=False, allowed="a positive integer")

    def spec(self) -> MethodSpec:
        return MethodSpec(**{k: getattr(self, k) for k in MethodSpec.model_fields})


class ExperimentConfig(_Shared):
    """A grid: models × forget sets (× splits) × methods × stop rules × seeds, plus the shared settings."""

    name: str = option("", "The experiment's name (the default output folder).", cli=False)
    description: str = option("", "What the experiment is for.", cli=False)
    models: tuple[ModelEntry, ...] = option(..., "The models (or 'model:' for one).", cli=False)
    forget: tuple[ForgetEntry, ...] = option(..., "The forget sets with their splits.", cli=False)
    methods: tuple[MethodEntry, ...] = option(..., "The methods (or 'method:' for one).", cli=False)
    stop: tuple[StopRule, ...] = option(("mean",), "The stop rules.", cli=False)
    seeds: tuple[int, ...] = option((42,), "The seeds.", cli=False)
    source: str = option("", "The YAML file (set when it is read).", yaml=False)

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, raw):
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for one, many in (("model", "models"), ("method", "methods")):
            if one in raw:
                if many in raw:
                    raise ValueError(f"give either '{one}' or '{many}', not both")
                raw[many] = raw.pop(one)
        for key in ("models", "forget", "methods", "stop", "seeds"):
            if key in raw:
                raw[key] = as_list(raw[key])
        return raw

    @field_validator("models", "forget", "methods", "stop", "seeds")
    @classmethod
    def _not_empty(cls, v):
        if not v:
            raise ValueError("the list is empty; the grid needs at least one entry")
        return v

    @model_validator(mode="after")
    def _grid(self):
        _unique("models", [model_label(m) for m in self.models], "name")
        _unique("forget", [forget_label(f) for f in self.forget], "name")
        _unique("methods", [m.label or m.name for m in self.methods], "label")
        for i, m in enumerate(self.models):
            if m.tau is None and self.tau is None and self.reference is None:
                raise KeyedError(f"models[{i}]", "τ is unknown: give 'tau' (for this model or at the top level) or a "
                                                "'reference' file of unseen text to compute it from")
        for i, f in enumerate(self.forget):
            if len(f.splits) > 1 and "{split}" not in str(f.path):
                raise KeyedError(f"forget[{i}].path", f"{len(f.splits)} splits are listed but the path has no "
                                                     "'{split}' placeholder to put them in (e.g. lm_extraction_32_{split}.csv)")
            if len(set(map(str, f.splits))) != len(f.splits):
                raise KeyedError(f"forget[{i}].splits", "a split is listed twice")
        for i, m in enumerate(self.methods):
            from unmemorize.unlearning.methods import resolve_method

            if resolve_method(m.spec()).needs_retain and self.retain is None:
                raise KeyedError(f"methods[{i}].name", f"method {m.name} needs retain data: give a top-level 'retain' "
                                                      "file (e.g. TruthfulQA.csv)")
        try:
            _check_targets(self)
        except ValueError as e:
            raise KeyedError("target_rule", str(e)) from None
        asked = "attacks" in self.model_fields_set and "names" in self.attacks.model_fields_set
        if asked and self.attacks.names and self.reference is None:  # by default they are skipped, with a note
            raise KeyedError("attacks.names", "attacks need non-members: give a top-level 'reference' file of unseen "
                                             "text, or 'names: []' to run no attack")
        return self


def _unique(key: str, labels: list[str], field_name: str) -> None:
    seen = set()
    for i, lab in enumerate(labels):
        if lab in seen:
            raise KeyedError(f"{key}[{i}]", f"label {lab!r} is used twice; give each entry its own '{field_name}'")
        seen.add(lab)


def model_label(m: ModelEntry) -> str:
    if m.name:
        return m.name
    if m.path == "default":
        return "default"
    return Path(m.path.rstrip("/")).name.replace(".gguf", "") or m.path


def forget_label(f: ForgetEntry) -> str:
    if f.name:
        return f.name
    stem = Path(f.path).name.split(".")[0]
    return stem.replace("_{split}", "").replace("{split}", "").rstrip("_-") or stem


def method_label(m: MethodEntry) -> str:
    return m.label or m.name


# ---------------------------------------------------------------- reading configs


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate an experiment YAML file; raises :class:`UserError` naming file, key and allowed values."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{p}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError:
        raise UserError(f"{p} is not UTF-8 text") from None
    return config_from_dict(raw, source=str(p))


def config_from_dict(raw: Any, source: str = "<config>") -> ExperimentConfig:
    """Build and validate a config from parsed YAML (``source`` names the file in errors and anchors
    relative paths)."""
    if raw is None:
        raise UserError(f"{source}: key '(top level)': the file is empty; required keys: models, forget, methods")
    if not isinstance(raw, dict):
        raise UserError(f"{source}: key '(top level)': expected a mapping with keys "
                        f"{', '.join(k for k in ExperimentConfig.model_fields if k != 'source')}")
    cfg = validate(ExperimentConfig, raw, source)
    cfg = cfg.model_copy(update={"source": source})
    _check_batches(cfg)
    return cfg


def _check_batches(cfg: ExperimentConfig) -> None:
    """Every update covers the whole forget set in equal micro-batches (the code's train_bs × accum ×
    GPUs == |D_f|, docs/method.md §4.0): the micro-batch must divide the set size."""
    for i, f in enumerate(cfg.forget):
        for s in f.splits:
            path = forget_path(cfg, f, s)
            if _VAR.search(str(path)) or not path.exists():
                continue  # reported by missing_inputs
            n = count_sequences(path)
            if n is None:
                continue  # plain text is cut into windows: the count is known only after tokenizing
            if f.sample is not None:
                if f.sample > n:
                    raise UserError(f"{cfg.source}: key 'forget[{i}].sample': asks for {f.sample} sequences but "
                                    f"{path} holds {n}")
                n = f.sample
            for j, m in enumerate(cfg.methods):
                mb = m.micro_batch or cfg.training.micro_batch
                if n % mb:
                    key = f"methods[{j}].micro_batch" if m.micro_batch else "training.micro_batch"
                    divisors = [d for d in range(1, n + 1) if n % d == 0]
                    raise UserError(f"{cfg.source}: key '{key}': micro-batch {mb} does not divide the {n} sequences "
                                    f"of forget set {path} (the whole set is one update in equal micro-batches); "
                                    f"allowed: {', '.join(map(str, divisors))}")


def count_sequences(path: Path) -> int | None:
    """Records in a forget file (one sequence each), or None for text that is cut into windows."""
    from unmemorize.data import read_records

    records = read_records(path)
    return None if records.windowed else len(records.texts)


# ---------------------------------------------------------------- paths


def expand_vars(text: str) -> str:
    """``${VAR}`` → its value; unset variables stay as they are (reported by :func:`missing_inputs`).
    ``${VAR:-default}`` → its value, or ``default`` when VAR is unset or empty (as in the shell)."""
    text = _VAR_DEFAULT.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), text)
    return _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(0)), text)


def resolve_path(cfg: ExperimentConfig, path: str | os.PathLike) -> Path:
    """A path from the config: variables expanded, relative paths anchored at the config's folder."""
    p = Path(expand_vars(str(path))).expanduser()
    if not p.is_absolute() and cfg.source and not _VAR.search(str(p)):
        p = Path(cfg.source).resolve().parent / p
    return p


def model_location(cfg: ExperimentConfig, m: ModelSource) -> str:
    """What :func:`unmemorize.models.load_model` is given: 'default', a resolved path, or a hub id
    ``ORG/NAME[@REVISION]`` (when no folder of that name sits next to the config)."""
    from unmemorize.models import parse_hub_id

    if m.path == "default":
        return "default"
    p, text = resolve_path(cfg, m.path), expand_vars(str(m.path))
    return text if not p.exists() and parse_hub_id(text) else str(p)


def forget_path(cfg: ExperimentConfig, f: ForgetEntry, split) -> Path:
    return resolve_path(cfg, str(f.path).replace("{split}", str(split)))


def missing_inputs(cfg: ExperimentConfig) -> list[str]:
    """What this machine lacks to run the grid (model folders, unset ``${VAR}``), one message each."""
    from unmemorize.models import check_model, parse_hub_id

    problems = []
    for i, m in enumerate(cfg.models):
        loc = model_location(cfg, m)
        unset = _VAR.findall(loc)
        if unset:
            problems.append(f"{cfg.source}: key 'models[{i}].path': environment variable {unset[0]} is not set; "
                            f"export {unset[0]}=<a Hugging Face model folder or hub id> ({model_label(m)})")
            continue
        if loc == "default":
            from unmemorize.models import default_gguf_path

            try:
                default_gguf_path()
            except UserError as e:
                problems.append(f"{cfg.source}: key 'models[{i}].path': {e}")
            continue
        p = Path(loc)
        if not p.exists() and parse_hub_id(loc):  # a hub id: cached, or reachable where downloads are allowed
            try:
                check_model(loc, allow_pickle=m.allow_pickle)
            except UserError as e:
                problems.append(f"{cfg.source}: key 'models[{i}].path': {e}")
        elif not p.exists():
            problems.append(f"{cfg.source}: key 'models[{i}].path': {p} does not exist (a Hugging Face model folder, "
                            "a .gguf file or 'default')")
        elif p.is_dir() and not (p / "config.json").is_file():
            problems.append(f"{cfg.source}: key 'models[{i}].path': {p} has no config.json (not a Hugging Face model folder)")
    if cfg.oracle is not None and cfg.oracle != "default" and not resolve_path(cfg, cfg.oracle).exists():
        problems.append(f"{cfg.source}: key 'oracle': {resolve_path(cfg, cfg.oracle)} does not exist (the oracle/ folder "
                        "of a model planted with `unmemorize plant --forget`)")
    if cfg.target_model not in (None, "default"):
        from unmemorize.models import parse_hub_id

        p = resolve_path(cfg, cfg.target_model)
        if not p.exists() and not parse_hub_id(expand_vars(str(cfg.target_model))):
            problems.append(f"{cfg.source}: key 'target_model': {p} does not exist (a model that never saw the forget "
                            "set)")
    files = [(cfg.reference, "reference")] if cfg.reference is not None else []
    files += [(cfg.retain, "retain")] if cfg.retain is not None else []
    for i, f in enumerate(cfg.forget):
        files += [(str(f.path).replace("{split}", str(sp)), f"forget[{i}].path") for sp in f.splits]
    if cfg.utility.tasks and cfg.utility.data_dir is not None:
        files.append((cfg.utility.data_dir, "utility.data_dir"))
    for text, key in files:
        unset = _VAR.findall(expand_vars(str(text)))
        if unset:
            problems.append(f"{cfg.source}: key '{key}': environment variable {unset[0]} is not set"
                            + (" (the folder of the evaluation data, docs/data.md)" if unset[0] == "UNMEMORIZE_DATA"
                               else ""))
        elif not resolve_path(cfg, text).exists():
            problems.append(f"{cfg.source}: key '{key}': {resolve_path(cfg, text)} does not exist")
    return problems


assert set(STOP_RULES) == set(StopRule.__args__)  # one list of stop rules
