"""`unmemorize evaluate` end to end on a saved tiny model and tiny task files."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from unmemorize.commands import evaluate as evaluate_command
from unmemorize.errors import UserError
from unmemorize.models import save_model
from unmemorize.tiny import tiny_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Only the evaluate command, as the real CLI registers it."""

    evaluate_command.register(app)
    return app


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model("gpt2", vocab_size=len(tokenizer), n_layer=2, d_model=64, eos_id=tokenizer.eos_token_id, seed=5)
    save_model(model, tokenizer, root / "model")
    data = root / "eval"
    (data / "copa").mkdir(parents=True)
    (data / "copa" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"premise": "The man turned on the faucet.", "choice1": "The toilet filled.", "choice2": "Water flowed.",
         "label": 1},
        {"premise": "The girl found a bug in her cereal.", "choice1": "She poured milk.",
         "choice2": "She lost her appetite.", "label": 1},
        {"premise": "The woman retired.", "choice1": "She got her pension.", "choice2": "She paid her debt.",
         "label": 0},
    ]))
    (data / "blended_skill_talk.json").write_text(json.dumps({"text": {
        "0": ["hi, how are you?", "good, you?", "fine thanks."], "1": ["do you like cats?", "yes, a lot."]}}))
    return root


def test_evaluate_writes_a_run(app, setup):
    out = setup / "runs" / "e1"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(setup / "model"), "--tasks", "copa,blended_skill_talk",
                                      "--data", str(setup / "eval"), "--max-length", "128", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "copa" in result.output and "average_acc" in result.output
    summary = json.loads((out / "utility.json").read_text())
    assert summary["mode"] == "full" and set(summary["tasks"]) == {"copa", "blended_skill_talk"}
    assert summary["tasks"]["copa"]["n"] == 3 and 0 <= summary["tasks"]["copa"]["metrics"]["acc"] <= 1
    assert summary["aggregates"]["average_f1"]["tasks"] == ["blended_skill_talk"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "evaluate" and len(manifest["inputs"]["data"]["copa"]["sha256"]) == 64
    assert (out / "utility_examples.parquet").is_file()
    assert "Utility (full mode)" in (out / "report.html").read_text()


def test_parity_mode_is_labelled(app, setup):
    out = setup / "runs" / "p1"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(setup / "model"), "--tasks", "copa", "--mode", "parity",
                                      "--limit", "2", "--data", str(setup / "eval"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "utility.json").read_text())
    assert summary["mode"] == "parity" and summary["tasks"]["copa"]["n"] == 2
    assert "N = 2" in summary["mode_description"]


@pytest.mark.parametrize("args, message", [
    (["--tasks", "piqa,bogus"], "unknown task bogus"),
    (["--tasks", "piqa"], "no file for task piqa"),
    (["--tasks", "copa", "--limit", "0"], "a positive number of examples"),
    (["--tasks", "copa", "--mode", "quick"], "--mode: got 'quick'; allowed: full, parity"),
    (["--tasks", "none"], "nothing to evaluate"),
])
def test_bad_input_fails_before_the_model_loads(app, setup, args, message):
    result = CliRunner().invoke(app, ["evaluate", "--model", str(setup / "no-such-model"), "--data",
                                      str(setup / "eval"), "--out", str(setup / "runs" / "bad"), *args])
    assert isinstance(result.exception, UserError) and message in str(result.exception)
    assert not (setup / "runs" / "bad").exists()


def test_data_is_required_for_paper_tasks(app, setup):
    result = CliRunner().invoke(app, ["evaluate", "--model", str(setup / "model"), "--tasks", "copa"])
    assert isinstance(result.exception, UserError) and "--data is required" in str(result.exception)
