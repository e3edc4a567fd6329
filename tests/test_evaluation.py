"""llm_companion.evaluation: shared-context scoring against plain forwards and HF, the task rules, statistics,
the report and the command line's bad-input errors. Tiny random models only."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import ODD, hf_gpt2

from llm_companion import GPTConfig, GPTModel, LlamaConfig, LlamaModel
from llm_companion.evaluation import (
    Item,
    TaskDataError,
    UnknownTaskError,
    bits_per_byte,
    evaluate,
    mcnemar_exact,
    paired_test,
    score_batch,
    score_choices,
    score_plain,
    select,
    summarize,
    wilson_interval,
)
from llm_companion.evaluation.bpb import token_nll
from llm_companion.evaluation.tasks import check_tasks, load_blimp, load_hellaswag, load_lambada, load_piqa
from llm_companion.models.hf_convert import model_from_hf_state_dict


def random_gpt(cfg: GPTConfig = ODD, seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    model = GPTModel(cfg).eval()
    with torch.no_grad():  # larger weights than the init, so attention is far from uniform
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def random_llama(seed: int = 0) -> LlamaModel:
    cfg = LlamaConfig(vocab_size=90, context_length=48, emb_dim=64, n_heads=4, n_kv_heads=2, n_layers=2,
                      hidden_dim=96)
    torch.manual_seed(seed)
    model = LlamaModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p)) if "norm" in name else p.normal_(0.0, 0.15)
    return model


def _ids(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _check_shared_equals_plain(model, vocab):
    context = _ids(11, vocab, 1)
    conts = [_ids(n, vocab, 10 + n) for n in (1, 4, 7, 2)]  # lengths differ: padding is exercised
    shared = score_choices(model, context, conts)
    for c, s in zip(conts, shared, strict=True):
        ref = score_plain(model, context, c)
        assert s.n_tokens == ref.n_tokens == len(c)
        assert abs(s.logprob - ref.logprob) <= 1e-4
        assert s.greedy == ref.greedy
    assert len({round(s.logprob, 3) for s in shared}) == len(conts)  # the choices really differ


def test_shared_context_equals_plain_forward_gpt():
    _check_shared_equals_plain(random_gpt(), ODD.vocab_size)


def test_shared_context_equals_plain_forward_llama():
    _check_shared_equals_plain(random_llama(), 90)


def test_single_token_continuations_only_need_the_context_pass():
    model = random_gpt()
    context = _ids(5, ODD.vocab_size, 3)
    shared = score_choices(model, context, [[7], [8], [9]])
    logits = model(torch.tensor([context]))[0, -1].log_softmax(-1)
    assert [s.logprob for s in shared] == pytest.approx([logits[7].item(), logits[8].item(), logits[9].item()],
                                                        abs=1e-5)


@pytest.mark.slow  # imports transformers
def test_scores_equal_hugging_face_gpt2_on_the_same_weights():
    hf = hf_gpt2(ODD, seed=3)
    ours = model_from_hf_state_dict(hf.state_dict(), ODD).eval()
    context = _ids(9, ODD.vocab_size, 4)
    conts = [_ids(n, ODD.vocab_size, 20 + n) for n in (3, 5, 1)]
    for c, s in zip(conts, score_choices(ours, context, conts), strict=True):
        with torch.no_grad():
            lp = hf(torch.tensor([context + c])).logits[0].log_softmax(-1)
        ref = sum(lp[len(context) - 1 + j, t].item() for j, t in enumerate(c))
        assert abs(s.logprob - ref) <= 1e-4


def test_too_long_items_are_truncated_from_the_left_as_lm_eval_does():
    cfg = ODD.replace(context_length=16)
    model = random_gpt(cfg)
    context, cont = _ids(30, cfg.vocab_size, 5), _ids(4, cfg.vocab_size, 6)
    (s,) = score_choices(model, context, [cont])
    whole = (context + cont)[-17:]                      # lm-eval: last context_length + 1 tokens
    lp = model(torch.tensor([whole[:-1]]))[0].log_softmax(-1)
    ref = sum(lp[16 - 4 + j, t].item() for j, t in enumerate(cont))
    assert s.n_tokens == 4 and abs(s.logprob - ref) <= 1e-4


@pytest.mark.parametrize("make, vocab", [(random_gpt, ODD.vocab_size), (random_llama, 90)])
def test_batched_scores_equal_one_plain_forward_each(make, vocab):
    model = make()
    n_ctx = model.cfg.context_length
    # lengths differ (padding is exercised), one request is longer than the window (truncated from the left)
    requests = [(_ids(k, vocab, k), _ids(m, vocab, 50 + k)) for k, m in ((3, 1), (7, 4), (1, 6), (12, 2))]
    requests.append((_ids(n_ctx + 5, vocab, 99), _ids(3, vocab, 98)))
    for max_tokens in (8, 1024):                          # one row per batch, and all rows in one batch
        batched = score_batch(model, requests, max_tokens=max_tokens)
        for (ctx, cont), s in zip(requests, batched, strict=True):
            ref = score_plain(model, ctx, cont)
            assert s.n_tokens == ref.n_tokens and s.greedy == ref.greedy
            assert abs(s.logprob - ref.logprob) <= 1e-4
    with pytest.raises(ValueError, match="non-empty"):
        score_batch(model, [([], [1])])


def test_evaluate_in_batches_gives_the_item_by_item_report():
    class Tok:
        name = "bytes"
        eot_token = 0

        def encode(self, s):
            return [1 + (b % 99) for b in s.encode()]

    model = random_gpt()
    items = {"piqa": [Item(i, f"Question {i}?", (" yes", " no way", " maybe"), i % 3, (4, 7, 6))
                      for i in range(70)],                # more than one round of 64 items
             "blimp": [Item(i, "", (f"A cat sits {i}.", f"A cat sit {i}."), 0, (13, 12), {"paradigm": "p"})
                       for i in range(5)]}
    one = evaluate(model, Tok(), "piqa,blimp", cache_dir=False, items=items)
    many = evaluate(model, Tok(), "piqa,blimp", cache_dir=False, items=items, batch_tokens=256)
    for task in ("piqa", "blimp"):
        assert many["tasks"][task]["items"] == one["tasks"][task]["items"]
        assert many["tasks"][task]["acc"] == one["tasks"][task]["acc"]
    piqa = one["tasks"]["piqa"]
    right_norm = round(piqa["acc_norm"] * piqa["n"])
    assert piqa["ci95_norm"] == list(wilson_interval(right_norm, piqa["n"]))   # acc_norm's own interval
    assert one["tasks"]["blimp"]["ci95_norm"] is None


class CountingModel(torch.nn.Module):
    """Predicts token (t + 1) mod V after token t with near certainty; enough of the cache API to be scored."""

    def __init__(self, vocab: int = 20):
        super().__init__()
        self.cfg = GPTConfig(vocab_size=vocab, context_length=32, emb_dim=4, n_heads=1, n_layers=1)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def new_cache(self, batch_size, max_len=None):
        class Cache:
            k = torch.zeros(1, batch_size, 1, max_len, 1)
            v = torch.zeros(1, batch_size, 1, max_len, 1)
            length = 0

            def reserve(self, end):  # the library's KVCache grows on demand; this one is allocated whole
                assert end <= max_len
        return Cache()

    def forward(self, idx, cache=None, *, last_only=False):
        logits = torch.nn.functional.one_hot((idx + 1) % self.cfg.vocab_size, self.cfg.vocab_size) * 20.0
        if cache is not None:
            cache.length += idx.shape[1]
        return logits[:, -1:] if last_only else logits


def test_lambada_rule_needs_every_token_of_the_last_word_greedy():
    model = CountingModel()
    context = [1, 2, 3]
    right, half, wrong = [4, 5, 6], [4, 5, 9], [7, 8]   # multi-token last words
    s_right, s_half, s_wrong = score_choices(model, context, [right, half, wrong])
    assert s_right.greedy and not s_half.greedy and not s_wrong.greedy
    items = [Item(i, "ctx", (" w",), 0, (1,)) for i in range(3)]
    rows = [{"ll": [s.logprob], "greedy": [s.greedy], "tokens": [s.n_tokens]} for s in (s_right, s_half, s_wrong)]
    r = summarize("lambada", items, rows)
    assert [it["pred"] for it in r["items"]] == [1, 0, 0]
    assert r["acc"] == pytest.approx(1 / 3)
    assert r["perplexity"] == pytest.approx(math.exp(-(s_right.logprob + s_half.logprob + s_wrong.logprob) / 3))


def test_acc_norm_divides_by_the_choice_length_in_characters():
    # ll −6 over 3 characters (−2/char) loses to −10 over 10 characters (−1/char): acc and acc_norm differ
    item = Item(0, "Q", (" abc", " abcdefghij"), 1, (3, 10))
    r = summarize("hellaswag", [item], [{"ll": [-6.0, -10.0], "greedy": [False, False], "tokens": [1, 3]}])
    assert r["acc"] == 0.0 and r["acc_norm"] == 1.0
    assert r["items"][0]["pred"] == 0 and r["items"][0]["pred_norm"] == 1


def test_hellaswag_loader_follows_lm_eval_preprocessing(tmp_path):
    rec = {"activity_label": "Roof", "ctx_a": "A man [header] sits.", "ctx_b": "he", "label": 1,
           "endings": ["runs [title] away.", "sits  down."]}
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (item,) = load_hellaswag(path)
    assert item.context == "Roof: A man sits. He"
    assert item.choices == (" runs. away.", " sits down.") and item.lengths == (11, 10) and item.gold == 1


def test_wilson_interval_known_value_and_mcnemar():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)   # Wilson (1927) 95% interval for 8/10
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0


def test_paired_test_uses_the_shared_items():
    a = {"items": [{"index": i, "pred": 1, "gold": 1} for i in range(20)]}
    b = {"items": [{"index": i, "pred": int(i >= 8), "gold": 1} for i in range(25)]}
    r = paired_test(a, b)
    assert r["n"] == 20 and r["a_only"] == 8 and r["b_only"] == 0
    assert r["diff"] == pytest.approx(0.4) and r["ci95"][0] > 0 and r["p_value"] == pytest.approx(2 / 2 ** 8)


def test_select_is_seeded_and_spreads_over_paradigms():
    items = [Item(i, "", ("a", "b"), 0, (1, 1), {"paradigm": p}) for p in "xyz" for i in range(10)]
    one, two = select(items, 6, seed=1, task="blimp"), select(items, 6, seed=1, task="blimp")
    assert one == two and len(one) == 6
    assert sorted(it.extra["paradigm"] for it in one) == ["x", "x", "y", "y", "z", "z"]
    assert select(items, 6, seed=2, task="blimp") != one
    with pytest.raises(ValueError, match="positive"):
        select(items, 0)


def test_bits_per_byte_scores_every_token_once_and_matches_one_forward_when_it_fits():
    cfg = ODD.replace(context_length=16)
    model = random_gpt(cfg)
    ids = _ids(40, cfg.vocab_size, 8)
    nll = token_nll(model, ids, stride=6)
    assert len(nll) == 39
    short = ids[:15]
    lp = model(torch.tensor([short[:-1]]))[0].log_softmax(-1)
    ref = [-lp[j, t].item() for j, t in enumerate(short[1:])]
    assert token_nll(model, short) == pytest.approx(ref, abs=1e-5)
    # the windowed pass equals a full pass on the tokens whose context fits in one window
    assert nll[:16] == pytest.approx([-x for x in model(torch.tensor([ids[:16]]))[0].log_softmax(-1)
                                      .gather(1, torch.tensor(ids[1:17])[:, None])[:, 0].tolist()], abs=1e-5)


@pytest.mark.parametrize("n", [16, 17, 40, 41, 47])
def test_bits_per_byte_bar_ends_at_100_percent(n, monkeypatch, capsys):
    cfg = ODD.replace(context_length=16)
    monkeypatch.setenv("LLM_COMPANION_PROGRESS", "plain")
    capsys.readouterr()
    nll = token_nll(random_gpt(cfg), _ids(n, cfg.vocab_size, 3), stride=6, desc="bpb")
    assert len(nll) == n - 1
    line = capsys.readouterr().out.strip()
    assert line.startswith("bpb: 100%"), line


def test_bits_per_byte_divides_bits_by_utf8_bytes():
    class Tok:
        eot_token = 0

        def encode(self, s):
            return [1 + (b % 99) for b in s.encode()]

    model = random_gpt()
    r = bits_per_byte(model, Tok(), "naïve text")
    assert r["bytes"] == 11 and r["tokens"] == 11
    assert r["bits_per_byte"] == pytest.approx(r["bits"] / 11)


def test_evaluate_returns_the_contract_shape_and_resumes_from_its_cache(tmp_path, monkeypatch):
    class Tok:
        name = "bytes"
        eot_token = 0

        def encode(self, s):
            return [1 + (b % 99) for b in s.encode()]

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    model = random_gpt()
    items = {"piqa": [Item(i, f"Question {i}", (" yes", " no way"), i % 2, (3, 6)) for i in range(6)],
             "blimp": [Item(i, "", ("A cat sits.", "A cat sit."), 0, (11, 10), {"paradigm": "p"})
                       for i in range(3)]}
    r1 = evaluate(model, Tok(), "piqa,blimp", limit=4, seed=3, name="tiny", cache_dir=tmp_path, items=items)
    assert r1["model"] == "tiny" and set(r1["tasks"]) == {"piqa", "blimp"}
    piqa = r1["tasks"]["piqa"]
    assert piqa["n"] == 4 and 0 <= piqa["acc"] <= 1 and piqa["ci95"][0] <= piqa["acc"] <= piqa["ci95"][1]
    assert {"index", "pred", "gold"} <= set(piqa["items"][0])
    assert r1["tasks"]["blimp"]["items"][0]["paradigm"] == "p" and r1["tasks"]["blimp"]["acc_norm"] is None
    json.dumps(r1)

    import llm_companion.evaluation.harness as harness

    monkeypatch.setattr(harness, "score_item", lambda *a: pytest.fail("scored again instead of using the cache"))
    r2 = evaluate(model, Tok(), "piqa,blimp", limit=4, seed=3, name="tiny", cache_dir=tmp_path, items=items)
    assert r2 == r1


def test_cache_is_keyed_by_the_items_text_and_the_bar_counts_cached_items(tmp_path, monkeypatch, capsys):
    import llm_companion.evaluation.harness as harness

    class Tok:
        name = "bytes"

        def encode(self, s):
            return [1 + (b % 99) for b in s.encode()]

    model = random_gpt()
    first = [Item(i, f"Question {i}", (" yes", " no"), 0, (3, 2)) for i in range(5)]
    evaluate(model, Tok(), "piqa", cache_dir=tmp_path, items={"piqa": first})
    # same indices, other text: two items are new and must be scored, not read from the first set's cache
    second = first[:3] + [Item(i, f"Another question {i}", (" yes", " no"), 0, (3, 2)) for i in (3, 4)]
    scored = []
    real = harness.score_item
    monkeypatch.setattr(harness, "score_item", lambda m, t, item: scored.append(item.index) or real(m, t, item))
    monkeypatch.setenv("LLM_COMPANION_PROGRESS", "plain")
    capsys.readouterr()
    r = evaluate(model, Tok(), "piqa", cache_dir=tmp_path, items={"piqa": second})
    assert scored == [3, 4]
    fresh = evaluate(model, Tok(), "piqa", cache_dir=False, items={"piqa": second})
    assert r["tasks"]["piqa"]["items"] == fresh["tasks"]["piqa"]["items"]
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("piqa (3 cached): 100%") and "5/5" in line


def test_cache_folder_follows_its_environment_variable(tmp_path, monkeypatch):
    import llm_companion.evaluation.harness as harness

    monkeypatch.setenv("LLM_COMPANION_EVAL_CACHE", str(tmp_path / "c"))
    assert harness.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LLM_COMPANION_EVAL_CACHE")
    assert harness.default_cache_dir().name == "eval-cache"


# ------------------------------------------------------------------------------------------- bad input
def test_unknown_task_lists_valid_names():
    with pytest.raises(UnknownTaskError, match="valid tasks: blimp, lambada, hellaswag"):
        check_tasks("hellaswag,mmlu")


def test_malformed_records_name_file_and_line(tmp_path):
    path = tmp_path / "adjunct_island.jsonl"
    path.write_text('{"sentence_good": "A.", "sentence_bad": "B."}\n{"sentence_good": "A."}\n')
    with pytest.raises(TaskDataError, match=r"adjunct_island.jsonl:2: field 'sentence_bad'"):
        load_blimp(path)
    path.write_text('{"text": "one two"}\nnot json\n')
    with pytest.raises(TaskDataError, match=r"adjunct_island.jsonl:2: not valid JSON"):
        load_lambada(path)
    sols = tmp_path / "valid.jsonl"
    sols.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    labels = tmp_path / "labels.lst"
    labels.write_text("7\n")
    with pytest.raises(TaskDataError, match=r"labels.lst:1"):
        load_piqa(sols, labels)


@pytest.mark.parametrize("argv, message", [
    (["--model", "smollm2", "--tasks", "nope"], "unknown task 'nope'; valid tasks: blimp"),
    (["--model", "no-such-model", "--tasks", "piqa"], "unknown model 'no-such-model'; valid: smollm2"),
    (["--model", "smollm2", "--tasks", "piqa", "--limit", "0"], "--limit must be a positive number"),
])
def test_cli_bad_input_is_one_line(argv, message, capsys):
    from llm_companion.cli import main

    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_evaluate_rejects_a_non_positive_limit():
    with pytest.raises(ValueError, match="positive"):
        evaluate(random_gpt(), None, "piqa", limit=-1, cache_dir=False)
