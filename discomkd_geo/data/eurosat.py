"""EuroSat-MS-SAR: EuroSAT Sentinel-2 patches paired with their EuroSAT-SAR twins.

The paired dataset of the DisCoM-KD paper (Ienco & Fraga Dantas, 2024): EuroSAT MS
(Helber et al., 2019; 27,000 13-band uint16 GeoTIFFs, 64x64 px at 10 m) and
EuroSAT-SAR (Wang et al., FG-MAE, 2023; one dual-pol VV/VH Sentinel-1 GeoTIFF in dB per
EuroSAT image, same file name). Two published on-disk layouts are read:

* ``eurosat``: the EuroSAT download (``ds/images/remote_sensing/otherDatasets/sentinel_2/
  tif/<Class>/<Class>_<n>.tif``, split lists ``eurosat-{train,val,test}.txt`` at the root)
  beside the EuroSAT-SAR download (``EuroSAT-SAR/<Class>/<Class>_<n>.tif``);
* ``copernicus``: Copernicus-Bench (Wang et al., 2025) ``eurosat_s2/all_imgs/<Class>/...``
  and ``eurosat_s1/all_imgs/<Class>/...`` with split lists in ``eurosat_s2/``.

The dataset is first in the data flow: it returns raw values (DN, dB) as float32;
normalisation and augmentation happen on batches in the DataModule
(:mod:`discomkd_geo.data.datamodule`).
"""

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import rasterio
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchgeo.datasets import NonGeoDataset
from torchgeo.datasets.utils import download_and_extract_archive, download_url, extract_archive

from ..constants import EUROSAT_CLASSES, MS, S2_RGB_BANDS, SAR
from ..errors import DatasetNotFoundError, InputFileError
from .cache import SharedImageCache, cached_dtype
from .sensors import SENSORS

Split = Literal["train", "val", "test"]

#: The splits, in order.
SPLITS: tuple[Split, ...] = ("train", "val", "test")

#: Train/val/test fractions of the random split (the paper's 70/10/20).
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


class Download(NamedTuple):
    """One published file: where it lives, its name and MD5 (``None``: not published)."""

    url: str
    filename: str
    md5: str | None


@dataclass(frozen=True)
class EuroSATOptions:
    """Which images make a split of :class:`EuroSATMSSAR`: the layout, the split, the pairing.

    Args:
        layout: ``eurosat``, ``copernicus`` or ``auto`` (detected from the directories).
        split_mode: ``random`` (seeded stratified) or ``published`` (the split lists).
        split_seed: seed of the random split.
        split_fractions: train/val/test fractions of the random split.
        drop_unpaired: skip images whose twin in another modality of ``pair_with`` is
            missing, instead of raising.
        pair_with: modalities every image must have a twin in (default: the dataset's
            ``modalities``); a single-modality view of a paired dataset passes all of
            them, so it holds the same images as the paired view.

    Raises:
        ValueError: unknown split mode.
    """

    layout: Literal["auto", "eurosat", "copernicus"] = "auto"
    split_mode: Literal["random", "published"] = "random"
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS
    drop_unpaired: bool = False
    pair_with: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.split_mode not in ("random", "published"):
            raise ValueError(f"split_mode must be 'random' or 'published', "
                             f"got {self.split_mode!r}")
        if self.pair_with is not None:  # a tuple: the options stay hashable
            object.__setattr__(self, "pair_with", tuple(self.pair_with))


#: The paper's options (a default argument value: the object is frozen).
DEFAULT_OPTIONS = EuroSATOptions()


