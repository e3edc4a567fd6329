"""Instruction fine-tuning data, prompts, batching, responses and evaluation (llm_companion.finetune.instruct)."""
import json

import pytest
import torch

from llm_companion.data.tokenizer import gpt2_tokenizer
from llm_companion.finetune.instruct import (
    EOT_ID,
    IGNORE_INDEX,
    Example,
    InstructionCollator,
    InstructionDataError,
    InstructionDataset,
    extract_response,
    format_example,
    format_input,
    format_prompt,
    generate_responses,
    instruction_loader,
    load_instruction_data,
    pad_and_mask,
    response_table,
    rouge_l,
    save_responses,
    split_records,
    validate_records,
    with_responses,
)
from llm_companion.models.config import GPTConfig
from llm_companion.models.gpt import GPTModel

PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("records, index, field", [
    ([{"instruction": "a", "output": "b"}, {"instruction": "c"}], 1, "'output'"),
    ([{"instruction": "a", "output": "b"}] * 3 + [{"instruction": 5, "output": "x"}], 3, "'instruction'"),
    ([{"instruction": "a", "output": "b", "input": ["list"]}], 0, "'input'"),
    ([{"instruction": "a", "output": "b"}, "just a string"], 1, "object"),
    ([{"instruction": "  ", "output": "b"}], 0, "'instruction'"),
])
def test_validation_names_index_and_field(records, index, field):
    with pytest.raises(InstructionDataError) as e:
        validate_records(records)
    assert f"record {index}:" in str(e.value) and field in str(e.value)


def test_validation_accepts_missing_or_null_input():
    out = validate_records([{"instruction": "a", "output": "b"}, {"instruction": "c", "input": None, "output": "d"}])
    assert [r["input"] for r in out] == ["", ""]
    with pytest.raises(InstructionDataError, match="JSON list"):
        validate_records({"instruction": "a"})


def test_load_rejects_bad_file(tmp_path):
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps([{"instruction": "ok", "output": "ok"}, {"instruction": "x", "output": 3}]))
    with pytest.raises(InstructionDataError, match="record 1: field 'output' must be a string"):
        load_instruction_data(bad)


# ------------------------------------------------------------------------------------------ data + split
@pytest.fixture(scope="module")
def records():
    return load_instruction_data()


def test_book_data_and_split(records):
    assert len(records) == 1100
    s = split_records(records)
    assert (len(s.train), len(s.val), len(s.test)) == (935, 55, 110)
    assert s.train[0] is records[0] and s.test[0] is records[935] and s.val[-1] is records[-1]
    again = split_records(records)
    assert again == s
    shuffled = split_records(records, seed=1)
    assert shuffled == split_records(records, seed=1) and shuffled.train != s.train
    ids = sorted(id(r) for part in shuffled for r in part)
    assert ids == sorted(id(r) for r in records)  # a partition: nothing lost, nothing repeated
    with pytest.raises(ValueError, match="train_frac"):
        split_records(records, train_frac=0.9, test_frac=0.2)


# ------------------------------------------------------------------------------------------ formatting
def test_alpaca_format_with_and_without_input():
    with_input = {"instruction": "Fix the spelling.", "input": "freind", "output": "friend"}
    assert format_example(with_input) == (
        f"{PREAMBLE}\n\n### Instruction:\nFix the spelling.\n\n### Input:\nfreind\n\n### Response:\nfriend")
    no_input = {"instruction": "Say hi.", "input": "", "output": "Hi!"}
    assert format_input(no_input) == f"{PREAMBLE}\n\n### Instruction:\nSay hi."
    assert format_prompt(no_input) == f"{PREAMBLE}\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    assert format_prompt("Say hi.") == format_prompt(no_input)  # a chat message is an instruction


def test_phi3_format_and_unknown_style():
    rec = {"instruction": "Add.", "input": "2 + 3", "output": "5"}
    assert format_example(rec, "phi3") == "<|user|>\nAdd.\n2 + 3\n<|assistant|>\n5"
    with pytest.raises(ValueError, match="alpaca, phi3"):
        format_prompt(rec, "chatml")


