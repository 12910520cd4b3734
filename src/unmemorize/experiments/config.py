"""Typed experiment configs read from YAML, validated before any model is loaded.

A config names a grid: models × forget sets (× splits) × methods × stop rules × seeds, plus the
shared settings (τ, band, harness, attacks, utility). Everything is checked up front, and every
error names the file, the key (``methods[1].switch_below``) and what would be accepted, because a
typo found after two hours of unlearning is two hours lost.

Two levels of checking:

* :func:`load_config` — the file itself: unknown keys, wrong types, impossible values (band with
  lo ≥ hi, a micro-batch that does not divide the forget set, a method option the method does not
  have, an unknown task or attack). Always fatal.
* :func:`missing_inputs` — what must exist on this machine to *run*: model folders, ``${VAR}``
  placeholders for user-supplied models. ``unmemorize run --check`` lists them without failing, so a
  paper preset can be inspected before the 2.7B weights are downloaded; ``unmemorize run`` refuses.

Relative paths are resolved against the config file's folder; ``${VAR}`` is read from the
environment (an unset variable is a missing input, not a syntax error).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unmemorize.errors import UserError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _positive(v) -> bool:
    return v > 0


def _check(predicate, allowed: str):
    """Field metadata: a value check with the words that say what is allowed."""
    return {"check": predicate, "allowed": allowed}


# ---------------------------------------------------------------- the schema


@dataclass(frozen=True)
class ModelSpec:
    """A model of the grid. ``path``: 'default' (the embedded SmolLM2), a Hugging Face folder or a
    .gguf file; ``${VAR}`` placeholders are for user-supplied weights. ``tau`` overrides τ for it."""

    path: str
    name: str = ""  # label in tables (default: the folder name)
    tau: float | None = field(default=None, metadata=_check(lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"))
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass(frozen=True)
class ForgetSpec:
    """A forget set with its splits: ``path`` may hold ``{split}`` (Jang's ``lm_extraction_32_{split}.csv``).
    ``sample``: draw that many sequences without replacement (seeded by ``sample_seed``), e.g. the
    paper's 16-sets from the 128-sets (PAPER_SPEC §5.1)."""

    path: str
    name: str = ""  # label in tables (default: the file stem without the split)
    splits: tuple[int | str, ...] = (0,)
    sample: int | None = field(default=None, metadata=_check(_positive, "a positive number of sequences"))
    sample_seed: int = 0


@dataclass(frozen=True)
class MethodSpec:
    """A method of the registry (``unmemorize.unlearning.METHODS``) with its overrides."""

    name: str
    label: str = ""  # row label in tables (default: the name)
    selector: str | None = None
    switch_below: float | None = field(default=None, metadata=_check(lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"))
    edit_coef: float | None = None
    reset_optimizer: bool = False
    micro_batch: int | None = field(default=None, metadata=_check(_positive, "a positive integer"))
    lr: float | None = field(default=None, metadata=_check(_positive, "a positive number"))
    dpd_lambda: float = field(default=0.2, metadata=_check(lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"))
    dpd_mode: Literal["logits", "probs"] = "logits"


@dataclass(frozen=True)
class BandSpec:
    lo: float = 0.15
    hi: float = 0.60


@dataclass(frozen=True)
class TrainingSpec:
    """The harness (PAPER_SPEC §4.0); per-method ``micro_batch`` and ``lr`` override these."""

    lr: float = field(default=5e-5, metadata=_check(_positive, "a positive number"))
    max_steps: int = field(default=150, metadata=_check(lambda v: v >= 0, "an integer ≥ 0"))
    micro_batch: int = field(default=8, metadata=_check(_positive, "a positive integer"))
    parity: bool = False
    checkpoint_every: int = field(default=5, metadata=_check(lambda v: v >= 0, "an integer ≥ 0 (0: no checkpoints)"))


@dataclass(frozen=True)
class AttackSpec:
    """Attacks run on every unlearned model (members = forget set, non-members = the reference)."""

    names: tuple[str, ...] = ("miau", "loss")
    neighbours: int = field(default=25, metadata=_check(_positive, "a positive integer"))
    perturber: str = "lm"
    t5_path: str | None = None
    mask_fraction: float = 0.3
    span_words: int = 2
    bootstrap: int = field(default=1000, metadata=_check(lambda v: v >= 0, "an integer ≥ 0"))
    fprs: tuple[float, ...] = (0.01,)
    batch_size: int = field(default=8, metadata=_check(_positive, "a positive integer"))
    neighbour_cache: bool = True


@dataclass(frozen=True)
class UtilitySpec:
    """Utility tasks (``unmemorize.utility``) before and after unlearning; ``tasks: []`` skips them."""

    tasks: tuple[str, ...] = ()
    data_dir: str | None = None
    mode: Literal["full", "parity"] = "full"
    limit: int | None = field(default=None, metadata=_check(_positive, "a positive number of examples"))
    max_length: int = field(default=512, metadata=_check(lambda v: v >= 2, "an integer ≥ 2"))
    parity_batch_size: int = field(default=8, metadata=_check(_positive, "a positive integer"))


@dataclass(frozen=True)
class ExperimentConfig:
    models: tuple[ModelSpec, ...]
    forget: tuple[ForgetSpec, ...]
    methods: tuple[MethodSpec, ...]
    name: str = ""
    description: str = ""
    stop: tuple[Literal["mean", "per-sequence"], ...] = ("mean",)
    seeds: tuple[int, ...] = (42,)
    tau: float | None = field(default=None, metadata=_check(lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"))
    reference: str | None = None
    reference_limit: int | None = field(default=None, metadata=_check(_positive, "a positive number of sequences"))
    band: BandSpec = BandSpec()
    length: int = field(default=200, metadata=_check(lambda v: v >= 2, "an integer ≥ 2 (tokens per sequence)"))
    device: str | None = None
    training: TrainingSpec = TrainingSpec()
    attacks: AttackSpec = AttackSpec()
    utility: UtilitySpec = UtilitySpec()
    source: str = field(default="", metadata={"internal": True})  # the YAML file (set by load_config)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


# Shorthands: a bare string is the one required field of these entries.
_SHORTHAND = {ModelSpec: "path", ForgetSpec: "path", MethodSpec: "name"}


# ---------------------------------------------------------------- generic typed reading


class _Reader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> typing.NoReturn:
        raise UserError(f"{self.source}: key '{where}': {message}")

    def build(self, cls, value, where: str):
        if isinstance(value, str) and cls in _SHORTHAND:
            value = {_SHORTHAND[cls]: value}
        if not isinstance(value, dict):
            self.fail(where or "(top level)", f"expected a mapping with keys {', '.join(_public_fields(cls))}, "
                                              f"got {_show(value)}")
        names = _public_fields(cls)
        unknown = [k for k in value if k not in names]
        if unknown:
            self.fail(_join(where, str(unknown[0])), f"unknown key; allowed keys here: {', '.join(names)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            key = _join(where, f.name)
            if f.name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.fail(key, "required key is missing")
                continue
            v = self.coerce(hints[f.name], value[f.name], key)
            check = f.metadata.get("check")
            if check is not None and v is not None and not check(v):
                self.fail(key, f"got {_show(value[f.name])}; allowed: {f.metadata['allowed']}")
            kwargs[f.name] = v
        return cls(**kwargs)

    def coerce(self, typ, value, where: str):
        origin, args = typing.get_origin(typ), typing.get_args(typ)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            for a in (a for a in args if a is not type(None)):
                try:
                    return self.coerce(a, value, where)
                except UserError:
                    pass
            self.fail(where, f"expected {_describe(typ)}, got {_show(value)}")
        if origin is Literal:
            if value not in args:
                self.fail(where, f"got {_show(value)}; allowed: {', '.join(map(str, args))}")
            return value
        if origin is tuple:
            items = value if isinstance(value, list) else [value]  # a scalar is a one-item list
            if value is None:
                self.fail(where, f"expected {_describe(typ)}, got nothing")
            return tuple(self.coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(items))
        if dataclasses.is_dataclass(typ):
            return self.build(typ, value, where)
        if typ is bool:
            if not isinstance(value, bool):
                self.fail(where, f"expected true or false, got {_show(value)}")
            return value
        if typ is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(where, f"expected an integer, got {_show(value)}")
            return value
        if typ is float:
            if isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self.fail(where, f"expected a number, got {_show(value)}")
            return float(value)
        if typ is str:
            if not isinstance(value, str):
                self.fail(where, f"expected a string, got {_show(value)}")
            return value
        raise TypeError(f"unsupported config type {typ!r}")  # a bug in the schema, not the user's


def _public_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'} ({str(value)[:60]})"
    return repr(value)


def _describe(typ) -> str:
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None)) + (" or null" if type(None) in args else "")
    if origin is tuple:
        return f"a list of {_describe(args[0])}"
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(typ, getattr(typ, "__name__", str(typ)))


# ---------------------------------------------------------------- loading and cross-field checks


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate an experiment YAML file; raises :class:`UserError` naming file, key and allowed values."""
    import yaml

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
    r = _Reader(source)
    if raw is None:
        r.fail("(top level)", "the file is empty; required keys: models, forget, methods")
    raw = dict(raw) if isinstance(raw, dict) else raw
    if isinstance(raw, dict):  # the singular spelling of one-entry lists
        for one, many in (("model", "models"), ("method", "methods")):
            if one in raw:
                if many in raw:
                    r.fail(one, f"give either '{one}' or '{many}', not both")
                raw[many] = raw.pop(one)
    cfg = r.build(ExperimentConfig, raw, "")
    cfg = dataclasses.replace(cfg, source=source)
    _check_semantics(cfg, r)
    return cfg


def _check_semantics(cfg: ExperimentConfig, r: _Reader) -> None:
    from unmemorize.attacks import ATTACKS, PERTURBERS
    from unmemorize.thresholds import Band
    from unmemorize.unlearning import METHODS, resolve_method
    from unmemorize.utility.tasks import TASKS, find_file, resolve_tasks

    for key in ("models", "forget", "methods", "stop", "seeds"):
        if not getattr(cfg, key):
            r.fail(key, "the list is empty; the grid needs at least one entry")
    if not cfg.band.lo < cfg.band.hi or not (0.0 <= cfg.band.lo and cfg.band.hi <= 1.0):
        r.fail("band", f"needs 0 ≤ lo < hi ≤ 1, got lo={cfg.band.lo}, hi={cfg.band.hi}")
    Band(cfg.band.lo, cfg.band.hi)

    labels = [model_label(m) for m in cfg.models]
    _unique(r, "models", labels, "name")
    for i, m in enumerate(cfg.models):
        if m.tau is None and cfg.tau is None and cfg.reference is None:
            r.fail(f"models[{i}]", "τ is unknown: give 'tau' (for this model or at the top level) or a "
                                   "'reference' file of unseen text to compute it from")

    _unique(r, "forget", [forget_label(f) for f in cfg.forget], "name")
    for i, f in enumerate(cfg.forget):
        where = f"forget[{i}]"
        if len(f.splits) > 1 and "{split}" not in f.path:
            r.fail(f"{where}.path", f"{len(f.splits)} splits are listed but the path has no '{{split}}' "
                                    "placeholder to put them in (e.g. lm_extraction_32_{split}.csv)")
        if len(set(map(str, f.splits))) != len(f.splits):
            r.fail(f"{where}.splits", "a split is listed twice")

    _unique(r, "methods", [method_label(m) for m in cfg.methods], "label")
    for i, m in enumerate(cfg.methods):
        where = f"methods[{i}]"
        if m.name not in METHODS:
            r.fail(f"{where}.name", f"unknown method {m.name!r}; allowed: {', '.join(METHODS)}")
        try:
            method = resolve_method(m.name, m.selector, m.switch_below, m.edit_coef)
        except UserError as e:
            r.fail(where, str(e).replace("--ta-coef", "edit_coef").replace("--switch-below", "switch_below"))
        if method.needs_retain:
            r.fail(f"{where}.name", f"method {m.name} needs retain data, which experiment configs do not take yet; "
                                    "use `unmemorize unlearn --retain` for it")
        if not method.decoding and (m.dpd_lambda != 0.2 or m.dpd_mode != "logits"):
            r.fail(where, f"dpd_lambda and dpd_mode apply to method dpd, not {m.name}")

    for i, f in enumerate(cfg.forget):
        _check_batches(cfg, f, i, r)

    a = cfg.attacks
    unknown = [n for n in a.names if n not in ATTACKS]
    if unknown:
        r.fail("attacks.names", f"unknown attack {unknown[0]!r}; allowed: {', '.join(ATTACKS)}")
    if a.perturber not in PERTURBERS:
        r.fail("attacks.perturber", f"unknown perturber {a.perturber!r}; allowed: {', '.join(PERTURBERS)}")
    if a.names and cfg.reference is None:
        r.fail("attacks.names", "attacks need non-members: give a top-level 'reference' file of unseen text, "
                                "or 'names: []' to run no attack")
    for j, fpr in enumerate(a.fprs):
        if not 0.0 < fpr < 1.0:
            r.fail(f"attacks.fprs[{j}]", f"got {fpr}; allowed: a false-positive rate strictly between 0 and 1")
    if "miau" in a.names and a.perturber == "t5" and not a.t5_path:
        r.fail("attacks.t5_path", "perturber t5 needs t5_path, a local T5 folder (it is never downloaded)")
    try:
        attack_options(cfg, seed=0).validate(tuple(a.names))
    except UserError as e:
        r.fail("attacks", str(e))

    u = cfg.utility
    if u.tasks:
        try:
            names = resolve_tasks(list(u.tasks))
        except UserError as e:
            r.fail("utility.tasks", str(e))
        if u.data_dir is None:
            r.fail("utility.data_dir", "utility tasks need a data folder laid out like ../shared/data/eval")
        data = resolve_path(cfg, u.data_dir)
        if data.is_dir():  # an absent folder is a missing input (missing_inputs), not a config error
            for n in names:
                try:
                    find_file(TASKS[n], data)
                except UserError as e:
                    r.fail("utility.data_dir", str(e))


def _check_batches(cfg: ExperimentConfig, f: ForgetSpec, i: int, r: _Reader) -> None:
    """Every update covers the whole forget set in equal micro-batches (the code's
    train_bs × accum × GPUs == |D_f|, PAPER_SPEC §4.0): the micro-batch must divide the set size."""
    for s in f.splits:
        path = forget_path(cfg, f, s)
        if _VAR.search(str(path)) or not path.exists():
            continue  # reported by missing_inputs
        n = count_sequences(path)
        if n is None:
            continue  # plain text is cut into windows: the count is known only after tokenizing
        if f.sample is not None:
            if f.sample > n:
                r.fail(f"forget[{i}].sample", f"asks for {f.sample} sequences but {path} holds {n}")
            n = f.sample
        for j, m in enumerate(cfg.methods):
            mb = m.micro_batch or cfg.training.micro_batch
            if n % mb:
                key = f"methods[{j}].micro_batch" if m.micro_batch else "training.micro_batch"
                divisors = [d for d in range(1, n + 1) if n % d == 0]
                r.fail(key, f"micro-batch {mb} does not divide the {n} sequences of forget set {path} "
                            f"(the whole set is one update in equal micro-batches); allowed: {', '.join(map(str, divisors))}")


def _unique(r: _Reader, key: str, labels: list[str], field_name: str) -> None:
    seen = set()
    for i, lab in enumerate(labels):
        if lab in seen:
            r.fail(f"{key}[{i}]", f"label {lab!r} is used twice; give each entry its own '{field_name}'")
        seen.add(lab)


# ---------------------------------------------------------------- derived values


def expand_vars(text: str) -> str:
    """``${VAR}`` → its value; unset variables stay as they are (reported by :func:`missing_inputs`)."""
    return _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(0)), text)


def resolve_path(cfg: ExperimentConfig, text: str) -> Path:
    """A path from the config: variables expanded, relative paths anchored at the config's folder."""
    p = Path(expand_vars(text)).expanduser()
    if not p.is_absolute() and cfg.source and not _VAR.search(str(p)):
        p = Path(cfg.source).resolve().parent / p
    return p


def model_location(cfg: ExperimentConfig, m: ModelSpec) -> str:
    """What :func:`unmemorize.models.load_model` is given: 'default' or a resolved path."""
    return "default" if m.path == "default" else str(resolve_path(cfg, m.path))


def forget_path(cfg: ExperimentConfig, f: ForgetSpec, split) -> Path:
    return resolve_path(cfg, f.path.replace("{split}", str(split)))


def model_label(m: ModelSpec) -> str:
    if m.name:
        return m.name
    if m.path == "default":
        return "default"
    return Path(m.path.rstrip("/")).name.replace(".gguf", "") or m.path


def forget_label(f: ForgetSpec) -> str:
    if f.name:
        return f.name
    stem = Path(f.path).name.split(".")[0]
    return stem.replace("_{split}", "").replace("{split}", "").rstrip("_-") or stem


def method_label(m: MethodSpec) -> str:
    return m.label or m.name


def count_sequences(path: Path) -> int | None:
    """Records in a forget file (one sequence each), or None for text that is cut into windows."""
    from unmemorize.data import read_records

    records = read_records(path)
    return None if records.windowed else len(records.texts)


def attack_options(cfg: ExperimentConfig, seed: int):
    from unmemorize.attacks import AttackOptions
    from unmemorize.thresholds import Band

    a = cfg.attacks
    return AttackOptions(attacks=tuple(a.names) or None, neighbours=a.neighbours, perturber=a.perturber,
                         t5_path=str(resolve_path(cfg, a.t5_path)) if a.t5_path else None,
                         mask_fraction=a.mask_fraction, span_words=a.span_words, bootstrap=a.bootstrap,
                         fprs=None, batch_size=a.batch_size, neighbour_cache=a.neighbour_cache,
                         band=Band(cfg.band.lo, cfg.band.hi), seed=seed)


def missing_inputs(cfg: ExperimentConfig) -> list[str]:
    """What this machine lacks to run the grid (model folders, unset ``${VAR}``), one message each."""
    problems = []
    for i, m in enumerate(cfg.models):
        loc = model_location(cfg, m)
        unset = _VAR.findall(loc)
        if unset:
            problems.append(f"{cfg.source}: key 'models[{i}].path': environment variable {unset[0]} is not set; "
                            f"export {unset[0]}=<a Hugging Face model folder> ({model_label(m)})")
            continue
        if loc == "default":
            from unmemorize.models import default_gguf_path

            try:
                default_gguf_path()
            except UserError as e:
                problems.append(f"{cfg.source}: key 'models[{i}].path': {e}")
            continue
        p = Path(loc)
        if not p.exists():
            problems.append(f"{cfg.source}: key 'models[{i}].path': {p} does not exist (a Hugging Face model folder, "
                            "a .gguf file or 'default')")
        elif p.is_dir() and not (p / "config.json").is_file():
            problems.append(f"{cfg.source}: key 'models[{i}].path': {p} has no config.json (not a Hugging Face model folder)")
    files = [(cfg.reference, "reference")] if cfg.reference is not None else []
    for i, f in enumerate(cfg.forget):
        files += [(f.path.replace("{split}", str(sp)), f"forget[{i}].path") for sp in f.splits]
    if cfg.utility.tasks and cfg.utility.data_dir is not None:
        files.append((cfg.utility.data_dir, "utility.data_dir"))
    for text, key in files:
        unset = _VAR.findall(expand_vars(text))
        if unset:
            problems.append(f"{cfg.source}: key '{key}': environment variable {unset[0]} is not set")
        elif not resolve_path(cfg, text).exists():
            problems.append(f"{cfg.source}: key '{key}': {resolve_path(cfg, text)} does not exist")
    return problems
