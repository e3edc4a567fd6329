"""llm_companion — the library of the executable book *Building a GPT from scratch in PyTorch*.

Public names are re-exported here; each lives in the module named for its concept.
"""
from .artifacts import fetch
from .attention import KVCache, MultiHeadAttention
from .config import GPTConfig
from .generation import generate, generate_stream
from .model import GPTModel

__version__ = "0.1.0"

__all__ = [
    "GPTConfig",
    "GPTModel",
    "KVCache",
    "MultiHeadAttention",
    "fetch",
    "generate",
    "generate_stream",
]
