"""The baselines as the paper ran them: DPD is attacked and evaluated through its decoding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from unmemorize.decoding import DPDModel, dpd_logits

from unlearning_fixtures import records, small_lab


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("mode", ["logits", "probs"])
def test_dpd_model_shows_the_mixed_distribution_and_keeps_greedy(mode):
    tok, model, forget, _ = small_lab()
    wrapped = DPDModel(model, 0.2, mode)
    ids, mask = forget.input_ids[:3], forget.attention_mask[:3]
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        mixed = wrapped(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(mixed, dpd_logits(plain, 0.2, mode))
    assert torch.equal(mixed.argmax(-1), plain.argmax(-1))  # greedy decoding is unchanged
    # by hand, "logits": the mixed log-probabilities are those of temperature 1/λ
    if mode == "logits":
        torch.testing.assert_close(torch.log_softmax(mixed, -1), torch.log_softmax(0.2 * plain, -1), rtol=1e-4,
                                   atol=1e-5)
    assert wrapped.config is model.config and list(wrapped.parameters())[0] is list(model.parameters())[0]
    out = wrapped.generate(input_ids=ids[:1, :5], max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    ref = model.generate(input_ids=ids[:1, :5], max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    assert torch.equal(out, ref)


def test_a_dpd_run_is_attacked_through_its_decoding(tmp_path):
    """`unlearn --method dpd` runs the attacks after (they used to be skipped): the loss attack's score
    of each member is its mean NLL under the mixed distribution, by hand."""
    from typer.testing import CliRunner

    from unmemorize.cli import app
    from unmemorize.models import save_model

    tok, model, forget, unseen = small_lab()
    save_model(model, tok, tmp_path / "model")
    pd.DataFrame({"id": forget.ids, "text": forget.texts}).to_csv(tmp_path / "forget.csv", index=False)
    pd.DataFrame({"id": unseen.ids, "text": records(8, seed=8)}).to_csv(tmp_path / "unseen.csv", index=False)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["unlearn", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.csv"),
                                   "--reference", str(tmp_path / "unseen.csv"), "--method", "dpd", "--length", "40",
                                   "--attacks", "loss", "--bootstrap", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    from unmemorize.record import read_record

    r = read_record(out)
    assert r.attacks.after is not None and np.isfinite(r.attacks.after["loss"].auc.value)
    assert any("DPD" in n for n in r.notes)
    # the per-sequence scores: − mean NLL under the mixed distribution (λ = 0.2), by hand
    scores = pd.read_parquet(out / "attack_scores.parquet")
    member = scores[scores["member"]].set_index("id")["loss"]
    with torch.no_grad():
        for i, sid in enumerate(forget.ids):
            n = int(forget.lengths[i])
            ids = forget.input_ids[i:i + 1, :n]
            logp = torch.log_softmax(dpd_logits(model(input_ids=ids).logits[0, :-1], 0.2, "logits"), -1)
            nll = -logp.gather(1, ids[0, 1:, None]).mean().item()
            assert member[sid] == pytest.approx(-nll, abs=1e-4)
