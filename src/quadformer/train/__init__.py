"""Training engine: config, checkpoints, DDP, the loop."""

from .config import Config, load_config
from .engine import build_model, evaluate, train

__all__ = ["Config", "load_config", "build_model", "evaluate", "train"]
