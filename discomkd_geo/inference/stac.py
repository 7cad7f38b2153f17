"""STAC in and out: an Item beside every map, and local Items as inputs to ``predict``.

Beside the inference writers (io -> tiling -> engine -> writers, stac). :func:`map_item`
describes a finished land-cover map as a STAC Item (pystac) with the projection, raster and
classification extensions (class values, names and colours) and ``derived_from`` links to
the scenes it was mapped from, so catalogue tools (QGIS, stac-browser, pystac-client
pipelines) pick it up as is. :func:`read_item` goes the other way: it finds the Sentinel-1
and Sentinel-2 bands among a local Item's assets, so ``predict --stac ITEM.json`` maps a
catalogued scene without the user naming files and bands.
"""

import datetime as dt
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import CLASS_NODATA, MS, S2_BANDS, SAR
from ..errors import InputFileError
from .io import S2_ALIASES, Grid
from .remote import is_remote
from .writers import hex_color

#: Polarisations a Sentinel-1 asset may hold.
POLARISATIONS = ("VV", "VH", "HH", "HV")


def item_path(output: str | os.PathLike[str]) -> Path:
    """Where the STAC Item of a map goes: ``<stem>.stac.json`` beside it."""
    return Path(output).with_suffix(".stac.json")


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ItemInputs:
    """The scenes a STAC Item offers, per modality.

    Attributes:
        item: the Item file.
        paths: files per modality (``ms``, ``sar``), in the Item's asset order.
        bands: band names per modality, in raster order across its files.
        datetime: the Item's acquisition time (``datetime`` or ``start_datetime``).
        scl: the Sentinel-2 Level-2A scene classification asset (key ``scl``), if any:
            the MS mask of ``mask='scl'`` (:mod:`.masks`), and ``predict --stac``'s MS mask
            by default.
    """

    item: str
    paths: dict[str, list[str]]
    bands: dict[str, list[str]]
    datetime: dt.datetime | None
    scl: str | None = None


def _band_name(name: str) -> str:
    """A Sentinel band name in our spelling: ``B2``/``b02``/``red`` -> ``B02``, ``vv`` -> ``VV``."""
    upper = name.strip().upper()
    if upper in POLARISATIONS or upper in S2_BANDS:
        return upper
    if match := re.fullmatch(r"B0?(\d{1,2}A?)", upper):
        padded = match.group(1).zfill(2) if match.group(1)[-1] != "A" else match.group(1)
        if f"B{padded}" in S2_BANDS:
            return f"B{padded}"
    # STAC common names (Earth Search names assets by them), upper-cased in S2_ALIASES.
    return S2_ALIASES.get(upper, name)


def _asset_bands(key: str, asset: Mapping[str, Any]) -> list[str]:
    """Band names of one asset: ``bands`` (STAC 1.1), ``eo:bands``, polarisations or its key."""
    for field in ("bands", "eo:bands", "raster:bands"):
        listed = asset.get(field) or []
        names = [b.get("name") or b.get("eo:common_name") or b.get("common_name")
                 for b in listed]
        if listed and all(names):
            return [_band_name(n) for n in names]
    if polarisations := asset.get("sar:polarizations"):
        return [str(p).upper() for p in polarisations]
    return [_band_name(key)]


def _modality(bands: Sequence[str]) -> str | None:
    """``sar`` for polarisations, ``ms`` for Sentinel-2 bands, ``None`` for anything else."""
    if all(b in POLARISATIONS for b in bands):
        return SAR
    if all(b in S2_BANDS for b in bands):
        return MS
    return None


def _is_raster(asset: Mapping[str, Any]) -> bool:
    """A data asset GDAL can read (not a thumbnail, metadata file or style)."""
    roles = asset.get("roles")
    media = str(asset.get("type", "image/"))
    return (not roles or "data" in roles) and media.startswith("image/")


def read_item(path: str | os.PathLike[str]) -> ItemInputs:
    """The Sentinel-1 and Sentinel-2 scenes of a local STAC Item (JSON file).

    An asset counts as SAR when its bands are polarisations (``sar:polarizations``,
    band names or an asset key such as ``vv``), as MS when they are Sentinel-2 bands
    (``B04``, ``B4`` or a common name such as ``red``). Relative hrefs are resolved
    against the Item's folder; ``https://`` and ``s3://`` hrefs are kept and read
    remotely (:mod:`.remote`).

    Raises:
        InputFileError: the file is not a STAC Item, or holds no Sentinel asset.
    """
    import pystac

    path = os.fspath(path)
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("type") != "Feature":
            raise ValueError("expected a GeoJSON Feature")
        item = pystac.Item.from_dict(data)
    except (OSError, ValueError, KeyError, pystac.STACError) as err:
        raise InputFileError(path, f"not a readable STAC Item ({err})") from err
    folder = os.path.dirname(os.path.abspath(path))
    paths: dict[str, list[str]] = {}
    bands: dict[str, list[str]] = {}
    scl = None
    for key, asset in item.assets.items():
        fields = {"type": asset.media_type, "roles": asset.roles, **asset.extra_fields}
        if not _is_raster(fields):
            continue
        href = asset.href
        if not is_remote(href):  # URLs stay as given (normpath would fold their "//")
            href = os.path.normpath(href if os.path.isabs(href) else os.path.join(folder, href))
        if key.lower() == "scl":  # Earth Search's and Planetary Computer's L2A key
            scl = href
            continue
        names = _asset_bands(key, fields)
        modality = _modality(names)
        if modality is None:
            continue
        paths.setdefault(modality, []).append(href)
        bands.setdefault(modality, []).extend(names)
    if not paths:
        raise InputFileError(path, f"no Sentinel-1 or Sentinel-2 asset among "
                                   f"{sorted(item.assets)}; name their bands (eo:bands, "
                                   "bands or sar:polarizations)")
    when = item.datetime or item.common_metadata.start_datetime
    return ItemInputs(path, paths, bands, when, scl)


