"""Vector files in: ``FILE[:LAYER]`` names and the layer they point to, with one-line errors.

Used for areas of interest (``predict --aoi``) and zones (``discomkd-geo zonal``). Any
format geopandas reads (GeoPackage, GeoJSON, shapefile, FlatGeobuf, ...), any CRS, local
or through GDAL's virtual file systems (``/vsicurl/``, ``/vsizip/``).
"""

import os
import re
from typing import TYPE_CHECKING

from ..errors import InputFileError

if TYPE_CHECKING:
    import geopandas as gpd

#: A Windows drive (``C:``) is not a ``FILE:LAYER`` separator.
_DRIVE = re.compile(r"^[A-Za-z]$")


def split_layer(spec: str | os.PathLike[str]) -> tuple[str, str | None]:
    r"""``FILE[:LAYER]`` as ``(file, layer)``; ``layer`` is ``None`` when none is named.

    A path that exists as given is a file (names may contain ``:``); a part after the
    last ``:`` holding a slash or backslash belongs to the path (``C:\\data\\zones.gpkg``,
    ``/vsicurl/https://host/zones.gpkg``).
    """
    spec = os.fspath(spec)
    if os.path.exists(spec):
        return spec, None
    path, sep, layer = spec.rpartition(":")
    if not sep or not path or _DRIVE.match(path) or "/" in layer or "\\" in layer:
        return spec, None
    return path, layer


def _is_virtual(path: str) -> bool:
    return path.startswith("/vsi") or "://" in path


def read_layer(spec: str | os.PathLike[str], layer: str | None = None) -> "gpd.GeoDataFrame":
    """Read one layer of a vector file (``FILE[:LAYER]``, or ``layer`` given apart).

    Args:
        spec: the file, optionally followed by ``:LAYER``.
        layer: the layer (overrides one in ``spec``). Needed when the file has several.

    Raises:
        InputFileError: missing or unreadable file, missing layer, several layers and none
            named, an empty layer, or no CRS.
    """
    import geopandas as gpd
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    path, named = split_layer(spec)
    layer = layer or named
    if not _is_virtual(path) and not os.path.exists(path):
        raise InputFileError(path, "no such file")
    try:
        # Spatial layers only: QGIS's layer_styles table (and other attribute tables) is no
        # candidate.
        layers = [str(name) for name, geometry in pyogrio.list_layers(path) if geometry]
    except (DataSourceError, DataLayerError) as err:
        raise InputFileError(path, f"is not a vector file geopandas reads "
                                   f"({str(err).splitlines()[0]})") from err
    if layer is None and len(layers) > 1:
        raise InputFileError(path, f"has {len(layers)} layers ({', '.join(layers)}); name one "
                                   f"as {path}:LAYER")
    if layer is not None and layer not in layers:
        raise InputFileError(path, f"has no layer {layer!r} (layers: {', '.join(layers)})")
    layer = layer or layers[0]
    try:
        frame = gpd.read_file(path, layer=layer, engine="pyogrio")
    except (DataSourceError, DataLayerError) as err:
        raise InputFileError(path, f"cannot read layer {layer!r} "
                                   f"({str(err).splitlines()[0]})") from err
    geometries = frame.geometry
    if frame.empty or geometries.isna().all() or geometries.is_empty.all():
        raise InputFileError(path, f"layer {layer!r} is empty (no geometry)")
    if frame.crs is None:
        raise InputFileError(path, f"layer {layer!r} has no CRS; assign one (ogr2ogr -a_srs)")
    return frame
