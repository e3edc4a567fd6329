"""The data layer: local copy → mirror → URL, hashes enforced, resumable downloads, clear failures."""
from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile

import pytest

from llm_companion.cli import main as cli_main
from llm_companion.data import artifacts, download
from llm_companion.data.artifacts import REGISTRY, fetch, get_artifact
from llm_companion.data.download import Artifact, ArtifactUnavailable, UnknownArtifact

PAYLOAD = b"It had always been Jack Gisburn's way to do things by halves.\n" * 200
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty project home and an empty mirror, so the real data/ is never touched."""
    home = tmp_path / "home"
    mirror = tmp_path / "mirror"
    home.mkdir()
    mirror.mkdir()
    monkeypatch.setenv("LLM_COMPANION_HOME", str(home))
    monkeypatch.setenv("LLM_COMPANION_MIRROR", str(mirror))
    monkeypatch.delenv("LLM_COMPANION_OFFLINE", raising=False)
    return home, mirror


def register_tmp(monkeypatch, name="tmp-text", urls=("http://127.0.0.1:9/none.txt",), **kw):
    art = Artifact(name=name, filename=kw.pop("filename", "tmp.txt"), urls=tuple(urls),
                   sha256=kw.pop("sha256", PAYLOAD_SHA), subdir="tmp", **kw)
    monkeypatch.setitem(REGISTRY, name, art)
    return art


class RangeServer:
    """A local HTTP server for one file that honours ``Range: bytes=N-`` and records the requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.ranges: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_mirror_hit_is_copied_and_verified(home, monkeypatch):
    home_dir, mirror = home
    art = register_tmp(monkeypatch)
    (mirror / "deep" / "er").mkdir(parents=True)
    (mirror / "deep" / "er" / "tmp.txt").write_bytes(PAYLOAD)
    path = fetch(art.name, offline=True)
    assert path == home_dir / "data" / "tmp" / "tmp.txt"
    assert path.read_bytes() == PAYLOAD
    # nothing written into the mirror (CI mounts it read-only; it is not the project's): stamps stay in data/
    assert sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*")) == ["deep", "deep/er",
                                                                                  "deep/er/tmp.txt"]
    # a second fetch uses the local copy even after the mirror is gone
    monkeypatch.delenv("LLM_COMPANION_MIRROR")
    assert fetch(art.name, offline=True).read_bytes() == PAYLOAD


def test_wrong_hash_in_mirror_is_never_used(home, monkeypatch):
    home_dir, mirror = home
    art = register_tmp(monkeypatch)
    (mirror / "tmp.txt").write_bytes(PAYLOAD + b"tampered")
    with pytest.raises(ArtifactUnavailable) as err:
        fetch(art.name, offline=True)
    assert not art.path.exists()
    assert f"mirror {mirror / 'tmp.txt'}" in str(err.value)
    assert "sha256" in str(err.value)


def test_wrong_hash_in_local_copy_is_replaced_from_mirror(home, monkeypatch):
    _, mirror = home
    art = register_tmp(monkeypatch)
    art.path.parent.mkdir(parents=True)
    art.path.write_bytes(b"corrupted local copy")
    (mirror / "tmp.txt").write_bytes(PAYLOAD)
    assert fetch(art.name, offline=True).read_bytes() == PAYLOAD


def test_wrong_hash_in_local_copy_is_removed_when_nothing_else_works(home, monkeypatch):
    art = register_tmp(monkeypatch)
    art.path.parent.mkdir(parents=True)
    art.path.write_bytes(b"corrupted local copy")
    with pytest.raises(ArtifactUnavailable, match="removed"):
        fetch(art.name, offline=True)
    assert not art.path.exists()


def test_wrong_size_is_rejected_before_hashing(home, monkeypatch):
    _, mirror = home
    art = register_tmp(monkeypatch, size=len(PAYLOAD) + 1)
    (mirror / "tmp.txt").write_bytes(PAYLOAD)
    with pytest.raises(ArtifactUnavailable, match=f"size {len(PAYLOAD)} bytes"):
        fetch(art.name, offline=True)


def test_download_resumes_a_part_file(home, monkeypatch):
    with RangeServer({"/tmp.txt": PAYLOAD}) as server:
        art = register_tmp(monkeypatch, urls=(server.url("/tmp.txt"),))
        art.path.parent.mkdir(parents=True)
        part = art.path.with_name("tmp.txt.part")
        half = len(PAYLOAD) // 2
        part.write_bytes(PAYLOAD[:half])
        path = fetch(art.name)
    assert server.ranges == [f"bytes={half}-"]
    assert path.read_bytes() == PAYLOAD
    assert not part.exists()


def test_download_with_a_corrupt_part_file_is_not_used(home, monkeypatch):
    with RangeServer({"/tmp.txt": PAYLOAD}) as server:
        art = register_tmp(monkeypatch, urls=(server.url("/tmp.txt"),))
        art.path.parent.mkdir(parents=True)
        art.path.with_name("tmp.txt.part").write_bytes(b"X" * 100)  # wrong prefix: resumed file won't verify
        with pytest.raises(ArtifactUnavailable, match="sha256"):
            fetch(art.name)
    assert not art.path.exists()


