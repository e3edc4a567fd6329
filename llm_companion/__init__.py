"""llm_companion — the library of the executable book *Building a GPT from scratch in PyTorch*.

Public names are re-exported here; each lives in the module named for its concept.
"""
from llm_companion.data.artifacts import fetch
from llm_companion.data.dataset import GPTDataset, create_dataloader
from llm_companion.data.gguf_file import GGUFError, read_gguf
from llm_companion.data.tokenizer import SimpleTokenizer, UnknownTokenError, build_vocab, gguf_tokenizer, gpt2_tokenizer
from llm_companion.finetune.assistant import load_assistant, save_assistant
from llm_companion.finetune.classification import GPTClassifier, classify, load_classifier, save_classifier
from llm_companion.finetune.instruct import (
    InstructionCollator,
    InstructionDataset,
    format_prompt,
    load_instruction_data,
)
from llm_companion.finetune.lora import apply_lora, load_lora, merge_lora, save_lora
from llm_companion.inference.generation import generate, generate_stream
from llm_companion.inference.smollm2 import load_smollm2
from llm_companion.models.attention import MultiHeadAttention
from llm_companion.models.checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from llm_companion.models.config import GPTConfig
from llm_companion.models.embeddings import GPTEmbedding
from llm_companion.models.gguf_checkpoint import load_llama_gguf
from llm_companion.models.gpt import GPTModel
from llm_companion.models.kv_cache import KVCache
from llm_companion.models.llama import LlamaConfig, LlamaModel
from llm_companion.training.loop import History, TrainConfig, plot_losses, train
from llm_companion.training.losses import calc_loss_batch, calc_loss_loader, perplexity
from llm_companion.training.pretrain import ensure_standin
from llm_companion.training.starting_weights import WeightsDirError, WeightsInfo, WeightsUnavailable, load_pretrained

__version__ = "0.1.0"

__all__ = [
    "GPTClassifier",
    "GPTConfig",
    "GPTDataset",
    "GPTEmbedding",
    "GGUFError",
    "GPTModel",
    "History",
    "InstructionCollator",
    "InstructionDataset",
    "KVCache",
    "LlamaConfig",
    "LlamaModel",
    "MultiHeadAttention",
    "SimpleTokenizer",
    "TrainConfig",
    "UnknownTokenError",
    "WeightsDirError",
    "WeightsInfo",
    "WeightsUnavailable",
    "apply_lora",
    "build_vocab",
    "calc_loss_batch",
    "calc_loss_loader",
    "classify",
    "create_dataloader",
    "ensure_standin",
    "fetch",
    "format_prompt",
    "generate",
    "generate_stream",
    "gguf_tokenizer",
    "gpt2_tokenizer",
    "load_assistant",
    "load_llama_gguf",
    "load_smollm2",
    "load_classifier",
    "load_checkpoint",
    "load_instruction_data",
    "load_lora",
    "load_model",
    "load_pretrained",
    "merge_lora",
    "perplexity",
    "read_gguf",
    "plot_losses",
    "save_assistant",
    "save_checkpoint",
    "save_classifier",
    "save_lora",
    "save_model",
    "train",
]
