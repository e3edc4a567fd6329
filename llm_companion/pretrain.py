"""Pretraining from the command line, and the stand-in model chapters 5–7 use when GPT-2 is unreachable.

``llm-companion pretrain --corpus tinyshakespeare the-verdict --preset gpt-mini --steps 200 --out DIR``
trains a GPT on artifacts (by registry name) or text files, writes the model to ``DIR/model/``
(``model.safetensors``, ``config.json``, ``metrics.json``, ``history.json``) and checkpoints to
``DIR/checkpoints/`` (``--resume`` continues a killed run). The same command runs data-parallel under
``torchrun --nproc_per_node=N`` (``--batch-size`` is then the global batch, split over the processes).

``llm-companion pretrain --standin`` (or :func:`ensure_standin`) trains the stand-in: a fixed recipe
(:data:`STANDIN`: model shape, seed, number of steps), so it does not depend on how fast the machine is.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from . import distributed
from .artifacts import fetch, models_dir
from .checkpoint import CheckpointError, load_model, save_model, verify_dir
from .config import GPTConfig
from .tokenizer import encode_text
from .training import TrainConfig, train

# The stand-in: GPT-2 shaped (GPT-2 vocabulary, tied weights, qkv bias) so the GPT-2 loaders and tokenizer
# apply unchanged; narrow and shallow so a CPU run of a couple of minutes learns something. Most of the
# cost is the 50,257-way output layer, so a narrow model sees more tokens per second; for a fixed number of
# tokens, many small batches beat few large ones this early in training (a sweep at ~246k tokens: val loss
# 6.01 for width 96 × 3 layers with batches of 16, 5.34 for this shape with batches of 2). 600 steps
# (154k tokens) take about 2.3 minutes on two idle CPU cores. A peak lr of 2e-3 reached val 5.59 (seed 123)
# and 5.50 (seed 7), against 5.80 and 5.50 at 3e-3: lower, and less sensitive to the seed.
STANDIN: dict[str, Any] = dict(
    corpus=("tinyshakespeare", "the-verdict"),
    model=dict(vocab_size=50257, context_length=128, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0,
               qkv_bias=True, tie_weights=True),
    steps=600, batch_size=2, lr=2e-3, warmup_steps=50, min_lr=2e-4, weight_decay=0.1, grad_clip=1.0,
    bf16=False, seed=123, val_fraction=0.1, eval_batches=64,
)
STANDIN_DIR = "standin"
PROMPT = "Every effort moves you"


class PretrainError(ValueError):
    """Bad pretraining settings (unknown corpus, batch not divisible by the processes, …)."""


# ------------------------------------------------------------------------------------------------ data
def read_corpus(sources: list[str] | tuple[str, ...]) -> list[tuple[str, str, str]]:
    """``[(label, text, sha256)]`` for artifact names or paths to UTF-8 text files."""
    from .artifacts import REGISTRY

    out = []
    for src in sources:
        path = Path(src)
        if not path.is_file():
            if src not in REGISTRY:
                raise PretrainError(f"corpus {src!r} is neither a file nor an artifact name; "
                                    f"use a text file path or one of: {', '.join(sorted(REGISTRY))}")
            path = fetch(src)
        data = path.read_bytes()
        out.append((src, data.decode("utf-8"), hashlib.sha256(data).hexdigest()))
    return out


def token_splits(texts: list[str], tokenizer, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize each text, split each one into its first (1-val_fraction) and last val_fraction, and join
    the parts with ``<|endoftext|>`` so both splits contain every source."""
    eot = tokenizer.eot_token
    train_ids: list[int] = []
    val_ids: list[int] = []
    for text in texts:
        ids = encode_text(tokenizer, text)  # the sources are joined with the real token below
        cut = int(len(ids) * (1 - val_fraction))
        train_ids += ids[:cut] + [eot]
        val_ids += ids[cut:] + [eot]
    return torch.tensor(train_ids), torch.tensor(val_ids)


