"""OpenAI's GPT-2 weights: read (and write) their TF checkpoint layout and Hugging Face's safetensors.

An OpenAI checkpoint folder (``models/gpt2/124M/``) holds ``hparams.json`` (the shape of the model) and a
TensorFlow checkpoint (``checkpoint``, ``model.ckpt.index``, ``model.ckpt.data-00000-of-00001``,
``model.ckpt.meta``) whose variables are named ``model/wte``, ``model/h0/attn/c_attn/w``, … . The
correspondence with :class:`~llm_companion.models.gpt.GPTModel` is :func:`weight_map`; OpenAI's names are Hugging
Face's with another spelling, so the table is derived from :mod:`llm_companion.models.hf_convert`, not restated here.

``params`` (what :func:`load_tf_checkpoint` returns) is **flat, keyed by OpenAI's variable name, with each
array exactly as stored**: a Conv1D weight keeps its ``(1, in, out)`` shape. (The reference book nests the
same arrays as ``params["blocks"][i]["attn"]["c_attn"]["w"]``; flat names keep the link to the file visible.)

Which weights to load (real GPT-2, the reader's own files, or a stand-in) is policy, not format: it lives in
:mod:`llm_companion.training.starting_weights`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from llm_companion.atomic import atomic_dir
from llm_companion.data.artifacts import GPT2_CHECKPOINT_FILES, fetch, get_artifact
from llm_companion.models.checkpoint import CheckpointError, CheckpointMismatch
from llm_companion.models.config import GPTConfig
from llm_companion.models.gpt import GPTModel
from llm_companion.models.hf_convert import BLOCK_RENAMES as _HF_RENAMES  # the one naming table
from llm_companion.models.hf_convert import TOP_RENAMES as _HF_TOP
from llm_companion.models.hf_convert import (
    config_from_hf,
    config_from_state_dict,
    load_converted,
    model_from_hf_state_dict,
)

SIZES = {"gpt2-small": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}
_CKPT = "model.ckpt"
_REQUIRED = ("hparams.json", f"{_CKPT}.index", f"{_CKPT}.data-00000-of-00001")


class MissingCheckpointFile(CheckpointError, FileNotFoundError):
    """A file of an OpenAI checkpoint folder is absent."""


class TensorFlowMissing(ImportError):
    """TensorFlow (needed only for OpenAI's TF checkpoints) is not installed."""


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
def checkpoint_prefix(folder: Path) -> Path:
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
    :class:`~llm_companion.models.checkpoint.CheckpointError`.
    """
    folder = Path(folder)
    prefix = checkpoint_prefix(folder)
    try:
        settings = json.loads((folder / "hparams.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'hparams.json'} is not valid JSON ({e}); "
                              f"delete it and fetch it again") from None
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
    with atomic_dir(folder) as tmp:
        write_tf_checkpoint(model, tmp, tokenizer_files=tokenizer_files)
    return Path(folder)


def write_tf_checkpoint(model: GPTModel, folder: Path, *, tokenizer_files: bool) -> None:
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
