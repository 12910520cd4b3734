"""`unmemorize plant`: the memorization lab — plant member sequences at known exposure counts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unmemorize.commands.common import (
    AllowPickleOpt, DeviceOpt, LengthOpt, ModelOpt, SeedOpt, TrustCodeOpt, console, err_console,
    load_model_cli, progress_bar,
)


def parse_exposures(value: str) -> tuple[int, ...]:
    from unmemorize.errors import UserError

    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--exposures takes comma-separated counts like 1,2,4,8,16, got {value!r}") from None
    if not out or any(v < 0 for v in out):
        raise UserError(f"--exposures takes non-negative counts like 1,2,4,8,16, got {value!r}")
    return out


def plant_into(lm, members_path: Path, exposures: tuple[int, ...], out: Path, *, mix_path: Path | None = None,
               length: int = 200, lr: float = 1e-4, batch_size: int = 8, mix_fraction: float = 0.2,
               seed: int = 0, log=print) -> tuple[Path, dict]:
    """Plant (or reuse a cached plant) and return the planted model folder and its manifest.

    The folder is a complete Hugging Face model folder plus ``plant.json`` (who was planted how often).
    """
    import pandas as pd

    from unmemorize.data import TextRecords, load_sequences, tokenize
    from unmemorize.errors import UserError
    from unmemorize.lab.ordinary import stdlib_paragraphs
    from unmemorize.lab.plant import PlantConfig, assign_exposures, plant, plant_key, read_plant_manifest
    from unmemorize.models import save_model
    from unmemorize.runs import build_manifest

    members = load_sequences(members_path, lm.tokenizer, length)
    if mix_path is not None:
        mix = load_sequences(mix_path, lm.tokenizer, length)
        mix_desc = mix.describe()
    else:
        paras = stdlib_paragraphs()
        mix = tokenize(TextRecords(paras, [f"stdlib-{i}" for i in range(len(paras))],
                                   pd.DataFrame(index=range(len(paras))), "python standard-library docstrings"),
                       lm.tokenizer, min(length, 128))
        mix_desc = {"source": "python standard-library docstrings", "sequences": len(mix)}
    cfg = PlantConfig(exposures, lr, batch_size, mix_fraction, seed)
    exposure = assign_exposures(members.ids, exposures, seed)
    key = plant_key(lm.fingerprint, members, mix if mix_fraction > 0 else None, cfg, exposure)
    existing = read_plant_manifest(out)
    if existing is not None and existing.get("key") == key:
        log(f"Reusing the planted model in {out} (same inputs, key {key}).")
        return out, existing
    if out.exists() and any(out.iterdir()) and existing is None:
        raise UserError(f"{out} exists and is not a planted model folder; choose another --out")
    with progress_bar() as progress:
        result = plant(lm.model, members, exposure, mix, cfg, progress)
    manifest = build_manifest(
        "plant", {"exposures": list(exposures), "lr": lr, "batch_size": batch_size, "mix_fraction": mix_fraction,
                  "length": length},
        {"model": lm.describe(), "members": members.describe(), "mix": mix_desc}, seed=seed,
        key=key, exposure=exposure, steps=result.steps, losses=result.losses)
    save_model(lm.model, lm.tokenizer, out, files={"plant.json": manifest})
    return out, manifest


def plant_command(
    members: Annotated[Path, typer.Option("--members", help="Sequences to plant: CSV, JSONL, text file or folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the planted model (a Hugging Face model folder).")],
    exposures: Annotated[str, typer.Option("--exposures", help="Exposure counts, spread evenly over the members.")] = "1,2,4,8,16",
    model: ModelOpt = "default",
    mix: Annotated[Path | None, typer.Option("--mix", help="Ordinary text mixed in (default: Python docstrings).")] = None,
    mix_fraction: Annotated[float, typer.Option("--mix-fraction", help="Share of training rows of ordinary text.")] = 0.2,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    length: LengthOpt = 200,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustCodeOpt = False,
):
    """Fine-tune a copy of the model so each member is memorized to its own degree (cached by inputs)."""
    from rich.table import Table

    from unmemorize import distributed

    distributed.one_process_only("plant", "it fine-tunes one copy of the model into one cached folder")
    counts = parse_exposures(exposures)
    lm = load_model_cli(model, "float32", device, allow_pickle, trust_remote_code)
    folder, manifest = plant_into(lm, members, counts, out, mix_path=mix, length=length, lr=lr,
                                  batch_size=batch_size, mix_fraction=mix_fraction, seed=seed,
                                  log=lambda m: err_console.print(f"[cyan]{m}[/]"))
    t = Table(title="Planted", title_justify="left")
    t.add_column("exposure", justify="right")
    t.add_column("sequences", justify="right")
    by = {}
    for sid, e in manifest["exposure"].items():
        by.setdefault(e, []).append(sid)
    for e in sorted(by):
        t.add_row(str(e), str(len(by[e])))
    console.print(t)
    console.print(f"Planted model: [bold]{folder}[/] ({manifest['steps']} steps); "
                  f"use it with --model {folder}")


def register(app: typer.Typer) -> None:
    app.command("plant")(plant_command)
