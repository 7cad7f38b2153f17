"""Whole co-registered Sentinel-2/Sentinel-1 scenes as TorchGeo datasets, with patch labels.

How a user trains from their own scenes instead of EuroSAT. Each layer is a TorchGeo
:class:`~torchgeo.datasets.RasterDataset` (:class:`Sentinel2Scene`,
:class:`Sentinel1Scene`, :class:`LandCoverRaster`); :func:`scene_dataset` intersects
them, which puts every layer on the first layer's CRS and resolution, so a window drawn
by TorchGeo's ``RandomGeoSampler`` or ``GridGeoSampler`` reads the MS and SAR pixels of
the same footprint even when the SAR raster sits on another grid or CRS (it is warped
on the fly through a ``WarpedVRT``). :class:`ScenePatches` turns a window into a
classification sample: the images per modality and the window's majority land-cover
class; its :attr:`~ScenePatches.valid_area` lets
:class:`~discomkd_geo.data.samplers.ValidWindowSampler` skip windows with too much
nodata. :class:`SceneSplits` cuts the valid windows of a scene into train/val/test sets
for the DataModule (:mod:`discomkd_geo.data.datamodule`, ``data.dataset: scenes``).
"""

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import rasterio.merge
import shapely
import torch
from affine import Affine
from shapely.geometry.base import BaseGeometry
from torch import Tensor
from torch.utils.data import Dataset
from torchgeo.datasets import GeoDataset, IntersectionDataset, RasterDataset
from torchgeo.datasets.utils import GeoSlice, array_to_tensor
from torchgeo.samplers import GridGeoSampler

from ..config import DataConfig
from ..constants import (
    CLASS_NODATA,
    EUROSAT_CLASSES,
    EUROSAT_COLORS,
    MS,
    S2_RGB_BANDS,
    SAR,
)
from ..errors import ConfigError, InputFileError
from .eurosat import stratified_split
from .samplers import ValidWindowSampler
from .sensors import SENSORS, Sensor

#: Largest side, in pixels, of the decimated nodata masks the valid area is traced from.
MASK_SIDE = 1024


