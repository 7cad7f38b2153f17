"""A land-cover map read back for GIS work: its classes, colours and areas in square metres.

Shared by :mod:`.vectorize` (polygons) and :mod:`.zonal` (areas per zone), the steps that
follow the writers in a processing chain (io -> tiling -> engine -> writers -> these).
Class names and colours come from the map's metadata tags (``CLASSES``,
``CLASS_COLORS``, written by :func:`discomkd_geo.inference.writers.class_tags`), else
from its colour table with names ``class_<code>`` up to its largest code, so any
single-band map of integer codes works.

Areas are always square metres. On a projected CRS they are areas in the map's plane
(what GIS software reports; metres, or the CRS's linear unit converted to metres). On a
geographic CRS (degrees) they are computed on a Lambert azimuthal equal-area projection
centred on the map (an equal-area projection of the WGS 84 ellipsoid's authalic sphere),
so a hectare is a hectare at every latitude.
"""

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.transform import array_bounds
from shapely import Polygon

from ..constants import CLASS_NODATA
from ..errors import InputFileError

if TYPE_CHECKING:
    import geopandas as gpd

#: Hectare in square metres.
HECTARE = 10_000.0


@dataclass(frozen=True)
class ClassMap:
    """What a land-cover map says about itself.

    Attributes:
        path: the raster.
        classes: class name by code.
        colors: ``#rrggbb`` colour by code.
        nodata: the value of unmapped pixels.
        crs: the map's CRS.
        transform: the map's affine transform.
        width: columns.
        height: rows.
    """

    path: str
    classes: tuple[str, ...]
    colors: tuple[str, ...]
    nodata: int
    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """West, south, east, north in the map's CRS."""
        return array_bounds(self.height, self.width, self.transform)

    @property
    def area_crs(self) -> CRS:
        """The CRS areas are measured in: the map's own if projected, else a local LAEA."""
        return area_crs(self.crs, self.bounds)


def _colors_from_table(src: rasterio.DatasetReader, count: int) -> list[str]:
    try:
        table = src.colormap(1)
    except ValueError:  # no colour table
        table = {}
    return ["#{:02x}{:02x}{:02x}".format(*table.get(code, (128, 128, 128))[:3])
            for code in range(count)]


def _largest_code(src: rasterio.DatasetReader, nodata: int) -> int:
    """The largest code other than nodata, read block by block."""
    largest = -1
    for _, window in src.block_windows(1):
        codes = src.read(1, window=window)
        codes = codes[codes != nodata]
        if codes.size:
            largest = max(largest, int(codes.max()))
    return largest


def read_class_map(path: str | os.PathLike[str]) -> ClassMap:
    """Open a single-band class map and read its classes, colours, nodata and grid.

    Raises:
        InputFileError: not one band of integer codes, or not georeferenced.
    """
    path = os.fspath(path)
    with rasterio.open(path) as src:
        if src.count != 1 or not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
            raise InputFileError(path, f"is not a class map ({src.count} band(s) of "
                                       f"{src.dtypes[0]}); expected one band of class codes")
        if src.crs is None:
            raise InputFileError(path, "has no CRS; areas need a georeferenced map")
        tags = src.tags()
        nodata = CLASS_NODATA if src.nodata is None else int(src.nodata)
        if "CLASSES" in tags:  # predict's maps
            classes = [str(name) for name in json.loads(tags["CLASSES"])]
        elif "classes" in tags:  # the synthetic truth
            classes = tags["classes"].split(",")
        else:
            classes = [f"class_{code}" for code in range(_largest_code(src, nodata) + 1)]
        colors = (json.loads(tags["CLASS_COLORS"]) if "CLASS_COLORS" in tags
                  else _colors_from_table(src, len(classes)))
        return ClassMap(path, tuple(classes), tuple(colors), nodata, src.crs, src.transform,
                        src.width, src.height)


def area_crs(crs: CRS, bounds: tuple[float, float, float, float]) -> CRS:
    """The CRS areas are measured in: ``crs`` if projected, else a LAEA centred on ``bounds``."""
    if not crs.is_geographic:
        return crs
    west, south, east, north = bounds
    return CRS.from_proj4(f"+proj=laea +lat_0={(south + north) / 2:.6f} "
                          f"+lon_0={(west + east) / 2:.6f} +datum=WGS84 +units=m +no_defs")


def unit_factor(crs: CRS) -> float:
    """Metres per unit of a projected CRS's first axis (1 for metres, 0.3048 for feet)."""
    return ProjCRS.from_user_input(crs.to_wkt()).axis_info[0].unit_conversion_factor


def row_areas(classmap: ClassMap, rows: range | None = None) -> np.ndarray:
    """Area in m2 of the pixels of each row, as a ``(len(rows), 1)`` column.

    Rows may lie beyond the map (a zone reaching past its edge). Projected: one value
    (the transform's determinant in square metres). Geographic: the cells of a row of a
    north-up grid share their area, so each row's first cell is measured on the
    equal-area projection.

    Raises:
        InputFileError: a rotated grid on a geographic CRS (warp it to a north-up grid).
    """
    import geopandas as gpd

    rows = range(classmap.height) if rows is None else rows
    t = classmap.transform
    if not classmap.crs.is_geographic:
        return np.full((len(rows), 1), abs(t.determinant) * unit_factor(classmap.crs) ** 2)
    if t.b != 0 or t.d != 0:
        raise InputFileError(classmap.path, "is a rotated grid on a geographic CRS; warp it "
                                            "to a north-up grid first (gdalwarp)")
    cells = [Polygon([t * (0, r), t * (1, r), t * (1, r + 1), t * (0, r + 1)]) for r in rows]
    areas = gpd.GeoSeries(cells, crs=classmap.crs).to_crs(classmap.area_crs).area
    return areas.to_numpy().reshape(len(rows), 1)


def geometry_areas(geometries: "gpd.GeoSeries", crs: CRS,
                   bounds: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Areas in m2 of geometries in ``crs`` (see the module docstring for the method).

    Args:
        geometries: a GeoSeries in ``crs``.
        crs: their CRS.
        bounds: where a local equal-area projection is centred on a geographic CRS
            (default: the geometries' total bounds).
    """
    target = area_crs(crs, bounds or tuple(geometries.total_bounds))
    if target == crs:
        return geometries.area.to_numpy() * unit_factor(crs) ** 2
    return geometries.to_crs(target).area.to_numpy()
