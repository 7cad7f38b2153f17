"""Accuracy and error-adjusted areas of a map from labelled reference points.

The last step of the assessment chain (map -> sample -> label -> **assess**;
``discomkd-geo assess``): reads the points (:mod:`.reference`), decides which can be used
and why the others cannot, recognises the sample's design, builds the error matrix and
applies the estimators of :mod:`.estimators` over the region (the whole map or an area
of interest) and, optionally, per zone. :mod:`.report` writes the result.

* **Left out, counted, never dropped silently**: points off the map (or without
  geometry), outside the area of interest, on the map's nodata, and without a label, in
  that order of precedence.
* **Strata weights** ``W_i`` are the classes' shares of the mapped area of the region
  (or zone), as ``discomkd-geo zonal`` measures it (:mod:`.strata`).
* **Design**: points with a ``stratum`` column (as ``discomkd-geo sample`` writes) are a
  stratified random sample of this map, provided every stratum is the map's class under
  its point (else the sample was drawn from another map and is refused) and the region
  lies within the one sampled (``stratum_ha``, the strata's areas where the points were
  drawn, is at least their area here; else part of the region was never sampled).
  Points without strata are a simple random (or systematic) sample, post-stratified by
  the map's classes; the estimators are the same (Card 1982).
* A stratum with mapped area and fewer than two labelled points is refused: its
  variance, hence every interval it enters, cannot be estimated.
* **Intervals**: 95 %, of the kind named (:data:`.estimators.INTERVALS`): ``score``
  by default, ``wald`` for the paper's ``estimate +- 1.96 SE``.
* A zone's figures are those of the points whose pixel centre lies in the zone (a
  domain of the sample) weighted by the zone's own class areas. A stratum with fewer
  than two points in a zone (a sliver of a class, typically) takes the whole region's
  points instead, and the zone's figures name it under ``borrowed_strata``.
"""

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import InputFileError, SettingsError
from ..inference.classmap import ClassMap, read_class_map
from ..inference.vector_input import read_layer
from .estimators import DEFAULT_INTERVAL, INTERVALS, Bounds, Estimates, stratified_estimates
from .reference import UNLABELLED, ReferencePoints, read_reference
from .strata import Region, centres_of, check_codes, class_areas, region_of, values_at

#: Why points are left out, in order of precedence.
LEFT_OUT = ("outside_map", "outside_area", "nodata", "unlabelled")

STRATIFIED = "stratified random, strata: the map's classes"
POST_STRATIFIED = "simple random, post-stratified by the map's classes"


def _number(value: Any) -> float | None:
    """A float for JSON: ``None`` for ``NaN``."""
    value = float(value)
    return None if math.isnan(value) else value


def _pair(low: Any, high: Any) -> list[float | None] | None:
    pair = [_number(low), _number(high)]
    return None if None in pair else pair


