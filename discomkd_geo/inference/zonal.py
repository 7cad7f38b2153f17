"""Areas of each class per zone (administrative units, parcels, ...): the land-cover table.

A step after the writers in a GIS chain (``discomkd-geo zonal``). Zones in any CRS are
reprojected to the map's CRS. **Centre rule**: a pixel counts for a zone when its centre
lies inside the zone's geometry (:func:`rasterio.features.rasterize` without
``all_touched``), so a pixel belongs to at most one of several adjacent zones and a zone
smaller than a pixel may count none (its percentages are then empty). Each counted pixel
adds its area in m2 (:mod:`discomkd_geo.inference.classmap`: planar on a projected
CRS, equal-area on a geographic one) to its class, to ``nodata`` (unmapped pixels of
the map) or to ``outside`` (the zone's part beyond the map's extent, on the map's grid
extended). Percentages are of the counted area, so per zone the classes, ``nodata`` and
``outside`` add up to 100 %.

Zones are processed one at a time in blocks, so memory follows the block size, not the
zone's size.
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.errors import WindowError
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from ..errors import InputFileError, OutputError
from ..files import atomic_path, check_outputs
from ..logs import progress_disabled
from .aoi import covering_window
from .classmap import HECTARE, ClassMap, geometry_areas, read_class_map, row_areas
from .tiling import chunk_layout, relative_slices
from .vector_input import read_layer
from .vectorize import valid_polygons, write_layer

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd

#: Block side, in pixels, of the zone windows.
BLOCK = 2048


def _zone_areas(src: rasterio.DatasetReader, classmap: ClassMap, geometry: object,
                block: int) -> tuple[np.ndarray, int]:
    """Area in m2 per class, nodata and outside, and the pixel count, of one zone."""
    classes = len(classmap.classes)
    sums = np.zeros(classes + 2)
    count = 0
    zone = covering_window(geometry.bounds, classmap.transform)
    whole = Window(0, 0, classmap.width, classmap.height)
    for part in chunk_layout(zone.height, zone.width, block):
        part = Window(zone.col_off + part.col_off, zone.row_off + part.row_off, part.width,
                      part.height)
        inside = rasterize([geometry], out_shape=(part.height, part.width),
                           transform=window_transform(part, classmap.transform),
                           fill=0, default_value=1, dtype="uint8").astype(bool)
        if not inside.any():
            continue
        index = np.full((part.height, part.width), classes + 1, dtype=np.int64)  # outside
        try:
            read = part.intersection(whole)
        except WindowError:
            read = None
        if read is not None:
            codes = src.read(1, window=read).astype(np.int64)
            codes[codes == classmap.nodata] = classes
            if (codes > classes).any():
                raise InputFileError(classmap.path, f"holds code {codes[codes > classes].min()}"
                                                    f", which has no class")
            index[relative_slices(read, part)] = codes
        rows = range(part.row_off, part.row_off + part.height)
        weights = np.broadcast_to(row_areas(classmap, rows), inside.shape)
        sums += np.bincount(index[inside], weights=weights[inside], minlength=classes + 2)
        count += int(inside.sum())
    return sums, count


def zonal_areas(path: str | os.PathLike[str], zones: "gpd.GeoDataFrame",
                block: int = BLOCK, progress: bool = False) -> "gpd.GeoDataFrame":
    """Per zone, the area of each class of a map, in hectares and % of the zone.

    Args:
        path: a single-band class map.
        zones: the zones, in any CRS; their attributes are kept.
        block: side of the blocks a zone is processed in (bounds memory).
        progress: show a progress bar over the zones.

    Returns:
        The zones (in their own CRS) with, after their attributes: ``zone_ha`` (the
        geometry's area), ``pixels`` (pixels counted by the centre rule), then per class
        ``<name>_ha`` and ``<name>_pct``, then ``nodata_ha``/``nodata_pct`` and
        ``outside_ha``/``outside_pct`` (see the module docstring).

    Raises:
        InputFileError: not a class map, or a zone attribute has the name of a result
            column.
    """
    import geopandas as gpd

    classmap = read_class_map(path)
    names = [*classmap.classes, "nodata", "outside"]
    columns = ["zone_ha", "pixels", *(f"{n}_{unit}" for n in names for unit in ("ha", "pct"))]
    if clash := sorted(set(columns) & set(zones.columns)):
        raise InputFileError(classmap.path, f"a zone attribute is named {clash[0]!r}, like a "
                                            "result column; rename it")
    # Repaired, as areas of interest and polygons are: a self-intersecting zone would
    # count its pixels but measure the signed area of its ring (0 ha for a bow-tie).
    local = zones.to_crs(classmap.crs)
    local = local.set_geometry([None if g is None else valid_polygons(g)
                                for g in local.geometry], crs=local.crs)
    sums = np.zeros((len(zones), len(names)))
    counts = np.zeros(len(zones), dtype=np.int64)
    from tqdm.auto import tqdm

    with rasterio.open(classmap.path) as src:
        for i, geometry in enumerate(tqdm(local.geometry, unit="zone", desc="zonal areas",
                                          disable=progress_disabled(progress))):
            if geometry is not None and not geometry.is_empty:
                sums[i], counts[i] = _zone_areas(src, classmap, geometry, block)
    result = gpd.GeoDataFrame(zones.copy())
    result["zone_ha"] = geometry_areas(local.geometry, classmap.crs, classmap.bounds) / HECTARE
    result["pixels"] = counts
    total = sums.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, 100 * sums / total, np.nan)
    for k, name in enumerate(names):
        result[f"{name}_ha"] = sums[:, k] / HECTARE
        result[f"{name}_pct"] = share[:, k]
    geometry_column = result.geometry.name
    return result[[c for c in result.columns if c != geometry_column] + [geometry_column]]


def zonal_to_file(path: str | os.PathLike[str], zones: "gpd.GeoDataFrame | str",
                  output: str | os.PathLike[str], *, layer: str | None = None,
                  overwrite: bool = False, progress: bool = False) -> "pd.DataFrame":
    """Write :func:`zonal_areas` as a CSV table (no geometry) or a GeoPackage layer.

    Args:
        path: the class map.
        zones: the zones, or a vector file to read them from (``FILE[:LAYER]``, read
            after the output is checked).
        output: ``.csv`` or ``.gpkg`` (by extension).
        layer: GeoPackage layer name (default: the output's stem).
        overwrite: replace an existing output.
        progress: show a progress bar over the zones.

    Returns:
        The table written.

    Raises:
        OutputError: another extension, a missing directory, or the output is the map.
        OutputExistsError: the output exists and ``overwrite`` is false (checked first).
        InputFileError: see :func:`zonal_areas` and
            :func:`~discomkd_geo.inference.vector_input.read_layer`.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".csv", ".gpkg"):
        raise OutputError(output, "write the table as .csv or .gpkg")
    check_outputs({"table": output}, overwrite, inputs={"map": path})
    if isinstance(zones, str | os.PathLike):
        zones = read_layer(zones)
    table = zonal_areas(path, zones, progress=progress)
    if suffix == ".gpkg":
        write_layer(table, output, layer or output.stem, overwrite)
        return table
    frame = table.drop(columns=table.geometry.name)
    with atomic_path(output, overwrite=overwrite) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    return frame
