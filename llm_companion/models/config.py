"""``GPTConfig``: the hyper-parameters of a GPT model, validated on creation, with named presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


class ConfigError(ValueError):
    """An invalid model configuration."""


def check_shape(cfg: Any, int_fields: tuple[str, ...], error: type[ValueError] = ConfigError) -> None:
    """The checks every model config shares: positive integer sizes, and heads that split ``emb_dim`` evenly."""
    for name in int_fields:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise error(f"{type(cfg).__name__}.{name} must be a positive integer, got {value!r}")
    if cfg.emb_dim % cfg.n_heads != 0:
        raise error(f"emb_dim ({cfg.emb_dim}) must be divisible by n_heads ({cfg.n_heads}); "
                    f"each head gets emb_dim // n_heads dimensions")


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT-2-style decoder.

    ``qkv_bias`` is True for OpenAI's GPT-2 weights; ``tie_weights`` shares the token embedding with the
    output head (GPT-2 does: 124M parameters tied, 163M untied for the small model).
    """

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = True
    tie_weights: bool = True
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_shape(self, ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"))
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if not self.ln_eps > 0.0:
            raise ConfigError(f"ln_eps must be > 0 (GPT-2 uses 1e-5), got {self.ln_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    def replace(self, **changes: Any) -> GPTConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown GPTConfig field(s): {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named preset (``gpt2-small`` … ``gpt2-xl``, or a small one), optionally with overrides."""
        try:
            base = PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None
        return cls(**{**base, **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # OpenAI's four GPT-2 sizes (parameter counts with tied embeddings).
    "gpt2-small": dict(emb_dim=768, n_layers=12, n_heads=12),    # 124M
    "gpt2-medium": dict(emb_dim=1024, n_layers=24, n_heads=16),  # 355M
    "gpt2-large": dict(emb_dim=1280, n_layers=36, n_heads=20),   # 774M
    "gpt2-xl": dict(emb_dim=1600, n_layers=48, n_heads=25),      # 1558M
    # Small models for CPU chapters and tests (GPT-2 vocabulary, short context).
    "gpt-mini": dict(emb_dim=192, n_layers=4, n_heads=6, context_length=256),
    "gpt-nano": dict(emb_dim=64, n_layers=2, n_heads=4, context_length=64),
}
