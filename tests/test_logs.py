"""Logging policy, reproducible demo settings, effective configs and their reference."""

import logging
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from click.testing import CliRunner

from discomkd_geo import logs
from discomkd_geo.cli import main
from discomkd_geo.config import config_keys, config_reference
from discomkd_geo.demo import reproducible
from discomkd_geo.training.progress import epoch_summary

REPO = Path(__file__).resolve().parents[1]
RANK_ZERO = "lightning.pytorch.utilities.rank_zero"


@pytest.fixture()
def restore_logging() -> None:
    yield
    logs.configure(0)


def test_lightning_noise_is_dropped_by_message_and_the_rest_kept(
        caplog: pytest.LogCaptureFixture, restore_logging: None) -> None:
    logs.configure(0)
    lightning = logging.getLogger(RANK_ZERO)
    with caplog.at_level(logging.INFO, logger=RANK_ZERO):
        lightning.info("GPU available: False, used: False")
        lightning.info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
        lightning.info("`Trainer(limit_train_batches=1.0)` was configured so 100% ...")
        lightning.info("Restoring states from the checkpoint path at x.ckpt")
        lightning.info("Checkpoint directory exists and is not empty.")  # not known noise
    assert [r.getMessage() for r in caplog.records] == [
        "Checkpoint directory exists and is not empty."]
    logs.configure(1)  # -v: Lightning speaks freely
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=RANK_ZERO):
        lightning.info("GPU available: False, used: False")
    assert len(caplog.records) == 1


def test_only_the_named_warnings_are_silenced(restore_logging: None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logs.quiet_third_party()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning,
                      stacklevel=1)
        warnings.warn("some other deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["some other deprecation"]


def test_verbosity_levels(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    for verbosity, shown in ((-1, ["warning: w"]), (0, ["i", "warning: w"]),
                             (1, ["debug: d", "i", "warning: w"])):
        logs.configure(verbosity)
        logs.log.debug("d")
        logs.log.info("i")
        logs.log.warning("w")
        assert capsys.readouterr().err.splitlines() == shown


def test_log_lines_survive_a_closed_earlier_stderr(monkeypatch: pytest.MonkeyPatch,
                                                  restore_logging: None) -> None:
    """A test runner closes each test's stderr; the next line goes to the new one."""
    import io
    import sys

    logs.configure(0)
    old = io.TextIOWrapper(io.BytesIO())  # flush() after close() raises, as pytest's does
    monkeypatch.setattr(sys, "stderr", old)
    logs.log.info("first")
    old.close()
    new = io.StringIO()
    monkeypatch.setattr(sys, "stderr", new)
    logs.log.info("second")  # raised "I/O operation on closed file" before
    assert new.getvalue() == "second\n"


def test_epoch_summary_line() -> None:
    metrics = {"train/loss": torch.tensor(2.5), "train/cl": 1.0, "train/grl_lambda": 1.0,
               "val/ms/f1_weighted": 0.9, "val/sar/f1_weighted": torch.tensor(0.75)}
    assert epoch_summary(metrics, ["ms", "sar"]) == \
        "loss 2.500 (cl 1.000), val F1 ms 0.900 sar 0.750"


def test_reproducible_pins_threads_and_restores_them() -> None:
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with reproducible():
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


def test_not_georeferenced_raster_is_one_line_error(tmp_path: Path) -> None:
    raster = tmp_path / "plain.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(raster, "w", driver="GTiff", width=8, height=8, count=2,
                           dtype="float32") as dst:
            dst.write(np.zeros((2, 8, 8), np.float32))
    model = tmp_path / "model.pt"
    model.write_bytes(b"")  # never read: the scene is checked first
    from test_inference import make_predictor

    from discomkd_geo.errors import InputFileError
    from discomkd_geo.inference.engine import predict_to_file

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputFileError, match=r"plain.tif: is not georeferenced"):
            predict_to_file(make_predictor("sar", ["VV", "VH"]), raster, tmp_path / "m.tif")
    assert not caught


# --------------------------------------------------------------------------- configs
def test_print_config_is_the_effective_config() -> None:
    result = CliRunner().invoke(main, ["train", "--config", str(REPO / "configs" / "demo.yaml"),
                                       "--set", "trainer.max_epochs=3", "--data-root", "/d",
                                       "--download", "--print-config"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["trainer"]["max_epochs"] == 3 and printed["model"]["backbone"] == "small_cnn"
    assert printed["data"]["root"] == "/d" and printed["data"]["download"] is True
    assert printed["data"]["modalities"] == {"ms": {"bands": None}, "sar": {"bands": None}}
    mappings = {"data.modalities", "data.scenes.paths"}  # keys whose value is a mapping

    def leaves(node: dict, prefix: str = "") -> set[str]:
        return set().union(*({f"{prefix}{k}"} if not isinstance(v, dict)
                             or f"{prefix}{k}" in mappings else leaves(v, f"{prefix}{k}.")
                             for k, v in node.items()))

    # Every key is printed, and the reference documents exactly the printed keys.
    assert leaves(printed) == {k for k, *_ in config_keys() if "<name>" not in k}


def test_config_reference_is_current_and_in_help() -> None:
    assert (REPO / "docs" / "config.md").read_text() == config_reference(), \
        "regenerate: python -m discomkd_geo.config > docs/config.md"
    text = CliRunner().invoke(main, ["train", "--help"], terminal_width=200).output
    for key, *_ in config_keys():
        assert key in text
    assert "data.download" in text and "default: false" in text


def test_train_needs_out_unless_printing() -> None:
    result = CliRunner().invoke(main, ["train"])
    assert result.exit_code == 2 and "Missing option '--out'" in result.output


@pytest.mark.slow
def test_download_extracts_the_archives_the_error_message_names(eurosat_root: Path,
                                                                tmp_path: Path) -> None:
    root = tmp_path / "root"
    missing = CliRunner().invoke(main, ["train", "--data-root", str(root), "--out",
                                        str(tmp_path / "run"), "--set", "data.layout=eurosat"])
    assert missing.exit_code == 1 and "--download" in missing.output
    assert "data.download: true" in missing.output
    # The archives as published, already fetched into the root: --download unpacks them.
    from discomkd_geo.data.eurosat import EuroSATMSSAR

    root.mkdir()
    ms_archive, sar_archive = EuroSATMSSAR.archives["eurosat"]
    for archive, top in ((ms_archive, "ds"), (sar_archive, "EuroSAT-SAR")):
        with zipfile.ZipFile(root / archive.filename, "w") as z:
            for f in (eurosat_root / top).rglob("*"):
                z.write(f, f.relative_to(eurosat_root))
    for item in EuroSATMSSAR.split_downloads:  # fetched too (unused by the random split)
        (root / item.filename).touch()
    result = CliRunner().invoke(main, ["train", "--data-root", str(root), "--download",
                                       "--out", str(tmp_path / "run"), "--no-progress",
                                       "--set", "model.backbone=small_cnn",
                                       "--set", "model.width=4", "--set", "trainer.max_epochs=1",
                                       "--set", "data.num_workers=0",
                                       "--set", "trainer.accelerator=cpu",
                                       "--set", "trainer.log_every_n_steps=1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "metrics.json").is_file()
