"""Pretraining: one runner for every recipe, the stand-in chapters 5–7 fall back on, and its command line.

:func:`pretrain` trains a fresh GPT as a :class:`~llm_companion.training.recipes.Recipe` says (checkpoints in
``OUT/checkpoints/``, resumable) and returns the model, its history and its metrics. Three callers publish
the result, each atomically:

* ``llm-companion pretrain --corpus tinyshakespeare the-verdict --preset gpt-mini --steps 200 --out DIR``
  writes ``DIR/model/`` (``model.safetensors``, ``config.json``, ``metrics.json``, ``history.json``);
  under ``torchrun --nproc_per_node=N -m llm_companion.cli pretrain …`` it runs data-parallel
  (``--batch-size`` is then the global batch).
* :func:`ensure_standin` (``--standin``) writes ``models/standin/`` from
  :data:`~llm_companion.training.recipes.STANDIN`.
* :func:`run_recipe` (``--recipe books``) writes ``models/standin-books-<recipe id>/`` in OpenAI's checkpoint
  layout with the corpus manifest and ``SHA256SUMS``, the form a published stand-in is read from.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from llm_companion.atomic import publish_dir, temp_dir_beside
from llm_companion.data.artifacts import REGISTRY, fetch
from llm_companion.data.corpus import MANIFEST, Corpus, books_corpus, corpus_tokens, split_tokens
from llm_companion.data.dataset import GPTDataset
from llm_companion.data.download import models_dir
from llm_companion.data.tokenizer import gpt2_tokenizer
from llm_companion.inference.generation import generate
from llm_companion.models.checkpoint import CheckpointError, save_model, seal, verify_dir
from llm_companion.models.config import GPTConfig
from llm_companion.models.gpt import GPTModel
from llm_companion.models.openai_checkpoint import write_tf_checkpoint
from llm_companion.precision import EMULATED_SLOWDOWN, bf16_support
from llm_companion.training import distributed, recipes
from llm_companion.training import loop as training
from llm_companion.training.recipes import RECIPES, Recipe

STANDIN_DIR = "standin"
PROMPT = "Every effort moves you"


class PretrainError(ValueError):
    """Bad pretraining settings (unknown corpus, batch not divisible by the processes, …)."""


# ------------------------------------------------------------------------------------------------ data
@dataclass
class TokenSplits:
    """A recipe's corpus as token ids, and what ``metrics.json`` records of where they came from."""

    train: torch.Tensor          # (n_train,) int64
    val: torch.Tensor            # (n_val,) int64
    about: dict[str, Any]        # {"corpus": {name: sha256}} or the books corpus's digest and size
    manifest: str | None = None  # the books corpus's CORPUS-MANIFEST.sha256, published beside the model


def _ids(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.int64))


def books_splits(corpus: Corpus, train: np.ndarray, val: np.ndarray) -> TokenSplits:
    """The books corpus's splits (from :func:`llm_companion.data.corpus.corpus_tokens`) with its identity."""
    about = {"corpus_sha256": corpus.sha256, "corpus_works": len(corpus.works),
             "corpus_preparation": corpus.preparation}
    return TokenSplits(_ids(train), _ids(val), about, corpus.manifest())


def read_corpus(sources: str | tuple[str, ...] | list[str]) -> list[tuple[str, str, str]]:
    """``[(label, text, sha256)]`` for artifact names or paths to UTF-8 text files."""
    out = []
    for src in (sources,) if isinstance(sources, str) else sources:
        path = Path(src)
        if not path.is_file():
            if src not in REGISTRY:
                raise PretrainError(f"corpus {src!r} is neither a file nor an artifact name; "
                                    f"use a text file path or one of: {', '.join(sorted(REGISTRY))}")
            path = fetch(src)
        data = path.read_bytes()
        out.append((src, data.decode("utf-8"), hashlib.sha256(data).hexdigest()))
    return out


BOOKS_CORPORA = {"books": "v1", "books-v2": "v2"}  # a recipe's corpus name -> the books corpus's preparation


