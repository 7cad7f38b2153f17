"""Training runner, self-describing checkpoints, evaluate/export CLI, config errors."""

import csv
import json
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from discomkd_geo import load_predictor
from discomkd_geo.cli import main
from discomkd_geo.config import Config, load_config
from discomkd_geo.data.datamodule import MSSARDataModule
from discomkd_geo.data.normalization import Normalize
from discomkd_geo.errors import CheckpointError
from discomkd_geo.models.layout import channels_last
from discomkd_geo.training.evaluate import evaluate
from discomkd_geo.training.module import VAL_BEST_KEY, DisCoMKDTask
from discomkd_geo.training.train import data_info, log_interval, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = (
    "model.backbone=small_cnn",
    "model.width=8",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "optim.lr=0.003",
)


@pytest.fixture(scope="module")
def run_dir(eurosat_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = load_config(None, (*TINY, f"data.root={eurosat_root}"))
    out = tmp_path_factory.mktemp("train") / "run"
    result = train(config, out, progress=False)
    assert set(result.metrics) == {"ms", "sar"}
    return out


@pytest.mark.slow
def test_run_directory_holds_everything(run_dir: Path) -> None:
    for m in ("ms", "sar"):
        assert (run_dir / "checkpoints" / f"best-{m}.ckpt").is_file()
        assert (run_dir / "plots" / f"confusion_{m}.png").stat().st_size > 1000
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    for name in ("losses.png", "f1.png"):
        assert (run_dir / "plots" / name).stat().st_size > 1000
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["sar"]["f1_weighted"] <= 1.0
    log = next(run_dir.rglob("metrics.csv")).read_text().splitlines()[0]
    for term in ("cl", "adv", "mod", "aux", "perp"):  # every loss term is logged
        assert f"train/{term}" in log


@pytest.mark.slow
def test_best_checkpoints_hold_weights_last_holds_resume_state(run_dir: Path) -> None:
    ckpts = run_dir / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["optimizer_states"] and "callbacks" in last  # what --resume needs
    # Written in the background, complete when train returned, no temporary left.
    assert last["epoch"] == 1
    assert {p.name for p in ckpts.iterdir()} == {"last.ckpt", "best-ms.ckpt", "best-sar.ckpt"}
    for m in ("ms", "sar"):
        best = torch.load(ckpts / f"best-{m}.ckpt", weights_only=True)
        assert "optimizer_states" not in best and "callbacks" not in best
        assert best["state_dict"].keys() == last["state_dict"].keys()
        assert (ckpts / f"best-{m}.ckpt").stat().st_size < (ckpts / "last.ckpt").stat().st_size / 2


def test_adam_is_fused_on_cpu(eurosat_root: Path) -> None:
    config = load_config(None, (*TINY, f"data.root={eurosat_root}"))
    dm = MSSARDataModule(config.data)
    dm.setup()
    task = DisCoMKDTask(config.to_dict(), data_info(dm))
    optimizer = task.configure_optimizers()
    assert optimizer.defaults["fused"] and optimizer.defaults["lr"] == 0.003
    assert len(optimizer.param_groups[0]["params"]) == len(list(task.parameters()))


def test_training_batches_are_channels_last_weights_keep_their_layout(
        eurosat_root: Path) -> None:
    config = load_config(None, (*TINY, f"data.root={eurosat_root}"))
    dm = MSSARDataModule(config.data)
    dm.setup()
    task = DisCoMKDTask(config.to_dict(), data_info(dm))
    task.setup("fit")
    batch = dm.preprocess(next(iter(dm.train_dataloader())), augment=False)
    # What training and evaluation steps feed the model.
    nhwc, labels = task.split_batch(batch, list(task.modalities))
    images = {m: batch[f"image_{m}"] for m in task.modalities}  # as the DataModule gives
    for m, x in nhwc.items():
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        assert images[m].is_contiguous()
        assert torch.equal(x, images[m])
    assert channels_last(labels["ms"]) is labels["ms"]  # not an image batch
    nchw_loss = task.criterion(task.model(images), labels)["loss"]
    loss = task.criterion(task.model(nhwc), labels)["loss"]
    torch.testing.assert_close(loss, nchw_loss)  # float rounding apart, the same step
    loss.backward()
    for name, p in task.model.named_parameters():  # what Adam and checkpoints see
        assert p.is_contiguous() and p.grad is not None and p.grad.stride() == p.stride(), name


#: Eight "steps", each holding 192 MiB of tensors (and small ones between them) at once,
#: then freeing them all; prints the minor page faults of each step.
_FAULTS = """
import resource, sys, torch
from discomkd_geo.memory import retain_freed_memory
retained = sys.argv[1] == "retain" and retain_freed_memory()
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = []
    for mib in (40, 64, 48, 40):
        held.append(torch.ones(mib * 2**18))
        held.extend(torch.ones(256) for _ in range(50))
    del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(retained, *[step() for _ in range(8)])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_freed_training_memory_is_reused_not_faulted_in_again() -> None:
    def faults(mode: str) -> tuple[bool, list[int]]:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], check=True,
                             capture_output=True, text=True).stdout.split()
        return out[0] == "True", [int(c) for c in out[1:]]

    pages = 192 * 2**20 // 4096
    _, default = faults("default")
    assert min(default[-3:]) > pages // 2  # glibc unmaps the big blocks: every step is fresh
    retained, kept = faults("retain")
    assert retained and max(kept[-3:]) < pages // 100  # the heap keeps and reuses them


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["ms", "sar"])
def test_load_predictor_reproduces_training_model(run_dir: Path, modality: str) -> None:
    ckpt = run_dir / "checkpoints" / f"best-{modality}.ckpt"
    task = DisCoMKDTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    predictor = load_predictor(run_dir, modality)
    bands = predictor.info.bands
    assert bands == task.modalities[modality]
    raw = torch.rand(4, len(bands), 64, 64) * (3000 if modality == "ms" else -25)
    with torch.no_grad():
        # Channels-last: the layout of training's steps and evaluation, and the predictor's.
        normalized = channels_last(Normalize(predictor.stats)(raw))
        logits = task.model.branch(modality)(normalized)  # calibrated by train:
        expected = torch.softmax(logits / predictor.info.temperature, 1)
        assert torch.equal(predictor(raw), expected)
    info = predictor.info
    assert info.patch_size == 64 and info.pixel_size == 10.0
    assert len(info.classes) == len(info.colors) == 10
    assert info.units == ("dB" if modality == "sar" else "dn")


@pytest.mark.slow
def test_evaluate_matches_lightning_test(run_dir: Path) -> None:
    """The deployed predictor on raw files scores exactly what training's test step saw."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(run_dir),
                                       "--modality", "sar", "--json"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)
    assert scored["samples"] == sum(map(sum, scored["confusion"])) > 0
    assert scored["f1_weighted"] == pytest.approx(metrics["test"]["sar"]["f1_weighted"], abs=1e-5)
    assert scored["oa"] == pytest.approx(metrics["test"]["sar"]["oa"], abs=1e-5)


