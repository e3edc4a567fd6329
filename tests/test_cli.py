"""The command line's shell: user mistakes exit 2 with one line, one chat loop serves every model, no cycles."""
from __future__ import annotations

import argparse

import pytest

from llm_companion import cli
from llm_companion.cli import generate as cli_generate
from llm_companion.cli.chat import ChatModel, run_chat
from llm_companion.cli.errors import UserError


def test_every_subcommand_is_listed_once_and_dispatches_to_its_module():
    parser = cli.build_parser()
    minimal = {"fetch": [], "pretrain": [], "classify": ["text"], "chat": [], "generate": ["--model", "m", "text"],
               "finetune": ["--method", "sft", "--out", "o"], "eval": ["--model", "smollm2"], "serve": []}
    assert [name for name, _, _ in cli.COMMANDS] == list(minimal)
    for name, module, _ in cli.COMMANDS:
        assert parser.parse_args([name, *minimal[name]])._handler is module.main


def test_user_mistakes_raise_user_error_and_print_one_line(capsys):
    bad = argparse.Namespace(prompt="hi", model="m", max_new_tokens=0)
    with pytest.raises(UserError, match="--max-new-tokens must be at least 1"):
        cli_generate.main(bad)
    assert cli.main(["generate", "--model", "nowhere", "--max-new-tokens", "0", "hi"]) == 2
    assert capsys.readouterr().err == "llm-companion generate: error: --max-new-tokens must be at least 1\n"
    assert cli.main(["chat", "--max-new-tokens", "0", "--once", "hi"]) == 2
    assert capsys.readouterr().err == "llm-companion chat: error: --max-new-tokens must be at least 1\n"
    assert cli.main(["generate", "--model", "nowhere", ""]) == 2
    assert "the prompt is empty" in capsys.readouterr().err


def _fake(remembers: bool, seen: list, fits=lambda conversation: True) -> ChatModel:
    def reply(conversation):
        seen.append([m["content"] for m in conversation])
        yield "re:"
        yield conversation[-1]["content"]
    return ChatModel(reply=reply, greeting="hello", remembers=remembers, fits=fits)


def _type(monkeypatch, lines):
    feed = iter(lines)

    def fake_input(prompt=""):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None
    monkeypatch.setattr("builtins.input", fake_input)


def test_the_chat_loop_answers_each_message_on_its_own_for_a_single_turn_model(monkeypatch, capsys):
    seen: list = []
    _type(monkeypatch, ["a", "", "/reset", "b"])
    assert run_chat(_fake(False, seen)) == 0
    assert seen == [["a"], ["/reset"], ["b"]]          # /reset is only a command for a model that remembers
    assert capsys.readouterr().out == "hello\nassistant> re:a\nassistant> re:/reset\nassistant> re:b\n\n"


def test_the_chat_loop_keeps_the_conversation_resets_it_and_forgets_what_no_longer_fits(monkeypatch):
    seen: list = []
    _type(monkeypatch, ["a", "b", "c", "/reset", "d", "/quit", "never"])
    assert run_chat(_fake(True, seen, fits=lambda conversation: len(conversation) <= 2)) == 0
    assert seen == [["a"], ["a", "re:a", "b"], ["b", "re:b", "c"], ["d"]]   # "a" forgotten, then a reset


def test_once_answers_one_question_without_the_greeting(capsys):
    assert run_chat(_fake(True, []), once="q") == 0
    assert capsys.readouterr().out == "re:q\n"