def corpus_for(recipe: Recipe, *, verbose: bool = True) -> TokenSplits:
    """The recipe's corpus split by the one rule, :func:`llm_companion.data.corpus.split_tokens` (books: cached)."""
    if recipe.corpus in BOOKS_CORPORA:
        corpus = books_corpus(preparation=BOOKS_CORPORA[recipe.corpus], verbose=verbose)
        return books_splits(corpus, *corpus_tokens(corpus, val_fraction=recipe.val_fraction, verbose=verbose))
    sources = read_corpus(recipe.corpus)
    train, val = split_tokens([text for _, text, _ in sources], gpt2_tokenizer(), recipe.val_fraction)
    return TokenSplits(_ids(train), _ids(val), {"corpus": {label: sha for label, _, sha in sources}})


def make_loader(ids: torch.Tensor, *, context: int, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """Non-overlapping windows of ``context`` tokens; ``batch_size`` is the global batch (split over processes)."""
    world = distributed.world_size()
    if batch_size % world:
        raise PretrainError(f"--batch-size {batch_size} is not divisible by the {world} processes; "
                            f"use a multiple of {world}")
    ds = GPTDataset(ids, max_length=context, stride=context)
    sampler = distributed.shard_sampler(ds, shuffle=shuffle, seed=seed, drop_last=True)
    # training drops a ragged last batch (every step sees the same batch size); evaluation keeps it
    return DataLoader(ds, batch_size=batch_size // world, sampler=sampler, drop_last=shuffle)


# ----------------------------------------------------------------------------------------------- train
class PretrainRun(NamedTuple):
    """What :func:`pretrain` returns: the trained model and everything its publisher writes beside it."""

    model: GPTModel           # on the CPU, in training mode
    history: training.History
    metrics: dict[str, Any]   # what metrics.json records (see :func:`run_metrics`)
    splits: TokenSplits


def train_config(recipe: Recipe, *, verbose: bool = True) -> training.TrainConfig:
    """The training loop's settings for ``recipe`` (a fixed number of steps, no text samples)."""
    return training.TrainConfig(
        epochs=None, max_steps=recipe.steps, lr=recipe.lr, weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup_steps, min_lr=recipe.min_lr, grad_clip=recipe.grad_clip, bf16=recipe.bf16,
        eval_every=recipe.eval_every, eval_batches=recipe.eval_batches, sample_every=None,
        checkpoint_every=recipe.checkpoint_every, seed=recipe.seed, verbose=verbose)


def at_native_precision(recipe: Recipe, device: str | torch.device | None = None, *,
                        verbose: bool = True) -> Recipe:
    """``recipe`` as it can run on ``device``: a bf16 recipe becomes an fp32 one where bf16 would be emulated.

    The fp32 recipe has its own id, so its folder and ``metrics.json`` say what ran; it is not the published
    bf16 model, and the message says so.
    """
    if not recipe.bf16:
        return recipe
    native, why = bf16_support(device)
    if native:
        return recipe
    fp32 = replace(recipe, bf16=False)
    if verbose and distributed.is_main():
        print(f"recipe {recipe.name} ({recipe.recipe_id}) trains with bf16 autocast, but {why}: emulated, bf16 "
              f"would be {EMULATED_SLOWDOWN} here. Training in fp32 instead, which is recipe "
              f"{fp32.recipe_id}: not the published {recipe.recipe_id}, so its losses differ slightly.")
    return fp32


def pretrain(recipe: Recipe, *, out: str | Path, resume: bool = False, device: str | torch.device | None = None,
             verbose: bool = True) -> PretrainRun:
    """Train a fresh :class:`GPTModel` as ``recipe`` says; checkpoints go to ``out/checkpoints/``.

    ``resume=True`` continues from the newest checkpoint there and ends with the weights an uninterrupted run
    gives (:func:`llm_companion.training.loop.train`). Publishing the model is the caller's job.
    """
    recipe = at_native_precision(recipe, device or "cpu", verbose=verbose)  # train() keeps the model's device
    cfg = GPTConfig(**recipe.model)
    tok = gpt2_tokenizer()
    if cfg.vocab_size < tok.n_vocab:
        raise PretrainError(f"vocab_size {cfg.vocab_size} is smaller than the GPT-2 tokenizer's "
                            f"{tok.n_vocab}; use vocab_size={tok.n_vocab}")
    splits = corpus_for(recipe, verbose=verbose)
    ctx = cfg.context_length
    loaders = [make_loader(ids, context=ctx, batch_size=recipe.batch_size, shuffle=shuffle, seed=recipe.seed)
               for ids, shuffle in ((splits.train, True), (splits.val, False))]
    if verbose and distributed.is_main():
        print(f"recipe {recipe.name} ({recipe.recipe_id}): {cfg.n_layers} layers × {cfg.emb_dim}, context {ctx}, "
              f"{recipe.steps:,} steps × {recipe.batch_size} × {ctx} = {recipe.tokens:,} tokens of "
              f"{len(splits.train):,} ({recipe.tokens / len(splits.train):.2f} epoch), bf16 {recipe.bf16}")
    torch.manual_seed(recipe.seed)
    model = GPTModel(cfg)
    history = training.train(model, *loaders, train_config(recipe, verbose=verbose),
                             checkpoint_dir=Path(out) / "checkpoints", resume=resume, device=device)
    model.to("cpu")
    return PretrainRun(model, history, run_metrics(recipe, model, history, splits, tok), splits)


def run_metrics(recipe: Recipe, model: GPTModel, history: training.History, splits: TokenSplits,
                tokenizer) -> dict[str, Any]:
    """What a finished run records: the recipe and its id, the corpus, losses by step, time, a greedy sample."""
    return {
        "recipe": recipe.to_dict(), "recipe_id": recipe.recipe_id, "note": recipe.note,
        "trial_of": full_recipe_id(recipe),
        **splits.about, "train_tokens": int(len(splits.train)), "val_tokens": int(len(splits.val)),
        "parameters": sum(p.numel() for p in model.parameters()), "processes": distributed.world_size(),
        "steps": history.steps[-1], "tokens_seen": history.tokens_seen[-1],
        "seconds": round(history.wall_time[-1], 1),  # includes the time before a resume
        "train_loss": history.train_loss[-1], "val_loss": history.val_loss[-1],
        "losses": [{"step": s, "tokens": t, "train_loss": tr, "val_loss": va} for s, t, tr, va in
                   zip(history.steps, history.tokens_seen, history.train_loss, history.val_loss, strict=True)],
        "sample": sample_text(model, tokenizer), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


def full_recipe_id(recipe: Recipe) -> str | None:
    """The id of the registered recipe that ``recipe`` is a shortened trial of (at its precision), else None."""
    base = RECIPES.get(recipe.name)
    if base is None or base.steps == recipe.steps:
        return None
    return replace(base, bf16=recipe.bf16).recipe_id


def sample_text(model, tokenizer, prompt: str = PROMPT, max_new_tokens: int = 25) -> str:
    """Greedy continuation of ``prompt`` (a quick look at what the model learned)."""
    idx = torch.tensor([tokenizer.encode(prompt)], device=next(model.parameters()).device)
    return tokenizer.decode(generate(model, idx, max_new_tokens)[0].tolist())


def summary(where: Path, m: dict[str, Any]) -> str:
    return (f"{where}: train loss {m['train_loss']:.3f}, val loss {m['val_loss']:.3f}, {m['steps']} steps, "
            f"{m['tokens_seen']:,} tokens, {m['seconds']:.0f} s\nsample: {m['sample']!r}")


# ------------------------------------------------------------------------------------- the books recipe
def run_recipe(recipe: Recipe, *, out: str | Path | None = None, resume: bool = False,
               device: str | torch.device = "cpu", verbose: bool = True) -> Path:
    """Train ``recipe`` and publish ``<out>/<recipe.folder_name>/`` atomically; return that folder.

    ``out`` defaults to ``models/``. Checkpoints live in ``<out>/.<name>-run-<recipe id>/`` until the
    folder is published; ``resume=True`` continues from the newest of them (else they are discarded).
    """
    recipe = at_native_precision(recipe, device, verbose=verbose)  # the folder's name says what ran
    out = Path(out) if out is not None else models_dir()
    final = out / recipe.folder_name
    work = out / f".{recipe.name}-run-{recipe.recipe_id}"
    if not resume and work.exists():
        shutil.rmtree(work)  # checkpoints of an earlier attempt: start over, as asked
    run = pretrain(recipe, out=work, resume=resume, device=device, verbose=verbose)
    publish_openai_folder(run, final)
    shutil.rmtree(work, ignore_errors=True)
    if verbose:
        print(summary(final, run.metrics))
    return final


def publish_openai_folder(run: PretrainRun, final: Path) -> None:
    """Write ``final/`` atomically: OpenAI's checkpoint files, metrics, history, corpus manifest, SHA256SUMS."""
    tmp = temp_dir_beside(final)
    try:
        write_tf_checkpoint(run.model, tmp, tokenizer_files=True)
        (tmp / "metrics.json").write_text(json.dumps(run.metrics, indent=1, sort_keys=True))
        (tmp / "history.json").write_text(json.dumps(run.history.to_dict(), indent=1, sort_keys=True))
        if run.splits.manifest is not None:
            (tmp / MANIFEST).write_bytes(run.splits.manifest.encode("utf-8"))
        seal(tmp)
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -------------------------------------------------------------------------------------------- stand-in
def standin_dir() -> Path:
    """``models/standin/``, where :func:`ensure_standin` keeps the local stand-in."""
    return models_dir() / STANDIN_DIR


def ensure_standin(*, force: bool = False, verbose: bool = True) -> Path:
    """Return ``models/standin/`` (``model.safetensors``, ``config.json``, ``metrics.json``), training it
    with :data:`~llm_companion.training.recipes.STANDIN` first if it is missing, fails verification, was made with
    another recipe, or ``force`` is set.

    The directory appears atomically; a killed training resumes from its checkpoints in
    ``models/.standin-run-<recipe id>/`` the next time.
    """
    final = standin_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final.parent / ".standin.lock"):  # one trainer at a time; the others wait, then reuse
        if not force and _standin_ok(final, recipes.STANDIN, verbose):
            return final
        return _train_standin(final, recipes.STANDIN, verbose)


def _standin_ok(final: Path, recipe: Recipe, verbose: bool) -> bool:
    if not final.is_dir():
        return False
    try:
        verify_dir(final)
        if not all((final / f).is_file() for f in ("model.safetensors", "config.json", "metrics.json")):
            raise CheckpointError(f"{final} lacks model.safetensors, config.json or metrics.json")
    except CheckpointError as e:
        if verbose:
            print(f"retraining the stand-in: {e}")
        return False
    if json.loads((final / "metrics.json").read_text()).get("recipe_id") != recipe.recipe_id:
        if verbose:
            print("retraining the stand-in: it was made with an older recipe")
        return False
    return True


@contextlib.contextmanager
def _exclusive(lock_file: Path):
    """An advisory inter-process lock (POSIX ``flock``; a no-op where it is unavailable)."""
    try:
        import fcntl  # POSIX only
    except ImportError:  # Windows
        yield
        return
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _train_standin(final: Path, recipe: Recipe, verbose: bool) -> Path:
    work = models_dir() / f".{recipe.name}-run-{recipe.recipe_id}"  # another recipe's checkpoints never resume
    run = pretrain(recipe, out=work, resume=True, device="cpu", verbose=verbose)
    save_model(run.model, final, extra={"metrics.json": run.metrics})
    shutil.rmtree(work, ignore_errors=True)
    if verbose:
        print(summary(final, run.metrics))
    return final
