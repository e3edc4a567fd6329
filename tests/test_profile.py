"""Run profiles (one environment variable) and progress bars that render as one clean line."""
from __future__ import annotations

import pytest

from llm_companion import profiles as profile
from llm_companion.profiles import ProfileError, choose, current
from llm_companion.progress import notice, progress


def test_default_profile_is_quick(monkeypatch):
    monkeypatch.delenv("LLM_BOOK_PROFILE", raising=False)
    assert current() == "quick"
    monkeypatch.setenv("LLM_BOOK_PROFILE", " Full ")
    assert current() == "full"


def test_unknown_profile_names_the_choices(monkeypatch):
    monkeypatch.setenv("LLM_BOOK_PROFILE", "fast")
    with pytest.raises(ProfileError, match="'fast' is not a profile; use one of quick, full"):
        current()
    assert issubclass(ProfileError, ValueError)


def test_choose_picks_the_active_profile(monkeypatch):
    monkeypatch.setenv("LLM_BOOK_PROFILE", "quick")
    s = choose(quick={"steps": 10, "model": "gpt-nano"}, full={"steps": 5000, "model": "gpt2-small"})
    assert (s.steps, s.model) == (10, "gpt-nano")
    assert s.as_dict() == {"steps": 10, "model": "gpt-nano"}
    monkeypatch.setenv("LLM_BOOK_PROFILE", "full")
    assert choose(quick={"steps": 10}, full={"steps": 5000}).steps == 5000


def test_settings_repr_is_a_table_of_both_profiles(monkeypatch):
    monkeypatch.setenv("LLM_BOOK_PROFILE", "quick")
    table = repr(choose(quick={"steps": 10}, full={"steps": 5000}))
    header, row, note = table.splitlines()
    assert "quick *" in header and "full" in header and "full *" not in header
    assert row.split() == ["steps", "10", "5000"]
    assert "LLM_BOOK_PROFILE" in note


def test_choose_refuses_keys_in_one_profile_only():
    with pytest.raises(ProfileError, match=r"differ in keys: \['lr'\]"):
        choose(quick={"steps": 1}, full={"steps": 2, "lr": 1e-3})


def test_plain_progress_prints_one_final_line(monkeypatch, capsys):
    monkeypatch.setenv("LLM_COMPANION_PROGRESS", "plain")
    assert sum(progress(range(500), desc="work")) == sum(range(500))
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1 and "\r" not in captured.out
    assert lines[0].startswith("work: 100%") and "500/500" in lines[0]
    assert captured.err == ""


def test_plain_progress_manual_updates(monkeypatch, capsys):
    monkeypatch.setenv("LLM_COMPANION_PROGRESS", "plain")
    with progress(total=3, desc="steps") as bar:
        for _ in range(3):
            bar.update(1)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "3/3" in out


def test_progress_off_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv("LLM_COMPANION_PROGRESS", "off")
    assert list(progress(range(3))) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_notice_goes_to_stderr_in_a_terminal_and_stdout_in_a_notebook(monkeypatch, capsys):
    import sys
    import types

    monkeypatch.delenv("LLM_COMPANION_PROGRESS", raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    notice("fetching x …")
    captured = capsys.readouterr()
    assert captured.err == "fetching x …\n" and captured.out == ""
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))  # as inside Jupyter
    notice("fetching y …")
    captured = capsys.readouterr()
    assert captured.out == "fetching y …\n" and captured.err == ""


def test_default_device_is_a_torch_device_name():
    import torch

    dev = profile.default_device()
    assert dev in ("cpu", "cuda", "mps")
    torch.zeros(1, device=dev)
