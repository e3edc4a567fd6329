"""Which weights chapters 5–7 get: the policy on top of :mod:`llm_companion.models.openai_checkpoint`'s formats.

:func:`load_pretrained` is the one call chapters 5–7 use. In order, it takes

1. the reader's own GPT-2 files, when ``weights_dir=`` or ``LLM_COMPANION_GPT2_DIR`` names a folder
   (see :func:`gpt2_dir_files`): loaded after the shape checks, and marked **verified** only when their
   sha256 matches the registry's published hashes;
2. OpenAI's TF checkpoint, then Hugging Face's safetensors, through the registry (``models/``, a mirror, the
   download URL; every file checked as :mod:`llm_companion.data.artifacts` says);
3. in the quick profile only, a **stand-in**: the first published one of
   :data:`~llm_companion.data.artifacts.PUBLISHED_STANDINS` found in ``models/`` or a mirror whose ``SHA256SUMS``
   digest matches its pin, else a small one the library trains itself — exported to OpenAI's layout and read
   back through the very same loader.

:class:`WeightsInfo` records what ran, and :meth:`WeightsInfo.describe` says it in one line.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_companion import profiles as profile
from llm_companion.atomic import publish_dir, temp_dir_beside
from llm_companion.data import artifacts
from llm_companion.data.artifacts import (
    GPT2_CHECKPOINT_FILES,
    GPT2_HF_REPOS,
    GPT2_HPARAMS,
    PublishedStandin,
    fetch,
    get_artifact,
)
from llm_companion.data.download import (
    MIRROR_ENV,
    ArtifactUnavailable,
    mirror_dirs,
    models_dir,
    project_home,
    remembered_sha256,
)
from llm_companion.models.checkpoint import SUMS, CheckpointError, load_model, verify_dir
from llm_companion.models.config import GPTConfig
from llm_companion.models.gpt import GPTModel
from llm_companion.models.hf_convert import config_from_hf
from llm_companion.models.openai_checkpoint import (
    SIZES,
    TensorFlowMissing,
    config_from_hparams,
    from_safetensors,
    from_tf_checkpoint,
    write_tf_checkpoint,
)
from llm_companion.training import pretrain

GPT2_DIR_ENV = "LLM_COMPANION_GPT2_DIR"
# what the loaders read from each layout; the other files (checkpoint, model.ckpt.meta, the tokenizer) are
# not needed to load the weights
OPENAI_WEIGHT_FILES = ("hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001")
HF_WEIGHT_FILE = "model.safetensors"


class WeightsUnavailable(ArtifactUnavailable):
    """Real GPT-2 weights could not be obtained and the stand-in is not allowed."""


class WeightsDirError(WeightsUnavailable):
    """The reader's GPT-2 folder (``weights_dir`` / ``LLM_COMPANION_GPT2_DIR``) cannot be used as it is."""


