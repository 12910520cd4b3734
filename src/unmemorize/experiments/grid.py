"""The grid: a config expanded into runs, each with a key that says whether its result already exists.

One run = one (model, forget set, split, method, stop rule, seed), described by a
:class:`~unmemorize.spec.RunSpec`. Its *key* is the sha256 of

* the run's settings that determine its numbers (the spec without paths, labels, the device, the
  checkpoint interval and the neighbour cache), and
* the sha256 of every input it reads: the forget file, the reference and retain files, the utility
  task files (or the cached files of a hub dataset's split), the model's weights
  (``models.weights_fingerprint`` of the folder, or of the snapshot a hub id resolves to; the
  embedded default by its GGUF) and a MIAU refill model's,

so a run is redone exactly when something that changes its numbers changes, and the run folder's
name carries the key: a finished run is found again by name, whatever else sits beside it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from unmemorize.models import ModelSource
from unmemorize.unlearning.methods import resolve_method
from unmemorize.spec import (ExperimentConfig, ForgetSource, RunSpec, forget_label, forget_path, method_label,
                             model_label, model_location, resolve_path)


@dataclass(frozen=True)
class GridRun:
    """One cell of the grid: its spec, its labels in tables and its place in the config's order."""

    spec: RunSpec
    labels: dict
    order: tuple[int, ...]

    @property
    def split(self) -> str:
        return self.labels["split"]

    def folder_name(self, key: str) -> str:
        lab = self.labels
        parts = [lab["model"], f"{lab['forget']}-{lab['split']}", lab["method"], lab["stop"], f"seed{lab['seed']}"]
        return "__".join(_safe(p) for p in parts) + f"__{key[:12]}"


def _safe(text) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).strip("-") or "x"


def run_spec(cfg: ExperimentConfig, mi: int, fi: int, split, ki: int, stop: str, seed: int) -> RunSpec:
    """The spec of one cell: the config's shared settings, its entries and its paths resolved."""
    m, f, meth = cfg.models[mi], cfg.forget[fi], cfg.methods[ki]
    source = ModelSource(**{k: getattr(m, k) for k in ModelSource.model_fields if k != "path"},
                         path=model_location(cfg, m))
    training = cfg.training.replace(lr=meth.lr or cfg.training.lr,
                                    micro_batch=meth.micro_batch or cfg.training.micro_batch)
    attacks = cfg.attacks.replace(
        t5_path=str(resolve_path(cfg, cfg.attacks.t5_path)) if cfg.attacks.t5_path else None,
        refill_model=(None if cfg.attacks.refill_model is None
                      else model_location(cfg, ModelSource(path=cfg.attacks.refill_model))))
    utility = cfg.utility.replace(data_dir=resolve_path(cfg, cfg.utility.data_dir) if cfg.utility.data_dir else None)
    shared = {k: getattr(cfg, k) for k in ("reference_limit", "length", "band", "metrics", "save", "tau_by",
                                           "target_rule", "probes")}
    if cfg.target_model:
        shared["target_model"] = model_location(cfg, ModelSource(path=cfg.target_model))
    return RunSpec(**shared, model=source,
                   forget=ForgetSource(path=forget_path(cfg, f, split), sample=f.sample, sample_seed=f.sample_seed),
                   reference=resolve_path(cfg, cfg.reference) if cfg.reference else None,
                   # the shared retain file goes to the methods that read one (a GA run beside a target run
                   # neither reads nor hashes it)
                   retain=resolve_path(cfg, cfg.retain) if cfg.retain and resolve_method(meth.spec()).uses_retain
                   else None,
                   tau=m.tau if m.tau is not None else cfg.tau, training=training, attacks=attacks, utility=utility,
                   oracle=None if cfg.oracle is None else model_location(cfg, ModelSource(path=cfg.oracle)),
                   method=meth.spec(), stop=stop, seed=seed)