@dataclass(frozen=True)
class RegionAssessment:
    """Accuracy and areas over one region: the whole map, the area of interest or a zone.

    Attributes:
        name: the zone's name (``None`` for the assessment's region).
        classes: class name by code.
        mapped_ha: pixel-counted area of each class in the region.
        estimates: the estimates, ``None`` when they cannot be made (see ``problem``).
        problem: why there are no estimates, or ``None``.
        borrowed: codes of the strata whose error-matrix rows are the whole region's
            points (a zone's strata with fewer than 2 points of their own).
        points: labelled points of the region used.
        interval: the kind of the 95 % intervals (a key of
            :data:`.estimators.INTERVALS`).
    """

    name: str | None
    classes: tuple[str, ...]
    mapped_ha: np.ndarray
    estimates: Estimates | None
    problem: str | None = None
    borrowed: tuple[int, ...] = ()
    points: int = 0
    interval: str = DEFAULT_INTERVAL

    @cached_property
    def bounds(self) -> dict[str, Bounds]:
        """The 95 % bounds of each figure, computed once.

        Keys ``overall``, ``users``, ``producers`` and ``area`` (shares of the mapped
        area). Every writer of a report asks for them, and the score kind's producer's
        accuracies take a nested bisection.
        """
        if self.estimates is None:
            return {}
        kind = INTERVALS[self.interval]
        return {figure: getattr(kind, figure)(self.estimates)
                for figure in ("overall", "users", "producers", "area")}

    def to_dict(self) -> dict[str, Any]:
        """The figures of the JSON output (see :func:`assess`); ``NaN`` as ``None``."""
        total = float(self.mapped_ha.sum())
        result: dict[str, Any] = {"mapped_area_ha": total, "points_used": self.points}
        if self.problem is not None:
            result["problem"] = self.problem
        if self.borrowed:
            result["borrowed_strata"] = [self.classes[code] for code in self.borrowed]
        e = self.estimates
        if e is None:
            result["classes"] = [{"code": code, "name": name, "mapped_ha": float(ha)}
                                 for code, (name, ha) in
                                 enumerate(zip(self.classes, self.mapped_ha, strict=True))]
            return result
        overall, users, producers, share = (self.bounds[figure] for figure in (
            "overall", "users", "producers", "area"))
        area = (share[0] * total, share[1] * total)
        result.update({"overall_accuracy": _number(e.overall),
                       "overall_accuracy_se": _number(e.overall_se),
                       "overall_accuracy_ci95": _pair(*overall), "classes": []})
        for code, name in enumerate(self.classes):
            result["classes"].append({
                "code": code, "name": name, "mapped_ha": float(self.mapped_ha[code]),
                "mapped_proportion": _number(e.weights[code]),
                "points": int(e.counts[code].sum()),
                "reference_points": int(e.counts[:, code].sum()),
                "estimated_ha": _number(e.area[code] * total),
                "estimated_ha_se": _number(e.area_se[code] * total),
                "estimated_ha_ci95": _pair(area[0][code], area[1][code]),
                "proportion": _number(e.area[code]),
                "proportion_se": _number(e.area_se[code]),
                "proportion_ci95": _pair(share[0][code], share[1][code]),
                "users_accuracy": _number(e.users[code]),
                "users_accuracy_se": _number(e.users_se[code]),
                "users_accuracy_ci95": _pair(users[0][code], users[1][code]),
                "producers_accuracy": _number(e.producers[code]),
                "producers_accuracy_se": _number(e.producers_se[code]),
                "producers_accuracy_ci95": _pair(producers[0][code], producers[1][code]),
            })
        result["error_matrix"] = {
            "rows": "map class", "columns": "reference class", "classes": list(self.classes),
            "counts": e.counts.astype(int).tolist(),
            "proportions": [[_number(v) for v in row] for row in e.proportions]}
        return result


@dataclass(frozen=True)
class Assessment:
    """An accuracy and area assessment of a map (see the module docstring).

    Attributes:
        map: the map.
        reference: the reference points (``FILE[:LAYER]``).
        label_column: the column holding the labels.
        design: how the sample was drawn (:data:`STRATIFIED` or :data:`POST_STRATIFIED`).
        total_points: features in the reference layer.
        left_out: points left out per reason (:data:`LEFT_OUT`).
        region: the figures over the whole map or the area of interest.
        aoi: the area of interest, if any.
        zones: the figures per zone, if zones were given.
        zones_file: the zones' file.
    """

    map: str
    reference: str
    label_column: str
    design: str
    total_points: int
    left_out: dict[str, int]
    region: RegionAssessment
    aoi: str | None = None
    zones: list[RegionAssessment] = field(default_factory=list)
    zones_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON output: inputs, design, points, the region's figures, zones."""
        result = {"map": self.map, "reference": self.reference,
                  "label_column": self.label_column, "aoi": self.aoi, "design": self.design,
                  "interval": self.region.interval,
                  "points": {"total": self.total_points,
                             "used": self.total_points - sum(self.left_out.values()),
                             "left_out": dict(self.left_out)},
                  **self.region.to_dict()}
        if self.zones_file is not None:
            result["zones_file"] = self.zones_file
            result["zones"] = [{"zone": zone.name, **zone.to_dict()} for zone in self.zones]
        return result


