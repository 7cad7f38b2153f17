"""Polygons from a land-cover map: one feature per connected region, with class and area.

A step after the writers in a GIS chain (``discomkd-geo vectorize``, ``predict
--vector``). Regions are 4-connected groups of pixels of one class
(:func:`rasterio.features.shapes`); a minimum mapping unit first merges smaller regions
into their largest mapped neighbour (:func:`rasterio.features.sieve`, also 4-connected).
Every feature carries ``class_code``, ``class_name``, ``color`` (``#rrggbb``),
``area_m2`` and ``area_ha``; geometries are valid (:func:`shapely.make_valid` where
GDAL's rings are not) and in the map's CRS. Areas follow
:mod:`discomkd_geo.inference.classmap`: planar on a projected CRS, on a local Lambert
azimuthal equal-area projection on a geographic one. The GeoPackage is written to a
temporary sibling and renamed; a QGIS style (``<stem>.qml``, categorised by class with the
map's colours) goes beside it and into the GeoPackage's ``layer_styles`` table. A
Shapefile's parts (``.shx``, ``.dbf``, ...) are written beside a temporary ``.shp`` and
renamed before it.

The whole map is held in memory (one byte per pixel, plus GDAL's polygon work).
"""

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

import numpy as np
import rasterio
from rasterio.features import shapes, sieve

from ..errors import InputFileError, OutputError
from ..files import atomic_path, check_outputs, check_writable
from .classmap import HECTARE, ClassMap, geometry_areas, read_class_map, row_areas

if TYPE_CHECKING:
    import geopandas as gpd

#: The files of a Shapefile besides the ``.shp`` (GDAL's), renamed with it.
SHAPEFILE_PARTS = (".shx", ".dbf", ".prj", ".cpg")


def sieve_size(classmap: ClassMap, mmu: float) -> int:
    """Pixels a region needs to cover ``mmu`` m2 (on the map's smallest pixels)."""
    return max(1, math.ceil(mmu / float(row_areas(classmap).min()) - 1e-9))


def check_mmu(classmap: ClassMap, mmu: float) -> int:
    """The sieve size of ``mmu`` on the map's grid (also a map yet to be made).

    Raises:
        InputFileError: the whole grid is no larger than ``mmu`` (named ``classmap.path``).
    """
    size = sieve_size(classmap, mmu)
    pixels = classmap.width * classmap.height
    if size >= pixels:
        raise InputFileError(classmap.path, f"is smaller ({pixels:,} px) than the minimum "
                                            f"mapping unit ({size:,} px)")
    return size


def valid_polygons(geometry: Any) -> Any:
    """``geometry`` itself if valid, else its polygonal part made valid.

    A self-intersecting ring (a bow-tie) becomes its two lobes: its signed area as drawn
    is their difference (0 for a symmetric one).
    """
    import shapely

    if geometry.is_valid:
        return geometry
    fixed = shapely.make_valid(geometry)
    if fixed.geom_type == "GeometryCollection":
        fixed = shapely.union_all([g for g in fixed.geoms if g.geom_type.endswith("Polygon")])
    return fixed


