"""Instruction tuning through the chat template (llm_companion.finetune.chat_sft) and LoRA against peft's."""
from __future__ import annotations

import pytest
import torch

from llm_companion import LlamaConfig, LlamaModel, apply_lora
from llm_companion.finetune.chat_sft import (
    ChatSFTDataset,
    answer_losses,
    chat_collator,
    end_id,
    finetune_sft,
    generate_answers,
    prompt_ids,
    user_message,
)
from llm_companion.finetune.lora import lora_layers
from llm_companion.training.losses import IGNORE_INDEX

CFG = LlamaConfig(vocab_size=97, context_length=96, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2,
                  hidden_dim=64)
RECORDS = [
    {"instruction": "Name the fox.", "input": "", "output": "The quick brown fox."},
    {"instruction": "Repeat", "input": "lazy dog", "output": "The lazy dog."},
    {"instruction": "What jumps?", "input": "", "output": "The fox jumps."},
]


def tiny_llama(cfg: LlamaConfig = CFG, seed: int = 0) -> LlamaModel:
    torch.manual_seed(seed)
    return LlamaModel(cfg).eval()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A byte-level BPE with ChatML control tokens and a chat template with a default system prompt."""
    from gguf_writers import save_llama_gguf, train_byte_bpe_metadata

    from llm_companion.data.tokenizer import gguf_tokenizer

    meta = train_byte_bpe_metadata("The quick brown fox jumps over the lazy dog. Name Repeat What " * 4, 30)
    meta["tokenizer.chat_template"] = "<|im_start|>system\nBe brief.<|im_end|>\n"
    path = tmp_path_factory.mktemp("chatml") / "tiny.gguf"
    save_llama_gguf(tiny_llama(CFG.replace(vocab_size=len(meta["tokenizer.ggml.tokens"]))), path, metadata=meta)
    return gguf_tokenizer(path)


def test_prompt_is_the_chat_template_with_the_records_input(tok):
    assert user_message(RECORDS[1]) == "Repeat\n\nlazy dog"
    text = tok.decode(prompt_ids(tok, RECORDS[1]))
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nRepeat\n\nlazy dog<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert end_id(tok) == tok.special_tokens["<|im_end|>"]


def test_answer_mask_keeps_only_answer_targets_and_the_end_token(tok):
    ds = ChatSFTDataset(RECORDS, tok)
    x, y = chat_collator(tok)([ds[0], ds[1]])
    for row, ex in enumerate((ds[0], ds[1])):
        kept = [(t, int(y[row, t])) for t in range(y.shape[1]) if y[row, t] != IGNORE_INDEX]
        # targets kept: every answer token, then exactly one <|im_end|>
        answer = ex.ids[ex.prompt_len:]
        assert [v for _, v in kept] == answer + [end_id(tok)]
        assert kept[0][0] == ex.prompt_len - 1
        assert tok.decode(answer) == RECORDS[row]["output"]
        assert x[row, :len(ex.ids)].tolist() == ex.ids


@pytest.mark.slow
def test_answer_losses_are_per_example_and_sft_lowers_them(tok):
    vocab = max(max(e.ids) for e in ChatSFTDataset(RECORDS, tok).examples) + 1
    model = apply_lora(tiny_llama(CFG.replace(vocab_size=max(vocab, 97))), rank=8, alpha=16)
    ds, coll = ChatSFTDataset(RECORDS, tok), chat_collator(tok)
    before = answer_losses(model, ds, coll, batch_size=2)
    alone = answer_losses(model, ChatSFTDataset(RECORDS[1:2], tok), coll)
    assert before.shape == (3,)
    torch.testing.assert_close(alone[0], before[1], atol=1e-4, rtol=1e-5)   # padding does not matter
    finetune_sft(model, tok, RECORDS, steps=25, lr=2e-2, batch_size=3)
    after = answer_losses(model, ds, coll)
    assert (after < before).all() and after.mean() < 0.5 * before.mean()


def test_generate_answers_batches_prompts_of_one_length_and_gives_each_its_own_answer(tok):
    model = tiny_llama(CFG.replace(vocab_size=tok.n_vocab), seed=2)
    recs = RECORDS + RECORDS[:2] + [{"instruction": "Name the fox.", "input": "quick"}]
    alone = generate_answers(model, tok, recs, max_new_tokens=6, batch_size=1)
    together = generate_answers(model, tok, recs, max_new_tokens=6, batch_size=8)
    assert together == alone and len(together) == len(recs)
    assert together[3] == together[0] and together[4] == together[1]       # same prompt, same answer
    assert len({len(prompt_ids(tok, r)) for r in recs}) < len(recs)        # some prompts did share a batch


# --------------------------------------------------------------------------------------------- peft oracle
HF_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def _hf_llama_and_ours():
    transformers = pytest.importorskip("transformers")
    cfg = CFG.replace(tie_weights=False)
    hcfg = transformers.LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.emb_dim,
                                    intermediate_size=cfg.hidden_dim, num_hidden_layers=cfg.n_layers,
                                    num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                                    max_position_embeddings=cfg.context_length, rms_norm_eps=cfg.norm_eps,
                                    rope_theta=cfg.rope_theta, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hcfg).eval()
    ours = LlamaModel(cfg).eval()
    sd = hf.state_dict()
    with torch.no_grad():
        ours.tok_emb.weight.copy_(sd["model.embed_tokens.weight"])
        ours.final_norm.weight.copy_(sd["model.norm.weight"])
        ours.out_head.weight.copy_(sd["lm_head.weight"])
        for i, block in enumerate(ours.blocks):
            pre = f"model.layers.{i}."
            block.attn_norm.weight.copy_(sd[pre + "input_layernorm.weight"])
            block.ffn_norm.weight.copy_(sd[pre + "post_attention_layernorm.weight"])
            for ours_name, hf_name in HF_NAMES.items():
                part = block.attn if ours_name in "qkvo" else block.ffn
                getattr(part, ours_name).weight.copy_(sd[pre + hf_name + ".weight"])
    return hf, ours


@pytest.mark.slow  # importing transformers and peft takes seconds
def test_lora_equals_peft_on_the_same_weights_and_adapters():
    peft = pytest.importorskip("peft")
    hf, ours = _hf_llama_and_ours()
    ids = torch.randint(0, CFG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)   # same base function
    targets = ["q", "v", "down"]
    apply_lora(ours, rank=4, alpha=8, targets=targets)
    pcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                           target_modules=["q_proj", "v_proj", "down_proj"])
    hf_lora = peft.get_peft_model(hf, pcfg).eval()
    g = torch.Generator().manual_seed(4)
    mods = dict(hf_lora.named_modules())
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            i, short = name.split(".")[1], name.split(".")[-1]
            theirs = mods[f"base_model.model.model.layers.{i}.{HF_NAMES[short]}"]
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.2)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.2)
            theirs.lora_A["default"].weight.copy_(layer.lora_A)
            theirs.lora_B["default"].weight.copy_(layer.lora_B)
        mine, peft_out = ours(ids), hf_lora(ids).logits
    assert len(lora_layers(ours)) == 3 * CFG.n_layers
    torch.testing.assert_close(mine, peft_out, atol=1e-4, rtol=1e-4)
    with torch.no_grad(), hf_lora.disable_adapter():
        plain = hf_lora(ids).logits
    assert not torch.allclose(mine, plain, atol=1e-2)   # the adapters change the function
    # trainable parameter counts agree too
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    n_peft = sum(p.numel() for p in hf_lora.parameters() if p.requires_grad)
    assert n_ours == n_peft
