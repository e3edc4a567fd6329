import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from llm_companion.data.corpus import BOOKS_SHA256, Corpus, Work, split_tokens
from llm_companion.data.tokenizer import gpt2_tokenizer
from llm_companion.models.checkpoint import verify_dir
from llm_companion.models.config import GPTConfig
from llm_companion.models.openai_checkpoint import from_tf_checkpoint
from llm_companion.training import loop as training
from llm_companion.training import pretrain, recipes

OPENAI_FILES = {"checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001", "model.ckpt.index",
                "model.ckpt.meta", "vocab.bpe"}
TINY = replace(recipes.BOOKS, model=dict(recipes.BOOKS.model, context_length=32, emb_dim=32, n_heads=2, n_layers=1),
               steps=6, batch_size=2, warmup_steps=1, eval_every=3, eval_batches=2, checkpoint_every=3)
RAN = pretrain.at_native_precision(TINY, "cpu", verbose=False)  # TINY as this CPU runs it: bf16 only if native


@pytest.fixture
def tiny_corpus(monkeypatch):
    """The recipe's corpus replaced by two short works (the run itself is the real one)."""
    from llm_companion.data.artifacts import fetch

    text = fetch("the-verdict").read_text(encoding="utf-8")
    corpus = Corpus(works=[Work("Wharton, Edith/A.txt", text[:8000]), Work("Wharton, Edith/B.txt", text[8000:])])
    splits = pretrain.books_splits(corpus, *split_tokens(corpus.texts(), gpt2_tokenizer(), 0.1))
    monkeypatch.setattr(pretrain, "corpus_for", lambda recipe, verbose=True: splits)
    monkeypatch.setitem(recipes.RECIPES, "books", TINY)
    return corpus


def test_the_books_recipe_still_hashes_to_its_published_id():
    # the published folder standin-books-8aa4a3f6af86 (artifacts.PUBLISHED_STANDINS) is named by this id
    assert recipes.BOOKS.recipe_id == "8aa4a3f6af86"
    assert recipes.BOOKS.folder_name == "standin-books-8aa4a3f6af86"


def test_recipe_id_hashes_every_setting_but_not_the_note():
    assert len(recipes.BOOKS.recipe_id) == 12
    assert replace(recipes.BOOKS, note="other words").recipe_id == recipes.BOOKS.recipe_id
    assert replace(recipes.BOOKS, lr=1e-3).recipe_id != recipes.BOOKS.recipe_id
    assert replace(recipes.BOOKS, model=dict(recipes.BOOKS.model, n_layers=5)).recipe_id != recipes.BOOKS.recipe_id
    assert recipes.BOOKS.folder_name == f"standin-books-{recipes.BOOKS.recipe_id}"


def test_a_trial_is_its_own_recipe_with_periodic_work_that_fits():
    trial = recipes.BOOKS.with_steps(50)
    assert trial.steps == 50 and trial.recipe_id != recipes.BOOKS.recipe_id
    assert trial.eval_every <= 50 and trial.checkpoint_every <= 50 and 1 <= trial.warmup_steps < 50
    assert trial.eval_batches == recipes.BOOKS.eval_batches == 16
    assert recipes.BOOKS.with_steps(2).eval_batches == 2  # a two-step trial evaluates on two batches
    assert recipes.BOOKS.with_steps(recipes.BOOKS.steps) is recipes.BOOKS
    with pytest.raises(recipes.RecipeError, match="at least one step"):
        recipes.BOOKS.with_steps(0)


def test_books_recipe_is_gpt2_shaped_and_uses_the_books_corpus():
    cfg = GPTConfig(**recipes.BOOKS.model)
    assert cfg.vocab_size == 50257 and cfg.tie_weights and cfg.qkv_bias  # OpenAI's layout and tokenizer apply
    assert recipes.BOOKS.corpus == "books" and recipes.BOOKS.tokens == recipes.BOOKS.steps * 8 * cfg.context_length
    assert recipes.get_recipe("books") is recipes.BOOKS
    with pytest.raises(recipes.RecipeError, match="recipes: books"):
        recipes.get_recipe("novels")


@pytest.mark.slow
def test_run_publishes_a_verified_openai_folder_with_metrics(tiny_corpus, tmp_path):
    folder = pretrain.run_recipe(TINY, out=tmp_path, verbose=False)
    assert folder == tmp_path / RAN.folder_name
    names = {p.name for p in folder.iterdir()}
    assert OPENAI_FILES | {"SHA256SUMS", "metrics.json", "history.json", "CORPUS-MANIFEST.sha256"} == names
    assert sorted(p.name for p in tmp_path.iterdir()) == [RAN.folder_name]  # no checkpoints or temp dirs left
    verify_dir(folder)
    m = json.loads((folder / "metrics.json").read_text())
    assert m["recipe"] == RAN.to_dict() and m["recipe_id"] == RAN.recipe_id
    assert m["corpus_sha256"] == tiny_corpus.sha256 and m["steps"] == 6 and m["tokens_seen"] == 6 * 2 * 32
    assert [x["step"] for x in m["losses"]] == [3, 6] and m["val_loss"] < 10.83  # below uniform guessing
    assert m["sample"].startswith("Every effort moves you")
    assert (folder / "CORPUS-MANIFEST.sha256").read_text() == tiny_corpus.manifest()
    model = from_tf_checkpoint(folder)  # the prebuilt stand-in loader's path
    assert model.cfg.n_layers == 1 and model.cfg.emb_dim == 32


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_corpus, tmp_path, monkeypatch):
    whole = pretrain.run_recipe(TINY, out=tmp_path / "whole", verbose=False)

    real_save = training.save_checkpoint

    def save_then_die(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if kwargs["step"] == 3:
            raise KeyboardInterrupt  # killed right after the step-3 checkpoint
        return path

    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run_recipe(TINY, out=tmp_path / "resumed", verbose=False)
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    assert (tmp_path / "resumed" / f".books-run-{RAN.recipe_id}" / "checkpoints" / "step-00000003").is_dir()
    resumed = pretrain.run_recipe(TINY, out=tmp_path / "resumed", resume=True, verbose=False)

    a, b = from_tf_checkpoint(whole), from_tf_checkpoint(resumed)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (whole, resumed))
    assert ma["losses"] == mb["losses"] and ma["sample"] == mb["sample"]


