import json

import pytest
import torch

from llm_companion import GPTConfig, GPTModel
from llm_companion.models.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    restore_rng,
    save_checkpoint,
    save_model,
)

NANO = GPTConfig.preset("gpt-nano", vocab_size=40, context_length=16)


def _trained_pair():
    torch.manual_seed(0)
    model = GPTModel(NANO)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 40, (2, 16))
    for _ in range(2):
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_checkpoint_round_trip_restores_weights_optimizer_and_state(tmp_path):
    model, opt = _trained_pair()
    path = save_checkpoint(tmp_path, model=model, optimizer=opt, state={"epoch": 3, "note": "x"}, step=7)
    assert path.name == "step-00000007"
    assert sorted(p.name for p in path.iterdir()) == ["SHA256SUMS", "model.safetensors", "optimizer.pt",
                                                     "state.json"]
    torch.manual_seed(1)
    fresh = GPTModel(NANO)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    state = load_checkpoint(tmp_path, model=fresh, optimizer=fresh_opt)  # a run dir: newest checkpoint
    assert state["epoch"] == 3 and state["step"] == 7 and state["config"] == NANO.to_dict()
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert fresh.out_head.weight is fresh.tok_emb.weight  # still tied after loading
    sa, sb = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"])


def test_only_newest_checkpoints_are_kept(tmp_path):
    model, opt = _trained_pair()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, model=model, optimizer=opt, step=step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    assert latest_checkpoint(tmp_path / "missing") is None


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoint_error_names_the_file(tmp_path, damage):
    model, opt = _trained_pair()
    path = save_checkpoint(tmp_path, model=model, optimizer=opt, step=1)
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupted"):
        load_checkpoint(path, model=GPTModel(NANO))


def test_half_written_checkpoint_without_manifest_is_rejected(tmp_path):
    model, opt = _trained_pair()
    path = save_checkpoint(tmp_path, model=model, optimizer=opt, step=1)
    (path / "SHA256SUMS").unlink()
    with pytest.raises(CheckpointError, match="SHA256SUMS is missing"):
        load_checkpoint(path, model=GPTModel(NANO))


def test_loading_into_a_different_config_names_first_mismatched_tensor(tmp_path):
    model, opt = _trained_pair()
    save_checkpoint(tmp_path, model=model, optimizer=opt, step=1)
    other = GPTModel(NANO.replace(emb_dim=32))
    with pytest.raises(CheckpointMismatch, match=r"'tok_emb.weight' has shape \(40, 64\) in the checkpoint "
                                                 r"but \(40, 32\) in the model"):
        load_checkpoint(tmp_path, model=other)
    deeper = GPTModel(NANO.replace(n_layers=3))
    with pytest.raises(CheckpointMismatch, match="has no tensor 'blocks.2.norm1.weight'"):
        load_checkpoint(tmp_path, model=deeper)


def test_save_model_and_load_model(tmp_path):
    model, _ = _trained_pair()
    out = save_model(model, tmp_path / "m", extra={"metrics.json": {"val_loss": 1.5}})
    assert json.loads((out / "config.json").read_text()) == NANO.to_dict()
    assert json.loads((out / "metrics.json").read_text()) == {"val_loss": 1.5}
    again = load_model(out)
    x = torch.randint(0, 40, (1, 16))
    assert torch.equal(model.eval()(x), again.eval()(x))
    save_model(again, out)  # replacing an existing directory works and leaves no temp dirs behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_rng_capture_and_restore_reproduce_every_generator():
    import random

    import numpy as np

    state = json.loads(json.dumps(capture_rng()))  # survives JSON
    a = (torch.rand(3), np.random.rand(), random.random())
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
