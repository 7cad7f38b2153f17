"""Lightning DataModule: train/val/test loaders of paired or unpaired MS/SAR batches.

Ties the data layer together for the trainer (:mod:`discomkd_geo.training.train`):
the datasets (:class:`~discomkd_geo.data.eurosat.EuroSATMSSAR` patches, or windows of
whole co-registered scenes from :mod:`discomkd_geo.data.scenes`), the samplers
(:mod:`discomkd_geo.data.samplers`), the per-band statistics of the training split
(:func:`~discomkd_geo.data.normalization.compute_stats`, one streaming pass) and the
Kornia augmentations (:mod:`discomkd_geo.data.transforms`).

Batch contract: every batch holds ``image_<m>`` (``(B, C, H, W)`` float32) and
``label_<m>`` (``(B,)`` int64) for every modality ``m``. Training batches are paired
(aligned samples, same labels) or unpaired (each modality drawn independently and
class-balanced, as the authors train); validation and test batches are paired. With
``data.mosaic`` training batches are mosaics of four patches (:mod:`.mosaic`), with
``mask_<m>`` label maps and ``label_<m>`` ``(B, 4)``. Loaders
return raw values; :meth:`MSSARDataModule.on_after_batch_transfer` normalises on the
batch's device and, while training, augments.

Batches of cached EuroSAT images are gathered whole: the loading process copies each image
of a batch out of the shared image cache (:mod:`.cache`) straight into the batch, and
DataLoader workers only read the images the cache lacks (:class:`~.batching.BatchLoader`);
the batches are those of a per-sample loader.

Distributed training: the loaders shard every split themselves
(:class:`~.samplers.RankShard`: each rank a disjoint, class-stratified share of the same
seeded epoch), so the trainer runs with Lightning's ``use_distributed_sampler=False``.
Loaders pin their batches' memory when the trainer runs on CUDA.
"""

import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from ..config import DataConfig
from ..constants import EUROSAT_COLORS
from ..errors import ConfigError, DatasetSplitError
from .batching import BatchedDataset, BatchLoader
from .eurosat import SPLIT_FRACTIONS, EuroSATMSSAR, EuroSATOptions, stratified_split
from .mosaic import PATCHES, MosaicDataset, MosaicSampler
from .normalization import BandStats, Normalize, compute_stats
from .samplers import (
    ClassBalancedSampler,
    PairedDataset,
    RankShard,
    UnpairedDataset,
    UnpairedSampler,
)
from .transforms import MultiModalAugmentation