def vectorize(path: str | os.PathLike[str], mmu: float | None = None) -> "gpd.GeoDataFrame":
    """Polygons of the connected regions of a class map (nodata left out).

    Args:
        path: a single-band class map (as ``predict`` writes, or any paletted uint8 map).
        mmu: minimum mapping unit in m2: smaller regions are first merged into their
            largest mapped neighbour; regions with no mapped neighbour (islands in nodata)
            are dropped if still smaller.

    Returns:
        A GeoDataFrame in the map's CRS with ``class_code``, ``class_name``, ``color``,
        ``area_m2`` and ``area_ha`` per region, ordered by position in the map.

    Raises:
        InputFileError: not a class map, no CRS, no mapped pixel, a code without a class,
            or no region as large as ``mmu``.
    """
    import geopandas as gpd
    from shapely.geometry import shape

    classmap = read_class_map(path)
    with rasterio.open(classmap.path) as src:
        codes = src.read(1)
    mapped = codes != classmap.nodata
    if not mapped.any():
        raise InputFileError(classmap.path, "holds no mapped pixel (all nodata)")
    known = set(range(len(classmap.classes)))
    if unknown := sorted(set(np.unique(codes[mapped]).tolist()) - known):
        raise InputFileError(classmap.path, f"holds code {unknown[0]}, which has no class "
                                            f"(classes: {len(classmap.classes)})")
    if mmu:
        codes = sieve(codes, size=check_mmu(classmap, mmu), mask=mapped, connectivity=4)
    records = [(int(value), valid_polygons(shape(geometry))) for geometry, value in
               shapes(codes, mask=mapped, connectivity=4, transform=classmap.transform)]
    frame = gpd.GeoDataFrame({"class_code": np.array([c for c, _ in records], dtype=np.int32)},
                             geometry=[g for _, g in records], crs=classmap.crs)
    frame["class_name"] = [classmap.classes[c] for c in frame["class_code"]]
    frame["color"] = [classmap.colors[c] for c in frame["class_code"]]
    frame["area_m2"] = geometry_areas(frame.geometry, classmap.crs, classmap.bounds)
    frame["area_ha"] = frame["area_m2"] / HECTARE
    if mmu:
        frame = frame[frame["area_m2"] >= mmu * (1 - 1e-9)].reset_index(drop=True)
        if frame.empty:
            raise InputFileError(classmap.path, "has no region as large as the minimum "
                                                "mapping unit")
    return frame[["class_code", "class_name", "color", "area_m2", "area_ha", "geometry"]]


def vector_style(classes: Sequence[str], colors: Sequence[str]) -> str:
    """A QGIS ``.qml`` categorised renderer on ``class_code`` with the map's colours."""
    def rgba(color: str) -> str:
        return ",".join(str(int(color[i:i + 2], 16)) for i in (1, 3, 5)) + ",255"

    categories = "\n".join(
        f'      <category value="{code}" label={quoteattr(name)} symbol="{code}" render="true"/>'
        for code, name in enumerate(classes))
    props = {"color": "", "outline_color": "35,35,35,255", "outline_style": "solid",
             "outline_width": "0.1", "outline_width_unit": "MM", "style": "solid"}
    symbols = []
    for code, color in enumerate(colors):
        values = {**props, "color": rgba(color)}
        options = "\n".join(f'            <Option name="{k}" type="QString" value="{v}"/>'
                            for k, v in values.items())
        legacy = "\n".join(f'          <prop k="{k}" v="{v}"/>' for k, v in values.items())
        symbols.append(
            f'      <symbol type="fill" name="{code}" alpha="1" clip_to_extent="1" '
            f'force_rhr="0">\n'
            f'        <layer class="SimpleFill" enabled="1" locked="0" pass="0">\n'
            f'          <Option type="Map">\n{options}\n          </Option>\n{legacy}\n'
            f"        </layer>\n      </symbol>")
    symbols_xml = "\n".join(symbols)
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28" styleCategories="Symbology">
  <renderer-v2 type="categorizedSymbol" attr="class_code" symbollevels="0"
               enableorderby="0" forceraster="0">
    <categories>
{categories}
    </categories>
    <symbols>
{symbols_xml}
    </symbols>
  </renderer-v2>
