import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from llm_companion.models.checkpoint import load_model
from llm_companion.training import distributed

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 80


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pretrain(tmp_path, out, nproc):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    args = ["--corpus", str(corpus), "--preset", "gpt-nano", "--context", "16", "--steps", "4",
            "--batch-size", "8", "--lr", "3e-3", "--eval-every", "2", "--checkpoint-every", "2",
            "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "LLM_COMPANION_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "llm_companion.cli", "pretrain", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "llm_companion.cli", "pretrain",
               *args]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    out1 = _pretrain(tmp_path, tmp_path / "one", 1)
    out2 = _pretrain(tmp_path, tmp_path / "two", 2)
    h1 = json.loads((tmp_path / "one" / "model" / "history.json").read_text())
    h2 = json.loads((tmp_path / "two" / "model" / "history.json").read_text())
    assert len(h1["step_loss"]) == 4 and h1["steps"] == h2["steps"] == [2, 4]
    assert h1["tokens_seen"] == h2["tokens_seen"] == [2 * 8 * 16, 4 * 8 * 16]  # global tokens
    for key in ("step_loss", "train_loss", "val_loss"):
        assert h1[key] == pytest.approx(h2[key], abs=1e-5), key
    m1, m2 = load_model(tmp_path / "one" / "model"), load_model(tmp_path / "two" / "model")
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k
    # only rank 0 prints and writes: one result line, one checkpoint per saving step
    assert out2.count("train loss") == out1.count("train loss") == 3  # 2 evaluations + the summary
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-00000002",
                                                                                    "step-00000004"]


def test_helpers_are_single_process_no_ops_without_torchrun():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_reduce_mean(2.5) == 2.5
    info = distributed.setup(device="cpu")
    assert (info.rank, info.world_size, info.device.type) == (0, 1, "cpu")
    sampler = distributed.shard_sampler(list(range(10)), shuffle=True, seed=3)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == list(range(10)) and list(sampler) != first  # each epoch its own shuffle
    sampler.set_epoch(0)
    assert list(sampler) == first
