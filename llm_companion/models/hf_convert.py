"""Convert Hugging Face checkpoints into our models: GPT-2 into :class:`GPTModel`, Llama into :class:`LlamaModel`.

Hugging Face's ``GPT2LMHeadModel`` stores the same numbers as our model under other names, and its
``Conv1D`` layers keep weights as ``(in, out)`` where ``nn.Linear`` keeps ``(out, in)``:

=============================  ===============================  ==========================
Hugging Face                   ``GPTModel``                     change
=============================  ===============================  ==========================
``wte.weight``                 ``tok_emb.weight``               —
``wpe.weight``                 ``pos_emb.weight``               —
``h.{i}.ln_1.{weight,bias}``   ``blocks.{i}.norm1.…``           —
``h.{i}.attn.c_attn.weight``   ``blocks.{i}.attn.qkv.weight``   transpose (q | k | v fused)
``h.{i}.attn.c_proj.weight``   ``blocks.{i}.attn.proj.weight``  transpose
``h.{i}.ln_2.{weight,bias}``   ``blocks.{i}.norm2.…``           —
``h.{i}.mlp.c_fc.weight``      ``blocks.{i}.ff.fc.weight``      transpose
``h.{i}.mlp.c_proj.weight``    ``blocks.{i}.ff.proj.weight``    transpose
``ln_f.{weight,bias}``         ``final_norm.…``                 —
``lm_head.weight``             ``out_head.weight``              optional when tied
=============================  ===============================  ==========================

Keys may carry the ``transformer.`` prefix (``GPT2LMHeadModel``) or not (``GPT2Model``, safetensors files
of the hub). HF's ``attn.bias``/``attn.masked_bias`` entries are constant causal-mask buffers, not weights,
and are ignored. Chapter 2 derives attention with separate ``W_q, W_k, W_v``; :func:`split_qkv` cuts a
fused ``qkv`` weight or bias into those three.

**Llama** (``LlamaForCausalLM``, SmolLM2's class): the same layout under other names, module by module
(``LLAMA_BLOCK_MODULES``): ``model.layers.{i}.self_attn.q_proj`` is ``blocks.{i}.attn.q`` (k, v, o alike),
``mlp.{gate,up,down}_proj`` is ``ffn.{gate,up,down}``, ``input_layernorm`` / ``post_attention_layernorm`` are
``attn_norm`` / ``ffn_norm``, ``model.embed_tokens`` / ``model.norm`` / ``lm_head`` are ``tok_emb`` /
``final_norm`` / ``out_head``. :func:`hf_module_name` and :func:`our_module_name` map module names both ways
for either architecture; LoRA adapters in peft's format (:mod:`llm_companion.finetune.adapters`) use them.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from llm_companion.models.config import GPTConfig
from llm_companion.models.gpt import GPTModel
from llm_companion.models.llama import LlamaConfig, LlamaModel


class ConversionError(ValueError):
    """A checkpoint that does not fit the model (missing, unexpected or wrongly shaped tensor)."""


_GPT2_HEAD_DIM = 64  # every OpenAI GPT-2 size uses 64-dimensional heads
_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
BLOCK_RENAMES = [  # (HF suffix, our suffix, transpose?)
    ("ln_1.weight", "norm1.weight", False), ("ln_1.bias", "norm1.bias", False),
    ("attn.c_attn.weight", "attn.qkv.weight", True), ("attn.c_attn.bias", "attn.qkv.bias", False),
    ("attn.c_proj.weight", "attn.proj.weight", True), ("attn.c_proj.bias", "attn.proj.bias", False),
    ("ln_2.weight", "norm2.weight", False), ("ln_2.bias", "norm2.bias", False),
    ("mlp.c_fc.weight", "ff.fc.weight", True), ("mlp.c_fc.bias", "ff.fc.bias", False),
    ("mlp.c_proj.weight", "ff.proj.weight", True), ("mlp.c_proj.bias", "ff.proj.bias", False),
]
TOP_RENAMES = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight",
               "ln_f.weight": "final_norm.weight", "ln_f.bias": "final_norm.bias", "lm_head.weight": "out_head.weight"}
_SUPPORTED_ACTIVATIONS = {"gelu_new", "gelu_pytorch_tanh"}


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> GPTConfig:
    """A :class:`GPTConfig` from a Hugging Face GPT-2 ``config.json`` dictionary.

    Dropout is 0 unless overridden (``drop_rate=0.1`` reproduces HF's training default), because converted
    weights are mostly used for inference and fine-tuning.
    """
    def get(*names: str, default: Any = None) -> Any:
        for n in names:
            if n in hf_config and hf_config[n] is not None:
                return hf_config[n]
        if default is None:
            raise ConversionError(f"the Hugging Face config has no {names[0]!r}; is it a GPT-2 config.json?")
        return default

    act = hf_config.get("activation_function", "gelu_new")
    if act not in _SUPPORTED_ACTIVATIONS:
        raise ConversionError(f"activation_function {act!r} is not supported; GPTModel uses tanh-GELU (gelu_new)")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf_config.get(flag):
            raise ConversionError(f"{flag}=True is not supported by GPTModel; convert a standard GPT-2 config")
    if hf_config.get("scale_attn_weights") is False:
        raise ConversionError("scale_attn_weights=False is not supported; GPTModel always scales by 1/sqrt(d)")
    fields = dict(
        vocab_size=get("vocab_size"),
        context_length=get("n_positions", "n_ctx"),
        emb_dim=get("n_embd", "hidden_size"),
        n_heads=get("n_head", "num_attention_heads"),
        n_layers=get("n_layer", "num_hidden_layers"),
        drop_rate=0.0,
        qkv_bias=True,
        tie_weights=bool(hf_config.get("tie_word_embeddings", True)),
        ln_eps=float(get("layer_norm_epsilon", default=1e-5)),
    )
    return GPTConfig(**{**fields, **overrides})


def _strip_prefix(key: str) -> str:
    return key[len("transformer."):] if key.startswith("transformer.") else key


def state_dict_from_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and transpose) a Hugging Face GPT-2 state dict into ``GPTModel``'s key layout.

    Conv1D weights are transposed into ``nn.Linear`` layout; the fused ``c_attn`` maps onto our fused
    ``qkv`` unchanged apart from the transpose (both keep q, k, v in that order). ``lm_head.weight`` is kept
    when present. Unknown keys raise :class:`ConversionError`.
    """
    out: dict[str, torch.Tensor] = {}
    for raw_key, tensor in sd.items():
        key = _strip_prefix(raw_key)
        if _BUFFERS.match(key):
            continue
        if key in TOP_RENAMES:
            out[TOP_RENAMES[key]] = tensor
            continue
        m = re.match(r"^h\.(\d+)\.(.+)$", key)
        for hf_suffix, our_suffix, transpose in BLOCK_RENAMES:
            if m and m.group(2) == hf_suffix:
                if transpose and tensor.dim() != 2:
                    raise ConversionError(f"{raw_key}: expected a 2-D Conv1D weight, got shape {tuple(tensor.shape)}")
                out[f"blocks.{m.group(1)}.{our_suffix}"] = tensor.t().contiguous() if transpose else tensor
                break
        else:
            raise ConversionError(f"unexpected key {raw_key!r}: not part of a GPT-2 checkpoint")
    return out


def config_from_state_dict(sd: Mapping[str, torch.Tensor], **overrides: Any) -> GPTConfig:
    """Infer a :class:`GPTConfig` from tensor shapes of a HF (or converted) GPT-2 state dict.

    Shapes cannot tell the number of heads; it is taken as ``emb_dim // 64`` as in every GPT-2 size
    (pass ``n_heads=`` to override).
    """
    ours = state_dict_from_hf(sd) if any(_strip_prefix(k).startswith(("h.", "wte.")) for k in sd) else dict(sd)
    try:
        vocab_size, emb_dim = ours["tok_emb.weight"].shape
        context_length = ours["pos_emb.weight"].shape[0]
    except KeyError as e:
        raise ConversionError(f"state dict has no {e.args[0]!r} (wte/wpe); cannot infer the config") from None
    layers = {int(k.split(".")[1]) for k in ours if k.startswith("blocks.")}
    head = ours.get("out_head.weight")
    fields = dict(
        vocab_size=int(vocab_size), context_length=int(context_length), emb_dim=int(emb_dim),
        n_heads=max(1, int(emb_dim) // _GPT2_HEAD_DIM), n_layers=len(layers),
        qkv_bias="blocks.0.attn.qkv.bias" in ours,
        tie_weights=head is None or head is ours["tok_emb.weight"] or torch.equal(head, ours["tok_emb.weight"]),
        drop_rate=0.0,
    )
    return GPTConfig(**{**fields, **overrides})


def load_converted(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy a state dict in our layout into ``model`` (a GPT or Llama model), checking every name and shape first."""
    expected = model.state_dict()
    sd = dict(sd)
    if model.cfg.tie_weights:
        head, emb = sd.pop("out_head.weight", None), sd.get("tok_emb.weight")
        if head is not None and emb is not None and (head.shape != emb.shape or not torch.equal(head, emb)):
            raise ConversionError("out_head.weight differs from tok_emb.weight but cfg.tie_weights=True; "
                                  "use cfg.replace(tie_weights=False)")
        expected.pop("out_head.weight")
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        raise ConversionError(f"checkpoint lacks {len(missing)} tensor(s), first {missing[0]!r}; "
                              f"does the config (n_layers, biases, tie_weights) match the checkpoint?")
    if unexpected:
        raise ConversionError(f"checkpoint has {len(unexpected)} tensor(s) the model lacks, first "
                              f"{unexpected[0]!r}; does the config (n_layers, biases) match the checkpoint?")
    for name, tensor in sd.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConversionError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model shape "
                                  f"{tuple(expected[name].shape)}; the config does not match the checkpoint")
    with torch.no_grad():
        params = dict(model.named_parameters())
        params.update(model.named_buffers())
        for name, tensor in sd.items():
            params[name].copy_(tensor)
    return model


def model_from_hf_state_dict(sd: Mapping[str, torch.Tensor], cfg: GPTConfig | None = None) -> GPTModel:
    """A :class:`GPTModel` holding the weights of a Hugging Face GPT-2 state dict (inferring ``cfg`` if None)."""
    ours = state_dict_from_hf(sd)
    cfg = cfg or config_from_state_dict(ours)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; leave the caller's RNG alone
        model = GPTModel(cfg)
    return load_converted(model, ours).eval()


def split_qkv(fused: torch.Tensor, emb_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut a fused ``qkv`` weight (3C, C) or bias (3C,) into ``(W_q, W_k, W_v)`` of (C, C) or (C,) each.

    ``nn.Linear`` weights are (out, in), so ``x @ W_q.T`` gives the queries of chapter 2.
    """
    n = fused.shape[0]
    if n % 3 or (emb_dim is not None and n != 3 * emb_dim):
        raise ConversionError(f"a fused qkv tensor has 3*emb_dim rows, got shape {tuple(fused.shape)}")
    return tuple(fused.chunk(3, dim=0))  # type: ignore[return-value]


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_qkv`: stack separate ``W_q, W_k, W_v`` (or biases) into one fused tensor."""
    if not q.shape == k.shape == v.shape:
        raise ConversionError(f"W_q, W_k, W_v must share a shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                              f"{tuple(v.shape)}")
    return torch.cat([q, k, v], dim=0)


# --------------------------------------------------------------------------------------------- Llama
# transformers' LlamaForCausalLM (SmolLM2's class) holds the same numbers as LlamaModel under other names, in the
# same layout: nn.Linear weights (out, in) and Q/K rows in the rotate-halves order that apply_rope expects (only
# GGUF files permute them). So converting is renaming, per module:
LLAMA_BLOCK_MODULES = {  # HF module (under model.layers.{i}.) → ours (under blocks.{i}.)
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v", "self_attn.o_proj": "attn.o", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn.gate", "mlp.up_proj": "ffn.up", "mlp.down_proj": "ffn.down",
}
LLAMA_TOP_MODULES = {"model.embed_tokens": "tok_emb", "model.norm": "final_norm", "lm_head": "out_head"}
# GPT-2's modules (for LoRA adapters; the weights themselves go through state_dict_from_hf, which transposes)
GPT2_BLOCK_MODULES = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_fc": "ff.fc",
                      "mlp.c_proj": "ff.proj", "ln_1": "norm1", "ln_2": "norm2"}
GPT2_TOP_MODULES = {"transformer.wte": "tok_emb", "transformer.wpe": "pos_emb", "transformer.ln_f": "final_norm",
                    "lm_head": "out_head"}
_MODULE_MAPS = {  # arch → (HF block prefix, HF block modules, HF top-level modules)
    "llama": ("model.layers.", LLAMA_BLOCK_MODULES, LLAMA_TOP_MODULES),
    "gpt2": ("transformer.h.", GPT2_BLOCK_MODULES, GPT2_TOP_MODULES),
}


def hf_module_name(name: str, arch: str) -> str | None:
    """The Hugging Face name of our module ``name`` (``blocks.0.attn.q`` → ``model.layers.0.self_attn.q_proj``
    for ``arch="llama"``; ``blocks.0.attn.qkv`` → ``transformer.h.0.attn.c_attn`` for ``"gpt2"``); None if
    it has no counterpart."""
    prefix, block, top = _MODULE_MAPS[arch]
    m = re.match(r"^blocks\.(\d+)\.(.+)$", name)
    if m:
        theirs = {ours: hf for hf, ours in block.items()}.get(m.group(2))
        return f"{prefix}{m.group(1)}.{theirs}" if theirs else None
    return {ours: hf for hf, ours in top.items()}.get(name)


def our_module_name(hf_name: str, arch: str) -> str | None:
    """Inverse of :func:`hf_module_name`: our module for a Hugging Face one (None if we have none)."""
    prefix, block, top = _MODULE_MAPS[arch]
    m = re.match(rf"^{re.escape(prefix)}(\d+)\.(.+)$", hf_name)
    if m:
        ours = block.get(m.group(2))
        return f"blocks.{m.group(1)}.{ours}" if ours else None
    return top.get(hf_name)


def llama_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
    """A :class:`LlamaConfig` from a Hugging Face Llama ``config.json`` dictionary (``LlamaConfig.to_dict()``).

    Refuses what :class:`LlamaModel` does not compute: RoPE scaling, biases, another activation or head size.
    """
    def get(name: str) -> Any:
        if hf_config.get(name) is None:
            raise ConversionError(f"the Hugging Face config has no {name!r}; is it a Llama config.json?")
        return hf_config[name]

    rope = dict(hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {})  # 5.x keeps theta here
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConversionError(f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not supported; "
                              f"LlamaModel computes plain RoPE")
    for flag in ("attention_bias", "mlp_bias"):
        if hf_config.get(flag):
            raise ConversionError(f"{flag}=True is not supported; LlamaModel has no biases")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"hidden_act {hf_config['hidden_act']!r} is not supported; SwiGLU uses silu")
    emb, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    if hf_config.get("head_dim") not in (None, emb // heads):
        raise ConversionError(f"head_dim {hf_config['head_dim']} != hidden_size / num_attention_heads "
                              f"({emb // heads}); LlamaModel derives the head size")
    fields = dict(
        vocab_size=int(get("vocab_size")), context_length=int(get("max_position_embeddings")), emb_dim=emb,
        n_heads=heads, n_kv_heads=int(hf_config.get("num_key_value_heads") or heads),
        n_layers=int(get("num_hidden_layers")), hidden_dim=int(get("intermediate_size")),
        rope_theta=float(rope.get("rope_theta", hf_config.get("rope_theta", 10000.0))),
        norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        tie_weights=bool(hf_config.get("tie_word_embeddings", False)),
    )
    return LlamaConfig(**{**fields, **overrides})


def llama_state_dict_from_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face Llama state dict into :class:`LlamaModel`'s keys (no transposes are needed).

    ``rotary_emb.inv_freq`` buffers are skipped (we compute the angles); unknown keys raise
    :class:`ConversionError`.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        module, _, param = key.rpartition(".")
        ours = our_module_name(module, "llama")
        if ours is None or param != "weight":
            raise ConversionError(f"unexpected key {key!r}: not part of a Llama checkpoint LlamaModel can hold")
        out[f"{ours}.{param}"] = tensor
    return out


def llama_from_hf_state_dict(sd: Mapping[str, torch.Tensor], cfg: LlamaConfig) -> LlamaModel:
    """A :class:`LlamaModel` (eval mode) holding the weights of a Hugging Face Llama state dict.

    With ``cfg.tie_weights`` a ``lm_head.weight`` must equal the embedding (transformers lists it either way).
    """
    ours = llama_state_dict_from_hf(sd)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; leave the caller's RNG alone
        model = LlamaModel(cfg)
    return load_converted(model, ours).eval()
