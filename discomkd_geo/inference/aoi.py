"""Areas of interest: map only where a polygon says, and never touch the rest of the scene.

Part of the inference flow's planning (io -> **aoi** -> tiling -> engine). An area of
interest is the union of the geometries of one vector layer (any format geopandas reads,
any CRS; ``FILE[:LAYER]``), reprojected onto the output grid. The engine skips every
chunk whose output pixels do not touch it (nothing is read or classified there) and
sets the pixels of the other chunks whose centre lies outside it to nodata (the centre
rule of :func:`rasterio.features.rasterize`, as :mod:`.zonal` counts pixels).
"""

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from rasterio.features import rasterize
from rasterio.transform import array_bounds
from rasterio.windows import Window, from_bounds
from rasterio.windows import transform as window_transform

from ..errors import InputFileError
from ..logs import log
from .vector_input import read_layer

if TYPE_CHECKING:
    import geopandas as gpd


@dataclass(frozen=True)
class AreaOfInterest:
    """An area of interest on one output grid (picklable, for Dask workers).

    Attributes:
        geometry: the union of the layer's geometries, in the grid's CRS (shapely).
        transform: the output grid's transform.
        name: the vector file, for messages.
    """

    geometry: Any
    transform: Affine
    name: str

    def touches(self, window: Window) -> bool:
        """Whether any pixel centre of ``window`` (output grid) may lie inside the area."""
        from shapely import box

        bounds = array_bounds(window.height, window.width,
                              window_transform(window, self.transform))
        return self.geometry.intersects(box(*bounds))

    def region(self, transform: Affine, width: int, height: int) -> Window:
        """The window of a grid (e.g. the input grid) covering the area's bounds."""
        whole = Window(0, 0, width, height)
        return covering_window(self.geometry.bounds, transform).intersection(whole)

    def mask(self, window: Window) -> np.ndarray:
        """Bool ``(h, w)``: pixels of ``window`` whose centre lies inside the area."""
        return rasterize([self.geometry], out_shape=(window.height, window.width),
                         transform=window_transform(window, self.transform), fill=0,
                         default_value=1, dtype="uint8").astype(bool)


def covering_window(bounds: tuple[float, float, float, float], transform: Affine) -> Window:
    """The whole pixels of a grid (extended past its edges) covering ``bounds``."""
    window = from_bounds(*bounds, transform=transform)
    col, row = math.floor(window.col_off), math.floor(window.row_off)
    return Window(col, row, max(1, math.ceil(window.col_off + window.width) - col),
                  max(1, math.ceil(window.row_off + window.height) - row))


def aoi_on_grid(frame: "gpd.GeoDataFrame", crs: Any, transform: Affine, width: int,
                height: int, name: str) -> AreaOfInterest:
    """The union of ``frame``'s geometries on an output grid.

    Args:
        frame: the area's geometries, in any CRS.
        crs: the output grid's CRS.
        transform: its transform.
        width: its columns.
        height: its rows.
        name: the vector file, for messages.

    Raises:
        InputFileError: the area does not overlap the grid, or covers less than a pixel.
    """
    import shapely

    geometry = shapely.union_all(shapely.make_valid(frame.to_crs(crs).geometry.dropna().values))
    inside = geometry.intersection(shapely.box(*array_bounds(height, width, transform)))
    if inside.is_empty:
        raise InputFileError(name, "does not overlap the scene")
    if inside.area < abs(transform.determinant):
        raise InputFileError(name, "covers less than one pixel of the scene")
    return AreaOfInterest(geometry, transform, name)


def read_aoi(spec: str | os.PathLike[str]) -> "gpd.GeoDataFrame":
    """The layer of an area of interest (``FILE[:LAYER]``), with one-line errors.

    A polygon in longitude and latitude spanning more than 180 degrees is mapped as it
    reads, with a warning: it is most likely a ring drawn across the antimeridian
    (179 to -179), which every GIS reads the long way round, over the rest of the globe.
    """
    frame = read_layer(spec)
    if not frame.geom_type.isin(["Polygon", "MultiPolygon"]).any():
        raise InputFileError(os.fspath(spec), "holds no polygon; an area of interest is "
                                              "made of polygons")
    if frame.crs is not None and frame.crs.is_geographic:
        # Per part: an area split at the antimeridian (RFC 7946) is one feature whose
        # parts lie at both ends of the longitudes.
        parts = frame.geometry.explode(index_parts=False).bounds
        spans = parts["maxx"] - parts["minx"]
        if (spans > 180).any():
            widest = parts.iloc[int(np.argmax(spans.to_numpy()))]
            log.warning("%s: a polygon of the area of interest spans longitudes %g to %g "
                        "(%.0f degrees), read the long way round; if it crosses the "
                        "antimeridian, split it at 180 degrees", os.fspath(spec),
                        widest["minx"], widest["maxx"], spans.max())
    return frame
