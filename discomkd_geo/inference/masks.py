"""Pixels declared unavailable: cloud masks, scene classifications and cloud detection.

Part of the inference flow's first step (**io** -> tiling -> engine -> writers). A scene's
:class:`~.io.SceneInput` may name a mask (``mask``, ``mask_kind``, ``mask_codes``);
:func:`open_mask` checks it once, up front, and turns it into a picklable reader whose
:meth:`~MaskReader.read_windows` says, window by window of the output grid, which pixels
hold no usable observation. The scene reader ANDs that into its validity, so a masked
pixel is unavailable exactly like nodata for the scene checks, the engine (a map of one
modality leaves it nodata), the area-of-interest logic and the statistics.

Kinds of mask, one class each behind :data:`MASK_KINDS`:

* ``scl``: a Sentinel-2 Level-2A scene classification raster (ESA, Sentinel-2 Products
  Specification Document, Level-2A SCL codes 0-11); by default codes 3 (cloud shadows),
  8 and 9 (cloud, medium and high probability) and 10 (thin cirrus) are masked. Given as
  a file, or as ``"scl"``: the ``SCL_20m`` raster of the scene's L2A ``.SAFE`` (the CLI
  also takes a STAC Item's ``scl`` asset). A scene that names no mask (``mask=None``) and
  has such a raster is masked by it (:func:`default_mask`); ``mask="none"`` declines it.
* ``fmask``: Fmask codes (Zhu & Woodcock: 0 clear land, 1 clear water, 2 cloud shadow,
  3 snow, 4 cloud, 255 fill); 2 and 4 are masked by default.
* ``binary``: 0/1, where **1 means unavailable** (0 available).
* ``s2cloudless``: ``mask="auto"``, clouds detected on the Sentinel-2 Level-1C scene itself
  by Sentinel Hub's ``s2cloudless`` (its LightGBM pixel classifier on top-of-atmosphere
  reflectance of B01, B02, B04, B05, B08, B8A, B09, B10, B11, B12), smoothed a little;
  on the map's pixels, or on blocks of them (``mask_resolution``).

A mask file may lie on another grid: it is read on the output grid with nearest-neighbour
resampling through a :class:`rasterio.vrt.WarpedVRT`; pixels it does not cover, and its
own nodata, declare nothing (they stay available).
"""

import functools
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio
from rasterio.coords import disjoint_bounds
from rasterio.enums import Resampling
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ..constants import MS
from ..data.sensors import SENSORS, Sensor
from ..errors import InputFileError, SettingsError
from ..logs import log
from .io import (
    _RASTER_SUFFIXES,
    Grid,
    Layer,
    RasterReader,
    SceneInput,
    Units,
    _expand,
    _is_safe,
    _labels,
    _native_grid,
    _open,
    canonical_band,
    match_bands,
)
from .remote import remote_env
from .tiling import chunk_layout

#: The value a mask read on another grid holds where it does not reach; no kind's code.
_UNCOVERED = 254
#: Rows per strip, and chunk side, of the passes that read a whole mask.
_SCAN_SIDE = 1024
#: The ``mask`` values that are words, not files: detection, the scene's own SCL, none.
MASK_WORDS = ("auto", "scl", "none")


