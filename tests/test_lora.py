"""LoRA adapters: exact start, what trains, merging, counting, save/load, errors, on GPT, classifier and Llama."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llm_companion import GPTConfig, GPTModel
from llm_companion.finetune.classification import GPTClassifier
from llm_companion.finetune.lora import (
    LoRAError,
    LoRALinear,
    apply_lora,
    load_lora,
    lora_layers,
    merge_lora,
    read_lora_metadata,
    save_lora,
    select_targets,
)
from llm_companion.models.checkpoint import load_model, save_model, save_weights

TINY = GPTConfig(vocab_size=97, context_length=16, emb_dim=24, n_heads=2, n_layers=2)


def tiny_gpt(cfg: GPTConfig = TINY, seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(cfg).eval()


def tokens(cfg: GPTConfig = TINY, batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, cfg.context_length), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model: nn.Module, seed: int = 2) -> None:
    """B = 0 at the start hides bugs in the update path: give every B random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=gen))


def train_steps(model: nn.Module, loss_fn, steps: int = 3) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss_fn(model).backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def lm_loss(x: torch.Tensor):
    return lambda m: F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())


# --------------------------------------------------------------------------------------------- wrapping
def test_wrapped_model_with_zero_B_gives_exactly_the_base_logits():
    base = tiny_gpt()
    x = tokens()
    with torch.no_grad():
        want = base(x)
    wrapped = apply_lora(copy.deepcopy(base), rank=4, alpha=8)
    assert all(torch.count_nonzero(m.lora_B) == 0 for m in lora_layers(wrapped).values())
    assert all(torch.count_nonzero(m.lora_A) > 0 for m in lora_layers(wrapped).values())  # A is random
    with torch.no_grad():
        assert torch.equal(wrapped(x), want)
        assert torch.equal(wrapped(x, last_only=True), base(x, last_only=True))


def test_default_targets_are_every_block_linear_and_the_head():
    model = apply_lora(tiny_gpt(), rank=2, alpha=2)
    per_block = {"attn.qkv", "attn.proj", "ff.fc", "ff.proj"}
    want = {f"blocks.{i}.{n}" for i in range(TINY.n_layers) for n in per_block} | {"out_head"}
    assert set(lora_layers(model)) == want
    assert not any(isinstance(m, nn.Linear) and not isinstance(p, LoRALinear)
                   for p in model.modules() for m in p.children())   # no linear left unwrapped


def test_forward_adds_scaled_low_rank_update():
    base = tiny_gpt()
    model = apply_lora(copy.deepcopy(base), rank=3, alpha=6, targets=["blocks.0.ff.fc"])
    randomize_adapters(model)
    layer = model.blocks[0].ff.fc
    x = torch.randn(5, TINY.emb_dim)
    by_hand = x @ base.blocks[0].ff.fc.weight.T + base.blocks[0].ff.fc.bias \
        + (6 / 3) * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), by_hand)
    torch.testing.assert_close(layer.delta_weight(), 2.0 * layer.lora_B @ layer.lora_A)
    # the fast decoding path slices the fused qkv weight of plain layers: it must call a wrapped one instead
    from llm_companion.inference.fast import decoder

    model = apply_lora(copy.deepcopy(base), rank=3, alpha=6, targets="qkv")
    randomize_adapters(model)
    with torch.no_grad():
        torch.testing.assert_close(decoder(model)(tokens(), None), model(tokens())[:, -1:])


def test_trainable_count_is_rank_times_in_plus_out():
    for rank in (1, 4):
        model = apply_lora(tiny_gpt(), rank=rank, alpha=1.0)
        want = sum(rank * (m.in_features + m.out_features) for m in lora_layers(model).values())
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == want
        assert {n.rsplit(".", 1)[1] for n, p in model.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}


def test_training_changes_only_the_adapters():
    model = apply_lora(tiny_gpt(), rank=4, alpha=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, lm_loss(tokens()))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n in before if n.endswith((".lora_A", ".lora_B"))}


def test_tied_head_stays_tied_and_frozen_and_merging_unties_it():
    model = apply_lora(tiny_gpt(), rank=2, alpha=4)
    assert model.out_head.base.weight is model.tok_emb.weight       # still one shared matrix
    assert not model.tok_emb.weight.requires_grad
    emb = model.tok_emb.weight.detach().clone()
    train_steps(model, lm_loss(tokens()))
    assert torch.equal(model.tok_emb.weight, emb)
    x = tokens()
    with torch.no_grad():
        before = model(x)
    merge_lora(model)
    assert torch.equal(model.tok_emb.weight, emb)                   # merging did not change the embedding
    assert model.out_head.weight is not model.tok_emb.weight
    assert model.cfg.tie_weights is False
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------- merging
def test_merged_equals_unmerged_and_restores_the_original_layers():
    base = tiny_gpt(TINY.replace(tie_weights=False))
    originals = {n: m for n, m in base.named_modules() if isinstance(m, nn.Linear)}
    model = apply_lora(base, rank=4, alpha=8)
    randomize_adapters(model)
    x = tokens()
    with torch.no_grad():
        unmerged = model(x)
    assert merge_lora(model) is model
    assert not lora_layers(model)
    assert {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)} == originals   # same objects
    with torch.no_grad():
        torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(x, last_only=True), unmerged[:, -1:], atol=1e-5, rtol=0)


