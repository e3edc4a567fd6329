"""Which weights load_pretrained returns: the reader's own files, the registry's GPT-2, a pinned or local stand-in.

Checkpoints here are tiny (2 layers, 128-dim, vocabulary 96) and written with the library's exporter: the TF
format itself is tested against an independent writer in test_gpt2.py. Where a test needs a "GPT-2 124M",
the registry's 124M shape is patched to the tiny one, and where it needs "published" hashes, the registry
entries are patched to the tiny files' hashes.
"""
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import hf_gpt2

from llm_companion.data import artifacts, download
from llm_companion.data.artifacts import PublishedStandin
from llm_companion.models.checkpoint import save_model, seal
from llm_companion.models.gpt import GPTModel
from llm_companion.models.openai_checkpoint import config_from_hparams, export_tf_checkpoint
from llm_companion.training import starting_weights as weights
from llm_companion.training.starting_weights import WeightsDirError, WeightsUnavailable, load_pretrained

HPARAMS = {"n_vocab": 96, "n_ctx": 32, "n_embd": 128, "n_head": 2, "n_layer": 2}  # 64-dim heads, as GPT-2
CFG = config_from_hparams(HPARAMS)
WEIGHT_FILES = ("hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001")
REAL_PINS = artifacts.PUBLISHED_STANDINS  # before any test patches it
REAL_MIRROR_ENV = os.environ.get(download.MIRROR_ENV, "")  # as `make test` and CI set it, before the sandbox


def tiny(seed: int) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(CFG).eval()


def same(a: GPTModel, b: GPTModel) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """An empty project home and mirror, no network, quick profile, no GPT-2 folder; ensure_standin returns a
    tiny model (saving it the first time, as pretrain's trains it)."""
    home, mirror = tmp_path / "home", tmp_path / "mirror"
    home.mkdir(), mirror.mkdir()
    for var, value in (("LLM_COMPANION_HOME", home), ("LLM_COMPANION_MIRROR", mirror),
                       ("LLM_COMPANION_OFFLINE", "1"), ("LLM_BOOK_PROFILE", "quick")):
        monkeypatch.setenv(var, str(value))
    monkeypatch.delenv(weights.GPT2_DIR_ENV, raising=False)
    monkeypatch.setattr(weights, "_reported", set())
    monkeypatch.setattr(artifacts, "PUBLISHED_STANDINS", ())
    local = tiny(5)
    calls = []

    def ensure_standin():
        calls.append(1)
        folder = home / "models" / "standin"
        if not folder.is_dir():
            save_model(local, folder, extra={"metrics.json": {"val_loss": 6.25, "tokens_seen": 153600,
                                                              "corpus": {"tinyshakespeare": "ab"}}})
        return folder

    from llm_companion.training import pretrain

    monkeypatch.setattr(pretrain, "ensure_standin", ensure_standin)
    return {"home": home, "mirror": mirror, "tiny": local, "calls": calls, "tmp": tmp_path}


@pytest.fixture
def as_124m(monkeypatch):
    """Make the registry's GPT-2 124M the tiny shape (its published hashes stay the real ones)."""
    monkeypatch.setitem(artifacts.GPT2_HPARAMS, "124M", HPARAMS)


def publish_hashes(monkeypatch, folder: Path, names: dict[str, str]) -> None:
    """Pretend the files of ``folder`` are the published ones: entry ``key`` gets file ``names[key]``'s hash."""
    for key, file in names.items():
        a = artifacts.get_artifact(key)
        sha = hashlib.sha256((folder / file).read_bytes()).hexdigest()
        monkeypatch.setitem(artifacts.REGISTRY, key, dataclasses.replace(a, sha256=sha, size=None))