class MaskReader:
    """Which pixels of windows of the output grid a mask declares unavailable."""

    def read_windows(self, windows: Iterable[Window]) -> Iterator[np.ndarray]:
        """Bool ``(h, w)`` per window, True where the pixel is unavailable."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What the mask is, for the map's metadata and STAC Item (JSON-able)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- kinds
class MaskKind:
    """One kind of mask: how to check it and read it (one instance in :data:`MASK_KINDS`)."""

    #: The kind's name, as ``mask_kind`` spells it.
    name: ClassVar[str]

    def open(self, scene: SceneInput, grid: Grid, scene_name: str) -> MaskReader:
        """Check the mask of ``scene`` and describe how to read it on ``grid``.

        Raises:
            InputFileError: the mask (or the scene, for a detector) cannot serve.
            SettingsError: ``mask_codes`` or ``mask_kind`` do not fit the mask.
        """
        raise NotImplementedError


class CodedMask(MaskKind):
    """A raster of codes: the pixels holding one of the masked codes are unavailable."""

    #: Every code the kind defines, and its meaning.
    legend: ClassVar[Mapping[int, str]]
    #: The codes masked unless ``mask_codes`` says otherwise.
    default: ClassVar[tuple[int, ...]]
    #: A pattern of the file names that are this kind (``None``: told only by values).
    named: ClassVar[re.Pattern[str] | None] = None
    #: What error messages call it.
    title: ClassVar[str]

    def codes(self, scene: SceneInput) -> tuple[int, ...]:
        """The codes to mask: ``mask_codes`` (checked against the legend) or the default."""
        if scene.mask_codes is None:
            return self.default
        if unknown := sorted(set(scene.mask_codes) - set(self.legend)):
            raise SettingsError("mask_codes", f"{_listed(unknown)} not {self.title} codes "
                                              f"({self.describe(self.legend)})")
        return tuple(sorted(set(scene.mask_codes)))

    def describe(self, codes: Iterable[int]) -> str:
        """Codes and their meaning, e.g. ``3 cloud shadows, 8 cloud medium probability``."""
        return ", ".join(f"{c} {self.legend[c]}" for c in codes)

    def unknown_problem(self, values: Sequence[float]) -> str:
        """The refusal of a file holding ``values`` outside the legend."""
        return (f"holds values {_listed(values)} that are not {self.title} codes "
                f"({self.describe(self.legend)}); if it is another kind of mask, name it "
                f"with mask_kind ({', '.join(_coded_kinds())})")

    def open(self, scene: SceneInput, grid: Grid, scene_name: str) -> MaskReader:
        """Check the mask file (grid, codes, coverage) and describe how to read it."""
        codes = self.codes(scene)
        path = str(scene.mask)
        if os.path.exists(path):  # Dask workers run in other working directories
            path = os.path.abspath(path)
        with _open(path) as src:
            native, needs_warp = _native_grid(src, None, None)
            if needs_warp:
                raise InputFileError(path, "is georeferenced by GCPs or RPCs only; warp it "
                                           "to a map grid first (gdalwarp)")
            if src.count != 1:
                raise InputFileError(path, f"has {src.count} bands; a mask has one")
            bounds = transform_bounds(native.crs, grid.crs, *array_bounds(
                native.height, native.width, native.transform))
            if disjoint_bounds(bounds, array_bounds(grid.height, grid.width, grid.transform)):
                raise InputFileError(path, f"does not overlap {scene_name}")
            if unknown := _unknown_values(src, self.legend):
                raise InputFileError(path, self.unknown_problem(unknown), param="mask_kind")
        reader = CodeMaskReader(path, self.name, codes, grid, native != grid,
                                self.describe(codes))
        if _masks_everything(reader, grid):
            raise InputFileError(path, f"masks every pixel of {scene_name} (codes "
                                       f"{self.describe(codes)}); nothing is left to map "
                                       "from it (mask='none' maps it unmasked)",
                                 param="mask")
        return reader


class SclCodes(CodedMask):
    """Sentinel-2 Level-2A scene classification (SCL), ESA's codes 0-11."""

    name = "scl"
    legend = {0: "no data", 1: "saturated or defective", 2: "dark area pixels",
              3: "cloud shadows", 4: "vegetation", 5: "not vegetated", 6: "water",
              7: "unclassified", 8: "cloud medium probability", 9: "cloud high probability",
              10: "thin cirrus", 11: "snow or ice"}
    default = (3, 8, 9, 10)
    named = re.compile(r"(?<![A-Z0-9])SCL(?![A-Z])")
    title = "Sentinel-2 scene classification (SCL)"


class FmaskCodes(CodedMask):
    """Fmask codes (Zhu & Woodcock 2012; Fmask 4): clouds 4 and their shadows 2."""

    name = "fmask"
    legend = {0: "clear land", 1: "clear water", 2: "cloud shadow", 3: "snow", 4: "cloud",
              255: "fill"}
    default = (2, 4)
    named = re.compile(r"(?<![A-Z0-9])FMASK")
    title = "Fmask"


