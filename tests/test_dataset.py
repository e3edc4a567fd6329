"""Sliding-window next-token datasets and their DataLoader."""
from __future__ import annotations

import math

import pytest
import torch

from llm_companion.data.dataset import DatasetError, GPTDataset, TextTooShortError, create_dataloader
from llm_companion.data.tokenizer import SimpleTokenizer, gpt2_tokenizer


@pytest.mark.parametrize("n, max_length, stride", [(20, 4, 4), (20, 4, 1), (20, 4, 3), (21, 4, 4), (5, 4, 7),
                                                   (50, 8, 5)])
def test_window_count_and_shift(n, max_length, stride):
    ids = list(range(100, 100 + n))
    ds = GPTDataset(ids, max_length=max_length, stride=stride)
    # the plain-Python definition: a window starts at every multiple of stride that leaves room for the target
    starts = list(range(0, n - max_length, stride))
    assert len(ds) == len(starts) == math.ceil((n - max_length) / stride)
    for i, s in enumerate(starts):
        x, y = ds[i]
        assert x.tolist() == ids[s:s + max_length]
        assert y.tolist() == ids[s + 1:s + max_length + 1]
        assert x.dtype == y.dtype == torch.long
    assert torch.equal(ds.inputs[:, 1:], ds.targets[:, :-1])


def test_windows_share_one_tensor():
    ds = GPTDataset(torch.arange(1000), max_length=16, stride=8)
    assert ds.windows.shape == (len(ds), 17)
    assert ds.windows.untyped_storage().data_ptr() == ds.token_ids.untyped_storage().data_ptr()


def test_text_is_tokenized_with_gpt2_by_default():
    text = "Hello, world. " * 10 + "<|endoftext|> The end."
    ds = GPTDataset(text, max_length=4, stride=4)
    expected = gpt2_tokenizer().encode(text, allowed_special={"<|endoftext|>"})
    assert ds.token_ids.tolist() == expected
    assert 50256 in ds.token_ids.tolist()


def test_teaching_tokenizer_is_accepted():
    tok = SimpleTokenizer.from_text("a b c d e f")
    ds = GPTDataset("a b c d e f a b", tok, max_length=3, stride=2)
    assert ds.token_ids.tolist() == tok.encode("a b c d e f a b")
    assert len(ds) == 3


@pytest.mark.parametrize("kw", [dict(max_length=0, stride=1), dict(max_length=4, stride=0),
                                dict(max_length=-3, stride=2)])
def test_bad_settings(kw):
    with pytest.raises(DatasetError, match="must be >= 1"):
        GPTDataset(list(range(50)), **kw)


def test_text_too_short_says_how_many_tokens():
    with pytest.raises(TextTooShortError) as err:
        GPTDataset(list(range(10)), max_length=10, stride=1)
    msg = str(err.value)
    assert "has 10 tokens" in msg and "at least 11" in msg and "max_length <= 9" in msg
    assert isinstance(err.value, ValueError)
    GPTDataset(list(range(11)), max_length=10, stride=1)  # exactly max_length + 1 is enough for one window


def test_dataloader_batches_and_seed():
    ids = list(range(200))
    kw = dict(batch_size=4, max_length=8, stride=8, tokenizer=None)
    loader = create_dataloader(ids, shuffle=False, **kw)
    x, y = next(iter(loader))
    assert x.shape == y.shape == (4, 8)
    assert x[0].tolist() == list(range(8)) and x[1].tolist() == list(range(8, 16))
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert len(loader) == (200 - 8) // 8 // 4  # 24 windows -> 6 full batches

    first = [b[0] for b in create_dataloader(ids, shuffle=True, seed=7, **kw)]
    again = [b[0] for b in create_dataloader(ids, shuffle=True, seed=7, **kw)]
    other = [b[0] for b in create_dataloader(ids, shuffle=True, seed=8, **kw)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_dataloader_refuses_to_be_empty():
    with pytest.raises(DatasetError, match="fewer than batch_size=8"):
        create_dataloader(list(range(30)), batch_size=8, max_length=10, stride=10)
    loader = create_dataloader(list(range(30)), batch_size=8, max_length=10, stride=10, drop_last=False)
    assert len(loader) == 1
