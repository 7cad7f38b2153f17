"""Session fixtures shared by every test module: synthetic data generated once per run."""

from pathlib import Path

import pytest

from discomkd_geo.data.synthetic import make_eurosat, make_scene


@pytest.fixture(scope="session")
def eurosat_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic EuroSat-MS-SAR, EuroSAT + EuroSAT-SAR layout: 10 pairs per class, seed 0."""
    root = tmp_path_factory.mktemp("eurosat") / "eurosat"
    make_eurosat(root, per_class=10, seed=0, layout="eurosat")
    return root


@pytest.fixture(scope="session")
def copernicus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic EuroSat-MS-SAR, Copernicus-Bench layout: 10 pairs per class, seed 1."""
    root = tmp_path_factory.mktemp("copernicus") / "copernicus"
    make_eurosat(root, per_class=10, seed=1, layout="copernicus")
    return root


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic scene pair (ms.tif, sar.tif, truth.tif, regions.gpkg), 256 px, seed 0."""
    out = tmp_path_factory.mktemp("scene") / "scene"
    make_scene(out, size=256, seed=0)
    return out


@pytest.fixture(scope="session")
def ms4_run(eurosat_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DisCoM-KD run whose MS branch reads B02, B03, B04, B08 (the bands of
    spyndex's real Sentinel-2 subset); one epoch on the synthetic EuroSat-MS-SAR."""
    from discomkd_geo.config import load_config
    from discomkd_geo.training.train import train

    config = load_config(None, (
        "model.backbone=small_cnn", "model.width=8", "data.batch_size=16",
        "data.num_workers=0", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "optim.lr=0.003", f"data.root={eurosat_root}",
        "data.modalities.ms.bands=[B02,B03,B04,B08]"))
    out = tmp_path_factory.mktemp("ms4") / "run"
    train(config, out, progress=False)
    return out