class BinaryMask(CodedMask):
    """A 0/1 mask: 1 marks an unavailable pixel, 0 an available one."""

    name = "binary"
    legend = {0: "available", 1: "unavailable"}
    default = (1,)
    title = "0/1 mask"

    def unknown_problem(self, values: Sequence[float]) -> str:
        """The refusal of a would-be 0/1 mask holding other values."""
        return (f"holds values {_listed(values)} besides 0 and 1 (1 = unavailable); if it "
                "is a scene classification or Fmask raster, pass mask_kind='scl' or "
                "mask_kind='fmask'")


#: s2cloudless's input bands, in the order its classifier reads them.
DETECTOR_BANDS = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")


class CloudDetection(MaskKind):
    """``mask="auto"``: clouds detected by ``s2cloudless`` on the Level-1C scene itself.

    Thresholds and post-processing (s2cloudless's own parameters), chosen by measurement
    on validation scenes (``benchmarks/bench_clouds.py --select``, key
    ``clouds_selection`` of ``benchmarks/results.json``): the probability averaged over a
    disk of radius 2 px, threshold 0.4, no dilation; the highest mean intersection over
    union with thick clouds or cirrus (SCL 8, 9, 10) of the grid. Every setting with a
    dilation scored lower: the probability already takes in a cloud's rim, and a dilated
    rim is land handed to the other modality. The package's example recommends averaging
    over 4 px and dilating by 2 px for detection at 60 m (22 and 11 px at 10 m); at 10 m
    4 and 2 px would grow every cloud by some 60 m.

    Detection runs on the map's pixels unless ``mask_resolution`` asks for coarser ones
    (:class:`DetectorMaskReader`'s ``factor``; Sentinel Hub serves s2cloudless masks
    computed at 160 m). On the validation scenes (``bench_clouds.py --resolution``, key
    ``clouds_resolution``) every coarser resolution cost more than 0.01 of mean IoU, so
    the map's pixels stay the default.
    """

    name = "s2cloudless"
    #: The sensor whose Level-1C bands s2cloudless reads.
    sensor: ClassVar[Sensor] = SENSORS[MS]

    def open(self, scene: SceneInput, grid: Grid, scene_name: str) -> MaskReader:
        """Check that the scene is Level-1C with B10 and describe the detection on ``grid``."""
        if not scene.paths:
            raise InputFileError(scene_name, "cloud detection (mask 'auto') reads the scene's "
                                             "files; an in-memory array cannot serve")
        if scene.mask_codes is not None:
            raise SettingsError("mask_codes", "cloud detection (mask 'auto') has no codes")
        files = _expand(scene, self.sensor)
        if _level2a(scene, files):
            raise InputFileError(scene_name, "is a Level-2A product (surface reflectance); "
                                             "s2cloudless detects clouds on Level-1C top-of-"
                                             "atmosphere reflectance: mask with the product's "
                                             "scene classification instead (mask 'scl')")
        labels: list[str | None] = []
        layers: list[Layer] = []
        warped = set()
        for path in files:
            with _open(path) as src:
                native, _ = _native_grid(src, scene.crs, None)
                labels.extend(_labels(path, src.count, src.descriptions))
                layers.extend(Layer(path, i) for i in range(1, src.count + 1))
                if native != grid:
                    warped.add(path)
        if scene.bands is not None:
            labels = [canonical_band(b) for b in scene.bands]
        if "B10" not in labels:
            raise InputFileError(scene_name, "has no B10 (cirrus) band, which s2cloudless "
                                             "needs (Level-2A products drop it): give the "
                                             "Level-1C scene, or mask with a scene "
                                             "classification (mask 'scl') or a mask file")
        positions = match_bands(scene_name, labels, DETECTOR_BANDS, "ms")
        bands = RasterReader(tuple(layers[p] for p in positions), grid, self.sensor,
                             frozenset(warped), Units(None, scene.scale, scene.offset),
                             scene.nodata)
        _detector()  # the package is there: fail now, not on a Dask worker
        return DetectorMaskReader(bands, _factor(scene.mask_resolution, grid))


