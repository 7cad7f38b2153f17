"""Open and check the scenes a map is made from, and read them window by window.

First step of the inference flow (io -> tiling -> engine -> writers). A scene is described
per modality by a :class:`SceneInput`: one stack, one file per band or polarisation (a
directory of them, e.g. a Sentinel-2 ``.SAFE``), or an :class:`xarray.DataArray`, with
its units and scaling. :func:`open_readers` checks every input once, up front, and turns
it into a picklable reader (plain values, no open dataset) that Dask workers use to read
windows of the scene on the output grid: the first modality's grid at the model's pixel
size, onto which every other file is warped on the fly through a
:class:`rasterio.vrt.WarpedVRT` (also rasters georeferenced only by GCPs or RPCs).
Scenes may be URLs (``https://``, ``s3://``), read by windowed range requests
(:mod:`.remote`). Bands are matched to the checkpoint's band names through band
descriptions, file names or an explicit list; SAR in linear power or amplitude is
converted to dB and reflectance products are rescaled here, so the predictor receives the
raw units it was trained on. What depends on the sensor (a raw product refused, the
storage of SAR backscatter, saturated pixels, resampling) is asked of the model's sensor
profile (:mod:`discomkd_geo.data.sensors`).
"""

import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import numpy as np
import rasterio
from affine import Affine
from rasterio.coords import disjoint_bounds
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import array_bounds, from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window

from ..data.sensors import SAR_SCALES, SarUnits, Sensor
from ..errors import InputFileError, SettingsError
from ..models.info import PredictorInfo
from .remote import bounded_reads, is_remote, remote_env
from .remote import problem as remote_problem

if TYPE_CHECKING:
    import xarray

    from .masks import MaskReader

#: Band names that STAC catalogues (Element 84's Earth Search, ...) give Sentinel-2 assets.
S2_ALIASES: Mapping[str, str] = {
    "COASTAL": "B01", "BLUE": "B02", "GREEN": "B03", "RED": "B04", "REDEDGE1": "B05",
    "REDEDGE2": "B06", "REDEDGE3": "B07", "NIR": "B08", "NIR08": "B8A", "NIR09": "B09",
    "CIRRUS": "B10", "SWIR16": "B11", "SWIR22": "B12",
}  # fmt: skip

#: A Sentinel-2 band (``B4``, ``B04``, ``B8A``) or a polarisation, as a word of a longer name.
_BAND_TOKEN = re.compile(r"(?<![A-Z0-9])(B\d{1,2}A?|VV|VH|HH|HV)(?![A-Z0-9])")

#: The CRS of RPC coordinates (longitude, latitude on WGS 84).
RPC_CRS = CRS.from_epsg(4326)

#: Raster files looked for in a directory of band files.
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")


def canonical_band(name: str) -> str:
    """A band name in the checkpoints' spelling: ``B4``/``red``/``B04_10m`` -> ``B04``.

    Names that hold no Sentinel band or polarisation come back stripped and upper-case.
    """
    upper = name.strip().upper()
    if upper in S2_ALIASES:
        return S2_ALIASES[upper]
    tokens = set(_BAND_TOKEN.findall(upper.replace("_", " ").replace("-", " ")))
    if len(tokens) != 1:
        return upper
    token = tokens.pop()
    if token.startswith("B"):
        number = token[1:]
        return "B8A" if number in ("8A", "08A") else f"B{int(number.rstrip('A')):02d}"
    return token


