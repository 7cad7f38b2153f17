"""Where a map's strata lie: the area each class covers in a region, the class under points.

Shared by :mod:`.sampling` (which draws points from the strata) and :mod:`.assess`
(which weighs them), so both measure a stratum the same way: its area is what
``discomkd-geo zonal`` reports for the region (:func:`discomkd_geo.inference.zonal.
zonal_areas`: centre rule, planar areas on a projected CRS, equal-area ones on a
geographic CRS), and a point belongs to the map pixel it falls in. The region is the
whole map, or the area of interest of :mod:`discomkd_geo.inference.aoi`.
"""

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.windows import Window

from ..errors import InputFileError
from ..inference.aoi import aoi_on_grid, read_aoi
from ..inference.classmap import ClassMap

if TYPE_CHECKING:
    import geopandas as gpd

#: Rows of the map read at a time when looking up the class under points.
STRIP = 1024


@dataclass(frozen=True)
class Region:
    """The part of a map a sample is drawn from or assessed over.

    Attributes:
        geometry: a shapely polygon in the map's CRS: the area of interest, or the map's
            bounds.
        aoi: the area-of-interest file (``FILE[:LAYER]``), ``None`` for the whole map.
    """

    geometry: Any
    aoi: str | None = None


def region_of(classmap: ClassMap, aoi: str | os.PathLike[str] | None = None) -> Region:
    """The whole map, or the union of an area-of-interest layer on the map's grid.

    Raises:
        InputFileError: the area's file is unreadable, holds no polygon, or does not
            overlap the map (see :func:`discomkd_geo.inference.aoi.aoi_on_grid`).
    """
    import shapely

    if aoi is None:
        return Region(shapely.box(*classmap.bounds))
    area = aoi_on_grid(read_aoi(aoi), classmap.crs, classmap.transform, classmap.width,
                       classmap.height, os.fspath(aoi))
    return Region(area.geometry, os.fspath(aoi))


def class_areas(classmap: ClassMap, geometries: "list[Any] | gpd.GeoSeries") -> np.ndarray:
    """Hectares of each class inside each geometry (in the map's CRS), as ``(m, k)``.

    The figures of ``discomkd-geo zonal`` for the same polygons; nodata and the part
    beyond the map are left out.
    """
    import geopandas as gpd

    from ..inference.zonal import zonal_areas

    zones = gpd.GeoDataFrame(geometry=list(geometries), crs=classmap.crs)
    table = zonal_areas(classmap.path, zones)
    return table[[f"{name}_ha" for name in classmap.classes]].to_numpy(dtype=float)


def pixels_of(classmap: ClassMap, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray,
                                                                        np.ndarray]:
    """Rows and columns of the map pixels holding points (map CRS); may lie off the map."""
    cols, rows = ~classmap.transform * (np.asarray(xs, float), np.asarray(ys, float))
    return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)


def centres_of(classmap: ClassMap, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Map-CRS coordinates of the centres of pixels."""
    return classmap.transform * (np.asarray(cols) + 0.5, np.asarray(rows) + 0.5)


def values_at(path: str | os.PathLike[str], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Band 1's values at pixels, ``-1`` off the raster, read in strips of rows.

    Only the strips holding points are read, each over the columns its points span.
    """
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    values = np.full(rows.shape, -1, dtype=np.int64)
    with rasterio.open(path) as src:
        inside = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
        for start in range(0, src.height, STRIP):
            here = inside & (rows >= start) & (rows < start + STRIP)
            if not here.any():
                continue
            left, right = int(cols[here].min()), int(cols[here].max()) + 1
            height = min(STRIP, src.height - start)
            strip = src.read(1, window=Window(left, start, right - left, height))
            values[here] = strip[rows[here] - start, cols[here] - left]
    return values


def check_codes(classmap: ClassMap, codes: np.ndarray) -> None:
    """Refuse a map holding codes beyond its classes (other than nodata).

    Raises:
        InputFileError: naming the smallest such code.
    """
    stray = codes[(codes >= len(classmap.classes)) & (codes != classmap.nodata)]
    if stray.size:
        raise InputFileError(classmap.path, f"holds code {int(stray.min())}, which has no "
                                            f"class (classes 0-{len(classmap.classes) - 1})")
