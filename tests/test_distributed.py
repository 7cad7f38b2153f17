"""Distributed training: per-rank sampler shares, and two-process DDP runs on the CPU (gloo).

The DDP tests start real processes through Lightning's own launcher (the command a user
runs, started again for rank 1), so each costs the start-up of two Python processes.
"""

import csv
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch.utils.data import RandomSampler

from discomkd_geo.config import load_config
from discomkd_geo.data.samplers import ClassBalancedSampler, RankShard
from discomkd_geo.inference.engine import predict_to_file
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.models.predictor import load_torch_predictor
from discomkd_geo.training.train import train

DATA = Path(__file__).parent / "data"
TINY = ("model.backbone=small_cnn", "model.width=8", "data.batch_size=16",
        "data.num_workers=0", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "optim.lr=0.003")
DDP = ("trainer.devices=2", "trainer.strategy=ddp")


# -- RankShard, without processes ------------------------------------------------------
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("kind", ["balanced", "shuffle"])
def test_rank_shards_split_the_epoch_and_keep_the_class_balance(world: int, kind: str) -> None:
    targets = [0] * 30 + [1] * 12 + [2] * 21  # imbalanced: the draw balances it or not

    def sampler() -> torch.utils.data.Sampler[int]:  # the same seed on every rank
        generator = torch.Generator().manual_seed(5)
        if kind == "balanced":
            return ClassBalancedSampler(targets, 60, generator)
        return RandomSampler(range(len(targets)), generator=generator)

    epoch = list(sampler())
    shards = [list(RankShard(sampler(), world, r, targets)) for r in range(world)]
    assert all(len(s) == -(-len(epoch) // world) for s in shards)
    shares = [s[: len(s) - (r >= len(epoch) % world > 0)] for r, s in enumerate(shards)]
    assert sorted(sum(shares, [])) == sorted(epoch)  # disjoint, and together the epoch
    whole = Counter(targets[i] for i in epoch)
    for share in shares:  # every class split evenly: within one of its share of the epoch
        counts = Counter(targets[i] for i in share)
        assert all(abs(counts[c] - n / world) < 1 for c, n in whole.items())


def test_rank_shard_pads_the_short_ranks_and_checks_the_rank() -> None:
    shards = [list(RankShard(range(5), 2, r)) for r in range(2)]  # type: ignore[arg-type]
    assert shards == [[0, 2, 4], [1, 3, 0]]
    with pytest.raises(ValueError, match="rank must be in"):
        RankShard(range(5), 2, 2)  # type: ignore[arg-type]


# -- two processes ------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "discomkd_geo", *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _train_args(root: Path, out: Path, *sets: str) -> list[str]:
    return ["train", "--data-root", str(root), "--out", str(out), "--no-progress",
            *(a for s in (*TINY, *sets) for a in ("--set", s))]


def _logged_epochs(run: Path) -> list[str]:
    with (run / "logs" / "metrics.csv").open(newline="") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def ddp_run(eurosat_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of DisCoM-KD under two-process DDP, launched as a user would."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = _cli(*_train_args(eurosat_root, out, *DDP))
    assert result.stdout.count("run directory:") == 1  # rank 0 alone reports
    return out


@pytest.mark.slow
def test_ddp_ranks_draw_disjoint_class_balanced_shares(eurosat_root: Path,
                                                       tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(DATA / "ddp_draws.py"), str(eurosat_root),
                    str(tmp_path)], check=True, capture_output=True, timeout=600)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    for m in ("ms", "sar"):
        shares = [r[f"id_{m}"] for r in ranks]
        assert not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == sorted(ranks[0]["train_ids"][m])
        for r in ranks:  # 7 training images per class: 3 or 4 per class on each rank
            assert set(Counter(r[f"label_{m}"]).values()) <= {3, 4}
    val = [set(r["val"]) for r in ranks]
    assert not val[0] & val[1] and val[0] | val[1] == set(ranks[0]["val_ids"])


@pytest.mark.slow
def test_ddp_checkpoints_load_and_map_like_a_single_process_run(
        ddp_run: Path, eurosat_root: Path, scene_dir: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    train(load_config(None, (*TINY, f"data.root={eurosat_root}")), single, progress=False)
    summary = json.loads((ddp_run / "metrics.json").read_text())
    assert set(summary["test"]) == {"ms", "sar"}
    assert _logged_epochs(ddp_run).count("0") == 2  # epoch 0 logged once (val, train rows)
    profiles = []
    for run in (ddp_run, single):
        predictor = load_torch_predictor(run, "sar")
        out = tmp_path / f"{run.name}.tif"
        predict_to_file(predictor, scene_dir / "sar.tif", out, MapSettings.of(overwrite=True))
        with rasterio.open(out) as src:
            classes = src.read(1)
            profiles.append((src.shape, src.transform, src.crs, src.dtypes))
        assert np.isin(classes[classes != src.nodata], np.arange(10)).all()
    assert profiles[0] == profiles[1]


@pytest.mark.slow
def test_ddp_resume_continues_from_the_last_epoch(ddp_run: Path, eurosat_root: Path,
                                                  tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(ddp_run, run)
    (run / "metrics.json").unlink()  # as if killed after the first epoch's checkpoint
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    result = _cli(*_train_args(eurosat_root, run, *DDP, "trainer.max_epochs=2"), "--resume")
    assert "resuming from epoch 1" in result.stdout + result.stderr
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert (first["epoch"], last["epoch"]) == (0, 1)
    assert last["global_step"] == 2 * first["global_step"]
    weights = [k for k, v in first["state_dict"].items() if v.is_floating_point()]
    assert any(not torch.equal(first["state_dict"][k], last["state_dict"][k]) for k in weights)
    # Adam went on from its saved moments: its step count is the run's, not one epoch's.
    steps = [s["step"] for s in last["optimizer_states"][0]["state"].values()]
    assert all(float(s) == last["global_step"] for s in steps)
    epochs = _logged_epochs(run)
    assert epochs.count("0") == 2 and epochs.count("1") == 2  # each epoch's rows once
