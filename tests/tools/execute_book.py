"""Execute every chapter of the book once, in toc order, one after another, in place, in the quick profile.

The committed outputs are the book's evidence, so they must come from one run on an idle machine: every
speed the prose states was measured there, and chapters that quote each other (chapter 8 quotes the
chapter-7 assistant) quote the same run. For each notebook this records, in its metadata under
``llm_book_execution``, and prints as a table: the wall time, the machine (CPU model and cores), torch's
thread count, and the 1-minute load average at the start and the end. nbclient's per-cell execution
timestamps are kept (``record_timing``). Evaluation scores are cached in a fresh temporary folder
(``LLM_COMPANION_EVAL_CACHE``), so chapter 9's outputs are this run's scoring, not an earlier run's cache.

Each markdown cell's inline expressions (``{eval}`expr```) are evaluated in the kernel at that point of the
notebook (after the code cells above it, before the ones below) and stored in the cell's metadata under
``user_expressions``, the format jupyterlab-myst reads: the prose then shows its numbers in JupyterLab and,
through book/_ext/stored_eval.py, on the site, from this one run. An expression that fails stops the run
with the chapter, the cell and the error.

It refuses to start while the 1-minute load average is above the number of cores (another job would slow
every chapter and contradict the prose); ``--force`` runs anyway and marks every notebook ``"busy": true``.

    python tests/tools/execute_book.py [--force] [--timeout 1800] [chapters/NAME.ipynb ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "book" / "_ext"))
from book_toc import toc_files  # noqa: E402  (tests/ holds the one toc walker)
from stored_eval import expressions  # noqa: E402  (the role's parser: one definition of an inline expression)


class InlineExpressionError(RuntimeError):
    """An ``{eval}`` expression of a markdown cell that raised in the kernel."""


class ProseClient(NotebookClient):
    """nbclient's executor that also evaluates each markdown cell's ``{eval}`` expressions, in order."""

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if cell.cell_type != "markdown":
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        exprs = expressions(cell.source)
        if not exprs:
            cell.metadata.pop("user_expressions", None)
            return cell
        msg_id = self.kc.execute("", silent=True, store_history=False,
                                 user_expressions={str(k): e for k, e in enumerate(exprs)})
        reply = await self.async_wait_for_reply(msg_id, cell)
        results = reply["content"]["user_expressions"]
        stored = [{"expression": e, "result": results[str(k)]} for k, e in enumerate(exprs)]
        for item in stored:
            r = item["result"]
            if r.get("status") != "ok":
                raise InlineExpressionError(f"markdown cell {cell_index}: {{eval}}`{item['expression']}` raised "
                                            f"{r.get('ename')}: {r.get('evalue')}")
        cell.metadata["user_expressions"] = stored
        return cell


def toc_notebooks() -> list[Path]:
    """The ``.ipynb`` files of ``_toc.yml`` in reading order."""
    return [ROOT / f"{f}.ipynb" for f in toc_files(ROOT) if (ROOT / f"{f}.ipynb").is_file()]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def load() -> float:
    return round(os.getloadavg()[0], 2)


def cores_in_use(seconds: float = 1.0) -> float:
    """Cores busy right now, sampled from /proc/stat over ``seconds`` (the 1-minute load average is no use
    between two notebooks: it still counts the chapter that just finished). Elsewhere: the load average."""
    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)
    try:
        busy0, total0 = snapshot()
        time.sleep(seconds)
        busy1, total1 = snapshot()
    except OSError:
        return load()
    return round((busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1), 2)


def execute(path: Path, timeout: int, busy_mark: bool) -> dict:
    nb = nbformat.read(path, as_version=4)
    start_load, started = load(), datetime.now(timezone.utc)
    t0 = time.perf_counter()
    client = ProseClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    record = {
        "started": started.isoformat(timespec="seconds"), "wall_s": round(time.perf_counter() - t0, 1),
        "machine": machine(), "torch_threads": torch_threads(), "load_start": start_load, "load_end": load(),
        "profile": os.environ.get("LLM_BOOK_PROFILE", "quick"), "busy": busy_mark,
    }
    nb.metadata["llm_book_execution"] = record
    nbformat.write(nb, path)
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter of _toc.yml, in order")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    ap.add_argument("--force", action="store_true", help="run on a busy machine, marking the notebooks busy")
    args = ap.parse_args(argv)
    os.environ.setdefault("LLM_BOOK_PROFILE", "quick")
    os.environ.setdefault("LLM_COMPANION_PROGRESS", "plain")
    cores = os.cpu_count() or 1
    if load() > cores and not args.force:
        print(f"the machine is busy (1-minute load {load()} > {cores} cores): the stored timings would not "
              f"hold. Wait for it to be idle, or pass --force to run and mark the notebooks busy.",
              file=sys.stderr)
        return 3
    notebooks = [p.resolve() for p in args.notebooks] or toc_notebooks()
    # chapter 9 scores every model in this run, not from a cache an earlier run left in data/eval-cache/
    eval_cache = tempfile.TemporaryDirectory(prefix="eval-cache-")
    os.environ["LLM_COMPANION_EVAL_CACHE"] = eval_cache.name
    print(f"{'notebook':<44} {'seconds':>8} {'load start':>10} {'load end':>9}  machine / threads")
    total = time.perf_counter()
    for path in notebooks:
        # another job is using at least half a core while no notebook of ours runs
        busy = args.force or cores_in_use() > 0.5
        try:
            record = execute(path, args.timeout, busy)
        except InlineExpressionError as e:
            print(f"{path.name}: {e}; the notebook was not written", file=sys.stderr)
            return 1
        print(f"{path.name:<44} {record['wall_s']:>8.1f} {record['load_start']:>10.2f} "
              f"{record['load_end']:>9.2f}  {record['machine']} / {record['torch_threads']}"
              + ("  BUSY" if record["busy"] else ""), flush=True)
    print(f"{'all ' + str(len(notebooks)) + ' notebooks':<44} {time.perf_counter() - total:>8.1f}")
    summary = ROOT / "_build" / "execution.json"
    summary.parent.mkdir(exist_ok=True)
    summary.write_text(json.dumps({p.name: nbformat.read(p, as_version=4).metadata["llm_book_execution"]
                                   for p in notebooks}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