# ------------------------------------------------------------------------------------------ WeightsInfo
@dataclass(frozen=True)
class WeightsInfo:
    """Which weights :func:`load_pretrained` returned, and what to expect of them."""

    source: str                 # "openai-gpt2" (TF layout) | "hf-safetensors" | "standin"
    name: str                   # e.g. "gpt2-small (124M)", "books-gpt-mini-v0" or "standin"
    requested: str              # the name load_pretrained was asked for
    path: str                   # where they were read from, relative to the project (or the mirror)
    n_params: int
    config: GPTConfig
    metrics: dict[str, Any] = field(default_factory=dict)  # the stand-in's train/val loss, …
    reason: str = ""            # why the stand-in ran instead of GPT-2
    local_path: Path | None = field(default=None, repr=False, compare=False)  # ``path``, absolute
    verified: bool = False      # GPT-2 files that passed the registry's checks (sha256 where one is published)
    check: str = ""             # how the files were checked (or why they count as unverified)
    trained_on: str = ""        # a stand-in's training data, in words

    @property
    def is_standin(self) -> bool:
        return self.source == "standin"

    @property
    def is_openai(self) -> bool:
        """True only for GPT-2 files known to be OpenAI's: not the stand-in, not unverified local files."""
        return not self.is_standin and self.verified

    def describe(self) -> str:
        """One line a reader can trust: what ran, from where, and how good it is."""
        c = self.config
        size = f"{c.n_layers} layers, {c.emb_dim}-dim, {self.n_params / 1e6:.1f}M parameters"
        if not self.is_standin:
            how = "OpenAI's TF checkpoint layout" if self.source == "openai-gpt2" else "Hugging Face safetensors"
            if self.verified:
                return f"OpenAI GPT-2 {self.name} ({size}) from {how} at {self.path} ({self.check})"
            return (f"UNVERIFIED local GPT-2 files, not known to be OpenAI's: a {self.name}-shaped model ({size}) "
                    f"in {how} at {self.path}; {self.check}")
        m = self.metrics
        corpus = m.get("corpus")  # pretrain records {artifact name: sha256}
        data = self.trained_on or (", ".join(corpus) if isinstance(corpus, dict) else str(corpus or ""))
        tokens = m.get("tokens_seen")
        seen = (f", {tokens / 1e6:.1f}M tokens seen" if tokens >= 1e6 else f", {tokens:,} tokens seen"
                ) if isinstance(tokens, int) else ""
        val = m.get("val_loss")
        loss = f", validation loss {val:.2f}" if isinstance(val, (int, float)) else ""
        on = f" on {data}{seen}" if data else ""
        return f"stand-in, NOT GPT-2: a small GPT ({size}) pretrained by llm_companion{on}{loss}, from {self.path}"


def _size_of(name: str) -> str:
    key = name.strip().lower()
    if key in SIZES:
        return SIZES[key]
    if key == "gpt2":
        return "124M"
    for size in SIZES.values():
        if key in (size.lower(), f"gpt2-{size.lower()}"):
            return size
    raise ValueError(f"unknown GPT-2 model {name!r}; use one of {', '.join(SIZES)} (or 124M, 355M, 774M, 1558M)")


def _display(path: Path, extra_roots: tuple[tuple[Path, str], ...] = ()) -> str:
    path = path.resolve()
    roots = [*extra_roots, (project_home(), ""), *((m.resolve(), f"${MIRROR_ENV}/") for m in mirror_dirs())]
    for root, label in roots:
        try:
            return label + str(path.relative_to(root.resolve()))
        except ValueError:
            continue
    return path.name