def test_without_resume_old_checkpoints_are_discarded(tiny_corpus, tmp_path, monkeypatch):
    stale = tmp_path / f".books-run-{RAN.recipe_id}" / "checkpoints" / "step-00000005"
    stale.mkdir(parents=True)
    seen = {}

    def fake_train(model, train_loader, val_loader, cfg, *, checkpoint_dir, resume, device):
        seen.update(exists=stale.exists(), resume=resume)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", fake_train)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run_recipe(TINY, out=tmp_path, verbose=False)
    assert seen == {"exists": False, "resume": False}


def _cli(*args, out):
    env = {**os.environ, "LLM_COMPANION_PROGRESS": "plain", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "llm_companion.cli", "pretrain", *args, "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)


def test_cli_rejects_a_trial_of_zero_steps_in_one_line(tmp_path):
    run = _cli("--recipe", "books", "--steps", "0", out=tmp_path)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0
    assert "at least one step" in run.stderr


@pytest.mark.slow
def test_cli_trial_of_the_books_recipe_runs_from_the_mirror_and_writes_the_folder(tmp_path):
    # the real corpus (tokens cached under data/ after the first run), the real shape, two steps
    run = _cli("--recipe", "books", "--steps", "2", out=tmp_path)
    assert run.returncode == 0, run.stderr
    trial = pretrain.at_native_precision(recipes.BOOKS.with_steps(2), "cpu", verbose=False)
    folder = tmp_path / trial.folder_name
    verify_dir(folder)
    m = json.loads((folder / "metrics.json").read_text())
    assert m["corpus_sha256"] == BOOKS_SHA256 and m["trial_of"] == replace(recipes.BOOKS, bf16=trial.bf16).recipe_id
    assert m["tokens_seen"] == 2 * 8 * 256 and m["parameters"] > 10_000_000
    assert "training" in run.stdout and "sample:" in run.stdout
    assert Path(folder / "hparams.json").is_file()


def test_books_v2_is_the_books_recipe_on_the_unwrapped_corpus_with_its_own_id():
    v1, v2 = recipes.BOOKS, recipes.get_recipe("books-v2")
    assert v2.recipe_id == "25afbee0f8ff" and v2.recipe_id != v1.recipe_id == "8aa4a3f6af86"
    assert v2.folder_name == "standin-books-v2-25afbee0f8ff"
    same = {k: v for k, v in v1.to_dict().items() if k not in ("name", "corpus")}
    assert same == {k: v for k, v in v2.to_dict().items() if k not in ("name", "corpus")}  # same budget
    assert (v1.corpus, v2.corpus) == ("books", "books-v2")


def test_each_books_recipe_reads_its_own_preparation_of_the_corpus(monkeypatch):
    asked = []

    def fake_books_corpus(*, preparation="v1", verbose=True):
        asked.append(preparation)
        return Corpus(works=[Work("A/a.txt", "Words and more words. " * 40)], preparation=preparation)

    monkeypatch.setattr(pretrain, "books_corpus", fake_books_corpus)
    monkeypatch.setattr(pretrain, "corpus_tokens",
                        lambda c, val_fraction, verbose: split_tokens(c.texts(), gpt2_tokenizer(), val_fraction))
    about = [pretrain.corpus_for(recipes.get_recipe(n), verbose=False).about for n in ("books", "books-v2")]
    assert asked == ["v1", "v2"]
    assert [a["corpus_preparation"] for a in about] == ["v1", "v2"]


def test_a_bf16_recipe_runs_in_fp32_under_its_own_id_where_bf16_would_be_emulated(monkeypatch, capsys):
    monkeypatch.setattr(pretrain, "bf16_support", lambda device=None: (False, "no bf16 here"))
    fp32 = pretrain.at_native_precision(recipes.BOOKS, "cpu")
    assert not fp32.bf16 and fp32.recipe_id != recipes.BOOKS.recipe_id
    assert fp32.folder_name == f"standin-books-{fp32.recipe_id}"  # the folder says what ran
    said = capsys.readouterr().out
    assert "no bf16 here" in said and "emulated" in said and recipes.BOOKS.recipe_id in said
    assert fp32.recipe_id in said and said.count("\n") == 1

    monkeypatch.setattr(pretrain, "bf16_support", lambda device=None: (True, "native"))
    assert pretrain.at_native_precision(recipes.BOOKS, "cpu") is recipes.BOOKS
    assert pretrain.at_native_precision(recipes.STANDIN, "cpu") is recipes.STANDIN  # fp32 recipes unchanged
    assert capsys.readouterr().out == ""


def test_a_trial_names_the_full_recipe_at_the_precision_it_ran():
    fp32 = replace(recipes.BOOKS, bf16=False)
    assert pretrain.full_recipe_id(fp32.with_steps(2)) == fp32.recipe_id
    assert pretrain.full_recipe_id(recipes.BOOKS.with_steps(2)) == recipes.BOOKS.recipe_id
    assert pretrain.full_recipe_id(recipes.BOOKS) is None  # not a trial
