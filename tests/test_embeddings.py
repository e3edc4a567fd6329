"""Token + position embeddings, and their agreement with GPTModel's first step."""
from __future__ import annotations

import pytest
import torch

from llm_companion.models.config import GPTConfig
from llm_companion.models.embeddings import GPTEmbedding
from llm_companion.models.gpt import GPTModel


def test_shapes_and_definition():
    torch.manual_seed(0)
    emb = GPTEmbedding(vocab_size=11, context_length=6, emb_dim=3)
    idx = torch.tensor([[1, 2, 3, 4], [10, 0, 0, 5]])
    out = emb(idx)
    assert out.shape == (2, 4, 3)
    # row lookup, plus the position row; the same position rows for every sequence in the batch
    expected = emb.tok_emb.weight[idx] + emb.pos_emb.weight[:4]
    assert torch.allclose(out, expected)
    # an embedding lookup is a one-hot vector times the weight matrix
    one_hot = torch.nn.functional.one_hot(idx, 11).float()
    assert torch.allclose(one_hot @ emb.tok_emb.weight, emb.tok_emb(idx))


def test_matches_gpt_model_embedding_step():
    cfg = GPTConfig.preset("gpt-nano")
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    emb = GPTEmbedding.from_config(cfg)
    missing, unexpected = emb.load_state_dict(model.state_dict(), strict=False)
    assert missing == []
    assert set(unexpected) == {k for k in model.state_dict() if not k.startswith(("tok_emb.", "pos_emb."))}
    idx = torch.randint(0, cfg.vocab_size, (2, 5))
    captured = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    model(idx)
    assert torch.allclose(emb(idx), captured["x"])


def test_too_long_input():
    emb = GPTEmbedding(vocab_size=5, context_length=4, emb_dim=2)
    with pytest.raises(ValueError, match="context_length is 4"):
        emb(torch.zeros(1, 5, dtype=torch.long))