class MSSARDataModule(L.LightningDataModule):
    """Paired or unpaired multi-modal batches with normalisation and augmentation.

    After :meth:`setup` (any stage) the attributes below describe the data; the trainer
    stores them in every checkpoint.

    Attributes:
        modalities: band names per modality, in channel order.
        stats: normalisation statistics per modality, from the training split.
        classes: class names, in label order.
        colors: display colour (RGB) per class.
        patch_size: side of the square patches in pixels.
        pixel_size: ground sampling distance in metres.
        units: units of each modality's raw values (``dn`` or ``dB``).
        gather_batches: load batches whole (:class:`~.batching.BatchLoader`); ``False``
            loads them sample by sample, as a plain DataLoader (the same batches; for
            comparisons).

    Args:
        config: the ``data`` section of the experiment config.
        seed: seed of the training shuffles, class-balanced draws and statistics subset.
        stats: statistics to use instead of computing them (e.g. from a run directory's
            ``stats/<m>.json``), per modality.

    Raises:
        ConfigError: no ``root`` (EuroSAT), or a scene setting is missing.
        DatasetSplitError: (from :meth:`setup`) a split is empty or lacks classes.
    """

    gather_batches = True

    def __init__(self, config: DataConfig, seed: int = 0,
                 stats: Mapping[str, BandStats] | None = None) -> None:
        super().__init__()
        self.config = config
        self.seed = seed
        self.modalities: dict[str, list[str]] = {}
        self.stats: dict[str, BandStats] = dict(stats or {})
        self.classes: list[str] = []
        self.colors: list[tuple[int, int, int]] = []
        self.patch_size = 0
        self.pixel_size = 0.0
        self.units: dict[str, str] = {}
        self.train_datasets: dict[str, Dataset[dict[str, Any]]] = {}
        self.train_dataset: Dataset[dict[str, Any]] | None = None
        self.val_dataset: Dataset[dict[str, Any]] | None = None
        self.test_dataset: Dataset[dict[str, Any]] | None = None
        self._normalize: dict[str, Normalize] = {}
        self._augment: MultiModalAugmentation | None = None
        # Generators of the training samplers, by offset, and states to give them (resume).
        self._generators: dict[int, torch.Generator] = {}
        self._generator_states: dict[int, Tensor] = {}

    # -- datasets -------------------------------------------------------------------
    def _eurosat(self, split: str, modalities: list[str], cache: bool = True) -> EuroSATMSSAR:
        """The split's dataset; its images held in memory if ``cache`` and it is small."""
        c = self.config
        if c.root is None:
            raise ConfigError("data.root", "no dataset root given; set it to the directory "
                                           "of the dataset")
        dataset = EuroSATMSSAR(
            c.root, split=split, modalities=modalities,  # type: ignore[arg-type]
            bands={m: c.modalities[m].bands for m in modalities},
            options=EuroSATOptions(c.layout, c.split, c.split_seed,
                                   drop_unpaired=c.drop_unpaired, pair_with=list(c.modalities)),
            download=c.download)
        if cache:
            dataset.cache_in_memory(c.cache_mib * 2**20)
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` and the statistics of the training split.

        The statistics always come from the training split (or the ``stats`` given), so
        ``setup("test")`` alone normalises exactly as training did. Repeated calls reuse
        what is built. Every split built is checked (:meth:`check_splits`).

        Args:
            stage: ``fit``, ``validate``, ``test``, ``predict`` or ``None`` (all).

        Raises:
            DatasetSplitError: a split is empty or lacks classes.
        """
        if self.config.dataset == "scenes":
            self._setup_scenes()
        else:
            self._setup_eurosat(stage)
        self.check_splits()
        if not self._normalize:
            self._normalize = {m: Normalize(self.stats[m]) for m in self.modalities}
            self._augment = MultiModalAugmentation(self.modalities, self.config.augment,
                                                   self.stats)

    def _setup_eurosat(self, stage: str | None) -> None:
        names = list(self.config.modalities)
        if not self.modalities:
            self.classes = list(EuroSATMSSAR.classes)
            self.colors = list(EUROSAT_COLORS)
            self.patch_size = 64
            self.pixel_size = EuroSATMSSAR.pixel_size
            self.units = {m: EuroSATMSSAR.units[m] for m in names}
            # One dataset per modality: unpaired training draws from each set on its own,
            # and the statistics read a single modality's files.
            # Paired training reads them only for the statistics: not worth a cache.
            self.train_datasets = {m: self._eurosat("train", [m], not self.config.paired)
                                   for m in names}
            self.modalities = {m: list(ds.bands[m]) for m, ds in self.train_datasets.items()}
            self._compute_missing_stats()
        if stage in (None, "fit") and self.train_dataset is None:
            if self.config.paired:
                self.train_dataset = PairedDataset(self._eurosat("train", names), names)
            else:
                self.train_dataset = UnpairedDataset(self.train_datasets)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = PairedDataset(self._eurosat("val", names), names)
        if stage in (None, "test") and self.test_dataset is None:
            self.test_dataset = PairedDataset(self._eurosat("test", names), names)

    def _setup_scenes(self) -> None:
        from .scenes import SceneSplits  # the geo stack is only needed for scenes

        if self.train_dataset is not None:
            return
        splits = SceneSplits(self.config)
        self.classes, self.colors = list(splits.classes), list(splits.colors)
        self.patch_size = self.config.scenes.patch_size
        self.pixel_size = splits.pixel_size
        self.modalities = splits.bands
        self.units = {m: splits.units[m] for m in self.modalities}
        self.train_datasets = {m: splits.subset("train", [m]) for m in self.modalities}
        self._compute_missing_stats()
        self.train_dataset = (PairedDataset(splits.subset("train"), list(self.modalities))
                              if self.config.paired else UnpairedDataset(self.train_datasets))
        self.val_dataset = PairedDataset(splits.subset("val"), list(self.modalities))
        self.test_dataset = PairedDataset(splits.subset("test"), list(self.modalities))

    def check_splits(self) -> None:
        """Check that each split built can serve its purpose, before any training.

        Training needs every class of the dataset (class-balanced draws, a classifier
        for every class) and the test split too (macro F1, confusion matrices); the
        validation split (model selection by weighted F1) needs at least one image.

        Raises:
            DatasetSplitError: naming the split and its shortfall.
        """
        splits: dict[str, list[Dataset[dict[str, Any]]]] = {
            "train": list(self.train_datasets.values()),
            "val": [self.val_dataset] if self.val_dataset is not None else [],
            "test": [self.test_dataset] if self.test_dataset is not None else []}
        targets = {name: [_targets(getattr(ds, "dataset", ds)) for ds in datasets]
                   for name, datasets in splits.items()}
        counts = Counter(label for lists in targets.values() for labels in lists[:1]
                         for label in labels)
        for name, lists in targets.items():
            for found in map(set, lists):
                if not found:
                    shortfall = "is empty (short by 1 image)"
                elif name != "val" and (missing := sorted(set(counts) - found)):
                    shortfall = (f"has no {', '.join(self.classes[c] for c in missing)} "
                                 f"images (short by {len(missing)} of {len(counts)} classes)")
                else:
                    continue
                raise DatasetSplitError(self._root(), f"the {name} split {shortfall}"
                                                      f"{self._split_hint(name, counts)}")

    def _root(self) -> str:
        """The dataset root (EuroSAT) or label raster (scenes), for error messages."""
        if self.config.dataset == "scenes":
            return self.config.scenes.labels or "data.scenes.labels"
        return self.config.root or "data.root"

    def _split_hint(self, split: str, counts: Counter[int]) -> str:
        """How many images per class the random split needs to give ``split`` one of each."""
        if self.config.dataset != "eurosat" or self.config.split != "random":
            return "; add images"
        need = next(n for n in range(1, 100)
                    if stratified_split(dict.fromkeys(map(str, range(n)), 0),
                                        SPLIT_FRACTIONS, 0)[split])
        return (f"; the random {'/'.join(str(round(100 * f)) for f in SPLIT_FRACTIONS)} "
                f"split needs at least {need} images per class, the smallest class has "
                f"{min(counts.values(), default=0)}")

    def _compute_missing_stats(self) -> None:
        """Statistics of each modality's training images not given to the constructor."""
        norm = self.config.normalization
        for m, bands in self.modalities.items():
            if m in self.stats:
                self.stats[m] = self.stats[m].select(bands)
                continue
            self.stats[m] = compute_stats(
                self.train_datasets[m], m, bands, norm.method, norm.low, norm.high,
                norm.max_samples, seed=self.seed,
                batch_size=min(self.config.batch_size, 64), num_workers=self._workers(),
                progress=False)

    # -- loaders --------------------------------------------------------------------
    def _workers(self) -> int:
        return min(self.config.num_workers, os.cpu_count() or 1)

    def _loader(self, dataset: Dataset[dict[str, Any]], sampler: Sampler[Any],
                batch_size: int | None = None, drop_last: bool = False,
                batched: bool | None = None) -> DataLoader[Any]:
        """Batches of ``sampler``'s draws; ``batched`` (default :attr:`gather_batches`): whole.

        A batched loader (:class:`~.batching.BatchLoader`) yields the batches of the plain
        one; those whose images are cached are copied from the caches straight into the
        batch, in this process, instead of sample by sample in a worker, stacked, and
        sent back through shared memory.
        """
        workers = self._workers()
        batch_size = batch_size or self.config.batch_size
        # Pinned (page-locked) batches copy to a GPU asynchronously; on the CPU pinning
        # only costs a copy.
        cuda = self.trainer is not None and isinstance(self.trainer.accelerator,
                                                       CUDAAccelerator)
        # Persistent workers keep their open datasets across epochs: re-forking them each
        # epoch costs more than an epoch of these small patches on a 2-core machine.
        options: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0,
                                   "pin_memory": cuda}
        if not (self.gather_batches if batched is None else batched):
            return DataLoader(dataset, sampler=sampler, batch_size=batch_size,
                              drop_last=drop_last, **options)
        return BatchLoader(BatchedDataset(dataset), batch_size=None,
                           sampler=BatchSampler(sampler, batch_size, drop_last), **options)

    def replicas(self) -> tuple[int, int]:
        """``(world size, global rank)`` of the trainer using this DataModule; alone ``(1, 0)``."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _shard(self, sampler: Sampler[Any], targets: list[int] | None) -> Sampler[Any]:
        """The rank's share of ``sampler`` (the sampler itself in a single process)."""
        world, rank = self.replicas()
        return sampler if world == 1 else RankShard(sampler, world, rank, targets)

    def _generator(self, offset: int) -> torch.Generator:
        generator = torch.Generator().manual_seed(self.seed * 1000 + offset)
        if offset in self._generator_states:
            generator.set_state(self._generator_states[offset])
        self._generators[offset] = generator
        return generator

    def state_dict(self) -> dict[str, Any]:
        """The training samplers' random states (Lightning puts them in checkpoints)."""
        return {"generators": {k: g.get_state() for k, g in self._generators.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training samplers' draws where a checkpoint left them (resume)."""
        self._generator_states = dict(state_dict.get("generators", {}))

    def epoch_size(self) -> int:
        """Training samples per epoch.

        EuroSAT: the training set (unpaired: the largest modality set); scenes:
        ``scenes.samples_per_epoch`` windows.
        """
        if self.config.dataset == "scenes":
            return self.config.scenes.samples_per_epoch
        return max(len(ds) for ds in self.train_datasets.values())  # type: ignore[arg-type]

    def train_batching(self, world: int | None = None) -> tuple[int, int]:
        """Items per epoch and per training batch: patches, or mosaics (``data.mosaic``).

        Per rank under distributed training: the epoch divided by the ``world`` ranks
        (default: the trainer's), rounded up.
        """
        size = -(-self.epoch_size() // (world or self.replicas()[0]))
        if not self.config.mosaic:
            return size, self.config.batch_size
        return size // PATCHES, max(1, self.config.batch_size // PATCHES)

    def train_batches(self, world: int | None = None) -> int:
        """Training batches per epoch and rank, with ``world`` ranks (default: the trainer's).

        The last batch is dropped if of one item (:func:`drops_last`).
        """
        items, batch = self.train_batching(world)
        return -(-items // batch) - drops_last(items, batch)

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled pairs, or per modality independent class-balanced draws.

        The last batch is dropped only when it would hold a single sample (batch
        normalisation needs two in training, :func:`drops_last`): every other sample
        of the epoch is trained, as the authors' script trains them.
        """
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        size = self.epoch_size()
        items, batch = self.train_batching()
        if self.config.paired:
            pairs = getattr(self.train_dataset, "dataset", self.train_dataset)
            sampler: Sampler[Any] = self._shard(
                RandomSampler(self.train_dataset, num_samples=size, generator=self._generator(0)),
                _targets(pairs))
        else:
            sampler = UnpairedSampler({
                m: self._shard(ClassBalancedSampler(_targets(ds), size, self._generator(i + 1)),
                               _targets(ds))
                for i, (m, ds) in enumerate(self.train_datasets.items())})
        if not self.config.mosaic:
            return self._loader(self.train_dataset, sampler, batch, drops_last(items, batch))
        mosaics = MosaicDataset(self.train_dataset, list(self.modalities), self.patch_size,
                                self.config.paired)
        return self._loader(mosaics, MosaicSampler(sampler, self._generator(-1)), batch,
                            drops_last(items, batch), batched=False)

    def val_dataloader(self) -> DataLoader[Any]:
        """Paired validation batches in a fixed order."""
        if self.val_dataset is None:
            self.setup("validate")
        assert self.val_dataset is not None
        return self._eval_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader[Any]:
        """Paired test batches in a fixed order."""
        if self.test_dataset is None:
            self.setup("test")
        assert self.test_dataset is not None
        return self._eval_loader(self.test_dataset)

    def _eval_loader(self, dataset: Dataset[dict[str, Any]]) -> DataLoader[Any]:
        """Evaluation batches in order; under DDP each rank a share, the last few padded.

        Every rank must run the same number of batches (DDP synchronises the batch-norm
        buffers at every forward), so up to ``world size - 1`` images are evaluated twice,
        as with Lightning's own ``DistributedSampler``.
        """
        return self._loader(dataset, self._shard(SequentialSampler(dataset), None))

    # -- on the device --------------------------------------------------------------
    def preprocess(self, batch: dict[str, Any], augment: bool) -> dict[str, Any]:
        """Normalise every ``image_<m>`` on its device; augment if asked.

        Args:
            batch: a collated batch (raw values).
            augment: apply the training augmentations (paired batches share geometry
                when the config says so).

        Returns:
            A new batch dict; other keys pass through.
        """
        out = dict(batch)
        for m, normalize in self._normalize.items():
            image: Tensor = batch[f"image_{m}"]
            out[f"image_{m}"] = normalize.to(image.device)(image)
        if augment and self._augment is not None:
            device = out[f"image_{next(iter(self._normalize))}"].device
            out = self._augment.to(device)(out, paired=self.config.paired)
        return out

    def on_after_batch_transfer(self, batch: dict[str, Any],
                                dataloader_idx: int) -> dict[str, Any]:
        """Normalise (always) and augment (training only) after the move to the device."""
        training = self.trainer is not None and self.trainer.training
        return self.preprocess(batch, augment=training)


def drops_last(samples: int, batch_size: int) -> bool:
    """Whether an epoch of ``samples`` drops its last batch: only when it would hold one.

    A training batch of one sample breaks batch normalisation; a larger incomplete batch
    is trained. An epoch smaller than a batch is one batch (of one, it fails loudly).

    Args:
        samples: samples (or mosaics) drawn per epoch.
        batch_size: samples (or mosaics) per batch.
    """
    return samples > batch_size and samples % batch_size == 1


def _targets(dataset: Dataset[dict[str, Any]]) -> list[int]:
    """Class label of every sample of a dataset with a ``targets`` attribute."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{type(dataset).__name__} has no targets to balance classes with")
    return list(targets)
