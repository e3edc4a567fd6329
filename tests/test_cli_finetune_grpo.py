"""``llm-companion finetune --method grpo`` on a tiny random Llama GGUF with a ChatML tokenizer."""
from __future__ import annotations

import json

import pytest
import torch
from gguf_writers import save_llama_gguf, train_byte_bpe_metadata

from llm_companion import cli
from llm_companion.models.llama import LlamaConfig, LlamaModel

CFG = LlamaConfig(vocab_size=97, context_length=128, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2, hidden_dim=64)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    meta = train_byte_bpe_metadata("What is 12 + 34? Answer with the number only. " * 4, 30)
    path = tmp_path_factory.mktemp("grpo-cli") / "tiny.gguf"
    torch.manual_seed(0)
    save_llama_gguf(LlamaModel(CFG.replace(vocab_size=len(meta["tokenizer.ggml.tokens"]))).eval(), path,
                    metadata=meta)
    return path


def _run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> bool:
    return "Traceback" not in err and len([x for x in err.splitlines() if ": error: " in x]) == 1


@pytest.mark.slow
def test_grpo_trains_resumes_and_writes_an_adapter(tiny_gguf, tmp_path, capsys):
    args = ["finetune", "--model", str(tiny_gguf), "--method", "grpo", "--out", str(tmp_path / "ad"),
            "--steps", "1", "--batch-size", "1", "--group-size", "2", "--max-new-tokens", "3",
            "--eval-problems", "2", "--checkpoint", str(tmp_path / "ck"), "--targets", "q,v"]
    code, out, err = _run(args, capsys)
    assert code == 0, err
    assert "validation (2 problems, greedy): accuracy" in out and "adapter written" in out
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["step"] == 1
    code, out, err = _run([*args[:7], "--steps", "2", *args[9:]], capsys)       # resumes at step 1
    assert code == 0, err
    meta = json.loads((tmp_path / "ad" / "adapter.json").read_text())
    assert meta["method"] == "grpo" and meta["steps"] == 2 and meta["group_size"] == 2
    assert meta["validation"]["problems"] == 2 and 0.0 <= meta["validation"]["accuracy_after"] <= 1.0
    assert len(json.loads((tmp_path / "ck" / "state.json").read_text())["history"]) == 2


@pytest.mark.parametrize("extra, message", [
    (["--group-size", "1"], "--group-size must be at least 2"),
    (["--temperature", "0"], "--temperature must be a positive number"),
    (["--beta", "-0.1"], "--beta must be 0 or more"),
    (["--data", "x.json"], "--data and --limit are for --method sft/dpo"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_grpo_bad_inputs_are_one_line(tiny_gguf, tmp_path, capsys, extra, message):
    code, _, err = _run(["finetune", "--model", str(tiny_gguf), "--method", "grpo", "--out", str(tmp_path / "ad"),
                         *extra], capsys)
    assert code == 2 and message in err and one_error_line(err)
