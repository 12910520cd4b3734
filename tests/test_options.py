"""One source of truth for options: every flag of `unlearn` and `attack` is a key of a run config and
every key a flag; defaults are the library's; errors name the key or the flag; a YAML run records
every switch it was given."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from unmemorize.commands import flags
from unmemorize.errors import UserError
from unmemorize.options import field_extra
from unmemorize.spec import AttackRunSpec, ExperimentConfig, RunSpec


def yaml_keys(cls: type[BaseModel], prefix: str = "") -> set[str]:
    """Every leaf key a config file can set (fields marked yaml=False are the library's own knobs)."""
    out = set()
    for name, info in cls.model_fields.items():
        if not field_extra(cls, name).get("yaml", True):
            continue
        inner = info.annotation
        models = [a for a in (inner, *typing.get_args(inner)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:
            out |= yaml_keys(models[0], f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def command_flags(module) -> tuple[list, tuple]:
    import typer

    app = typer.Typer()
    module.register(app)
    fn = app.registered_commands[0].callback
    return fn.flags, fn.switches


# grid-only keys: lists and labels of `unmemorize run` that one run does not have
GRID_ONLY = {"name", "description", "models.name", "models.tau", "forget.name", "forget.splits", "methods.label",
             "methods.lr", "methods.micro_batch"}
# a run's single values and the grid's lists of them
RUN_TO_GRID = {"model.": "models.", "method.": "methods.", "stop": "stop", "seed": "seeds"}


def _grid_key(key: str) -> str:
    for run, grid in RUN_TO_GRID.items():
        if key == run or (run.endswith(".") and key.startswith(run)):
            return grid + key[len(run):] if run.endswith(".") else grid
    return key


def test_every_unlearn_flag_is_a_run_key_and_every_key_a_flag():
    from unmemorize.commands import unlearn

    got, switches = command_flags(unlearn)
    keys = [f.key for f in got]
    assert len(keys) == len(set(keys))
    assert set(keys) == yaml_keys(RunSpec)
    assert {s.key for s in switches} <= set(keys)  # --no-attacks sets a key that has its own flag too
    # and each key of one run is a key of a run config (the grid names some in the plural)
    grid = yaml_keys(ExperimentConfig)
    assert {_grid_key(k) for k in keys} == grid - GRID_ONLY


def test_every_attack_flag_is_a_key_and_every_key_a_flag():
    from unmemorize.commands import attack

    got, _ = command_flags(attack)
    keys = {f.key for f in got}
    assert keys == yaml_keys(AttackRunSpec) - {"attacks.before"}  # attacking before unlearning is `unlearn`'s
    # the attacks' settings are the same keys as in a run config
    assert {k for k in keys if k.startswith("attacks.")} == {k for k in yaml_keys(RunSpec) if k.startswith("attacks.")} - {
        "attacks.before"}


def test_defaults_come_from_the_library():
    from unmemorize.attacks.registry import AttackSettings
    from unmemorize.unlearning import UnlearnOptions

    by_key = {f.key: f for f in flags.flags(RunSpec)}
    assert by_key["training.checkpoint_every"].default == UnlearnOptions().checkpoint_every == 5
    assert by_key["training.lr"].default == UnlearnOptions().lr == 5e-5
    assert by_key["attacks.neighbours"].default is AttackSettings().neighbours is None  # auto: the attack plan
    # a flag left alone builds exactly the default spec
    values = {f.param: None if f.default is flags._MISSING else f.default for f in flags.flags(RunSpec)}
    values["forget__path"] = "f.jsonl"
    values["tau"] = 0.3
    assert flags.build(RunSpec, flags.flags(RunSpec), values) == RunSpec(forget={"path": "f.jsonl"}, tau=0.3)


@pytest.mark.parametrize("change, message", [
    ({"training__lr": -1.0}, "--lr: got -1.0; allowed: a positive number"),
    ({"method__name": "gradient"}, "--method: unknown method 'gradient'"),
    ({"attacks__names": "miau,lira"}, "--attacks: unknown attack 'lira'"),
    ({"attacks__fprs": [0.05, 2.0]}, "--fpr: false-positive rate 2.0 must lie strictly between 0 and 1"),
    ({"band__lo": 0.7}, "acceptable band needs 0 ≤ lo < hi ≤ 1"),
    ({"stop": "median"}, "--stop: got 'median'; allowed: mean, per-sequence"),
])
def test_flag_errors_name_the_flag(change, message):
    all_flags = flags.flags(RunSpec)
    values = {f.param: None if f.default is flags._MISSING else f.default for f in all_flags}
    values.update({"forget__path": "f.jsonl", "tau": 0.3, **change})
    with pytest.raises(UserError, match=message):
        flags.build(RunSpec, all_flags, values)


def test_yaml_errors_name_the_key(tmp_path):
    from unmemorize.spec import config_from_dict

    with pytest.raises(UserError, match=r"key 'methods\[1\].switch_below': got 1.5; allowed: a number in \[0, 1\]"):
        config_from_dict({"model": "default", "tau": 0.3, "forget": "f.jsonl",
                          "methods": ["ga", {"name": "tau", "switch_below": 1.5}]}, "c.yaml")


def test_a_run_config_records_every_scale_switch_and_attack_option(tmp_path):
    """LoRA, bf16, gradient checkpointing, a refill model and an extra FPR, set in YAML, all reach the
    run and are recorded in its record and manifest."""
    import json

    from test_experiments import tiny_experiment
    from unlearning_fixtures import one_thread, small_lab
    from unmemorize.experiments import load_config, run_experiment
    from unmemorize.models import save_model
    from unmemorize.record import read_record
    from unmemorize.tiny import tiny_model

    tok = small_lab()[0]
    save_model(tiny_model("gpt2", vocab_size=len(tok), eos_id=tok.eos_token_id, n_layer=1, d_model=32, seed=3), tok,
               tmp_path / "refill")
    path = tiny_experiment(
        tmp_path, utility=False, methods=["ga"], tau=None,
        training={"max_steps": 2, "micro_batch": 2, "lora_rank": 4, "mixed_precision": "bf16",
                  "gradient_checkpointing": True, "checkpoint_every": 0},
        attacks={"names": ["miau", "loss"], "neighbours": 2, "perturber": "lm", "refill_model": "refill",
                 "fprs": [0.1, 0.2], "bootstrap": 0, "neighbour_cache": False, "batch_size": 4})
    with one_thread():
        folder, *_ = run_experiment(load_config(path), tmp_path / "out")
    r = read_record(folder)
    t = r.spec["training"]
    assert (t["lora_rank"], t["mixed_precision"], t["gradient_checkpointing"]) == (4, "bf16", True)
    assert r.spec["attacks"]["refill_model"] == str(tmp_path / "refill")
    assert r.attacks.fprs == [0.1, 0.2]
    row = r.row()
    for fpr in ("10%", "20%"):  # 10 non-members resolve both: numbers, not NaN (the bug: asked for, then dropped)
        assert 0.0 <= row[f"miau_tpr@{fpr}"] <= 1.0 and 0.0 <= row[f"loss_tpr@{fpr}"] <= 1.0
    # an FPR the non-members cannot resolve is refused before any work, not reported as NaN
    bad = tiny_experiment(tmp_path / "bad", utility=False, methods=["ga"], attacks={"names": ["loss"], "fprs": [0.05]})
    with pytest.raises(UserError, match="10 sequences, too few for TPR at 5% FPR"):
        run_experiment(load_config(bad), tmp_path / "bad" / "out")
    assert not list((tmp_path / "bad" / "out").glob("*/record.json"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"]["refill_model"]["path"] == str(tmp_path / "refill")
    assert manifest["options"]["training"]["mixed_precision"] == "bf16"
    miau = json.loads((folder / "attacks.json").read_text())["attacks"]["miau"]
    assert miau["summary"]["perturber"]["model"] == manifest["inputs"]["refill_model"]["fingerprint"]
