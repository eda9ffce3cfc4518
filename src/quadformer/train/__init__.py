"""Training engine: config, checkpoints, DDP, the loop."""

from .config import Config, load_config
from .data import DataBundle
from .engine import build_model, evaluate, train
from .schemes import SchemeOptions, run_scheme

__all__ = ["Config", "DataBundle", "SchemeOptions", "build_model", "evaluate", "load_config", "run_scheme", "train"]
