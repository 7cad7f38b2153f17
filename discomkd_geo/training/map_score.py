"""``compare``'s map-level score: a run's SAR-only maps of held-out scenes, against truth.

The question users ask of cross-modal distillation is whether training with MS makes
their SAR-only *map* better, not only the patch classifier. So, when asked
(:class:`MapScore` with ``scenes > 0``), every run with a SAR head maps ``scenes``
synthetic scenes from SAR alone with the inference engine, and each map is scored against
its scene's truth (:func:`~discomkd_geo.inference.scoring.score_map`). The scenes have
seeds 101, 102, ...: no training data comes from them (the synthetic datasets are patches
of seed-0 generators; see ``benchmarks/bench_maps.py``, which scores the same scenes).
They are generated once per report under ``REPORT/scenes/``; every run maps the same
ones, so per-scene and mean scores are paired across methods and seeds.

A run keeps its maps under ``RUN/maps/`` and the per-scene figures in
``RUN/map_score.json`` (with the seconds mapping and scoring took, decoder fitting
included); the means over the scenes become its test metrics ``map_oa`` and
``map_edge_oa`` of head ``sar``.
"""

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from ..constants import SAR
from ..errors import SettingsError
from ..files import atomic_path
from ..inference.modes import Auto, MappingMode, mapping_mode
from ..inference.settings import MapSettings, Mode

if TYPE_CHECKING:
    from ..models.predictor import Predictor

#: Seed of the first held-out scene; scene ``i`` (from 0) has seed ``FIRST_SEED + i``.
FIRST_SEED = 101
#: Per-run test metrics the map score adds to head ``sar``.
MAP_METRICS = ("map_oa", "map_edge_oa")


@dataclass(frozen=True)
class MapScore:
    """How ``compare`` scores maps (``scenes == 0``: not at all).

    Attributes:
        scenes: held-out synthetic scenes to map per run (seeds 101, 102, ...).
        mode: the engine's mode. ``auto`` (``predict``'s default): ``pixel`` for runs
            with decoders (``model.decoder_epochs``), else ``windows``; ``windows``: every
            64 px window classified alone, at ``stride``; ``dense``: at the engine's
            default stride; ``pixel``: the per-pixel decoder, which a run without one is
            first given (:func:`~.decoder_fit.fit_decoders`, trained alone on mosaics of
            the run's training split, its branch frozen).
        stride: window step in pixels (``windows`` mode, and ``auto`` without decoder).
        size: side of the scenes in pixels (tests use small ones).

    Raises:
        SettingsError: a value out of range (``param`` names the field); ``mode`` and
            ``stride`` are checked as ``predict`` checks them (:class:`MapSettings`).
    """

    scenes: int = 0
    mode: Mode = Auto.name
    stride: int = 32
    size: int = 512

    def __post_init__(self) -> None:
        if self.scenes < 0:
            raise SettingsError("scenes", f"expected 0 or more, got {self.scenes}")
        if self.size < 64:
            raise SettingsError("size", f"expected at least 64, got {self.size}")
        self.map_settings()

    def map_settings(self, threads: int | None = None) -> MapSettings:
        """The engine's settings of the maps (on the CPU, ``threads`` torch threads)."""
        # Pixel mode ignores the stride (auto maps in it or in windows mode): only a mode
        # pooling its windows (dense) keeps its own, finer default.
        pooled = mapping_mode(self.mode).pools_windows
        return MapSettings.of(mode=self.mode, stride=None if pooled else self.stride,
                              device="cpu", threads=threads, overwrite=True)

    @property
    def seeds(self) -> list[int]:
        """The seeds of the held-out scenes."""
        return list(range(FIRST_SEED, FIRST_SEED + self.scenes))

    def to_json(self) -> dict[str, Any]:
        """The ``map_score`` entry of ``results.json``."""
        return asdict(self)

    def describe(self) -> str:
        """One line for the report."""
        how = mapping_mode(self.mode).describe(self.stride)
        return (f"SAR-only maps of {self.scenes} held-out synthetic scenes (seeds "
                f"{self.seeds[0]}-{self.seeds[-1]}, {self.size} px), {how}; map OA and "
                f"edge OA (within 3 px of a class boundary) are means over the scenes.")