def standin_folder(model: GPTModel, folder: Path, metrics: dict) -> tuple[Path, str]:
    """A published-stand-in folder (OpenAI layout + metrics.json + SHA256SUMS) and its digest."""
    export_tf_checkpoint(model, folder)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    seal(folder)
    return folder, hashlib.sha256((folder / "SHA256SUMS").read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------- the local stand-in
def test_offline_quick_profile_returns_the_standin_through_the_tf_loader(sandbox):
    model, info = load_pretrained("gpt2-small")
    assert info.source == "standin" and info.is_standin and not info.verified and not info.is_openai
    text = info.describe()
    assert text.startswith("stand-in, NOT GPT-2: a small GPT (2 layers, 128-dim")
    assert "validation loss 6.25" in text and "tinyshakespeare" in text and "153,600 tokens seen" in text
    assert info.path == "models/standin/openai" and info.n_params == sandbox["tiny"].num_parameters()
    exported = sandbox["home"] / "models" / "standin" / "openai"
    assert (exported / "model.ckpt.index").is_file() and (exported / "hparams.json").is_file()
    assert same(model, sandbox["tiny"])
    stamp = (exported / "model.ckpt.index").stat().st_mtime_ns
    load_pretrained("gpt2-small")  # the export is cached
    assert (exported / "model.ckpt.index").stat().st_mtime_ns == stamp


def test_full_profile_offline_is_one_clear_error(sandbox, monkeypatch):
    monkeypatch.setenv("LLM_BOOK_PROFILE", "full")
    with pytest.raises(WeightsUnavailable) as e:
        load_pretrained("gpt2-medium")
    msg = str(e.value)
    assert "GPT-2 355M weights are not available" in msg.splitlines()[0]
    assert "model.ckpt.data-00000-of-00001" in msg and "openaipublic.blob.core.windows.net/gpt-2/models/355M" in msg
    assert "LLM_COMPANION_MIRROR" in msg and weights.GPT2_DIR_ENV in msg and not sandbox["calls"]
    monkeypatch.setenv("LLM_BOOK_PROFILE", "quick")
    with pytest.raises(WeightsUnavailable, match="allow_standin=False asks for the real ones"):
        load_pretrained("gpt2-small", allow_standin=False)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="gpt2-small"):
        load_pretrained("gpt3")


# -------------------------------------------------------------------------------- published stand-ins
def test_pinned_standin_in_the_mirror_is_used_and_described(sandbox, monkeypatch, capsys):
    books = tiny(7)
    folder, digest = standin_folder(books, sandbox["mirror"] / "models" / "books-test",
                                    {"val_loss": 4.41, "tokens_seen": 6_144_000})
    monkeypatch.setattr(artifacts, "PUBLISHED_STANDINS", (PublishedStandin("books-test", digest, "12 test books"),))
    model, info = load_pretrained()
    assert same(model, books) and not sandbox["calls"]  # the local stand-in was never trained
    assert info.name == "books-test" and info.path == "$LLM_COMPANION_MIRROR/models/books-test"
    assert info.is_standin and not info.verified and "pin" in info.check
    assert info.describe() == ("stand-in, NOT GPT-2: a small GPT (2 layers, 128-dim, "
                               f"{books.num_parameters() / 1e6:.1f}M parameters) pretrained by llm_companion on "
                               "12 test books, 6.1M tokens seen, validation loss 4.41, from "
                               "$LLM_COMPANION_MIRROR/models/books-test")
    assert capsys.readouterr().out == ""  # nothing was ignored


def test_unpinned_standin_is_ignored_with_one_line(sandbox, capsys):
    standin_folder(tiny(7), sandbox["mirror"] / "models" / "standin-unlisted", {"val_loss": 1.0})
    _, info = load_pretrained()
    assert info.path == "models/standin/openai" and sandbox["calls"]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "ignoring $LLM_COMPANION_MIRROR/models/standin-unlisted: not a published" in out[0]
    load_pretrained()
    assert capsys.readouterr().out == ""  # said once per process, not at every call


def test_substituted_or_corrupted_pinned_folder_is_ignored(sandbox, monkeypatch, capsys):
    folder, digest = standin_folder(tiny(7), sandbox["mirror"] / "models" / "books-test", {"val_loss": 4.4})
    # substitution: the same name, other weights, a self-consistent SHA256SUMS: caught by the pinned digest
    monkeypatch.setattr(artifacts, "PUBLISHED_STANDINS", (PublishedStandin("books-test", "0" * 64, "x"),))
    _, info = load_pretrained()
    assert info.path == "models/standin/openai"
    assert "SHA256SUMS digest" in capsys.readouterr().out
    # corruption: the pinned SHA256SUMS is intact, a file it lists is not
    monkeypatch.setattr(weights, "_reported", set())
    monkeypatch.setattr(artifacts, "PUBLISHED_STANDINS", (PublishedStandin("books-test", digest, "x"),))
    data = folder / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-4])
    _, info = load_pretrained()
    assert info.path == "models/standin/openai"
    assert "truncated or corrupted" in capsys.readouterr().out


