"""A scan's results as they are measured, in chunks on disk: what makes a scan resumable.

The window stream is the same on every run of the same settings over the same files, so chunk c is
always the windows c·C … (c+1)·C − 1 (C: ``--chunk``). Each measured chunk is written at once, whole
(``part-000012.parquet``, atomically), into a folder beside the output, ``.<out>.partial``; a rerun
of the same command finds the folder, checks that the settings and the corpus files (names,
sizes, modification times) are the same, skips the chunks on disk (checking their window ids
against the stream's) and measures the rest. Only the complete scan appears under ``--out``;
then the partial folder is removed. Under a launch only the main process writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from unmemorize import distributed
from unmemorize.errors import UserError
from unmemorize.runs import write_json


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PartialScan:
    """The chunks of an unfinished scan into ``out`` (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, settings: dict, discard: bool = False):
        out = Path(out)
        self.dir = out.parent / f".{out.name}.partial"
        self.settings = settings
        self.key = fingerprint(settings)
        self.writer = distributed.is_main()
        # the main process decides (it alone may see the folder) and tells the others, so that every
        # process raises the same error or skips the same chunks
        verdict = self._open(discard) if self.writer else None
        d = distributed.current()
        verdict = d.gather_objects(verdict)[0] if d is not None else verdict
        if verdict["error"]:
            raise UserError(verdict["error"])
        self.done = set(verdict["done"])

    def _open(self, discard: bool) -> dict:
        state = self.dir / "scan.json"
        if self.dir.exists():
            try:
                before = json.loads(state.read_text())["key"]
            except (OSError, ValueError, KeyError):
                before = None
            if before != self.key and (before is not None or self._on_disk()):  # (no state, no chunk: fresh)
                if not discard:
                    return {"error": f"{self.dir} holds an interrupted scan with other settings or other corpus "
                                     "files; pass --overwrite to discard it, or choose another --out", "done": []}
                shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not state.exists():
            write_json(state, {"key": self.key, "settings": self.settings})
        return {"error": None, "done": sorted(self._on_disk())}

    def _on_disk(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.dir.glob("part-*.parquet")} if self.dir.exists() else set()

    def path(self, chunk: int) -> Path:
        return self.dir / f"part-{chunk:06d}.parquet"

    def check(self, chunk: int, ids: list[str]) -> None:
        """Refuse a chunk on disk whose windows are not the stream's (the corpus changed in place)."""
        same = pd.read_parquet(self.path(chunk), columns=["id"])["id"].tolist() == ids if self.writer else None
        d = distributed.current()
        if not (d.gather_objects(same)[0] if d is not None else same):
            raise UserError(f"{self.path(chunk)} holds other windows than the corpus gives now (was it changed "
                            "in place?); pass --overwrite to start the scan over")

    def write(self, chunk: int, frame: pd.DataFrame) -> None:
        if not self.writer:
            return
        tmp = self.dir / f".part-{chunk:06d}.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, self.path(chunk))

    def chunks(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet"))

    def remove(self) -> None:
        if self.writer:
            shutil.rmtree(self.dir, ignore_errors=True)