def make_scenes(spec: MapScore, out: Path) -> list[Path]:
    """The held-out scenes under ``out`` (``scene<seed>/``), generated where missing."""
    from ..data.synthetic import make_scene

    scenes = []
    for seed in spec.seeds:
        scene = out / f"scene{seed}"
        if not scene.is_dir():  # make_scene writes a directory whole or not at all
            make_scene(scene, size=spec.size, seed=seed)
        scenes.append(scene)
    return scenes


def _sar_predictor(run_dir: Path, mode: MappingMode) -> "Predictor":
    """The run's SAR predictor; in a per-pixel mode, given a decoder first if it has none."""
    from ..models.predictor import load_torch_predictor

    predictor = load_torch_predictor(run_dir, SAR)
    if mode.per_pixel and not predictor.has_decoder:
        from .decoder_fit import fit_decoders

        fit_decoders(run_dir, None, [SAR], overwrite=True)
        predictor = load_torch_predictor(run_dir, SAR)
    return predictor


def score_scenes(predictor: "Predictor", scenes: list[Path], maps: Path, spec: MapScore,
                 threads: int | None = None) -> dict[str, dict[str, float]]:
    """Map every scene from SAR alone and score each map against its own scene's truth.

    Args:
        predictor: a SAR predictor (with a decoder in ``pixel`` mode).
        scenes: scene directories, each with ``sar.tif`` and ``truth.tif``.
        maps: directory the maps are written to, as ``<scene name>.tif``.
        spec: the mode and stride to map with.
        threads: torch threads of the mapping (``None``: torch's default).

    Returns:
        per scene name, its ``oa``, ``edge_oa``, ``f1_weighted`` and ``coverage``.
    """
    from ..inference.engine import predict_to_file
    from ..inference.scoring import score_map

    settings = spec.map_settings(threads)
    maps.mkdir(parents=True, exist_ok=True)
    per_scene: dict[str, dict[str, float]] = {}
    for scene in scenes:
        target = maps / f"{scene.name}.tif"
        predict_to_file(predictor, scene / "sar.tif", target, settings)
        figures = score_map(target, scene / "truth.tif", list(predictor.info.classes))
        per_scene[scene.name] = {k: figures[k] for k in
                                 ("oa", "edge_oa", "f1_weighted", "coverage")}
    return per_scene


def score_run(run_dir: str | os.PathLike[str], scenes: list[Path], spec: MapScore,
              threads: int | None = None) -> dict[str, float]:
    """Map every scene with the run's SAR branch (:func:`score_scenes`); the mean scores.

    Args:
        run_dir: a training run with a SAR head.
        scenes: scene directories, each with ``sar.tif`` and ``truth.tif``.
        spec: the mode and stride to map with.
        threads: torch threads of the mapping (``None``: torch's default).

    Returns:
        ``map_oa`` and ``map_edge_oa``: means over the scenes. The per-scene figures go to
        ``RUN/map_score.json``, the maps to ``RUN/maps/<scene>.tif``.
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    per_scene = score_scenes(_sar_predictor(run_dir, mapping_mode(spec.mode)), scenes,
                             run_dir / "maps", spec, threads)
    means = {"map_oa": fmean(s["oa"] for s in per_scene.values()),
             "map_edge_oa": fmean(s["edge_oa"] for s in per_scene.values())}
    with atomic_path(run_dir / "map_score.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps({"settings": spec.to_json(), **means, "scenes": per_scene,
                                   "seconds": time.perf_counter() - start}, indent=2))
    return means


#: No map score (``compare``'s default).
NO_MAP_SCORE = MapScore()