def _factor(resolution: float | None, grid: Grid) -> int:
    """Map pixels per detection pixel for detection at ``resolution`` m (``None``: 1).

    Raises:
        SettingsError: the map's grid is not in metres, or ``resolution`` is not a whole
            multiple of its pixel size.
    """
    if resolution is None:
        return 1
    if grid.crs.linear_units != "metre":
        raise SettingsError("mask_resolution", "is in metres, and the map's grid is not")
    size = abs(grid.transform.a)
    factor = round(resolution / size)
    if factor < 1 or abs(factor * size - resolution) > 0.01 * size:
        raise SettingsError("mask_resolution", f"must be a whole multiple of the map's pixel "
                                               f"size, {size:g} m (e.g. {6 * size:g}), got "
                                               f"{resolution:g}")
    return factor


def _level2a(scene: SceneInput, files: Sequence[str]) -> bool:
    """Whether the scene is a Level-2A product: named so, or with an SCL raster beside it."""
    level2a = re.compile(r"MSIL2A|(?<![A-Z0-9])L2A(?![A-Z0-9])")
    return any(level2a.search(str(p).upper()) for p in files) or _scl_file(scene) is not None


#: Every kind of mask by name.
MASK_KINDS: dict[str, MaskKind] = {k.name: k for k in (SclCodes(), FmaskCodes(), BinaryMask(),
                                                       CloudDetection())}


def _coded_kinds() -> list[str]:
    """The names of the kinds read from a file of codes (every kind but detection)."""
    return [name for name, kind in MASK_KINDS.items() if isinstance(kind, CodedMask)]


# ----------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class CodeMaskReader(MaskReader):
    """A coded mask file read on the output grid (picklable, for Dask workers).

    Attributes:
        path: the mask file.
        kind: its kind's name.
        codes: the codes that mark unavailable pixels.
        grid: the output grid.
        warped: the file lies on another grid (read through a nearest-neighbour warp).
        meaning: the masked codes in words.
    """

    path: str
    kind: str
    codes: tuple[int, ...]
    grid: Grid
    warped: bool
    meaning: str

    def read_windows(self, windows: Iterable[Window]) -> Iterator[np.ndarray]:
        """Bool ``(h, w)`` per window, True where the pixel holds a masked code."""
        with ExitStack() as stack:
            stack.enter_context(remote_env(self.path))
            src = stack.enter_context(rasterio.open(self.path))
            if self.warped:
                src = stack.enter_context(WarpedVRT(
                    src, crs=self.grid.crs, transform=self.grid.transform,
                    width=self.grid.width, height=self.grid.height,
                    resampling=Resampling.nearest, nodata=_UNCOVERED))
            for window in windows:
                values = src.read(1, window=window, masked=True)
                yield np.isin(np.ma.getdata(values), self.codes) & ~np.ma.getmaskarray(values)

    def record(self) -> dict[str, Any]:
        """Kind, file and masked codes."""
        return {"kind": self.kind, "source": self.path, "codes": list(self.codes),
                "meaning": self.meaning}


