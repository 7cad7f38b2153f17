"""The built-in demo: the whole story on synthetic data, from training to a scored SAR map.

Top of the import flow, beside the CLI (``discomkd-geo demo``, ``make demo``):

1. generate a synthetic EuroSat-MS-SAR dataset (published layout) into the cache;
2. train the small DisCoM-KD model of ``configs/demo.yaml`` on paired MS/SAR patches;
3. map the demo scene ``tiles/demo/sar.tif`` from **SAR alone** to a land-cover GeoTIFF;
4. draw a quicklook PNG beside the truth and score the map against ``truth.tif``.

The config and the scene travel inside the wheel (``discomkd_geo/demo_data``, mapped from
the repository's ``configs/`` and ``tiles/demo/`` by ``pyproject.toml``), so the demo runs
wherever the package is installed. The figures are reproducible: see :func:`reproducible`.
"""

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from .constants import CLASS_NODATA, SAR
from .errors import InputFileError
from .files import atomic_path, check_writable
from .inference.scoring import map_to_grid, score_map
from .logs import log


def _demo_files() -> tuple[Path, Path]:
    """The demo config and scene folder: packaged in an installed wheel, else the checkout's."""
    packaged = resources.files(__package__) / "demo_data"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged / "demo.yaml", packaged / "tiles"
    repo = Path(__file__).resolve().parents[1]
    return repo / "configs" / "demo.yaml", repo / "tiles" / "demo"


DEMO_CONFIG, DEMO_TILES = _demo_files()

#: ``demo --quick``: a smoke run of every step in well under a minute.
QUICK_PER_CLASS = 12
QUICK_OVERRIDES = ("trainer.max_epochs=1", "trainer.log_every_n_steps=1", "model.width=8",
                   "data.batch_size=32", "model.decoder_epochs=1")


@contextmanager
def reproducible(threads: int = 1) -> Iterator[None]:
    """Torch settings under which the demo gives the same figures on any machine.

    A fixed intra-op thread count (CPU kernels split their sums by thread, so another
    count rounds differently: two epochs on 1 and on 2 threads end with other weights)
    and deterministic algorithms; the previous settings come back afterwards. The demo
    also trains and maps on the CPU, since GPU kernels round differently again.

    Args:
        threads: torch intra-op threads while the block runs.
    """
    import torch

    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def cache_dir() -> Path:
    """Where generated data lives: ``$DISCOMKD_GEO_CACHE`` or ``~/.cache/discomkd_geo``."""
    return Path(os.environ.get("DISCOMKD_GEO_CACHE", Path.home() / ".cache" / "discomkd_geo"))


def demo_dataset(per_class: int, seed: int) -> Path:
    """The synthetic EuroSat-MS-SAR dataset of the demo, generated once into the cache."""
    from .data.synthetic import GENERATOR_VERSION, make_eurosat

    root = cache_dir() / f"eurosat-synthetic-v{GENERATOR_VERSION}-{per_class}-seed{seed}"
    if not root.is_dir():  # atomic_dir makes a present directory a complete one
        make_eurosat(root, per_class=per_class, seed=seed)
    return root


