"""Reference data in: labelled points read against a map, and labels from a truth raster.

Between :mod:`.sampling` (which writes the points to label) and :mod:`.assess` (which
estimates from them). Points may be in any vector format geopandas reads and any CRS
(reprojected onto the map's); labels are class names (any case) or class codes. Each
point is placed in the map pixel it falls in; which points :mod:`.assess` can use, and
why the others are left out, is decided there.
"""

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputFileError, SettingsError
from ..inference.classmap import ClassMap, read_class_map
from ..inference.vector_input import read_layer
from .strata import pixels_of, values_at

#: Label of a point not labelled (yet).
UNLABELLED = -1


@dataclass(frozen=True)
class ReferencePoints:
    """Labelled points on a map's grid.

    Attributes:
        path: the reference file (``FILE[:LAYER]``), for messages.
        ids: each point's ``point_id`` (else its position, from 1), for messages.
        rows: the map row each point falls in (may lie off the map).
        cols: the map column.
        labels: the reference class code, :data:`UNLABELLED` when empty.
        strata: the ``stratum`` column (class codes the sample was drawn from; ``-1``
            where empty), or ``None`` if the file has none (not a stratified sample).
        stratum_ha: the ``stratum_ha`` column (the strata's areas where the sample was
            drawn), or ``None``.
    """

    path: str
    ids: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    labels: np.ndarray
    strata: np.ndarray | None
    stratum_ha: np.ndarray | None


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def parse_labels(values: Sequence[Any], classes: Sequence[str], path: str,
                 column: str) -> np.ndarray:
    """Class codes of labels (names in any case, or codes); :data:`UNLABELLED` if empty.

    Raises:
        InputFileError: a label that is neither a class name nor a class code, named.
    """
    by_name = {name.casefold(): code for code, name in enumerate(classes)}
    codes: dict[Any, int] = {}
    for value in dict.fromkeys(values):  # each distinct label once
        if _is_empty(value):
            codes[value] = UNLABELLED
            continue
        text = str(value).strip()
        if isinstance(value, float) and value.is_integer():
            text = str(int(value))
        if text.casefold() in by_name:
            codes[value] = by_name[text.casefold()]
        elif text.lstrip("-").isdigit() and 0 <= int(text) < len(classes):
            codes[value] = int(text)
        else:
            raise InputFileError(path, f"label {text!r} in column {column!r} is not a class "
                                       f"of the map (classes: {', '.join(classes)}; or their "
                                       f"codes 0-{len(classes) - 1})")
    return np.array([codes[value] for value in values], dtype=np.int64)


def read_reference(spec: str | os.PathLike[str], classmap: ClassMap,
                   label_column: str = "reference") -> ReferencePoints:
    """Read labelled points (``FILE[:LAYER]``, any CRS) onto a map's grid.

    Raises:
        InputFileError: an unreadable or empty layer, geometries other than points, or
            a label that is not a class of the map.
        SettingsError: no column ``label_column``.
    """
    spec = os.fspath(spec)
    frame = read_layer(spec)
    kinds = set(frame.geom_type.dropna()) - {"Point"}
    if kinds:
        raise InputFileError(spec, f"holds {sorted(kinds)[0]} geometries; reference data are "
                                   "points (one per sample unit)")
    if label_column not in frame.columns:
        columns = [c for c in frame.columns if c != frame.geometry.name]
        raise SettingsError("label_column", f"{spec} has no column {label_column!r} "
                                            f"(columns: {', '.join(columns) or 'none'})")
    points = frame.geometry.to_crs(classmap.crs)
    placed = (~(points.isna() | points.is_empty)).to_numpy()
    xs, ys = np.zeros(len(frame)), np.zeros(len(frame))
    xs[placed], ys[placed] = points[placed].x.to_numpy(), points[placed].y.to_numpy()
    rows, cols = pixels_of(classmap, xs, ys)
    rows[~placed] = -1  # a feature without geometry counts as off the map
    ids = (frame["point_id"].to_numpy() if "point_id" in frame.columns
           else np.arange(1, len(frame) + 1))

    def column(name: str) -> np.ndarray | None:
        """A numeric column (empty cells: ``NaN``), or ``None`` if there is none."""
        import pandas as pd

        return (pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
                if name in frame.columns else None)

    strata = column("stratum")
    return ReferencePoints(
        spec, ids, rows, cols,
        parse_labels(frame[label_column].tolist(), classmap.classes, spec, label_column),
        None if strata is None else np.nan_to_num(strata, nan=-1).astype(np.int64),
        column("stratum_ha"))


def raster_labels(path: str | os.PathLike[str], xs: np.ndarray, ys: np.ndarray, crs: Any,
                  classes: Sequence[str]) -> list[str | None]:
    """The class name a truth raster gives each point (``None`` off it or on nodata).

    Args:
        path: a class raster (classes named in its tags, like the map's), any CRS.
        xs: the points' x in ``crs``.
        ys: their y.
        crs: the points' CRS.
        classes: the map's classes: the truth's classes must be among them.

    Raises:
        InputFileError: the truth is not a class map, or has a class the map has not.
    """
    from rasterio.warp import transform

    truth = read_class_map(path)
    unknown = [name for name in truth.classes if name not in classes]
    if unknown:
        raise InputFileError(truth.path, f"has class {unknown[0]!r}, which the map has not "
                                         f"(map classes: {', '.join(classes)})")
    if len(xs) == 0:
        return []
    tx, ty = transform(crs, truth.crs, list(map(float, xs)), list(map(float, ys)))
    rows, cols = pixels_of(truth, np.asarray(tx), np.asarray(ty))
    codes = values_at(truth.path, rows, cols)
    stray = codes[(codes >= len(truth.classes)) & (codes != truth.nodata)]
    if stray.size:
        raise InputFileError(truth.path, f"holds code {int(stray.min())}, which has no class")
    return [None if code < 0 or code == truth.nodata else truth.classes[code]
            for code in codes.tolist()]
