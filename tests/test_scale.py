"""Scale switches in one process (issue 7): LoRA and its task arithmetic, bf16 autocast, fp16 loss
scaling, gradient checkpointing, θ_b memory-mapped from disk, and the refusals.

LoRA vs full fine-tuning tolerance (stated in benchmarks/RESULTS.md): on the 8-sequence lab, LoRA
rank 16 on every linear layer with 2.5× the learning rate must (a) select exactly the same sequences
for the first update (both start from the same function: B = 0), (b) agree on ≥ 90 % of the
per-step selections over the steps both runs make, and (c) stop within 2 steps of full fine-tuning.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from unmemorize import distributed
from unmemorize.errors import UserError
from unmemorize.memorization import ProfileOptions, profile
from unmemorize.thresholds import acceptable_level
from unmemorize.tiny import tiny_model
from unmemorize.unlearning.methods import MethodSpec
from unmemorize.unlearning import UnlearnOptions, unlearn
from unmemorize.unlearning import lora
from unmemorize.unlearning import loop as loop_module
from unmemorize.unlearning.task_vectors import edit

from unlearning_fixtures import LENGTH, small_lab

FAST = dict(lr=2e-3, micro_batch=3)
LORA = dict(lr=5e-3, micro_batch=3, lora_rank=16, lora_targets="all-linear")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def lab(single_thread):
    tok, model, forget, unseen = small_lab()
    tau = acceptable_level(profile(model, unseen, ProfileOptions(metrics=("ma",)))["ma"])
    return tok, model, forget, tau


def _wide(result, column):
    return result.trajectory.pivot(index="step", columns="id", values=column).sort_index()


# ---------------------------------------------------------------- LoRA

@pytest.mark.parametrize("method", ["sga", "ga"])
def test_lora_and_full_fine_tuning_agree_on_selections_and_stop_step(lab, method):
    tok, model, forget, tau = lab
    full = unlearn(model, forget, tau=tau, method=method, options=UnlearnOptions(max_steps=30, **FAST))
    low = unlearn(model, forget, tau=tau, method=method, options=UnlearnOptions(max_steps=30, **LORA))
    assert full.converged and low.converged
    n = min(full.steps, low.steps)
    sel_full, sel_low = _wide(full, "selected").loc[1:n], _wide(low, "selected").loc[1:n]
    np.testing.assert_array_equal(sel_full.loc[1].to_numpy(), sel_low.loc[1].to_numpy())
    assert (sel_full.to_numpy() == sel_low.to_numpy()).mean() >= 0.9
    assert abs(full.steps - low.steps) <= 2, (full.steps, low.steps)
    # the same model before any step (B = 0): identical step-0 scores
    np.testing.assert_array_equal(_wide(full, "ma").loc[0].to_numpy(), _wide(low, "ma").loc[0].to_numpy())


def test_lora_returns_a_merged_plain_model_and_leaves_the_input_alone(lab):
    tok, model, forget, tau = lab
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = unlearn(model, forget, tau=tau, method="sga", options=UnlearnOptions(max_steps=3, **LORA))
    assert not lora.is_lora(result.model)
    assert not any("lora" in n for n, _ in result.model.named_parameters())
    assert set(dict(result.model.named_parameters())) == set(before)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    # the merged model is the one measured at the last step (up to float rounding of the merge)
    after = profile(result.model, forget, ProfileOptions(metrics=("ma",)))["ma"].to_numpy()
    assert np.abs(after - result.after["ma"].to_numpy()).max() <= 1.0 / (LENGTH - 1) + 1e-12


def test_adalora_starts_at_the_original_function_trains_only_its_factors_and_merges(lab):
    """GA+Mismatch's original adapter (docs/method.md §4.7): AdaLoRA at a fixed rank, λ = 0 at the start
    (the wrapped model is the original function), P, λ and Q train, the result is a plain merged model."""
    tok, model, forget, tau = lab
    m = copy.deepcopy(model)
    ids = forget.input_ids[:2]
    with torch.no_grad():
        want = m(input_ids=ids).logits
    wrapped = lora.add_lora(m, rank=6, alpha=64.0, targets="all-linear", seed=3, kind="adalora", total_steps=5)
    with torch.no_grad():
        assert torch.equal(wrapped(input_ids=ids).logits, want)
    trained = {n.split(".")[-2] for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trained == {"lora_A", "lora_B", "lora_E"}
    ranks = {tuple(p.shape) for n, p in wrapped.named_parameters() if "lora_E" in n}
    assert ranks == {(6, 1)}
    wrapped.unload()

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = unlearn(model, forget, tau=tau, method="sga",
                options=UnlearnOptions(max_steps=3, lora_kind="adalora", optimizer="adamw", weight_decay=0.01, **LORA))
    assert not lora.is_lora(r.model) and set(dict(r.model.named_parameters())) == set(before)
    assert r.after["loss"].mean() > r.before["loss"].mean()  # it did unlearn
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    after = profile(r.model, forget, ProfileOptions(metrics=("ma",)))["ma"].to_numpy()
    assert np.abs(after - r.after["ma"].to_numpy()).max() <= 1.0 / (LENGTH - 1) + 1e-12


def test_the_mismatch_preset_trains_adalora_on_gpt_neo(lab, tmp_path):
    """configs/paper_mismatch.yaml's harness (AdaLoRA on peft's default GPT-Neo targets q_proj/v_proj,
    AdamW with decay, micro-batch 1) on a tiny GPT-Neo, GA+Mismatch with a small TruthfulQA-shaped file."""
    from pathlib import Path

    import pandas as pd

    from unmemorize.spec import load_config
    from unmemorize.unlearning.retain import load_retain

    tok, _, forget, tau = lab
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "paper_mismatch.yaml")
    t = cfg.training
    assert (t.lora_kind, t.lora_rank, t.lora_alpha, t.optimizer, t.lr, t.micro_batch) == ("adalora", 12, 1024.0,
                                                                                           "adamw", 2e-4, 1)
    neo = tiny_model("gpt_neo", vocab_size=len(tok), eos_id=tok.eos_token_id, n_layer=2, d_model=64, n_head=2,
                     n_positions=64, seed=2)
    qa = tmp_path / "qa.csv"
    pd.DataFrame({"Question": ["What is red?", "Who wrote it?"], "Best Answer": ["A colour.", "Nobody knows."],
                  "Correct Answers": ["A colour; a hue", "Nobody"], "Incorrect Answers": ["A fish", "Me"]}).to_csv(qa)
    retain = load_retain(qa, tok, length=40)
    few = forget.subset([0, 1, 2])
    r = unlearn(neo, few, tau=0.0, method="ga+mismatch", retain=retain,
                options=t.model_copy(update={"max_steps": 2, "lr": 5e-3, "checkpoint_every": 0}))
    assert r.steps == 2 and not lora.is_lora(r.model)
    changed = {n.rsplit(".", 2)[-2] for n, p in r.model.named_parameters()
               if not torch.equal(p, dict(neo.named_parameters())[n])}
    assert changed == {"q_proj", "v_proj"}  # only the adapted projections moved, merged into their weights


def test_optimizers_are_the_registered_ones(lab, monkeypatch):
    """--optimizer adamw decouples the weight decay (torch's AdamW); adam adds it to the gradient."""
    tok, model, forget, tau = lab
    made = []
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        real = loop_module.OPTIMIZERS[name]
        monkeypatch.setitem(loop_module.OPTIMIZERS, name,
                            lambda params, real=real, **kw: made.append(real(params, **kw)) or made[-1])
        unlearn(model, forget, tau=tau, method="ga", options=UnlearnOptions(max_steps=1, optimizer=name, **FAST))
        assert type(made[-1]) is cls and made[-1].defaults["lr"] == FAST["lr"]
    with pytest.raises(UserError, match="'optimizer': got 'sgd'; allowed: adam, adamw"):
        UnlearnOptions(optimizer="sgd")


def test_adalora_refusals(lab):
    tok, model, forget, tau = lab
    with pytest.raises(UserError, match="--lora-rank"):
        unlearn(model, forget, tau=tau, method="ga", options=UnlearnOptions(max_steps=1, lora_kind="adalora"))
    with pytest.raises(UserError, match="AdaLoRA"):
        unlearn(model, forget, tau=tau, method="tau",
                options=UnlearnOptions(max_steps=1, lora_kind="adalora", **LORA))


def _adapted(seed=0):
    model = tiny_model("gpt2", vocab_size=300, n_layer=2, d_model=32, n_head=2, n_positions=32, seed=seed)
    peft_model = lora.add_lora(model, rank=4, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return peft_model, g


def _merged_state(peft_model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in copy.deepcopy(peft_model).merge_and_unload().state_dict().items()}


def _train_adapter(model, g) -> None:
    """Stand-in for fine-tuning: move every trainable (adapter) weight by seeded noise."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("coef", [-3.0, -1.0, 0.5])
def test_lora_task_arithmetic_is_the_weight_space_edit_also_for_negative_coefficients(coef):
    model, g = _adapted()
    base = lora.adapter_state(model)
    merged_base = _merged_state(model)
    _train_adapter(model, g)
    merged_ft = _merged_state(model)
    want = edit(merged_base, merged_ft, coef)  # θ_b + c·(θ_ft − θ_b) on the full weights
    x = torch.randint(0, 300, (2, 12), generator=g)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out_ft = model(input_ids=x).logits
    with lora.edited(model, base, coef):
        out_edit = model(input_ids=x).logits
    # the trained adapter is untouched and active again
    for n, p in model.named_parameters():
        if n in trained:
            assert torch.equal(p, trained[n]) and p.requires_grad, n
    assert torch.equal(model(input_ids=x).logits, out_ft)
    ref = tiny_model("gpt2", vocab_size=300, n_layer=2, d_model=32, n_head=2, n_positions=32)
    ref.load_state_dict(want)
    assert (ref(input_ids=x).logits - out_edit).abs().max() < 1e-5
    lora.apply_edit_(model, base, coef)
    got = lora.merge(model).state_dict()
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k


def test_naive_factor_wise_edit_would_be_wrong_for_negative_coefficients():
    model, g = _adapted()
    base = lora.adapter_state(model)
    merged_base = _merged_state(model)
    _train_adapter(model, g)
    want = edit(merged_base, _merged_state(model), -3.0)
    layers = lora._layers(model)
    with torch.no_grad():
        for name, m in layers.items():  # A_b + c(A − A_b), B_b + c(B − B_b)
            for key, mod in (("A", m.lora_A["default"]), ("B", m.lora_B["default"])):
                mod.weight.copy_(base[f"{name}.{key}"] - 3.0 * (mod.weight - base[f"{name}.{key}"]))
    naive = _merged_state(model)
    assert max((naive[k] - want[k]).abs().max().item() for k in want) > 1e-2


def test_lora_tau_measures_and_returns_the_edited_adapter_model(lab):
    tok, model, forget, tau = lab
    result = unlearn(model, forget, tau=tau, method=MethodSpec(name="tau", switch_below=0.6),
                     options=UnlearnOptions(max_steps=4, **LORA))
    assert "ta" in set(result.trajectory["phase"])
    after = profile(result.model, forget, ProfileOptions(metrics=("ma",)))["ma"].to_numpy()
    assert np.abs(after - result.after["ma"].to_numpy()).max() <= 1.0 / (LENGTH - 1) + 1e-12


def test_interrupted_lora_tau_run_resumes_with_identical_numbers(lab, tmp_path):
    tok, model, forget, tau = lab
    opts = UnlearnOptions(max_steps=5, checkpoint_every=2, **LORA)
    tau_method = MethodSpec(name="tau", switch_below=0.6)
    whole = unlearn(model, forget, tau=0.0, method=tau_method, options=opts)

    def interrupt(info):
        if info.step == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        unlearn(model, forget, tau=0.0, method=tau_method, options=opts, checkpoint_dir=tmp_path / "ck", on_step=interrupt)
    resumed = unlearn(model, forget, tau=0.0, method=tau_method, options=opts, checkpoint_dir=tmp_path / "ck")
    assert resumed.resumed_from == 2
    np.testing.assert_array_equal(resumed.trajectory["ma"].to_numpy(), whole.trajectory["ma"].to_numpy())
    for (n, a), (_, b) in zip(resumed.model.named_parameters(), whole.model.named_parameters()):
        assert torch.equal(a, b), n


def test_a_failing_lora_run_in_place_leaves_the_model_without_adapters(lab):
    tok, model, forget, tau = lab
    m = copy.deepcopy(model)

    def stop(info):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        unlearn(m, forget, tau=tau, method="sga", copy=False, on_step=stop, options=UnlearnOptions(**LORA))
    assert not any("lora" in n for n, _ in m.named_parameters())
    for (n, a), (_, b) in zip(m.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), n


def test_lora_with_dpd_is_refused(lab):
    tok, model, forget, tau = lab
    with pytest.raises(UserError, match="DPD"):
        unlearn(model, forget, tau=tau, method="dpd", options=UnlearnOptions(lora_rank=4))


# ---------------------------------------------------------------- precision

def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_fp32_weights(lab):
    tok, model, forget, tau = lab
    seen = []
    m = copy.deepcopy(model)
    handle = m.transformer.h[0].mlp.c_fc.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    try:
        result = unlearn(m, forget, tau=tau, method="sga", copy=False,
                         options=UnlearnOptions(max_steps=30, mixed_precision="bf16", **FAST))
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    full = unlearn(model, forget, tau=tau, method="sga", options=UnlearnOptions(max_steps=30, **FAST))
    assert result.converged and abs(result.steps - full.steps) <= 2
    # bf16 has 8 bits of mantissa: step-0 scores may differ from fp32 by a few tokens, not more
    d = np.abs(_wide(result, "ma").loc[0].to_numpy() - _wide(full, "ma").loc[0].to_numpy())
    assert d.max() <= 3.0 / (LENGTH - 1) + 1e-12


def test_fp16_is_refused_on_cpu_with_a_pointer_to_bf16(lab):
    tok, model, forget, tau = lab
    with pytest.raises(UserError, match="bf16"):
        unlearn(model, forget, tau=tau, method="sga", options=UnlearnOptions(max_steps=1, mixed_precision="fp16"))
    with pytest.raises(UserError, match="mixed_precision.*fp8.*no, bf16, fp16"):
        UnlearnOptions(mixed_precision="fp8")


def test_fp16_overflow_lowers_the_loss_scale_and_recomputes_instead_of_stopping(lab, monkeypatch):
    """The fp16 path is CUDA-only for users; its loss-scaling logic is exercised here on CPU, where
    torch also has fp16 autocast and a GradScaler, with an initial scale that must overflow."""
    tok, model, forget, tau = lab
    monkeypatch.setattr(loop_module, "check_mixed_precision", lambda mp, device: None)
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: real(device, init_scale=2.0 ** 30))
    result = unlearn(model, forget, tau=tau, method="sga",
                     options=UnlearnOptions(max_steps=2, mixed_precision="fp16", **FAST))
    overflows = [e for e in result.events if "fp16 gradient overflow" in e]
    assert overflows and not result.rolled_back
    assert result.steps == 2 or result.converged
    assert result.after["ma"].mean() < result.before["ma"].mean()


# ---------------------------------------------------------------- memory switches

def test_gradient_checkpointing_recomputes_and_gives_the_same_trajectory(lab):
    tok, model, forget, tau = lab
    calls = {"plain": 0, "checkpointed": 0}
    results = {}
    for key, flag in (("plain", False), ("checkpointed", True)):
        m = copy.deepcopy(model)
        mlp = m.transformer.h[0].mlp
        forward = mlp.forward

        def count(*args, key=key, forward=forward, **kwargs):  # the recompute calls forward, not the hooks
            calls[key] += 1
            return forward(*args, **kwargs)
        mlp.forward = count
        results[key] = unlearn(m, forget, tau=tau, method="sga", copy=False, options=UnlearnOptions(
            max_steps=3, gradient_checkpointing=flag, fuse="never", **FAST))
    assert calls["checkpointed"] > calls["plain"]  # the block ran again in the backward pass
    np.testing.assert_array_equal(results["plain"].trajectory["selected"], results["checkpointed"].trajectory["selected"])
    np.testing.assert_allclose(results["plain"].trajectory["loss"], results["checkpointed"].trajectory["loss"], atol=1e-5)
    assert not any(m.training for m in results["checkpointed"].model.modules() if isinstance(m, torch.nn.Dropout))


def test_base_on_disk_gives_the_numbers_of_the_base_in_memory(lab, tmp_path):
    tok, model, forget, tau = lab
    opts = dict(max_steps=3, **FAST)
    tau_method = MethodSpec(name="tau", switch_below=0.6)
    ram = unlearn(model, forget, tau=tau, method=tau_method, options=UnlearnOptions(**opts))
    disk = unlearn(model, forget, tau=tau, method=tau_method, options=UnlearnOptions(base_on_disk=True, **opts))
    assert "ta" in set(ram.trajectory["phase"])
    np.testing.assert_array_equal(ram.trajectory["ma"].to_numpy(), disk.trajectory["ma"].to_numpy())
    for (n, a), (_, b) in zip(ram.model.named_parameters(), disk.model.named_parameters()):
        assert torch.equal(a, b), n


# ---------------------------------------------------------------- distributed helpers (one process)

def test_shards_cover_every_row_once_in_order():
    for n, w in ((7, 2), (8, 3), (2, 4), (0, 2)):
        parts = [distributed.shard(n, w, r) for r in range(w)]
        assert np.concatenate(parts).tolist() == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_without_a_launcher_nothing_is_distributed(tmp_path):
    assert distributed.current() is None and distributed.is_main()
    assert distributed.output_dir(tmp_path / "x") == tmp_path / "x"


def test_shipped_accelerate_configs_parse_with_their_engines():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    kinds = {p.stem: str(load_config_from_file(str(p)).distributed_type).split(".")[-1] for p in folder.glob("*.yaml")}
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    assert load_config_from_file(str(folder / "deepspeed_zero3.yaml")).deepspeed_config["zero_stage"] == 3
    # precision comes from --mixed-precision, so that the manifest records what ran
    assert all(load_config_from_file(str(p)).mixed_precision == "no" for p in folder.glob("*.yaml"))


def test_extra_forward_objectives_are_refused_under_several_processes(lab, monkeypatch):
    """Checked before anything is prepared, so a fake multi-process context is enough here."""
    tok, model, forget, tau = lab
    from unmemorize.unlearning import RetainData

    from types import SimpleNamespace

    monkeypatch.setattr(distributed, "current", lambda: SimpleNamespace(device=torch.device("cpu")))
    ret = RetainData(forget, [forget.input_ids[0, :5]], "memory", "text")
    for method in ("ga+mismatch", "npo"):
        with pytest.raises(UserError, match="one process"):
            unlearn(model, forget, tau=tau, method=method, retain=ret, options=UnlearnOptions(max_steps=1))


def test_deepspeed_launches_are_refused_for_unlearning_with_a_way_out():
    from types import SimpleNamespace

    fake = SimpleNamespace(process_index=0, num_processes=2, device=torch.device("cpu"),
                           distributed_type="DistributedType.DEEPSPEED")
    d = distributed.Distributed(fake)
    assert d.kind == "DEEPSPEED"
    with pytest.raises(UserError, match="fsdp.yaml"):
        d.prepare_model(torch.nn.Linear(2, 2))
