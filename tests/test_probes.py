"""Robustness probes (docs/method.md §3.8): quantization, relearning, prompt variants and sampling against slow
references; resurfacing and its oracle baseline; `unmemorize probe` end to end; `unlearn --probes` in record.json;
bad input refused in one line before any work."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from unlearning_fixtures import assert_same_weights, one_thread, small_lab, weights

from unmemorize.errors import UserError
from unmemorize.probes import prompts as pr
from unmemorize.probes import resurface as rs
from unmemorize.probes.options import ProbeSettings
from unmemorize.probes.quantize import (
    output_axis,
    quantize_model,
    quantize_rtn,
    quantized_copy,
)
from unmemorize.probes.relearn import batch_order
from unmemorize.tiny import tiny_model

TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- quantization


def slow_quantize(w: torch.Tensor, bits: int, axis: int) -> torch.Tensor:
    """Element by element in Python floats: s_c = max|w_c| / q_max, ŵ = s_c · clamp(round(w / s_c))."""
    qmax = 2 ** (bits - 1) - 1
    moved = w.detach().double().movedim(axis, 0)
    out = torch.empty_like(moved)
    for c in range(moved.shape[0]):
        values = moved[c].reshape(-1).tolist()
        scale = max(abs(v) for v in values) / qmax
        q = [0.0 if scale == 0 else scale * max(-qmax, min(qmax, round(v / scale))) for v in values]
        out[c] = torch.tensor(q, dtype=torch.float64).reshape(moved[c].shape)
    return out.movedim(0, axis).to(w.dtype)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape, axis", [((6, 5), 0), ((5, 7), 1), ((3, 4, 2), 0)])
def test_quantization_matches_the_slow_reference(bits, shape, axis):
    g = torch.Generator().manual_seed(bits * 10 + axis)
    w = torch.randn(*shape, generator=g)
    w.select(axis, 1).zero_()  # a channel of zeros stays zero
    w.select(axis, 0)[..., 0] = 0.5 * w.select(axis, 0).abs().max()  # values on the grid's half steps
    got = quantize_rtn(w, bits, axis)
    assert torch.equal(got, slow_quantize(w, bits, axis))
    assert got.dtype == w.dtype and torch.all(got.select(axis, 1) == 0)
    levels = {float(v) for v in (got.select(axis, 0) / (w.select(axis, 0).abs().max() / (2 ** (bits - 1) - 1))).round()
              .reshape(-1)}
    assert len(levels) <= 2 ** bits - 1 and max(abs(v) for v in levels) <= 2 ** (bits - 1) - 1


def test_every_linear_conv1d_and_embedding_weight_is_quantized_once_on_a_copy():
    for arch in ("gpt2", "llama"):  # GPT-2: Conv1D [in, out] and tied embeddings; Llama: Linear
        model = tiny_model(arch, vocab_size=64, n_layer=1, d_model=16, n_head=2, n_positions=32, seed=3)
        before = weights(model)
        q = quantized_copy(model, 4)
        assert_same_weights(weights(model), before)  # the model itself is untouched
        done = set()
        for (name, mod), (_, qmod) in zip(model.named_modules(), q.named_modules()):
            axis = output_axis(mod)
            if axis is None or id(mod.weight) in done:
                continue
            done.add(id(mod.weight))
            assert torch.equal(qmod.weight, slow_quantize(mod.weight, 4, axis)), name
            if type(mod).__name__ == "Conv1D":
                assert axis == 1
        assert done
        for name, p in q.named_parameters():  # biases and norms stay as they were
            if name.endswith("bias") or "ln" in name or "norm" in name:
                assert torch.equal(p, dict(model.named_parameters())[name]), name
    tied = tiny_model("gpt2", vocab_size=64, n_layer=1, d_model=16, n_head=2, n_positions=32, seed=3)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    n = quantize_model(tied, 8)
    assert n == sum(1 for m in tied.modules() if output_axis(m) is not None) - 1  # the tied weight counted once


def test_8_bits_change_the_logits_less_than_4_bits():
    model = tiny_model("gpt2", vocab_size=128, n_layer=2, d_model=32, n_head=2, n_positions=32, seed=5)
    ids = torch.randint(0, 128, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        d8 = (quantized_copy(model, 8)(input_ids=ids).logits - ref).abs().mean().item()
        d4 = (quantized_copy(model, 4)(input_ids=ids).logits - ref).abs().mean().item()
    assert 0 < d8 < d4 / 4


# ---------------------------------------------------------------- relearning order, prompts, sampling


def test_relearning_batches_see_every_row_once_per_pass():
    steps = batch_order(5, 7, 3, seed=1)
    assert [len(b) for b in steps] == [3] * 7
    flat = np.concatenate(steps).tolist()
    for p in range(len(flat) // 5):  # each run of 5 consecutive rows is one permutation
        assert sorted(flat[5 * p:5 * p + 5]) == list(range(5))
    assert all(np.array_equal(a, b) for a, b in zip(steps, batch_order(5, 7, 3, seed=1)))  # seeded
    assert not all(np.array_equal(a, b) for a, b in zip(steps, batch_order(5, 7, 3, seed=2)))
    assert [len(b) for b in batch_order(2, 3, 8, seed=0)] == [2, 2, 2]  # never more rows than the data


def test_prompt_variants_are_built_as_specified():
    tok, _, forget, _ = small_lab()
    assert pr.change_case("Record 123. Name: Ada") == "record 123. name: ada"
    assert pr.change_case("record 123") == "RECORD 123"
    assert pr.change_whitespace("a b\n\nc") == "a  b\n\n c"
    assert pr.change_whitespace("abc") == " abc"
    assert pr.truncate([1, 2, 3, 4, 5, 6], 0.5) == [4, 5, 6] and pr.truncate([1, 2, 3], 0.1) == [3]
    prefix = forget.input_ids[0, :12].tolist()
    text = tok.decode(prefix)
    assert pr.variant("prompt-case", tok, prefix) == pr.encode(tok, text.lower())
    assert pr.variant("prompt-whitespace", tok, prefix) == pr.encode(tok, pr.change_whitespace(text))
    assert pr.variant("prompt-truncate", tok, prefix, keep=0.25) == prefix[-3:]
    assert not pr.has_chat_template(tok)
    tok.chat_template = TEMPLATE
    try:
        chat = pr.variant("prompt-chat", tok, prefix)
        assert tok.decode(chat) == f"<|user|>{text}<|assistant|>"
        assert chat == pr.encode(tok, tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                               add_generation_prompt=True))
    finally:
        tok.chat_template = None
    with pytest.raises(ValueError, match="unknown prompt variant"):
        pr.variant("prompt-rhyme", tok, prefix)


@torch.no_grad()
def _greedy(model, prompt: list[int], m: int) -> list[int]:
    ids = list(prompt)
    for _ in range(m):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_prompt_measures_equal_greedy_decoding_and_exact_sampling_probabilities():
    tok, model, forget, _ = small_lab()
    win = pr.windows(forget, 15, 12)
    prompts = [pr.variant("prompt-truncate", tok, p, 0.6) for p in win.prefixes]
    st = pr.suffix_statistics(model, prompts, win.suffixes, pad_id=forget.pad_id, temperatures=(0.7,), top_k=5,
                              batch_size=3)
    hits_seen = 0
    for p, s, c, q in zip(prompts, win.suffixes, st.correct, st.q[0.7]):
        out = _greedy(model, p, len(s))  # slow: decode token by token
        matched = next((i for i, (a, b) in enumerate(zip(out, s)) if a != b), len(s))
        g = pr.greedy_measures(c)
        assert g["matched"] == matched / len(s) and g["extraction"] == float(matched == len(s))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + s])).logits[0, len(p) - 1:len(p) - 1 + len(s)]
        assert g["suffix_ma"] == pytest.approx(float((logits.argmax(-1) == torch.tensor(s)).float().mean()))
        q_ref = []  # the sampler's probability of the true token: softmax of logits / T over the top 5
        for z, target in zip(logits.double().tolist(), s):
            top = sorted(range(len(z)), key=lambda v: -z[v])[:5]
            e = {v: math.exp((z[v] - z[top[0]]) / 0.7) for v in top}
            q_ref.append(e.get(target, 0.0) / sum(e.values()))
        assert np.allclose(q, q_ref, atol=1e-6)
        sm = pr.sampling_measures(q, 20, np.random.default_rng(0))
        assert sm["p_suffix"] == pytest.approx(float(np.prod(q)))
        assert sm["p_any"] == pytest.approx(1 - (1 - np.prod(q)) ** 20)
        assert sm["matched"] == pytest.approx(np.mean(np.cumprod(q)))
        assert sm == pr.sampling_measures(q, 20, np.random.default_rng(0))  # seeded
        hits_seen += sm["hits"]
    assert st.cut == 0


# ---------------------------------------------------------------- resurfacing (pure) against slow references


def slow_status(b, a, margin, ob=None, oa=None):
    out = []
    for i in range(len(b)):
        vals = [b[i], a[i]] + ([] if oa is None else [oa[i]]) + ([] if ob is None else [ob[i]])
        if any(math.isnan(v) for v in vals):
            out.append("unmeasured")
        elif oa is None:
            out.append("resurfaced" if a[i] - b[i] > margin + 1e-9 else "forgotten")
        elif ob is not None and b[i] - ob[i] > margin + 1e-9:
            out.append("not forgotten")
        else:
            out.append("resurfaced" if a[i] - oa[i] > margin + 1e-9 else "forgotten")
    return out


def test_resurfacing_is_after_minus_before_and_the_oracle_is_the_baseline():
    rng = np.random.default_rng(3)
    b, a, ob, oa = (rng.choice([0.0, 0.1, 0.2, 0.25, 0.3, 0.5, np.nan], 200) for _ in range(4))
    assert np.array_equal(rs.resurfacing(b, a), a - b, equal_nan=True)
    for margin in (0.0, 0.05, 0.1):
        assert rs.status(b, a, margin).tolist() == slow_status(b, a, margin)
        assert rs.status(b, a, margin, ob, oa).tolist() == slow_status(b, a, margin, ob, oa)
        assert rs.status(b, a, margin, None, oa).tolist() == slow_status(b, a, margin, None, oa)
    # by hand: a margin of 0.05 MA over the oracle after the same probe
    got = rs.status([0.1, 0.1, 0.1, 0.5, 0.1], [0.4, 0.36, 0.35, 0.6, 0.2], 0.05, [0.1, 0.1, 0.1, 0.1, 0.1],
                    [0.3, 0.3, 0.3, 0.6, 0.1])
    assert got.tolist() == ["resurfaced", "resurfaced", "forgotten", "not forgotten", "resurfaced"]
    assert rs.status([0.1], [0.15], 0.05).tolist() == ["forgotten"]  # exactly the margin is not more than it
    b, a, m = np.array([0.1, 0.2, np.nan]), np.array([0.3, 0.2, 0.9]), np.array([0.9, 0.6, 0.9])
    assert rs.share_recovered(b, a, m) == pytest.approx((0.2 + 0.0) / (0.8 + 0.4))
    assert math.isnan(rs.share_recovered([0.5], [0.6], [0.5]))


# ---------------------------------------------------------------- the probes on a tiny memorizing model


@pytest.fixture(scope="module")
def unlearned():
    """The tiny memorizing model of the unlearning tests and its GA-unlearned copy: (tok, U, M, forget, unseen)."""
    from unmemorize.unlearning import UnlearnOptions, unlearn

    tok, model, forget, unseen = small_lab()
    with one_thread():
        res = unlearn(model, forget, tau=0.3, method="ga", stop="mean", seed=0,
                      options=UnlearnOptions(lr=1e-2, max_steps=10, micro_batch=8, checkpoint_every=0))
    return tok, res.model, model, forget, unseen


def test_relearning_on_half_the_forget_set_brings_the_other_half_back(unlearned):
    from unmemorize.probes.run import run_probes

    tok, U, M, forget, unseen = unlearned
    before_u, before_m = weights(U), weights(M)
    s = ProbeSettings(names=("relearn-forget", "quant-8bit"), steps=5, lr=1e-3, prefix=20, suffix=20, seed=1)
    r = run_probes(U, tok, forget, settings=s, original=M, reference=unseen)
    assert_same_weights(weights(U), before_u)  # probes work on copies
    assert_same_weights(weights(M), before_m)
    p = r.record.probes["relearn-forget"]
    half = r.frame[r.frame["probe"] == "relearn-forget"]
    assert p.sequences == len(half) == len(forget) - len(forget) // 2 and p.measured_on.startswith("held-out")
    assert p.after["ma"] > p.before["ma"] + 0.03  # the held-out half's MA came back
    assert p.recovered is not None and p.recovered > 0
    assert np.allclose(half["ma_rise"], half["ma_after"] - half["ma_before"])
    assert p.resurfaced == int((half["ma_after"] - half["ma_before"] > s.margin + 1e-9).sum())  # no oracle: own level
    assert p.seconds > 0 and p.oracle_seconds is None and p.details["steps"] == 5
    again = run_probes(U, tok, forget, settings=s, reference=unseen)  # seeded: the same halves, the same numbers
    assert again.record.probes["relearn-forget"].after == p.after


def test_the_oracle_baseline(unlearned):
    from unmemorize.probes.run import run_probes

    tok, U, M, forget, unseen = unlearned
    s = ProbeSettings(names=("quant-4bit", "prompt-case", "sampling"), prefix=20, suffix=20, temperatures=(0.7,))
    r = run_probes(U, tok, forget, settings=s, oracle=M, reference=unseen)  # M stands in for an oracle here
    assert set(r.record.probes) == {"quant-4bit", "prompt-case", "sampling@0.7"}
    for name, p in r.record.probes.items():
        f = r.frame[r.frame["probe"] == name]
        m = p.measure
        expect = rs.status(f[f"{m}_before"], f[f"{m}_after"], s.margin, f[f"{m}_oracle_before"], f[f"{m}_oracle_after"])
        assert f["status"].tolist() == expect.tolist()
        assert np.allclose(f["excess"], f[f"{m}_after"] - f[f"{m}_oracle_after"], equal_nan=True)
        assert p.baseline == "oracle" and p.oracle_seconds is not None
        # the memorizing model is far above the unlearned one before any probe: nothing "not forgotten"
        assert p.not_forgotten == 0
    assert r.record.probes["prompt-case"].measure == "matched"
    assert r.record.probes["sampling@0.7"].details["temperature"] == 0.7


def test_the_oracles_outcome_is_reused_only_for_the_same_inputs(unlearned):
    """Probing two unlearned models against one oracle probes the oracle once: the second call never runs it and
    gives the numbers a call without the cache gives; other settings (another seed) run it again."""
    from unmemorize.probes.run import run_probes

    tok, U, M, forget, unseen = unlearned
    s = ProbeSettings(names=("relearn-forget", "quant-8bit", "prompt-case", "sampling"), steps=2, lr=1e-3, prefix=20,
                      suffix=20, temperatures=(0.7,), samples=3, seed=1)
    calls = []
    hook = M.register_forward_pre_hook(lambda *a: calls.append(1))  # M stands in for the oracle (counts its passes)
    try:
        cache: dict = {}
        first = run_probes(U, tok, forget, settings=s, oracle=M, reference=unseen, oracle_cache=cache)
        assert len(cache) == 4 and calls  # one outcome per probe, the oracle ran
        calls.clear()
        second = run_probes(M, tok, forget, settings=s, oracle=M, reference=unseen, oracle_cache=cache)
        assert not any("reused" in n for n in first.record.notes) and any("reused" in n for n in second.record.notes)
        ran_as_unlearned = len(calls)
        calls.clear()
        plain = run_probes(M, tok, forget, settings=s, oracle=M, reference=unseen)
        assert len(calls) > ran_as_unlearned  # without the cache the oracle's passes come on top
        cols = [c for c in plain.frame.columns if "oracle" in c or c in ("excess", "status")]
        pd.testing.assert_frame_equal(second.frame[cols], plain.frame[cols])
        for name, p in second.record.probes.items():
            assert p.oracle_after == plain.record.probes[name].oracle_after
            assert p.oracle_seconds == first.record.probes[name].oracle_seconds  # the time it took when it ran
        calls.clear()
        run_probes(U, tok, forget, settings=s.model_copy(update={"seed": 2}), oracle=M, reference=unseen,
                   oracle_cache=cache)
        assert len(cache) == 8  # another seed is another outcome
    finally:
        hook.remove()


# ---------------------------------------------------------------- the planted lab: CLI end to end


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tokenizer):
    """A tiny GPT-Neo with 8 records planted, 4 forgotten by the oracle, and a GA-unlearned copy saved:
    (root, planted folder, unlearned folder)."""
    from unmemorize.lab.plant import ORACLE, assign_exposures, plant_into
    from unmemorize.lab.records import generate_records, write_jsonl
    from unmemorize.models import load_model, save_model
    from unmemorize.unlearning import UnlearnOptions, unlearn

    root = tmp_path_factory.mktemp("probes")
    model = tiny_model("gpt_neo", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64,
                       n_positions=128, seed=2)
    save_model(model, tokenizer, root / "base")
    recs = generate_records(16, seed=21)
    write_jsonl(root / "members.jsonl", recs[:8])
    write_jsonl(root / "unseen.jsonl", recs[8:])
    with one_thread():
        exposure = assign_exposures([r["id"] for r in recs[:8]], (20, 40), seed=0)
        forget = [sid for sid, e in exposure.items() if e == 40][:2] + [sid for sid, e in exposure.items() if e == 20][:2]
        folder, _ = plant_into(load_model(str(root / "base"), log=lambda m: None), root / "members.jsonl", (20, 40),
                               root / "planted", forget=forget, length=96, lr=3e-3, batch_size=8, seed=0,
                               log=lambda m: None)
        write_jsonl(root / "forget.jsonl", [r for r in recs[:8] if r["id"] in forget])
        write_jsonl(root / "retain.jsonl", [r for r in recs[:8] if r["id"] not in forget])
        from unmemorize.data import load_sequences

        planted = load_model(str(folder), log=lambda m: None)
        seqs = load_sequences(root / "forget.jsonl", planted.tokenizer, 96)
        res = unlearn(planted.model, seqs, tau=0.2, method="ga", stop="mean", seed=0,
                      options=UnlearnOptions(lr=3e-3, max_steps=8, micro_batch=4, checkpoint_every=0))
        save_model(res.model, planted.tokenizer, root / "unlearned")
    assert (folder / ORACLE / "config.json").is_file()
    return root, folder, root / "unlearned"


def _cli(args):
    from typer.testing import CliRunner

    from unmemorize.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_probe_command_end_to_end(lab, tmp_path):
    from unmemorize.probes.summary import ProbesRecord

    root, planted, unlearned_dir = lab
    before = (unlearned_dir / "model.safetensors").read_bytes()
    out = tmp_path / "probe"
    res = _cli(["probe", "--model", unlearned_dir, "--original", planted, "--oracle", planted / "oracle", "--forget",
                root / "forget.jsonl", "--reference", root / "unseen.jsonl", "--retain-members", root / "retain.jsonl",
                "--length", 96, "--probe-steps", 2, "--probe-lr", 1e-3, "--probe-prefix", 16, "--probe-suffix", 24,
                "--probe-samples", 4, "--out", out])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (unlearned_dir / "model.safetensors").read_bytes() == before  # U is only read
    record = ProbesRecord.model_validate_json((out / "probes.json").read_text())
    expected = {"relearn-reference", "relearn-retain", "relearn-forget", "quant-8bit", "quant-4bit", "prompt-case",
                "prompt-whitespace", "prompt-truncate", "sampling@0.7", "sampling@1"}
    assert set(record.probes) == expected
    assert "prompt-chat" in record.skipped and "chat template" in record.skipped["prompt-chat"]  # came with 'all'
    assert record.oracle and record.original
    frame = pd.read_parquet(out / "probes.parquet")
    assert set(frame["probe"]) == expected and (out / "probes.csv").is_file()
    for name, p in record.probes.items():
        assert (out / f"probe_{name.replace('@', '-t')}.png").is_file()
        assert p.seconds >= 0 and p.oracle_seconds is not None and p.original is not None
        f = frame[frame["probe"] == name]
        assert p.resurfaced == int((f["status"] == "resurfaced").sum())
    assert record.probes["relearn-retain"].details["rows"] == 4
    html = (out / "report.html").read_text()
    assert "Robustness probes" in html and "Probe relearn-forget" in html and html.count("<img") == len(expected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "probe" and manifest["inputs"]["oracle"]["path"] == str(planted / "oracle")
    assert "resurfaced" in res.output


def test_unlearn_with_probes_records_them(lab, tmp_path):
    from unmemorize.record import read_record

    root, planted, _ = lab
    out = tmp_path / "run"
    res = _cli(["unlearn", "--model", planted, "--forget", root / "forget.jsonl", "--reference", root / "unseen.jsonl",
                "--oracle", planted / "oracle", "--length", 96, "--method", "ga", "--lr", 3e-3, "--max-steps", 2,
                "--micro-batch", 4, "--no-attacks", "--checkpoint-every", 0, "--probes", "quantize,relearn-retain,prompts",
                "--probe-steps", 1, "--probe-prefix", 16, "--probe-suffix", 24, "--out", out])
    assert res.exit_code == 0, res.output + repr(res.exception)
    r = read_record(out)
    assert r.probes is not None and r.probes.oracle
    # relearn-retain: the retain members come from the oracle's manifest; prompt-chat skipped (no template)
    assert set(r.probes.probes) == {"relearn-retain", "quant-8bit", "quant-4bit", "prompt-case", "prompt-whitespace",
                                    "prompt-truncate"}
    assert "prompt-chat" in r.probes.skipped
    assert r.spec["probes"]["names"] == ["quantize", "relearn-retain", "prompts"] and "probes" in r.timings
    for f in ("probes.json", "probes.parquet", "probes.csv", "probes.html", "probe_quant-4bit.png"):
        assert (out / f).is_file(), f
    # the run's own report holds the probes too: their summary and a section per probe, beside the oracle's verdicts
    page = (out / "report.html").read_text()
    assert "Robustness probes: does it come back?" in page and "Probe quant-4bit" in page
    assert page.index("Judged against the retrain oracle") < page.index("Robustness probes: does it come back?")
    # a run without probes: no probes in its record or its spec (run keys unchanged)
    plain = tmp_path / "plain"
    res = _cli(["unlearn", "--model", planted, "--forget", root / "forget.jsonl", "--tau", 0.2, "--length", 96,
                "--method", "ga", "--max-steps", 1, "--micro-batch", 4, "--no-attacks", "--checkpoint-every", 0,
                "--out", plain])
    assert res.exit_code == 0, res.output + repr(res.exception)
    r = read_record(plain)
    assert r.probes is None and "probes" not in r.spec


# ---------------------------------------------------------------- options and bad input


def test_probe_flags_are_the_settings_keys_and_a_run_config_reaches_the_run():
    import typer

    from unmemorize.commands import probe, unlearn
    from unmemorize.experiments.grid import expand, resolved_settings
    from unmemorize.spec import RunSpec, config_from_dict

    def keys(module):
        app = typer.Typer()
        module.register(app)
        return {f.key: f for f in app.registered_commands[0].callback.flags}

    got, run = keys(probe), keys(unlearn)
    assert {k for k in got if k.startswith("probes.")} == {k for k in run if k.startswith("probes.")} == {
        f"probes.{n}" for n in ProbeSettings.model_fields}
    assert got["probes.names"].default == ("all",) and run["probes.names"].default == ()
    assert run["probes.steps"].default == ProbeSettings().steps == 10
    assert run["probes.names"].names == ("--probes",)
    cfg = config_from_dict({"model": "m", "tau": 0.3, "forget": "f.jsonl", "method": "ga",
                            "probes": {"names": ["relearn", "quantize"], "steps": 3}}, "c.yaml")
    spec = expand(cfg)[0].spec
    assert spec.probes.names == ("relearn", "quantize") and spec.probes.steps == 3
    assert config_from_dict({"model": "m", "tau": 0.3, "forget": "f.jsonl", "method": "ga", "probes": "all"},
                            "c.yaml").probes.names == ("all",)
    assert "probes" not in resolved_settings(RunSpec(forget="f.jsonl", tau=0.3))  # no probes: the same run key
    assert resolved_settings(RunSpec(forget="f.jsonl", tau=0.3, probes="quantize"))["probes"]["names"] == ["quantize"]


@pytest.mark.parametrize("settings, message", [
    ({"names": ["relearn", "rephrase"]}, "unknown probe 'rephrase'"),
    ({"names": ["all"], "steps": 0}, "'probes.steps': got 0"),
    ({"names": ["all"], "samples": -1}, "'probes.samples': got -1"),
    ({"names": ["sampling"], "temperatures": [0.7, 0.0]}, "temperatures must be > 0"),
])
def test_bad_settings_are_one_line(settings, message):
    from unmemorize.spec import RunSpec

    with pytest.raises(UserError, match=message) as e:
        RunSpec(forget="f.jsonl", tau=0.3, probes=settings)
    assert "\n" not in str(e.value)


def test_bad_inputs_are_refused_before_any_work(lab, tmp_path, tokenizer, unlearned):
    from unmemorize.models import save_model
    from unmemorize.probes.run import run_probes

    tok, U, _, forget, _ = unlearned
    s = ProbeSettings(names=("prompt-chat",))
    with pytest.raises(UserError, match="probe prompt-chat cannot run: the tokenizer has no chat template"):
        run_probes(U, tok, forget, settings=s)
    with pytest.raises(UserError, match="probe relearn-retain cannot run: needs the retain members"):
        run_probes(U, tok, forget, settings=ProbeSettings(names=("relearn-retain",)))
    other = tiny_model("llama", vocab_size=len(tok), n_layer=1, d_model=32, n_head=2, n_positions=64)
    with pytest.raises(UserError, match="the oracle is another architecture"):
        run_probes(U, tok, forget, settings=ProbeSettings(names=("quant-8bit",)), oracle=other)
    with pytest.raises(UserError, match="holds nothing but forget sequences"):
        run_probes(U, tok, forget, settings=ProbeSettings(names=("relearn-reference",)), reference=forget)
    # on the command line: one line, exit 2, nothing written
    root, planted, unlearned_dir = lab
    gpt2 = save_model(tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=1,
                                 d_model=32), tokenizer, tmp_path / "gpt2")
    base = ["probe", "--model", unlearned_dir, "--original", planted, "--forget", root / "forget.jsonl", "--length", 96]
    for extra, msg in (([ "--oracle", gpt2], "another architecture"), (["--probes", "prompt-chat"], "chat template"),
                       (["--probes", "relearn,recall"], "unknown probe 'recall'"),
                       (["--probe-steps", "0"], "--probe-steps: got 0"),
                       (["--probes", "relearn-retain"], "needs the retain members")):
        out = tmp_path / f"bad{len(msg)}"
        res = _cli(base + extra + ["--out", out])
        assert res.exit_code != 0 and isinstance(res.exception, (UserError, SystemExit)), res.output
        err = str(res.exception) if isinstance(res.exception, UserError) else res.output
        assert msg in err, err
        assert not out.exists()


def test_the_benchmark_probes_saved_and_recreated_runs(lab, tmp_path):
    """benchmarks/bench_probes.py on two tiny runs laid out as oracle_gap.py lays them out: one saved its model, the
    other is re-created through the recipe with the probes on; its RESULTS section is written from the store."""
    import importlib

    bench = importlib.import_module("benchmarks.bench_probes")
    root, planted, _ = lab
    runs = tmp_path / "oracle_gap"
    for method, save in (("ga", ["--save"]), ("sga", [])):
        res = _cli(["unlearn", "--model", planted, "--forget", root / "forget.jsonl", "--reference",
                    root / "unseen.jsonl", "--oracle", planted / "oracle", "--length", 96, "--method", method, "--lr",
                    3e-3, "--max-steps", 2, "--micro-batch", 4, "--no-attacks", "--checkpoint-every", 0, *save,
                    "--out", runs / "split0" / f"{method}-mean"])
        assert res.exit_code == 0, res.output + repr(res.exception)
    results, store = tmp_path / "RESULTS.md", tmp_path / "store.jsonl"
    args = ["--runs", runs, "--out", tmp_path / "probes", "--store", store, "--results", results, "--probes",
            "quant-4bit,prompt-truncate,relearn-forget", "--steps", 1, "--lr", 1e-3]
    from benchmarks import common

    kept = common.RESULTS
    try:
        bench.main([str(a) for a in args])
        rows = [json.loads(line) for line in store.read_text().splitlines()]
        assert sorted(r["source"] for r in rows) == ["re-created", "saved model"]
        assert all(set(r["probes"]) == {"quant-4bit", "prompt-truncate", "relearn-forget"} for r in rows)
        recreated = next(r for r in rows if r["source"] == "re-created")
        assert recreated["ma_after_drift"] == pytest.approx(0.0, abs=1e-9)  # seeded: the same unlearned model
        text = results.read_text()
        assert "## Robustness probes: whose forgetting survives which probe" in text
        assert "| ga | mean | 1 |" in text and "| sga | mean | 1 |" in text
        # the description names the probes that ran, and only those
        assert "on one half of the forget set" in text and "4-bit round-to-nearest" in text and "truncated" in text
        assert "8- and" not in text and "on unseen text" not in text and "sampling at" not in text
        assert (tmp_path / "probes" / "split0" / "ga-mean" / "probes.json").is_file()
        bench.main([str(a) for a in args])  # everything recorded: nothing probed again
        assert len(store.read_text().splitlines()) == 2
    finally:
        common.RESULTS = kept


def test_the_benchmark_ranks_methods_by_what_held_not_by_what_resurfaced():
    """A method that forgot little cannot resurface much: the reading ranks by sequences held at the oracle's level
    (measured − resurfaced − not forgotten), and gives the resurfaced share among those forgotten before."""
    import importlib

    import pandas as pd

    bench = importlib.import_module("benchmarks.bench_probes")
    rows = [  # little forgotten, nothing resurfaced: 2 held of 16 on each probe
        {"split": "0", "method": "lazy", "stop": "mean", "probe": "quant-4bit", "measure": "ma", "measured": 16,
         "resurfaced": 0, "not_forgotten": 14},
        {"split": "0", "method": "lazy", "stop": "mean", "probe": "prompt-case", "measure": "matched", "measured": 16,
         "resurfaced": 0, "not_forgotten": 14},
        # everything forgotten, 3 + 1 resurfaced: 13 and 15 held of 16
        {"split": "0", "method": "deep", "stop": "target", "probe": "quant-4bit", "measure": "ma", "measured": 16,
         "resurfaced": 3, "not_forgotten": 0},
        {"split": "0", "method": "deep", "stop": "target", "probe": "prompt-case", "measure": "matched",
         "measured": 16, "resurfaced": 1, "not_forgotten": 0},
    ]
    lines = bench.reading(pd.DataFrame(rows))
    assert lines[0].endswith("deep (target) 88%, lazy (mean) 12%.")  # 28/32 and 4/32
    assert "deep (target) 12% (4 of 32), lazy (mean) 0% (0 of 4)" in lines[1]
    assert "lazy (mean) 14 of 16, deep (target) 0 of 16" in lines[2]
    assert lines[3] == "quant-4bit: 3 of 32 sequences resurfaced over all runs; none after lazy (mean)."
