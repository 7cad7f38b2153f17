"""Session fixtures shared by every test module: synthetic data generated once per run."""

from pathlib import Path

import pytest

from discomkd_geo.data.synthetic import make_eurosat, make_scene


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip the ``cuda``-marked tests, saying why, where torch sees no CUDA GPU."""
    if item.get_closest_marker("cuda") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU (benchmarks/gpu_check.sh runs these on one)")


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


@pytest.fixture(scope="session")
def demo_sar_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SAR DisCoM-KD branch for the demo scene (``tiles/demo/sar.tif``), saved as ``.pt``.

    Random small-CNN weights whose batch-norm statistics are calibrated on the scene's
    windows and normalisation statistics taken from the scene: an input-sensitive model
    that maps the demo scene into several classes (a one-epoch training run maps it into
    one), in seconds.
    """
    import numpy as np
    import rasterio
    import torch

    from discomkd_geo.constants import EUROSAT_CLASSES, EUROSAT_COLORS, S1_BANDS
    from discomkd_geo.data.bandstats import BandStats
    from discomkd_geo.demo import DEMO_TILES
    from discomkd_geo.models.branches import build_branch
    from discomkd_geo.models.info import PredictorInfo
    from discomkd_geo.models.predictor import Predictor

    with rasterio.open(DEMO_TILES / "sar.tif") as src:
        scene = src.read().astype(np.float32)
    valid = scene.reshape(len(scene), -1)
    valid = valid[:, np.isfinite(valid).all(axis=0)]
    p2, p50, p98 = (np.percentile(valid, q, axis=1).tolist() for q in (2, 50, 98))
    scale = [b - a for a, b in zip(p2, p98, strict=True)]
    stats = BandStats("percentile", list(S1_BANDS), p2, scale, {"p2": p2, "p50": p50, "p98": p98})
    spec = {"kind": "discomkd", "in_channels": 2, "num_classes": 10,
            "backbone": "small_cnn", "width": 8}
    info = PredictorInfo("sar", list(S1_BANDS), list(EUROSAT_CLASSES), list(EUROSAT_COLORS),
                         64, 10.0, "dB", branch_spec=spec)
    torch.manual_seed(0)
    predictor = Predictor(build_branch(**spec), stats, info)
    for module in predictor.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative: the statistics of all windows below
    windows = np.stack([scene[:, r:r + 64, c:c + 64] for r in range(0, 450, 32)
                        for c in range(0, 450, 32)])
    windows = np.where(np.isfinite(windows), windows, np.float32(p50)[None, :, None, None])
    with torch.no_grad():
        predictor.train()(torch.from_numpy(windows))
    path = tmp_path_factory.mktemp("demo_sar") / "sar.pt"
    predictor.eval().save(path)
    return path
