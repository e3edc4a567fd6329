"""Pretraining recipes: every setting that decides a run's result, and a short hash that names it.

Two recipes are fixed: :data:`STANDIN`, the small model chapters 5-7 train when GPT-2 is unreachable, and
:data:`BOOKS`, the published books stand-in (``models/standin-books-<recipe id>/``). A recipe's id is a short
hash of its settings, so a folder's name says exactly how it was made. :mod:`llm_companion.training.pretrain` runs
them; this module only describes them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from llm_companion.models.config import GPTConfig


class RecipeError(ValueError):
    """A recipe that cannot run as asked (unknown name, a step count below one, …)."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a pretraining run's result; ``recipe_id`` hashes all of it.

    ``tokens`` per run = ``steps × batch_size × model['context_length']``. The schedule is linear warmup
    over ``warmup_steps``, then cosine decay from ``lr`` to ``min_lr`` at the last step.
    """

    name: str
    corpus: str | tuple[str, ...]  # "books" / "books-v2" (llm_companion.data.corpus: preparation v1 / v2,
                                   # checked digest), or artifact names / text files
    model: dict[str, Any]          # GPTConfig fields
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    min_lr: float
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    bf16: bool = True
    seed: int = 123
    val_fraction: float = 0.1
    eval_every: int = 500
    eval_batches: int = 16
    checkpoint_every: int = 250
    note: str = field(default="", compare=False)  # why these settings; not part of the id

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise RecipeError(f"a recipe needs at least one step, got steps={self.steps}; use --steps 1 or more")
        GPTConfig(**self.model)  # validates the shape

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("note")
        return d

    @property
    def recipe_id(self) -> str:
        """12 hex digits of the sha256 of the recipe's settings (JSON, sorted keys)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.model["context_length"]

    @property
    def folder_name(self) -> str:
        return f"standin-{self.name}-{self.recipe_id}"

    def with_steps(self, steps: int) -> Recipe:
        """The same recipe shortened (or lengthened) to ``steps``, periodic work rescaled to fit.

        A short trial evaluates on at most as many batches as it trains steps: it checks the pipeline, and
        on a slow CPU its evaluation would otherwise cost more than its training.
        """
        if steps == self.steps:
            return self
        frac = self.warmup_steps / self.steps
        return replace(self, steps=steps, warmup_steps=max(1, round(steps * frac)),
                       eval_every=min(self.eval_every, steps), eval_batches=min(self.eval_batches, steps),
                       checkpoint_every=min(self.checkpoint_every, steps))


# The local stand-in: GPT-2 shaped (GPT-2 vocabulary, tied weights, qkv bias) so the GPT-2 loaders and
# tokenizer apply unchanged; narrow, shallow and trained in many small batches, because the 50,257-way
# output layer costs most of each step (benchmarks/README.md, "Local stand-in recipe", has the sweep). A fixed
# number of steps, so the result does not depend on how fast the machine is; about two minutes on a CPU.
STANDIN = Recipe(
    name="standin",
    corpus=("tinyshakespeare", "the-verdict"),
    model=dict(vocab_size=50257, context_length=128, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0,
               qkv_bias=True, tie_weights=True),
    steps=600, batch_size=2, lr=2e-3, warmup_steps=50, min_lr=2e-4, bf16=False, eval_every=600, eval_batches=64,
    checkpoint_every=100,
    note="the quick profile's stand-in for GPT-2 when its weights are unreachable: a couple of CPU minutes",
)

# The books stand-in: gpt-mini spending its budget on tokens, because the run is data-limited
# (benchmarks/README.md, "Books recipe sweep", has the measurements). Its id, 8aa4a3f6af86, pins the
# published folder, so changing a setting here means training and publishing a new one.
BOOKS = Recipe(
    name="books",
    corpus="books",
    model=dict(vocab_size=50257, context_length=256, emb_dim=192, n_heads=6, n_layers=4, drop_rate=0.0,
               qkv_bias=True, tie_weights=True),
    steps=4500, batch_size=8, lr=2e-3, warmup_steps=300, min_lr=2e-4,
    note=("gpt-mini (4 layers x 192) at 1.5x the interim stand-in's tokens: the budget is data-limited "
          "(benchmarks/README.md, Books recipe sweep)"),
)
# The books stand-in v2: the same model, steps and schedule as BOOKS (the budget is unchanged, so only the
# text differs), trained on the corpus's preparation v2 (llm_companion.data.corpus.unwrap_paragraphs):
# paragraphs on one line, no indentation, whitespace-only tokens down from 10.6% of the corpus to 2.8%.
BOOKS_V2 = replace(
    BOOKS, name="books-v2", corpus="books-v2",
    note="BOOKS on the unwrapped corpus (preparation v2): Gutenberg's hard wraps and indentation removed")
RECIPES: dict[str, Recipe] = {"books": BOOKS, "books-v2": BOOKS_V2}  # what ``llm-companion pretrain --recipe`` offers


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name`` in :data:`RECIPES`; :class:`RecipeError` names the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}") from None
