"""Atomic writes: a file or a folder appears under its final name complete, or not at all.

Everything the library writes to disk (fetched data, prepared splits, checkpoints, exported models, JSON
records) goes through here. The content is written under a temporary name in the destination's own folder
(so the final rename never crosses file systems), flushed to disk, given the permissions a plain ``open``
would have given it, and renamed into place with ``os.replace``. A process killed at any moment leaves the
previous version or the new one, never a half-written file; a failed write leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The permissions ``os.mkdir`` would give a new directory under the current umask."""
    return 0o777 & ~_umask()


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where the platform cannot (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; when the block succeeds, it becomes ``dest``.

    Write the content to the yielded path by any means (``open``, ``to_csv``, ``copyfile``). On an exception
    the temporary file is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes it private (0600); a finished file is not
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))


def copy_file(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy ``src`` to ``dest`` atomically."""
    with atomic_file(dest) as tmp:
        shutil.copyfile(src, tmp)


def temp_dir_beside(folder: str | os.PathLike) -> Path:
    """A new, empty, private directory next to ``folder``, to be filled and then :func:`publish_dir`-ed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))


def publish_dir(tmp_dir: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move a completed ``tmp_dir`` to ``final`` atomically, replacing an existing directory."""
    tmp_dir, final = Path(tmp_dir), Path(final)
    os.chmod(tmp_dir, dir_mode())  # mkdtemp makes it private (0700); a published folder is not
    if final.exists():  # a directory cannot be os.replace'd onto a non-empty one: move the old aside first
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp_dir, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final)
    fsync_dir(final.parent)
    return final


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; when the block succeeds, it replaces ``final``.

    On an exception the temporary directory is removed and ``final`` is untouched.
    """
    tmp = temp_dir_beside(final)
    try:
        yield tmp
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