def test_download_extracts_a_zip_member(home, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme", "not this one")
        zf.writestr("tmp.txt", PAYLOAD)
    with RangeServer({"/bundle.zip": buf.getvalue()}) as server:
        art = register_tmp(monkeypatch, urls=(server.url("/bundle.zip"),), member="tmp.txt")
        assert fetch(art.name).read_bytes() == PAYLOAD
    assert server.ranges == [None]


def test_failure_message_names_artifact_urls_and_fix(home, monkeypatch):
    # port 9 (discard) on localhost refuses connections: a fast, offline-safe network failure
    url = "http://127.0.0.1:9/tmp.txt"
    art = register_tmp(monkeypatch, urls=(url,))
    with pytest.raises(ArtifactUnavailable) as err:
        fetch(art.name)
    msg = str(err.value)
    assert "'tmp-text'" in msg
    assert url in msg
    assert "To provide it by hand" in msg and str(art.path) in msg
    assert PAYLOAD_SHA in msg
    assert "LLM_COMPANION_MIRROR" in msg


def test_offline_skips_the_network(home, monkeypatch):
    monkeypatch.setenv("LLM_COMPANION_OFFLINE", "1")
    art = register_tmp(monkeypatch, urls=("http://127.0.0.1:9/tmp.txt",))
    with pytest.raises(ArtifactUnavailable, match="skipped"):
        fetch(art.name)


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownArtifact) as err:
        get_artifact("the-verdikt")
    msg = str(err.value)
    assert "'the-verdikt'" in msg
    for known in ("the-verdict", "tinyshakespeare", "gpt2-encoder", "gpt2-vocab"):
        assert known in msg


def test_registered_hashes_match_shared_sources():
    """The registry carries the verified hashes listed in shared/data/SOURCES.md."""
    expected = {
        "the-verdict": "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
        "tinyshakespeare": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "gpt2-encoder": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        "gpt2-vocab": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    }
    assert {name: REGISTRY[name].sha256 for name in expected} == expected


def test_register_refuses_a_conflicting_duplicate(monkeypatch):
    monkeypatch.setattr(download, "REGISTRY", dict(REGISTRY))
    art = artifacts.REGISTRY["the-verdict"]
    assert download.register(art) is art  # re-registering the same artifact is fine
    with pytest.raises(ValueError, match="already registered"):
        download.register(Artifact(name="the-verdict", filename="other.txt", urls=()))


# ------------------------------------------------------------------------------------------- the CLI
def test_cli_list(capsys):
    assert cli_main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    assert "the-verdict" in out and "gpt2-vocab" in out


def test_cli_fetch_a_name(home, monkeypatch, capsys):
    _, mirror = home
    art = register_tmp(monkeypatch)
    (mirror / "tmp.txt").write_bytes(PAYLOAD)
    assert cli_main(["fetch", art.name]) == 0
    assert capsys.readouterr().out.strip() == f"{art.name}: {art.path}"


def test_cli_unknown_name_exits_2_with_one_line(capsys):
    assert cli_main(["fetch", "no-such-thing"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("llm-companion fetch: error: unknown artifact 'no-such-thing'")
    assert "the-verdict" in lines[0]


def test_cli_without_names_asks_for_one(capsys):
    assert cli_main(["fetch"]) == 2
    assert "--list" in capsys.readouterr().err


def test_remembered_sha256_hashes_once_until_the_file_changes(tmp_path, monkeypatch):
    f, stamp = tmp_path / "big.bin", tmp_path / "stamps" / "big.json"
    f.write_bytes(b"some bytes")
    hashed = []
    real = download.sha256_of
    monkeypatch.setattr(download, "sha256_of", lambda p: hashed.append(p) or real(p))
    digest = hashlib.sha256(b"some bytes").hexdigest()
    assert download.remembered_sha256(f, stamp) == digest and len(hashed) == 1
    assert download.remembered_sha256(f, stamp) == digest and len(hashed) == 1  # from the stamp
    assert download.remembered_sha256(f, stamp, trust_stamp=False) == digest and len(hashed) == 2
    f.write_bytes(b"other bytes!")  # another size: the stamp no longer counts
    assert download.remembered_sha256(f, stamp) == hashlib.sha256(b"other bytes!").hexdigest()
    assert len(hashed) == 3
    stamp.unlink()
    download.remembered_sha256(f, stamp, expected="0" * 64)  # a digest that is not the expected one…
    assert not stamp.exists()  # …is never remembered


def test_the_checkout_is_the_project_home_when_the_library_runs_from_it(monkeypatch):
    """Without LLM_COMPANION_HOME, data/ and models/ are the checkout's own folders (DESIGN: the layout), not
    ~/.cache: a fresh clone must not silently reuse another checkout's downloads and checkpoints."""
    from pathlib import Path

    monkeypatch.delenv("LLM_COMPANION_HOME", raising=False)
    checkout = Path(__file__).resolve().parents[1]
    assert Path(download.__file__).resolve().is_relative_to(checkout), "the library is not installed from here"
    assert download.project_home() == checkout
    assert download.data_dir() == checkout / "data" and download.models_dir() == checkout / "models"
    monkeypatch.setenv("LLM_COMPANION_HOME", str(checkout / "elsewhere"))
    assert download.models_dir() == checkout / "elsewhere" / "models"
