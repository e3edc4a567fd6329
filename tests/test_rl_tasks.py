"""The verifiable task of chapter 11: the verifier on tricky replies, the splits, and group sampling."""
from __future__ import annotations

from decimal import Decimal

import pytest
import torch

from llm_companion.models.llama import LLAMA_PRESETS, LlamaModel
from llm_companion.rl.baselines import majority_answer, paired_comparison, pass_at_k, verifier_reward
from llm_companion.rl.sampling import expand_cache, greedy_replies, sample_group, sample_groups
from llm_companion.rl.tasks import TWO_DIGIT_SUMS, ArithmeticTask, TaskError, parse_number, reward, verify


@pytest.mark.parametrize("reply, answer, right", [
    ("68", 68, True),
    ("68.", 68, True),
    (" 68 \n", 68, True),
    ("The answer is 68.", 68, True),          # words around the one number are allowed
    ("12.0", 12, True),                       # the same value, written as a decimal
    ("12.5", 12, False),
    ("-3", -3, True),
    ("-3", 3, False),                         # the sign is part of the number
    ("\u22123", -3, True),                    # a Unicode minus sign
    ("1,000", 1000, True),                    # thousands separators
    ("1,000", 1, False),
    ("1,00", 100, False),                     # not a thousands group: "1" and "00", the last is 0
    ("68 is the sum of the two numbers you gave.", 68, True),   # an answer followed by more text
    ("68. Check: 45 + 23", 68, False),        # ... with another number in it: the last number counts
    ("23 + 45 = 68", 68, True),               # two (three) numbers: the last is the answer
    ("68\n\nExplanation: 23 + 45 = 68", 68, True),
    ("68 or 67", 68, False),                  # listing candidates is paid only when the last is right
    ("sixty-eight", 68, False),               # no number
    ("", 68, False),
])
def test_verify_on_tricky_replies(reply, answer, right):
    assert verify(reply, answer) is right
    assert reward(reply, answer) == (1.0 if right else 0.0)


def test_parse_number_values():
    assert parse_number("12.0") == Decimal(12)
    assert parse_number("1,234,567") == Decimal(1234567)
    assert parse_number("-3") == Decimal(-3)
    assert parse_number("no digits here") is None
    assert parse_number("3 and 4") == Decimal(4)
    assert parse_number("x2") is None and parse_number("v1.2.3 is out") is None   # parts of words are not numbers


def test_splits_are_disjoint_and_answers_right():
    task = TWO_DIGIT_SUMS
    s = task.splits
    assert len(s.test) == 1000 >= 500 and len(s.validation) == 200
    keys = [{p.key for p in part} for part in (s.train, s.validation, s.test)]
    assert all(len(k) == len(part) for k, part in zip(keys, (s.train, s.validation, s.test)))   # no repeats
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert sum(map(len, keys)) == 90 * 91 // 2          # every unordered pair of two-digit numbers, once
    for p in s.test[:50]:
        a, b = (int(x) for x in p.question.split("?")[0].removeprefix("What is ").split(" + "))
        assert p.answer == a + b and 10 <= a <= 99 and 10 <= b <= 99
        assert p.question.endswith("Answer with the number only.")


def test_splits_depend_on_the_seed_only():
    assert ArithmeticTask().splits.test == ArithmeticTask().splits.test
    assert ArithmeticTask(seed=1).splits.test != ArithmeticTask().splits.test


def test_operand_ranges_are_kept_and_errors_are_one_line():
    task = ArithmeticTask(op="*", a_range=(2, 9), b_range=(10, 99), n_test=100, n_validation=20)
    for p in task.splits.train[:100]:
        a, b = (int(x) for x in p.question.split("?")[0].removeprefix("What is ").split(" × "))
        assert 2 <= a <= 9 and 10 <= b <= 99 and p.answer == a * b
    with pytest.raises(TaskError, match="fewer than n_test"):
        _ = ArithmeticTask(a_range=(1, 3), b_range=(1, 3)).splits
    with pytest.raises(TaskError, match="op must be"):
        ArithmeticTask(op="/")


