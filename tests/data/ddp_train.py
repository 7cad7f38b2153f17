"""``discomkd-geo train`` with a probe: what each DDP rank drew, and a hold to be killed in.

Run by ``tests/test_distributed.py`` as ``python ddp_train.py PROBE_DIR HOLD_EPOCH
TRAIN-ARGS...``: the command line of ``python -m discomkd_geo`` (the real CLI, the real
training) with one more Lightning callback. Lightning's launcher starts rank 1 by running
this script again with the same arguments. The callback

* writes ``PROBE_DIR/rank<r>.json`` at the end of the first epoch: the ids and labels of
  the MS and SAR training samples and the ids of the validation samples the rank's
  loaders drew, the world size, and the ids of the training and validation splits;
* on rank 0, after the first training step of epoch ``HOLD_EPOCH`` (0-based), writes
  ``PROBE_DIR/held`` and sleeps until it is killed (rank 1 then waits in the next
  gradient all-reduce): the test kills the run mid-epoch at a known point, with the
  previous epoch's checkpoints saved. A negative ``HOLD_EPOCH`` never holds.
"""

import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class Probe(Callback):
    """Records the first epoch's samples per rank; holds rank 0 in epoch ``hold``."""

    def __init__(self, out: Path, hold: int) -> None:
        self.out, self.hold = out, hold
        self.seen: dict[str, list[Any]] = {"id_ms": [], "label_ms": [], "id_sar": [],
                                           "label_sar": [], "val": []}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: dict[str, Any], batch_idx: int) -> None:
        if trainer.current_epoch == 0:
            for key in ("id_ms", "id_sar"):
                self.seen[key] += list(batch[key])
            for key in ("label_ms", "label_sar"):
                self.seen[key] += batch[key].tolist()

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                  batch: dict[str, Any], batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if trainer.current_epoch == 0 and not trainer.sanity_checking:
            self.seen["val"] += list(batch["id"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != 0:
            return
        dm = trainer.datamodule  # type: ignore[attr-defined]
        path = self.out / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps({**self.seen, "world": trainer.world_size,
                                    "train_ids": {m: list(ds.ids)
                                                  for m, ds in dm.train_datasets.items()},
                                    "val_ids": list(dm.val_dataset.dataset.ids)}))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == self.hold and batch_idx == 0 and trainer.is_global_zero:
            (self.out / "held").write_text(f"epoch {self.hold}, after its first step\n")
            while True:  # until the test's SIGKILL
                time.sleep(60)


def main() -> None:
    out, hold = Path(sys.argv[1]), int(sys.argv[2])
    from discomkd_geo.cli import main as cli
    from discomkd_geo.training import train

    callbacks = train._callbacks

    def with_probe(*args: Any) -> list[Callback]:
        return [*callbacks(*args), Probe(out, hold)]

    train._callbacks = with_probe
    cli(sys.argv[3:], prog_name="discomkd-geo")


if __name__ == "__main__":
    main()
