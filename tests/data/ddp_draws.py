"""One epoch of the DataModule's loaders under two-process DDP on the CPU (gloo).

Run by ``tests/test_distributed.py`` as ``python ddp_draws.py DATA_ROOT OUT_DIR``;
Lightning's launcher starts rank 1 by running this script again. Each rank writes
``OUT_DIR/rank<r>.json``: the ids and labels of the MS and SAR training samples and the
ids of the validation samples it saw, as the real training loaders drew them.
"""

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from discomkd_geo.config import DataConfig
from discomkd_geo.data.datamodule import MSSARDataModule


class Recorder(L.LightningModule):
    """Records every batch's samples; one parameter, so DDP has gradients to reduce."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[str, list[Any]] = {"id_ms": [], "label_ms": [], "id_sar": [],
                                           "label_sar": [], "val": []}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        for key in ("id_ms", "id_sar"):
            self.seen[key] += list(batch[key])
        for key in ("label_ms", "label_sar"):
            self.seen[key] += batch[key].tolist()
        return self.weight * batch["image_ms"].mean()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.seen["val"] += list(batch["id"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(root: str, out: str) -> None:
    dm = MSSARDataModule(DataConfig(root=root, batch_size=8, num_workers=0, cache_mib=0))
    module = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1,
                        use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    path = Path(out) / f"rank{trainer.global_rank}.json"
    path.write_text(json.dumps({**module.seen, "world": trainer.world_size,
                                "train_ids": {m: list(ds.ids)  # type: ignore[attr-defined]
                                              for m, ds in dm.train_datasets.items()},
                                "val_ids": list(dm.val_dataset.dataset.ids)}))  # type: ignore


if __name__ == "__main__":
    main(*sys.argv[1:3])