@dataclass(frozen=True)
class DetectorMaskReader(MaskReader):
    """s2cloudless run on the scene, tile by tile of the output grid (picklable).

    Detection runs on pixels of :attr:`factor` x :attr:`factor` map pixels (blocks aligned
    to the grid's origin; the last row and column of blocks cut by the grid's edge), each
    the mean reflectance of its valid map pixels, and every map pixel takes the verdict of
    the block it lies in. The detection grid is cut into :attr:`tile` px tiles, each
    detected once per process (kept in a small cache: the scene checks' sample and the
    engine's overlapping windows read the same pixels again) from the tile and a margin as
    wide as the detector's averaging and dilation reach, cut at the grid's edges, so a
    pixel's verdict does not depend on the window it is read through (the same map for
    any chunking).

    Attributes:
        bands: the scene's :data:`DETECTOR_BANDS` on the output grid, as L1C digital
            numbers (reflectance x 10,000, after the scene's scale and offset).
        factor: map pixels per detection pixel along each axis (1: every map pixel).
    """

    bands: RasterReader
    factor: int = 1

    #: Probability threshold, averaging disk and dilation (map px at factor 1; 0: none),
    #: chosen on validation scenes; see :class:`CloudDetection`.
    threshold: ClassVar[float] = 0.4
    average_over: ClassVar[int] = 2
    dilation: ClassVar[int] = 0
    #: Side of the tiles detected at once, in detection pixels.
    tile: ClassVar[int] = 64

    @property
    def post(self) -> tuple[int, int]:
        """Averaging disk and dilation radii in detection pixels (:func:`_scaled`).

        The same ground distance as at factor 1: s2cloudless's recommended radii shrink
        as its pixels grow (averaging 22 px and dilation 11 px at 10 m, 4 and 2 at 60 m).
        """
        return _scaled(self.average_over, self.factor), _scaled(self.dilation, self.factor)

    def read_windows(self, windows: Iterable[Window]) -> Iterator[np.ndarray]:
        """Bool ``(h, w)`` per window, True where s2cloudless sees a cloud."""
        grid = self.bands.grid
        side = self.tile * self.factor
        for window in windows:
            tiles = chunk_layout(grid.height, grid.width, side, within=window)
            with _TILES_LOCK:
                found = {(t.row_off, t.col_off): _TILES.get((self, t.row_off, t.col_off))
                         for t in tiles}
            found.update(self._detect([t for t in tiles
                                       if found[t.row_off, t.col_off] is None]))
            out = np.zeros((window.height, window.width), dtype=bool)
            for t in tiles:
                part = t.intersection(window)
                out[part.row_off - window.row_off:part.row_off - window.row_off + part.height,
                    part.col_off - window.col_off:part.col_off - window.col_off + part.width] \
                    = on_map(found[t.row_off, t.col_off], self.factor, Window(
                        part.col_off - t.col_off, part.row_off - t.row_off, part.width,
                        part.height))
            yield out

    def probability(self, reach: Window) -> np.ndarray:
        """s2cloudless's cloud probability ``(1, h, w)`` of the detection pixels of ``reach``.

        ``reach`` is a window of the output grid whose offsets are multiples of
        :attr:`factor`. A detection pixel that holds no valid map pixel gets 0.
        """
        data, valid = self.bands.units.apply(*next(iter(self.bands.read_raw_windows([reach]))))
        data, valid = block_means(data, valid, self.factor)
        probability = _detector(*self.post).get_cloud_probability_maps(
            np.moveaxis(data / 10_000, 0, -1)[None])
        probability[:, ~valid] = 0.0  # nodata is no cloud
        return probability

    def _detect(self, tiles: Sequence[Window]) -> dict[tuple[int, int], np.ndarray]:
        """Detect clouds on ``tiles`` (with their margins); keep and return the verdicts.

        One verdict per detection pixel of the tile.
        """
        margin = (sum(self.post) + 1) * self.factor
        detector = _detector(*self.post)
        detected = {}
        for tile in tiles:
            reach = Window(tile.col_off - margin, tile.row_off - margin,
                           tile.width + 2 * margin, tile.height + 2 * margin).intersection(
                               self.bands.grid.window)
            cloud = detector.get_mask_from_prob(self.probability(reach))[0].astype(bool)
            rows = (tile.row_off - reach.row_off) // self.factor
            cols = (tile.col_off - reach.col_off) // self.factor
            detected[tile.row_off, tile.col_off] = cloud[
                rows:rows + _blocks(tile.height, self.factor),
                cols:cols + _blocks(tile.width, self.factor)]
            _keep((self, tile.row_off, tile.col_off), detected[tile.row_off, tile.col_off])
        return detected

    def record(self) -> dict[str, Any]:
        """The detector and its settings (averaging and dilation in detection pixels)."""
        average_over, dilation = self.post
        return {"kind": "s2cloudless", "source": self.bands.name,
                "threshold": self.threshold, "average_over": average_over,
                "dilation": dilation,
                "resolution": self.factor * abs(self.bands.grid.transform.a)}


