"""Synthetic Sentinel-2 MS / Sentinel-1 SAR data that behaves like the real thing.

Bottom of the import flow, beside the datasets it feeds: :func:`make_eurosat` writes a
EuroSat-MS-SAR dataset in the published on-disk layouts that
:class:`~discomkd_geo.data.eurosat.EuroSATMSSAR` reads, and :func:`make_scene` writes a
co-registered MS/SAR scene pair of land-cover regions with its truth raster, for the
tiled-inference engine and the demo (``discomkd-geo synth eurosat|scene``).

The images come from :mod:`discomkd_geo.data.synthetic_physics` (the generative model:
one surface per sample seen by both sensors); this module lays them out on disk. Its
public names are importable from here too.
"""

import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine, array_bounds
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.warp import transform as transform_points

from ..constants import CLASS_NODATA, EUROSAT_CLASSES, EUROSAT_COLORS, S1_BANDS, S2_BANDS
from ..files import atomic_dir
from .eurosat import EuroSATMSSAR
from .synthetic_physics import (
    MATERIALS,
    Sky,
    Surface,
    cloudy_sky,
    cloudy_toa,
    digital_numbers,
    land_surface,
    ms_digital_numbers,
    ms_toa_terms,
    render_class,
    sar_decibels,
    sar_sigma0,
    scene_class,
    sensor_noise,
)

__all__ = [
    "CLOUD_FILES", "GENERATOR_VERSION", "MATERIALS", "SCL", "Sky", "Surface", "land_surface",
    "make_eurosat", "make_scene", "ms_digital_numbers", "render_class", "sar_decibels",
    "sar_sigma0",
]

#: Sentinel-2 L2A scene classification (SCL) codes the scenes' ``scl.tif`` uses (ESA,
#: Sentinel-2 L2A Product Specification / Sen2Cor scene classification).
SCL = {"no_data": 0, "shadow": 3, "vegetation": 4, "not_vegetated": 5, "water": 6,
       "cloud": 8, "opaque": 9, "cirrus": 10}

#: Truth masks (uint8, 1 = that condition) a cloudy scene holds, by file name, each the
#: union of the :meth:`Sky.masks` it names.
CLOUD_FILES = {"cloud.tif": ("opaque", "cloud"), "cirrus.tif": ("cirrus",),
               "shadow.tif": ("shadow",)}

#: Changes whenever the generator draws other data for the same seed: caches of generated
#: datasets (the demo's) are keyed by it, so a cache never serves an older model's data.
GENERATOR_VERSION = 2


def _random_utm(rng: np.random.Generator) -> tuple[CRS, float, float]:
    """A UTM zone over Europe (EPSG:32631-32636) and a 10 m aligned origin in it."""
    crs = CRS.from_epsg(32631 + int(rng.integers(6)))
    return crs, 10.0 * rng.integers(30_000, 60_000), 10.0 * rng.integers(460_000, 560_000)


def _north_up(west: float, north: float, xres: float, yres: float) -> Affine:
    """North-up grid transform (``rasterio.transform.from_origin`` without its warning)."""
    return Affine(xres, 0.0, west, 0.0, -yres, north)


def _write(path: Path, array: np.ndarray, crs: CRS, transform: Affine,
           descriptions: tuple[str, ...], **profile: object) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
                       count=array.shape[0], dtype=array.dtype, crs=crs, transform=transform,
                       **profile) as dst:
        dst.write(array)
        dst.descriptions = descriptions


