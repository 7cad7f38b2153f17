"""How training reports its progress: one bar on a terminal, plain lines in a log file.

Replaces Lightning's progress bars (a bar per epoch, nested validation bars, carriage-return
frames written into log files). :class:`TrainingProgress` draws a single bar for the whole
fit when stderr is a terminal, with the last epoch's losses and validation F1 beside it;
otherwise it logs a plain line every few epochs (at most about :data:`MAX_LINES`).
"""

import math
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from ..logs import log

#: Epoch lines a non-terminal run prints at most (plus the last epoch's).
MAX_LINES = 20


def epoch_summary(metrics: dict[str, Any], heads: list[str]) -> str:
    """``loss 2.31 (cl 1.02 adv 0.69 ...) val F1 ms 0.812 sar 0.701`` from callback metrics."""
    train = {k.removeprefix("train/"): float(v) for k, v in metrics.items()
             if k.startswith("train/") and k != "train/grl_lambda"}
    parts = []
    if "loss" in train:
        terms = " ".join(f"{k} {v:.3f}" for k, v in train.items() if k != "loss")
        parts.append(f"loss {train['loss']:.3f}" + (f" ({terms})" if terms else ""))
    scores = [f"{h} {float(metrics[f'val/{h}/f1_weighted']):.3f}" for h in heads
              if f"val/{h}/f1_weighted" in metrics]
    if scores:
        parts.append("val F1 " + " ".join(scores))
    return ", ".join(parts)


class TrainingProgress(Callback):
    """One progress bar per fit on a terminal; periodic plain lines otherwise.

    Args:
        heads: classifiers whose validation weighted F1 is shown.
        terminal: draw a bar (default: whether stderr is a terminal).
    """

    def __init__(self, heads: list[str], terminal: bool | None = None) -> None:
        self.heads = heads
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar: Any = None
        self.start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Open the bar over every training batch of the fit (rank 0 reports, under DDP)."""
        self.start = time.perf_counter()
        if self.terminal and trainer.is_global_zero:
            from tqdm.auto import tqdm

            batches = int(trainer.num_training_batches)
            self.bar = tqdm(total=batches * trainer.max_epochs,
                            initial=batches * trainer.current_epoch, unit="batch",
                            desc="training", dynamic_ncols=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """Advance the bar."""
        if self.bar is not None:
            self.bar.update(1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Show the epoch's losses and validation scores."""
        if not trainer.is_global_zero:
            return
        epoch, last = trainer.current_epoch + 1, trainer.max_epochs
        summary = epoch_summary(dict(trainer.callback_metrics), self.heads)
        if self.bar is not None:
            self.bar.set_postfix_str(f"epoch {epoch}/{last}: {summary}", refresh=True)
            return
        every = math.ceil(last / MAX_LINES)
        if epoch % every == 0 or epoch == last or trainer.should_stop:
            seconds = time.perf_counter() - self.start
            log.info("epoch %*d/%d: %s [%.0f s]", len(str(last)), epoch, last, summary,
                     seconds)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