def _region_assessment(classmap: ClassMap, areas: np.ndarray, mapped: np.ndarray,
                       labels: np.ndarray, name: str | None, interval: str,
                       whole: RegionAssessment | None = None) -> RegionAssessment:
    """Estimates over a region from the map and reference classes of its usable points.

    With ``whole`` (the assessment of the region a zone lies in), a stratum of the zone
    with fewer than 2 points takes the whole region's row of the error matrix: its
    composition and variance as over the whole region (a synthetic estimate, named in
    ``borrowed``), rather than leaving the zone without figures.
    """
    k = len(classmap.classes)
    counts = np.bincount(mapped * k + labels, minlength=k * k).reshape(k, k)
    used = int(counts.sum())
    if areas.sum() <= 0:
        return RegionAssessment(name, classmap.classes, areas, None, "no mapped pixel here",
                                points=used, interval=interval)
    short = np.flatnonzero((areas > 0) & (counts.sum(axis=1) < 2))
    if short.size and whole is not None and whole.estimates is not None:
        counts[short] = whole.estimates.counts[short]
        short, borrowed = short[:0], tuple(int(code) for code in short)
    else:
        borrowed = ()
    if short.size:
        code = int(short[0])
        problem = (f"stratum {classmap.classes[code]!r} has {counts[code].sum()} labelled "
                   f"point(s) for {areas[code]:.4g} ha mapped; its variance needs at least "
                   "2: label more points there")
        return RegionAssessment(name, classmap.classes, areas, None, problem, points=used,
                                interval=interval)
    estimates = stratified_estimates(counts, areas / areas.sum())
    return RegionAssessment(name, classmap.classes, areas, estimates, borrowed=borrowed,
                            points=used, interval=interval)


def _design(reference: ReferencePoints, classmap: ClassMap, codes: np.ndarray,
            areas: np.ndarray, region: Region) -> str:
    """The sample's design; refuse strata of another map or a region beyond the sampled.

    Raises:
        InputFileError: strata that disagree with the map; part of the region unsampled.
    """
    if reference.strata is None:
        return POST_STRATIFIED
    on_map = codes >= 0
    wrong = np.flatnonzero(on_map & (reference.strata != codes))
    if wrong.size:
        first = wrong[0]
        found = ("nodata" if codes[first] == classmap.nodata
                 else repr(classmap.classes[codes[first]]))
        raise InputFileError(reference.path, f"{wrong.size} of {int(on_map.sum())} points "
                                             "have a stratum other than the map's class under "
                                             f"them (point {reference.ids[first]}: stratum "
                                             f"{reference.strata[first]}, map {found}); they "
                                             "were drawn from another map: assess them "
                                             "against that map")
    if reference.stratum_ha is not None:
        for code in np.unique(reference.strata[on_map]):
            drawn = float(reference.stratum_ha[on_map & (reference.strata == code)][0])
            if areas[code] > drawn * (1 + 1e-6) + 1e-6:
                where = f"inside {region.aoi}" if region.aoi else "over the whole map"
                raise InputFileError(
                    reference.path, f"its points were drawn where {classmap.classes[code]!r} "
                                    f"covers {drawn:.6g} ha, but {where} it covers "
                                    f"{areas[code]:.6g} ha: part of it was never sampled; "
                                    "assess over the area the points were drawn from (aoi=)",
                    param="aoi")
    return STRATIFIED