def test_first_pinned_standin_present_wins(sandbox, monkeypatch):
    old, old_digest = standin_folder(tiny(7), sandbox["mirror"] / "models" / "books-v0", {})
    new, new_digest = standin_folder(tiny(8), sandbox["home"] / "models" / "books-v1", {})
    pins = (PublishedStandin("books-v1", new_digest, "v1"), PublishedStandin("books-v0", old_digest, "v0"))
    monkeypatch.setattr(artifacts, "PUBLISHED_STANDINS", pins)
    model, info = load_pretrained()
    assert info.name == "books-v1" and info.path == "models/books-v1" and same(model, tiny(8))
    monkeypatch.setattr(artifacts, "PUBLISHED_STANDINS", pins[::-1])
    _, info = load_pretrained()
    assert info.name == "books-v0"


def test_published_standins_are_well_formed():
    pins = artifacts.PUBLISHED_STANDINS
    assert pins and len({p.folder for p in pins}) == len(pins)
    for p in pins:
        assert len(p.sums_sha256) == 64 and int(p.sums_sha256, 16) >= 0 and p.trained_on


def _mirror_with(folder: str) -> Path | None:
    """The first mirror named by LLM_COMPANION_MIRROR (as CI and `make test` set it) holding models/<folder>."""
    mirrors = [Path(p) for p in REAL_MIRROR_ENV.split(os.pathsep) if p.strip()]
    return next((m for m in mirrors if (m / "models" / folder).is_dir()), None)


@pytest.mark.parametrize("pin", REAL_PINS, ids=[p.folder for p in REAL_PINS])
@pytest.mark.slow
def test_each_published_standin_in_the_mirror_matches_its_pin(pin, sandbox, monkeypatch):
    mirror = _mirror_with(pin.folder)
    if mirror is None:
        pytest.skip(f"no folder in LLM_COMPANION_MIRROR={REAL_MIRROR_ENV!r} "
                    f"holds models/{pin.folder}")
    only = sandbox["tmp"] / "only"  # a mirror holding just this one stand-in
    (only / "models").mkdir(parents=True)
    (only / "models" / pin.folder).symlink_to(mirror / "models" / pin.folder)
    monkeypatch.setenv("LLM_COMPANION_MIRROR", str(only))
    monkeypatch.setattr(artifacts, "PUBLISHED_STANDINS", REAL_PINS)
    model, info = load_pretrained()
    metrics = json.loads((mirror / "models" / pin.folder / "metrics.json").read_text())
    assert info.name == pin.folder and info.config.context_length == 256
    assert pin.trained_on in info.describe() and f"validation loss {metrics['val_loss']:.2f}" in info.describe()
    assert info.n_params == model.num_parameters() and not sandbox["calls"]


@pytest.mark.slow
def test_the_recipes_standin_is_preferred_to_the_interim_one(sandbox, monkeypatch):
    both = [_mirror_with(p.folder) for p in REAL_PINS]
    if None in both:
        pytest.skip("LLM_COMPANION_MIRROR does not hold every published stand-in")
    monkeypatch.setenv("LLM_COMPANION_MIRROR", os.pathsep.join(str(m) for m in dict.fromkeys(both)))
    monkeypatch.setattr(artifacts, "PUBLISHED_STANDINS", REAL_PINS)
    assert REAL_PINS[0].folder == "standin-books-8aa4a3f6af86"
    assert load_pretrained()[1].name == "standin-books-8aa4a3f6af86"