def make_eurosat(out: str | os.PathLike[str], per_class: int, seed: int = 0,
                 layout: str = "eurosat", overwrite: bool = False, size: int = 64) -> str:
    """Write a synthetic EuroSat-MS-SAR dataset in a published on-disk layout.

    For every class, ``per_class`` pairs ``<Class>/<Class>_<n>.tif`` (n from 1): MS as
    13-band uint16 GeoTIFFs and SAR as 2-band float32 VV/VH dB GeoTIFFs, both on the same
    10 m grid of a UTM zone, in the directories of ``layout`` (see
    :attr:`EuroSATMSSAR.directories`), plus split lists in the published format (lines
    ``<Class>_<n>.jpg``), stratified 60/20/20 train/val/test. The output is written to a
    temporary directory renamed onto ``out`` at the end.

    Args:
        out: output directory.
        per_class: images per class (at least 1).
        seed: the same seed writes the same bytes.
        layout: ``eurosat`` or ``copernicus``.
        overwrite: replace ``out`` if it exists and is not empty.
        size: image side in pixels (EuroSAT: 64).

    Returns:
        A one-line summary.

    Raises:
        ValueError: ``per_class`` < 1, ``size`` < 16 or an unknown layout.
        OutputExistsError: ``out`` exists, is not empty, and ``overwrite`` is false.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    if layout not in EuroSATMSSAR.directories:
        raise ValueError(f"layout must be one of {list(EuroSATMSSAR.directories)}, "
                         f"got {layout!r}")
    dirs = EuroSATMSSAR.directories[layout]
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    with atomic_dir(out, overwrite) as tmp:
        for label, name in enumerate(EUROSAT_CLASSES):
            for d in dirs.values():
                (tmp / d / name).mkdir(parents=True)
            for n in range(1, per_class + 1):
                rng = np.random.default_rng([seed, label, n])
                crs, x0, y0 = _random_utm(rng)
                transform = _north_up(x0, y0, EuroSATMSSAR.pixel_size,
                                        EuroSATMSSAR.pixel_size)
                ms, sar = render_class(label, size, rng)
                file = f"{name}_{n}.tif"
                _write(tmp / dirs["ms"] / name / file, ms, crs, transform, S2_BANDS)
                _write(tmp / dirs["sar"] / name / file, sar, crs, transform, S1_BANDS)
            order = np.random.default_rng([seed, label, 0]).permutation(per_class) + 1
            n_train, n_val = round(0.6 * per_class), round(0.2 * per_class)
            for split, part in (("train", order[:n_train]),
                                ("val", order[n_train:n_train + n_val]),
                                ("test", order[n_train + n_val:])):
                splits[split] += [f"{name}_{n}.jpg" for n in sorted(part)]
        for template in EuroSATMSSAR.split_lists[layout]:
            for split, lines in splits.items():
                path = tmp / template.format(split=split)
                path.write_text("".join(f"{line}\n" for line in lines))
    counts = "/".join(str(len(v)) for v in splits.values())
    return (f"{out}: synthetic EuroSat-MS-SAR, {layout} layout, {per_class * len(EUROSAT_CLASSES)}"
            f" MS/SAR pairs ({per_class} per class, {size}x{size} px), train/val/test "
            f"{counts}, seed {seed}")


def _regions(size: int, rng: np.random.Generator) -> list:
    """Voronoi land-cover regions over a ``size`` px square, in pixel coordinates.

    Seeds jitter about the centres of a grid of about 128 px cells, by at most 15% of a
    cell, so seeds are at least 70% of a cell (about 90 px) apart and 35% of a cell from
    the edges: every region holds a disc of about 90 px inside the scene, where 64 px
    windows fit. Linear in the number of regions, for scenes of any size.
    """
    import shapely

    k = max(2, round(size / 128))
    cell = size / k
    centres = (np.stack(np.meshgrid(np.arange(k), np.arange(k)), -1).reshape(-1, 2) + 0.5)
    points = centres * cell + rng.uniform(-0.15, 0.15, size=centres.shape) * cell
    frame = shapely.box(0, 0, size, size)
    # ordered: cell i belongs to seed i, so classes follow the seeded draw
    cells = shapely.voronoi_polygons(shapely.multipoints(points), extend_to=frame,
                                     ordered=True)
    return [c.intersection(frame) for c in shapely.get_parts(cells)]


def _sar_grid(crs: CRS, transform: Affine, size: int) -> tuple[CRS, Affine, int, int]:
    """An EPSG:4326 grid over the scene whose pixels measure about 10 m x 10 m."""
    geographic = CRS.from_epsg(4326)
    cx, cy = transform @ (size / 2, size / 2)
    step = EuroSATMSSAR.pixel_size
    lon, lat = transform_points(crs, geographic, [cx, cx + step, cx], [cy, cy, cy + step])
    xres, yres = abs(lon[1] - lon[0]), abs(lat[2] - lat[0])
    west, south, east, north = transform_bounds(crs, geographic,
                                                *array_bounds(size, size, transform))
    width, height = int(np.ceil((east - west) / xres)), int(np.ceil((north - south) / yres))
    return geographic, _north_up(west, north, xres, yres), width, height


def _margins(shape: tuple[int, int], strip: str, corner: str) -> np.ndarray:
    """Nodata mask: a strip 1/16 of the side along one edge and a triangle in a corner."""
    h, w = shape
    y, x = np.mgrid[:h, :w]
    band = {"north": y < h // 16, "south": y >= h - h // 16,
            "west": x < w // 16, "east": x >= w - w // 16}[strip]
    cy = y if corner[0] == "n" else h - 1 - y
    cx = x if corner[1] == "w" else w - 1 - x
    return band | (cx + cy < min(h, w) // 6)


def make_scene(out: str | os.PathLike[str], size: int = 512, seed: int = 0,
               overwrite: bool = False, cloud_cover: float = 0.0) -> str:
    """Write a co-registered MS/SAR scene pair of land-cover regions with its truth.

    Random Voronoi regions (each at least about 90 px across) get EuroSAT classes and are
    rendered with the same generator as the EuroSat-MS-SAR patches, at the same 10 m
    scale. Files written to ``out``:

    * ``truth.tif``: uint8 class codes on a UTM 10 m grid, nodata 255, colour table;
    * ``ms.tif``: 13-band uint16 DN on the truth grid, nodata 0 (a strip along the north
      edge and the south-east corner);
    * ``sar.tif``: VV/VH float32 dB on a *different* grid, EPSG:4326 with about 10 m
      pixels (speckle drawn on that grid), nodata NaN (outside the scene, a strip along the
      east edge and the north-west corner);
    * ``regions.gpkg``: the region polygons with ``class_code`` and ``class_name``.

    With ``cloud_cover`` > 0 the MS scene is seen under clouds (thick low clouds, thin
    cirrus and the low clouds' shadows, :func:`~.synthetic_physics.cloudy_sky`; the SAR
    scene and the truth are those of the clear scene of the same seed), and the truth of
    the sky goes beside it on the truth grid:

    * ``cloud.tif``, ``cirrus.tif``, ``shadow.tif``: uint8 masks, 1 where a pixel is under
      a thick cloud, under thin cirrus only, or in a cloud's shadow (each pixel in at most
      one, in that order);
    * ``scl.tif``: uint8 Sentinel-2 L2A scene classification codes (:data:`SCL`): 0 no
      data, 3 cloud shadow, 4 vegetation, 5 not vegetated, 6 water, 8 and 9 cloud of medium
      and high probability, 10 thin cirrus.

    Args:
        out: output directory.
        size: MS/truth side in pixels (at least 64).
        seed: the same seed gives the same rasters.
        overwrite: replace ``out`` if it exists and is not empty.
        cloud_cover: share of the scene under clouds or cirrus, 0-1 (0: a clear
            acquisition, the same bytes as before clouds existed).

    Returns:
        A one-line summary.

    Raises:
        ValueError: ``size`` < 64 or ``cloud_cover`` outside 0-1.
        OutputExistsError: ``out`` exists, is not empty, and ``overwrite`` is false.
    """
    import geopandas as gpd
    import shapely
    from rasterio.features import rasterize

    if size < 64:
        raise ValueError(f"size must be at least 64 px, got {size}")
    if not 0.0 <= cloud_cover <= 1.0:
        raise ValueError(f"cloud_cover must be in [0, 1], got {cloud_cover}")
    rng = np.random.default_rng([seed, 1_000_003])
    crs, x0, y0 = _random_utm(rng)
    transform = _north_up(x0, y0, EuroSATMSSAR.pixel_size, EuroSATMSSAR.pixel_size)
    cells = _regions(size, rng)
    order = rng.permutation(len(EUROSAT_CLASSES))  # every class appears once n >= 10
    codes = [int(order[i % len(order)]) for i in range(len(cells))]
    shape = (size, size)
    region = rasterize(((c, i) for i, c in enumerate(cells)), out_shape=shape,
                       fill=len(cells), dtype="uint16")
    truth = np.asarray(codes + [CLASS_NODATA], dtype=np.uint8)[region]

    # Per region clouds would follow the region outlines: one sky spans the scene, drawn
    # from its own generator so the surfaces and the SAR scene stay those of a clear day.
    sky = cloudy_sky(shape, cloud_cover, np.random.default_rng([seed, 2_000_003])) \
        if cloud_cover > 0 else None
    ms = np.zeros((len(S2_BANDS), *shape), dtype=np.uint16)
    sigma0 = np.zeros((len(S1_BANDS), *shape), dtype=np.float32)
    scl = np.zeros(shape, dtype=np.uint8)
    for i, code in enumerate(codes):
        x0, y0, x1, y1 = np.asarray(cells[i].bounds).round().astype(int)
        box = (slice(y0, y1), slice(x0, x1))
        mask = region[box] == i
        region_rng = np.random.default_rng([seed, 1_000_003, i])
        surface = land_surface(code, mask.shape, region_rng)
        path, ground = ms_toa_terms(surface, region_rng)
        toa = path + ground if sky is None else cloudy_toa(path, ground, sky[box])
        dn = digital_numbers(toa, sensor_noise(toa.shape, region_rng))
        ms[(slice(None), *box)][:, mask] = dn[:, mask]
        sigma0[(slice(None), *box)][:, mask] = sar_sigma0(surface, region_rng)[:, mask]
        scl[box][mask] = scene_class(surface.cover)[mask]
    margins = _margins(shape, "north", "se")
    ms[:, margins] = 0

    sar_crs, sar_transform, width, height = _sar_grid(crs, transform, size)
    warped = np.full((len(S1_BANDS), height, width), np.nan, dtype=np.float32)
    reproject(sigma0, warped, src_transform=transform, src_crs=crs, dst_transform=sar_transform,
              dst_crs=sar_crs, dst_nodata=np.nan, resampling=Resampling.nearest)
    sar = sar_decibels(warped, np.random.default_rng([seed, 1_000_003, len(cells)]))
    sar[:, _margins((height, width), "east", "nw")] = np.nan

    tiled = {"tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
             "zlevel": 9}
    with atomic_dir(out, overwrite) as tmp:
        _write(tmp / "truth.tif", truth[None], crs, transform, ("land cover class",),
               nodata=CLASS_NODATA, **tiled)
        with rasterio.open(tmp / "truth.tif", "r+") as dst:
            dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(EUROSAT_COLORS)})
            dst.update_tags(classes=",".join(EUROSAT_CLASSES))
        _write(tmp / "ms.tif", ms, crs, transform, S2_BANDS, nodata=0, predictor=2, **tiled)
        _write(tmp / "sar.tif", sar, sar_crs, sar_transform, S1_BANDS, nodata=np.nan,
               predictor=3, **tiled)
        polygons = [shapely.affinity.affine_transform(c, transform.to_shapely()) for c in cells]
        gpd.GeoDataFrame({"region": range(len(cells)), "class_code": codes,
                          "class_name": [EUROSAT_CLASSES[c] for c in codes]},
                         geometry=polygons, crs=crs).to_file(tmp / "regions.gpkg",
                                                             driver="GPKG")
        if sky is not None:
            _write_sky(tmp, sky, scl, margins, crs, transform, **tiled)
    summary = (f"{out}: synthetic scene {size}x{size} px at 10 m ({crs}), {len(cells)} regions "
               f"of {len(set(codes))} classes; ms.tif (13 bands), truth.tif, regions.gpkg on "
               f"that grid; sar.tif (VV/VH dB) on EPSG:4326, {width}x{height} px; seed {seed}")
    if sky is None:
        return summary
    return (f"{summary}; {cloud_cover:.0%} cloud cover (tops {sky.cloud_top:.1f} km, sun "
            f"{sky.sun_zenith:.0f} deg from zenith): cloud.tif, cirrus.tif, shadow.tif, scl.tif")


def _write_sky(folder: Path, sky: Sky, scl: np.ndarray, margins: np.ndarray, crs: CRS,
               transform: Affine, **profile: object) -> None:
    """Write a cloudy scene's truth masks and scene classification (see :func:`make_scene`)."""
    masks = sky.masks()
    for name in ("shadow", "cirrus", "cloud", "opaque"):  # the one on top last
        scl[masks[name]] = SCL[name]
    scl[margins] = SCL["no_data"]
    for file, parts in CLOUD_FILES.items():
        truth = np.logical_or.reduce([masks[p] for p in parts]) & ~margins
        _write(folder / file, truth.astype(np.uint8)[None], crs, transform,
               (f"{' or '.join(parts)} (1)",), **profile)
    _write(folder / "scl.tif", scl[None], crs, transform, ("SCL",), **profile)
