"""The files of one map, written together, and the summary of what was written.

Used by the engine's :func:`~discomkd_geo.inference.engine.predict_to_file`:
:class:`MapPaths` says where every file of a map goes (so that they are all checked
before any work), :class:`MapOutputs` owns them while the map is made: it opens the
rasters (:class:`~discomkd_geo.inference.writers.CogWriter`) on temporaries, takes each
chunk's codes and probabilities, counts the classes, and on success closes the rasters
and writes the side files (QGIS style, legend, STAC Item) before every temporary is moved
onto its target; on failure nothing appears at any target. :class:`MapSummary` is what
``predict_to_file`` returns.
"""

import json
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..constants import CLASS_NODATA
from ..errors import OutputError
from ..files import atomic_path
from ..models.info import PredictorInfo
from .checks import SceneCheck
from .fusion import SOURCE_COLORS, SOURCE_NODATA
from .io import Grid
from .settings import Outputs
from .stac import ItemInputs, item_path, map_item
from .writers import CogWriter, class_description, class_tags, legend, qgis_style, sidecar_paths

#: The band scale of probabilities stored as uint8 (p x 250; 255 is nodata).
UINT8_SCALE = 250


@dataclass(frozen=True)
class MapPaths:
    """Where every file of one map goes.

    Attributes:
        map: the class raster.
        style: its QGIS style (``<stem>.qml``).
        legend: its legend (``<stem>.legend.json``).
        stac: its STAC Item (``<stem>.stac.json``).
        probabilities: the per-class probability raster, if asked for.
        confidence: the winning-probability raster, if asked for.
        polygons: the map's polygons (a vector file), if asked for.
        polygons_style: their QGIS style (``<polygons stem>.qml``).
        source: which evidence decided each pixel (:mod:`.fusion`), if asked for.
    """

    map: Path
    style: Path
    legend: Path
    stac: Path
    probabilities: Path | None = None
    confidence: Path | None = None
    polygons: Path | None = None
    polygons_style: Path | None = None
    source: Path | None = None

    @classmethod
    def of(cls, output: str | os.PathLike[str], settings: Outputs) -> "MapPaths":
        """The paths of a map written at ``output`` with these output settings."""
        output = Path(output)
        style, legend_path = sidecar_paths(output)
        confidence = settings.confidence
        if confidence is True:
            confidence = output.with_suffix(".confidence.tif")
        polygons = Path(settings.vector) if settings.vector else None
        return cls(output, style, legend_path, item_path(output),
                   Path(settings.probabilities) if settings.probabilities else None,
                   Path(confidence) if confidence else None, polygons,
                   polygons.with_suffix(".qml") if polygons else None,
                   Path(settings.source) if settings.source else None)

    def labelled(self) -> dict[str, Path]:
        """Every path by what it is (``map``, ``QGIS style``, ...), as errors name them."""
        named = {"map": self.map, "QGIS style": self.style, "legend": self.legend,
                 "STAC Item": self.stac, "probabilities": self.probabilities,
                 "confidence": self.confidence, "polygons": self.polygons,
                 "polygons' QGIS style": self.polygons_style, "source": self.source}
        return {name: path for name, path in named.items() if path is not None}

    def extras(self) -> dict[str, Path]:
        """The files beside the map, by STAC asset key."""
        named = {"style": self.style, "legend": self.legend,
                 "probabilities": self.probabilities, "confidence": self.confidence,
                 "source": self.source}
        return {key: path for key, path in named.items() if path is not None}