class EuroSATMSSAR(NonGeoDataset):
    """EuroSat-MS-SAR: paired Sentinel-2 MS and Sentinel-1 SAR land-cover patches.

    Each MS image is paired with the SAR image of the same file name. A sample holds, for
    every selected modality ``m``, ``image_<m>``: a float32 ``(C, H, W)`` tensor of raw
    values (MS: L1C digital numbers; SAR: backscatter in dB), plus ``label`` (int64
    scalar, index into :attr:`classes`) and ``id`` (the file stem, e.g. ``Forest_12``).

    Splits are either the published lists (``split_mode="published"``) or a seeded
    stratified 70/10/20 train/val/test split as in the paper (``split_mode="random"``),
    computed over every image id found in any modality, so an image falls in the same
    split whichever modalities are loaded.

    If you use this dataset in your research, please cite:

    * EuroSAT: https://doi.org/10.1109/JSTARS.2019.2918242
    * EuroSAT-SAR (FG-MAE): https://arxiv.org/abs/2310.18653
    * Copernicus-Bench: https://arxiv.org/abs/2503.11849
    * DisCoM-KD: https://arxiv.org/abs/2408.07080

    Args:
        root: directory holding the data in one of the published layouts.
        split: ``train``, ``val`` or ``test``.
        modalities: modalities to load, e.g. ``("sar",)`` for a SAR-only view (no pairing
            is then required).
        bands: band names to keep per modality, in output channel order (default: all).
        options: the layout, how the split is drawn and how images are paired
            (default: :class:`EuroSATOptions`'s, the paper's random 70/10/20 split).
        transforms: function applied to each sample dict.
        download: download the data into ``root`` if it is missing.
        checksum: verify the MD5 of downloaded archives where one is published.

    Raises:
        DatasetNotFoundError: ``root``, an image directory or a split list is missing.
        InputFileError: unpaired images (without ``options.drop_unpaired``), or an image
            with the wrong band count or dtype, or unreadable.
        ValueError: unknown split, layout, modality or band name.
    """

    #: Land-cover classes, in label order.
    classes: ClassVar[tuple[str, ...]] = EUROSAT_CLASSES

    #: Band names of each modality's files, in file order.
    all_bands: ClassVar[dict[str, tuple[str, ...]]] = {m: SENSORS[m].bands for m in (MS, SAR)}

    #: Data type of each modality's files.
    dtypes: ClassVar[dict[str, str]] = {MS: "uint16", SAR: "float32"}

    #: Units of each modality's raw values, as checkpoints store them (the sensors').
    units: ClassVar[dict[str, str]] = {m: SENSORS[m].units for m in (MS, SAR)}

    #: Ground sampling distance in metres.
    pixel_size: ClassVar[float] = 10.0

    #: Image directory of each modality (with one sub-directory per class), per layout.
    directories: ClassVar[dict[str, dict[str, str]]] = {
        "eurosat": {
            MS: os.path.join("ds", "images", "remote_sensing", "otherDatasets",
                             "sentinel_2", "tif"),
            SAR: "EuroSAT-SAR",
        },
        "copernicus": {
            MS: os.path.join("eurosat_s2", "all_imgs"),
            SAR: os.path.join("eurosat_s1", "all_imgs"),
        },
    }

    #: Published split lists, relative to ``root``, per layout (first found is used).
    split_lists: ClassVar[dict[str, tuple[str, ...]]] = {
        "eurosat": ("eurosat-{split}.txt",),
        "copernicus": (os.path.join("eurosat_s2", "eurosat-{split}.txt"),
                       os.path.join("eurosat_s1", "eurosat-{split}.txt")),
    }

    _eurosat_url = ("https://hf.co/datasets/torchgeo/eurosat/resolve/"
                    "1ce6f1bfb56db63fd91b6ecc466ea67f2509774c/")
    _copernicus_url = ("https://hf.co/datasets/wangyi111/Copernicus-Bench/resolve/"
                       "9d252acd3aa0e3da3128e05c6f028647f0e48e5f/l2_eurosat_s1s2/")

    #: Archives per layout, extracted into ``root``. TorchGeo's EuroSAT MS mirror and the
    #: FG-MAE authors' EuroSAT-SAR archive (pinned commit; no MD5 published) or the two
    #: Copernicus-Bench archives (MD5s as in TorchGeo's ``CopernicusBenchEuroSATS*``).
    archives: ClassVar[dict[str, tuple[Download, ...]]] = {
        "eurosat": (
            Download(_eurosat_url + "EuroSATallBands.zip", "EuroSATallBands.zip",
                     "5ac12b3b2557aa56e1826e981e8e200e"),
            Download("https://hf.co/datasets/wangyi111/EuroSAT-SAR/resolve/"
                     "c60e57b0c02e53348f69070ca317c7450f650d92/EuroSAT-SAR.zip",
                     "EuroSAT-SAR.zip", None),
        ),
        "copernicus": (
            Download(_copernicus_url + "eurosat_s2.zip", "eurosat_s2.zip",
                     "b2be02ca9767554c717f2e9bd15bbd23"),
            Download(_copernicus_url + "eurosat_s1.zip", "eurosat_s1.zip",
                     "e7e7f8fc68fc55a7a689cb654912ff3f"),
        ),
    }

    #: Split list files of the ``eurosat`` layout (the ``copernicus`` archives hold theirs).
    split_downloads: ClassVar[tuple[Download, ...]] = (
        Download(_eurosat_url + "eurosat-train.txt", "eurosat-train.txt",
                 "908f142e73d6acdf3f482c5e80d851b1"),
        Download(_eurosat_url + "eurosat-val.txt", "eurosat-val.txt",
                 "95de90f2aa998f70a3b2416bfe0687b4"),
        Download(_eurosat_url + "eurosat-test.txt", "eurosat-test.txt",
                 "7ae5ab94471417b6e315763121e67c5f"),
    )

    #: Layout used when downloading with ``layout="auto"``.
    default_download_layout = "eurosat"

    def __init__(
        self,
        root: str | os.PathLike[str] = "data",
        split: Split = "train",
        modalities: Sequence[str] = (MS, SAR),
        bands: Mapping[str, Sequence[str] | None] | None = None,
        options: EuroSATOptions = DEFAULT_OPTIONS,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        download: bool = False,
        checksum: bool = False,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        self.pair_with = list(options.pair_with or modalities)
        unknown = [m for m in (*modalities, *self.pair_with) if m not in self.all_bands]
        if unknown or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of "
                             f"{list(self.all_bands)}, got {list(modalities)}")
        self.root = os.fspath(root)
        self.split = split
        self.modalities = list(modalities)
        self.bands = {m: self._validate_bands(m, (bands or {}).get(m)) for m in self.modalities}
        self.split_mode = options.split_mode
        self.transforms = transforms
        self.download = download
        self.checksum = checksum

        self.layout = self._verify(options.layout)
        found = {m: self._scan(m) for m in self.all_bands
                 if os.path.isdir(self._directory(m))}
        every = {i: label for f in found.values() for i, (label, _) in f.items()}

        def members(name: str) -> set[str]:
            if options.split_mode == "published":
                return self._published_ids(name)
            return stratified_split(every, options.split_fractions, options.split_seed)[name]

        needed = dict.fromkeys([*self.modalities, *self.pair_with])
        in_split = members(split)
        files = {m: {i: v for i, v in found[m].items() if i in in_split} for m in needed}
        self.ids = self._pair(files, options.drop_unpaired, found, members)
        first = self.modalities[0]
        #: Label of every sample, for samplers.
        self.targets: list[int] = [files[first][i][0] for i in self.ids]
        #: File of every sample, per modality.
        self.paths: dict[str, list[str]] = {m: [files[m][i][1] for i in self.ids]
                                            for m in self.modalities}
        #: Decoded images per modality, once :meth:`cache_in_memory` says so.
        self.caches: dict[str, SharedImageCache] = {}
        for m in self.modalities:  # fail early, before training starts, on bad files
            if self.paths[m]:
                with self._open(self.paths[m][0], m):
                    pass

    # -- discovery ------------------------------------------------------------------
    def _validate_bands(self, modality: str, bands: Sequence[str] | None) -> list[str]:
        available = self.all_bands[modality]
        if bands is None:
            return list(available)
        wrong = [b for b in bands if b not in available]
        if wrong or not bands:
            raise ValueError(f"invalid {modality} bands {list(bands)}: choose from "
                             f"{list(available)}")
        return list(bands)

    def _directory(self, modality: str, layout: str | None = None) -> str:
        return os.path.join(self.root, self.directories[layout or self.layout][modality])

    def _detect_layout(self) -> str | None:
        for layout, dirs in self.directories.items():
            if any(os.path.isdir(os.path.join(self.root, d)) for d in dirs.values()):
                return layout
        return None

    def _verify(self, layout: str) -> str:
        """Resolve the layout, downloading the data if asked; return the layout."""
        if layout not in ("auto", *self.directories):
            raise ValueError(f"layout must be 'auto' or one of {list(self.directories)}, "
                             f"got {layout!r}")
        if layout == "auto":
            detected = self._detect_layout()
            if detected is None and not self.download:
                tried = " nor ".join(" + ".join(d.values()) for d in self.directories.values())
                raise DatasetNotFoundError(self.root, f"EuroSat-MS-SAR (neither {tried})")
            layout = detected or self.default_download_layout
        needed = dict.fromkeys([*self.modalities, *self.pair_with])
        missing = [m for m in needed if not os.path.isdir(self._directory(m, layout))]
        if missing and self.download:
            self._download(layout)
        for m in needed:
            directory = self._directory(m, layout)
            if not os.path.isdir(directory):
                raise DatasetNotFoundError(self.root, f"{m} images ({directory})")
        return layout

    def _download(self, layout: str) -> None:
        """Fetch and extract the layout's archives (and split lists) into ``root``."""
        for item in self.archives[layout]:
            if os.path.isfile(os.path.join(self.root, item.filename)):
                extract_archive(os.path.join(self.root, item.filename), self.root)
            else:
                download_and_extract_archive(item.url, self.root, filename=item.filename,
                                             md5=item.md5 if self.checksum else None)
        if layout == "eurosat":
            for item in self.split_downloads:
                if not os.path.isfile(os.path.join(self.root, item.filename)):
                    download_url(item.url, self.root, filename=item.filename,
                                 md5=item.md5 if self.checksum else None)

    def _scan(self, modality: str) -> dict[str, tuple[int, str]]:
        """Image id -> (label, path) of every GeoTIFF in the modality's class folders."""
        directory = self._directory(modality)
        found: dict[str, tuple[int, str]] = {}
        for label, name in enumerate(self.classes):
            class_dir = os.path.join(directory, name)
            if not os.path.isdir(class_dir):
                continue
            for entry in sorted(os.listdir(class_dir)):
                stem, ext = os.path.splitext(entry)
                if ext.lower() in (".tif", ".tiff"):
                    found[stem] = (label, os.path.join(class_dir, entry))
        return found

    def _published_ids(self, split: str) -> set[str]:
        """Image ids of a published split list (``.jpg``/``.tif`` suffixes ignored)."""
        candidates = [os.path.join(self.root, p.format(split=split))
                      for p in self.split_lists[self.layout]]
        for path in candidates:
            if os.path.isfile(path):
                with open(path) as f:
                    return {os.path.splitext(os.path.basename(line.strip()))[0]
                            for line in f if line.strip()}
        raise DatasetNotFoundError(self.root, f"split list {candidates[0]}")

    def _pair(self, files: Mapping[str, Mapping[str, tuple[int, str]]], drop_unpaired: bool,
              found: Mapping[str, Mapping[str, tuple[int, str]]],
              members: Callable[[str], set[str]]) -> list[str]:
        """Sorted ids of the split present in every modality of ``files``.

        Unpaired ones are dropped, or raise an error that counts them in every split.
        """
        every = set().union(*files.values())
        paired = set.intersection(*(set(f) for f in files.values()))
        unpaired = sorted(every - paired)
        if unpaired and not drop_unpaired:
            example = unpaired[0]
            have = next(m for m in files if example in files[m])
            lacking = [m for m in files if example not in files[m]]
            everywhere = set().union(*(found[m] for m in files))
            alone = everywhere - set.intersection(*(set(found[m]) for m in files))
            counts = []
            for name in SPLITS:
                try:
                    counts.append(f"{len(alone & members(name))} in {name}")
                except DatasetNotFoundError:  # a published list that is not there
                    continue
            raise InputFileError(
                files[have][example][1],
                f"has no {'/'.join(lacking)} twin; unpaired images: "
                f"{', '.join(counts)}; pass drop_unpaired=True (config key "
                "data.drop_unpaired) to skip them", param="drop_unpaired")
        return sorted(paired)

    # -- reading --------------------------------------------------------------------
    @contextmanager
    def _open(self, path: str, modality: str) -> Iterator[rasterio.DatasetReader]:
        """Open ``path``, checking that it has the modality's band count and dtype."""
        try:
            with rasterio.open(path) as src:
                expected = self.all_bands[modality]
                if src.count != len(expected):
                    raise InputFileError(path, f"has {src.count} bands, expected {len(expected)}"
                                         f" {modality} bands ({', '.join(expected)})")
                if src.dtypes[0] != self.dtypes[modality]:
                    raise InputFileError(path, f"has dtype {src.dtypes[0]}, expected "
                                         f"{self.dtypes[modality]} for {modality}")
                yield src
        except rasterio.errors.RasterioIOError as err:
            raise InputFileError(path, f"unreadable raster ({str(err).splitlines()[0]})") \
                from err

    def _read(self, path: str, modality: str) -> Tensor:
        """The modality's selected bands of ``path`` as ``(C, H, W)`` of the file's dtype.

        Samples are these values as float32; a cache keeps MS digital numbers as read
        (uint16: half the bytes of float32, same values).
        """
        indexes = [self.all_bands[modality].index(b) + 1 for b in self.bands[modality]]
        with self._open(path, modality) as src:
            return torch.from_numpy(src.read(indexes))

    def cache_in_memory(self, max_bytes: int) -> bool:
        """Keep every decoded image in shared memory if the split takes at most ``max_bytes``.

        Each image is then read from its GeoTIFF once (the first time it is asked for,
        by any DataLoader worker) and copied from memory afterwards; samples are the same.
        The size is counted from the first image of each modality, in the dtype its
        cache keeps (:func:`~.cache.cached_dtype` of the file's: MS uint16, SAR float32).

        Args:
            max_bytes: the most memory the split's images may take.

        Returns:
            Whether the images are cached.
        """
        if not len(self):
            return False
        shapes, dtypes = {}, {}
        for m in self.modalities:
            with self._open(self.paths[m][0], m) as src:
                shapes[m] = (len(self.bands[m]), src.height, src.width)
                dtypes[m] = cached_dtype(src.dtypes[0])
        size = sum(SharedImageCache.nbytes(len(self), shapes[m], dtypes[m]) for m in shapes)
        if not SharedImageCache.fits(size, max_bytes):
            return False
        self.caches = {m: SharedImageCache(len(self), shapes[m], dtypes[m]) for m in shapes}
        return True

    def _image(self, index: int, modality: str) -> Tensor:
        path = self.paths[modality][index]
        cache = self.caches.get(modality)
        if cache is None:
            return self._read(path, modality).float()
        return cache.get(index, lambda: self._read(path, modality))

    def __len__(self) -> int:
        """Number of samples in the split."""
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample at ``index``.

        Returns:
            ``image_<m>`` (float32 ``(C, H, W)``, raw values) per modality, ``label``
            (int64 scalar) and ``id`` (file stem).

        Raises:
            InputFileError: a file is unreadable or has the wrong band count or dtype.
        """
        sample: dict[str, Any] = {
            f"image_{m}": self._image(index, m) for m in self.modalities
        }
        sample["label"] = torch.tensor(self.targets[index], dtype=torch.long)
        sample["id"] = self.ids[index]
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    # -- display --------------------------------------------------------------------
    def plot(self, sample: Mapping[str, Any], show_titles: bool = True,
             suptitle: str | None = None) -> Figure:
        """Show a sample: the MS natural-colour composite and each SAR band.

        The MS panel uses B04/B03/B02 (when selected) with a 2-98 percentile stretch per
        channel; SAR bands are shown in grey with the same stretch.

        Args:
            sample: a sample from :meth:`__getitem__`, optionally with ``prediction``.
            show_titles: title the panels and show the label (and prediction).
            suptitle: optional figure title.

        Returns:
            The figure.
        """
        panels: list[tuple[str, np.ndarray]] = []
        if MS in self.modalities and set(S2_RGB_BANDS) <= set(self.bands[MS]):
            rgb = [self.bands[MS].index(b) for b in S2_RGB_BANDS]
            image = np.asarray(sample[f"image_{MS}"])[rgb].transpose(1, 2, 0)
            panels.append(("MS (B04/B03/B02)", _stretch(image)))
        if SAR in self.modalities:
            for i, band in enumerate(self.bands[SAR]):
                panels.append((f"SAR {band} (dB)", _stretch(np.asarray(sample[f"image_{SAR}"])[i])))
        fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3 * max(1, len(panels)), 3.3),
                                 squeeze=False)
        for ax, (title, image) in zip(axes[0], panels, strict=False):
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            if show_titles:
                ax.set_title(title, fontsize=9)
        for ax in axes[0]:
            ax.axis("off")
        if show_titles:
            text = f"Label: {self.classes[int(sample['label'])]}"
            if "prediction" in sample:
                text += f"  Prediction: {self.classes[int(sample['prediction'])]}"
            fig.text(0.5, 0.02, text, ha="center")
        if suptitle is not None:
            fig.suptitle(suptitle)
        return fig


def _stretch(image: np.ndarray) -> np.ndarray:
    """Rescale each channel to [0, 1] between its 2nd and 98th percentiles."""
    low = np.percentile(image, 2, axis=(0, 1), keepdims=True)
    high = np.percentile(image, 98, axis=(0, 1), keepdims=True)
    return np.clip((image - low) / np.maximum(high - low, 1e-6), 0.0, 1.0)


def stratified_split(labels: Mapping[str, int], fractions: Sequence[float],
                      seed: int) -> dict[str, set[str]]:
    """Seeded split of ids into train/val/test with the same class proportions.

    Ids are sorted before shuffling, so the split depends only on the set of ids, the
    fractions and the seed.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    by_class: dict[int, list[str]] = {}
    for i in sorted(labels):
        by_class.setdefault(labels[i], []).append(i)
    for label in sorted(by_class):
        ids = [by_class[label][j] for j in rng.permutation(len(by_class[label]))]
        n_train = round(fractions[0] * len(ids))
        n_val = round(fractions[1] * len(ids))
        out["train"].update(ids[:n_train])
        out["val"].update(ids[n_train:n_train + n_val])
        out["test"].update(ids[n_train + n_val:])
    return out
