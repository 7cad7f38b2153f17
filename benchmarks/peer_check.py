"""Peer check: our DisCoM-KD at the paper's settings, beside the authors' public script.

The paper's recipe (``configs/eurosat_ms_sar.yaml``: ResNet-18 encoders, batch 128 per
modality, Adam lr 1e-4) trained for a few epochs on synthetic EuroSat-MS-SAR with 150
images per class (random 70/10/20 split: 1,050 training pairs), on this machine's CPU.
The authors' ``main_DisCoM-KD.py`` was measured elsewhere on the same kind of 2-core
machine and data size (10 epochs, batch 128): SAR 83.1 and MS 98.7 weighted F1 at its
best-validation epochs, about 40-47 s per epoch; those figures are quoted, not rerun.

Reported per modality: validation weighted F1 per epoch, test weighted F1 of the best
validation epoch, and the mean wall time per epoch (fit time / epochs, validation
included). Written to ``benchmarks/compare_protocol/peer_check.json``.

    python benchmarks/peer_check.py [--epochs 3] [--per-class 150] [--data DIR] [--threads 1]

One torch thread by default: on a shared 2-core machine OpenMP threads stall each other.
"""

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from discomkd_geo.config import load_config
from discomkd_geo.data.synthetic import make_eurosat
from discomkd_geo.training.plots import read_epoch_log
from discomkd_geo.training.train import train

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT.parent / "configs" / "eurosat_ms_sar.yaml"
OUT = ROOT / "compare_protocol" / "peer_check.json"
AUTHORS = {"script": "tanodino/CMKD_Disentangle main_DisCoM-KD.py", "epochs": 10,
           "per_class": 150, "batch_size": 128, "f1_weighted": {"sar": 0.831, "ms": 0.987},
           "seconds_per_epoch": [40, 47], "train_pairs": 1050}


def main() -> None:
    """Train, read the run back, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--data", type=Path, help="existing dataset (default: generate one)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            make_eurosat(data, per_class=args.per_class, seed=0)
        config = load_config(CONFIG, (f"data.root={data}", f"trainer.max_epochs={args.epochs}",
                                      "data.num_workers=0", "trainer.accelerator=cpu"))
        run = Path(tmp) / "run"
        result = train(config, run, progress=False)
        log = read_epoch_log(run / "logs" / "metrics.csv")
    curves = {m: [v for _, v in log[f"val/{m}/f1_weighted"]] for m in result.metrics}
    ours = {
        "config": str(CONFIG.relative_to(ROOT.parent)), "epochs": args.epochs,
        "per_class": args.per_class, "batch_size": config.data.batch_size,
        "lr": config.optim.lr, "backbone": config.model.backbone,
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "seconds_per_epoch": result.seconds / args.epochs,
        "val_curve": curves,
        "f1_weighted": {m: metrics["f1_weighted"] for m, metrics in result.metrics.items()},
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"ours": ours, "authors": AUTHORS}, indent=2) + "\n")
    print(f"| run | epochs | SAR F1 | MS F1 | s/epoch |\n|---|---|---|---|---|\n"
          f"| ours (ResNet-18, batch 128, lr 1e-4) | {args.epochs} | "
          f"{100 * ours['f1_weighted']['sar']:.1f} | {100 * ours['f1_weighted']['ms']:.1f} | "
          f"{ours['seconds_per_epoch']:.0f} |\n"
          f"| authors' script (quoted) | 10 | 83.1 | 98.7 | 40-47 |")
    print(f"validation weighted F1 per epoch: {curves}")


if __name__ == "__main__":
    main()
