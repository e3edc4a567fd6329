import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from llm_companion import GPTConfig, GPTModel
from llm_companion.data.dataset import GPTDataset
from llm_companion.models.checkpoint import list_checkpoints, load_model
from llm_companion.training.loop import (
    History,
    TrainConfig,
    TrainingError,
    evaluating,
    lr_at,
    make_optimizer,
    plot_losses,
    total_steps,
    train,
)

V = 61


def _data(n_tokens=1200, seed=0):
    # a learnable stream: a repeating pattern with noise, so the loss can go down
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n_tokens) % 13
    noise = torch.randint(0, V, (n_tokens,), generator=g)
    ids = torch.where(torch.rand(n_tokens, generator=g) < 0.1, noise, base)
    ds = GPTDataset(ids, max_length=16, stride=16)
    return (DataLoader(ds, batch_size=4, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(1)),
            DataLoader(ds, batch_size=4))


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return GPTModel(GPTConfig.preset("gpt-nano", vocab_size=V, context_length=16, **kw))


def test_training_lowers_the_loss_and_records_history():
    train_loader, val_loader = _data()
    model = _model()
    cfg = TrainConfig(epochs=3, lr=3e-3, eval_batches=4, verbose=False)
    samples = iter(["first", "second", "third"])
    h = train(model, train_loader, val_loader, cfg, sample_fn=lambda m: next(samples),
              eval_fn=lambda m: {"acc": 0.5})
    steps_per_epoch = len(train_loader)
    assert h.steps == [steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch]  # eval_every=0: per epoch
    assert h.epochs == [1.0, 2.0, 3.0]
    assert h.tokens_seen == [s * 4 * 16 for s in h.steps] and h.examples_seen == [s * 4 for s in h.steps]
    assert len(h.step_loss) == 3 * steps_per_epoch
    assert h.val_loss[-1] < h.val_loss[0] - 0.5 and h.train_loss[-1] < math.log(V) - 1
    assert h.metrics == {"acc": [0.5, 0.5, 0.5]}
    assert [s["text"] for s in h.samples] == ["first", "second", "third"]
    assert not model.training  # train() leaves the model in eval mode
    assert "3 epochs" not in repr(h) and "val loss" in repr(h)


def test_evaluating_switches_to_eval_mode_and_restores_the_previous_mode_even_after_an_error():
    model = _model(drop_rate=0.5).train()
    x = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    with evaluating(model):
        assert not model.training and not model.blocks[0].training
        assert torch.equal(model(x), model(x))  # dropout is off
    assert model.training and model.blocks[0].training
    with pytest.raises(RuntimeError, match="inside"), evaluating(model):
        raise RuntimeError("an error inside the block")
    assert model.training
    with evaluating(model.eval()):
        pass
    assert not model.training  # a model that was in eval mode stays there


def test_a_seeded_run_depends_on_its_seed_only_and_leaves_the_callers_generators_alone():
    import random

    import numpy as np

    cfg = TrainConfig(max_steps=4, epochs=None, lr=3e-3, eval_every=None, sample_every=None, seed=5, verbose=False)
    runs = []
    for ambient in (0, 1):  # a different global state before the call: same run (dropout masks included)
        train_loader, _ = _data()
        model = _model(drop_rate=0.3)
        torch.manual_seed(ambient), np.random.seed(ambient), random.seed(ambient)
        before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
        train(model, train_loader, None, cfg)
        after = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
        assert torch.equal(before[0], after[0]) and (before[1] == after[1]).all() and before[2] == after[2]
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_max_steps_wins_over_epochs_and_eval_every_counts_steps():
    train_loader, val_loader = _data()
    h = train(_model(), train_loader, val_loader,
              TrainConfig(epochs=5, max_steps=7, eval_every=3, eval_batches=1, sample_every=None, verbose=False))
    assert h.steps == [3, 6, 7]  # every 3 steps, plus the last
    assert len(h.step_loss) == 7


def test_gradient_accumulation_equals_a_bigger_batch():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randint(0, V, (8, 16), generator=g), torch.randint(0, V, (8, 16), generator=g)
    big = _model()
    small = _model()
    common = dict(max_steps=1, epochs=None, lr=1.0, eval_every=None, sample_every=None, verbose=False)
    # plain SGD (passed in as the optimizer): the update is the gradient itself, so this compares gradients
    train(big, DataLoader(TensorDataset(x, y), batch_size=8), None, TrainConfig(**common),
          optimizer=torch.optim.SGD(big.parameters(), lr=1.0))
    train(small, DataLoader(TensorDataset(x, y), batch_size=4), None, TrainConfig(**common, grad_accum_steps=2),
          optimizer=torch.optim.SGD(small.parameters(), lr=1.0))
    untouched = _model().state_dict()
    for (k, a), b in zip(big.state_dict().items(), small.state_dict().values()):
        assert not torch.equal(a, untouched[k]) or k.endswith("bias"), k
        assert torch.allclose(a, b, atol=1e-6), k


