"""``llm-companion pretrain``: a fixed recipe (``--recipe books``), the stand-in (``--standin``) or a run the
flags describe; torchrun-ready (``torchrun --nproc-per-node 2 -m llm_companion.cli pretrain ...``)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from llm_companion.data.download import models_dir
from llm_companion.models.checkpoint import save_model
from llm_companion.models.config import GPTConfig
from llm_companion.training import distributed
from llm_companion.training import pretrain as pt
from llm_companion.training.recipes import RECIPES, Recipe, get_recipe


def add_arguments(p) -> None:
    """The flags of ``llm-companion pretrain``."""
    p.add_argument("--corpus", nargs="+", default=["tinyshakespeare", "the-verdict"],
                   help="artifact names or text files (default: tinyshakespeare the-verdict)")
    p.add_argument("--preset", default="gpt-mini", help="GPTConfig preset (default gpt-mini)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default 200; with --recipe: the recipe's, fewer for a trial)")
    p.add_argument("--batch-size", type=int, default=16, help="global batch size (default 16)")
    p.add_argument("--context", type=int, default=None, help="context length (default: the preset's)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: steps // 10)")
    p.add_argument("--min-lr", type=float, default=None, help="cosine-decay floor (default: lr / 10)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--out", default=None, help="output directory (default: models/pretrain)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT/checkpoints")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default: at the end)")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: best available)")
    p.add_argument("--standin", action="store_true",
                   help="train (or report) the stand-in model in models/standin with its fixed recipe")
    p.add_argument("--force", action="store_true", help="with --standin: retrain even if it exists")
    p.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                   help="train a fixed recipe (llm_companion.training.recipes), writing models/standin-<recipe>-<id>/; "
                        "uses --steps, --resume, --out, --device only")


def recipe_from_args(args) -> Recipe:
    """The recipe the command's flags describe (``--corpus``, ``--preset``, ``--steps``, …)."""
    cfg = GPTConfig.preset(args.preset, **({"context_length": args.context} if args.context else {}))
    return Recipe(
        name="custom", corpus=tuple(args.corpus), model=asdict(cfg), steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, warmup_steps=args.steps // 10 if args.warmup is None else args.warmup,
        min_lr=args.lr / 10 if args.min_lr is None else args.min_lr, bf16=args.bf16, seed=args.seed,
        eval_every=args.steps if args.eval_every is None else args.eval_every, eval_batches=16,
        checkpoint_every=args.checkpoint_every)


def main(args) -> int:
    """``llm-companion pretrain``: a recipe (``--recipe``), the stand-in (``--standin``) or the flags' own run."""
    if args.recipe:
        recipe = get_recipe(args.recipe)
        if args.steps is not None:
            recipe = recipe.with_steps(args.steps)
        pt.run_recipe(recipe, out=args.out, resume=args.resume, device=args.device or "cpu")
        return 0
    if args.standin:
        path = pt.ensure_standin(force=args.force)
        print(pt.summary(path, json.loads((path / "metrics.json").read_text())))
        return 0
    if args.steps is None:
        args.steps = 200
    info = distributed.setup(device=args.device)
    try:
        out = Path(args.out) if args.out else models_dir() / "pretrain"
        run = pt.pretrain(recipe_from_args(args), out=out, resume=args.resume, device=info.device)
        if distributed.is_main():
            save_model(run.model, out / "model",
                       extra={"metrics.json": run.metrics, "history.json": run.history.to_dict()})
            print(pt.summary(out / "model", run.metrics))
        distributed.barrier()
    finally:
        distributed.cleanup()
    return 0
