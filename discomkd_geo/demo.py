"""The built-in demo: the whole story on synthetic data, from training to a scored SAR map.

Top of the import flow, beside the CLI (``discomkd-geo demo``, ``make demo``):

1. generate a synthetic EuroSat-MS-SAR dataset (published layout) into the cache;
2. train the small DisCoM-KD model of ``configs/demo.yaml`` on paired MS/SAR patches;
3. map the demo scene ``tiles/demo/sar.tif`` from **SAR alone** to a land-cover GeoTIFF;
4. draw a quicklook PNG beside the truth and score the map against ``truth.tif``.
"""

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject

from ._io import atomic_path, check_writable
from .constants import CLASS_NODATA, SAR
from .errors import InputFileError

#: Repository folders the demo reads (present in a source checkout).
REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
DEMO_TILES = REPO / "tiles" / "demo"


def cache_dir() -> Path:
    """Where generated data lives: ``$DISCOMKD_GEO_CACHE`` or ``~/.cache/discomkd_geo``."""
    return Path(os.environ.get("DISCOMKD_GEO_CACHE", Path.home() / ".cache" / "discomkd_geo"))


def demo_dataset(per_class: int, seed: int) -> Path:
    """The synthetic EuroSat-MS-SAR dataset of the demo, generated once into the cache."""
    from .data.synthetic import make_eurosat

    root = cache_dir() / f"eurosat-synthetic-{per_class}-seed{seed}"
    if not root.is_dir():  # atomic_dir makes a present directory a complete one
        make_eurosat(root, per_class=per_class, seed=seed)
    return root


def map_to_grid(map_path: str | os.PathLike[str],
                grid_path: str | os.PathLike[str]) -> np.ndarray:
    """Class codes of a map resampled (nearest) onto another raster's grid and CRS."""
    with rasterio.open(grid_path) as grid, rasterio.open(map_path) as src:
        out = np.full((grid.height, grid.width), CLASS_NODATA, dtype=np.uint8)
        reproject(rasterio.band(src, 1), out, dst_transform=grid.transform, dst_crs=grid.crs,
                  dst_nodata=CLASS_NODATA, resampling=Resampling.nearest)
    return out


def score_map(map_path: str | os.PathLike[str], truth_path: str | os.PathLike[str],
              classes: list[str]) -> dict[str, Any]:
    """Per-pixel agreement of a land-cover map with a truth raster, on the truth's grid.

    Pixels that are nodata in either raster are left out.

    Returns:
        ``pixels`` scored, ``coverage`` (mapped share of the truth's valid pixels),
        ``oa``, ``f1_weighted``, ``f1_macro`` and per-class ``f1``.
    """
    import torch
    from torchmetrics.functional.classification import multiclass_f1_score

    pred = map_to_grid(map_path, truth_path)
    with rasterio.open(truth_path) as src:
        truth = src.read(1)
    valid_truth = truth != CLASS_NODATA
    valid = valid_truth & (pred != CLASS_NODATA)
    p = torch.from_numpy(pred[valid].astype(np.int64))
    t = torch.from_numpy(truth[valid].astype(np.int64))
    k = len(classes)
    per_class = multiclass_f1_score(p, t, k, average="none")
    return {
        "pixels": int(valid.sum()),
        "coverage": float(valid.sum() / max(1, valid_truth.sum())),
        "oa": float((p == t).float().mean()),
        "f1_weighted": float(multiclass_f1_score(p, t, k, average="weighted")),
        "f1_macro": float(multiclass_f1_score(p, t, k, average="macro")),
        "f1": {c: float(v) for c, v in zip(classes, per_class, strict=True)},
    }


