"""Run directories: the unit of provenance. Atomic writes, manifests, input hashes.

Nothing half-written ever appears under the name the user asked for: a run is assembled in a
hidden sibling folder and renamed into place in one step when it is complete. A previous run is
only replaced with ``overwrite=True``, and only once the new one is complete.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from unmemorize.errors import UserError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """Hash of a file, or of a folder's files (relative names and contents, sorted)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir(tmp: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move the complete folder ``tmp`` to ``dest``, replacing any previous ``dest``.

    The old folder is renamed aside first and removed only after the new one is in place, so at every
    moment ``dest`` is either the old complete folder or the new complete one.
    """
    tmp, dest = Path(tmp), Path(dest)
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


class AtomicDir:
    """A folder that appears at ``dest`` whole or not at all: it is filled in a hidden temporary
    sibling (``tmp``) and renamed into place by :meth:`commit` (leaving the block without an exception
    commits too; with one, the temporary folder is removed and ``dest`` stays as it was). The one way
    this project writes a folder: run folders, saved models, checkpoints."""

    def __init__(self, dest: str | os.PathLike):
        self.out = Path(dest)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.tmp-"))
        self.committed = False

    def commit(self) -> Path:
        replace_dir(self.tmp, self.out)
        self.committed = True
        return self.out

    def discard(self) -> None:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self.committed:
            self.commit()
        else:
            self.discard()


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_frame(path_stem: str | os.PathLike, df: pd.DataFrame, csv: bool = True) -> None:
    """Write ``df`` as ``<stem>.parquet`` (and ``<stem>.csv``), each atomically."""
    stem = Path(path_stem)
    fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=f".{stem.name}.", suffix=".parquet")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, stem.with_suffix(".parquet"))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if csv:
        atomic_write_text(stem.with_suffix(".csv"), df.to_csv(index=False))


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("unmemorize", "torch", "transformers", "tokenizers", "accelerate", "peft", "numpy", "pandas"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_description(device: str | None = None) -> dict:
    """Where a run computes: the device type, its name (the GPU model, or the CPU), the processes and
    threads. Timings are only comparable on the same one. ``device``: the run's own (default: the one
    models are loaded onto: the current rank's under a launch, else cuda when there is one)."""
    import platform

    import torch

    from unmemorize import distributed

    d = distributed.current()
    kind = torch.device(device or (str(d.device) if d is not None else "cuda" if torch.cuda.is_available() else "cpu"))
    if kind.type == "cuda":
        name = torch.cuda.get_device_name(kind.index or 0)
    else:
        name = platform.processor() or platform.machine() or kind.type
    return {"type": kind.type, "name": name, "world_size": 1 if d is None else d.world_size,
            "torch_threads": torch.get_num_threads()}


def build_manifest(command: str, options: dict[str, Any], inputs: dict[str, Any], device: str | None = None,
                   **extra: Any) -> dict:
    """A self-describing record of a run: what was asked, on what, with which software, where."""
    where = device_description(device)
    return {
        "command": command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "options": to_jsonable(options),
        "inputs": to_jsonable(inputs),
        "versions": package_versions(),
        "git_sha": git_sha(),
        "device": where["type"],
        "device_name": where["name"],  # the GPU's (or CPU's) name: timings are only comparable on the same one
        "world_size": where["world_size"],
        "torch_threads": where["torch_threads"],
        **to_jsonable(extra),
    }


class RunDir(AtomicDir):
    """A run folder: an :class:`AtomicDir` that refuses to replace a previous run unless asked.

    Use as a context manager and :meth:`commit` when complete; leaving the block with an exception
    removes the temporary folder and leaves any previous run untouched.
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"output path {out} exists and is not a folder")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise UserError(
                f"output folder {out} already holds files (a previous run?); "
                "pass --overwrite to replace it, or choose another --out"
            )
        super().__init__(out)

    def path(self, name: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p
