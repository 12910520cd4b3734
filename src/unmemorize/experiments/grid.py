"""The grid: a config expanded into runs, each with a key that says whether its result already exists.

One run = one (model, forget set, split, method, stop rule, seed). Its *key* is the sha256 of

* the resolved settings that determine its numbers (method with overrides, harness, τ source, band,
  attacks, utility, sequence length, seed), and
* the sha256 of every input file it reads: the forget file, the reference file, the utility task
  files and the model's weights (``models.weights_fingerprint``; the embedded default by its GGUF).

so a run is redone exactly when something that changes its numbers changes, and the run folder's
name carries the key: a finished run is found again by name, whatever else sits beside it.
Labels (table names) and the device are left out of the key: they do not change the numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from unmemorize.experiments.config import (
    ExperimentConfig,
    ForgetSpec,
    MethodSpec,
    ModelSpec,
    forget_label,
    forget_path,
    method_label,
    model_label,
    model_location,
    resolve_path,
)

SUMMARY = "summary.json"  # written last into a run folder; the folder is committed only after it


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    model: ModelSpec
    forget: ForgetSpec
    split: str
    method: MethodSpec
    stop: str
    seed: int

    @property
    def labels(self) -> dict:
        return {"model": model_label(self.model), "forget": forget_label(self.forget), "split": self.split,
                "method": method_label(self.method), "stop": self.stop, "seed": self.seed}

    def folder_name(self, key: str) -> str:
        lab = self.labels
        parts = [lab["model"], f"{lab['forget']}-{lab['split']}", lab["method"], lab["stop"], f"seed{lab['seed']}"]
        return "__".join(_safe(p) for p in parts) + f"__{key[:12]}"


def _safe(text) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).strip("-") or "x"


def expand(cfg: ExperimentConfig) -> list[RunSpec]:
    """models × forget sets × splits × methods × stop rules × seeds, in that nesting order (one model
    loaded at a time)."""
    return [RunSpec(m, f, str(s), meth, stop, seed)
            for m in cfg.models for f in cfg.forget for s in f.splits
            for meth in cfg.methods for stop in cfg.stop for seed in cfg.seeds]


def resolved_settings(cfg: ExperimentConfig, run: RunSpec) -> dict:
    """Every setting that can change the numbers of ``run`` (no labels, no paths, no device)."""
    method = {k: v for k, v in dataclasses.asdict(run.method).items() if k != "label"}
    method["micro_batch"] = run.method.micro_batch or cfg.training.micro_batch
    method["lr"] = run.method.lr or cfg.training.lr
    tau = run.model.tau if run.model.tau is not None else cfg.tau
    return {
        "method": method, "stop": run.stop, "seed": run.seed,
        "training": {"max_steps": cfg.training.max_steps, "parity": cfg.training.parity},
        "tau": tau if tau is not None else {"from_reference": True, "reference_limit": cfg.reference_limit},
        "band": [cfg.band.lo, cfg.band.hi], "length": cfg.length, "dtype": run.model.dtype,
        "forget": {"split": run.split, "sample": run.forget.sample,
                   "sample_seed": run.forget.sample_seed if run.forget.sample else None},
        "reference_limit": cfg.reference_limit,
        "attacks": dataclasses.asdict(cfg.attacks) | {"t5_path": None},
        "utility": {k: v for k, v in dataclasses.asdict(cfg.utility).items() if k != "data_dir"},
    }


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
            else:
                self._memo[key] = weights_fingerprint(Path(location))
        return self._memo[key]


def input_files(cfg: ExperimentConfig, run: RunSpec) -> dict[str, Path]:
    """The files a run reads (besides the model), by role."""
    files = {"forget": forget_path(cfg, run.forget, run.split)}
    if cfg.reference is not None:
        files["reference"] = resolve_path(cfg, cfg.reference)
    if cfg.utility.tasks:
        from unmemorize.utility.tasks import TASKS, find_file, resolve_tasks

        data = resolve_path(cfg, cfg.utility.data_dir)
        for name in resolve_tasks(list(cfg.utility.tasks)):
            files[f"utility:{name}"] = find_file(TASKS[name], data)
    return files


def run_key(cfg: ExperimentConfig, run: RunSpec, hashes: InputHashes | None = None) -> str:
    """sha256 of the resolved settings and the hashes of the inputs (see the module docstring)."""
    hashes = hashes or InputHashes()
    inputs = {role: hashes.file(p) for role, p in input_files(cfg, run).items()}
    inputs["model"] = hashes.model(model_location(cfg, run.model))
    blob = json.dumps({"settings": resolved_settings(cfg, run), "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_done(folder: Path) -> bool:
    """A run is done when its folder exists with its summary (folders appear only complete)."""
    return (folder / SUMMARY).is_file()