class MapOutputs:
    """The files of one map while it is made (a context manager).

    On entry every raster is opened on a temporary beside its target. :meth:`write`
    stores a chunk. On a clean exit the rasters get their overviews and COG layout, the
    side files are written, and every temporary is moved onto its target; on an error
    the temporaries are removed and no target is touched.

    Args:
        paths: where the files go.
        grid: the map's pixel grid.
        info: the predictor's description (classes and colours).
        facts: how the map was made, stored as metadata tags (``stride``, ``mode``, ...).
        settings: the output settings (probability dtype, overwrite).
        inputs: the files each modality was read from (the STAC Item links them).
        stac_source: the STAC Item the scenes came from, if any.
        masks: the mask of each masked modality (:func:`.masks.mask_records`), recorded
            in the STAC Item.
        sources: the name of each source code (:func:`.fusion.source_names`), the
            legend of the source raster.

    Attributes:
        histogram: pixels per class code so far; the last bin counts nodata.
        source_histogram: pixels per source code so far (256 bins).
    """

    def __init__(self, paths: MapPaths, grid: Grid, info: PredictorInfo,
                 facts: Mapping[str, Any], settings: Outputs,
                 inputs: Mapping[str, Sequence[str]],
                 stac_source: ItemInputs | None = None,
                 masks: Mapping[str, Mapping[str, Any]] | None = None,
                 sources: Mapping[int, str] | None = None) -> None:
        self.paths, self.grid, self.settings = paths, grid, settings
        self.classes, self.colors = list(info.classes), [tuple(c) for c in info.colors]
        self.facts, self.inputs, self.stac_source = dict(facts), inputs, stac_source
        self.masks = masks or {}
        self.histogram = np.zeros(len(self.classes) + 1, dtype=np.int64)
        self.sources = dict(sources or {})
        self.source_histogram = np.zeros(SOURCE_NODATA + 1, dtype=np.int64)
        self.scaled = settings.probabilities_dtype == "uint8"
        self._stack = ExitStack()
        self._rasters: dict[str, CogWriter] = {}

    def __enter__(self) -> "MapOutputs":
        with self._stack as stack:
            classes, colors, facts = self.classes, self.colors, self.facts
            self._rasters["classes"] = self._raster(
                self.paths.map, count=1, dtype="uint8", nodata=CLASS_NODATA,
                resampling=Resampling.mode, descriptions=[class_description(classes)],
                tags=class_tags(classes, colors, facts), colormap=colors)
            if self.paths.source:
                names = [self.sources.get(code, "") for code in range(max(self.sources) + 1)]
                colors = [SOURCE_COLORS.get(code, (0, 0, 0)) for code in range(len(names))]
                self._rasters["source"] = self._raster(
                    self.paths.source, count=1, dtype="uint8", nodata=SOURCE_NODATA,
                    resampling=Resampling.mode, colormap=colors,
                    descriptions=["evidence: " + ", ".join(
                        f"{code}={name}" for code, name in self.sources.items())],
                    tags={**class_tags(names, colors, facts), "NODATA_CLASS": str(SOURCE_NODATA)})
            scale = {"SCALE": f"1/{UINT8_SCALE}" if self.scaled else "1"}
            if self.paths.probabilities:
                self._rasters["probabilities"] = self._raster(
                    self.paths.probabilities, count=len(classes), descriptions=classes,
                    tags={**class_tags(classes, colors, facts), **scale}, **self._continuous())
            if self.paths.confidence:
                self._rasters["confidence"] = self._raster(
                    self.paths.confidence, count=1,
                    descriptions=["confidence (winning class probability)"],
                    tags={**facts, **scale}, **self._continuous())
            self._stack = stack.pop_all()  # opened: kept open until __exit__
        return self

    def _continuous(self) -> dict[str, Any]:
        """How probability and confidence rasters store values."""
        return {"dtype": self.settings.probabilities_dtype,
                "nodata": 255 if self.scaled else np.nan, "resampling": Resampling.average,
                "scale": 1 / UINT8_SCALE if self.scaled else 1.0}

    def _raster(self, path: Path, **kwargs: Any) -> CogWriter:
        tmp = self._stack.enter_context(atomic_path(path, overwrite=self.settings.overwrite))
        cog = CogWriter(tmp, self.grid, target=path, **kwargs)
        self._stack.callback(cog.close, keep=False)  # on failure; a finished one is closed
        return cog

    def write(self, chunk: Window, codes: np.ndarray, probs: np.ndarray | None,
              source: np.ndarray) -> None:
        """Store one chunk: class codes, probabilities and source codes.

        Args:
            chunk: where the chunk lies on the map's grid.
            codes: uint8 ``(h, w)`` class codes.
            probs: float32 ``(K, h, w)`` probabilities, if computed.
            source: uint8 ``(h, w)`` source codes (:mod:`.fusion`).
        """
        self._rasters["classes"].write(chunk, codes)
        self.source_histogram += np.bincount(source.ravel(), minlength=SOURCE_NODATA + 1)
        if "source" in self._rasters:
            self._rasters["source"].write(chunk, source)
        self.histogram += np.bincount(np.minimum(codes, len(self.classes)).ravel(),
                                      minlength=len(self.classes) + 1)
        if probs is None:
            return
        extra = {"probabilities": probs, "confidence": np.max(probs, axis=0, keepdims=True)}
        for name, values in extra.items():
            if name in self._rasters:
                if self.scaled:
                    values = np.where(np.isnan(values), 255,
                                      np.round(values * UINT8_SCALE)).astype(np.uint8)
                self._rasters[name].write(chunk, values)

    def _finish(self) -> None:
        """Close the rasters into COGs and write the side files (all still temporaries)."""
        for cog in self._rasters.values():
            cog.close(keep=True)
        item = map_item(self.paths.map, self.grid, self.classes, self.colors, self.inputs,
                        self.paths.extras(), source=self.stac_source, masks=self.masks)
        for path, text in ((self.paths.style, qgis_style(self.classes, self.colors)),
                           (self.paths.legend,
                            json.dumps(legend(self.classes, self.colors), indent=2)),
                           (self.paths.stac, json.dumps(item, indent=2))):
            tmp = self._stack.enter_context(atomic_path(path, overwrite=self.settings.overwrite))
            try:
                tmp.write_text(text)
            except OSError as err:
                raise OutputError(path, f"writing failed ({err.strerror}); nothing was "
                                        "written there") from err

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool | None:
        if error is None:
            with self._stack:  # a failure while finishing unwinds the temporaries with it
                self._finish()
            return None
        return self._stack.__exit__(kind, error, traceback)