@pytest.mark.slow
def test_export_round_trip_and_refusal(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sar.pt"
    args = ["export", "--checkpoint", str(run_dir), "--modality", "sar", "-o", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert out.stat().st_size < (run_dir / "checkpoints" / "best-sar.ckpt").stat().st_size
    raw = torch.randn(3, 2, 64, 64) * 5 - 12
    with torch.no_grad():
        assert torch.equal(load_predictor(out)(raw), load_predictor(run_dir, "sar")(raw))
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0
    assert "already exists" in again.output and str(out) in again.output
    # The output is checked before the checkpoint is read (which may be large).
    early = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "none.ckpt"),
                                      "--modality", "sar", "-o", str(tmp_path / "no" / "s.pt")])
    assert early.exit_code == 1 and "directory" in early.output
    assert "does not exist; create it first" in early.output


@pytest.mark.slow
def test_missing_modality_is_one_line_error(run_dir: Path) -> None:
    ckpt = run_dir / "checkpoints" / "best-sar.ckpt"
    with pytest.raises(CheckpointError, match="no 'rgb' branch.*it has: ms, sar"):
        load_predictor(ckpt, "rgb")
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(ckpt),
                                       "--modality", "rgb"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and str(ckpt) in result.output


@pytest.mark.slow
def test_checkpoint_of_other_bands_is_refused(run_dir: Path, tmp_path: Path,
                                              eurosat_root: Path) -> None:
    """A SAR model for HH/HV data cannot be scored on VV/VH files."""
    payload = torch.load(run_dir / "checkpoints" / "best-sar.ckpt", weights_only=True)
    entry = payload["discomkd_geo"]["predictors"]["sar"]
    entry["info"]["bands"] = entry["stats"]["bands"] = ["HH", "HV"]
    other = tmp_path / "hh.ckpt"
    torch.save(payload, other)
    with pytest.raises(CheckpointError, match=r"hh\.ckpt: the sar branch does not fit"):
        evaluate(other, "sar", data_root=eurosat_root)