# ----------------------------------------------------------------------------- writing
def _footprint(grid: Grid) -> tuple[list[float], dict[str, Any]]:
    """Longitude/latitude bounding box and polygon of the grid (STAC wants WGS 84)."""
    from rasterio.warp import transform_bounds

    west, south, east, north = transform_bounds(grid.crs, "EPSG:4326", *_bounds(grid),
                                                densify_pts=21)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return [west, south, east, north], {"type": "Polygon", "coordinates": [ring]}


def _bounds(grid: Grid) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of the grid in its CRS."""
    from rasterio.transform import array_bounds

    return array_bounds(grid.height, grid.width, grid.transform)


def map_item(output: str | os.PathLike[str], grid: Grid, classes: Sequence[str],
             colors: Sequence[Sequence[int]],
             inputs: Mapping[str, Sequence[str | os.PathLike[str]]],
             extras: Mapping[str, str | os.PathLike[str]] | None = None,
             source: ItemInputs | None = None,
             created: dt.datetime | None = None,
             masks: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The STAC Item (as a JSON-able dict) of a land-cover map written at ``output``.

    Args:
        output: the class map (asset ``landcover``, with the classification extension).
        grid: its pixel grid and CRS (projection extension).
        classes: class names by code.
        colors: RGB colour per class.
        inputs: the files each modality was read from (``derived_from`` links; none
            for an in-memory array).
        extras: other files written beside the map, by asset key (``probabilities``,
            ``confidence``, ``style``, ``legend``, ``source``: which evidence decided
            each pixel).
        source: the STAC Item the scenes came from: linked, and its acquisition time is
            the map's.
        created: production time (default: now, UTC).
        masks: per modality, the mask its unavailable pixels came from
            (:func:`.masks.mask_records`): listed under the property ``discomkd:masks``,
            and a mask file is linked (``derived_from``).

    Returns:
        The Item's dict; asset hrefs are relative to the Item's folder.
    """
    import pystac
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension

    output = Path(output)
    folder = item_path(output).parent.resolve()
    created = created or dt.datetime.now(dt.UTC)
    bbox, geometry = _footprint(grid)
    when = source.datetime if source is not None and source.datetime else created
    item = pystac.Item(id=output.stem, geometry=geometry, bbox=bbox, datetime=when,
                       properties={"created": pystac.utils.datetime_to_str(created),
                                   "description": "land cover mapped by discomkd_geo from "
                                                  + ", ".join(inputs)})
    epsg = grid.crs.to_epsg()
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=f"EPSG:{epsg}" if epsg else None, wkt2=None if epsg else grid.crs.to_wkt(),
        shape=[grid.height, grid.width], transform=list(grid.transform)[:6],
        bbox=list(_bounds(grid)))

    def relative(path: str | os.PathLike[str]) -> str:
        return os.path.relpath(Path(path).resolve(), folder).replace(os.sep, "/")

    landcover = pystac.Asset(relative(output), title="land cover classes",
                             media_type=pystac.MediaType.COG, roles=["data"])
    item.add_asset("landcover", landcover)
    RasterExtension.ext(landcover, add_if_missing=True).bands = [RasterBand.create(
        nodata=CLASS_NODATA, data_type=DataType.UINT8, sampling="area",
        spatial_resolution=abs(grid.transform.a))]
    ClassificationExtension.ext(landcover, add_if_missing=True).classes = [
        Classification.create(value=code, name=re.sub(r"[^0-9A-Za-z_-]", "_", name),
                              description=name, color_hint=hex_color(rgb)[1:].upper())
        for code, (name, rgb) in enumerate(zip(classes, colors, strict=True))]
    media = {"style": "application/xml", "legend": pystac.MediaType.JSON}
    roles = {"style": ["style"], "legend": ["metadata"]}
    titles = {"source": "evidence that decided each pixel (0 none, 1 MS, 2 SAR, 3 fused)"}
    for key, path in (extras or {}).items():
        item.add_asset(key, pystac.Asset(relative(path), title=titles.get(key),
                                         media_type=media.get(key, pystac.MediaType.COG),
                                         roles=roles.get(key, ["data"])))
    for modality, paths in inputs.items():
        for i, path in enumerate(paths):
            title = f"{modality} scene" + (f" file {i + 1}" if len(paths) > 1 else "")
            href = path if is_remote(path) else Path(path).resolve().as_uri()
            item.add_link(pystac.Link("derived_from", href,
                                      media_type=pystac.MediaType.GEOTIFF, title=title))
    for modality, mask in (masks or {}).items():
        item.properties.setdefault("discomkd:masks", {})[modality] = dict(mask)
        if mask["kind"] != "s2cloudless":  # a detector's source is the scene, linked above
            href = str(mask["source"])
            item.add_link(pystac.Link(
                "derived_from", href if is_remote(href) else Path(href).resolve().as_uri(),
                media_type=pystac.MediaType.GEOTIFF,
                title=f"{modality} mask ({mask['kind']}: {mask['meaning']})"))
    if source is not None:
        item.add_link(pystac.Link("derived_from", Path(source.item).resolve().as_uri(),
                                  media_type=pystac.MediaType.GEOJSON, title="input STAC Item"))
    return item.to_dict(include_self_link=False, transform_hrefs=False)
