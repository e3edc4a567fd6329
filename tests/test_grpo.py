"""GRPO (llm_companion.rl.grpo, .trainer): TRL's loss as the oracle, the pieces by hand, the trainer on a tiny Llama."""
from __future__ import annotations

import copy
import types
from collections import defaultdict

import pytest
import torch

from llm_companion.finetune.dpo import adapters_disabled
from llm_companion.finetune.lora import apply_lora
from llm_companion.models.llama import LLAMA_PRESETS, LlamaModel
from llm_companion.rl.grpo import (
    average_loss,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    k3_kl,
    pad_completions,
    token_logprobs,
)
from llm_companion.rl.sampling import sample_group
from llm_companion.rl.trainer import GRPOConfig, train_grpo

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer", reason="the TRL oracle needs the test extra (trl)")


# ------------------------------------------------------------------------------------------ TRL oracle
def _trl_loss(logp, old_logp, ref_logp, advantages, mask, *, beta, eps_low, eps_high, loss_type):
    """TRL's own ``GRPOTrainer._compute_loss`` on given per-token log-probs: a stub ``self`` supplies the settings
    and returns ``logp`` where TRL would run the model."""
    identity = types.SimpleNamespace(reduce=lambda x, reduction="sum": x, gather=lambda x: x,
                                     gather_for_metrics=lambda x: x, num_processes=1, sync_gradients=True)
    stub = types.SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, beta=beta, use_vllm=False,
        args=types.SimpleNamespace(delta=None, use_bias_correction_kl=False), model=torch.nn.Module(),
        current_gradient_accumulation_steps=1, accelerator=identity, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None))
    stub.model.train()
    B, T = logp.shape
    inputs = {"prompt_ids": torch.zeros(B, 3, dtype=torch.long), "prompt_mask": torch.ones(B, 3, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old_logp, "ref_per_token_logps": ref_logp}
    return trl_grpo.GRPOTrainer._compute_loss(stub, None, inputs)


def _batch(seed=0, B=6, T=7):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)   # ratios well outside the clip range
    ref = logp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 1, 4, 7, 2, 5])
    mask = torch.arange(T)[None] < lengths[:, None]
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("level, loss_type", [("sequence", "grpo"), ("token", "bnpo")])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_loss_equals_trl(level, loss_type, beta, eps_high):
    logp, old, ref, adv, mask = _batch()
    mine = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=beta, eps_low=0.2, eps_high=eps_high, level=level)
    theirs = _trl_loss(logp, old, ref, adv, mask, beta=beta, eps_low=0.2,
                       eps_high=0.2 if eps_high is None else eps_high, loss_type=loss_type)
    assert abs(float(mine) - float(theirs)) < 1e-5
    assert abs(float(mine)) > 1e-3                       # a real loss, not two zeros


def test_loss_gradient_equals_trl():
    logp, old, ref, adv, mask = _batch(seed=3)
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    grpo_loss(a, old, adv, mask, ref_logp=ref, beta=0.04).backward()
    _trl_loss(b, old, ref, adv, mask, beta=0.04, eps_low=0.2, eps_high=0.2, loss_type="grpo").backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-6)