def draw_classes(ax: Any, codes: np.ndarray, colors: list[tuple[int, int, int]],
                 title: str) -> None:
    """Class codes on a matplotlib axis in the classes' colours (nodata left blank)."""
    from matplotlib.colors import ListedColormap

    ax.imshow(np.ma.masked_equal(codes, CLASS_NODATA),
              cmap=ListedColormap(np.asarray(colors) / 255.0), vmin=-0.5,
              vmax=len(colors) - 0.5, interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()


def class_legend(fig: Any, classes: list[str], colors: list[tuple[int, int, int]]) -> None:
    """A legend of every class's colour below the figure's panels."""
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=np.asarray(c) / 255.0, label=n)
                        for n, c in zip(classes, colors, strict=True)],
               loc="outside lower center", ncol=5, frameon=False)


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

    with rasterio.open(sar_path) as src:
        vv = src.read(1, masked=True).astype(np.float32)
    with rasterio.open(truth_path) as src:
        truth = src.read(1)
    lo, hi = np.percentile(vv.compressed(), [2, 98])
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), layout="constrained")
    axes[0].imshow(vv, cmap="gray", vmin=lo, vmax=hi)
    axes[0].set_title("Input: Sentinel-1 VV (dB)")
    axes[0].set_axis_off()
    draw_classes(axes[1], map_to_grid(map_path, truth_path), colors,
                 "DisCoM-KD map from SAR alone")
    draw_classes(axes[2], truth, colors, "Truth")
    class_legend(fig, classes, colors)
    fig.suptitle(title)
    with atomic_path(out, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run_demo(out: str | os.PathLike[str], overwrite: bool = False,
             config_path: str | os.PathLike[str] = DEMO_CONFIG,
             tiles: str | os.PathLike[str] = DEMO_TILES, per_class: int = 150, seed: int = 0,
             overrides: tuple[str, ...] = (), progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out`` and return its summary (also ``out/summary.json``).

    Each step is reported on the ``discomkd_geo`` logger. Training runs on the CPU under
    :func:`reproducible` (``overrides`` may name another accelerator).

    Args:
        out: output directory (refused if not empty, unless ``overwrite``).
        overwrite: replace the outputs of an earlier demo.
        config_path: training config (``configs/demo.yaml``).
        tiles: folder with the demo scene: ``sar.tif`` and ``truth.tif``.
        per_class: synthetic training images per class.
        seed: seed of the data generator and of training.
        overrides: dotted config overrides, e.g. ``("trainer.max_epochs=2",)``.
        progress: show progress bars (lines in a log file).

    Raises:
        InputFileError: the config or the demo scene is missing.
    """
    out = Path(out)
    tiles = Path(tiles)
    for needed in (Path(config_path), tiles / "sar.tif", tiles / "truth.tif"):
        if not needed.exists():
            raise InputFileError(needed, "demo input missing; reinstall discomkd-geo, or "
                                         "pass config_path= and tiles=")
    check_writable(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with reproducible():
        summary = _steps(out, Path(config_path), tiles, per_class, seed, overrides, progress)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    for name, content in (("accuracy.json", summary["map_accuracy"]),
                          ("summary.json", summary)):
        with atomic_path(out / name, overwrite=True) as tmp:
            tmp.write_text(json.dumps(content, indent=2, default=str))
    log.info("done in %.0f s: %s", summary["seconds"], out)
    return summary


def _steps(out: Path, config_path: Path, tiles: Path, per_class: int, seed: int,
           overrides: tuple[str, ...], progress: bool) -> dict[str, Any]:
    """The demo's four steps (see the module docstring); returns the summary."""
    from .config import load_config
    from .inference.engine import predict_to_file
    from .inference.settings import MapSettings
    from .models.predictor import load_torch_predictor
    from .training.train import train

    root = demo_dataset(per_class, seed)
    log.info("[1/4] synthetic EuroSat-MS-SAR, %d images per class: %s", per_class, root)

    config = load_config(config_path, ("trainer.accelerator=cpu", f"data.root={root}",
                                       f"seed={seed}", *overrides))
    epochs = config.trainer.max_epochs
    log.info("[2/4] training DisCoM-KD (%s, %d epoch%s) into %s", config.model.backbone,
             epochs, "s" * (epochs != 1), out / "run")
    result = train(config, out / "run", overwrite=True, progress=progress)
    for m, metrics in result.metrics.items():
        log.info("      %s patch test weighted F1 %.3f", m, metrics["f1_weighted"])

    predictor = load_torch_predictor(out / "run", SAR)
    map_path = out / "landcover_sar.tif"
    log.info("[3/4] mapping %s from SAR alone -> %s", tiles / "sar.tif", map_path)
    mapping = predict_to_file(predictor, tiles / "sar.tif", map_path,
                              MapSettings.of(overwrite=True, device="cpu"), progress=progress)

    classes = list(predictor.info.classes)
    accuracy = score_map(map_path, tiles / "truth.tif", classes)
    png = out / "quicklook.png"
    quicklook(tiles / "sar.tif", map_path, tiles / "truth.tif", classes,
              list(predictor.info.colors), png,
              f"SAR-only land cover, {mapping.mode} mode: OA {accuracy['oa']:.1%} "
              f"({accuracy['edge_oa']:.1%} within 3 px of a class boundary), "
              f"weighted F1 {accuracy['f1_weighted']:.3f}")
    log.info("[4/4] map vs truth (%s mode): OA %.3f, OA within 3 px of a boundary %.3f, "
             "weighted F1 %.3f over %d px -> %s", mapping.mode, accuracy["oa"],
             accuracy["edge_oa"], accuracy["f1_weighted"], accuracy["pixels"], png)
    return {"dataset": str(root), "patch_test": result.metrics, "map": str(map_path),
            "mapping": mapping.to_dict(), "map_accuracy": accuracy}