def make_loader(ids: torch.Tensor, *, context: int, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """Non-overlapping windows of ``context`` tokens; ``batch_size`` is the global batch (split over processes)."""
    from .dataset import GPTDataset

    world = distributed.world_size()
    if batch_size % world:
        raise PretrainError(f"--batch-size {batch_size} is not divisible by the {world} processes; "
                            f"use a multiple of {world}")
    ds = GPTDataset(ids, max_length=context, stride=context)
    sampler = distributed.shard_sampler(ds, shuffle=shuffle, seed=seed, drop_last=True)
    # training drops a ragged last batch (every step sees the same batch size); evaluation keeps it
    return DataLoader(ds, batch_size=batch_size // world, sampler=sampler, drop_last=shuffle)


# ----------------------------------------------------------------------------------------------- train
def pretrain(corpus, model_cfg: GPTConfig, *, out: str | Path, steps: int, batch_size: int, lr: float,
             warmup_steps: int = 0, min_lr: float | None = None, weight_decay: float = 0.1,
             grad_clip: float | None = 1.0, bf16: bool = False, seed: int = 123, val_fraction: float = 0.1,
             eval_every: int | None = None, eval_batches: int | None = 16, checkpoint_every: int | None = 50,
             resume: bool = False, device: str | torch.device | None = None, verbose: bool = True):
    """Train a fresh :class:`GPTModel` on ``corpus`` for ``steps`` steps and return ``(model, history, metrics)``.

    Checkpoints go to ``out/checkpoints/`` (``resume=True`` continues from them); the finished model to
    ``out/model/`` (``model.safetensors``, ``config.json``, ``metrics.json``, ``history.json``), written
    atomically. Only rank 0 writes.
    """
    from .model import GPTModel
    from .tokenizer import gpt2_tokenizer

    out = Path(out)
    tok = gpt2_tokenizer()
    if model_cfg.vocab_size < tok.n_vocab:
        raise PretrainError(f"vocab_size {model_cfg.vocab_size} is smaller than the GPT-2 tokenizer's "
                            f"{tok.n_vocab}; use vocab_size={tok.n_vocab}")
    sources = read_corpus(corpus)
    train_ids, val_ids = token_splits([t for _, t, _ in sources], tok, val_fraction)
    context = model_cfg.context_length
    train_loader = make_loader(train_ids, context=context, batch_size=batch_size, shuffle=True, seed=seed)
    val_loader = make_loader(val_ids, context=context, batch_size=batch_size, shuffle=False, seed=seed)

    torch.manual_seed(seed)
    model = GPTModel(model_cfg)
    cfg = TrainConfig(epochs=None, max_steps=steps, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                      min_lr=min_lr, grad_clip=grad_clip, bf16=bf16,
                      eval_every=steps if eval_every is None else eval_every,
                      eval_batches=eval_batches, sample_every=None, checkpoint_every=checkpoint_every,
                      seed=seed, verbose=verbose)
    history = train(model, train_loader, val_loader, cfg, checkpoint_dir=out / "checkpoints", resume=resume,
                    device=device)
    seconds = history.wall_time[-1]  # includes the time before a resume
    model.to("cpu")
    metrics = {
        "train_loss": history.train_loss[-1], "val_loss": history.val_loss[-1],
        "steps": history.steps[-1], "tokens_seen": history.tokens_seen[-1],
        "seconds": round(seconds, 1), "seed": seed, "batch_size": batch_size, "lr": lr,
        "warmup_steps": warmup_steps, "min_lr": min_lr, "bf16": bf16,
        "processes": distributed.world_size(), "eval_batches": eval_batches,
        "corpus": {label: sha for label, _, sha in sources},
        "train_tokens": int(train_ids.numel()), "val_tokens": int(val_ids.numel()),
        "torch": torch.__version__, "sample": sample_text(model, tok),
    }
    if distributed.is_main():
        save_model(model, out / "model", extra={"metrics.json": metrics, "history.json": history.to_dict()})
    distributed.barrier()
    return model, history, metrics


def sample_text(model, tokenizer, prompt: str = PROMPT, max_new_tokens: int = 25) -> str:
    """Greedy continuation of ``prompt`` (a quick look at what the model learned)."""
    from .generation import generate

    idx = torch.tensor([tokenizer.encode(prompt)], device=next(model.parameters()).device)
    return tokenizer.decode(generate(model, idx, max_new_tokens)[0].tolist())


# -------------------------------------------------------------------------------------------- stand-in
def standin_dir() -> Path:
    return models_dir() / STANDIN_DIR


def ensure_standin(*, force: bool = False, verbose: bool = True) -> Path:
    """Return ``models/standin/`` (``model.safetensors``, ``config.json``, ``metrics.json``), training it
    with the :data:`STANDIN` recipe first if it is missing, fails verification, was made with another
    recipe, or ``force`` is set.

    The directory appears atomically; a killed training resumes from its checkpoints in
    ``models/.standin-run-<recipe hash>/`` the next time.
    """
    final = standin_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final.parent / ".standin.lock"):  # one trainer at a time; the others wait, then reuse
        if not force and _standin_ok(final, verbose):
            return final
        return _train_standin(final, verbose)


def standin_recipe_id() -> str:
    """A short hash of :data:`STANDIN`; a stand-in trained with another recipe is retrained."""
    return hashlib.sha256(json.dumps(STANDIN, sort_keys=True).encode()).hexdigest()[:12]


def _standin_ok(final: Path, verbose: bool) -> bool:
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
    if json.loads((final / "metrics.json").read_text()).get("recipe_id") != standin_recipe_id():
        if verbose:
            print("retraining the stand-in: it was made with an older recipe")
        return False
    return True


@contextlib.contextmanager
def _exclusive(lock_file: Path):
    """An advisory inter-process lock (POSIX ``flock``; a no-op where it is unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _train_standin(final: Path, verbose: bool) -> Path:
    r = STANDIN
    recipe_id = standin_recipe_id()
    work = models_dir() / f".standin-run-{recipe_id}"  # checkpoints of another recipe are never resumed
    if verbose:
        print(f"training the stand-in ({r['steps']} steps, batch {r['batch_size']}×{r['model']['context_length']}"
              f" tokens, seed {r['seed']}) on {', '.join(r['corpus'])}")
    _, _, metrics = pretrain(
        list(r["corpus"]), GPTConfig(**r["model"]), out=work, steps=r["steps"], batch_size=r["batch_size"],
        lr=r["lr"], warmup_steps=r["warmup_steps"], min_lr=r["min_lr"], weight_decay=r["weight_decay"],
        grad_clip=r["grad_clip"], bf16=r["bf16"], seed=r["seed"], val_fraction=r["val_fraction"],
        eval_batches=r["eval_batches"], checkpoint_every=100, resume=True, device="cpu", verbose=verbose)
    # publish: copy the finished model (not the checkpoints) to models/standin atomically
    model = load_model(work / "model")
    save_model(model, final, extra={"metrics.json": {**metrics, "recipe": r, "recipe_id": recipe_id}})
    shutil.rmtree(work, ignore_errors=True)
    if verbose:
        print(f"stand-in: train loss {metrics['train_loss']:.3f}, val loss {metrics['val_loss']:.3f} "
              f"after {metrics['steps']} steps ({metrics['tokens_seen']:,} tokens, {metrics['seconds']:.0f} s)")
    return final


# ------------------------------------------------------------------------------------------------- CLI
def add_arguments(p) -> None:
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
    from .recipes import RECIPES

    p.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                   help="train a fixed recipe (llm_companion.recipes) and write models/standin-<recipe>-<id>/; "
                        "uses --steps, --resume, --out, --device only")


def main(args) -> int:
    if args.recipe:
        from .recipes import main as recipe_main

        return recipe_main(args)
    if args.steps is None:
        args.steps = 200
    if args.standin:
        path = ensure_standin(force=args.force)
        m = json.loads((path / "metrics.json").read_text())
        print(f"{path}: train loss {m['train_loss']:.3f}, val loss {m['val_loss']:.3f}, {m['steps']} steps, "
              f"{m['tokens_seen']:,} tokens, {m['seconds']:.0f} s\nsample: {m['sample']!r}")
        return 0
    info = distributed.setup(device=args.device)
    try:
        overrides = {"context_length": args.context} if args.context else {}
        cfg = GPTConfig.preset(args.preset, **overrides)
        out = Path(args.out) if args.out else models_dir() / "pretrain"
        _, _, m = pretrain(args.corpus, cfg, out=out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           warmup_steps=args.steps // 10 if args.warmup is None else args.warmup,
                           min_lr=args.lr / 10 if args.min_lr is None else args.min_lr, bf16=args.bf16,
                           seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                           resume=args.resume, device=info.device)
        if distributed.is_main():
            print(f"{out / 'model'}: train loss {m['train_loss']:.3f}, val loss {m['val_loss']:.3f}, "
                  f"{m['steps']} steps, {m['tokens_seen']:,} tokens, {m['seconds']:.0f} s\nsample: {m['sample']!r}")
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":  # python -m llm_companion.pretrain … (what torchrun launches)
    from .cli import main as cli_main

    sys.exit(cli_main(["pretrain", *sys.argv[1:]]))