def test_group_advantages_equal_trl_scaling():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    # by hand: group 1 mean 0.5, unbiased std sqrt(1/3); group 2 mean 0.25, std 0.5; group 3 all equal
    s1, s2 = (1 / 3) ** 0.5 + 1e-4, 0.5 + 1e-4
    expected = torch.tensor([[0.5 / s1, -0.5 / s1, -0.5 / s1, 0.5 / s1],
                             [-0.25 / s2, -0.25 / s2, -0.25 / s2, 0.75 / s2], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(group_advantages(rewards), expected)
    torch.testing.assert_close(group_advantages(rewards, scale=False)[1], torch.tensor([-0.25, -0.25, -0.25, 0.75]))
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.ones(3))


def test_clipping_by_hand():
    # ratios 0.5, 1.0, 1.5 against advantages +1 and -1, eps 0.2
    logp = torch.log(torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]]))
    old = torch.zeros(2, 3)
    per_token = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0]), eps_low=0.2)
    # A > 0: min(r, clip(r)) = 0.5, 1.0, 1.2; A < 0: min(-r, -clip(r)) = -0.8, -1.0, -1.5 (loss is the negative)
    torch.testing.assert_close(per_token, torch.tensor([[-0.5, -1.0, -1.2], [0.8, 1.0, 1.5]]))
    asym = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0]), eps_low=0.2, eps_high=0.4)
    torch.testing.assert_close(asym[0], torch.tensor([-0.5, -1.0, -1.4]))
    # the gradient through a clipped token is zero (r = 1.5 > 1.2 with A > 0)
    lp = logp.clone().requires_grad_(True)
    clipped_surrogate(lp, old, torch.tensor([1.0, -1.0]))[0, 2].backward()
    assert lp.grad[0, 2] == 0.0


def test_k3_kl_by_hand_and_an_unbiased_estimate():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    d = -0.5
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([torch.exp(torch.tensor(d)) - d - 1, 0.0]))
    # E_{x~p}[k3] = KL(p || q) for two categorical distributions
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, generator=g), 0)
    q = torch.softmax(torch.randn(5, generator=g), 0)
    exact = float((p * (p.log() - q.log())).sum())
    estimate = float((p * k3_kl(p.log(), q.log())).sum())        # the expectation, computed exactly
    assert estimate == pytest.approx(exact, rel=1e-5)


def test_sequence_versus_token_averaging_by_hand():
    per_token = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert float(average_loss(per_token, mask, "sequence")) == pytest.approx((1.0 + 4.0) / 2)
    assert float(average_loss(per_token, mask, "token")) == pytest.approx((4.0 + 4.0) / 5)
    with pytest.raises(ValueError, match="level must be"):
        average_loss(per_token, mask, "batch")


# ------------------------------------------------------------------------------------------ a tiny model
@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return apply_lora(LlamaModel(LLAMA_PRESETS["llama-tiny"]).eval(), rank=4, alpha=8)


def test_token_logprobs_match_a_full_forward(tiny):
    prompt, comps = [5, 6, 7], [[1, 2, 3], [4], [9, 8]]
    ids, mask = pad_completions(prompt, comps, pad_id=0)
    assert ids.shape == (3, 6) and mask.sum(1).tolist() == [3, 1, 2]
    got = token_logprobs(tiny, ids, mask)
    for i, c in enumerate(comps):
        full = torch.log_softmax(tiny(torch.tensor([prompt + c])), -1)[0]
        want = torch.stack([full[len(prompt) - 1 + j, t] for j, t in enumerate(c)])
        torch.testing.assert_close(got[i, :len(c)], want, atol=1e-5, rtol=1e-5)
    assert (got[~mask] == 0).all()


def test_one_update_by_hand_equals_the_trainer(tiny):
    """One group, one step: the trainer's gradient is that of grpo_loss on hand-made advantages."""
    prompts = [[5, 6, 7]]
    reward = lambda i, c: float(c.count(11) > 0)                      # noqa: E731 - a verifier on token ids
    cfg = GRPOConfig(steps=1, prompts_per_step=1, group_size=4, max_new_tokens=5, lr=1e-2, track_kl=False,
                     max_grad_norm=1e9, seed=3)
    before = {n: p.detach().clone() for n, p in tiny.named_parameters() if p.requires_grad}
    gen = torch.Generator().manual_seed(3)
    comps = sample_group(tiny, prompts[0], 4, max_new_tokens=5, temperature=1.0, generator=gen)
    rewards = torch.tensor([reward(0, c) for c in comps])
    if rewards.min() == rewards.max():                                # force a learning signal for the test
        reward = lambda i, c, best=comps[0]: float(c == best)       # noqa: E731
        rewards = torch.tensor([reward(0, c) for c in comps])
    adv = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    ids, mask = pad_completions(prompts[0], comps, 0)
    logp = token_logprobs(tiny, ids, mask)
    grpo_loss(logp, logp.detach(), adv, mask).backward()
    grads = {n: p.grad.clone() for n, p in tiny.named_parameters() if p.requires_grad}
    tiny.zero_grad(set_to_none=True)
    history = train_grpo(tiny, prompts, reward, cfg, eos_id=None)
    assert history.steps[0]["reward"] == pytest.approx(float(rewards.mean()))
    for n, p in tiny.named_parameters():   # AdamW's first step moves each weight by -lr·sign(grad) (up to eps)
        if p.requires_grad and grads[n].abs().max() > 1e-6:
            moved = (p.detach() - before[n])[grads[n].abs() > 1e-6]
            expected = -cfg.lr * torch.sign(grads[n][grads[n].abs() > 1e-6])
            torch.testing.assert_close(moved, expected, atol=2e-4, rtol=0.05)


