"""The per-epoch metrics of a run: ``metrics.csv`` (rewritten atomically per row, so a kill
never leaves half a row), TensorBoard scalars and, when asked, Weights & Biases
(``output.wandb: true``; ``WANDB_MODE=offline`` works without network). On the main process only.

The rows are the checkpoint's ``history``: a resumed run rewrites the CSV from the checkpoint
it resumes, so no finished epoch is lost and no epoch it redoes is logged twice."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..utils.errors import QuadformerError
from ..utils.io import write_csv


def require_wandb() -> Any:
    """The ``wandb`` module, or one line saying how to get it."""
    try:
        import wandb
    except ImportError:
        raise QuadformerError("output.wandb=true needs the wandb package: pip install wandb (or the "
                              "quadformer[wandb] extra), or set output.wandb=false") from None
    return wandb


class MetricsLog:
    FIELDS = ["epoch", "global_step", "lr", "train_loss", "val_loss", "val_top1", "val_top1_ema",
              "epoch_seconds", "train_images_per_s", "skipped_files"]

    def __init__(self, out: Path, history: list[dict[str, Any]], *, enabled: bool, tensorboard: bool = False,
                 wandb: dict[str, Any] | None = None) -> None:
        """``history``: the rows so far (from the checkpoint being resumed; empty for a fresh run).
        ``wandb``: keyword arguments of ``wandb.init`` (None: no W&B)."""
        self.enabled, self.path, self.rows = enabled, out / "metrics.csv", list(history)
        self.tb = self.wb = None
        if not enabled:
            return
        self._write_csv()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"))
        if wandb is not None:
            self.wb = require_wandb().init(**wandb)

    def _write_csv(self) -> None:
        write_csv(self.path, self.rows, self.FIELDS, extrasaction="ignore")

    def row(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        self._write_csv()
        scalars = {k: v for k, v in row.items() if k not in ("epoch", "global_step")
                   and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()
        if self.wb is not None:
            self.wb.log({**scalars, "epoch": row["epoch"]}, step=row["global_step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wb is not None:
            self.wb.finish()
            self.wb = None
