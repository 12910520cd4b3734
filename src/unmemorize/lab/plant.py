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
from pydantic import field_validator

from unmemorize import __version__
from unmemorize.data import SequenceSet
from unmemorize.errors import UserError
from unmemorize.models import ModelSource
from unmemorize.options import Options, as_list, option
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


def oracle_stream(stream: list[tuple[str, int]], forget_rows: set[int], mix: SequenceSet) -> list[tuple[str, int]]:
    """The retrain oracle's stream: the planting stream with every row of a forget member replaced by
    ordinary text (the next mix rows, in order), in place — same length, same order, same steps."""
    used = sum(kind == "x" for kind, _ in stream)
    out = []
    for kind, i in stream:
        if kind == "m" and i in forget_rows:
            out.append(("x", used % len(mix)))
            used += 1
        else:
            out.append((kind, i))
    return out


def plant(model, members: SequenceSet, exposure: dict[str, int], mix: SequenceSet | None = None,
          cfg: PlantConfig = PlantConfig(), progress=None, stream: list[tuple[str, int]] | None = None,
          label: str = "planting") -> PlantResult:
    """Fine-tune ``model`` in place on the stream (default: :func:`training_stream`); one Adam step per
    batch, pads masked."""
    stream = training_stream(members, exposure, mix, cfg) if stream is None else stream
    if not stream:
        raise UserError("nothing to plant: every exposure count is 0")
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    steps = math.ceil(len(stream) / cfg.batch_size)
    with task(progress, label, steps) as bar:
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


# ---------------------------------------------------------------- a planted model folder


ORACLE = "oracle"  # the retrain oracle's folder inside a planted model folder
MEMBERS = "members.jsonl"  # a copy of the planted members (id, text) inside a planted model folder


def keep_members(out: Path, members) -> Path:
    """Keep the planted members beside the model that learnt them: a run judged against the oracle reads
    its retain members from here, whatever became of the file they were planted from (a demo's
    temporary folder, a moved dataset)."""
    from unmemorize.lab.records import write_jsonl

    path = Path(out) / MEMBERS
    if not path.is_file():
        write_jsonl(path, [{"id": i, "text": t} for i, t in zip(members.ids, members.texts)])
    return path


def members_of(folder: Path) -> Path | None:
    """The planted members' file of a planted model folder or of its oracle, where there is one."""
    for candidate in (Path(folder) / MEMBERS, Path(folder).parent / MEMBERS):
        if candidate.is_file():
            return candidate
    return None


class PlantSpec(Options):
    """What to plant into which model, and how (``unmemorize plant``)."""

    model: ModelSource = option(ModelSource(), "The model to plant into (a copy is trained; the input is only read).")
    members: Path = option(..., "Sequences to plant: CSV, JSONL, text file or folder.")
    forget: Path | None = option(None, "Members to forget (a file of some of them): also train the retrain oracle, "
                                       "planted the same way with these replaced by ordinary text.")
    forget_ids: tuple[str, ...] = option((), "The same by id (comma-separated).", split=True)
    exposures: tuple[int, ...] = option((1, 2, 4, 8, 16), "Exposure counts, spread evenly over the members.",
                                        split=True)
    mix: Path | None = option(None, "Ordinary text mixed in (default: Python standard-library docstrings).")
    mix_fraction: float = option(0.2, "Share of training rows of ordinary text.", ge=0.0, lt=1.0,
                                 allowed="a number in [0, 1)")
    lr: float = option(1e-4, "Adam learning rate.", gt=0)
    batch_size: int = option(8, "Training rows per step.", ge=1)
    length: int = option(200, "Tokens per sequence T.", ge=2)
    seed: int = option(0, "Random seed (exposure assignment, stream order, training).")

    @field_validator("exposures", mode="before")
    @classmethod
    def _counts(cls, v):
        v = as_list(v)
        if not v or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in v):
            raise ValueError(f"exposures are non-negative counts like 1,2,4,8,16, got {v!r}")
        return v

    @field_validator("forget_ids", mode="before")
    @classmethod
    def _ids(cls, v):
        return () if v is None else tuple(str(x) for x in as_list(v))


