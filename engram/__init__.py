"""engram: the Engram conditional-memory module, MoE and dense backbones, and exact parameter/FLOP accounting."""

from engram.compress import Compression
from engram.config import ConfigError, EngramConfig, ModelConfig, MoEConfig
from engram.model import EngramLM

__all__ = ["Compression", "ConfigError", "EngramConfig", "EngramLM", "ModelConfig", "MoEConfig"]