@pytest.mark.slow
def test_training_raises_the_reward_and_logs(tiny):
    def p_even():   # the policy's probability of being paid: its first token even
        with torch.no_grad():
            return float(torch.softmax(tiny(torch.tensor([[1, 2, 3]]))[0, -1], -1)[::2].sum())

    reward = lambda i, c: float(c[0] % 2 == 0)    # noqa: E731 - a verifier: "start with an even token"
    cfg = GRPOConfig(steps=10, prompts_per_step=2, group_size=6, max_new_tokens=2, lr=5e-2, beta=0.05, seed=0)
    before = p_even()
    history = train_grpo(tiny, [[1, 2, 3], [4, 5, 6, 7]], reward, cfg, eos_id=None)
    assert len(history.steps) == 10 and p_even() > before + 0.2
    assert sum(history.column("reward")[-3:]) / 3 > before
    kl = [k for k in history.column("kl") if k is not None]
    assert kl and all(k >= 0 for k in kl) and kl[-1] > 0               # the policy moved away from the reference
    assert all(0 <= s["all_equal"] <= 1 and s["length"] == 2 for s in history.steps)
    with adapters_disabled(tiny):                                     # the reference is untouched by training
        assert not any(type(m).__name__ == "LoRALinear" for m in tiny.modules())


def test_resume_continues_exactly(tiny, tmp_path):
    other = copy.deepcopy(tiny)
    reward = lambda i, c: float(c.count(11) + c.count(12))            # noqa: E731
    cfg = GRPOConfig(steps=4, prompts_per_step=1, group_size=4, max_new_tokens=3, lr=1e-2, checkpoint_every=2)
    straight = train_grpo(tiny, [[1, 2], [3, 4, 5]], reward, cfg, eos_id=None)
    half = GRPOConfig(**{**cfg.__dict__, "steps": 2})
    train_grpo(other, [[1, 2], [3, 4, 5]], reward, half, eos_id=None, checkpoint_dir=tmp_path / "ck")
    resumed = train_grpo(other, [[1, 2], [3, 4, 5]], reward, cfg, eos_id=None, checkpoint_dir=tmp_path / "ck")
    assert [s["reward"] for s in resumed.steps] == [s["reward"] for s in straight.steps]
    for (n, a), b in zip(tiny.named_parameters(), other.parameters()):
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="other settings"):
        train_grpo(other, [[1, 2]], reward, GRPOConfig(**{**cfg.__dict__, "lr": 1.0}), eos_id=None,
                   checkpoint_dir=tmp_path / "ck")


def test_config_and_input_errors(tiny):
    with pytest.raises(ValueError, match="group_size must be at least 2"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="level must be"):
        GRPOConfig(level="batch")
    with pytest.raises(ValueError, match="apply_lora"):
        train_grpo(LlamaModel(LLAMA_PRESETS["llama-tiny"]), [[1]], lambda i, c: 0.0, eos_id=None)