def expand(cfg: ExperimentConfig) -> list[GridRun]:
    """models × forget sets × splits × methods × stop rules × seeds, in that nesting order (one model
    loaded at a time)."""
    runs = []
    for mi, m in enumerate(cfg.models):
        for fi, f in enumerate(cfg.forget):
            for si, split in enumerate(f.splits):
                for ki, meth in enumerate(cfg.methods):
                    own = resolve_method(meth.spec()).stop_rule
                    # a method with its own stop rule (target) runs once, under it; the grid's rules are the others'
                    for ti, stop in ([(0, own)] if own else enumerate(cfg.stop)):
                        for ei, seed in enumerate(cfg.seeds):
                            labels = {"model": model_label(m), "forget": forget_label(f), "split": str(split),
                                      "method": method_label(meth), "stop": stop, "seed": seed}
                            runs.append(GridRun(run_spec(cfg, mi, fi, split, ki, stop, seed), labels,
                                                (mi, fi, si, ki, ti, ei)))
    return runs


# settings that name inputs (hashed separately) or do not change a number
_NOT_SETTINGS = {"model": ("path", "device"), "forget": ("path",), "training": ("checkpoint_every",),
                 "attacks": ("t5_path", "refill_model", "neighbour_cache"), "utility": ("data_dir", "data_source")}


def resolved_settings(spec: RunSpec) -> dict:
    """Every setting that can change the numbers of a run (no labels, no paths, no device)."""
    out = spec.model_dump(mode="json", exclude={"reference", "retain", "save", "oracle", "target_model"})
    for section, keys in _NOT_SETTINGS.items():
        for k in keys:
            out[section].pop(k, None)
    return out


class InputHashes:
    """sha256 of input files and model weights, each computed once per process."""

    def __init__(self):
        self._memo: dict[str, str] = {}

    def file(self, path: Path) -> str:
        from unmemorize.runs import sha256_path

        key = f"file:{path}"
        if key not in self._memo:
            self._memo[key] = sha256_path(path)
        return self._memo[key]

    def model(self, location: str) -> str:
        key = f"model:{location}"
        if key not in self._memo:
            from unmemorize.models import default_gguf_path, weights_fingerprint
            from unmemorize.runs import sha256_file

            if location == "default":
                self._memo[key] = sha256_file(default_gguf_path())
            elif location.endswith(".gguf"):
                self._memo[key] = sha256_file(location)
            else:  # a folder, or a hub id: the snapshot it resolves to (downloaded where allowed)
                from unmemorize.models import resolve_model

                self._memo[key] = weights_fingerprint(resolve_model(location)[0])
        return self._memo[key]


def input_files(spec: RunSpec) -> dict[str, Path]:
    """The files a run reads (besides models), by role."""
    files = {"forget": Path(spec.forget.path)}
    if spec.reference is not None:
        files["reference"] = Path(spec.reference)
    if spec.retain is not None:
        files["retain"] = Path(spec.retain)
    if spec.utility.tasks:
        from unmemorize.utility.tasks import TASKS, locate_task, resolve_tasks

        for name in resolve_tasks(list(spec.utility.tasks)):  # a data-folder file, or a hub split's cached files
            src = locate_task(TASKS[name], spec.utility.data_dir, spec.utility.data_source)
            files.update({f"utility:{name}" + (f"#{k}" if k else ""): f for k, f in enumerate(src.files)})
    if spec.attacks.t5_path:
        files["t5"] = Path(spec.attacks.t5_path)
    return files


def run_key(spec: RunSpec, hashes: InputHashes | None = None) -> str:
    """sha256 of the resolved settings and the hashes of the inputs (see the module docstring)."""
    hashes = hashes or InputHashes()
    inputs = {role: hashes.file(p) for role, p in input_files(spec).items()}
    inputs["model"] = hashes.model(spec.model.path)
    if spec.attacks.refill_model is not None:
        inputs["refill_model"] = hashes.model(spec.attacks.refill_model)
    if spec.oracle is not None:
        inputs["oracle"] = hashes.model(spec.oracle)
    if spec.target_model is not None:
        inputs["target_model"] = hashes.model(spec.target_model)
    blob = json.dumps({"settings": resolved_settings(spec), "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_done(folder: Path) -> bool:
    """A run is done when its folder holds its record (folders appear only complete)."""
    from unmemorize.record import is_record

    return is_record(folder)
