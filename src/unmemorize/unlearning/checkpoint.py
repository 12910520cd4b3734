"""Checkpoints of an unlearning run, so that an interrupted run resumes and ends with the same numbers.

A checkpoint is a folder written whole or not at all (assembled in a hidden sibling, then renamed):
``weights.safetensors`` (θ after the last update), ``base.safetensors`` (task arithmetic's θ_b, when
in such a phase), ``snapshot.safetensors`` (the last weights known good, for the NaN roll-back),
``optimizer.pt`` (Adam's moments; read back with ``weights_only=True``, so it cannot run code),
``arrays.safetensors`` (per-sequence state), ``trajectory.parquet`` and ``state.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from unmemorize.errors import UserError
from unmemorize.runs import AtomicDir

FORMAT = 1


@dataclass
class Checkpoint:
    state: dict
    weights: dict[str, torch.Tensor]
    base: dict[str, torch.Tensor] | None
    snapshot: dict[str, torch.Tensor] | None
    optimizer: dict
    arrays: dict[str, np.ndarray]
    trajectory: pd.DataFrame


def _tensors(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in d.items()}


def save(path: str | os.PathLike, *, state: dict, weights: dict[str, torch.Tensor],
         base: dict[str, torch.Tensor] | None, snapshot: dict[str, torch.Tensor] | None, optimizer: dict,
         arrays: dict[str, np.ndarray], trajectory: pd.DataFrame) -> Path:
    path = Path(path)
    with AtomicDir(path) as folder:
        tmp = folder.tmp
        save_file(_tensors(weights), str(tmp / "weights.safetensors"))
        if base is not None:
            save_file(_tensors(base), str(tmp / "base.safetensors"))
        if snapshot is not None:
            save_file(_tensors(snapshot), str(tmp / "snapshot.safetensors"))
        torch.save(optimizer, tmp / "optimizer.pt")
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
                  str(tmp / "arrays.safetensors"))
        trajectory.to_parquet(tmp / "trajectory.parquet", index=False)
        (tmp / "state.json").write_text(json.dumps({"format": FORMAT, **state}, indent=1))
    return path


def _recover(path: Path) -> Path | None:
    """The checkpoint folder, or the previous one if a crash fell between the two renames of :func:`save`."""
    if (path / "state.json").is_file():
        return path
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    for p in reversed(olds):
        if (p / "state.json").is_file():
            return p
    return None


def exists(path: str | os.PathLike) -> bool:
    return _recover(Path(path)) is not None


def load(path: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none."""
    found = _recover(Path(path))
    if found is None:
        return None
    try:
        state = json.loads((found / "state.json").read_text())
        if state.get("format") != FORMAT:
            raise UserError(f"checkpoint {found} has format {state.get('format')}, this version reads {FORMAT}; "
                            "delete it to start over")
        opt = lambda name: load_file(str(found / name)) if (found / name).is_file() else None  # noqa: E731
        return Checkpoint(
            state=state,
            weights=load_file(str(found / "weights.safetensors")),
            base=opt("base.safetensors"),
            snapshot=opt("snapshot.safetensors"),
            optimizer=torch.load(found / "optimizer.pt", weights_only=True),
            arrays={k: v.numpy() for k, v in load_file(str(found / "arrays.safetensors")).items()},
            trajectory=pd.read_parquet(found / "trajectory.parquet"),
        )
    except (OSError, ValueError, json.JSONDecodeError, RuntimeError) as e:
        raise UserError(f"checkpoint {found} cannot be read ({e}); delete it to start over") from None


def remove(path: str | os.PathLike) -> None:
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    for p in path.parent.glob(f".{path.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)
