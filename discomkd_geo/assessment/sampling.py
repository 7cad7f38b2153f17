"""Stratified random samples of a land-cover map for an accuracy assessment.

The first step of the assessment chain (map -> **sample** -> label -> assess;
``discomkd-geo sample``). The strata are the map's classes, over the whole map or an area
of interest (:mod:`.strata`); each point is the centre of a pixel drawn without
replacement, with equal probability within its stratum. How many points, and how many
per stratum, follow Olofsson et al. (2014):

* :func:`sample_size`: the points a target standard error of the overall accuracy needs,
  given the user's accuracies expected per class (Cochran's stratified formula,
  ``n = (sum_i W_i S_i / S(O))^2`` with ``S_i = sqrt(U_i (1 - U_i))``);
* :func:`allocate`: ``proportional`` (to the strata's areas), ``equal``, or ``olofsson``
  (their recommendation: at least a minimum per class so that rare classes get a usable
  user's accuracy, the rest proportional).

Each point carries its stratum (``stratum`` code, ``stratum_name``), the stratum's area
in the region sampled (``stratum_ha``, which :mod:`.assess` checks against the map it is
given), its inclusion weight (``weight``: the stratum pixels a point stands for,
``N_i / n_i``) and an empty ``reference`` column to fill in (QGIS's attribute table), or
filled from a truth raster. Points come in random order, so their ids do not give their
stratum away while labelling (hide the stratum columns to label blind).
"""

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import rasterio

from ..errors import SettingsError
from ..files import check_outputs
from ..inference.classmap import ClassMap, read_class_map
from .strata import Region, centres_of, check_codes, class_areas, region_of

if TYPE_CHECKING:
    import geopandas as gpd

Allocation = Literal["olofsson", "proportional", "equal"]
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)

#: Olofsson et al.'s (2014) example of a minimum per class (they suggest 50-100).
MIN_PER_CLASS = 50

#: The columns of a sample, in order, before the geometry.
COLUMNS = ("point_id", "stratum", "stratum_name", "stratum_ha", "weight", "reference")


def sample_size(weights: Sequence[float] | np.ndarray, users_accuracy: Sequence[float]
                | np.ndarray, target_se: float) -> int:
    """Points a stratified sample needs for a target standard error of overall accuracy.

    ``n = (sum_i W_i S_i / S(O))^2`` with ``S_i = sqrt(U_i (1 - U_i))`` (Olofsson et al.
    2014, after Cochran 1977), rounded up; finite-population terms are neglected.

    Args:
        weights: each stratum's share of the mapped area.
        users_accuracy: the user's accuracy expected of each stratum (0-1).
        target_se: the standard error of overall accuracy wanted, e.g. 0.01.

    Raises:
        SettingsError: a target or an accuracy outside (0, 1).
    """
    if not 0 < target_se < 1:
        raise SettingsError("target_se", f"must lie between 0 and 1, got {target_se}")
    users_accuracy = np.asarray(users_accuracy, float)
    if ((users_accuracy <= 0) | (users_accuracy >= 1)).any():
        raise SettingsError("expected_ua", "expected user's accuracies must lie strictly "
                                           f"between 0 and 1, got {users_accuracy.tolist()}")
    spread = np.sqrt(users_accuracy * (1 - users_accuracy))
    return int(np.ceil((np.dot(np.asarray(weights, float), spread) / target_se) ** 2 - 1e-9))


def _largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``shares`` adding up to ``total`` (Hamilton's method)."""
    raw = total * shares / shares.sum()
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[:total - counts.sum()]] += 1
    return counts