def test_majority_vote_and_pass_at_k():
    assert majority_answer(["12", "The answer is 13", "13.", "no idea"]) == 13
    assert majority_answer(["12", "13"]) == 12          # a tie goes to the answer seen first
    assert majority_answer(["no", "none"]) is None
    assert majority_answer(["1 2", "2", "3"]) == 2                     # each reply's last number votes
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)     # 1 - C(3,2)/C(4,2)


def test_paired_comparison_counts_and_interval():
    before = [True] * 10 + [False] * 90
    after = [True] * 8 + [False] * 2 + [True] * 30 + [False] * 60      # 30 gained, 2 lost
    r = paired_comparison(before, after)
    assert (r["n"], r["gained"], r["lost"]) == (100, 30, 2)
    assert r["before"] == 0.10 and r["after"] == 0.38 and r["gain"] == pytest.approx(0.28)
    assert 0 < r["interval"][0] < 0.28 < r["interval"][1] and r["p_value"] < 1e-5
    same = paired_comparison(before, before)
    assert same["gain"] == 0 and same["interval"][0] <= 0 <= same["interval"][1] and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="equally long"):
        paired_comparison([True], [True, False])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return LlamaModel(LLAMA_PRESETS["llama-tiny"]).eval()


def test_expanded_cache_continues_like_separate_prefills(tiny):
    prompt = torch.tensor([[5, 9, 2, 7, 1]])
    cache = tiny.new_cache(1, max_len=16)
    tiny(prompt, cache, last_only=True)
    expand_cache(cache, 3)
    nxt = torch.tensor([[4], [8], [11]])
    shared = tiny(nxt, cache, last_only=True)                               # (3, 1, V)
    alone = tiny(torch.cat([prompt.expand(3, -1), nxt], dim=1), last_only=True)
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=1e-5)


def test_expanded_batch_cache_keeps_each_prompt_with_its_rows(tiny):
    prompts = torch.tensor([[5, 9, 2, 7, 1], [3, 3, 8, 6, 2]])
    cache = tiny.new_cache(2, max_len=16)
    tiny(prompts, cache, last_only=True)
    expand_cache(cache, 2)                                                   # rows: p0, p0, p1, p1
    nxt = torch.tensor([[4], [8], [11], [6]])
    shared = tiny(nxt, cache, last_only=True)
    alone = tiny(torch.cat([prompts.repeat_interleave(2, dim=0), nxt], dim=1), last_only=True)
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=1e-5)


def test_groups_decoded_together_equal_groups_decoded_alone(tiny):
    prompts = [[3, 4, 5], [7, 8, 9], [1, 2]]       # two of equal length share a batch, the third runs alone
    together = sample_groups(tiny, prompts, 3, max_new_tokens=5, temperature=1e-6)
    alone = [sample_group(tiny, p, 3, max_new_tokens=5, temperature=1e-6) for p in prompts]
    assert together == alone
    assert len(together) == 3 and all(len(g) == 3 and all(len(c) == 5 for c in g) for g in together)


def test_sample_group_is_seeded_and_greedy_matches_one_by_one(tiny):
    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return sample_group(tiny, [3, 4, 5], 4, max_new_tokens=6, temperature=1.0, eos_id=None, generator=gen)
    a, b = draw(1), draw(1)
    assert a == b and len(a) == 4 and all(len(c) == 6 for c in a)
    # greedy decoding of one group: every member is the same greedy continuation
    g = sample_group(tiny, [3, 4, 5], 3, max_new_tokens=5, temperature=1e-6, eos_id=None,
                     generator=torch.Generator().manual_seed(0))
    batched = greedy_replies(tiny, [[3, 4, 5], [7, 8, 9], [1, 2]], max_new_tokens=5, batch_size=2)
    assert g[0] == g[1] == g[2] == batched[0]
    for prompt, got in zip([[7, 8, 9], [1, 2]], batched[1:]):
        ids = torch.tensor([prompt])
        for _ in range(5):
            ids = torch.cat([ids, tiny(ids)[:, -1:].argmax(-1)], dim=1)
        assert got == ids[0, len(prompt):].tolist()


