"""How well a land-cover map agrees with a truth raster: OA, weighted F1, edge OA, coverage.

The one scorer of maps, used by the demo, the map benchmarks and ``compare``'s map-level
score. A map is scored on the *truth's* grid (resampled by nearest neighbour), and only
where both rasters hold a class. The "edge OA" is the OA within 3 px of a class
boundary, the band of the issues' reference scorer (``score_map.py``): truth pixels whose
class differs from the pixel above or to the left, dilated 3 times with 4-connectivity.
That band is where a map's blocky or blurred boundaries cost agreement; the plain OA
hides them, since about nine pixels in ten of a scene are inside a parcel.
"""

import os
from typing import Any

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject

from ..constants import CLASS_NODATA

#: Dilation, in pixels, of the class boundaries that make the edge band (score_map.py's).
EDGE_WIDTH = 3


def map_to_grid(map_path: str | os.PathLike[str],
                grid_path: str | os.PathLike[str]) -> np.ndarray:
    """Class codes of a map resampled (nearest) onto another raster's grid and CRS."""
    with rasterio.open(grid_path) as grid, rasterio.open(map_path) as src:
        out = np.full((grid.height, grid.width), CLASS_NODATA, dtype=np.uint8)
        reproject(rasterio.band(src, 1), out, dst_transform=grid.transform, dst_crs=grid.crs,
                  dst_nodata=CLASS_NODATA, resampling=Resampling.nearest)
    return out


def boundary_band(truth: np.ndarray, width: int = EDGE_WIDTH) -> np.ndarray:
    """Pixels within ``width`` px (4-connectivity) of a class boundary of ``truth``.

    A boundary pixel differs from its upper or left neighbour; like score_map.py, the
    neighbour wraps around the raster's edge (``np.roll``), so the first row and column
    compare with the last ones.
    """
    from scipy import ndimage

    edge = np.zeros(truth.shape, bool)
    for axis in (0, 1):
        edge |= truth != np.roll(truth, 1, axis=axis)
    return ndimage.binary_dilation(edge, iterations=width)


def score_map(map_path: str | os.PathLike[str], truth_path: str | os.PathLike[str],
              classes: list[str]) -> dict[str, Any]:
    """Per-pixel agreement of a land-cover map with a truth raster, on the truth's grid.

    Pixels that are nodata in either raster are left out.

    Args:
        map_path: the map (class codes, nodata :data:`~discomkd_geo.constants.CLASS_NODATA`).
        truth_path: the truth raster (same codes); its grid is the one scored on.
        classes: the class names, in code order.

    Returns:
        ``pixels`` scored, ``coverage`` (mapped share of the truth's valid pixels),
        ``oa``, ``edge_oa`` (OA in the boundary band, ``nan`` where the band holds no
        scored pixel), ``edge_share`` (the band's share of the scored pixels),
        ``f1_weighted``, ``f1_macro`` and per-class ``f1``.
    """
    import torch
    from torchmetrics.functional.classification import multiclass_f1_score

    pred = map_to_grid(map_path, truth_path)
    with rasterio.open(truth_path) as src:
        truth = src.read(1)
    valid_truth = truth != CLASS_NODATA
    valid = valid_truth & (pred != CLASS_NODATA)
    band = boundary_band(truth) & valid
    right = pred == truth
    p = torch.from_numpy(pred[valid].astype(np.int64))
    t = torch.from_numpy(truth[valid].astype(np.int64))
    k = len(classes)
    per_class = multiclass_f1_score(p, t, k, average="none")
    return {
        "pixels": int(valid.sum()),
        "coverage": float(valid.sum() / max(1, valid_truth.sum())),
        "oa": float(right[valid].mean()) if valid.any() else float("nan"),
        "edge_oa": float(right[band].mean()) if band.any() else float("nan"),
        "edge_share": float(band.sum() / max(1, valid.sum())),
        "f1_weighted": float(multiclass_f1_score(p, t, k, average="weighted")),
        "f1_macro": float(multiclass_f1_score(p, t, k, average="macro")),
        "f1": {c: float(v) for c, v in zip(classes, per_class, strict=True)},
    }