def allocate(size: int, pixels: Sequence[int] | np.ndarray,
             allocation: Allocation = "olofsson", min_per_class: int = MIN_PER_CLASS,
             areas: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Points per stratum.

    Strata without pixels get none; no stratum gets more points than it has pixels (the
    excess goes to the others, in the allocation's proportions).

    Args:
        size: the sample size.
        pixels: pixels per stratum (class code).
        allocation: ``proportional`` (to the strata's areas), ``equal``, or ``olofsson``
            (at least ``min_per_class`` each, or all its pixels if fewer; the rest
            proportional).
        min_per_class: the minimum of ``olofsson``.
        areas: the strata's areas (default: their pixel counts), for the proportions.

    Raises:
        SettingsError: an unknown allocation, a size beyond the pixels, or one too small
            for ``min_per_class`` points in each stratum.
    """
    if allocation not in ALLOCATIONS:
        raise SettingsError("allocation", f"is {allocation!r}; choose one of "
                                          f"{', '.join(ALLOCATIONS)}")
    pixels = np.asarray(pixels, np.int64)
    present = pixels > 0
    if size > pixels.sum():
        raise SettingsError("size", f"asks for {size:,} points; the map has {pixels.sum():,} "
                                    "pixels to draw from")
    shares = np.where(present, pixels if areas is None else np.asarray(areas, float), 0.0)
    shares = np.where(present, 1.0, 0.0) if allocation == "equal" else shares.astype(float)
    floor = np.zeros_like(pixels)
    if allocation == "olofsson":
        floor = np.minimum(pixels, min_per_class)
        if floor.sum() > size:
            raise SettingsError("size", f"is {size:,}, fewer than min_per_class="
                                        f"{min_per_class} points in each of the "
                                        f"{int(present.sum())} classes ({floor.sum():,}); "
                                        "ask for more points or a smaller minimum")
    counts = np.zeros_like(pixels)
    fixed = ~present
    while True:  # fix the strata at their floor or cap, share the rest among the others
        free = ~fixed
        counts[free] = _largest_remainder(shares[free], size - counts[fixed].sum())
        low, high = free & (counts < floor), free & (counts > pixels)
        if not (low.any() or high.any()):
            return counts
        counts[low], counts[high] = floor[low], pixels[high]
        fixed |= low | high


def draw(codes: np.ndarray, allocation: Sequence[int] | np.ndarray,
         rng: np.random.Generator) -> np.ndarray:
    """Flat indices of a stratified random sample of ``codes`` (without replacement).

    Args:
        codes: the class code of every pixel of the region (any shape; codes without a
            count, nodata included, are never drawn).
        allocation: points per code.
        rng: the random generator.

    Returns:
        The indices into ``codes.ravel()``, stratum by stratum.
    """
    flat = codes.ravel()
    return np.concatenate([np.zeros(0, np.int64)] + [
        rng.choice(np.flatnonzero(flat == code), int(count), replace=False)
        for code, count in enumerate(allocation) if count])


@dataclass(frozen=True)
class SamplePlan:
    """What a sample of a map will be: the strata and the points each gets.

    Attributes:
        path: the map.
        classes: class name by code.
        pixels: pixels per stratum in the region.
        areas_ha: the strata's areas in the region (hectares).
        allocation: points per stratum.
        method: the allocation rule.
        region: where the points are drawn.
    """

    path: str
    classes: tuple[str, ...]
    pixels: np.ndarray
    areas_ha: np.ndarray
    allocation: np.ndarray
    method: str
    region: Region

    @property
    def size(self) -> int:
        """The sample size."""
        return int(self.allocation.sum())


def _expected_ua(classes: Sequence[str], expected_ua: float,
                 class_ua: Mapping[str, float] | None) -> np.ndarray:
    unknown = sorted(set(class_ua or {}) - set(classes))
    if unknown:
        raise SettingsError("expected_ua", f"names {unknown[0]!r}, which is not a class of "
                                           f"the map (classes: {', '.join(classes)})")
    return np.array([(class_ua or {}).get(name, expected_ua) for name in classes])


def _region_codes(classmap: ClassMap, region: Region) -> np.ndarray:
    """The map's codes (held whole), nodata outside the region (the centre rule)."""
    from rasterio.features import rasterize

    with rasterio.open(classmap.path) as src:
        codes = src.read(1)
    if region.aoi is not None:
        inside = rasterize([region.geometry], out_shape=codes.shape,
                           transform=classmap.transform, fill=0, default_value=1,
                           dtype="uint8").astype(bool)
        codes[~inside] = classmap.nodata
    return codes


def plan_sample(path: str | os.PathLike[str], size: int | None = None, *,
                target_se: float | None = None, expected_ua: float = 0.8,
                class_ua: Mapping[str, float] | None = None,
                allocation: Allocation = "olofsson", min_per_class: int = MIN_PER_CLASS,
                aoi: str | os.PathLike[str] | None = None) -> SamplePlan:
    """The strata of a map and the points each gets, before drawing.

    Args:
        path: a class map (uint8 codes, nodata, class names in its tags).
        size: the sample size; or ``None`` with ``target_se``.
        target_se: the standard error of overall accuracy wanted: the size is
            :func:`sample_size`'s (and no smaller than the ``olofsson`` minimum needs).
        expected_ua: the user's accuracy expected of every class, for ``target_se``.
        class_ua: expected user's accuracies of some classes by name (the others get
            ``expected_ua``).
        allocation: see :func:`allocate`.
        min_per_class: see :func:`allocate`.
        aoi: draw only inside this area (``FILE[:LAYER]``, any CRS, pixel centres inside).

    Raises:
        SettingsError: neither or both of ``size`` and ``target_se``, or see
            :func:`allocate` and :func:`sample_size`.
        InputFileError: not a class map, or an unusable area of interest.
    """
    if (size is None) == (target_se is None):
        raise SettingsError("size", "give a sample size or target_se=, not both or neither")
    if size is not None and size < 1:
        raise SettingsError("size", f"must be at least 1, got {size}")
    classmap = read_class_map(path)
    region = region_of(classmap, aoi)
    codes = _region_codes(classmap, region)
    check_codes(classmap, codes)
    pixels = np.bincount(codes[codes != classmap.nodata].ravel(),
                         minlength=len(classmap.classes))
    areas = class_areas(classmap, [region.geometry])[0]
    if size is None:
        ua = _expected_ua(classmap.classes, expected_ua, class_ua)
        size = sample_size(areas / areas.sum(), ua, target_se)
        if allocation == "olofsson":
            size = max(size, int(np.minimum(pixels, min_per_class).sum()))
    counts = allocate(size, pixels, allocation, min_per_class, areas)
    return SamplePlan(classmap.path, classmap.classes, pixels, areas, counts, allocation,
                      region)


def sample_map(plan: SamplePlan, seed: int = 0,
               truth: str | os.PathLike[str] | None = None) -> "gpd.GeoDataFrame":
    """Draw the points of a plan: pixel centres in the map's CRS (see the module docstring).

    Args:
        plan: from :func:`plan_sample`.
        seed: the random seed (the same seed and plan draw the same points).
        truth: a class raster (any CRS and grid, class names in its tags like the map's)
            whose class under each point fills ``reference`` (points off it or on its
            nodata stay empty).

    Raises:
        InputFileError: the truth raster is not a class map or names classes the map
            has not.
    """
    import geopandas as gpd

    classmap = read_class_map(plan.path)
    rng = np.random.default_rng(seed)
    codes = _region_codes(classmap, plan.region)
    index = draw(codes, plan.allocation, rng)
    order = rng.permutation(len(index))  # ids that do not give the stratum away
    rows, cols = np.divmod(index[order], classmap.width)
    strata = codes.ravel()[index[order]].astype(np.int64)
    xs, ys = centres_of(classmap, rows, cols)
    reference = [None] * len(index)
    if truth is not None:
        from .reference import raster_labels

        reference = raster_labels(truth, xs, ys, classmap.crs, classmap.classes)
    return gpd.GeoDataFrame({
        "point_id": np.arange(1, len(index) + 1),
        "stratum": strata,
        "stratum_name": np.asarray(classmap.classes, dtype=object)[strata],
        "stratum_ha": plan.areas_ha[strata],
        "weight": plan.pixels[strata] / plan.allocation[strata],
        "reference": np.asarray(reference, dtype=object),
    }, geometry=gpd.points_from_xy(xs, ys), crs=classmap.crs)


def sample_to_file(plan: SamplePlan, output: str | os.PathLike[str], *, seed: int = 0,
                   truth: str | os.PathLike[str] | None = None, layer: str | None = None,
                   overwrite: bool = False) -> "gpd.GeoDataFrame":
    """Draw a plan's points (:func:`sample_map`) into a vector file, atomically.

    Args:
        plan: from :func:`plan_sample`.
        output: ``.gpkg`` (also ``.geojson``, ``.fgb``).
        seed: see :func:`sample_map`.
        truth: see :func:`sample_map`.
        layer: the layer's name (default: the output's stem).
        overwrite: replace an existing output.

    Raises:
        OutputExistsError: the output exists and ``overwrite`` is false (checked first).
        OutputError: another extension, or a missing directory.
    """
    from ..inference.vectorize import vector_driver, write_layer

    output = Path(output)
    vector_driver(output)
    inputs = {"map": plan.path} | ({"truth": truth} if truth is not None else {})
    check_outputs({"sample": output}, overwrite, inputs=inputs)
    frame = sample_map(plan, seed=seed, truth=truth)
    write_layer(frame, output, layer or output.stem, overwrite)
    return frame