def test_merge_keeps_a_linear_subclass():
    class FastLinear(nn.Linear):
        pass

    model = tiny_gpt(TINY.replace(tie_weights=False))
    fast = FastLinear(TINY.emb_dim, TINY.vocab_size, bias=False)
    model.out_head = fast
    apply_lora(model, rank=2, alpha=2, targets="out_head")              # a subclass counts as linear
    assert isinstance(model.out_head, LoRALinear) and model.out_head.base is fast
    merge_lora(model)
    assert model.out_head is fast and type(model.out_head) is FastLinear


def test_merged_model_saves_and_loads_as_a_plain_gpt(tmp_path):
    model = apply_lora(tiny_gpt(), rank=2, alpha=4)                    # tied head, untied by merging
    randomize_adapters(model)
    merge_lora(model)
    x = tokens()
    reloaded = load_model(save_model(model, tmp_path / "merged")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------- save / load
def test_save_then_load_into_a_fresh_model_reproduces_logits(tmp_path):
    model = apply_lora(tiny_gpt(), rank=4, alpha=8, targets=["attn.*", "ff.fc"], dropout=0.1)
    train_steps(model, lm_loss(tokens()))
    path = save_lora(model, tmp_path / "adapter.safetensors")
    meta = read_lora_metadata(path)
    assert meta["rank"] == 4 and meta["alpha"] == 8.0 and meta["dropout"] == 0.1
    assert meta["targets"] == ["attn.*", "ff.fc"]
    assert meta["layers"]["blocks.0.attn.qkv"] == [3 * TINY.emb_dim, TINY.emb_dim]
    x = tokens()
    with torch.no_grad():
        want = model(x)
    plain = load_lora(tiny_gpt(), path).eval()                         # rebuilt from the metadata
    fresh = load_lora(apply_lora(tiny_gpt(), rank=4, alpha=8, targets=["attn.*", "ff.fc"]), path).eval()
    with torch.no_grad():
        assert torch.equal(plain(x), want)
        assert torch.equal(fresh(x), want)
    assert set(lora_layers(plain)) == set(lora_layers(model))
    full = tmp_path / "full.safetensors"
    save_weights(tiny_gpt(), full)
    assert path.stat().st_size < full.stat().st_size / 2                # only the adapters were stored


def test_a_base_model_of_another_shape_is_refused(tmp_path):
    path = save_lora(apply_lora(tiny_gpt(), rank=2, alpha=2), tmp_path / "a.safetensors")
    wider = tiny_gpt(TINY.replace(emb_dim=32))
    with pytest.raises(LoRAError, match="shape it was trained on"):
        load_lora(wider, path)
    assert not lora_layers(wider)                                      # refused before changing anything
    with pytest.raises(LoRAError, match="lacks"):
        load_lora(tiny_gpt(TINY.replace(n_layers=1)), path)
    with pytest.raises(LoRAError, match="wrapped differently"):
        load_lora(apply_lora(tiny_gpt(), rank=3, alpha=3), path)


def test_unreadable_or_foreign_files_are_refused(tmp_path):
    with pytest.raises(LoRAError, match="no adapter file"):
        load_lora(tiny_gpt(), tmp_path / "missing.safetensors")
    save_weights(tiny_gpt(), tmp_path / "model.safetensors")
    with pytest.raises(LoRAError, match="not a LoRA adapter"):
        load_lora(tiny_gpt(), tmp_path / "model.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LoRAError, match="cannot be read"):
        load_lora(tiny_gpt(), tmp_path / "junk.safetensors")


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0, alpha=1), "rank"), (dict(rank=2.5, alpha=1), "rank"), (dict(rank=True, alpha=1), "rank"),
    (dict(rank=2, alpha=0), "alpha"), (dict(rank=2, alpha=-1), "alpha"), (dict(rank=2, alpha=float("nan")), "alpha"),
    (dict(rank=2, alpha="8"), "alpha"), (dict(rank=2, alpha=2, dropout=1.0), "dropout"),
    (dict(rank=2, alpha=2, targets=[]), "targets"), (dict(rank=2, alpha=2, targets=[3]), "target"),
    (dict(rank=2, alpha=2, targets=["qkv", "attn.qvk"]), "'attn.qvk' matches no nn.Linear"),
    (dict(rank=2, alpha=2, targets="tok_emb"), "matches no nn.Linear"),
])
def test_bad_settings_give_clear_errors(kwargs, message):
    model = tiny_gpt()
    with pytest.raises(LoRAError, match=message):
        apply_lora(model, **kwargs)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())   # nothing changed


