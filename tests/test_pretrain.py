import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from llm_companion.models.checkpoint import load_model
from llm_companion.models.config import GPTConfig
from llm_companion.training import pretrain, recipes

TINY = replace(recipes.STANDIN, corpus=("the-verdict",), steps=3, batch_size=4, eval_batches=2, warmup_steps=1,
               eval_every=3, model=dict(recipes.STANDIN.model, context_length=32, emb_dim=32, n_heads=2, n_layers=1))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_COMPANION_HOME", str(tmp_path))
    monkeypatch.setattr(recipes, "STANDIN", TINY)
    return tmp_path


def test_standin_recipe_is_gpt2_shaped():
    cfg = GPTConfig(**recipes.STANDIN.model)
    assert cfg.vocab_size == 50257 and cfg.qkv_bias and cfg.tie_weights
    assert set(recipes.STANDIN.corpus) == {"tinyshakespeare", "the-verdict"}
    assert recipes.STANDIN.steps == 600 and not recipes.STANDIN.bf16  # a fixed step count, exact on any CPU


@pytest.mark.slow  # trains a tiny stand-in (~6 s on two idle cores)
def test_ensure_standin_trains_once_deterministically_and_atomically(home, capsys):
    path = pretrain.ensure_standin()
    assert path == home / "models" / "standin"
    assert {"model.safetensors", "config.json", "metrics.json", "SHA256SUMS"} <= {p.name for p in path.iterdir()}
    assert sorted(p.name for p in (home / "models").iterdir()) == [".standin.lock", "standin"]  # no work/temp dirs
    m = json.loads((path / "metrics.json").read_text())
    assert m["steps"] == 3 and m["tokens_seen"] == 3 * 4 * 32 and m["recipe"]["seed"] == 123
    assert m["recipe_id"] == TINY.recipe_id  # an fp32 recipe: the same on any CPU
    assert m["val_loss"] < 10.83  # below the loss of uniform guessing, ln(50257)
    assert m["corpus"] == {"the-verdict": "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"}
    assert "val loss" in capsys.readouterr().out
    first = load_model(path)

    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert pretrain.ensure_standin() == path and (path / "model.safetensors").stat().st_mtime_ns == mtime

    # a damaged stand-in is retrained, to the very same weights
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    pretrain.ensure_standin(verbose=False)
    again = load_model(path)
    for (k, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def _cli(*args, home):
    env = {"LLM_COMPANION_HOME": str(home), "LLM_COMPANION_PROGRESS": "off", "PATH": "/usr/bin:/bin",
           "LLM_COMPANION_MIRROR": os.environ.get("LLM_COMPANION_MIRROR", "")}
    return subprocess.run([sys.executable, "-m", "llm_companion.cli", "pretrain", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_reports_a_bad_corpus_in_one_line(tmp_path):
    run = _cli("--corpus", "no-such-corpus", home=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0
    assert "no-such-corpus" in run.stderr and "text file path or one of" in run.stderr


@pytest.mark.slow
def test_cli_trains_writes_the_model_and_resumes(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 60)
    run = _cli("--corpus", str(corpus), "--preset", "gpt-nano", "--context", "16", "--steps", "2",
               "--batch-size", "4", "--out", str(tmp_path / "run"), home=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "val loss" in run.stdout
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["context_length"] == 16
    assert (tmp_path / "run" / "checkpoints" / "step-00000002").is_dir()
    resumed = _cli("--corpus", str(corpus), "--preset", "gpt-nano", "--context", "16", "--steps", "2",
                   "--batch-size", "4", "--out", str(tmp_path / "run"), "--resume", home=tmp_path)
    assert resumed.returncode == 0 and "resuming from step 2" in resumed.stdout


@pytest.mark.slow  # trains a tiny stand-in (~6 s on two idle cores)
def test_a_standin_from_an_older_recipe_is_retrained(home, monkeypatch):
    path = pretrain.ensure_standin(verbose=False)
    old_id = json.loads((path / "metrics.json").read_text())["recipe_id"]
    monkeypatch.setattr(recipes, "STANDIN", replace(TINY, steps=2))
    pretrain.ensure_standin(verbose=False)
    m = json.loads((path / "metrics.json").read_text())
    assert m["steps"] == 2 and m["recipe_id"] != old_id
