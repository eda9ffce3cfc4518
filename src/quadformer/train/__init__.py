"""Training engine: config, checkpoints, DDP, the loop."""

from .config import Config, load_config
from .data import DataBundle
from .engine import build_model, evaluate, train
from .schemes import SchemeOptions, run_scheme

__all__ = ["Config", "load_config", "build_model", "evaluate", "train", "DataBundle", "SchemeOptions", "run_scheme"]
