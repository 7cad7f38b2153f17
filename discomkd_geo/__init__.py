"""discomkd_geo: DisCoM-KD cross-modal distillation for Sentinel-2 / Sentinel-1 imagery.

DisCoM-KD (Ienco & Fraga Dantas, 2024, arXiv:2408.07080) trains every single-modality
classifier at once from multi-modal data. This package adds the data layer (TorchGeo
datasets, samplers, Kornia augmentations), a Lightning trainer with self-describing
checkpoints, and a Dask-parallel tiled engine that writes land-cover GeoTIFFs from
whichever modality is available.
"""

__version__ = "0.1.0"