class SceneRaster(RasterDataset):
    """A single-sensor raster layer: band checks, a nodata value, and a named image key.

    Files are checked when the dataset is built, so a wrong or unreadable file is named
    at once instead of being skipped silently (TorchGeo's default).

    Args:
        paths: raster files (or directories searched with ``filename_glob``).
        crs: CRS to warp to (default: the first file's).
        res: resolution in CRS units (default: the first file's).
        bands: bands to read, in output order (default: all).
        transforms: function applied to each sample.
        cache: keep file handles open between reads.

    Raises:
        InputFileError: a file is unreadable or has the wrong band count.
    """

    #: Modality name; images are returned under ``image_<modality>``.
    modality: ClassVar[str] = ""

    #: Value of pixels without data in the files and in windows beyond them.
    nodata: ClassVar[float] = 0
    #: The sensor of an image layer (its saturation code); ``None`` for class codes.
    sensor: ClassVar[Sensor | None] = None

    def __init__(self, paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                 crs: Any = None, res: float | tuple[float, float] | None = None,
                 bands: Sequence[str] | None = None,
                 transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 cache: bool = True) -> None:
        if bands is not None and (not bands or not set(bands) <= set(self.all_bands)):
            raise ValueError(f"invalid {type(self).__name__} bands {list(bands)}: choose "
                             f"from {list(self.all_bands)}")
        self.paths = paths  # ``files`` lists them; checked before TorchGeo skips bad ones
        for path in self.files:
            self._check(path)
        super().__init__(paths, crs, res, bands, transforms, cache)

    def _check(self, path: str) -> None:
        try:
            with rasterio.open(path) as src:
                count = src.count
        except rasterio.errors.RasterioIOError as err:
            raise InputFileError(path, f"unreadable raster ({str(err).splitlines()[0]})") \
                from err
        if self.all_bands and count != len(self.all_bands):
            raise InputFileError(path, f"has {count} bands, expected {len(self.all_bands)} "
                                 f"({', '.join(self.all_bands)})")

    def _merge_files(self, filepaths: Sequence[str], query: GeoSlice,
                     band_indexes: Sequence[int] | None = None) -> Tensor:
        # As TorchGeo's, but beyond the files the window is filled with this layer's
        # nodata (TorchGeo fills with the file's nodata or 0, a valid class code).
        handles = [self._cached_load_warp_file(fp) if self.cache else self._load_warp_file(fp)
                   for fp in filepaths]
        x, y, _ = self._disambiguate_slice(query)
        dest, _ = rasterio.merge.merge(handles, (x.start, y.start, x.stop, y.stop),
                                       (x.step, y.step), indexes=band_indexes,
                                       resampling=self.resampling, nodata=self.nodata)
        return array_to_tensor(dest)

    def __getitem__(self, query: GeoSlice) -> dict[str, Any]:
        """Read a window: ``image_<modality>`` (or ``mask``), ``crs`` and ``bounds``."""
        sample = super().__getitem__(query)
        if self.is_image:
            sample[f"image_{self.modality}"] = sample.pop("image")
        return sample

    def valid_mask(self, data: np.ndarray) -> np.ndarray:
        """Pixels of ``(C, H, W)`` raw data that hold data, not saturated, in every band."""
        if math.isnan(self.nodata):
            valid = np.isfinite(data).all(axis=0)
        else:
            valid = (data != self.nodata).all(axis=0)
        return valid if self.sensor is None else self.sensor.unsaturated(data, valid)

    def valid_area(self) -> BaseGeometry:
        """Where the files hold data, traced on masks of at most :data:`MASK_SIDE` px."""
        parts = []
        for path in self.index.filepath:
            with rasterio.open(path) as src:
                factor = max(1, math.ceil(max(src.width, src.height) / MASK_SIDE))
                shape = (src.count, math.ceil(src.height / factor),
                         math.ceil(src.width / factor))
                data = src.read(out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
                transform = src.transform @ Affine.scale(src.width / shape[2],
                                                         src.height / shape[1])
                valid = self.valid_mask(data).astype(np.uint8)
                shapes = [shapely.geometry.shape(g) for g, v in
                          rasterio.features.shapes(valid, valid.astype(bool), transform=transform)
                          if v == 1]
                area = gpd.GeoSeries([shapely.union_all(shapes)], crs=src.crs)
            parts.append(area.to_crs(self.crs).iloc[0])
        return shapely.union_all(parts)


class Sentinel2Scene(SceneRaster):
    """Sentinel-2 L1C multispectral scene: 13 bands in EuroSAT order, uint16 DN, nodata 0.

    Saturated pixels (DN 65535) count as nodata when windows are skipped.

    Images are returned as float32 digital numbers under ``image_ms``.
    """

    modality = MS
    all_bands = SENSORS[MS].bands
    rgb_bands = S2_RGB_BANDS
    nodata = SENSORS[MS].nodata
    sensor = SENSORS[MS]


class Sentinel1Scene(SceneRaster):
    """Sentinel-1 GRD dual-polarisation scene (VV, VH), nodata NaN.

    Images are returned as float32 backscatter in dB under ``image_sar``.

    Args:
        paths: raster files (or directories).
        db: the files hold dB (default); ``False``: linear power, converted to dB with
            ``10 log10`` after reading (non-positive power becomes nodata).
        **kwargs: passed to :class:`SceneRaster`.
    """

    modality = SAR
    all_bands = SENSORS[SAR].bands
    nodata = SENSORS[SAR].nodata
    sensor = SENSORS[SAR]

    def __init__(self, paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                 db: bool = True, **kwargs: Any) -> None:
        self.db = db
        super().__init__(paths, **kwargs)

    def __getitem__(self, query: GeoSlice) -> dict[str, Any]:
        """Read a window, in dB."""
        sample = super().__getitem__(query)
        if not self.db:
            power = sample["image_sar"]
            sample["image_sar"] = torch.where(power > 0, 10 * torch.log10(power),
                                              torch.full_like(power, math.nan))
        return sample

    def valid_mask(self, data: np.ndarray) -> np.ndarray:
        """Finite pixels (and, for linear power, positive ones)."""
        valid = super().valid_mask(data)
        return valid if self.db else valid & (data > 0).all(axis=0)


class LandCoverRaster(SceneRaster):
    """Land-cover class codes (uint8, nodata :data:`~discomkd_geo.constants.CLASS_NODATA`).

    Read with nearest-neighbour resampling under ``mask`` (int64).
    """

    is_image = False
    nodata = CLASS_NODATA


def scene_dataset(ms: Sentinel2Scene, sar: Sentinel1Scene,
                  labels: LandCoverRaster | None = None) -> IntersectionDataset:
    """Intersect the layers: MS and SAR (and labels) windows on the MS grid.

    The SAR (and label) layers are put on the MS layer's CRS and resolution, so every
    window query reads co-registered pixels of the same footprint from each layer.

    Returns:
        An ``IntersectionDataset`` whose samples hold ``image_ms``, ``image_sar``
        (and ``mask``), ``crs`` and ``bounds``.
    """
    pair = IntersectionDataset(ms, sar, spatial_only=False)
    return pair if labels is None else IntersectionDataset(pair, labels, spatial_only=False)


def majority_label(mask: Tensor, nodata: int = CLASS_NODATA) -> int:
    """Most frequent class code of a window, ignoring ``nodata`` (``nodata`` if none)."""
    codes = mask[mask != nodata]
    if codes.numel() == 0:
        return nodata
    return int(torch.bincount(codes.flatten()).argmax())


class ScenePatches(GeoDataset):
    """Patch classification samples from co-registered scenes: images and majority class.

    Indexed like any TorchGeo dataset by a window query from a ``GeoSampler``. A sample
    holds ``image_<m>`` per modality (float32 ``(C, H, W)``, raw DN / dB on the first
    layer's grid, SAR nodata filled with the window's band mean), ``label`` (int64
    majority class code of the window, :data:`~discomkd_geo.constants.CLASS_NODATA` if
    none), ``crs`` and ``bounds``.

    Args:
        layers: one scene per modality, e.g. ``{"ms": Sentinel2Scene(...), "sar":
            Sentinel1Scene(...)}``; the first sets the CRS and grid.
        labels: the land-cover raster.

    Raises:
        RuntimeError: the layers do not overlap.
    """

    def __init__(self, layers: Mapping[str, SceneRaster], labels: LandCoverRaster) -> None:
        self.layers = dict(layers)
        datasets: list[GeoDataset] = [*self.layers.values(), labels]
        joined: GeoDataset = datasets[0]
        for ds in datasets[1:]:  # generic over the modality count, unlike scene_dataset
            joined = IntersectionDataset(joined, ds, spatial_only=False)
        self.dataset = joined
        self.labels = labels
        self.index = joined.index
        self._res = joined.res
        self.paths = [p for ds in datasets for p in ds.files]
        self._valid_area: BaseGeometry | None = None

    @property
    def valid_area(self) -> BaseGeometry:
        """Where every layer holds data, in the dataset's CRS (computed once)."""
        if self._valid_area is None:
            area = shapely.union_all(list(self.index.geometry))
            for ds in (*self.layers.values(), self.labels):
                area = area.intersection(ds.valid_area())
            self._valid_area = area
        return self._valid_area

    def label_at(self, query: GeoSlice) -> int:
        """Majority class code of a window, reading the label layer only."""
        return majority_label(self.labels[query]["mask"])

    def read(self, query: GeoSlice, modalities: Sequence[str] | None = None,
             ) -> dict[str, Any]:
        """Read a window's images (of ``modalities``, default all) and its label."""
        sample: dict[str, Any] = {"crs": self.crs, "bounds": query}
        for m in modalities or self.layers:
            image = self.layers[m][query][f"image_{m}"]
            sample[f"image_{m}"] = _fill_nodata(image)
        sample["label"] = torch.tensor(self.label_at(query), dtype=torch.long)
        return sample

    def __getitem__(self, query: GeoSlice) -> dict[str, Any]:
        """Read a window of every modality and its majority label."""
        return self.read(query)


def _fill_nodata(image: Tensor) -> Tensor:
    """Replace non-finite pixels by their band's mean over the window (0 if none)."""
    finite = torch.isfinite(image)
    if bool(finite.all()):
        return image
    zeroed = torch.where(finite, image, torch.zeros_like(image))
    mean = zeroed.sum(dim=(1, 2)) / finite.sum(dim=(1, 2)).clamp(min=1)
    return torch.where(finite, image, mean[:, None, None].expand_as(image))


class SceneWindows(Dataset[dict[str, Any]]):
    """A fixed list of scene windows as an ordinary (map-style) dataset.

    Samples hold ``image_<m>``, ``label`` and ``id`` (the window's lower-left corner), so
    the paired and unpaired samplers of :mod:`~discomkd_geo.data.samplers` apply.

    Args:
        patches: the scene.
        windows: window queries.
        targets: label of every window.
        modalities: modalities to read (default: all).
    """

    def __init__(self, patches: ScenePatches, windows: Sequence[GeoSlice],
                 targets: Sequence[int], modalities: Sequence[str] | None = None) -> None:
        self.patches = patches
        self.windows = list(windows)
        self.targets = list(targets)
        self.modalities = list(modalities or patches.layers)

    def __len__(self) -> int:
        """Number of windows."""
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Images, label and id of one window."""
        query = self.windows[index]
        sample = self.patches.read(query, self.modalities)
        x, y = query[0], query[1]  # type: ignore[index]
        return {**{f"image_{m}": sample[f"image_{m}"] for m in self.modalities},
                "label": sample["label"], "id": f"{x.start:.2f}_{y.start:.2f}"}


#: Scene layer class of each modality.
SCENE_LAYERS: dict[str, type[SceneRaster]] = {MS: Sentinel2Scene, SAR: Sentinel1Scene}


class SceneSplits:
    """Train/val/test windows of one scene for the DataModule (``data.dataset: scenes``).

    The scene is cut into non-overlapping ``patch_size`` windows (``GridGeoSampler``);
    windows with more than ``max_nodata`` nodata or without a labelled pixel are
    skipped, and the rest are split 70/10/20, stratified by majority class and seeded
    with ``split_seed``, so no pixel is in two splits.

    Args:
        config: the ``data`` section; uses ``scenes``, ``modalities`` (band selection)
            and ``split_seed``.

    Raises:
        ConfigError: a modality has no scene path or no scene reader, or no labels.
        InputFileError: a raster is unreadable or has the wrong band count.
        ValueError: no window has little enough nodata.
    """

    #: Units of the raw values of each modality, as checkpoints store them (the sensors').
    units: Mapping[str, str] = {m: SENSORS[m].units for m in (MS, SAR)}
    classes: Sequence[str] = EUROSAT_CLASSES
    colors: Sequence[tuple[int, int, int]] = EUROSAT_COLORS

    def __init__(self, config: DataConfig) -> None:
        sc = config.scenes
        if sc.labels is None:
            raise ConfigError("data.scenes.labels", "a land-cover raster is required")
        for m in config.modalities:
            if m not in SCENE_LAYERS:
                raise ConfigError(f"data.modalities.{m}",
                                  f"no scene reader; choose from {list(SCENE_LAYERS)}")
            if m not in sc.paths:
                raise ConfigError(f"data.scenes.paths.{m}", "missing scene path")
        layers: dict[str, SceneRaster] = {}
        for m, c in config.modalities.items():
            # Later layers are read on the first one's CRS and grid (warped on the fly).
            first = next(iter(layers.values()), None)
            grid = {} if first is None else {"crs": first.crs, "res": first.res}
            layers[m] = SCENE_LAYERS[m](sc.paths[m], bands=c.bands, **grid)
        first = next(iter(layers.values()))
        self.patches = ScenePatches(layers, LandCoverRaster(sc.labels, crs=first.crs,
                                                            res=first.res))
        #: Band names per modality.
        self.bands = {m: list(layer.bands) for m, layer in layers.items()}
        #: Ground sampling distance of the windows in CRS units.
        self.pixel_size = float(self.patches.res[0])
        grid = GridGeoSampler(self.patches, size=sc.patch_size, stride=sc.patch_size)
        windows = list(ValidWindowSampler(grid, self.patches.valid_area, sc.max_nodata))
        labels = [self.patches.label_at(w) for w in windows]
        kept = {str(i): label for i, label in enumerate(labels) if label != CLASS_NODATA}
        split = stratified_split(kept, (0.7, 0.1, 0.2), config.split_seed)
        self._split = {name: sorted(int(i) for i in ids) for name, ids in split.items()}
        self._windows, self._labels = windows, labels

    def subset(self, split: str, modalities: Sequence[str] | None = None) -> SceneWindows:
        """The windows of ``split`` (``train``, ``val``, ``test``), reading ``modalities``."""
        chosen = self._split[split]
        return SceneWindows(self.patches, [self._windows[i] for i in chosen],
                            [self._labels[i] for i in chosen], modalities)