def _scaled(radius: int, factor: int) -> int:
    """A disk radius of ``radius`` map pixels in pixels of ``factor`` map pixels.

    Rounded to the nearest whole pixel, halves down (ties go to the smaller disk, as in
    the settings' selection): 2 map px are 1 px at factors 2 and 3 and none from factor 4.
    On the validation scenes no averaging at all scored a little higher at every coarser
    factor (``clouds_resolution`` in ``benchmarks/results.json``): a block mean is already
    an average.
    """
    return (2 * radius + factor - 1) // (2 * factor)


def _blocks(length: int, factor: int) -> int:
    """Blocks of ``factor`` pixels along ``length`` pixels, the last one cut."""
    return -(-length // factor)


def block_means(data: np.ndarray, valid: np.ndarray, factor: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Means of valid values over ``factor`` x ``factor`` blocks, and which blocks have any.

    Blocks start at the top left of ``(C, h, w)`` ``data``; the last ones are cut by its
    edges. Sums are float64, means of ``data``'s dtype, so factor 1 gives the data back
    bit for bit (0 where invalid): the classifier sees the map's own values.
    """
    channels, height, width = data.shape
    rows, cols = _blocks(height, factor), _blocks(width, factor)
    weight = np.zeros((rows * factor, cols * factor))
    weight[:height, :width] = valid
    sums = np.zeros((channels, rows * factor, cols * factor))
    sums[:, :height, :width] = data
    sums = (sums * weight).reshape(channels, rows, factor, cols, factor).sum(axis=(2, 4))
    counts = weight.reshape(rows, factor, cols, factor).sum(axis=(1, 3))
    return (sums / np.maximum(counts, 1)).astype(data.dtype), counts > 0


def on_map(coarse: np.ndarray, factor: int, window: Window) -> np.ndarray:
    """The map pixels of ``window`` of a raster of ``factor`` x ``factor`` map pixels.

    ``window``'s offsets are in map pixels from ``coarse``'s top left corner; each map
    pixel takes the value of the coarse pixel it lies in (nearest neighbour).
    """
    rows = np.arange(window.row_off, window.row_off + window.height) // factor
    cols = np.arange(window.col_off, window.col_off + window.width) // factor
    return coarse[np.ix_(rows, cols)]


#: Detected tiles by (reader, row, column), least recently stored first.
_TILES: "OrderedDict[tuple[DetectorMaskReader, int, int], np.ndarray]" = OrderedDict()
#: Tiles kept (64 px: 4 KiB each).
_TILES_KEPT = 4096
_TILES_LOCK = threading.Lock()


def _keep(key: tuple["DetectorMaskReader", int, int], cloud: np.ndarray) -> None:
    """Keep a detected tile, forgetting the oldest beyond :data:`_TILES_KEPT`."""
    with _TILES_LOCK:
        _TILES[key] = cloud
        while len(_TILES) > _TILES_KEPT:
            _TILES.popitem(last=False)


@functools.cache
def _detector(average_over: int = DetectorMaskReader.average_over,
              dilation: int = DetectorMaskReader.dilation) -> Any:
    """s2cloudless's detector with our threshold, loaded once per process and post-processing.

    ``average_over`` and ``dilation`` are the disks' radii in detection pixels.

    Raises:
        SettingsError: the package is not installed.
    """
    try:
        from s2cloudless import S2PixelCloudDetector
    except ImportError as err:
        raise SettingsError("mask", "'auto' detects clouds with the s2cloudless package, "
                                    "which is not installed: pip install "
                                    "'discomkd-geo[clouds]'") from err
    return S2PixelCloudDetector(threshold=DetectorMaskReader.threshold,
                                average_over=average_over, dilation_size=dilation,
                                all_bands=False)


# ----------------------------------------------------------------------------- opening
def _listed(values: Iterable[float]) -> str:
    """``2, 7, 12`` (at most 8 values, then ``...``)."""
    shown = [f"{v:g}" for v in list(values)[:8]]
    return ", ".join(shown) + (", ..." if len(list(values)) > 8 else "")


def _unknown_values(src: rasterio.DatasetReader, legend: Mapping[int, str]) -> list[float]:
    """The values of a mask file (its nodata aside) that are not codes of ``legend``."""
    seen: set[float] = set()
    for row in range(0, src.height, _SCAN_SIDE):
        strip = src.read(1, window=Window(0, row, src.width, min(_SCAN_SIDE, src.height - row)),
                         masked=True)
        seen.update(np.unique(strip.compressed()).tolist())
    return sorted(v for v in seen if v not in legend)


def _masks_everything(reader: MaskReader, grid: Grid) -> bool:
    """Whether the mask declares every pixel of the grid unavailable (stops at a clear one)."""
    return all(unavailable.all() for unavailable in
               reader.read_windows(chunk_layout(grid.height, grid.width, _SCAN_SIDE)))


def _scl_file(scene: SceneInput) -> str | None:
    """The finest SCL raster of the scene's ``.SAFE`` (or directory of band files)."""
    roots = set()
    for raw in scene.paths:
        path = Path(raw)
        if path.is_dir():
            roots.add(path)
        elif _is_safe(path):  # a band file inside a product: its .SAFE folder (a lone
            # manifest.safe has none, and default_mask looks here for every scene)
            roots.update(p for p in path.parents if p.name.upper().endswith(".SAFE"))
    found = []
    for root in sorted(roots):
        for path in root.rglob("*"):
            if path.suffix.lower() in _RASTER_SUFFIXES and SclCodes.named.search(
                    path.stem.upper().replace("_", " ")):
                with _open(str(path)) as src:
                    found.append((abs(src.res[0]), str(path)))
    return min(found)[1] if found else None


def resolve(scene: SceneInput, scene_name: str, sensor: Sensor) -> tuple[MaskKind, SceneInput]:
    """The kind of ``scene``'s mask, and the scene with its mask as a file (or ``auto``).

    ``mask="auto"`` is cloud detection; ``mask="scl"`` the SCL raster of the scene's
    ``.SAFE``; a file's kind is ``mask_kind``, else told by its name (``SCL``, ``Fmask``),
    else 0/1. Only the kinds the scene's sensor takes apply
    (:attr:`~discomkd_geo.data.sensors.Sensor.mask_files` and
    :attr:`~discomkd_geo.data.sensors.Sensor.mask_detector`: a Sentinel-1 scene takes 0/1
    masks).

    Raises:
        InputFileError: ``mask="scl"`` and the scene holds no SCL raster.
        SettingsError: ``mask_kind`` is unknown, not one the sensor takes or contradicts
            ``mask``; ``mask`` is ``auto`` or ``scl`` for a sensor without such masks.
    """
    detector = sensor.mask_detector
    kinds = [*sensor.mask_files, *([detector] if detector is not None else [])]
    if scene.mask_kind is not None and scene.mask_kind not in kinds:
        raise SettingsError("mask_kind", f"must be one of {kinds} for a {sensor.title} "
                                         f"scene, got {scene.mask_kind!r}")
    if scene.mask == "auto":
        if detector is None:
            raise SettingsError("mask", f"'auto' detects clouds, which a {sensor.title} "
                                        "scene does not have; pass a mask file")
        if scene.mask_kind not in (None, detector):
            raise SettingsError("mask_kind", f"mask 'auto' is cloud detection; it cannot be "
                                             f"{scene.mask_kind!r}")
        return MASK_KINDS[detector], scene
    if detector is not None and scene.mask_kind == detector:
        raise SettingsError("mask_kind", f"{detector!r} runs on the scene itself: pass "
                                         "mask='auto' instead of a file")
    if scene.mask == "scl":
        if SclCodes.name not in sensor.mask_files:
            raise SettingsError("mask", f"a {sensor.title} scene has no scene "
                                        "classification (SCL); pass a mask file")
        found = _scl_file(scene)
        if found is None:
            raise InputFileError(scene_name, "holds no scene classification (SCL) raster "
                                             "(a Level-2A .SAFE has SCL_20m.jp2); pass the "
                                             "SCL file as the mask")
        return MASK_KINDS[scene.mask_kind or "scl"], replace(scene, mask=found)
    if scene.mask_kind is not None:
        return MASK_KINDS[scene.mask_kind], scene
    stem = Path(str(scene.mask)).stem.upper().replace("_", " ")
    files = [MASK_KINDS[name] for name in sensor.mask_files]
    guessed = next((k for k in files if isinstance(k, CodedMask) and k.named is not None
                    and k.named.search(stem)), MASK_KINDS["binary"])
    return guessed, scene


def note_default_scl(scene_name: str, scl: str) -> None:
    """Say, in one INFO line, that ``scl`` masks ``scene_name`` by default, and how not to."""
    log.info("%s: cloudy pixels masked by default with the scene classification %s (codes "
             "%s); pass mask='none' (--ms-mask none) to map them from this scene", scene_name,
             scl, SclCodes().describe(SclCodes.default))


def default_mask(scene: SceneInput, sensor: Sensor) -> SceneInput:
    """The scene with the mask it gets when it names none (``mask=None``).

    A scene of a sensor with scene classifications (Sentinel-2) that has an SCL raster,
    as :func:`resolve` finds it for ``mask="scl"`` (an L2A ``.SAFE``, or a band file inside
    one), is masked by it with the default codes, said in one INFO line naming the input
    as given: a cloudy Level-2A product is not mapped as land unless asked
    (``mask="none"``). Any other scene (a GeoTIFF, an L1C ``.SAFE``, an array) is
    returned as it is, without a mask.
    """
    found = _scl_file(scene) if SclCodes.name in sensor.mask_files else None
    if found is None:
        return scene
    note_default_scl(scene.name, found)
    return replace(scene, mask=found, mask_kind=SclCodes.name)


def open_mask(scene: SceneInput, grid: Grid, scene_name: str, sensor: Sensor
              ) -> MaskReader | None:
    """Check the mask ``scene`` names, or its default, and describe how to read it on ``grid``.

    Args:
        scene: the scene input; its ``mask``, ``mask_kind``, ``mask_codes`` and
            ``mask_resolution`` are used: ``mask=None`` is the default mask
            (:func:`default_mask`), ``"none"`` none.
        grid: the output grid.
        scene_name: the scene, for messages.
        sensor: the scene's sensor, which says what masks apply.

    Raises:
        InputFileError: the mask is missing or unreadable, lies on a grid that does not
            overlap the scene, holds values that are not codes of its kind (named), or
            masks every pixel; for detection, the scene is not Level-1C or lacks B10.
        SettingsError: ``mask_codes`` or ``mask_kind`` do not fit (the mask or the
            sensor); ``mask_resolution`` without ``mask="auto"``, or not a whole
            multiple of the grid's pixel size in metres; s2cloudless is missing.

    Returns:
        The mask's reader; ``None`` for no mask (``"none"``, or none by default).
    """
    if scene.mask_resolution is not None and scene.mask != "auto":
        raise SettingsError("mask_resolution", "is the resolution of cloud detection: it "
                                               "goes with mask='auto' only")
    if scene.mask is None:
        scene = default_mask(scene, sensor)
    if scene.mask in (None, "none"):
        return None
    kind, scene = resolve(scene, scene_name, sensor)
    return kind.open(scene, grid, scene_name)


def mask_records(readers: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What each modality's mask is (:meth:`MaskReader.record`), for modalities with one."""
    return {m: r.mask.record() for m, r in readers.items() if r.mask is not None}


def read_on_grid(reader: MaskReader, grid: Grid) -> np.ndarray:
    """The whole mask on ``grid`` (bool ``(H, W)``, True: unavailable), read in strips."""
    out = np.zeros((grid.height, grid.width), dtype=bool)
    windows = chunk_layout(grid.height, grid.width, _SCAN_SIDE)
    for window, unavailable in zip(windows, reader.read_windows(windows), strict=True):
        out[window.toslices()] = unavailable
    return out

