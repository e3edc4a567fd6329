"""DPO (llm_companion.finetune.dpo) and adapter folders (llm_companion.finetune.adapters), on tiny random models."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from llm_companion import LlamaConfig, LlamaModel, apply_lora
from llm_companion.finetune.adapters import load_adapter, prepare_for_inference, save_adapter
from llm_companion.finetune.dpo import (
    PairExample,
    PreferenceDataError,
    adapter_state,
    adapters_disabled,
    answer_logprobs,
    collate_pairs,
    dpo_loss,
    encode_pairs,
    implicit_rewards,
    pair_logprobs,
    preference_metrics,
    reference_logprobs,
    response_logprobs,
    split_preferences,
    swapped_adapters,
    train_dpo,
    validate_preferences,
)
from llm_companion.finetune.lora import LoRAError, has_lora, lora_layers, merge_lora
from llm_companion.inference.quantize import quantize_model

CFG = LlamaConfig(vocab_size=97, context_length=64, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2,
                  hidden_dim=48)


def tiny_llama(seed: int = 0, cfg: LlamaConfig = CFG) -> LlamaModel:
    torch.manual_seed(seed)
    return LlamaModel(cfg).eval()


def random_pairs(n: int = 6, seed: int = 1) -> list[PairExample]:
    g = torch.Generator().manual_seed(seed)

    def seq(lo, hi):
        return torch.randint(1, 97, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    return [PairExample(seq(3, 8), seq(2, 7), seq(2, 7)) for _ in range(n)]


def randomize_adapters(model, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)


# --------------------------------------------------------------------------------------------- data
def test_a_record_without_chosen_or_rejected_is_named():
    good = {"instruction": "Say hi", "chosen": "Hello!", "rejected": "What."}
    assert validate_preferences([good])[0]["input"] == ""
    with pytest.raises(PreferenceDataError, match=r"record 1 \('Name a color'\): field 'rejected' is missing"):
        validate_preferences([good, {"instruction": "Name a color", "chosen": "Blue."}])
    with pytest.raises(PreferenceDataError, match="record 0.*'chosen'"):
        validate_preferences([{"instruction": "x", "chosen": 3, "rejected": "y"}])


def test_split_is_chapter_sevens_rule_and_an_empty_split_is_an_error():
    recs = [{"instruction": f"i{k}", "chosen": "c", "rejected": "r", "input": ""} for k in range(100)]
    parts = split_preferences(recs)
    assert [len(p) for p in parts] == [85, 5, 10]
    assert parts.test[0]["instruction"] == "i85" and parts.val[0]["instruction"] == "i95"
    assert [len(p) for p in split_preferences(recs, limit=3)] == [3, 3, 3]
    with pytest.raises(PreferenceDataError, match="test split is empty"):
        split_preferences(recs[:5])
    with pytest.raises(PreferenceDataError, match="--limit"):
        split_preferences(recs, limit=0)


def test_collate_masks_exactly_the_response_targets():
    ids, mask = collate_pairs([PairExample([5, 6, 7], [8, 9], [10]), PairExample([1], [2, 3, 4], [5, 6])])
    assert ids.shape == (4, 5) and mask.shape == (4, 4)
    # row 0 = prompt 5 6 7 + chosen 8 9: targets at positions 2, 3 are 8 and 9
    assert ids[0].tolist() == [5, 6, 7, 8, 9] and mask[0].tolist() == [False, False, True, True]
    assert ids[1].tolist()[:4] == [1, 2, 3, 4] and mask[1].tolist() == [True, True, True, False]
    assert ids[2].tolist()[:4] == [5, 6, 7, 10] and mask[2].tolist() == [False, False, True, False]
    assert mask[3].tolist() == [True, True, False, False]


def test_response_logprobs_equal_a_sum_of_per_token_log_softmax():
    model = tiny_llama()
    p = PairExample([3, 4, 5], [6, 7], [8, 9, 10])
    ids, mask = collate_pairs([p])
    got = response_logprobs(model, ids, mask)
    expect = []
    for prompt, resp in ((p.prompt, p.chosen), (p.prompt, p.rejected)):
        seq = torch.tensor([prompt + resp])
        with torch.no_grad():
            logp = F.log_softmax(model(seq)[0], -1)
        expect.append(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(resp)))
    torch.testing.assert_close(got, torch.tensor(expect), atol=1e-4, rtol=1e-5)
    # padding does not change a row's value (right padding in a causal model)
    longer = collate_pairs([p, PairExample([1] * 9, [2] * 5, [3])])
    torch.testing.assert_close(response_logprobs(model, *longer)[[0, 2]], got, atol=1e-4, rtol=1e-5)



@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_logits_at_gives_the_marked_rows_and_the_same_gradients(family):
    """``model(ids, logits_at=mask)`` is ``model(ids)[mask]``, forward and backward (LoRA gradients equal),
    so response_logprobs' shortcut changes no number."""
    from llm_companion import GPTConfig, GPTModel

    torch.manual_seed(0)
    model = (GPTModel(GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2,
                                drop_rate=0.0)) if family == "gpt" else tiny_llama())
    apply_lora(model, rank=2, alpha=4)
    randomize_adapters(model)
    ids = torch.randint(0, 97, (3, 9))
    mask = torch.rand(3, 9) > 0.6
    mask[1] = False                                           # a row with nothing marked
    grads = []
    for use in (True, False):
        model.zero_grad()
        out = model(ids, logits_at=mask) if use else model(ids)[mask]
        assert out.shape == (int(mask.sum()), 97)
        (out.logsumexp(-1) * torch.arange(1.0, len(out) + 1)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
        if use:
            first = out.detach()
    torch.testing.assert_close(first, model(ids)[mask].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"boolean tensor of shape \(3, 9\)"):
        model(ids, logits_at=mask[:, :5])
    with pytest.raises(ValueError, match="boolean"):
        model(ids, logits_at=mask.long())

# --------------------------------------------------------------------------------------------- the loss
def test_dpo_loss_by_hand_and_bad_beta():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-10.0, -14.0, -11.0, -12.0))
    losses, crw, rrw = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # reward_chosen = 0.5·1 = 0.5, reward_rejected = 0.5·(−2) = −1 → loss = −log σ(1.5)
    assert crw.item() == pytest.approx(0.5) and rrw.item() == pytest.approx(-1.0)
    assert losses.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(1.5)).item())
    for beta in (0, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match="beta must be a positive number"):
            dpo_loss(pc, pr, rc, rr, beta=beta)


