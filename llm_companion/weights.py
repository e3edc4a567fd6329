"""Which weights chapters 5–7 get: the policy on top of :mod:`llm_companion.gpt2`'s formats.

:func:`load_pretrained` is the one call chapters 5–7 use: it returns real GPT-2 when the files can be had,
and otherwise — in the quick profile only — an honest stand-in trained by the library, exported to OpenAI's
layout and read back through the very same loader. :class:`WeightsInfo` records what ran.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import profile
from .artifacts import GPT2_CHECKPOINT_FILES, ArtifactUnavailable, fetch, get_artifact, mirror_dirs, project_home
from .checkpoint import CheckpointError, load_model, publish_dir, verify_dir
from .config import GPTConfig
from .gpt2 import (SIZES, TensorFlowMissing, checkpoint_prefix, from_safetensors, from_tf_checkpoint,
                   temp_dir_beside, write_tf_checkpoint)
from .model import GPTModel


class WeightsUnavailable(ArtifactUnavailable):
    """Real GPT-2 weights could not be obtained and the stand-in is not allowed."""


# -------------------------------------------------------------------------------------- load_pretrained
@dataclass(frozen=True)
class WeightsInfo:
    """Which weights :func:`load_pretrained` returned, and what to expect of them."""

    source: str                 # "openai-gpt2" | "hf-safetensors" | "standin"
    name: str                   # e.g. "gpt2-small (124M)" or "standin"
    requested: str              # the name load_pretrained was asked for
    path: str                   # where they were read from, relative to the project (or the mirror)
    n_params: int
    config: GPTConfig
    metrics: dict[str, Any] = field(default_factory=dict)  # the stand-in's train/val loss, …
    reason: str = ""            # why the stand-in ran instead of GPT-2
    local_path: Path | None = field(default=None, repr=False, compare=False)  # ``path``, absolute

    @property
    def is_standin(self) -> bool:
        return self.source == "standin"

    def describe(self) -> str:
        """One line a reader can trust: what ran, from where, and how good it is."""
        c = self.config
        size = f"{c.n_layers} layers, {c.emb_dim}-dim, {self.n_params / 1e6:.1f}M parameters"
        if not self.is_standin:
            how = "OpenAI's TF checkpoint" if self.source == "openai-gpt2" else "Hugging Face safetensors"
            return f"OpenAI GPT-2 {self.name} ({size}) from {how} at {self.path}"
        val = self.metrics.get("val_loss")
        loss = f", validation loss {val:.2f}" if isinstance(val, (int, float)) else ""
        corpus = self.metrics.get("corpus")  # pretrain records {artifact name: sha256}
        data = f" on {', '.join(corpus) if isinstance(corpus, dict) else corpus}" if corpus else ""
        return (f"stand-in, NOT GPT-2: a small GPT ({size}) pretrained by llm_companion{data}{loss}, "
                f"from {self.path}; expect locally plausible but mostly meaningless text")


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


def _display(path: Path) -> str:
    path = path.resolve()
    for root, label in [(project_home(), ""), *((m.resolve(), "$LLM_COMPANION_MIRROR/") for m in mirror_dirs())]:
        try:
            return label + str(path.relative_to(root))
        except ValueError:
            continue
    return path.name


def _load_openai(size: str, offline: bool | None) -> tuple[GPTModel, Path]:
    # hparams.json first: it is tiny, so an offline machine learns quickly that the rest is out of reach
    order = ["hparams.json", *(f for f in GPT2_CHECKPOINT_FILES if f != "hparams.json")]
    paths = [fetch(f"gpt2-{size}/{f}", offline=offline) for f in order]
    folder = paths[0].parent
    return from_tf_checkpoint(folder), folder


def _load_hf(size: str, offline: bool | None) -> tuple[GPTModel, Path]:
    fetch(f"gpt2-{size}-hf/config.json", offline=offline)
    file = fetch(f"gpt2-{size}-hf/model.safetensors", offline=offline)
    return from_safetensors(file), file


def _prebuilt_standin() -> Path | None:
    """A verified ``models/standin-*/`` folder (OpenAI layout + SHA256SUMS) in a mirror, newest name first."""
    for mirror in mirror_dirs():
        for folder in sorted((mirror / "models").glob("standin-*"), reverse=True):
            try:
                verify_dir(folder)
                checkpoint_prefix(folder)
            except CheckpointError:
                continue
            return folder
    return None


def _read_metrics(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def _standin_openai_folder() -> tuple[Path, dict[str, Any]]:
    """The stand-in in OpenAI's layout: a prebuilt one from the mirror, else our own (trained if missing)."""
    prebuilt = _prebuilt_standin()
    if prebuilt is not None:
        return prebuilt, _read_metrics(prebuilt)
    from . import pretrain

    source = Path(pretrain.ensure_standin())
    verify_dir(source)
    digest = hashlib.sha256((source / "SHA256SUMS").read_bytes()).hexdigest()
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


