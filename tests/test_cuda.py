"""On a CUDA GPU: bf16 mixed-precision training and a pixel-mode map (``-m cuda``).

Skipped, with the reason, where torch sees no GPU; ``benchmarks/gpu_check.sh`` runs them.
"""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from test_pixel_mode import pixel_predictor, write_pixel_scene

from discomkd_geo.config import load_config
from discomkd_geo.inference.engine import predict_to_file
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.models.predictor import load_torch_predictor
from discomkd_geo.training.train import train

pytestmark = pytest.mark.cuda


def test_bf16_training_on_cuda_gives_a_cpu_loadable_run(eurosat_root: Path,
                                                        tmp_path: Path) -> None:
    config = load_config(None, (
        "model.backbone=resnet18", "data.batch_size=32", "data.num_workers=2",
        "trainer.max_epochs=2", "trainer.accelerator=gpu", "trainer.devices=1",
        "trainer.precision=bf16-mixed", f"data.root={eurosat_root}"))
    result = train(config, tmp_path / "run", progress=False)
    assert set(result.metrics) == {"ms", "sar"}
    assert all(np.isfinite(m["f1_weighted"]) for m in result.metrics.values())
    predictor = load_torch_predictor(result.run_dir, "sar")  # float32 weights, on the CPU
    probabilities = predictor(torch.rand(4, 2, 64, 64) * -25)
    assert probabilities.dtype == torch.float32
    assert torch.allclose(probabilities.sum(1), torch.ones(4))


def test_pixel_map_on_cuda_matches_the_cpu_map(tmp_path: Path) -> None:
    scene = write_pixel_scene(tmp_path / "sar.tif")
    maps = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.tif"
        summary = predict_to_file(pixel_predictor(), scene, out, MapSettings.of(
            mode="pixel", block_size=32, device=device, probabilities=tmp_path / f"{device}.p.tif"))
        assert summary.mode == "pixel"
        with rasterio.open(out) as src, rasterio.open(tmp_path / f"{device}.p.tif") as p:
            maps[device] = (src.read(1), p.read())
    (cpu, p_cpu), (gpu, p_gpu) = maps["cpu"], maps["cuda"]
    assert np.allclose(p_cpu, p_gpu, atol=1e-3, equal_nan=True)  # TF32/cuDNN rounding only
    assert (cpu == gpu).mean() > 0.99