def _trl_loss(policy: torch.Tensor, ref: torch.Tensor, beta: float) -> torch.Tensor:
    """TRL's DPOTrainer loss ("sigmoid", reverse KL) on given sequence log-probs, through its own code."""
    trl = pytest.importorskip("trl")
    B = policy.shape[0]
    T = 4
    # per-token log-probs whose row sums are the sequence log-probs: [chosen rows; rejected rows]
    per_token = torch.zeros(2 * B, T)
    per_token[:, 0] = torch.cat([policy[:, 0], policy[:, 1]])
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros(2 * B, T), mean_logits=torch.zeros(2 * B, T),
                              is_top1=torch.zeros(2 * B, T, dtype=torch.bool))
    accel = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    stub = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accel, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0],
        beta=beta, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
        _tp_size=1, label_smoothing=0.0)
    inputs = {"input_ids": torch.ones(2 * B, T + 1, dtype=torch.long),
              "attention_mask": torch.ones(2 * B, T + 1, dtype=torch.long),
              "completion_mask": torch.ones(2 * B, T + 1, dtype=torch.long),
              "ref_chosen_logps": ref[:, 0], "ref_rejected_logps": ref[:, 1]}
    return trl.DPOTrainer._compute_loss(stub, lambda **kw: outputs, inputs, False)


@pytest.mark.slow  # importing trl takes seconds
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_equals_trls(beta):
    g = torch.Generator().manual_seed(0)
    policy, ref = -20 * torch.rand(5, 2, generator=g), -20 * torch.rand(5, 2, generator=g)
    ours = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta)[0].mean()
    theirs = _trl_loss(policy, ref, beta)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    torch.testing.assert_close(ours, theirs.float(), atol=1e-6, rtol=1e-6)
    assert ours.item() > 0