# ------------------------------------------------------------------------------- the reader's own files
def test_own_tf_files_load_unverified_and_say_so(sandbox, as_124m):
    mine = tiny(11)
    export_tf_checkpoint(mine, sandbox["tmp"] / "gpt2" / "124M")
    model, info = load_pretrained("gpt2-small", weights_dir=sandbox["tmp"] / "gpt2")
    assert same(model, mine) and not sandbox["calls"]
    assert info.source == "openai-gpt2" and not info.verified and not info.is_openai and not info.is_standin
    text = info.describe()
    assert text.startswith("UNVERIFIED local GPT-2 files, not known to be OpenAI's: a gpt2-small (124M)-shaped")
    assert "not the published GPT-2 124M file" in text and "OpenAI GPT-2" not in text


def test_own_files_matching_the_published_hashes_load_as_verified(sandbox, as_124m, monkeypatch):
    folder = export_tf_checkpoint(tiny(11), sandbox["tmp"] / "gpt2" / "124M")
    publish_hashes(monkeypatch, folder, {f"gpt2-124M/{f}": f for f in WEIGHT_FILES})
    _, info = load_pretrained("gpt2-small", weights_dir=sandbox["tmp"] / "gpt2")
    assert info.verified and info.is_openai
    assert info.describe().startswith("OpenAI GPT-2 gpt2-small (124M) (2 layers, 128-dim")
    assert "sha256 of every weight file matches the published hashes" in info.describe()
    assert "UNVERIFIED" not in info.describe()


@pytest.mark.parametrize("sub", ["124M", "gpt2"])
def test_hugging_face_files_in_either_folder_name(sandbox, as_124m, monkeypatch, sub):
    hf = hf_gpt2(CFG, seed=3)
    folder = sandbox["tmp"] / "mine" / sub
    hf.save_pretrained(folder, safe_serialization=True)
    model, info = load_pretrained("gpt2", weights_dir=sandbox["tmp"] / "mine")
    assert info.source == "hf-safetensors" and not info.verified and info.path.endswith(f"{sub}/model.safetensors")
    ids = torch.randint(0, CFG.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(ids).logits, atol=1e-5)
    publish_hashes(monkeypatch, folder, {"gpt2-124M-hf/model.safetensors": "model.safetensors",
                                         "gpt2-124M-hf/config.json": "config.json"})
    _, info = load_pretrained("gpt2", weights_dir=sandbox["tmp"] / "mine")
    assert info.verified and info.describe().startswith("OpenAI GPT-2 gpt2-small (124M)")


def test_a_folder_holding_one_checkpoint_directly_is_accepted(sandbox, as_124m):
    mine = tiny(12)
    export_tf_checkpoint(mine, sandbox["tmp"] / "just-these")
    model, _ = load_pretrained(weights_dir=sandbox["tmp"] / "just-these")
    assert same(model, mine)


@pytest.mark.parametrize("missing", WEIGHT_FILES)
def test_partial_folder_names_the_missing_file(sandbox, as_124m, missing):
    folder = export_tf_checkpoint(tiny(11), sandbox["tmp"] / "gpt2" / "124M")
    (folder / missing).unlink()
    with pytest.raises(WeightsDirError) as e:
        load_pretrained(weights_dir=sandbox["tmp"] / "gpt2")
    msg = str(e.value)
    assert f"{folder} is incomplete: {missing} missing" in msg and len(msg.splitlines()) == 1
    assert not sandbox["calls"]  # an explicit folder never falls back to the stand-in


def test_missing_folder_or_size_is_one_clear_error(sandbox, as_124m):
    with pytest.raises(WeightsDirError, match="is not a folder"):
        load_pretrained(weights_dir=sandbox["tmp"] / "nowhere")
    export_tf_checkpoint(tiny(11), sandbox["tmp"] / "gpt2" / "124M")
    with pytest.raises(WeightsDirError, match=r"has no GPT-2 355M files: looked in 355M/, gpt2-medium/"):
        load_pretrained("gpt2-medium", weights_dir=sandbox["tmp"] / "gpt2")
    (sandbox["tmp"] / "hf" / "gpt2").mkdir(parents=True)
    (sandbox["tmp"] / "hf" / "gpt2" / "config.json").write_text("{}")
    with pytest.raises(WeightsDirError, match="model.safetensors is missing"):
        load_pretrained(weights_dir=sandbox["tmp"] / "hf")


