"""Distributed training: per-rank sampler shares, and two-process DDP runs on the CPU (gloo).

The DDP tests start real processes through Lightning's own launcher (the command a user
runs, started again for rank 1), so each launch costs the start-up of two Python
processes. There are two, shared by every test: a three-epoch run killed mid-epoch
(``killed``: it also records what each rank drew) and its resumption (``ddp_run``).
"""

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch.utils.data import RandomSampler

from discomkd_geo.data.samplers import ClassBalancedSampler, RankShard
from discomkd_geo.inference.engine import predict_to_file
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.models.predictor import load_torch_predictor

DATA = Path(__file__).parent / "data"
#: Three epochs: the run is killed in the second, and the resumed run trains two.
TINY = ("model.backbone=small_cnn", "model.width=8", "data.batch_size=16",
        "data.num_workers=0", "trainer.max_epochs=3", "trainer.accelerator=cpu",
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


def _log_rows(run: Path) -> list[dict[str, str]]:
    with (run / "logs" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _group_members(pgid: int) -> list[int]:
    """The live processes of a process group (Linux's /proc; zombies are dead)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
                members.append(int(stat.parent.name))
    return members


@dataclass
class Killed:
    """A DDP run SIGKILLed mid-epoch, as the kill left it."""

    run: Path  # its run directory (resumed in place by ``ddp_run``)
    probe: Path  # rank0.json, rank1.json: the first epoch's draws (tests/data/ddp_train.py)
    checkpoint: Path  # a copy of the last.ckpt the kill left
    files: set[str]  # the run directory's files after the kill, relative
    log: str  # what both ranks printed


@pytest.fixture(scope="module")
def killed(eurosat_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Killed:
    """Three epochs of DisCoM-KD under two-process DDP, killed (SIGKILL, both ranks) in the
    middle of the second epoch, once the first epoch's checkpoints are on disk.

    ``tests/data/ddp_train.py`` runs the real CLI and training with a probe that records
    each rank's draws and holds rank 0 after the second epoch's first step (rank 1 then
    waits in the next gradient all-reduce), so the kill lands at a known point mid-epoch.
    The run is a session of its own (``start_new_session``): rank 1, which Lightning's
    launcher started from rank 0, is in its process group, and the whole group is killed.
    """
    base = tmp_path_factory.mktemp("ddp")
    run, probe, log = base / "run", base / "probe", base / "killed.log"
    probe.mkdir()
    last = run / "checkpoints" / "last.ckpt"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, str(DATA / "ddp_train.py"), str(probe), "1",
                                 *_train_args(eurosat_root, run, *DDP)],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 540
        while not ((probe / "held").is_file() and last.is_file()):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        ranks = _group_members(proc.pid)  # rank 0 holding, rank 1 in the all-reduce
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    assert len(ranks) >= 2 and proc.pid in ranks, ranks
    for _ in range(200):  # SIGKILL is delivered at once; the processes end within moments
        if not _group_members(proc.pid):
            break
        time.sleep(0.05)
    assert not _group_members(proc.pid), "a rank survived the SIGKILL of its process group"
    assert proc.returncode == -signal.SIGKILL
    text = log.read_text()
    assert "GLOBAL_RANK: 1" in text  # two processes trained
    checkpoint = base / "killed-last.ckpt"
    shutil.copy(last, checkpoint)
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    return Killed(run, probe, checkpoint, files, text)


@pytest.fixture(scope="module")
def ddp_run(killed: Killed, eurosat_root: Path) -> Path:
    """The killed run resumed to its end under two-process DDP, launched as a user would:
    ``python -m discomkd_geo train ... --resume``."""
    result = _cli(*_train_args(eurosat_root, killed.run, *DDP), "--resume")
    assert result.stdout.count("run directory:") == 1  # rank 0 alone reports
    (killed.run.parent / "resumed.log").write_text(result.stdout + result.stderr)
    return killed.run


@pytest.mark.slow
def test_ddp_ranks_draw_disjoint_class_balanced_shares(killed: Killed) -> None:
    """The training loaders' first epoch on each rank of the real run (the probe's record)."""
    ranks = [json.loads((killed.probe / f"rank{r}.json").read_text()) for r in range(2)]
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
def test_ddp_run_killed_mid_epoch_resumes_from_its_last_checkpoint(
        killed: Killed, ddp_run: Path) -> None:
    # What the kill left: the first epoch's checkpoints, whole; no test results.
    first = torch.load(killed.checkpoint, weights_only=False)
    assert first["epoch"] == 0 and "epoch 1" in (killed.probe / "held").read_text()
    assert {"checkpoints/last.ckpt", "checkpoints/best-ms.ckpt",
            "checkpoints/best-sar.ckpt"} <= killed.files
    assert "metrics.json" not in killed.files
    assert not [f for f in killed.files if ".partial" in f]
    resumed = (ddp_run.parent / "resumed.log").read_text()
    assert "resuming from epoch 1 (1 of 3 epochs done)" in resumed
    # The logging interval fits a rank's share of the epoch, not the whole epoch's.
    assert "smaller than the logging interval" not in killed.log + resumed
    assert "GLOBAL_RANK: 1" in resumed  # resumed under two processes too
    # ... and trained the two epochs left: the last checkpoint is the third epoch's.
    last = torch.load(ddp_run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == 3 * first["global_step"]
    weights = [k for k, v in first["state_dict"].items() if v.is_floating_point()]
    assert any(not torch.equal(first["state_dict"][k], last["state_dict"][k]) for k in weights)
    # Adam went on from its saved moments: its step count is the run's, not two epochs'.
    steps = [s["step"] for s in last["optimizer_states"][0]["state"].values()]
    assert steps and all(float(s) == last["global_step"] for s in steps)
    # The log holds each epoch once: its validation row and its training row; none of the
    # killed epoch's rows is left twice.
    rows = _log_rows(ddp_run)
    assert [r["epoch"] for r in rows if r.get("val/ms/f1_weighted")] == ["0", "1", "2"]
    trained = [r["epoch"] for r in rows if r.get("train/cl")]
    assert sorted(trained) == ["0", "1", "2"], trained
    summary = json.loads((ddp_run / "metrics.json").read_text())
    assert set(summary["test"]) == {"ms", "sar"}
    assert not list(ddp_run.rglob(".*partial*"))


@pytest.mark.slow
def test_ddp_checkpoints_load_and_map_like_a_single_process_run(
        ddp_run: Path, ms4_run: Path, scene_dir: Path, tmp_path: Path) -> None:
    """The resumed DDP run's SAR branch maps like the one of ``ms4_run`` (conftest): one
    process, the same tiny SAR branch and data (its MS branch reads four bands)."""
    profiles = []
    for run in (ddp_run, ms4_run):
        predictor = load_torch_predictor(run, "sar")
        out = tmp_path / f"{run.parent.name}.tif"
        predict_to_file(predictor, scene_dir / "sar.tif", out, MapSettings.of(overwrite=True))
        with rasterio.open(out) as src:
            classes = src.read(1)
            profiles.append((src.shape, src.transform, src.crs, src.dtypes))
        assert np.isin(classes[classes != src.nodata], np.arange(10)).all()
    assert profiles[0] == profiles[1]