def test_completions_stop_at_eos(tiny):
    first = greedy_replies(tiny, [[3, 4, 5]], max_new_tokens=4)[0]
    eos = first[1]                        # pretend the second greedy token ends the turn
    stop = first.index(eos) + 1           # (it may already be the first)
    assert greedy_replies(tiny, [[3, 4, 5]], max_new_tokens=4, eos_id=eos)[0] == first[:stop]
    group = sample_group(tiny, [3, 4, 5], 2, max_new_tokens=4, temperature=1e-6, eos_id=eos)
    assert group == [first[:stop]] * 2


class _DigitTokenizer:
    """Token i is the character str(i) for 0-9; 10 is a space, 11 the end of turn."""

    eos_token_id = 11

    def decode(self, ids):
        return "".join(" " if i == 10 else str(i) for i in ids if i != self.eos_token_id)


def test_the_reward_pays_a_right_answer_only_when_the_completion_ended():
    problems = [TWO_DIGIT_SUMS.problem(23, 45)]          # 68
    tok = _DigitTokenizer()
    reward = verifier_reward(tok, problems)
    assert reward(0, [6, 8, 11]) == 1.0                 # "68", then the end of turn
    assert reward(0, [6, 8]) == 0.0                     # cut off by the token limit: no end, no reward
    assert reward(0, [6, 7, 11]) == 0.0                 # ended, wrong
    assert reward(0, []) == 0.0
    loose = verifier_reward(tok, problems, require_end=False)
    assert loose(0, [6, 8]) == 1.0 and loose(0, [6, 8, 10, 6, 7]) == 0.0   # the last number counts


def test_a_cache_that_keeps_some_rows_continues_them_unchanged(tiny):
    prompts = torch.tensor([[5, 9, 2, 7, 1], [3, 3, 8, 6, 2], [4, 1, 1, 9, 9]])
    cache = tiny.new_cache(3, max_len=16)
    tiny(prompts, cache, last_only=True)
    cache.keep_rows(torch.tensor([2, 0]))                                  # drop row 1, reorder the others
    nxt = torch.tensor([[6], [8]])
    kept = tiny(nxt, cache, last_only=True)
    alone = tiny(torch.cat([prompts[[2, 0]], nxt], dim=1), last_only=True)
    torch.testing.assert_close(kept, alone, atol=1e-5, rtol=1e-5)
    assert cache.shape[1] == 2


def test_rows_that_finish_early_leave_the_batch_and_the_others_decode_on(tiny):
    prompts = [[5, 9, 2, 7, 1], [3, 3, 8, 6, 2], [4, 1, 1, 9, 9], [2, 6, 6, 1, 3]]
    full = greedy_replies(tiny, prompts, max_new_tokens=8)                  # no end token: 8 tokens each
    eos = full[0][0]                                                        # row 0 ends at once with it
    expected = [row[:row.index(eos) + 1] if eos in row else row for row in full]
    n0 = len(expected[0])
    assert n0 < 8 and any(len(r) > n0 for r in expected)                   # rows finish at different steps
    assert greedy_replies(tiny, prompts, max_new_tokens=8, eos_id=eos) == expected


def test_prompts_that_share_a_prefix_decode_as_the_plain_model_does(tiny):
    prompts = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9, 8], [1, 2, 3, 7, 7, 7]]   # the first three tokens run once

    def plain_greedy(p, n):
        ids = list(p)
        with torch.no_grad():
            for _ in range(n):
                ids.append(int(tiny(torch.tensor([ids]))[0, -1].argmax()))
        return ids[len(p):]

    expected = [plain_greedy(p, 5) for p in prompts]
    assert greedy_replies(tiny, prompts, max_new_tokens=5) == expected
    assert [g[0] for g in sample_groups(tiny, prompts, 2, max_new_tokens=5, temperature=1e-6)] == expected
