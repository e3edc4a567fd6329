"""Execute chapters 5–7, 9 and 10 on GPT-2-shaped weights that are not the stand-in: the online reader's path, offline.

A randomly initialised ``gpt2-small`` (124M parameters, GPT-2's exact shape) is written in OpenAI's seven-file
layout with the library's own exporter into a temporary folder, ``LLM_COMPANION_GPT2_DIR`` points at it, and
nbval executes each chapter in the quick profile. The committed notebooks are executed, never rewritten. The
weights are random, so the chapters see *unverified local GPT-2 files* of the real size and cost: what must
hold is that every chapter runs, that no checked cell depends on which weights loaded, and that each chapter
stays within its time budget on GPT-2 small. ``make notebooks-gpt2`` runs this; ``.ci/run`` after ``make test``.
Chapters 6 and 7 save their classifier and assistant under ``models/``; chapter 9 scores that assistant and
GPT-2 beside the other models, and chapter 10 runs its second DPO on the assistant (tuned from GPT-2 here, as
on an online reader's machine). What this run saves is tuned from random weights, so the folders are put
back as they were afterwards (chapter 8 and the ``chat`` command use the assistant).

    python tests/tools/gpt2_shaped.py [--weights-dir DIR] [--budget 300] [chapters/05_….ipynb …]

Prints one line per chapter (seconds, pass/fail, the load average around it) and exits non-zero when a
chapter fails (or, with ``--strict-budget``, runs over ``--budget`` seconds).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = ("chapters/05_loading_gpt2_weights.ipynb", "chapters/06_classification_finetuning.ipynb",
            "chapters/07_instruction_finetuning.ipynb", "chapters/09_evaluation.ipynb",
            "chapters/10_preference_tuning.ipynb")


def write_random_gpt2(root: Path, size: str = "124M", seed: int = 0) -> Path:
    """``root/<size>/``: a random GPT-2 of that size in OpenAI's layout (reused when already complete)."""
    import torch

    from llm_companion.data.artifacts import GPT2_HPARAMS
    from llm_companion.models.gpt import GPTModel
    from llm_companion.models.openai_checkpoint import config_from_hparams, export_tf_checkpoint
    from llm_companion.training.starting_weights import OPENAI_WEIGHT_FILES

    folder = root / size
    if all((folder / f).is_file() for f in OPENAI_WEIGHT_FILES):
        return folder
    torch.manual_seed(seed)
    model = GPTModel(config_from_hparams(GPT2_HPARAMS[size]))
    return export_tf_checkpoint(model, folder)


def set_aside(folders: list[Path], keep: Path) -> dict[Path, Path]:
    """Move the existing ``folders`` into ``keep``; return where each went (to :func:`put_back`)."""
    moved = {}
    for folder in folders:
        if folder.exists():
            moved[folder] = keep / folder.name
            shutil.move(str(folder), str(moved[folder]))
    return moved


def put_back(folders: list[Path], moved: dict[Path, Path]) -> None:
    """Delete what the run saved in ``folders`` and restore the ones :func:`set_aside` moved."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        if folder in moved:
            shutil.move(str(moved[folder]), str(folder))


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("chapters", nargs="*", default=list(CHAPTERS))
    p.add_argument("--weights-dir", type=Path, default=None,
                   help="keep the random checkpoint here (reused next time) instead of a temporary folder")
    p.add_argument("--budget", type=float, default=300.0, help="seconds per chapter (default 300: 5 minutes)")
    p.add_argument("--strict-budget", action="store_true", help="fail a chapter that runs over --budget")
    args = p.parse_args(argv)

    from llm_companion.data.download import models_dir
    from llm_companion.finetune.assistant import default_assistant_dir
    from llm_companion.finetune.classification import classifier_dir

    root = args.weights_dir or Path(tempfile.mkdtemp(prefix="gpt2-shaped-"))
    saved_by_chapters = [classifier_dir(), default_assistant_dir()]
    models_dir().mkdir(parents=True, exist_ok=True)
    keep = Path(tempfile.mkdtemp(prefix=".gpt2-shaped-kept-", dir=models_dir()))  # same disk: moves are renames
    moved = set_aside(saved_by_chapters, keep)
    try:
        start = time.perf_counter()
        folder = write_random_gpt2(root)
        print(f"random gpt2-small (124M) in OpenAI's layout at {folder} ({time.perf_counter() - start:.0f} s)",
              flush=True)
        env = {**os.environ, "LLM_COMPANION_GPT2_DIR": str(root), "LLM_BOOK_PROFILE": "quick"}
        results = []
        for chapter in args.chapters:
            before = loadavg()
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                                   "--nbval-cell-timeout=900", "--nbval-sanitize-with", "chapters/sanitize.cfg",
                                   chapter], cwd=ROOT, env=env)
            seconds = time.perf_counter() - t0
            over = seconds > args.budget
            ok = proc.returncode == 0 and not (over and args.strict_budget)
            results.append((chapter, seconds, ok, over, before, loadavg()))
        print(f"\nchapters on a random gpt2-small via LLM_COMPANION_GPT2_DIR (budget {args.budget:.0f} s each):")
        for chapter, seconds, ok, over, before, after in results:
            print(f"  {Path(chapter).stem:40} {seconds:7.1f} s  {'passed' if ok else 'FAILED'}"
                  f"{'  (over budget)' if over else ''}  loadavg {before} -> {after}")
        return 0 if all(ok for _, _, ok, *_ in results) else 1
    finally:
        put_back(saved_by_chapters, moved)
        shutil.rmtree(keep, ignore_errors=True)
        if args.weights_dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