@dataclass(frozen=True)
class MapSummary:
    """What :func:`~discomkd_geo.inference.engine.predict_to_file` wrote, and how.

    Attributes:
        output: the class map.
        probabilities: the probability raster, if one was written.
        confidence: the confidence raster, if one was written.
        vector: the polygons' vector file, if one was written.
        width: map columns.
        height: map rows.
        crs: the map's CRS (authority code or WKT).
        modalities: the modalities mapped (fused when several), in input order.
        patch_size: the model's window side in pixels.
        stride: step between windows used.
        coarse: one output pixel per stride cell.
        mode: ``windows``, ``dense`` or ``pixel`` (``auto`` resolved).
        chunks: how many chunks the map was cut into.
        computed_chunks: how many were read and classified (those touching the area of
            interest; all without one).
        pixels: map pixels.
        mapped_pixels: pixels given a class (the others are nodata).
        seconds: wall time.
        pixels_per_s: map pixels per second of wall time.
        histogram: pixels per class name.
        checks: per modality, the statistics check of its scene.
        source: the source raster, if one was written.
        fusion: the fusion rule of a map of several modalities (``None``: one).
        windowed: the modalities mode ``pixel`` classified window by window (no decoder).
        sources: share of each source (``none``, ``ms``, ``sar``, ``fused``) among the
            pixels computed (inside the area of interest): which evidence decided them.
    """

    output: str
    probabilities: str | None
    confidence: str | None
    vector: str | None
    width: int
    height: int
    crs: str
    modalities: tuple[str, ...]
    patch_size: int
    stride: int
    coarse: bool
    mode: str
    chunks: int
    computed_chunks: int
    pixels: int
    mapped_pixels: int
    seconds: float
    pixels_per_s: float
    histogram: Mapping[str, int]
    checks: Mapping[str, SceneCheck] = field(default_factory=dict)
    source: str | None = None
    fusion: str | None = None
    windowed: tuple[str, ...] = ()
    sources: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (what ``predict --json`` prints)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                "modalities": list(self.modalities), "histogram": dict(self.histogram),
                "windowed": list(self.windowed), "sources": dict(self.sources),
                "checks": {m: check.to_dict() for m, check in self.checks.items()}}