def plant_into(lm, members_path: Path, exposures: tuple[int, ...], out: Path, *, forget: list[str] | None = None,
               mix_path: Path | None = None, length: int = 200, lr: float = 1e-4, batch_size: int = 8,
               mix_fraction: float = 0.2, seed: int = 0, log=print, progress=None) -> tuple[Path, dict]:
    """Plant into a copy of the loaded model ``lm`` (or reuse a cached plant) and return the planted
    model folder and its manifest.

    The folder is a complete Hugging Face model folder plus ``plant.json`` (who was planted how often).
    With ``forget`` (ids of some members) it also holds the retrain oracle in ``<out>/oracle``: the same
    base, seed, stream and number of steps, each row of a forget member replaced by ordinary text —
    the model that never saw them, which judges unlearning (``manifest["oracle"]`` names it). The loaded
    model is trained in place: load it again for anything else.
    """
    import copy

    import pandas as pd

    from unmemorize.data import TextRecords, load_sequences, tokenize
    from unmemorize.lab.ordinary import stdlib_paragraphs
    from unmemorize.models import save_model
    from unmemorize.runs import build_manifest, write_json

    members = load_sequences(members_path, lm.tokenizer, length)
    forget = list(dict.fromkeys(forget or ()))
    unknown = [f for f in forget if f not in set(members.ids)]
    if unknown:
        raise UserError(f"the forget set must be part of the members {members.source}: "
                        f"{len(unknown)} id(s) are not among them ({', '.join(unknown[:5])})")
    if mix_path is not None:
        mix = load_sequences(mix_path, lm.tokenizer, length)
        mix_desc = mix.describe()
    else:
        paras = stdlib_paragraphs()
        mix = tokenize(TextRecords(paras, [f"stdlib-{i}" for i in range(len(paras))],
                                   pd.DataFrame(index=range(len(paras))), "python standard-library docstrings"),
                       lm.tokenizer, min(length, 128))
        mix_desc = {"source": "python standard-library docstrings", "sequences": len(mix)}
    cfg = PlantConfig(tuple(exposures), lr, batch_size, mix_fraction, seed)
    exposure = assign_exposures(members.ids, cfg.exposures, seed)
    key = plant_key(lm.fingerprint, members, mix if mix_fraction > 0 else None, cfg, exposure)
    okey = hashlib.sha256(json.dumps([key, forget, mix.input_ids.tolist()]).encode()).hexdigest()[:16]
    out = Path(out)
    existing = read_plant_manifest(out)
    oracle_ok = not forget or (existing is not None and (existing.get("oracle") or {}).get("key") == okey
                                and (out / ORACLE / "plant.json").is_file())
    if existing is not None and existing.get("key") == key and oracle_ok:
        log(f"Reusing the planted model in {out} (same inputs, key {key}).")
        keep_members(out, members)  # plants cached before the copy was kept get it now (same key: same members)
        return out, existing
    if out.exists() and any(out.iterdir()) and existing is None:
        raise UserError(f"{out} exists and is not a planted model folder; choose another --out")
    base = copy.deepcopy(lm.model) if forget else None  # the oracle starts from the same base
    options = {"exposures": list(cfg.exposures), "lr": lr, "batch_size": batch_size, "mix_fraction": mix_fraction,
               "length": length}
    inputs = {"model": lm.describe(), "members": members.describe(), "mix": mix_desc}
    if existing is not None and existing.get("key") == key:
        manifest = existing
    else:
        result = plant(lm.model, members, exposure, mix, cfg, progress)
        manifest = build_manifest("plant", options, inputs, seed=seed, key=key, exposure=exposure, steps=result.steps,
                                  losses=result.losses)
        save_model(lm.model, lm.tokenizer, out, files={"plant.json": manifest})
    if forget:
        rows = {i for i, sid in enumerate(members.ids) if sid in set(forget)}
        stream = oracle_stream(training_stream(members, exposure, mix, cfg), rows, mix)
        result = plant(base, members, exposure, mix, cfg, progress, stream=stream, label="planting the oracle")
        retain = [sid for sid in members.ids if sid not in set(forget)]
        oracle = build_manifest("plant-oracle", options, inputs, seed=seed, key=okey, of=key, forget=forget,
                                retain=retain, exposure={sid: (0 if sid in set(forget) else e)
                                                         for sid, e in exposure.items()},
                                steps=result.steps, losses=result.losses)
        save_model(base, lm.tokenizer, out / ORACLE, files={"plant.json": oracle})
        manifest = {**manifest, "oracle": {"path": str(out / ORACLE), "key": okey, "forget": forget,
                                           "retain": retain}}
        write_json(out / "plant.json", manifest)
    keep_members(out, members)
    return out, manifest


def spread_forget(ids: list[str], exposures: tuple[int, ...], n: int, seed: int) -> list[str]:
    """``n`` members to forget, taken round-robin over the exposure levels (most exposed first), so that
    the forget set and the members that stay span the same degrees of memorization."""
    exposure = assign_exposures(ids, exposures, seed)
    levels = {e: [sid for sid in ids if exposure[sid] == e] for e in sorted(set(exposure.values()), reverse=True)}
    out: list[str] = []
    while len(out) < n:
        for e in levels:
            if levels[e] and len(out) < n:
                out.append(levels[e].pop(0))
    return out


def forget_ids_of(spec: PlantSpec, tokenizer) -> list[str]:
    """The members to forget: the ids of ``spec.forget``'s file (by id, else by text) and ``spec.forget_ids``."""
    from unmemorize.data import load_sequences

    ids = list(spec.forget_ids)
    if spec.forget is not None:
        members = load_sequences(spec.members, tokenizer, spec.length)
        chosen = load_sequences(spec.forget, tokenizer, spec.length)
        by_text = {t: i for i, t in zip(members.ids, members.texts)}
        for sid, text in zip(chosen.ids, chosen.texts):
            ids.append(sid if sid in set(members.ids) else by_text.get(text, sid))
    return ids


def plant_run(spec: PlantSpec, out: Path, *, log=print, progress=None) -> tuple[Path, dict]:
    """``unmemorize plant``'s work: load the model and plant (cached by every input); with a forget set,
    the retrain oracle too."""
    from unmemorize import distributed

    distributed.one_process_only("plant", "it fine-tunes one copy of the model into one cached folder")
    lm = spec.model.load(log=log)
    return plant_into(lm, spec.members, spec.exposures, out, forget=forget_ids_of(spec, lm.tokenizer),
                      mix_path=spec.mix, length=spec.length, lr=spec.lr, batch_size=spec.batch_size,
                      mix_fraction=spec.mix_fraction, seed=spec.seed, log=log, progress=progress)
