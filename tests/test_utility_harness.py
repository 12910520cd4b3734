"""The lm-evaluation-harness adapter on a local-file task (no network), checked against our own
scorer: lm-eval's loglikelihood multiple choice and docs/method.md §6.1 build the same requests for COPA."""

from __future__ import annotations

import json

import pytest
import torch

from unmemorize.errors import UserError
from unmemorize.tiny import tiny_model
from unmemorize.utility import evaluate_utility
from unmemorize.utility.harness import harness_available, run_harness

ROWS = [
    {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
     "choice2": "Water flowed from the spout.", "label": 1},
    {"premise": "The girl found a bug in her cereal.", "choice1": "She poured milk in the bowl.",
     "choice2": "She lost her appetite.", "label": 1},
    {"premise": "The woman retired.", "choice1": "She received her pension.",
     "choice2": "She paid off her mortgage.", "label": 0},
    {"premise": "I wanted to conserve energy.", "choice1": "I swept the floor.",
     "choice2": "I shut off the light.", "label": 1},
    {"premise": "The hamburger meat browned.", "choice1": "The cook grilled it.", "choice2": "The cook froze it.",
     "label": 0},
]

TASK_YAML = """task: copa_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
  cache_dir: {cache}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{premise}}}}"
doc_to_choice: "{{{{[choice1, choice2]}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def local_task(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "copa").mkdir()
    data = tmp_path / "copa" / "validation.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "copa_local.yaml").write_text(TASK_YAML.format(data=data, cache=tmp_path / "hf-cache"))
    return tmp_path, tasks


@pytest.mark.skipif(not harness_available(), reason="lm_eval is an optional extra: pip install 'unmemorize[harness]' "
                                                     "(it would downgrade python-dateutil in the pinned environment)")
def test_harness_agrees_with_our_scorer_on_a_local_task(local_task, tokenizer):
    root, tasks = local_task
    model = tiny_model("gpt2", vocab_size=len(tokenizer), n_layer=2, d_model=64, eos_id=tokenizer.eos_token_id, seed=6)
    got = run_harness(model, tokenizer, "copa_local", include_path=tasks, include_defaults=False, batch_size=2)
    entry = got["tasks"]["copa_local"]
    assert entry["n"] == len(ROWS)
    ours = evaluate_utility(model, tokenizer, "copa", root)["tasks"]["copa"]
    assert entry["metrics"]["acc"] == pytest.approx(ours["metrics"]["acc"])
    # per document: lm-eval's doc_id is 0-based, our id is the file line
    theirs = dict(zip(entry["examples"]["id"], entry["examples"]["acc"]))
    assert {str(int(i) - 1): float(c) for i, c in zip(ours["examples"]["id"], ours["examples"]["correct"])} == theirs
    with pytest.raises(UserError, match="unknown lm-eval task copa_locl.*did you mean copa_local"):
        run_harness(model, tokenizer, "copa_locl", include_path=tasks, include_defaults=False)


@pytest.mark.skipif(harness_available(), reason="lm_eval is installed")
def test_harness_missing_is_a_clear_error(tokenizer):
    model = tiny_model("gpt2", vocab_size=len(tokenizer), n_layer=1, d_model=32, eos_id=tokenizer.eos_token_id)
    with pytest.raises(UserError, match=r"needs lm_eval; pip install 'unmemorize\[harness\]'"):
        run_harness(model, tokenizer, "piqa")
