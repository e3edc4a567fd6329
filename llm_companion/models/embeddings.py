"""Input embeddings: a learned vector per token id plus a learned vector per absolute position (GPT-2)."""
from __future__ import annotations

import torch
from torch import nn

from llm_companion.models.config import GPTConfig


class GPTEmbedding(nn.Module):
    """Token + absolute position embeddings: ids (B, T) -> vectors (B, T, emb_dim).

    ``tok_emb`` and ``pos_emb`` have the same names and shapes as in :class:`~llm_companion.models.gpt.GPTModel`,
    which does exactly this internally as its first step; a state dict therefore moves between the two.
    """

    def __init__(self, vocab_size: int, context_length: int, emb_dim: int):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, emb_dim)
        self.pos_emb = nn.Embedding(context_length, emb_dim)

    @classmethod
    def from_config(cls, cfg: GPTConfig) -> GPTEmbedding:
        return cls(cfg.vocab_size, cfg.context_length, cfg.emb_dim)

    @property
    def context_length(self) -> int:
        return self.pos_emb.num_embeddings

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[-1]
        if T > self.context_length:
            raise ValueError(f"input has {T} tokens but context_length is {self.context_length}; "
                             f"truncate the input or build the embedding with a larger context_length")
        pos = torch.arange(T, device=idx.device)  # (T,)
        # (B, T, emb_dim) + (T, emb_dim): the same position vectors are added to every sequence of the batch
        return self.tok_emb(idx) + self.pos_emb(pos)
