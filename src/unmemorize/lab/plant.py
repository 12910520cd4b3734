"""Planting: make a model memorize chosen sequences to known, different degrees.

A pretrained model's MA mixes memorization with how predictable a kind of text is, and the default
model regurgitates little verbatim. To have ground truth, we fine-tune a copy of the model on the
member sequences, each repeated its own number of times (its *exposure*), shuffled into one stream
with ordinary text so the model stays a language model. Seeded, and cached by a key over every input.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from unmemorize import __version__
from unmemorize.data import SequenceSet
from unmemorize.errors import UserError
from unmemorize.progress import task


@dataclass(frozen=True)
class PlantConfig:
    exposures: tuple[int, ...] = (1, 2, 4, 8, 16)
    lr: float = 1e-4
    batch_size: int = 8
    mix_fraction: float = 0.2  # share of training rows that are ordinary text
    seed: int = 0

    def __post_init__(self):
        if not self.exposures or any(e < 0 for e in self.exposures):
            raise UserError(f"exposures must be non-negative counts, got {list(self.exposures)}")
        if not 0.0 <= self.mix_fraction < 1.0:
            raise UserError(f"mix fraction must be in [0, 1), got {self.mix_fraction}")
        if self.batch_size < 1 or self.lr <= 0:
            raise UserError("batch size must be ≥ 1 and the learning rate > 0")


@dataclass
class PlantResult:
    exposure: dict[str, int]  # id -> how many times the sequence was seen
    steps: int
    losses: list[float] = field(default_factory=list)
    key: str = ""


def assign_exposures(ids: list[str], exposures: tuple[int, ...], seed: int) -> dict[str, int]:
    """Spread the exposure levels evenly over the members, in a seeded random order."""
    order = list(ids)
    random.Random(seed).shuffle(order)
    return {i: exposures[k % len(exposures)] for k, i in enumerate(order)}


def plant_key(model_fingerprint: str, members: SequenceSet, mix: SequenceSet | None, cfg: PlantConfig,
              exposure: dict[str, int]) -> str:
    """Everything that determines the planted weights, hashed: same key, same model."""
    blob = json.dumps({
        "model": model_fingerprint, "members": members.input_ids.tolist(), "lengths": members.lengths.tolist(),
        "ids": members.ids, "exposure": exposure, "mix": None if mix is None else mix.input_ids.tolist(),
        "config": asdict(cfg), "unmemorize": __version__, "torch": torch.__version__,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_stream(members: SequenceSet, exposure: dict[str, int], mix: SequenceSet | None,
                    cfg: PlantConfig) -> list[tuple[str, int]]:
    """The shuffled order of training rows: ('m', i) for member i, ('x', j) for ordinary text j."""
    rows = [("m", i) for i, sid in enumerate(members.ids) for _ in range(exposure.get(sid, 0))]
    if mix is not None and len(mix) and cfg.mix_fraction > 0:
        n_mix = math.ceil(len(rows) * cfg.mix_fraction / (1 - cfg.mix_fraction))
        rows += [("x", j % len(mix)) for j in range(n_mix)]
    random.Random(cfg.seed).shuffle(rows)
    return rows


def plant(model, members: SequenceSet, exposure: dict[str, int], mix: SequenceSet | None = None,
          cfg: PlantConfig = PlantConfig(), progress=None) -> PlantResult:
    """Fine-tune ``model`` in place on the stream; one Adam step per batch, pads masked."""
    stream = training_stream(members, exposure, mix, cfg)
    if not stream:
        raise UserError("nothing to plant: every exposure count is 0")
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    steps = math.ceil(len(stream) / cfg.batch_size)
    with task(progress, "planting", steps) as bar:
        for s in range(0, len(stream), cfg.batch_size):
            batch = stream[s:s + cfg.batch_size]
            rows = [(members if kind == "m" else mix).input_ids[i, : int((members if kind == "m" else mix).lengths[i])]
                    for kind, i in batch]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), members.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for b, r in enumerate(rows):
                ids[b, : len(r)], mask[b, : len(r)] = r, 1
            ids, mask = ids.to(device), mask.to(device)
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            if not torch.isfinite(loss):
                raise RuntimeError(f"planting loss became {loss.item()} at step {len(losses) + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.advance(1)
    model.eval()
    return PlantResult(dict(exposure), len(losses), losses)


def read_plant_manifest(folder: Path) -> dict | None:
    p = Path(folder) / "plant.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
