"""Shared pytest setup: quiet TensorFlow, headless progress bars, the offline mirror, and the HF GPT-2 oracle.

Environment (set only where the caller has not set it, so ``make``/CI values win):

- ``TF_CPP_MIN_LOG_LEVEL=3`` and ``LLM_COMPANION_PROGRESS=plain`` keep test output to one line per bar.
- ``LLM_COMPANION_MIRROR`` defaults to ``../shared/data`` beside the checkout when that folder exists — the
  layout ``.ci/run`` uses — so a bare ``pytest tests`` finds the same verified files as CI. Where the folder
  is absent nothing is set and tests that need a mirror build their own in ``tmp_path``.

Helpers used by several test files live here rather than in one test file that others import
(``from conftest import ODD, hf_gpt2``): HF ``transformers`` is the test oracle only, imported lazily so
tests that never compare against it do not pay for the import.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from llm_companion import GPTConfig

if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2LMHeadModel

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("LLM_COMPANION_PROGRESS", "plain")

_SHARED_MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "LLM_COMPANION_MIRROR" not in os.environ and _SHARED_MIRROR.is_dir():
    os.environ["LLM_COMPANION_MIRROR"] = str(_SHARED_MIRROR)

# A deliberately odd shape (3 layers, 6 heads of 32, emb 192, context 77, vocab 101): no size is a power of two,
# so transposes and head splits that only work for square or even shapes fail loudly.
ODD = GPTConfig(vocab_size=101, context_length=77, emb_dim=192, n_heads=6, n_layers=3)


def hf_config(cfg: GPTConfig, attn: str = "eager") -> GPT2Config:
    """The HF ``GPT2Config`` equivalent to ``cfg``, dropout off, with the given attention implementation."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
                      n_layer=cfg.n_layers, n_head=cfg.n_heads, layer_norm_epsilon=cfg.ln_eps,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=cfg.tie_weights,
                      bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1,
                      attn_implementation=attn)


def hf_gpt2(cfg: GPTConfig, seed: int = 0, attn: str = "eager") -> GPT2LMHeadModel:
    """A HF GPT-2 with random weights, LayerNorm gains and biases (so no parameter is trivially 0 or 1)."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(hf_config(cfg, attn)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model


# Debian's chromium, driven by Playwright (never a downloaded browser): the site test and the chat page's test
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run", "--disable-extensions"]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for one test module; fails naming the make target when Chromium is missing."""
    from playwright.sync_api import sync_playwright  # the test extra; only browser tests need it

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: `make chromium` (a prerequisite of `make test`) installs it")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