def test_only_trainable_parameters_change_and_weight_decay_skips_biases_and_norms():
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.final_norm.parameters():
        p.requires_grad_(True)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.3))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0]  # LayerNorm: no decay
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_loader, _ = _data()
    train(model, train_loader, None, TrainConfig(max_steps=2, epochs=None, eval_every=None, verbose=False))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"final_norm.weight", "final_norm.bias"}

    m = _model()
    full = make_optimizer(m, TrainConfig(weight_decay=0.3))
    decay_ids = {id(p) for g in full.param_groups if g["weight_decay"] == 0.3 for p in g["params"]}
    decayed = {n for n, p in m.named_parameters() if id(p) in decay_ids}
    assert {"tok_emb.weight", "pos_emb.weight", "blocks.0.attn.qkv.weight"} <= decayed
    assert not any(n.endswith("bias") or "norm" in n for n in decayed)
    assert decayed == {n for n, p in m.named_parameters() if p.dim() >= 2}


def test_custom_loss_fn_trains_a_classifier():
    # chapter 6's pattern: the loss looks at the last position only, labels are a (B,) tensor
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, V, (32, 8), generator=g)
    labels = (x[:, -1] % 2)
    loader = DataLoader(TensorDataset(x, labels), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(0))

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch[0])[:, -1, :2], batch[1])

    def accuracy(m):
        with torch.no_grad():
            return {"accuracy": (m(x)[:, -1, :2].argmax(-1) == labels).float().mean().item()}

    h = train(_model(), loader, loader, TrainConfig(epochs=8, lr=3e-3, verbose=False),
              loss_fn=loss_fn, eval_fn=accuracy)
    assert h.metrics["accuracy"][0] < 0.9 and h.metrics["accuracy"][-1] == 1.0
    assert h.tokens_seen[-1] == 8 * 32 * 8


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, min_lr=0.1)
    lrs = [lr_at(s, cfg, 20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert lr_at(100, TrainConfig(lr=0.5), 20) == 0.5  # no min_lr: constant after warmup
    assert total_steps(TrainConfig(epochs=3, grad_accum_steps=2), 5) == 7


def test_bad_settings_raise_errors_that_name_the_fix():
    with pytest.raises(TrainingError, match="epochs or max_steps"):
        TrainConfig(epochs=None)
    with pytest.raises(TrainingError, match="no batches"):
        train(_model(), DataLoader(TensorDataset(torch.zeros(0, 4)), batch_size=2), None, TrainConfig())
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(TrainingError, match="unfreeze"):
        make_optimizer(model, TrainConfig())


def test_plot_losses_returns_a_labelled_figure():
    h = History(steps=[1, 2], epochs=[0.5, 1.0], tokens_seen=[64, 128], examples_seen=[4, 8],
                train_loss=[3.0, 2.0], val_loss=[3.1, 2.5], lr=[1e-3, 1e-3], wall_time=[0.1, 0.2])
    fig = plot_losses(h)
    ax, top = fig.axes
    assert ax.get_xlabel() == "epochs" and top.get_xlabel() == "tokens seen"
    assert [line.get_label() for line in ax.get_lines()] == ["training loss", "validation loss"]
    assert History.from_dict(h.to_dict()) == h


# ------------------------------------------------------------------ crash safety: SIGKILL and resume
RUN = textwrap.dedent("""
    import sys, time, torch
    from torch.utils.data import DataLoader
    from llm_companion import GPTConfig, GPTModel
    from llm_companion.models.checkpoint import save_model
    from llm_companion.data.dataset import GPTDataset
    from llm_companion.training.loop import TrainConfig, default_loss, train
    torch.set_num_threads(1)
    ckpt, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    ids = torch.randint(0, 101, (2000,), generator=torch.Generator().manual_seed(5))
    ds = GPTDataset(ids, max_length=16, stride=13)           # 153 windows: 19 batches of 8 per epoch
    loader = DataLoader(ds, batch_size=8, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(7))
    val = DataLoader(ds, batch_size=8)
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=101, context_length=16, drop_rate=0.1))
    def loss_fn(m, batch):
        time.sleep(delay)                                      # slow the run down so it can be killed
        return default_loss(m, batch)
    cfg = TrainConfig(epochs=3, lr=3e-3, warmup_steps=4, min_lr=1e-4, grad_clip=1.0, grad_accum_steps=2,
                      eval_every=5, eval_batches=2, checkpoint_every=3, verbose=False)
    h = train(model, loader, val, cfg, loss_fn=loss_fn, checkpoint_dir=ckpt, resume=True)
    save_model(model, out, extra={"history.json": h.to_dict()})
""")


def _run(script, ckpt, out, delay, **kw):
    return subprocess.Popen([sys.executable, str(script), str(ckpt), str(out), str(delay)],
                            env={**os.environ, "LLM_COMPANION_PROGRESS": "off"}, **kw)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_bit_identical_weights(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    # reference: one uninterrupted run
    ref = _run(script, tmp_path / "ref_ckpt", tmp_path / "ref", 0.0)
    # crash run: killed with SIGKILL once it has written a checkpoint past the first epoch boundary (step 9.5)
    crash = _run(script, tmp_path / "ckpt", tmp_path / "out", 0.1)
    deadline = time.time() + 120
    while not any(int(p.name.split("-")[1]) >= 12 for p in list_checkpoints(tmp_path / "ckpt")):
        assert crash.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    crash.send_signal(signal.SIGKILL)
    crash.wait()
    assert crash.returncode == -signal.SIGKILL
    killed_at = int(list_checkpoints(tmp_path / "ckpt")[-1].name.split("-")[1])
    assert 12 <= killed_at < 28 and not (tmp_path / "out").exists()
    resumed = _run(script, tmp_path / "ckpt", tmp_path / "out", 0.0)
    assert resumed.wait(timeout=180) == 0 and ref.wait(timeout=180) == 0

    a, b = load_model(tmp_path / "ref"), load_model(tmp_path / "out")
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), f"{name} differs after resume"
    ha = json.loads((tmp_path / "ref" / "history.json").read_text())
    hb = json.loads((tmp_path / "out" / "history.json").read_text())
    for key in ("steps", "tokens_seen", "step_loss", "train_loss", "val_loss", "lr", "epochs"):
        assert ha[key] == hb[key], key
    assert len(ha["step_loss"]) == 28


def test_resume_with_a_different_model_names_the_mismatched_tensor(tmp_path):
    from llm_companion.models.checkpoint import CheckpointMismatch

    train_loader, val_loader = _data()
    cfg = TrainConfig(max_steps=2, epochs=None, eval_every=None, checkpoint_every=1, verbose=False)
    train(_model(), train_loader, val_loader, cfg, checkpoint_dir=tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000002"]
    wider = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=V, context_length=16, emb_dim=32))
    with pytest.raises(CheckpointMismatch, match=r"'tok_emb.weight' has shape \(61, 64\) in the checkpoint but "
                                                 r"\(61, 32\)"):
        train(wider, train_loader, val_loader, cfg, checkpoint_dir=tmp_path, resume=True)


def test_a_run_resumed_from_any_checkpoint_ends_like_an_uninterrupted_one(tmp_path):
    import shutil

    # 18 batches per epoch, 4 per step: step 5 takes batches from two epochs, step 9 ends one exactly; its
    # checkpoint comes before the loader runs out, which draws from the loader's generator (a new permutation)
    cfg = TrainConfig(epochs=3, lr=3e-3, grad_accum_steps=4, eval_batches=2, checkpoint_every=1,
                      keep_checkpoints=20, verbose=False)

    def run(ckpt, resume=False):
        train_loader, val_loader = _data()
        model = _model(drop_rate=0.2)
        h = train(model, train_loader, val_loader, cfg, checkpoint_dir=ckpt, resume=resume,
                  sample_fn=lambda m: str(torch.rand(1).item()))
        return model.state_dict(), h

    ref, h_ref = run(tmp_path / "ref")
    saved = {p.name: p for p in list_checkpoints(tmp_path / "ref")}
    assert len(h_ref.step_loss) == 13
    for name in ("step-00000004", "step-00000005", "step-00000009"):
        shutil.copytree(saved[name], tmp_path / name / name)
        weights, h = run(tmp_path / name, resume=True)
        assert all(torch.equal(ref[k], weights[k]) for k in ref), name
        assert (h.step_loss, h.train_loss, h.samples) == (h_ref.step_loss, h_ref.train_loss, h_ref.samples), name