def test_files_of_another_shape_are_refused(sandbox):
    export_tf_checkpoint(tiny(11), sandbox["tmp"] / "gpt2" / "124M")  # tiny, but 124M is the real shape here
    with pytest.raises(WeightsDirError, match=r"holds a model of 2 layers, 128-dim.*not GPT-2 124M's 12 layers"):
        load_pretrained(weights_dir=sandbox["tmp"] / "gpt2")


def test_argument_wins_over_the_environment_variable(sandbox, as_124m, monkeypatch):
    a, b = tiny(21), tiny(22)
    export_tf_checkpoint(a, sandbox["tmp"] / "env" / "124M")
    export_tf_checkpoint(b, sandbox["tmp"] / "arg" / "124M")
    monkeypatch.setenv(weights.GPT2_DIR_ENV, str(sandbox["tmp"] / "env"))
    model, info = load_pretrained()
    assert same(model, a) and info.path == "$LLM_COMPANION_GPT2_DIR/124M"
    model, info = load_pretrained(weights_dir=sandbox["tmp"] / "arg")
    assert same(model, b) and info.path == f"{sandbox['tmp'] / 'arg'}/124M"


def test_an_empty_environment_folder_is_an_error_not_the_standin(sandbox, monkeypatch):
    (sandbox["tmp"] / "empty").mkdir()
    monkeypatch.setenv(weights.GPT2_DIR_ENV, str(sandbox["tmp"] / "empty"))
    with pytest.raises(WeightsDirError, match="has no GPT-2 124M files"):
        load_pretrained()
    assert not sandbox["calls"]


def test_hashes_of_own_files_are_cached_until_a_file_changes(sandbox, as_124m, monkeypatch):
    folder = export_tf_checkpoint(tiny(11), sandbox["tmp"] / "gpt2" / "124M")
    publish_hashes(monkeypatch, folder, {f"gpt2-124M/{f}": f for f in WEIGHT_FILES})
    hashed = []
    real = download.sha256_of
    monkeypatch.setattr(download, "sha256_of", lambda p: hashed.append(Path(p).name) or real(p))
    assert load_pretrained(weights_dir=sandbox["tmp"] / "gpt2")[1].verified
    assert sorted(hashed) == sorted(WEIGHT_FILES)
    hashed.clear()
    assert load_pretrained(weights_dir=sandbox["tmp"] / "gpt2")[1].verified and hashed == []
    hparams = folder / "hparams.json"
    hparams.write_text(json.dumps(HPARAMS))  # the same settings, other bytes: no longer the published file
    _, info = load_pretrained(weights_dir=sandbox["tmp"] / "gpt2")
    assert not info.verified and "hparams.json is not the published" in info.check
    assert hashed == ["hparams.json"]  # only the changed file was hashed again


def test_own_folder_never_loosens_the_registry(sandbox, as_124m):
    # the same unpublished files in the mirror's gpt2/124M/ are refused by the registry's 124M hashes …
    folder = export_tf_checkpoint(tiny(11), sandbox["mirror"] / "gpt2" / "124M")
    _, info = load_pretrained()
    assert info.is_standin
    # … and through weights_dir they load, but only as unverified
    _, info = load_pretrained(weights_dir=folder.parent)
    assert not info.verified and info.source == "openai-gpt2"


# ------------------------------------------------------------------------------------- the registry
def test_registry_weights_win_over_the_standin(sandbox, monkeypatch):
    # HF safetensors of "gpt2-large" in the mirror (its registry entry has no hash, so any place-matched file
    # that parses is taken; the loader's checks guard the rest)
    hf = hf_gpt2(CFG, seed=3)
    hf.save_pretrained(sandbox["mirror"] / "gpt2-hf" / "gpt2-large", safe_serialization=True)
    model, info = load_pretrained("gpt2-large")
    assert info.source == "hf-safetensors" and info.path == "models/gpt2-hf/gpt2-large/model.safetensors"
    assert info.verified and "OpenAI GPT-2 gpt2-large (774M)" in info.describe() and not sandbox["calls"]
    assert "checked by format and shape only" in info.check
    # …and OpenAI's TF checkpoint is preferred to both (hparams check relaxed to the tiny model's)
    monkeypatch.setitem(artifacts.GPT2_HPARAMS, "774M", HPARAMS)
    tf_dir = export_tf_checkpoint(tiny(4), sandbox["mirror"] / "gpt2" / "774M")
    (tf_dir / "encoder.json").write_text("{}")
    (tf_dir / "vocab.bpe").write_text("#version: 0.2\n")
    model, info = load_pretrained("gpt2-large")
    assert info.source == "openai-gpt2" and info.path == "models/gpt2/774M" and same(model, tiny(4))


