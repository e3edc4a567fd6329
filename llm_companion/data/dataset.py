"""Next-token prediction data: sliding windows over a token stream.

A window of ``max_length + 1`` consecutive tokens gives one training example: the first ``max_length`` are
the input, the last ``max_length`` the target, so target[t] is the token that follows input[:t+1]. Windows
start every ``stride`` tokens (``stride == max_length``: no overlap; smaller: overlapping windows).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from llm_companion.data.tokenizer import encode_text, gpt2_tokenizer


class DatasetError(ValueError):
    """Settings or a text that cannot make a next-token dataset."""


class TextTooShortError(DatasetError):
    """The text has fewer than ``max_length + 1`` tokens, so not even one window fits."""


def _token_ids(text_or_token_ids, tokenizer) -> torch.Tensor:
    if isinstance(text_or_token_ids, str):
        if tokenizer is None:
            tokenizer = gpt2_tokenizer()
        ids = encode_text(tokenizer, text_or_token_ids, endoftext_is_special=True)  # a corpus joined with it
        return torch.tensor(ids, dtype=torch.long)
    return torch.as_tensor(text_or_token_ids, dtype=torch.long).flatten()


class GPTDataset(Dataset):
    """Sliding-window (input, target) pairs over a text or a sequence of token ids.

    ``text_or_token_ids`` is a string (tokenized with ``tokenizer``, GPT-2's BPE by default) or token ids.
    Example ``i`` is ``(ids[s : s + max_length], ids[s + 1 : s + max_length + 1])`` with ``s = i * stride``;
    there are ``ceil((n_tokens - max_length) / stride)`` of them. All windows are one strided view of one
    token tensor, so building the dataset copies nothing.
    """

    def __init__(self, text_or_token_ids: str | Sequence[int] | torch.Tensor, tokenizer=None,
                 max_length: int = 256, stride: int = 128):
        if max_length < 1 or stride < 1:
            raise DatasetError(f"max_length and stride must be >= 1 (got max_length={max_length}, "
                               f"stride={stride})")
        self.token_ids = _token_ids(text_or_token_ids, tokenizer)  # (n_tokens,)
        n = self.token_ids.numel()
        if n < max_length + 1:
            raise TextTooShortError(
                f"the text has {n} tokens but max_length={max_length} needs at least {max_length + 1} "
                f"(input plus the target shifted by one); use max_length <= {max(n - 1, 0)} or a longer text"
            )
        self.max_length = max_length
        self.stride = stride
        self.windows = self.token_ids.unfold(0, max_length + 1, stride)  # (n_windows, max_length + 1), a view

    @property
    def inputs(self) -> torch.Tensor:
        return self.windows[:, :-1]  # (n_windows, max_length)

    @property
    def targets(self) -> torch.Tensor:
        return self.windows[:, 1:]  # (n_windows, max_length)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.windows[i]
        return window[:-1], window[1:]


def create_dataloader(text: str | Sequence[int] | torch.Tensor, batch_size: int = 4, max_length: int = 256,
                      stride: int = 128, shuffle: bool = True, drop_last: bool = True, num_workers: int = 0,
                      tokenizer=None, seed: int = 123) -> DataLoader:
    """A DataLoader of ``(inputs, targets)`` batches, each ``(batch_size, max_length)``, over :class:`GPTDataset`.

    Shuffling draws from a generator seeded with ``seed``, so the batch order is reproducible.
    """
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1 (got {batch_size})")
    dataset = GPTDataset(text, tokenizer, max_length=max_length, stride=stride)
    if drop_last and len(dataset) < batch_size:
        raise DatasetError(
            f"the text gives {len(dataset)} windows, fewer than batch_size={batch_size}, so drop_last=True "
            f"leaves no batch at all; use a smaller batch_size or stride, or drop_last=False"
        )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, generator=generator)
