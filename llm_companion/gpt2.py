"""OpenAI's GPT-2 weights: read (and write) their TF checkpoint layout and Hugging Face's safetensors.

An OpenAI checkpoint folder (``models/gpt2/124M/``) holds ``hparams.json`` (the shape of the model) and a
TensorFlow checkpoint (``checkpoint``, ``model.ckpt.index``, ``model.ckpt.data-00000-of-00001``,
``model.ckpt.meta``) whose variables are named ``model/wte``, ``model/h0/attn/c_attn/w``, … . The
correspondence with :class:`~llm_companion.model.GPTModel` is :func:`weight_map`; OpenAI's names are Hugging
Face's with another spelling, so the table is derived from :mod:`llm_companion.convert`, not restated here.

``params`` (what :func:`load_tf_checkpoint` returns) is **flat, keyed by OpenAI's variable name, with each
array exactly as stored**: a Conv1D weight keeps its ``(1, in, out)`` shape. (The reference book nests the
same arrays as ``params["blocks"][i]["attn"]["c_attn"]["w"]``; flat names keep the link to the file visible.)

:func:`load_pretrained` is the one call chapters 5–7 use: it returns real GPT-2 when the files can be had,
and otherwise — in the quick profile only — an honest stand-in trained by the library, exported to OpenAI's
layout and read back through the very same loader.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import profile
from .artifacts import (GPT2_CHECKPOINT_FILES, ArtifactUnavailable, fetch, get_artifact, mirror_dirs,
                        project_home)
from .checkpoint import CheckpointError, CheckpointMismatch, load_model, publish_dir, verify_dir
from .config import GPTConfig
from .convert import (BLOCK_RENAMES as _HF_RENAMES, TOP_RENAMES as _HF_TOP, config_from_hf,  # the one naming table
                      config_from_state_dict, load_converted, model_from_hf_state_dict)
from .model import GPTModel

SIZES = {"gpt2-small": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}
_CKPT = "model.ckpt"
_REQUIRED = ("hparams.json", f"{_CKPT}.index", f"{_CKPT}.data-00000-of-00001")


class MissingCheckpointFile(CheckpointError, FileNotFoundError):
    """A file of an OpenAI checkpoint folder is absent."""


class TensorFlowMissing(ImportError):
    """TensorFlow (needed only for OpenAI's TF checkpoints) is not installed."""


class WeightsUnavailable(ArtifactUnavailable):
    """Real GPT-2 weights could not be obtained and the stand-in is not allowed."""


def _tensorflow():
    # TF's C++ start-up lines (oneDNN notice, log banners) go straight to stderr and would land in notebook
    # outputs; these two variables silence them and must be set before the first import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
    except ImportError:
        raise TensorFlowMissing('reading or writing OpenAI\'s TF checkpoints needs TensorFlow: '
                                'pip install "llm-companion[tf]"') from None
    return tf


# ------------------------------------------------------------------------------------------ the mapping
def hf_name(openai_name: str) -> str:
    """OpenAI's variable name → Hugging Face's key: ``model/h0/ln_1/g`` → ``h.0.ln_1.weight``."""
    m = re.fullmatch(r"model/(?:h(\d+)/)?(.+)/([wbg])", openai_name)
    if m:
        layer, module, kind = m.groups()
        prefix = f"h.{layer}." if layer is not None else ""
        return f"{prefix}{module.replace('/', '.')}.{'bias' if kind == 'b' else 'weight'}"
    m = re.fullmatch(r"model/(wte|wpe)", openai_name)
    if m:
        return f"{m.group(1)}.weight"
    raise CheckpointMismatch(f"{openai_name!r} is not a GPT-2 variable name (expected e.g. 'model/h0/attn/c_attn/w')")


def openai_name(hf_key: str) -> str:
    """Inverse of :func:`hf_name`: ``h.0.ln_1.weight`` → ``model/h0/ln_1/g`` (layer norms say g/b)."""
    m = re.fullmatch(r"(?:h\.(\d+)\.)?(.+)\.(weight|bias)", hf_key)
    if not m:
        raise CheckpointMismatch(f"{hf_key!r} is not a GPT-2 tensor name")
    layer, module, kind = m.groups()
    if module in ("wte", "wpe"):
        return f"model/{module}"
    short = "b" if kind == "bias" else ("g" if module.startswith("ln_") else "w")
    return f"model/{'' if layer is None else f'h{layer}/'}{module.replace('.', '/')}/{short}"


class WeightMapping(NamedTuple):
    """One row of :func:`weight_map`: an OpenAI variable, its stored shape, and the parameter it fills."""

    openai: str
    openai_shape: tuple[int, ...]
    ours: str
    our_shape: tuple[int, ...]
    transposed: bool  # Conv1D (1, in, out) → nn.Linear (out, in)


def weight_map(cfg: GPTConfig) -> list[WeightMapping]:
    """Every OpenAI variable of a GPT-2 with shape ``cfg``, in checkpoint order, and the parameter it fills.

    The output head has no row: GPT-2 ties it to ``model/wte`` (see :func:`load_weights_into_gpt`).
    """
    with torch.device("meta"):  # shapes only: no memory, no random init
        shapes = {k: tuple(v.shape) for k, v in GPTModel(cfg).state_dict().items()}
    rows = []
    top = {hf: ours for hf, ours in _HF_TOP.items() if hf != "lm_head.weight"}
    names = [("wte.weight", top["wte.weight"], False), ("wpe.weight", top["wpe.weight"], False)]
    for i in range(cfg.n_layers):
        names += [(f"h.{i}.{hf}", f"blocks.{i}.{ours}", t) for hf, ours, t in _HF_RENAMES]
    names += [(k, v, False) for k, v in top.items() if k.startswith("ln_f")]
    for hf, ours, transposed in names:
        if ours not in shapes:  # e.g. qkv_bias=False: the model has no place for c_attn/b
            raise CheckpointMismatch(f"GPTModel({cfg}) has no parameter {ours!r} for GPT-2's "
                                     f"{openai_name(hf)}; GPT-2 weights need qkv_bias=True")
        shape = shapes[ours]
        stored = (1, *reversed(shape)) if transposed else shape
        rows.append(WeightMapping(openai_name(hf), stored, ours, shape, transposed))
    return rows


def config_from_hparams(settings: dict[str, Any], **overrides: Any) -> GPTConfig:
    """A :class:`GPTConfig` from OpenAI's ``hparams.json`` (n_vocab, n_ctx, n_embd, n_head, n_layer)."""
    try:
        fields = dict(vocab_size=settings["n_vocab"], context_length=settings["n_ctx"], emb_dim=settings["n_embd"],
                      n_heads=settings["n_head"], n_layers=settings["n_layer"])
    except KeyError as e:
        raise CheckpointError(f"hparams lack {e.args[0]!r}; an OpenAI hparams.json has n_vocab, n_ctx, n_embd, "
                              f"n_head and n_layer") from None
    return GPTConfig(**{**fields, "drop_rate": 0.0, "qkv_bias": True, "tie_weights": True, **overrides})


def hparams_from_config(cfg: GPTConfig) -> dict[str, int]:
    """OpenAI's ``hparams.json`` for a model of shape ``cfg`` (inverse of :func:`config_from_hparams`)."""
    return {"n_vocab": cfg.vocab_size, "n_ctx": cfg.context_length, "n_embd": cfg.emb_dim,
            "n_head": cfg.n_heads, "n_layer": cfg.n_layers}


# ------------------------------------------------------------------------------------------- TF format
def _checkpoint_prefix(folder: Path) -> Path:
    for name in _REQUIRED:
        if not (folder / name).is_file():
            raise MissingCheckpointFile(
                f"{folder} has no {name}; an OpenAI checkpoint folder holds {', '.join(GPT2_CHECKPOINT_FILES)} "
                f"(get them with load_pretrained() or `llm-companion fetch gpt2-124M/{name}`)")
    return folder / _CKPT


def load_tf_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read an OpenAI GPT-2 checkpoint folder: ``(settings, params)``.

    ``settings`` is ``hparams.json``; ``params`` maps every variable name (``model/h0/attn/c_attn/w``) to
    its array exactly as stored. Needs TensorFlow; a truncated or corrupted file raises
    :class:`~llm_companion.checkpoint.CheckpointError`.
    """
    folder = Path(folder)
    prefix = _checkpoint_prefix(folder)
    try:
        settings = json.loads((folder / "hparams.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'hparams.json'} is not valid JSON ({e}); delete it and fetch it again") from None
    tf = _tensorflow()
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        names = sorted(reader.get_variable_to_shape_map())
        # reading every tensor now makes TF check each one's CRC: corruption surfaces here, not later
        params = {name: np.asarray(reader.get_tensor(name)) for name in names}
    except (tf.errors.OpError, ValueError, IndexError) as e:  # IndexError: a short read of a truncated file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{folder}: the TF checkpoint is unreadable ({first}); it is truncated or "
                              f"corrupted: delete the folder and fetch it again") from None
    return settings, params


def load_weights_into_gpt(model: GPTModel, params: dict[str, Any]) -> GPTModel:
    """Copy OpenAI-named ``params`` into ``model``, checking every name and shape first (nothing is half-loaded).

    Conv1D weights ``(1, in, out)`` (or ``(in, out)``) are transposed into ``nn.Linear``'s ``(out, in)``;
    OpenAI's fused ``c_attn`` fills our fused ``qkv`` as is (both keep q | k | v in that order). The output
    head is tied to ``model/wte``: shared when ``cfg.tie_weights``, otherwise copied.
    """
    rows = weight_map(model.cfg)
    unknown = sorted(set(params) - {r.openai for r in rows})
    if unknown:
        raise CheckpointMismatch(f"checkpoint variable {unknown[0]!r} has no place in GPTModel({model.cfg}); "
                                 f"build the model with config_from_hparams(settings)")
    tensors = {}
    for r in rows:
        if r.openai not in params:
            raise CheckpointMismatch(f"checkpoint has no variable {r.openai!r} for {r.ours}; build the model "
                                     f"with config_from_hparams(settings) (n_layer, n_embd must match)")
        a = params[r.openai]
        stored = tuple(a.shape)
        accepted = (r.openai_shape, r.openai_shape[1:]) if r.transposed else (r.openai_shape,)
        if stored not in accepted:
            raise CheckpointMismatch(f"{r.openai} has shape {stored} but {r.ours} {r.our_shape} needs "
                                     f"{r.openai_shape}; build the model with config_from_hparams(settings)")
        if isinstance(a, np.ndarray) and not a.flags.writeable:  # torch warns on read-only memory
            a = a.copy()
        t = torch.as_tensor(a)
        if r.transposed:
            t = t.reshape(r.openai_shape[1:]).t()                                  # (1, in, out) → (out, in)
        tensors[r.ours] = t
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            own[name].copy_(t)
        if not model.cfg.tie_weights:
            model.out_head.weight.copy_(tensors["tok_emb.weight"])
    return model


def _tf_arrays(model: GPTModel) -> dict[str, np.ndarray]:
    own = dict(model.named_parameters())
    out = {}
    for r in weight_map(model.cfg):
        t = own[r.ours].detach().to("cpu", torch.float32)
        out[r.openai] = (t.t().unsqueeze(0) if r.transposed else t).contiguous().numpy()
    return out


def export_tf_checkpoint(model: GPTModel, folder: str | os.PathLike, *, tokenizer_files: bool = True) -> Path:
    """Write ``model`` as an OpenAI GPT-2 checkpoint folder (``hparams.json`` + TF checkpoint, OpenAI's names).

    The folder is assembled under a temporary name and renamed into place. With ``tokenizer_files`` (and a
    50257-token vocabulary) ``encoder.json`` and ``vocab.bpe`` are added, completing OpenAI's seven files.
    """
    if not model.cfg.tie_weights and not torch.equal(model.out_head.weight, model.tok_emb.weight):
        raise CheckpointMismatch("OpenAI's layout has no separate output head, but this model's out_head differs "
                                 "from tok_emb; only tied models (cfg.tie_weights=True) can be exported")
    tmp = _temp_dir_beside(Path(folder))
    try:
        _write_tf_checkpoint(model, tmp, tokenizer_files=tokenizer_files)
        return publish_dir(tmp, Path(folder))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _temp_dir_beside(folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))


def _write_tf_checkpoint(model: GPTModel, folder: Path, *, tokenizer_files: bool) -> None:
    tf = _tensorflow()
    arrays = _tf_arrays(model)
    graph = tf.Graph()
    with graph.as_default():
        # variables fed through placeholders, so the .meta graph holds no copy of the weights
        feeds, variables = {}, {}
        for name, a in arrays.items():
            ph = tf.compat.v1.placeholder(tf.float32, a.shape)
            variables[name] = tf.compat.v1.Variable(ph, name=name)
            feeds[ph] = a
        saver = tf.compat.v1.train.Saver(var_list=variables, save_relative_paths=True)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run([v.initializer for v in variables.values()], feed_dict=feeds)
            saver.save(sess, str(folder / _CKPT))
    (folder / "hparams.json").write_text(json.dumps(hparams_from_config(model.cfg), indent=2) + "\n")
    if tokenizer_files and model.cfg.vocab_size == 50257:
        for artifact in ("gpt2-encoder", "gpt2-vocab"):
            shutil.copyfile(fetch(artifact), folder / get_artifact(artifact).filename)


def from_tf_checkpoint(folder: str | os.PathLike) -> GPTModel:
    """A :class:`GPTModel` (eval mode) built from an OpenAI checkpoint folder's hparams and weights."""
    settings, params = load_tf_checkpoint(folder)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; leave the caller's RNG alone
        model = GPTModel(config_from_hparams(settings))
    return load_weights_into_gpt(model, params).eval()


# ---------------------------------------------------------------------------------------- safetensors
def from_safetensors(path: str | os.PathLike) -> GPTModel:
    """A :class:`GPTModel` (eval mode) from a Hugging Face GPT-2 ``model.safetensors`` (file or its folder).

    The config comes from ``config.json`` beside the file when present, else from the tensor shapes
    (heads = emb_dim // 64, as in every GPT-2 size). Loading never unpickles anything.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise MissingCheckpointFile(f"{file} does not exist; pass a model.safetensors file or its folder")
    try:
        sd = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} cannot be read ({e}); it is truncated or corrupted: delete it and "
                              f"fetch it again") from None
    config_file = file.parent / "config.json"
    hf_config = json.loads(config_file.read_text()) if config_file.is_file() else None
    if "tok_emb.weight" in sd:  # already in our layout (a save_model/save_weights file)
        cfg = GPTConfig.from_dict(hf_config) if hf_config else config_from_state_dict(sd)
        with torch.random.fork_rng(devices=[]):
            model = GPTModel(cfg)
        return load_converted(model, sd).eval()
    cfg = config_from_hf(hf_config) if hf_config else None
    return model_from_hf_state_dict(sd, cfg)


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
                _checkpoint_prefix(folder)
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
        tmp = _temp_dir_beside(folder)
        try:
            _write_tf_checkpoint(load_model(source), tmp, tokenizer_files=True)
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