@pytest.mark.parametrize(("override", "key"), [
    ("model.widht=3", "model.widht"),
    ("trainer.max_epochs=many", "trainer.max_epochs"),
    ("loss.orthogonality=cosine", "loss.orthogonality"),
])
def test_config_errors_name_the_key(override: str, key: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train", "--config", str(CONFIGS / "demo.yaml"),
                                       "--set", override, "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert key in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("batches", "settings", "expected"), [
    (7, (), 7),  # interval 50
    (7, ("trainer.log_every_n_steps=4",), 4),
    (7, ("trainer.limit_train_batches=0.5",), 3),
    (7, ("trainer.limit_train_batches=2",), 2),
    (1, (), 1),
])
def test_log_interval_is_at_most_an_epoch(batches: int, settings: tuple[str, ...],
                                          expected: int) -> None:
    config = load_config(None, settings)
    assert log_interval(config, batches) == expected


@pytest.mark.slow
def test_short_epochs_train_without_lightning_warning(eurosat_root: Path,
                                                      tmp_path: Path) -> None:
    """Lightning warns when an epoch has fewer batches than the logging interval (50)."""
    settings = [s for s in TINY if not s.startswith("trainer.log_every_n_steps")]
    config = load_config(None, (*settings, "trainer.max_epochs=1", "model.width=4",
                                f"data.root={eurosat_root}"))
    assert config.trainer.log_every_n_steps == 50
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config, tmp_path / "run", progress=False)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "logging interval" in m], messages
    assert "train/cl" in (tmp_path / "run" / "logs" / "metrics.csv").read_text()



@pytest.mark.slow
def test_best_validation_scores_are_resumed(run_dir: Path) -> None:
    """last.ckpt holds each head's best validation score so far; a resumed task has it."""
    last = run_dir / "checkpoints" / "last.ckpt"
    with next(run_dir.rglob("metrics.csv")).open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("val/sar/f1_weighted")]
    best = [max(float(r[f"val/{h}/f1_weighted"]) for r in logged) for h in ("ms", "sar")]
    saved = torch.load(last, weights_only=True)[VAL_BEST_KEY]
    assert saved == pytest.approx(best)
    task = DisCoMKDTask.load_from_checkpoint(last, map_location="cpu")
    assert task.val_best is not None and task.val_best.tolist() == saved

class ScriptedScore(nn.Module):
    """A head's validation metric that reports a given weighted F1 per epoch."""

    def __init__(self, head: str, scores: list[float]) -> None:
        super().__init__()
        self.head, self.scores, self.epoch = head, scores, 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """The score is scripted: batches change nothing."""

    def compute(self) -> dict[str, torch.Tensor]:
        return {f"val/{self.head}/f1_weighted": torch.tensor(self.scores[self.epoch])}

    def reset(self) -> None:
        self.epoch += 1


@pytest.mark.slow
@pytest.mark.parametrize(("rule", "epochs"), [("heads", 6), ("mean", 3)])
def test_early_stopping_stops_no_head_that_still_improves(eurosat_root: Path, tmp_path: Path,
                                                          rule: str, epochs: int) -> None:
    """MS saturates then dips, SAR improves every epoch: the mean never beats epoch 1's."""
    scripted = {"ms": [1.0, 0.8, 0.8, 0.8, 0.8, 0.8], "sar": [0.5, 0.6, 0.65, 0.68, 0.69, 0.7]}
    config = load_config(None, (*TINY, "model.width=4", f"data.root={eurosat_root}",
                                "trainer.max_epochs=6", "trainer.early_stopping_patience=2",
                                f"trainer.early_stopping_rule={rule}"))

    def build(config: Config, info: dict[str, Any]) -> DisCoMKDTask:
        task = DisCoMKDTask(config.to_dict(), info)
        for h in task.heads:
            task.val_metrics[h] = ScriptedScore(h, scripted[h])
        return task

    train(config, tmp_path / "run", progress=False, build_task=build)
    with (tmp_path / "run" / "logs" / "metrics.csv").open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("val/sar/f1_weighted")]
    assert len(logged) == epochs
    best = (1.0 + scripted["sar"][epochs - 1]) / 2  # MS's best is epoch 1's
    assert float(logged[-1]["val/f1_best"]) == pytest.approx(best)
