"""Atomic writes: a file or folder appears complete under its final name, or not at all."""
import os
import stat

import pytest

from llm_companion.atomic import atomic_dir, atomic_file, copy_file, file_mode, write_json


class Boom(RuntimeError):
    pass


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_file_replaces_the_destination_with_normal_permissions(tmp_path):
    dest = tmp_path / "sub" / "out.txt"
    with atomic_file(dest) as tmp:
        tmp.write_text("new")
        assert not dest.exists()  # nothing under the final name until the block succeeds
    assert dest.read_text() == "new"
    assert _mode(dest) == file_mode()  # not mkstemp's private 0600 (unless the umask says so)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(Boom), atomic_file(dest) as tmp:
        tmp.write_text("half")
        raise Boom
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_json_and_copy_file(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}'
    copy_file(tmp_path / "a.json", tmp_path / "copy.json")
    assert (tmp_path / "copy.json").read_bytes() == (tmp_path / "a.json").read_bytes()


def test_atomic_dir_replaces_a_folder_and_cleans_up_after_a_failure(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "stale.txt").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "weights.bin").write_bytes(b"1")
    assert [p.name for p in final.iterdir()] == ["weights.bin"]
    with pytest.raises(Boom), atomic_dir(final) as tmp:
        (tmp / "weights.bin").write_bytes(b"half")
        raise Boom
    assert (final / "weights.bin").read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
