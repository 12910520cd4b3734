"""The memorization lab: records, exposure assignment, the training stream, planting, caching key."""

from __future__ import annotations

import pytest

from unmemorize.lab.plant import PlantConfig, assign_exposures, plant, plant_key, training_stream
from unmemorize.lab.records import generate_records, members_and_nonmembers
from unmemorize.memorization import ProfileOptions, profile
from unmemorize.tiny import tiny_model

from conftest import make_set


def test_records_are_seeded_distinct_and_carry_their_prefix():
    a, b = generate_records(30, seed=4), generate_records(30, seed=4)
    assert a == b
    assert len({r["id"] for r in a}) == 30
    for r in a:
        assert r["text"].startswith(r["prefix"]) and "Account:" in r["text"][len(r["prefix"]):]
    mem, non = members_and_nonmembers(5, 7, seed=4)
    assert len(mem) == 5 and len(non) == 7 and not {r["id"] for r in mem} & {r["id"] for r in non}


def test_exposures_are_spread_evenly():
    ids = [f"s{i}" for i in range(10)]
    exp = assign_exposures(ids, (1, 4), seed=0)
    assert sorted(exp.values()) == [1] * 5 + [4] * 5
    assert exp == assign_exposures(ids, (1, 4), seed=0)


def test_training_stream_counts(tokenizer):
    seqs = make_set(tokenizer, ["alpha beta", "gamma delta", "epsilon"], length=8)
    mix = make_set(tokenizer, ["ordinary words here", "more words"], length=8)
    exp = {"s0": 3, "s1": 0, "s2": 1}
    stream = training_stream(seqs, exp, mix, PlantConfig(mix_fraction=0.5))
    members = [i for kind, i in stream if kind == "m"]
    assert sorted(members) == [0, 0, 0, 2]
    assert sum(kind == "x" for kind, _ in stream) == 4  # half of the rows are ordinary text


def test_planting_raises_memorization_with_exposure(tokenizer):
    texts = [r["text"] for r in generate_records(6, seed=11)]
    seqs = make_set(tokenizer, texts, length=64)
    model = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64)
    exp = {sid: (0 if i < 3 else 60) for i, sid in enumerate(seqs.ids)}
    before = profile(model, seqs, ProfileOptions(metrics=("ma",)))["ma"]
    result = plant(model, seqs, exp, None, PlantConfig(lr=5e-3, batch_size=6, seed=0))
    after = profile(model, seqs, ProfileOptions(metrics=("ma",)))["ma"]
    assert result.steps == 30
    assert after[3:].mean() > after[:3].mean() + 0.2
    assert after[3:].mean() > before[3:].mean() + 0.3


def test_plant_key_changes_with_every_input(tokenizer):
    seqs = make_set(tokenizer, ["alpha beta", "gamma delta"], length=8)
    exp = {"s0": 1, "s1": 2}
    k = plant_key("fp", seqs, None, PlantConfig(), exp)
    assert k == plant_key("fp", seqs, None, PlantConfig(), exp)
    assert k != plant_key("fp2", seqs, None, PlantConfig(), exp)
    assert k != plant_key("fp", seqs, None, PlantConfig(lr=2e-4), exp)
    assert k != plant_key("fp", seqs, None, PlantConfig(), {"s0": 2, "s1": 1})
    with pytest.raises(Exception, match="nothing to plant"):
        plant(tiny_model("gpt2", vocab_size=len(tokenizer), n_layer=1, d_model=32), seqs, {"s0": 0, "s1": 0})


def test_lab_utility_tasks_are_well_formed_and_held_out(tmp_path):
    """The offline tasks of the demo: 4 distinct choices with the gold among them, series that really
    continue, and docstrings from modules the planting mix never reads."""
    import calendar

    from unmemorize.lab.ordinary import stdlib_paragraphs
    from unmemorize.lab.utility_tasks import held_out_paragraphs, series_items, write_lab_tasks
    from unmemorize.utility.tasks import TASKS, load_task

    items = series_items(seed=3)
    assert len(items) == 7 + 12 + 21
    days = list(calendar.day_name)
    for it in items:
        assert len(set(it["choices"])) == 4
        gold = it["choices"][it["label"]].strip()
        shown = [s.strip() for s in it["context"].rstrip(",").split(",")]
        if shown[0] in days:
            assert days.index(gold) == (days.index(shown[-1]) + 1) % 7
        elif shown[0].isdigit():
            a = list(map(int, shown))
            assert int(gold) - a[-1] == a[1] - a[0]
    assert series_items(seed=3) == items and series_items(seed=4) != items
    docs = held_out_paragraphs(10)
    assert len(docs) == 10 and not set(docs) & set(stdlib_paragraphs())
    folder = write_lab_tasks(tmp_path / "data", docs=10)
    loaded = load_task(TASKS["lab_series"], folder, "full", None)
    assert len(loaded.items) == 40 and loaded.items[0].example.choices[0].startswith(" ")
    assert len(load_task(TASKS["lab_docs"], folder, "full", None).items) == 10