def test_wrapping_twice_and_merging_nothing_are_errors(tmp_path):
    model = apply_lora(tiny_gpt(), rank=2, alpha=2)
    with pytest.raises(LoRAError, match="already has LoRA"):
        apply_lora(model, rank=2, alpha=2)
    merge_lora(model)
    with pytest.raises(LoRAError, match="no LoRA adapters to merge"):
        merge_lora(model)
    with pytest.raises(LoRAError, match="no LoRA adapters to save"):
        save_lora(model, tmp_path / "x.safetensors")


def test_target_patterns_match_names_and_dotted_suffixes():
    model = tiny_gpt()
    assert select_targets(model, "qkv") == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert select_targets(model, "blocks.1.*") == [f"blocks.1.{n}" for n in ("attn.qkv", "attn.proj", "ff.fc",
                                                                            "ff.proj")]
    assert select_targets(model, ["out_head", "proj"]) == ["blocks.0.attn.proj", "blocks.0.ff.proj",
                                                           "blocks.1.attn.proj", "blocks.1.ff.proj", "out_head"]


# --------------------------------------------------------------------------------------------- classifier
def make_classifier(seed: int = 0) -> GPTClassifier:
    return GPTClassifier(tiny_gpt(seed=seed), 2, pad_token_id=TINY.vocab_size - 1, seed=5).eval()


def test_classifier_trains_adapters_and_its_new_head(tmp_path):
    clf = make_classifier()
    x = tokens(batch=4)
    y = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        base_logits = clf(x)
    apply_lora(clf, rank=2, alpha=4)
    assert "gpt.out_head" not in lora_layers(clf)                       # the fresh head is trained whole
    with torch.no_grad():
        assert torch.equal(clf(x), base_logits)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    adapters = sum(2 * (m.in_features + m.out_features) for m in lora_layers(clf).values())
    head = TINY.emb_dim * 2 + 2
    assert sum(p.numel() for p in clf.parameters() if p.requires_grad) == adapters + head
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    train_steps(clf, lambda m: F.cross_entropy(m(x), y))
    changed = {n for n, p in clf.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable and {"gpt.out_head.weight", "gpt.out_head.bias"} <= changed

    path = save_lora(clf, tmp_path / "clf.safetensors")
    assert set(read_lora_metadata(path)["extra"]) == {"gpt.out_head.weight", "gpt.out_head.bias"}
    with torch.no_grad():
        want = clf(x)
    again = load_lora(make_classifier(), path).eval()
    with torch.no_grad():
        assert torch.equal(again(x), want)
    assert again.gpt.out_head.weight.requires_grad                      # still trainable after loading
    merge_lora(clf)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), want, atol=1e-5, rtol=0)


def test_classifier_head_can_be_wrapped_on_request():
    clf = apply_lora(make_classifier(), rank=2, alpha=2, targets=["blocks.*", "out_head"])
    assert "gpt.out_head" in lora_layers(clf)
    assert not clf.gpt.out_head.base.weight.requires_grad


# --------------------------------------------------------------------------------------------- Llama
def test_llama_model_wraps_every_projection_merges_and_round_trips(tmp_path):
    from llm_companion.models.llama import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=89, context_length=16, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2,
                      hidden_dim=48)
    torch.manual_seed(0)
    base = LlamaModel(cfg).eval()
    x = tokens(cfg)
    with torch.no_grad():
        want = base(x)
    model = apply_lora(copy.deepcopy(base), rank=3, alpha=6)
    per_block = {"attn.q", "attn.k", "attn.v", "attn.o", "ffn.gate", "ffn.up", "ffn.down"}
    assert set(lora_layers(model)) == {f"blocks.{i}.{n}" for i in range(2) for n in per_block} | {"out_head"}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == \
        sum(3 * (m.in_features + m.out_features) for m in lora_layers(model).values())
    with torch.no_grad():
        assert torch.equal(model(x), want)
    train_steps(model, lm_loss(x))
    with torch.no_grad():
        trained = model(x)
        torch.testing.assert_close(model(x, last_only=True), trained[:, -1:], atol=1e-5, rtol=0)
    assert not torch.allclose(trained, want)
    path = save_lora(model, tmp_path / "llama.safetensors")
    again = load_lora(copy.deepcopy(base), path).eval()
    with torch.no_grad():
        assert torch.equal(again(x), trained)
    merge_lora(model)
    assert model.out_head.weight is not model.tok_emb.weight and torch.equal(model.tok_emb.weight, base.tok_emb.weight)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained, atol=1e-5, rtol=0)
