"""Open and check the scenes a map is made from, and read them window by window.

First step of the inference flow (io -> tiling -> engine -> writers). :func:`open_sources`
checks every input once, up front, and turns it into a picklable :class:`SceneSource`
(plain values, no open dataset) that Dask workers use to read windows of the scene on the
output grid: the first modality's grid, onto which any other modality is warped on the fly
through a :class:`rasterio.vrt.WarpedVRT`. Bands are matched to the checkpoint's band
names through the raster's band descriptions or an explicit list; SAR in linear power is
converted to dB and reflectance products are rescaled here, so the predictor receives the
raw units it was trained on.
"""

import os
import warnings
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.coords import disjoint_bounds
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ..errors import InputFileError


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


@dataclass(frozen=True)
class SceneSource:
    """How to read one modality's scene on the output grid; picklable for Dask workers.

    Attributes:
        path: the raster (any GDAL-readable file).
        indexes: 1-based raster bands, in the predictor's band order.
        grid: the output grid the scene is read on.
        warp: whether the scene lies on another grid and is warped onto ``grid``.
        sar_db: convert linear power to dB (``10 log10``; values <= 0 become nodata).
        scale: multiply the values by this ...
        offset: ... then add this (reflectance products to L1C digital numbers, ...).
    """

    path: str
    indexes: tuple[int, ...]
    grid: Grid
    warp: bool = False
    sar_db: bool = False
    scale: float = 1.0
    offset: float = 0.0

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Values and validity of a window of the output grid (inside the grid).

        Returns:
            ``(data, valid)``: float32 ``(C, h, w)`` in the predictor's units, and a bool
            ``(h, w)`` mask of pixels where every band holds a finite, non-nodata value.
        """
        with ExitStack() as stack:
            src = stack.enter_context(rasterio.open(self.path))
            if self.warp:
                # A negligible approximation tolerance: each pixel is transformed (almost)
                # exactly, so its value does not depend on the window it is read through
                # (byte-identical output for any chunking). rasterio rejects exactly 0.
                src = stack.enter_context(WarpedVRT(
                    src, crs=self.grid.crs, transform=self.grid.transform,
                    width=self.grid.width, height=self.grid.height,
                    resampling=Resampling.bilinear, dtype="float32", nodata=np.nan,
                    src_nodata=src.nodata, tolerance=1e-9))
            if self.warp:
                # Band by band: GDAL's multi-band warped reads of a VRT's full extent give
                # other values than smaller windows; single-band reads do not.
                masked = np.ma.stack([src.read(i, window=window, masked=True,
                                               out_dtype="float32") for i in self.indexes])
            else:
                masked = src.read(self.indexes, window=window, masked=True,
                                  out_dtype="float32")
        data = np.ma.getdata(masked).astype(np.float32, copy=False)
        valid = ~np.ma.getmaskarray(masked).any(axis=0) & np.isfinite(data).all(axis=0)
        if self.sar_db:
            valid &= (data > 0).all(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                data = 10.0 * np.log10(data)
        if self.scale != 1.0 or self.offset != 0.0:
            data = data * np.float32(self.scale) + np.float32(self.offset)
        return data, valid


def match_bands(path: str, descriptions: Sequence[str | None], wanted: Sequence[str],
                names: Sequence[str] | None = None) -> tuple[int, ...]:
    """1-based raster bands holding the model's bands ``wanted``, in the model's order.

    Args:
        path: the raster, for error messages.
        descriptions: the raster's band descriptions (``None`` where unset).
        wanted: band names the model reads, in its order.
        names: explicit names of the raster's bands, in raster order; overrides the
            descriptions.

    Raises:
        InputFileError: a band is missing, or the band count differs and the raster does
            not name its bands.
    """
    count = len(descriptions)
    if names is not None:
        if len(names) != count:
            raise InputFileError(path, f"--bands names {len(names)} bands but the raster "
                                       f"has {count}")
        labels = list(names)
    elif all(descriptions):
        labels = [str(d) for d in descriptions]
    elif count == len(wanted):
        # Unnamed bands: trust the order, as EuroSAT's own GeoTIFFs require.
        return tuple(range(1, count + 1))
    else:
        raise InputFileError(path, f"has {count} unnamed bands, the model reads "
                                   f"{len(wanted)} ({', '.join(wanted)}); name them with --bands")
    missing = [b for b in wanted if b not in labels]
    if missing:
        raise InputFileError(path, f"lacks bands {missing} the model reads "
                                   f"(raster bands: {labels}); map them with --bands")
    return tuple(labels.index(b) + 1 for b in wanted)


def _check(path: str) -> rasterio.DatasetReader:
    """Open ``path`` (the caller closes it), with a one-line error naming it."""
    if not os.path.exists(path):
        raise InputFileError(path, "no such file")
    try:
        with warnings.catch_warnings():
            # rasterio would warn and carry on with pixel coordinates; say it in one line.
            warnings.simplefilter("error", NotGeoreferencedWarning)
            return rasterio.open(path)
    except NotGeoreferencedWarning as err:
        raise InputFileError(path, "is not georeferenced (no geotransform, GCPs or RPCs); "
                                   "georeference it (e.g. gdal_edit.py -a_srs -a_ullr) "
                                   "before mapping") from err
    except RasterioIOError as err:
        raise InputFileError(path, f"cannot read raster: {err}") from err


def open_sources(paths: Mapping[str, str | os.PathLike[str]],
                 bands: Mapping[str, Sequence[str]], *,
                 names: Mapping[str, Sequence[str]] | None = None,
                 sar_db: Sequence[str] = (), scale: float = 1.0,
                 offset: float = 0.0) -> tuple[Grid, dict[str, SceneSource]]:
    """Check the scenes of every modality and describe how to read them on one grid.

    The first modality's raster defines the output grid; the others are warped onto it.

    Args:
        paths: scene per modality, the grid-defining one first.
        bands: band names each modality's model reads, in its order.
        names: explicit names of a raster's bands (raster order), per modality.
        sar_db: modalities whose raster holds linear power to convert to dB.
        scale: multiply raster values by this (every modality) ...
        offset: ... then add this.

    Raises:
        InputFileError: a file is missing or unreadable, has no CRS, lacks bands, or does
            not overlap the first scene.
    """
    names = names or {}
    grid: Grid | None = None
    first = ""
    sources: dict[str, SceneSource] = {}
    for modality, raw_path in paths.items():
        path = os.fspath(raw_path)
        with _check(path) as src:
            if src.crs is None:
                raise InputFileError(path, "has no CRS; georeference it (e.g. gdal_edit.py "
                                           "-a_srs) before mapping")
            indexes = match_bands(path, src.descriptions, bands[modality], names.get(modality))
            if grid is None:
                grid = Grid(src.crs, src.transform, src.width, src.height)
                first, warp = path, False
            else:
                bounds = transform_bounds(src.crs, grid.crs, *src.bounds)
                if disjoint_bounds(bounds, array_bounds(grid.height, grid.width,
                                                        grid.transform)):
                    raise InputFileError(path, f"does not overlap {first}")
                warp = (src.crs, src.transform, src.width, src.height) != (
                    grid.crs, grid.transform, grid.width, grid.height)
        sources[modality] = SceneSource(path, indexes, grid, warp, modality in sar_db,
                                        scale, offset)
    if grid is None:
        raise ValueError("no scene given")
    return grid, sources