def load_pretrained(name: str = "gpt2-small", *, allow_standin: bool | None = None,
                    offline: bool | None = None) -> tuple[GPTModel, WeightsInfo]:
    """GPT-2 ``name`` (``gpt2-small`` … ``gpt2-xl``) in eval mode, and a :class:`WeightsInfo` saying what ran.

    Tries OpenAI's TF checkpoint (local copy, mirror, then download), then Hugging Face's safetensors. When
    neither can be had and ``allow_standin`` (default: only in the quick profile), returns the stand-in —
    read through the same TF-checkpoint loader. Otherwise raises :class:`WeightsUnavailable` naming the files,
    the URLs tried and how to provide them.
    """
    size = _size_of(name)
    label = next(k for k, v in SIZES.items() if v == size)
    allow = profile.is_quick() if allow_standin is None else allow_standin
    failures: list[str] = []
    for source, loader in (("openai-gpt2", _load_openai), ("hf-safetensors", _load_hf)):
        try:
            model, path = loader(size, offline)
        except (ArtifactUnavailable, TensorFlowMissing) as e:
            failures.append(str(e))
            continue
        info = WeightsInfo(source, f"{label} ({size})", name, _display(path), model.num_parameters(), model.cfg,
                           local_path=path)
        return model, info
    if not allow:
        folder = get_artifact(f"gpt2-{size}/hparams.json").path.parent
        needs = (f"the {profile.current()} profile needs the real ones" if allow_standin is None
                 else "allow_standin=False asks for the real ones")
        raise WeightsUnavailable(
            f"GPT-2 {size} weights are not available and {needs}. "
            f"Provide OpenAI's seven files ({', '.join(GPT2_CHECKPOINT_FILES)}) in {_display(folder)}/ "
            f"(from https://openaipublic.blob.core.windows.net/gpt-2/models/{size}/), or "
            f"openai-community's model.safetensors + config.json, or set LLM_COMPANION_MIRROR to a folder "
            f"holding them; the stand-in (LLM_BOOK_PROFILE=quick, or allow_standin=True) is the alternative."
            f"\nWhat was tried:\n" + "\n".join(failures))
    folder, metrics = _standin_openai_folder()
    model = from_tf_checkpoint(folder)  # the stand-in takes the same road as OpenAI's files
    download = "skipped (offline)" if any("skipped (offline)" in f for f in failures) else "failed"
    allowed = f"the {profile.current()} profile allows" if allow_standin is None else "allow_standin=True allows"
    reason = (f"GPT-2 {size} is not in models/ or a mirror and its download {download}, and {allowed} the "
              f"stand-in")
    info = WeightsInfo("standin", folder.name if folder.name != "openai" else folder.parent.name, name,
                       _display(folder), model.num_parameters(), model.cfg, metrics, reason, local_path=folder)
    return model, info
