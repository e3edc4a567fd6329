"""llm_companion — the library of the executable book *Building a GPT from scratch in PyTorch*.

Public names are re-exported here; each lives in the module named for its concept.
"""
from .artifacts import fetch
from .attention import KVCache, MultiHeadAttention
from .chat import load_assistant, save_assistant
from .classification import GPTClassifier, classify, load_classifier, save_classifier
from .config import GPTConfig
from .dataset import GPTDataset, create_dataloader
from .embeddings import GPTEmbedding
from .generation import generate, generate_stream
from .gpt2 import WeightsInfo, load_pretrained
from .instruct import InstructionCollator, InstructionDataset, format_prompt, load_instruction_data
from .model import GPTModel
from .tokenizer import SimpleTokenizer, UnknownTokenError, build_vocab, gpt2_tokenizer

__version__ = "0.1.0"

__all__ = [
    "GPTClassifier",
    "GPTConfig",
    "GPTDataset",
    "GPTEmbedding",
    "GPTModel",
    "InstructionCollator",
    "InstructionDataset",
    "KVCache",
    "MultiHeadAttention",
    "SimpleTokenizer",
    "UnknownTokenError",
    "WeightsInfo",
    "build_vocab",
    "classify",
    "create_dataloader",
    "fetch",
    "format_prompt",
    "generate",
    "generate_stream",
    "gpt2_tokenizer",
    "load_assistant",
    "load_classifier",
    "load_instruction_data",
    "load_pretrained",
    "save_assistant",
    "save_classifier",
]