@dataclass(frozen=True)
class SceneInput:
    """One modality's scene as the user has it, and how to read its values.

    Attributes:
        source: a raster path, several (one per band or polarisation, stacked on the
            first one's grid), a directory of band files (e.g. a Sentinel-2 ``.SAFE``), or
            an :class:`xarray.DataArray` with a CRS and a ``band`` coordinate.
        bands: names of the input's bands in order (files in the given order), when
            descriptions and file names do not name them.
        sar_units: SAR only: ``db``, ``linear`` power or ``amplitude``; ``None`` reads it
            from ASF HyP3 RTC file names, else assumes dB.
        scale: multiply the values by this (e.g. 10000 for reflectance 0-1) ...
        offset: ... then add this (-1000 turns Sentinel-2 digital numbers of processing
            baseline 04.00 and later into those of earlier products).
        crs: CRS to warp a raster georeferenced only by GCPs or RPCs to (default: the
            UTM zone of the scene centre).
        nodata: the value that marks missing pixels (a pixel is missing when any band
            holds it), instead of the files' own nodata tags: for exports that fill
            outside the swath without saying so (SNAP, Earth Engine: 0 in every band).
        mask: pixels declared unavailable, like nodata (:mod:`.masks`): a raster on any
            grid that overlaps the scene (a Sentinel-2 SCL, Fmask codes, or 0/1 with
            1 = unavailable), ``"scl"`` for the SCL raster of the scene's Level-2A
            ``.SAFE``, ``"auto"`` for cloud detection by s2cloudless on a Level-1C scene,
            or ``"none"`` for no mask. ``None``, the default: ``"scl"`` with its default
            codes when the scene has an SCL raster (an L2A ``.SAFE``), else no mask
            (:func:`.masks.default_mask`).
        mask_kind: ``scl``, ``fmask`` or ``binary`` (default: ``scl``/``fmask`` when the
            file name says so, else ``binary``).
        mask_codes: the codes that mark unavailable pixels (default: SCL 3, 8, 9, 10;
            Fmask 2, 4; binary 1).
        mask_resolution: ``mask="auto"`` only: the pixel size (m) cloud detection runs
            at, a whole multiple of the map's (60 for blocks of 6 x 6 pixels of a 10 m
            map: faster, a little less exact); ``None``, the default: the map's pixels.
    """

    source: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | xarray.DataArray"
    bands: Sequence[str] | None = None
    sar_units: SarUnits | None = None
    scale: float = 1.0
    offset: float = 0.0
    crs: str | None = None
    nodata: float | None = None
    mask: str | os.PathLike[str] | None = None
    mask_kind: str | None = None
    mask_codes: Sequence[int] | None = None
    mask_resolution: float | None = None

    def __post_init__(self) -> None:
        # Normalise to hashable, picklable tuples; the dataclass is frozen.
        if isinstance(self.source, str | os.PathLike):
            object.__setattr__(self, "source", (os.fspath(self.source),))
        elif isinstance(self.source, Sequence):
            object.__setattr__(self, "source", tuple(os.fspath(p) for p in self.source))
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(self.bands))
        if self.sar_units is not None and self.sar_units not in get_args(SarUnits):
            raise ValueError(f"sar_units must be one of {get_args(SarUnits)}, "
                             f"got {self.sar_units!r}")
        if self.mask is not None:
            object.__setattr__(self, "mask", os.fspath(self.mask))
        if self.mask_codes is not None:
            object.__setattr__(self, "mask_codes", tuple(int(c) for c in self.mask_codes))
        if self.mask in (None, "none") and (self.mask_kind or self.mask_codes) is not None:
            raise SettingsError("mask_kind" if self.mask_kind else "mask_codes",
                                "given without a mask")

    @property
    def paths(self) -> tuple[str, ...]:
        """The files given (empty for an array)."""
        return self.source if isinstance(self.source, tuple) else ()

    @property
    def name(self) -> str:
        """What error messages call this input."""
        return self.paths[0] if self.paths else "xarray input"


def as_input(value: "SceneInput | str | os.PathLike[str] | Sequence[str] | xarray.DataArray"
             ) -> SceneInput:
    """A :class:`SceneInput` of a path, several paths, an array, or one already made."""
    return value if isinstance(value, SceneInput) else SceneInput(value)