</qgis>
"""


def vectorize_to_file(path: str | os.PathLike[str], output: str | os.PathLike[str], *,
                      mmu: float | None = None, layer: str | None = None,
                      overwrite: bool = False) -> "gpd.GeoDataFrame":
    """Vectorize a class map into a GeoPackage layer, with its QGIS style beside it.

    Args:
        path: the class map.
        output: the ``.gpkg`` to write; ``<stem>.qml`` goes beside it.
        mmu: minimum mapping unit in m2 (see :func:`vectorize`).
        layer: layer name (default: the output's stem).
        overwrite: replace existing outputs.

    Returns:
        The features written.

    Raises:
        OutputExistsError: an output exists and ``overwrite`` is false (checked first).
        OutputError: an output's directory is missing, or an output is the map.
        InputFileError: see :func:`vectorize`.
    """
    output = Path(output)
    style = output.with_suffix(".qml")
    vector_driver(output)
    check_outputs({"polygons": output, "QGIS style": style}, overwrite, inputs={"map": path})
    frame = vectorize(path, mmu)
    classmap = read_class_map(path)
    qml = vector_style(classmap.classes, classmap.colors)
    write_layer(frame, output, layer or output.stem, overwrite, style=qml)
    with atomic_path(style, overwrite=overwrite) as tmp:
        tmp.write_text(qml)
    return frame


def write_layer(frame: "gpd.GeoDataFrame", output: str | os.PathLike[str], layer: str,
                overwrite: bool, style: str | None = None) -> None:
    """Write one layer to a new vector file (driver by extension), atomically.

    A GeoPackage also stores ``style`` (QML) as the layer's default style in its
    ``layer_styles`` table, where QGIS looks first when it opens the layer.
    """
    driver = vector_driver(output)
    if driver == "ESRI Shapefile":
        _write_shapefile(frame, Path(output), overwrite)
        return
    with atomic_path(output, overwrite=overwrite) as tmp:
        frame.to_file(tmp, layer=layer, driver=driver)
        if style is not None and driver == "GPKG":
            _embed_style(tmp, layer, style)


def _write_shapefile(frame: "gpd.GeoDataFrame", output: Path, overwrite: bool) -> None:
    """A Shapefile (one layer, named after the file): its parts renamed before the ``.shp``.

    Each rename is atomic, and a reader looks for the ``.shp`` first: it never finds one
    without its parts. A failed write leaves none of them.
    """
    parts = {suffix: output.with_suffix(suffix) for suffix in SHAPEFILE_PARTS}
    for part in parts.values():
        check_writable(part, overwrite)
    with atomic_path(output, overwrite=overwrite) as tmp:
        try:
            frame.to_file(tmp, driver="ESRI Shapefile", encoding="UTF-8")
            for suffix, part in parts.items():
                if tmp.with_suffix(suffix).exists():
                    os.replace(tmp.with_suffix(suffix), part)
        finally:
            for suffix in SHAPEFILE_PARTS:
                tmp.with_suffix(suffix).unlink(missing_ok=True)


def _embed_style(path: Path, layer: str, qml: str) -> None:
    """Add ``qml`` as ``layer``'s default QGIS style (the table QGIS itself writes)."""
    import sqlite3

    with sqlite3.connect(path) as db:
        [column] = db.execute("SELECT column_name FROM gpkg_geometry_columns WHERE "
                              "table_name = ?", (layer,)).fetchone()
        db.execute("CREATE TABLE layer_styles (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                   "f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name "
                   "TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML "
                   "TEXT, styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner "
                   "TEXT(30), ui TEXT(30), update_time DATETIME DEFAULT CURRENT_TIMESTAMP)")
        db.execute("INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                   "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, "
                   "description, owner) VALUES ('', '', ?, ?, ?, ?, '', 1, "
                   "'land-cover classes (discomkd_geo)', '')", (layer, column, layer, qml))
        db.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier) "
                   "VALUES ('layer_styles', 'attributes', 'layer_styles')")
    db.close()


def vector_driver(output: str | os.PathLike[str]) -> str:
    """The OGR driver of a vector output, by extension.

    Raises:
        OutputError: an extension other than ``.gpkg``, ``.geojson``, ``.fgb``, ``.shp``.
    """
    suffix = Path(output).suffix.lower()
    drivers = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".fgb": "FlatGeobuf",
               ".shp": "ESRI Shapefile"}
    if suffix not in drivers:
        raise OutputError(output, f"unknown vector format {suffix or '(no suffix)'}; use "
                                  ".gpkg, .geojson, .fgb or .shp")
    return drivers[suffix]