def test_registry_124m_files_need_the_published_sha256():
    for f in artifacts.GPT2_CHECKPOINT_FILES:
        assert len(artifacts.get_artifact(f"gpt2-124M/{f}").sha256 or "") == 64, f
    assert artifacts.get_artifact("gpt2-124M/hparams.json").sha256 == hashlib.sha256(
        (json.dumps(artifacts.GPT2_HPARAMS["124M"], indent=2) + "\n").encode()).hexdigest()


def test_unhashed_mirror_files_are_taken_only_from_their_own_place(sandbox):
    src = export_tf_checkpoint(tiny(4), sandbox["tmp"] / "src")
    elsewhere = sandbox["mirror"] / "models" / "other"
    elsewhere.mkdir(parents=True)
    (elsewhere / "model.ckpt.index").write_bytes((src / "model.ckpt.index").read_bytes())
    with pytest.raises(download.ArtifactUnavailable):
        artifacts.fetch("gpt2-774M/model.ckpt.index")
    (sandbox["mirror"] / "gpt2" / "774M").mkdir(parents=True)
    (sandbox["mirror"] / "gpt2" / "774M" / "model.ckpt.index").write_bytes((src / "model.ckpt.index").read_bytes())
    assert artifacts.fetch("gpt2-774M/model.ckpt.index").parent == sandbox["home"] / "models" / "gpt2" / "774M"


def test_wrong_hparams_are_rejected_by_the_registry_check(sandbox):
    export_tf_checkpoint(tiny(4), sandbox["mirror"] / "gpt2" / "1558M")  # no published size: the content decides
    with pytest.raises(download.ArtifactUnavailable, match="'n_embd': 128.*expected.*'n_embd': 1600"):
        artifacts.fetch("gpt2-1558M/hparams.json")


def test_registry_lists_every_gpt2_file(capsys):
    from llm_companion.cli import main

    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    for size in ("124M", "355M", "774M", "1558M"):
        for f in artifacts.GPT2_CHECKPOINT_FILES:
            assert f"gpt2-{size}/{f} " in out
        assert f"gpt2-{size}-hf/model.safetensors " in out and f"gpt2-{size}-hf/config.json " in out
    data = artifacts.get_artifact("gpt2-124M/model.ckpt.data-00000-of-00001")
    assert data.size == 497759232 and data.urls[0].startswith("https://openaipublic.blob.core.windows.net/gpt-2/")
    assert data.urls[1].startswith("https://f001.backblazeb2.com/") and data.path.parts[-3:] == (
        "gpt2", "124M", "model.ckpt.data-00000-of-00001")
    st = artifacts.get_artifact("gpt2-124M-hf/model.safetensors")
    assert st.sha256.startswith("248dfc39") and st.size == 548105171


def test_folder_format_tells_the_three_layouts_apart(tmp_path):
    def folder(name, *files):
        d = tmp_path / name
        d.mkdir()
        for f in files:
            (d / f).write_text("x")
        return d

    assert weights.folder_format(folder("openai", *weights.OPENAI_WEIGHT_FILES)) == "openai-gpt2"
    assert weights.folder_format(folder("saved", "model.safetensors", "config.json", "SHA256SUMS")) == "saved"
    assert weights.folder_format(folder("hf", "model.safetensors", "config.json")) == "hf-safetensors"
    assert weights.folder_format(folder("partial", "hparams.json")) is None
    assert weights.folder_format(tmp_path / "missing") is None