# ------------------------------------------------------------------------- the reader's own GPT-2 files
def cached_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered by (size, mtime) in a stamp under ``models/.sha256/``.

    A 500 MB checkpoint takes seconds to hash; a reader's folder may be read-only, so the stamp lives in
    ``models/`` rather than beside the file (:func:`~llm_companion.data.download.remembered_sha256` does both).
    """
    path = path.resolve()
    name = hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:16]
    return remembered_sha256(path, models_dir() / ".sha256" / f"{name}-{path.name}.json")


def folder_format(folder: Path) -> str | None:
    """Which checkpoint layout ``folder`` holds, by its files; the one test :func:`load_pretrained` and
    ``llm-companion generate`` share.

    ``"openai-gpt2"``: OpenAI's (``hparams.json``, ``model.ckpt.index``, ``model.ckpt.data-00000-of-00001``);
    ``"saved"``: :func:`~llm_companion.models.checkpoint.save_model`'s (``model.safetensors``, ``config.json``,
    ``SHA256SUMS``); ``"hf-safetensors"``: a Hugging Face ``model.safetensors``; ``None``: none of them.
    """
    has = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
    if set(OPENAI_WEIGHT_FILES) <= has:
        return "openai-gpt2"
    if {HF_WEIGHT_FILE, "config.json", SUMS} <= has:
        return "saved"
    if HF_WEIGHT_FILE in has:
        return "hf-safetensors"
    return None


def gpt2_dir_files(root: Path, size: str) -> tuple[str, Path]:
    """The GPT-2 ``size`` files in a reader's folder ``root``: ``("openai-gpt2" | "hf-safetensors", folder)``.

    Looked for in ``root/<size>/`` (OpenAI's names: ``124M``, ``355M``, …), then ``root/<HF repo>/`` (Hugging
    Face's: ``gpt2``, ``gpt2-medium``, …), then ``root`` itself; each may hold OpenAI's layout
    (``hparams.json``, ``model.ckpt.index``, ``model.ckpt.data-00000-of-00001``; the other four files are
    optional) or Hugging Face's (``model.safetensors``, optionally ``config.json``). Raises
    :class:`WeightsDirError` naming the missing files when no folder holds a complete set.
    """
    if not root.is_dir():
        raise WeightsDirError(f"{root} is not a folder; weights_dir / {GPT2_DIR_ENV} must name a folder holding "
                              f"{size}/ (OpenAI's files, or model.safetensors + config.json)")
    weight_like = {*OPENAI_WEIGHT_FILES, "model.ckpt.meta", "checkpoint", HF_WEIGHT_FILE, "config.json"}
    for folder in (root / size, root / GPT2_HF_REPOS[size], root):
        if not folder.is_dir():
            continue
        has = {p.name for p in folder.iterdir() if p.is_file()}
        if folder == root and not has & weight_like:
            continue  # a parent of per-size folders, not a checkpoint itself
        fmt = folder_format(folder)
        if fmt is not None:  # a save_model folder is read as safetensors, and its config.json must then fit
            return ("openai-gpt2" if fmt == "openai-gpt2" else "hf-safetensors"), folder
        if "config.json" in has and not has & {*OPENAI_WEIGHT_FILES, "model.ckpt.meta"}:
            raise WeightsDirError(f"{folder} is incomplete: {HF_WEIGHT_FILE} is missing beside its config.json")
        missing = [f for f in OPENAI_WEIGHT_FILES if f not in has]
        raise WeightsDirError(f"{folder} is incomplete: {', '.join(missing)} missing (OpenAI's layout needs "
                              f"{', '.join(OPENAI_WEIGHT_FILES)}; Hugging Face's needs {HF_WEIGHT_FILE})")
    raise WeightsDirError(f"{root} has no GPT-2 {size} files: looked in {size}/, {GPT2_HF_REPOS[size]}/ and the "
                          f"folder itself for OpenAI's {', '.join(OPENAI_WEIGHT_FILES)} or Hugging Face's "
                          f"{HF_WEIGHT_FILE}; add them, or unset {GPT2_DIR_ENV} to use the usual sources")


def _shape_of(cfg: GPTConfig) -> str:
    return f"{cfg.n_layers} layers, {cfg.emb_dim}-dim, {cfg.n_heads} heads, context {cfg.context_length}, " \
           f"vocabulary {cfg.vocab_size}"


def _check_shape(cfg: GPTConfig, size: str, where: Path) -> None:
    want = config_from_hparams(GPT2_HPARAMS[size])
    fields = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers")
    if any(getattr(cfg, f) != getattr(want, f) for f in fields):
        raise WeightsDirError(f"{where} holds a model of {_shape_of(cfg)}, not GPT-2 {size}'s {_shape_of(want)}; "
                              f"ask load_pretrained for the size these files are, or put GPT-2 {size}'s files there")


def _published_match(size: str, source: str, folder: Path) -> tuple[bool, str]:
    """``(verified, how in words)``: do the weight-bearing files match the registry's published sha256?"""
    if source == "openai-gpt2":
        names = [(f"gpt2-{size}/{f}", folder / f) for f in OPENAI_WEIGHT_FILES]
    else:
        names = [(f"gpt2-{size}-hf/{HF_WEIGHT_FILE}", folder / HF_WEIGHT_FILE)]
        if (folder / "config.json").is_file():  # it decides the model's settings, so it must match too
            names.append((f"gpt2-{size}-hf/config.json", folder / "config.json"))
    for artifact_name, file in names:
        a = get_artifact(artifact_name)
        if a.sha256 is None:
            return False, f"no sha256 is published for GPT-2 {size}'s {file.name}, so they cannot be checked"
        if (a.size is not None and file.stat().st_size != a.size) or cached_sha256(file) != a.sha256:
            return False, f"{file.name} is not the published GPT-2 {size} file (sha256 differs)"
    return True, "sha256 of every weight file matches the published hashes"


def _load_from_dir(root: Path, size: str, from_env: bool) -> tuple[GPTModel, str, Path, bool, str, str]:
    source, folder = gpt2_dir_files(root, size)
    if source == "openai-gpt2":
        try:
            settings = json.loads((folder / "hparams.json").read_text(encoding="utf-8"))
            cfg = config_from_hparams(settings)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise WeightsDirError(f"{folder / 'hparams.json'} is not an OpenAI hparams.json ({e})") from None
        _check_shape(cfg, size, folder / "hparams.json")
        verified, check = _published_match(size, source, folder)
        model, path = from_tf_checkpoint(folder), folder
    else:
        path, config_file = folder / HF_WEIGHT_FILE, folder / "config.json"
        if config_file.is_file():  # checked before the big file is read
            try:
                cfg = config_from_hf(json.loads(config_file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, ValueError) as e:  # ConversionError is a ValueError
                raise WeightsDirError(f"{config_file} is not a Hugging Face GPT-2 config.json ({e})") from None
            _check_shape(cfg, size, config_file)
        verified, check = _published_match(size, source, folder)
        model = from_safetensors(path)
        _check_shape(model.cfg, size, path)
    label = (root.resolve(), f"${GPT2_DIR_ENV}/" if from_env else f"{root}/")
    return model, source, path, verified, check, _display(path, (label,))


# ----------------------------------------------------------------------------------- registry GPT-2
def _load_openai(size: str, offline: bool | None) -> tuple[GPTModel, Path, list[str]]:
    # hparams.json first: it is tiny, so an offline machine learns quickly that the rest is out of reach
    order = ["hparams.json", *(f for f in GPT2_CHECKPOINT_FILES if f != "hparams.json")]
    paths = [fetch(f"gpt2-{size}/{f}", offline=offline) for f in order]
    folder = paths[0].parent
    return from_tf_checkpoint(folder), folder, [f"gpt2-{size}/{f}" for f in OPENAI_WEIGHT_FILES]


def _load_hf(size: str, offline: bool | None) -> tuple[GPTModel, Path, list[str]]:
    fetch(f"gpt2-{size}-hf/config.json", offline=offline)
    file = fetch(f"gpt2-{size}-hf/{HF_WEIGHT_FILE}", offline=offline)
    return from_safetensors(file), file, [f"gpt2-{size}-hf/{HF_WEIGHT_FILE}", f"gpt2-{size}-hf/config.json"]


def _registry_check(names: list[str]) -> str:
    """How :func:`~llm_companion.data.artifacts.fetch` checked these files, in words."""
    if all(get_artifact(n).sha256 for n in names):
        return "sha256 of every weight file matches the published hashes"
    if all(get_artifact(n).size for n in names):
        return "sizes match the published ones; no sha256 is published for this size"
    return "no sha256 or size is published for this size: checked by format and shape only"


# ---------------------------------------------------------------------------------------- stand-ins
_reported: set[str] = set()


def _note(key: str, message: str) -> None:
    """Print ``message`` once per process (a chapter calls load_pretrained several times)."""
    if key not in _reported:
        _reported.add(key)
        print(message)


def _pin_problem(folder: Path, pin: PublishedStandin) -> str | None:
    sums = folder / SUMS
    if not sums.is_file():
        return f"it has no {SUMS}"
    digest = hashlib.sha256(sums.read_bytes()).hexdigest()
    if digest != pin.sums_sha256:
        return f"its {SUMS} digest {digest[:12]}… is not the pinned {pin.sums_sha256[:12]}…"
    listed = {line.split(maxsplit=1)[1] for line in sums.read_text().splitlines() if line.strip()}
    unlisted = [f for f in OPENAI_WEIGHT_FILES if f not in listed]
    if unlisted:
        return f"its {SUMS} does not cover {', '.join(unlisted)}"
    try:
        verify_dir(folder)
    except CheckpointError as e:
        return str(e)
    return None


def published_standin() -> tuple[Path, PublishedStandin] | None:
    """The first entry of :data:`~llm_companion.data.artifacts.PUBLISHED_STANDINS` present and intact, with its folder.

    Looked for in ``models/`` and then each mirror's ``models/``. A pinned folder whose bytes differ from its
    pin, and any other stand-in-like folder (one with a ``SHA256SUMS``) in a mirror's ``models/``, is ignored
    with a one-line message.
    """
    roots = [models_dir(), *(m / "models" for m in mirror_dirs())]
    pins = artifacts.PUBLISHED_STANDINS
    found = None
    for pin in pins:
        for root in roots:
            folder = root / pin.folder
            if not folder.is_dir():
                continue
            problem = _pin_problem(folder, pin)
            if problem is None:
                found = found or (folder, pin)
                break
            _note(str(folder), f"ignoring the stand-in {_display(folder)}: {problem}")
        if found:
            break
    pinned_names = {p.folder for p in pins}
    for mirror in mirror_dirs():
        for folder in sorted((mirror / "models").glob("*/")):
            if folder.name not in pinned_names and (folder / SUMS).is_file():
                _note(str(folder), f"ignoring {_display(folder)}: not a published stand-in (its {SUMS} digest is "
                                   f"not pinned in llm_companion.data.artifacts.PUBLISHED_STANDINS)")
    return found


def _read_metrics(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def _local_standin_folder() -> tuple[Path, dict[str, Any]]:
    """The library's own stand-in (trained if missing), exported to OpenAI's layout once per version."""
    source = Path(pretrain.ensure_standin())
    verify_dir(source)
    digest = hashlib.sha256((source / SUMS).read_bytes()).hexdigest()
    folder = source / "openai"
    stamp = folder / "SOURCE.sha256"  # which stand-in the export was made from

    def current() -> bool:
        return stamp.is_file() and stamp.read_text().strip() == digest

    if not current():
        tmp = temp_dir_beside(folder)
        try:
            write_tf_checkpoint(load_model(source), tmp, tokenizer_files=True)
            (tmp / stamp.name).write_text(digest + "\n")  # inside before publishing: export and stamp appear together
            publish_dir(tmp, folder)
        except OSError:
            if not current():  # unless another process published the same export meanwhile
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder, _read_metrics(source)


# ---------------------------------------------------------------------------------- load_pretrained
def load_pretrained(name: str = "gpt2-small", *, weights_dir: str | os.PathLike | None = None,
                    allow_standin: bool | None = None, offline: bool | None = None) -> tuple[GPTModel, WeightsInfo]:
    """GPT-2 ``name`` (``gpt2-small`` … ``gpt2-xl``) in eval mode, and a :class:`WeightsInfo` saying what ran.

    ``weights_dir`` (else ``$LLM_COMPANION_GPT2_DIR``) names a folder of the reader's own GPT-2 files (see
    :func:`gpt2_dir_files`); they load after the shape checks, as verified GPT-2 only when they match the
    published sha256, and a missing or partial folder raises :class:`WeightsDirError` (no fallback). Without
    it: OpenAI's TF checkpoint (local copy, mirror, then download), then Hugging Face's safetensors; when
    neither can be had and ``allow_standin`` (default: only in the quick profile), the stand-in — read through
    the same TF-checkpoint loader. Otherwise raises :class:`WeightsUnavailable` naming the files, the URLs
    tried and how to provide them.
    """
    size = _size_of(name)
    label = next(k for k, v in SIZES.items() if v == size)
    env = os.environ.get(GPT2_DIR_ENV, "").strip()
    if weights_dir is not None or env:
        root = Path(weights_dir if weights_dir is not None else env).expanduser()
        model, source, path, verified, check, shown = _load_from_dir(root, size, from_env=weights_dir is None)
        info = WeightsInfo(source, f"{label} ({size})", name, shown, model.num_parameters(), model.cfg,
                           local_path=path, verified=verified, check=check)
        return model, info

    allow = profile.is_quick() if allow_standin is None else allow_standin
    failures: list[str] = []
    for source, loader in (("openai-gpt2", _load_openai), ("hf-safetensors", _load_hf)):
        try:
            model, path, names = loader(size, offline)
        except (ArtifactUnavailable, TensorFlowMissing) as e:
            failures.append(str(e))
            continue
        info = WeightsInfo(source, f"{label} ({size})", name, _display(path), model.num_parameters(), model.cfg,
                           local_path=path, verified=True, check=_registry_check(names))
        return model, info
    if not allow:
        raise _unavailable(size, allow_standin, failures)
    return _load_standin(name, size, allow_standin, failures)


def _unavailable(size: str, allow_standin: bool | None, failures: list[str]) -> WeightsUnavailable:
    folder = get_artifact(f"gpt2-{size}/hparams.json").path.parent
    needs = (f"the {profile.current()} profile needs the real ones" if allow_standin is None
             else "allow_standin=False asks for the real ones")
    return WeightsUnavailable(
        f"GPT-2 {size} weights are not available and {needs}. "
        f"Provide OpenAI's seven files ({', '.join(GPT2_CHECKPOINT_FILES)}) in {_display(folder)}/ "
        f"(from https://openaipublic.blob.core.windows.net/gpt-2/models/{size}/), or "
        f"openai-community's model.safetensors + config.json, or set {GPT2_DIR_ENV} to a folder holding "
        f"{size}/ with your own copy, or set LLM_COMPANION_MIRROR to a folder holding them; the stand-in "
        f"(LLM_BOOK_PROFILE=quick, or allow_standin=True) is the alternative."
        f"\nWhat was tried:\n" + "\n".join(failures))


def _load_standin(name: str, size: str, allow_standin: bool | None,
                  failures: list[str]) -> tuple[GPTModel, WeightsInfo]:
    """The stand-in in GPT-2's place: a pinned published one if present, else the library's own."""
    published = published_standin()
    if published is not None:
        folder, pin = published
        metrics, trained_on, standin_name = _read_metrics(folder), pin.trained_on, pin.folder
        check = f"its {SUMS} digest matches its pin in PUBLISHED_STANDINS"
    else:
        folder, metrics = _local_standin_folder()
        trained_on, standin_name = "", folder.parent.name
        check = f"trained by this machine's llm_companion; {SUMS} verified"
    model = from_tf_checkpoint(folder)  # the stand-in takes the same road as OpenAI's files
    download = "skipped (offline)" if any("skipped (offline)" in f for f in failures) else "failed"
    allowed = f"the {profile.current()} profile allows" if allow_standin is None else "allow_standin=True allows"
    reason = (f"GPT-2 {size} is not in models/ or a mirror and its download {download}, and {allowed} the "
              f"stand-in")
    info = WeightsInfo("standin", standin_name, name, _display(folder), model.num_parameters(), model.cfg, metrics,
                       reason, local_path=folder, verified=False, check=check, trained_on=trained_on)
    return model, info
