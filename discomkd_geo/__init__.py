"""discomkd_geo: DisCoM-KD cross-modal distillation for Sentinel-2 / Sentinel-1 imagery.

DisCoM-KD (Ienco & Fraga Dantas, 2024, arXiv:2408.07080) trains every single-modality
classifier at once from multi-modal data. This package adds the data layer (TorchGeo
datasets, samplers, Kornia augmentations), a Lightning trainer with self-describing
checkpoints, and a Dask-parallel tiled engine that writes land-cover GeoTIFFs from
whichever modality is available.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_predictor"]


def __getattr__(name: str) -> Any:
    # Lazy: ``import discomkd_geo`` (and so the CLI's --help) must not import torch.
    if name == "load_predictor":
        from .models.loader import load_predictor

        return load_predictor
    raise AttributeError(f"module 'discomkd_geo' has no attribute {name!r}")