# ------------------------------------------------------------------------------------------ collate
def test_pad_and_mask_matches_the_reference_example():
    x, y, cut = pad_and_mask([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert x.tolist() == [[0, 1, 2, 3, 4], [5, 6, EOT_ID, EOT_ID, EOT_ID], [7, 8, 9, EOT_ID, EOT_ID]]
    m = IGNORE_INDEX
    # targets are the inputs shifted by one; only the first <|endoftext|> of each row stays a target
    assert y.tolist() == [[1, 2, 3, 4, EOT_ID], [6, EOT_ID, m, m, m], [8, 9, EOT_ID, m, m]]
    assert cut == 0


def test_prompt_masking_keeps_only_answer_targets():
    m = IGNORE_INDEX
    _, y, _ = pad_and_mask([Example([10, 11, 12, 13, 14], prompt_len=3), Example([20, 21, 22], 2)],
                           mask_prompt=True)
    # row 0: prompt 10 11 12, answer 13 14 -> targets that are answer tokens or the end token survive
    assert y.tolist() == [[m, m, 13, 14, EOT_ID], [m, 22, EOT_ID, m, m]]
    with pytest.raises(ValueError, match="prompt_len"):
        pad_and_mask([[1, 2, 3]], mask_prompt=True)


def test_real_endoftext_inside_a_text_is_not_masked():
    _, y, _ = pad_and_mask([[1, EOT_ID, 2], [3]])
    assert y.tolist()[0] == [EOT_ID, 2, EOT_ID]


def test_truncation_counts_cut_examples():
    batch = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    x, y, cut = pad_and_mask(batch, allowed_max_length=3)
    assert x.shape == y.shape == (3, 3)
    assert cut == 1  # only the 5-token example loses text; 3 tokens fit exactly (targets 9 10 <eot>)
    assert y.tolist()[2] == [9, 10, EOT_ID]
    collate = InstructionCollator(allowed_max_length=3)
    collate(batch)
    collate(batch[:2])
    assert (collate.truncated, collate.seen) == (2, 5)


def test_dataset_pretokenizes_prompt_then_answer(records):
    tok = gpt2_tokenizer()
    ds = InstructionDataset(records[:5], tok)
    ex = ds[0]
    assert ex.ids[:ex.prompt_len] == tok.encode(format_prompt(records[0]))
    assert tok.decode(ex.ids) == format_example(records[0])
    loader = instruction_loader(ds, InstructionCollator(mask_prompt=True), batch_size=2, shuffle=True, seed=1)
    order1 = [x.tolist() for x, _ in loader]
    order2 = [x.tolist() for x, _ in instruction_loader(ds, InstructionCollator(mask_prompt=True), batch_size=2,
                                                          shuffle=True, seed=1)]
    assert order1 == order2 and len(order1) == 3
    # with the prompt masked, the first counted target of each row is the first answer token
    x, y = next(iter(instruction_loader(ds, InstructionCollator(mask_prompt=True), batch_size=1)))
    first = int((y[0] != IGNORE_INDEX).nonzero()[0])
    assert first == ex.prompt_len - 1 and int(y[0, first]) == ex.ids[ex.prompt_len]


# ------------------------------------------------------------------------------------------ responses
def test_extract_response():
    prompt = format_prompt("Name a colour.")
    assert extract_response(prompt + "Blue.<|endoftext|>junk", prompt) == "Blue."
    assert extract_response("Red.\n\n### Instruction:\nMore", prompt) == "Red."
    assert extract_response("### Response:\n  Green  ") == "Green"
    assert extract_response("### Response.") == ""  # a header that is not the response header ends it
    assert extract_response("Hi <|user|> x", style="phi3") == "Hi"


def _constant_model(token: int) -> GPTModel:
    """A tiny model whose logits always favour ``token`` (LayerNorm output is constant ones)."""
    cfg = GPTConfig.preset("gpt-nano", tie_weights=False, context_length=128)
    model = GPTModel(cfg)
    with torch.no_grad():
        model.final_norm.weight.zero_()
        model.final_norm.bias.fill_(1.0)
        model.out_head.weight.zero_()
        model.out_head.weight[token] = 1.0
    return model


def test_generate_responses_stops_at_endoftext_and_extracts():
    tok = gpt2_tokenizer()
    recs = [{"instruction": "Say something.", "input": "", "output": "ok"},
            {"instruction": "Again.", "input": "please", "output": "ok"}]
    assert generate_responses(_constant_model(EOT_ID), recs, tok, max_new_tokens=5) == ["", ""]
    hi = tok.encode(" hi")
    assert len(hi) == 1
    assert generate_responses(_constant_model(hi[0]), recs, tok, max_new_tokens=3) == ["hi hi hi"] * 2


def test_save_responses_roundtrip(tmp_path):
    recs = with_responses([{"instruction": "a", "input": "", "output": "b"}], ["b!"])
    path = save_responses(recs, tmp_path / "sub" / "out.json")
    assert json.loads(path.read_text()) == recs
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temp file left behind
    with pytest.raises(ValueError, match="1 records but 2 responses"):
        with_responses(recs, ["x", "y"])


# ------------------------------------------------------------------------------------------ evaluation
def test_rouge_l_on_known_strings():
    scores = rouge_l(["the cat sat on the mat", "completely different", ""],
                     ["The cat was on the mat.", "nothing shared here", "reference"])
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides -> F1 = 5/6
    assert scores[0] == pytest.approx(5 / 6)
    assert scores[1:] == [0.0, 0.0]
    assert all(type(x) is float for x in scores)  # rouge-score gives int 0 for an empty prediction
    assert rouge_l(["Running fast."], ["run fast"]) == [1.0]  # Porter stemming: running -> run
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_l(["a", "b"], ["a"])


def test_response_table():
    recs = with_responses([{"instruction": "Say hi", "input": "", "output": "Hello there"},
                           {"instruction": "x" * 50, "input": "in", "output": "Yes"}], ["Hello there", "No"])
    df = response_table(recs, width=10)
    assert list(df.columns) == ["instruction", "input", "reference", "response", "rouge_l"]
    assert df["rouge_l"].tolist() == [1.0, 0.0]
    assert df["instruction"][1] == "x" * 9 + "…"