@dataclass(frozen=True)
class Units:
    """Raw values -> the predictor's units: SAR power or amplitude to dB, then scale, offset.

    Attributes:
        sar: how SAR raw values are stored (a key of
            :data:`~discomkd_geo.data.sensors.SAR_SCALES`; ``None``: not SAR, no conversion).
        scale: multiply by this after any dB conversion ...
        offset: ... then add this.
    """

    sar: SarUnits | None = None
    scale: float = 1.0
    offset: float = 0.0

    @property
    def _db_per_decade(self) -> float | None:
        """The stored SAR values' decibels per decade (``None``: nothing to convert)."""
        return None if self.sar is None else SAR_SCALES[self.sar].db_per_decade

    def apply(self, data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Convert ``(C, ...)`` values; power and amplitude <= 0 become invalid."""
        if (factor := self._db_per_decade) is not None:
            valid = valid & (data > 0).all(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                data = factor * np.log10(data)
        if self.scale != 1.0 or self.offset != 0.0:
            data = data * np.float32(self.scale) + np.float32(self.offset)
        return data.astype(np.float32, copy=False), valid

    def stored(self, value: float) -> float:
        """A value in the predictor's units as the file stores it (:meth:`apply` undone)."""
        value = (value - self.offset) / self.scale
        if (factor := self._db_per_decade) is not None:
            value = 10.0 ** (value / factor)
        return float(np.float32(value))  # the stored precision: -32768, not -32767.99999

    def describe(self) -> str:
        """The conversion in words, e.g. ``linear power -> dB``."""
        parts = [] if self.sar is None else [SAR_SCALES[self.sar].conversion]
        if self.scale != 1.0:
            parts.append(f"x {self.scale:g}")
        if self.offset != 0.0:
            parts.append(f"{self.offset:+g}")
        return ", ".join(parts) or "as stored"


@dataclass(frozen=True)
class Grid:
    """The pixel grid of the output map (and of every scene as it is read).

    Attributes:
        crs: coordinate reference system.
        transform: affine transform of the pixel corners.
        width: columns.
        height: rows.
    """

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def window(self) -> Window:
        """The whole grid as a window."""
        return Window(0, 0, self.width, self.height)


class _Reader:
    """What every scene reader offers: raw values of a window, and values in model units.

    Validity is computed here for every consumer (scene checks, engine, statistics): a
    pixel is valid where every band holds data, no band holds the sensor's saturation code
    (:meth:`~discomkd_geo.data.sensors.Sensor.unsaturated`) and the scene's mask, if any,
    does not declare it unavailable.
    """

    grid: Grid
    #: The sensor whose values the reader reads (its saturation code, its resampling).
    sensor: Sensor
    units: Units
    #: Pixels declared unavailable besides nodata (:mod:`.masks`; ``None``: no mask).
    mask: "MaskReader | None"

    @property
    def files(self) -> tuple[str, ...]:
        """The files this reader reads (none for an in-memory array)."""
        return ()

    def read_raw(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Values as stored (float32 ``(C, h, w)``, model band order) and validity."""
        (read,) = self.read_raw_windows([window])
        return read

    def read_raw_windows(self, windows: Iterable[Window]
                         ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """:meth:`read_raw` of each window in turn; saturated and masked pixels are invalid."""
        windows = list(windows)
        masked = (self.mask.read_windows(windows) if self.mask is not None
                  else [None] * len(windows))
        for (data, valid), unavailable in zip(self._read_stored(windows), masked, strict=True):
            valid = self.sensor.unsaturated(data, valid)
            yield data, valid if unavailable is None else valid & ~unavailable

    def _read_stored(self, windows: Iterable[Window]
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Values as stored, and where every band holds data, of each window in turn."""
        raise NotImplementedError

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Values and validity of a window of the output grid (inside the grid).

        Returns:
            ``(data, valid)``: float32 ``(C, h, w)`` in the predictor's units, and a bool
            ``(h, w)`` mask of pixels where every band holds a finite, non-nodata value.
        """
        return self.units.apply(*self.read_raw(window))


@dataclass(frozen=True)
class Layer:
    """Where one model band is stored: a raster and its 1-based band."""

    path: str
    index: int


@dataclass(frozen=True)
class RasterReader(_Reader):
    """How to read one modality's files on the output grid; picklable for Dask workers.

    Attributes:
        layers: one per model band, in the predictor's band order.
        grid: the output grid the scene is read on.
        warped: files on another grid (or georeferenced by GCPs/RPCs only), warped onto
            ``grid``.
        units: conversion of the raw values to the predictor's units.
        nodata: the value marking missing pixels instead of the files' nodata tags
            (``None``: the tags).
    """

    layers: tuple[Layer, ...]
    grid: Grid
    sensor: Sensor
    warped: frozenset[str] = frozenset()
    units: Units = Units()
    nodata: float | None = None
    mask: "MaskReader | None" = None

    @property
    def name(self) -> str:
        """What error messages call this scene."""
        return self.layers[0].path

    @property
    def files(self) -> tuple[str, ...]:
        """The files this reader reads."""
        return tuple(dict.fromkeys(layer.path for layer in self.layers))

    @bounded_reads  # URLs: a stalled server fails the read within GDAL's timeout
    def _read_stored(self, windows: Iterable[Window]
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Values as stored of each window in turn, every file opened once for them all.

        Opening costs far more than reading a small window (a local GeoTIFF: milliseconds
        against a tenth of one; a URL: requests to its server), which the scene checks'
        64 sampled windows paid 64 times.
        """
        with ExitStack() as stack:
            # Per file: the open dataset, and where its bands go in the model's order.
            sources = []
            for path in self.files:
                at = [i for i, layer in enumerate(self.layers) if layer.path == path]
                sources.append((path, self._open_on_grid(stack, path), at,
                                [self.layers[i].index for i in at]))
            for window in windows:
                bands: list[np.ma.MaskedArray] = [np.ma.masked_array([])] * len(self.layers)
                for path, src, at, indexes in sources:
                    try:
                        read = self._read_bands(src, path, indexes, window)
                    except RasterioIOError as err:
                        rows = f"{window.row_off}-{window.row_off + window.height}"
                        raise _read_error(path, f"reading rows {rows} failed", err) from err
                    for i, band in zip(at, read, strict=True):
                        bands[i] = band
                masked = np.ma.stack(bands)
                data = np.ma.getdata(masked).astype(np.float32, copy=False)
                valid = ~np.ma.getmaskarray(masked).any(axis=0) & np.isfinite(data).all(axis=0)
                yield data, valid

    def _open_on_grid(self, stack: ExitStack, path: str) -> rasterio.DatasetReader | WarpedVRT:
        """``path`` opened for reading windows of the output grid (warped onto it if needed)."""
        stack.enter_context(remote_env(path))  # a URL's GDAL options, reads included
        try:
            src = stack.enter_context(rasterio.open(path))
        except RasterioIOError as err:
            raise _read_error(path, "opening failed", err) from err
        if path not in self.warped:
            return src
        nodata = src.nodata if self.nodata is None else self.nodata
        # A negligible approximation tolerance: each pixel is transformed (almost)
        # exactly, so its value does not depend on the window it is read through
        # (byte-identical output for any chunking). The sensor says how to resample
        # (SAR by nearest neighbour, which keeps the speckle texture its branch reads).
        warp = {"resampling": Resampling[self.sensor.resampling], "dtype": "float32",
                "nodata": np.nan, "tolerance": 1e-9}
        if src.crs is None:
            # GCPs or RPCs only: a WarpedVRT given an explicit grid ignores them and
            # reads the wrong pixels (rasterio 1.4, GDAL 3.10), so warp to GDAL's own
            # grid first, which honours them, then from that one onto ours.
            src = stack.enter_context(WarpedVRT(
                src, src_crs=_source_crs(src), crs=self.grid.crs,
                src_nodata=nodata, **warp))
            nodata = src.nodata
        return stack.enter_context(WarpedVRT(
            src, crs=self.grid.crs, transform=self.grid.transform,
            width=self.grid.width, height=self.grid.height, src_nodata=nodata, **warp))

    def _read_bands(self, src: rasterio.DatasetReader | WarpedVRT, path: str,
                    indexes: list[int], window: Window) -> list[np.ma.MaskedArray]:
        """Bands ``indexes`` of one opened file through ``window`` of the output grid."""
        if path in self.warped:
            # Band by band: GDAL's multi-band warped reads of a VRT's full extent give
            # other values than smaller windows; single-band reads do not.
            return [src.read(i, window=window, masked=True, out_dtype="float32")
                    for i in indexes]
        if self.nodata is None:
            return list(src.read(indexes, window=window, masked=True, out_dtype="float32"))
        return [np.ma.masked_equal(band, np.float32(self.nodata)) for band in
                src.read(indexes, window=window, out_dtype="float32")]


def _read_error(path: str, what: str, err: RasterioIOError) -> InputFileError:
    """The one-line error for a scene file that fails while a map reads it."""
    if is_remote(path):
        return InputFileError(path, f"{what}: {remote_problem(err)}")
    detail = str(err.__cause__ or err).splitlines()[0]  # GDAL's own words, if any
    return InputFileError(path, f"{what}: the file is cut off or damaged ({detail})")


@dataclass(frozen=True)
class ArrayReader(_Reader):
    """How to read one modality from an :class:`xarray.DataArray` on the output grid.

    Attributes:
        array: ``(band, y, x)`` values, lazy (Dask) or in memory.
        positions: 0-based positions along ``band`` of the model's bands, in its order.
        grid: the array's grid (the output grid).
        nodata: the array's nodata value, besides NaN.
        units: conversion of the raw values to the predictor's units.
    """

    array: "xarray.DataArray"
    positions: tuple[int, ...]
    grid: Grid
    sensor: Sensor
    nodata: float | None = None
    units: Units = Units()
    name: str = "xarray input"
    mask: "MaskReader | None" = None

    def _read_stored(self, windows: Iterable[Window]
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Values as stored of each window in turn."""
        for window in windows:
            rows, cols = window.toslices()
            data = np.asarray(self.array.isel(band=list(self.positions), y=rows,
                                              x=cols).values, dtype=np.float32)
            valid = np.isfinite(data).all(axis=0)
            if self.nodata is not None and not np.isnan(self.nodata):
                valid &= (data != np.float32(self.nodata)).all(axis=0)
            yield data, valid


#: How one modality's scene is read on the output grid: from files or from an array.
SceneReader = RasterReader | ArrayReader


def _is_safe(path: Path) -> bool:
    """A Sentinel ``.SAFE`` product, its zip, its manifest, or a file inside one."""
    names = [p.name.upper() for p in (path, *path.parents)]
    return any(n.endswith((".SAFE", ".SAFE.ZIP")) for n in names) or names[0] == "MANIFEST.SAFE"


def _band_files(directory: Path) -> list[str]:
    """Raster files under ``directory`` named by a band, the finest resolution per band."""
    finest: dict[str, tuple[float, str]] = {}
    for path in sorted(directory.rglob("*")):
        if path.suffix.lower() not in _RASTER_SUFFIXES or path.name.startswith("."):
            continue
        band = canonical_band(path.stem)
        if not _BAND_TOKEN.fullmatch(band):
            continue
        with _open(str(path)) as src:
            res = abs(src.res[0])
        if band not in finest or res < finest[band][0]:
            finest[band] = (res, str(path))
    if not finest:
        raise InputFileError(directory, "holds no raster named by its band (e.g. "
                                        "T31UFQ_..._B04_10m.jp2, B04.tif, ..._VV.tif)")
    return [path for _, path in finest.values()]


def _expand(scene: SceneInput, sensor: Sensor) -> list[str]:
    """The raster files of a file input of ``sensor``: directories replaced by their band files.

    Raises:
        InputFileError: a ``.SAFE`` product the sensor refuses (a raw Sentinel-1 product),
            a zipped product, or a missing path.
    """
    files = []
    for raw in scene.paths:
        path = Path(raw)
        if sensor.safe_problem is not None and _is_safe(path):
            raise InputFileError(raw, sensor.safe_problem)
        if path.name.upper().endswith(".ZIP"):
            raise InputFileError(raw, "is a zipped product; unzip it and pass the directory")
        if path.is_dir():
            files.extend(_band_files(path))
        else:
            files.append(raw)
    return files


def _open(path: str) -> rasterio.DatasetReader:
    """Open ``path`` (the caller closes it), with a one-line error naming it.

    URLs are opened with :mod:`.remote`'s GDAL options (range requests, timeouts).
    """
    remote = is_remote(path)
    if not remote and not os.path.exists(path):
        raise InputFileError(path, "no such file")
    try:
        with warnings.catch_warnings(), remote_env(path):
            # rasterio would warn and carry on with pixel coordinates; say it in one line.
            warnings.simplefilter("error", NotGeoreferencedWarning)
            return rasterio.open(path)
    except NotGeoreferencedWarning as err:
        raise InputFileError(path, "is not georeferenced (no geotransform, GCPs or RPCs); "
                                   "georeference it (e.g. gdal_edit.py -a_srs -a_ullr) "
                                   "before mapping") from err
    except RasterioIOError as err:
        detail = remote_problem(err) if remote else err
        raise InputFileError(path, f"cannot read raster: {detail}") from err


def _labels(path: str, count: int, descriptions: Sequence[str | None]) -> list[str | None]:
    """Band names of one file: its descriptions, or for one band, its file name."""
    if all(descriptions):
        return [canonical_band(str(d)) for d in descriptions]
    if count == 1:
        name = canonical_band(Path(path).stem)
        return [name if _BAND_TOKEN.fullmatch(name) else None]
    return [None] * count


def match_bands(name: str, labels: Sequence[str | None], wanted: Sequence[str],
                modality: str) -> tuple[int, ...]:
    """0-based positions of the model's bands ``wanted`` among the input's bands.

    Args:
        name: the input, for error messages.
        labels: the input's band names in order (``None`` where unnamed).
        wanted: band names the model reads, in its order.
        modality: the modality, for the advice in error messages.

    Raises:
        InputFileError: a band name repeats, a band is missing, or the band count differs
            and the input does not name its bands.
    """
    if not all(labels):
        if len(labels) == len(wanted) and not any(labels):
            # Unnamed bands: trust the order, as EuroSAT's own GeoTIFFs require.
            return tuple(range(len(labels)))
        unnamed = sum(label is None for label in labels)
        raise InputFileError(name, f"has {unnamed} unnamed of {len(labels)} bands, the model "
                                   f"reads {len(wanted)} ({', '.join(wanted)}); name them "
                                   "with bands=", param="bands")
    names = [str(label) for label in labels]
    if repeated := sorted({n for n in names if names.count(n) > 1}):
        where = [i + 1 for i, n in enumerate(names) if n == repeated[0]]
        raise InputFileError(name, f"band {repeated[0]} appears {len(where)} times (bands "
                                   f"{', '.join(map(str, where))}); each band must appear once")
    wanted_names = [canonical_band(b) for b in wanted]
    if missing := [b for b, w in zip(wanted, wanted_names, strict=True) if w not in names]:
        usable = [b for b in names if b in wanted_names]
        raise InputFileError(name, f"lacks bands {missing} that the model reads (scene bands: "
                                   f"{names}); if they are there under other names, name them "
                                   "with bands=, otherwise use a model trained on the scene's "
                                   f"bands (config data.modalities.{modality}.bands: "
                                   f"[{','.join(usable)}])", param="bands")
    return tuple(names.index(w) for w in wanted_names)


def _source_crs(src: rasterio.DatasetReader) -> CRS:
    """The CRS of a raster's georeferencing: its own, its GCPs', or WGS 84 for RPCs.

    GDAL's warper falls back to RPCs only when it is given a source CRS.
    """
    return src.crs or (src.gcps[1] if src.gcps[0] else RPC_CRS)


def _utm_of(lon: float, lat: float) -> CRS:
    """The WGS 84 UTM zone of a point."""
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _target_crs(src: rasterio.DatasetReader, named: str | None) -> CRS:
    """The CRS to warp a GCP/RPC raster to: the one named, or the centre's UTM zone."""
    if named is not None:
        try:
            return CRS.from_user_input(named)
        except CRSError as err:
            raise InputFileError(src.name, f"crs={named!r} is not a CRS: {err}",
                                 param="crs") from err
    if src.gcps[0]:
        gcps, gcp_crs = src.gcps
        xs, ys = [g.x for g in gcps], [g.y for g in gcps]
        west, south, east, north = transform_bounds(gcp_crs, "EPSG:4326", min(xs), min(ys),
                                                    max(xs), max(ys))
        return _utm_of((west + east) / 2, (south + north) / 2)
    return _utm_of(src.rpcs.long_off, src.rpcs.lat_off)


def _native_grid(src: rasterio.DatasetReader, crs: str | None,
                 pixel_size: float | None) -> tuple[Grid, bool]:
    """The grid a raster is read on, and whether that needs a warp (GCPs or RPCs only).

    Raises:
        InputFileError: the raster has no georeferencing at all.
    """
    if src.crs is not None:
        return Grid(src.crs, src.transform, src.width, src.height), False
    if not (src.gcps[0] or src.rpcs):
        raise InputFileError(src.name, "has no georeferencing (no CRS, GCPs or RPCs); assign "
                                       "it first, e.g. gdal_translate -a_srs EPSG:32631 "
                                       "-a_ullr ULX ULY LRX LRY")
    target = _target_crs(src, crs)
    gcps = src.gcps[0]
    transform, width, height = calculate_default_transform(
        _source_crs(src), target, src.width, src.height, gcps=gcps or None,
        rpcs=None if gcps else src.rpcs, resolution=pixel_size)
    return Grid(target, transform, width, height), True


def _at_pixel_size(grid: Grid, pixel_size: float | None) -> Grid:
    """``grid`` resampled to the model's pixel size, for north-up grids in metres.

    Sentinel-2 20 m and 60 m bands (or stacks) are thus read at the 10 m the model was
    trained on; grids in degrees are kept as they are.
    """
    res = grid.transform.a
    if (pixel_size is None or not grid.crs.is_projected or grid.crs.linear_units != "metre"
            or grid.transform.b or grid.transform.d or abs(res - pixel_size) <= 0.01 * res):
        return grid
    west, south, east, north = array_bounds(grid.height, grid.width, grid.transform)
    return Grid(grid.crs, from_origin(west, north, pixel_size, pixel_size),
                round((east - west) / pixel_size), round((north - south) / pixel_size))


def _open_files(scene: SceneInput, info: PredictorInfo, modality: str, grid: Grid | None,
                first: str) -> tuple[Grid, RasterReader]:
    """Check a file input and describe how to read it on ``grid`` (or on its own grid).

    ``first`` names the input that defined ``grid``, for error messages.
    """
    sensor = info.sensor
    files = _expand(scene, sensor)
    labels: list[str | None] = []
    layers: list[Layer] = []
    warped = set()
    first = first if grid is not None else files[0]
    for path in files:
        with _open(path) as src:
            native, needs_warp = _native_grid(src, scene.crs, info.pixel_size)
            if grid is None:
                grid = _at_pixel_size(native, info.pixel_size)
            else:
                bounds = transform_bounds(native.crs, grid.crs, *array_bounds(
                    native.height, native.width, native.transform))
                if disjoint_bounds(bounds, array_bounds(grid.height, grid.width,
                                                        grid.transform)):
                    raise InputFileError(path, f"does not overlap {first}")
            if needs_warp or native != grid:
                warped.add(path)
            labels.extend(_labels(path, src.count, src.descriptions))
            layers.extend(Layer(path, i) for i in range(1, src.count + 1))
    assert grid is not None
    if scene.bands is not None:
        if len(scene.bands) != len(layers):
            raise InputFileError(scene.name, f"bands= names {len(scene.bands)} bands but the "
                                             f"input has {len(layers)}", param="bands")
        labels = [canonical_band(b) for b in scene.bands]
    positions = match_bands(scene.name, labels, info.bands, modality)
    units = Units(sensor.sar_units(scene.sar_units, files), scene.scale, scene.offset)
    return grid, RasterReader(tuple(layers[p] for p in positions), grid, sensor,
                              frozenset(warped), units, scene.nodata)


def _open_array(scene: SceneInput, info: PredictorInfo, modality: str, grid: Grid | None,
                first: str) -> tuple[Grid, ArrayReader]:
    """Check an :class:`xarray.DataArray` input; it must lie on ``grid`` when given."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    array = scene.source
    name = scene.name
    if array.ndim != 3 or "band" not in array.dims:
        raise InputFileError(name, f"has dimensions {array.dims}; expected (band, y, x)")
    crs = array.rio.crs
    if crs is None:
        raise InputFileError(name, "has no CRS; set one with .rio.write_crs(...)")
    array = array.transpose("band", array.rio.y_dim, array.rio.x_dim).rename(
        {array.rio.y_dim: "y", array.rio.x_dim: "x"})
    own = Grid(crs, array.rio.transform(), array.sizes["x"], array.sizes["y"])
    if grid is not None and own != grid:
        raise InputFileError(name, f"lies on another grid than {first}; align it first "
                                   "(.rio.reproject_match)")
    if scene.bands is not None:
        labels: list[str | None] = [canonical_band(b) for b in scene.bands]
        if len(labels) != array.sizes["band"]:
            raise InputFileError(name, f"bands names {len(labels)} bands but the array has "
                                       f"{array.sizes['band']}")
    elif "band" in array.coords and array["band"].dtype.kind in "US":
        labels = [canonical_band(str(b)) for b in array["band"].values]
    else:
        labels = [None] * array.sizes["band"]
    positions = match_bands(name, labels, info.bands, modality)
    sensor = info.sensor
    units = Units(sensor.sar_units(scene.sar_units, ()), scene.scale, scene.offset)
    nodata = array.rio.nodata if scene.nodata is None else scene.nodata
    return own, ArrayReader(array, positions, own, sensor, nodata, units, name)


def open_readers(inputs: Mapping[str, SceneInput], infos: Mapping[str, PredictorInfo]
                 ) -> tuple[Grid, dict[str, SceneReader]]:
    """Check the scenes of every modality and describe how to read them on one grid.

    The first modality's first raster defines the output grid, at the model's pixel size
    (``infos[...].pixel_size``) when it is in metres; every other file is warped onto it.

    Args:
        inputs: scene per modality, the grid-defining one first.
        infos: what each modality's predictor reads (bands, units, pixel size).

    A scene's ``mask`` (:mod:`.masks`), or its default one (the SCL raster of an L2A
    ``.SAFE``), is checked here too and read with it: the pixels it declares unavailable
    are invalid like nodata.

    Raises:
        InputFileError: a file is missing or unreadable, a raw Sentinel-1 product, not
            georeferenced, lacks or repeats bands, or does not overlap the first scene; a
            mask does not overlap, holds unknown codes or masks every pixel.
        SettingsError: a mask's kind or codes do not fit it.
    """
    from .masks import open_mask  # masks builds on this module's readers

    grid: Grid | None = None
    first = ""
    readers: dict[str, SceneReader] = {}
    for modality, scene in inputs.items():
        info = infos[modality]
        if scene.sar_units is not None and not info.sensor.sar_scales:
            raise ValueError(f"sar_units given for the {modality} input, whose model does "
                             f"not read SAR but {info.sensor.title}")
        opener = _open_files if scene.paths else _open_array
        own_grid, readers[modality] = opener(scene, info, modality, grid, first)
        reader = readers[modality]
        if (mask := open_mask(scene, reader.grid, reader.name, info.sensor)) is not None:
            readers[modality] = replace(reader, mask=mask)
        grid, first = grid or own_grid, first or readers[modality].name
    if grid is None:
        raise ValueError("no scene given")
    return grid, readers