def quicklook(sar_path: str | os.PathLike[str], map_path: str | os.PathLike[str],
              truth_path: str | os.PathLike[str], classes: list[str],
              colors: list[tuple[int, int, int]], out: str | os.PathLike[str],
              title: str) -> None:
    """PNG: the SAR input (VV), the SAR-only map and the truth, side by side, with a legend.

    The map is shown on the truth's grid so the two compare pixel for pixel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    with rasterio.open(sar_path) as src:
        vv = src.read(1, masked=True).astype(np.float32)
    with rasterio.open(truth_path) as src:
        truth = np.ma.masked_equal(src.read(1), CLASS_NODATA)
    pred = np.ma.masked_equal(map_to_grid(map_path, truth_path), CLASS_NODATA)
    cmap = ListedColormap(np.asarray(colors) / 255.0)
    lo, hi = np.percentile(vv.compressed(), [2, 98])
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), layout="constrained")
    axes[0].imshow(vv, cmap="gray", vmin=lo, vmax=hi)
    axes[0].set_title("Input: Sentinel-1 VV (dB)")
    axes[1].imshow(pred, cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, interpolation="nearest")
    axes[1].set_title("DisCoM-KD map from SAR alone")
    axes[2].imshow(truth, cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5,
                   interpolation="nearest")
    axes[2].set_title("Truth")
    for ax in axes:
        ax.set_axis_off()
    fig.legend(handles=[Patch(color=np.asarray(c) / 255.0, label=n)
                        for n, c in zip(classes, colors, strict=True)],
               loc="outside lower center", ncol=5, frameon=False)
    fig.suptitle(title)
    with atomic_path(out, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run_demo(out: str | os.PathLike[str], overwrite: bool = False,
             config_path: str | os.PathLike[str] = DEMO_CONFIG,
             tiles: str | os.PathLike[str] = DEMO_TILES, per_class: int = 150, seed: int = 0,
             overrides: tuple[str, ...] = (), progress: bool = True,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo into ``out`` and return its summary (also ``out/summary.json``).

    Args:
        out: output directory (refused if not empty, unless ``overwrite``).
        overwrite: replace the outputs of an earlier demo.
        config_path: training config (``configs/demo.yaml``).
        tiles: folder with the demo scene: ``sar.tif`` and ``truth.tif``.
        per_class: synthetic training images per class.
        seed: seed of the data generator and of training.
        overrides: dotted config overrides, e.g. ``("trainer.max_epochs=2",)``.
        progress: show progress bars.
        echo: where to report each step.

    Raises:
        InputFileError: the config or the demo scene is missing.
    """
    from .config import load_config
    from .inference.engine import predict_to_file
    from .models.predictor import load_predictor
    from .training.train import train

    out = Path(out)
    tiles = Path(tiles)
    for needed in (Path(config_path), tiles / "sar.tif", tiles / "truth.tif"):
        if not needed.exists():
            raise InputFileError(needed, "demo input missing; run the demo from a source "
                                         "checkout, or pass --config and --tiles")
    check_writable(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    root = demo_dataset(per_class, seed)
    echo(f"[1/4] synthetic EuroSat-MS-SAR: {root}")

    config = load_config(config_path, (f"data.root={root}", f"seed={seed}", *overrides))
    echo(f"[2/4] training DisCoM-KD ({config.model.backbone}, "
         f"{config.trainer.max_epochs} epochs) into {out / 'run'}")
    result = train(config, out / "run", overwrite=True, progress=progress)
    for m, metrics in result.metrics.items():
        echo(f"      {m} patch test weighted F1 {metrics['f1_weighted']:.3f}")

    predictor = load_predictor(out / "run", SAR)
    map_path = out / "landcover_sar.tif"
    echo(f"[3/4] mapping {tiles / 'sar.tif'} from SAR alone -> {map_path}")
    mapping = predict_to_file(predictor, tiles / "sar.tif", map_path, overwrite=True,
                              progress=progress)

    classes = list(predictor.info.classes)
    accuracy = score_map(map_path, tiles / "truth.tif", classes)
    png = out / "quicklook.png"
    quicklook(tiles / "sar.tif", map_path, tiles / "truth.tif", classes,
              list(predictor.info.colors), png,
              f"SAR-only land cover: OA {accuracy['oa']:.1%}, "
              f"weighted F1 {accuracy['f1_weighted']:.3f}")
    echo(f"[4/4] map vs truth: OA {accuracy['oa']:.3f}, weighted F1 "
         f"{accuracy['f1_weighted']:.3f} over {accuracy['pixels']} px -> {png}")

    summary = {
        "dataset": str(root),
        "patch_test": result.metrics,
        "map": str(map_path),
        "mapping": mapping,
        "map_accuracy": accuracy,
        "seconds": round(time.perf_counter() - start, 1),
    }
    for name, content in (("accuracy.json", accuracy), ("summary.json", summary)):
        with atomic_path(out / name, overwrite=True) as tmp:
            tmp.write_text(json.dumps(content, indent=2, default=str))
    echo(f"done in {summary['seconds']:.0f} s: {out}")
    return summary