def _zone_names(zones: Any, zone_field: str | None, path: str) -> list[str]:
    """Zone names: ``zone_field``'s values, else the first attribute's, else positions."""
    columns = [c for c in zones.columns if c != zones.geometry.name]
    if zone_field is not None and zone_field not in columns:
        raise SettingsError("zone_field", f"{path} has no column {zone_field!r} (columns: "
                                          f"{', '.join(columns) or 'none'})")
    column = zone_field or (columns[0] if columns else None)
    if column is None:
        return [str(i) for i in range(1, len(zones) + 1)]
    return [str(value) for value in zones[column]]


def assess(map_path: str | os.PathLike[str], reference: str | os.PathLike[str],
           label_column: str = "reference", *, aoi: str | os.PathLike[str] | None = None,
           zones: str | os.PathLike[str] | None = None,
           zone_field: str | None = None, interval: str = DEFAULT_INTERVAL) -> Assessment:
    """Assess a map's accuracy and estimate its classes' areas from reference points.

    Args:
        map_path: a class map (as ``predict`` writes it).
        reference: labelled points, ``FILE[:LAYER]``, any CRS (reprojected).
        label_column: their column of reference labels (class names or codes).
        aoi: assess over this area only (``FILE[:LAYER]``); points outside are left out.
        zones: polygons (``FILE[:LAYER]``, any CRS) to give the figures of, one by one.
        zone_field: the zones' column naming them (default: their first attribute).
        interval: the kind of the 95 % intervals, a key of
            :data:`.estimators.INTERVALS` (``wald``: the paper's).

    Returns:
        The assessment; :meth:`Assessment.to_dict` gives the JSON.

    Raises:
        InputFileError: an unusable map, reference layer, area or zones; a label not
            among the map's classes; strata of another map; part of the region never
            sampled; a stratum with fewer than 2 labelled points.
        SettingsError: a missing label or zone column; an unknown interval kind.
    """
    import shapely

    if interval not in INTERVALS:
        raise SettingsError("interval", f"is {interval!r}; choose one of "
                                        f"{', '.join(INTERVALS)}")
    classmap = read_class_map(map_path)
    points = read_reference(reference, classmap, label_column)
    region = region_of(classmap, aoi)
    codes = values_at(classmap.path, points.rows, points.cols)
    check_codes(classmap, codes[codes >= 0])
    cx, cy = centres_of(classmap, points.rows, points.cols)
    reason = np.full(len(codes), -1)
    inside_area = np.ones(len(codes), bool)
    if region.aoi is not None:
        inside_area = shapely.contains_xy(region.geometry, cx, cy)
    for index, out in reversed(list(enumerate((
            codes < 0, ~inside_area, codes == classmap.nodata,
            points.labels == UNLABELLED)))):
        reason[out] = index  # the first reason that applies wins
    left_out = {name: int((reason == i).sum()) for i, name in enumerate(LEFT_OUT)}
    areas = class_areas(classmap, [region.geometry])[0]
    design = _design(points, classmap, codes, areas, region)
    used = reason < 0
    overall = _region_assessment(classmap, areas, codes[used], points.labels[used], None,
                                 interval)
    if overall.problem is not None:
        raise InputFileError(points.path, overall.problem)
    result = Assessment(classmap.path, points.path, label_column, design, len(codes),
                        left_out, overall, region.aoi)
    if zones is None:
        return result
    zones_file = os.fspath(zones)
    frame = read_layer(zones_file)
    names = _zone_names(frame, zone_field, zones_file)
    geometries = frame.geometry.to_crs(classmap.crs).make_valid()
    if region.aoi is not None:
        geometries = geometries.intersection(region.geometry)
    zone_areas = class_areas(classmap, geometries)
    assessed = []
    for name, geometry, area in zip(names, geometries, zone_areas, strict=True):
        inside = np.zeros_like(used)
        if geometry is not None and not geometry.is_empty:
            inside = used & shapely.contains_xy(geometry, cx, cy)
        assessed.append(_region_assessment(classmap, area, codes[inside],
                                           points.labels[inside], name, interval, overall))
    return Assessment(classmap.path, points.path, label_column, design, len(codes), left_out,
                      overall, region.aoi, assessed, zones_file)
