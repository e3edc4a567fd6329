"""llm_companion — the library of the executable book *Building a GPT from scratch in PyTorch*.

Public names are re-exported here; each lives in the module named for its concept.
"""
from .artifacts import fetch
from .attention import MultiHeadAttention
from .chat import load_assistant, save_assistant
from .checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from .classification import GPTClassifier, classify, load_classifier, save_classifier
from .config import GPTConfig
from .dataset import GPTDataset, create_dataloader
from .embeddings import GPTEmbedding
from .generation import generate, generate_stream
from .gguf_file import GGUFError, read_gguf
from .instruct import InstructionCollator, InstructionDataset, format_prompt, load_instruction_data
from .kv_cache import KVCache
from .llama import LlamaConfig, LlamaModel, load_llama_gguf
from .lora import apply_lora, load_lora, merge_lora, save_lora
from .losses import calc_loss_batch, calc_loss_loader, perplexity
from .model import GPTModel
from .pretrain import ensure_standin
from .smollm2 import load_smollm2
from .tokenizer import SimpleTokenizer, UnknownTokenError, build_vocab, gguf_tokenizer, gpt2_tokenizer
from .training import History, TrainConfig, plot_losses, train
from .weights import WeightsDirError, WeightsInfo, WeightsUnavailable, load_pretrained

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