# --------------------------------------------------------------------------------------------- reference
def test_adapters_off_is_exactly_the_base_model_and_they_come_back():
    base = tiny_llama()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = base(ids)
    model = apply_lora(tiny_llama(), rank=4, alpha=8)
    randomize_adapters(model)
    with torch.no_grad():
        adapted = model(ids)
        with adapters_disabled(model):
            off = model(ids)
            assert not lora_layers(model)
        again = model(ids)
    assert torch.equal(off, want)
    assert not torch.allclose(adapted, want, atol=1e-3)
    assert torch.equal(again, adapted) and len(lora_layers(model)) == 15  # 7 per block + head


def test_reference_cache_matches_the_base_models_log_probs_and_pairs_are_batched_consistently():
    pairs = random_pairs()
    want = pair_logprobs(tiny_llama(), pairs, batch_size=len(pairs))
    model = apply_lora(tiny_llama(), rank=4, alpha=8)
    randomize_adapters(model)
    torch.testing.assert_close(reference_logprobs(model, pairs, batch_size=4), want, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(pair_logprobs(model, pairs), want, atol=1e-2)


def test_pair_logprobs_come_back_in_the_given_order_whatever_the_batching():
    model = apply_lora(tiny_llama(), rank=4, alpha=8)
    randomize_adapters(model)
    pairs = random_pairs(9, seed=7)
    one_by_one = torch.cat([pair_logprobs(model, [p]) for p in pairs])
    torch.testing.assert_close(pair_logprobs(model, pairs, batch_size=4), one_by_one, atol=1e-4, rtol=1e-5)
    assert one_by_one.shape == (9, 2) and not torch.allclose(one_by_one[0], one_by_one[1])


def test_swapped_adapters_score_another_state_and_restore_the_current_one():
    model = apply_lora(tiny_llama(), rank=4, alpha=8)
    randomize_adapters(model, seed=3)
    first = adapter_state(model)
    pairs = random_pairs()
    lp_first = pair_logprobs(model, pairs)
    randomize_adapters(model, seed=4)
    lp_second = pair_logprobs(model, pairs)
    with swapped_adapters(model, first):
        torch.testing.assert_close(pair_logprobs(model, pairs), lp_first)
    torch.testing.assert_close(pair_logprobs(model, pairs), lp_second)
    assert set(first) == {k for k in model.state_dict() if ".lora_" in k}
    with pytest.raises(ValueError, match="apply_lora"):
        adapter_state(tiny_llama())


def test_precomputed_reference_equals_adapters_off_while_the_adapter_is_zero():
    pairs = random_pairs(8)
    runs = []
    for reference in ("precomputed", None):
        model = apply_lora(tiny_llama(), rank=4, alpha=8)        # lora_B = 0: the model is the base
        ref = pair_logprobs(model, pairs) if reference else None
        runs.append(train_dpo(model, pairs, beta=0.5, steps=3, lr=1e-2, batch_size=4, reference=ref))
    assert runs[0].loss == pytest.approx(runs[1].loss, abs=1e-5)
    assert runs[0].loss[0] == pytest.approx(math.log(2), abs=1e-5)


def test_chained_dpo_starts_at_log_2_against_the_sft_model_not_the_base():
    """SFT then DPO: the reference is the adapter as SFT left it, so the first loss is log 2 exactly."""
    pairs = random_pairs(8)
    model = apply_lora(tiny_llama(), rank=4, alpha=8)
    randomize_adapters(model)                                     # stands in for the SFT adapter
    sft = adapter_state(model)
    sft_ref = pair_logprobs(model, pairs)
    chained = train_dpo(model, pairs, beta=0.5, steps=4, lr=1e-2, batch_size=8, reference=sft_ref)
    assert chained.loss[0] == pytest.approx(math.log(2), abs=1e-5) and chained.accuracy[0] == 0.0
    assert chained.loss[-1] < chained.loss[0]
    assert not torch.equal(adapter_state(model)["blocks.0.attn.q.lora_B"], sft["blocks.0.attn.q.lora_B"])
    model.load_state_dict(sft, strict=False)
    against_base = train_dpo(model, pairs, beta=0.5, steps=1, lr=1e-2, batch_size=8)   # reference: adapters off
    assert abs(against_base.loss[0] - math.log(2)) > 1e-3


def test_implicit_rewards_against_a_given_reference_or_the_base(chatml_tokenizer):
    recs = [{"instruction": "Say hi", "input": ""}, {"instruction": "Name a color", "input": "please"}]
    answers = ["Hello there.", "Blue."]
    cfg = CFG.replace(vocab_size=chatml_tokenizer.n_vocab, hidden_dim=64, context_length=128)
    model = apply_lora(tiny_llama(cfg=cfg), rank=4, alpha=8)
    randomize_adapters(model)
    sft = adapter_state(model)
    ref = answer_logprobs(model, chatml_tokenizer, recs, answers)
    assert ref.shape == (2,) and (ref < 0).all()
    assert torch.equal(implicit_rewards(model, chatml_tokenizer, recs, answers, beta=0.1, reference=ref),
                       torch.zeros(2))
    randomize_adapters(model, seed=9)
    pol = answer_logprobs(model, chatml_tokenizer, recs, answers)
    with swapped_adapters(model, sft):
        torch.testing.assert_close(answer_logprobs(model, chatml_tokenizer, recs, answers), ref)
    torch.testing.assert_close(implicit_rewards(model, chatml_tokenizer, recs, answers, beta=0.1, reference=ref),
                               0.1 * (pol - ref))
    with adapters_disabled(model):
        base = answer_logprobs(model, chatml_tokenizer, recs, answers)
    torch.testing.assert_close(implicit_rewards(model, chatml_tokenizer, recs, answers, beta=0.1),
                               0.1 * (pol - base))
    with pytest.raises(ValueError, match="reference has shape"):
        implicit_rewards(model, chatml_tokenizer, recs, answers, beta=0.1, reference=ref[:1])


@pytest.mark.slow
def test_training_raises_preference_accuracy_and_only_moves_adapters():
    model = apply_lora(tiny_llama(), rank=4, alpha=8)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    pairs = random_pairs(8)
    ref = reference_logprobs(model, pairs)
    before = preference_metrics(pair_logprobs(model, pairs), ref, beta=0.5)
    assert before["accuracy"] == 0.0 and before["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item())
    run = train_dpo(model, pairs, beta=0.5, steps=30, lr=1e-2, batch_size=4, reference=ref)
    after = preference_metrics(pair_logprobs(model, pairs), ref, beta=0.5)
    assert len(run.loss) == 30 and run.loss[-1] < run.loss[0]
    assert after["accuracy"] >= 0.75 and after["margin"] > 0.5 and after["loss"] < before["loss"]
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_train_dpo_refuses_bad_inputs():
    model = tiny_llama()
    with pytest.raises(ValueError, match="apply_lora"):
        train_dpo(model, random_pairs(), steps=1)
    apply_lora(model, rank=2, alpha=2)
    with pytest.raises(ValueError, match="beta must be a positive"):
        train_dpo(model, random_pairs(), beta=0.0, steps=1)
    with pytest.raises(PreferenceDataError, match="no preference pairs"):
        train_dpo(model, [], steps=1)


def test_encode_pairs_with_chatml_ends_answers_in_im_end(chatml_tokenizer):
    rec = {"instruction": "Name a fox.", "input": "", "chosen": "A quick fox.", "rejected": "No."}
    (p,) = encode_pairs([rec], chatml_tokenizer)
    im_end = chatml_tokenizer.special_tokens["<|im_end|>"]
    assert p.chosen[-1] == im_end and p.rejected[-1] == im_end
    assert chatml_tokenizer.decode(p.chosen[:-1]) == "A quick fox."
    assert chatml_tokenizer.decode(p.prompt).endswith("<|im_start|>assistant\n")


# --------------------------------------------------------------------------------------------- adapters
def test_adapter_folder_round_trip_and_metadata(tmp_path):
    model = apply_lora(tiny_llama(), rank=4, alpha=8, targets=["q", "v"])
    randomize_adapters(model)
    ids = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        want = model(ids)
    out = save_adapter(model, tmp_path / "ad", {"base_model": "tiny", "method": "dpo", "data": "x", "steps": 3})
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["rank"] == 4 and meta["alpha"] == 8 and meta["targets"] == ["q", "v"] and meta["method"] == "dpo"
    save_adapter(model, out, {"base_model": "tiny", "method": "dpo"})      # replacing an existing folder works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]           # no temporary folder left behind
    fresh = load_adapter(tiny_llama(), out)
    with torch.no_grad():
        assert torch.equal(fresh(ids), want)


def test_adapter_for_another_shape_is_a_one_line_error(tmp_path):
    model = apply_lora(tiny_llama(), rank=2, alpha=2)
    save_adapter(model, tmp_path / "ad", {"base_model": "tiny"})
    other = tiny_llama(cfg=CFG.replace(emb_dim=48, hidden_dim=64))
    with pytest.raises(LoRAError, match="made for tiny") as e:
        load_adapter(other, tmp_path / "ad")
    assert "\n" not in str(e.value)
    with pytest.raises(LoRAError, match="not an adapter folder"):
        load_adapter(tiny_llama(), tmp_path)


def test_prepare_for_inference_loads_the_adapter_and_merges_it_only_to_quantize(tmp_path):
    model = apply_lora(tiny_llama(), rank=4, alpha=8, targets=["q", "v"])
    randomize_adapters(model)
    save_adapter(model, tmp_path / "ad", {"base_model": "tiny"})
    assert has_lora(prepare_for_inference(tiny_llama(), adapter=tmp_path / "ad"))     # fp32: left unmerged
    want = quantize_model(merge_lora(load_adapter(tiny_llama(), tmp_path / "ad")), "int8")
    q8 = prepare_for_inference(tiny_llama(), adapter=tmp_path / "ad", weights="int8")
    assert not has_lora(q8) and q8.quantized == "int8"
    ids = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        assert torch.equal(q8(ids), want(ids))


@pytest.fixture(scope="module")
def chatml_tokenizer(tmp_path_factory):
    """A byte-level BPE with ChatML control tokens, read back from a tiny GGUF (as SmolLM2's is)."""
    from gguf_writers import save_llama_gguf, train_byte_bpe_metadata

    from llm_companion.data.tokenizer import gguf_tokenizer

    meta = train_byte_bpe_metadata("The quick brown fox jumps over the lazy dog. " * 4, 30)
    path = tmp_path_factory.mktemp("chatml") / "tiny.gguf"
    cfg = CFG.replace(vocab_size=len(meta["tokenizer.ggml.tokens"]), hidden_dim=64)
    save_llama_gguf(tiny_llama(cfg=cfg), path, metadata=meta)
    return gguf_tokenizer(path)


# --------------------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def tiny_gguf(chatml_tokenizer, tmp_path_factory):
    """A tiny Llama GGUF with the ChatML tokenizer: what `--model` of the CLI can load."""
    from gguf_writers import save_llama_gguf, train_byte_bpe_metadata

    meta = train_byte_bpe_metadata("The quick brown fox jumps over the lazy dog. " * 4, 30)
    path = tmp_path_factory.mktemp("cli") / "tiny.gguf"
    cfg = CFG.replace(vocab_size=len(meta["tokenizer.ggml.tokens"]), hidden_dim=64)
    save_llama_gguf(tiny_llama(cfg=cfg), path, metadata=meta)
    return path


def _prefs(tmp_path, n=20):
    recs = [{"instruction": f"Name fox {k}.", "input": "", "chosen": "The quick fox.", "rejected": "No dog."}
            for k in range(n)]
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(recs))
    return path


def one_error_line(err: str) -> bool:
    """The CLI said one line of error and no traceback (progress bars may also go to stderr)."""
    return "Traceback" not in err and len([x for x in err.splitlines() if ": error: " in x]) == 1


def _run(argv, capsys):
    from llm_companion import cli

    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_finetune_dpo_writes_an_adapter_that_generate_loads(tiny_gguf, tmp_path, capsys):
    data = _prefs(tmp_path)
    code, out, err = _run(["finetune", "--model", str(tiny_gguf), "--method", "dpo", "--data", str(data),
                           "--out", str(tmp_path / "ad"), "--steps", "2", "--batch-size", "2", "--beta", "0.5"],
                          capsys)
    assert code == 0, err
    assert "preference accuracy" in out and "adapter written" in out
    meta = json.loads((tmp_path / "ad" / "adapter.json").read_text())
    assert meta["method"] == "dpo" and meta["steps"] == 2 and meta["beta"] == 0.5 and meta["train_records"] == 17
    code, out, err = _run(["generate", "The", "--model", str(tiny_gguf), "--adapter", str(tmp_path / "ad"),
                           "--max-new-tokens", "3", "--greedy"], capsys)
    assert code == 0, err


def test_cli_finetune_sft_runs(tiny_gguf, tmp_path, capsys):
    recs = [{"instruction": f"Name fox {k}.", "input": "", "output": "The quick fox."} for k in range(20)]
    (tmp_path / "sft.json").write_text(json.dumps(recs))
    code, out, err = _run(["finetune", "--model", str(tiny_gguf), "--method", "sft", "--data",
                           str(tmp_path / "sft.json"), "--out", str(tmp_path / "ad"), "--steps", "2"], capsys)
    assert code == 0, err
    assert "answer-only loss" in out and json.loads((tmp_path / "ad" / "adapter.json").read_text())["method"] == "sft"


@pytest.mark.parametrize("extra, message", [
    (["--beta", "0"], "--beta must be a positive number"),
    (["--beta", "-1"], "--beta must be a positive number"),
    (["--limit", "0"], "--limit must be a positive number"),
])
def test_cli_bad_inputs_are_one_line(tiny_gguf, tmp_path, capsys, extra, message):
    code, out, err = _run(["finetune", "--model", str(tiny_gguf), "--method", "dpo", "--data",
                           str(_prefs(tmp_path)), "--out", str(tmp_path / "ad"), *extra], capsys)
    assert code == 2 and message in err and one_error_line(err)


def test_cli_empty_split_and_bad_record_are_one_line(tiny_gguf, tmp_path, capsys):
    code, _, err = _run(["finetune", "--method", "dpo", "--model", str(tiny_gguf), "--data",
                         str(_prefs(tmp_path, n=5)), "--out", str(tmp_path / "ad"), "--limit", "2"], capsys)
    assert code == 2 and "test split is empty" in err and one_error_line(err)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "Say hi", "chosen": "Hello"}]))
    code, _, err = _run(["finetune", "--method", "dpo", "--model", str(tiny_gguf), "--data", str(bad),
                         "--out", str(tmp_path / "ad")], capsys)
    assert code == 2 and "record 0 ('Say hi'): field 'rejected' is missing" in err and one_error_line(err)


def test_cli_adapter_for_another_model_is_one_line(tiny_gguf, tmp_path, capsys):
    other = apply_lora(tiny_llama(), rank=2, alpha=2)       # vocabulary 97: not the tiny GGUF's shape
    save_adapter(other, tmp_path / "other", {"base_model": "a 97-token toy"})
    code, _, err = _run(["generate", "The", "--model", str(tiny_gguf), "--adapter", str(tmp_path / "other")],
                        capsys)
    assert code == 2 and "made for a 97-token toy" in err and one_error_line(err)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    from llm_companion.evaluation.stats import bootstrap_ci

    g = torch.Generator().manual_seed(0)
    small, large = torch.randn(20, generator=g) + 1.0, torch.randn(2000, generator=g) + 1.0
    lo, hi = bootstrap_ci(small)
    assert lo < float(small.mean()) < hi
    lo2, hi2 = bootstrap_ci(large)
    assert lo2 < 1.0 < hi2 and (hi2 - lo2) < 0.5 * (hi - lo)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
