"""How training batches are drawn: paired, or unpaired and class-balanced per modality.

DisCoM-KD does not need aligned pairs: the authors shuffle the MS and the SAR training
sets independently, so a batch holds B MS samples and B *different* SAR samples
(Ienco & Fraga Dantas, 2024). This module offers both ways with standard PyTorch
DataLoaders (workers included):

* paired: :class:`PairedDataset` over a dataset that returns every modality of a sample
  (e.g. :class:`~discomkd_geo.data.eurosat.EuroSATMSSAR`), with any ordinary sampler;
* unpaired: :class:`UnpairedDataset` over one dataset per modality (the sets may have
  different sizes), indexed by tuples of per-modality indices that
  :class:`UnpairedSampler` draws independently, each modality through its own sampler,
  typically a :class:`ClassBalancedSampler`.

Both produce the DataModule batch contract: ``image_<m>`` and ``label_<m>`` for every
modality ``m``. Under distributed training (DDP, one process per device) each of these
samplers is wrapped in a :class:`RankShard`: every rank draws the same epoch from the same
seeded generator and keeps a disjoint, class-stratified share of it, so the class balance
of the draw holds on every rank. For scene rasters, :class:`ValidWindowSampler` wraps a TorchGeo
``GeoSampler`` and skips windows that are mostly nodata.
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import shapely
import torch
from shapely.geometry.base import BaseGeometry
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchgeo.datasets.utils import GeoSlice
from torchgeo.samplers import GeoSampler

from .batching import cached_labels, fill_caches, live_caches


class PairedDataset(Dataset[dict[str, Any]]):
    """Aligned samples in the batch contract: the shared ``label`` copied to ``label_<m>``.

    Args:
        dataset: returns ``image_<m>`` for every modality, ``label`` and ``id``.
        modalities: the modality names.
    """

    def __init__(self, dataset: Dataset[dict[str, Any]], modalities: Sequence[str]) -> None:
        self.dataset = dataset
        self.modalities = list(modalities)

    def __len__(self) -> int:
        """Number of pairs."""
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The pair at ``index``, with ``label_<m>`` for every modality."""
        sample = dict(self.dataset[index])
        for m in self.modalities:
            sample[f"label_{m}"] = sample["label"]
        return sample

    def fill(self, indices: Sequence[int]) -> bool:
        """Read the images of ``indices`` not yet cached; whether :meth:`gather` can now serve them.

        False when the dataset's images are not in shared caches here (no cache, a
        spawned worker's copy, ``transforms``, an image of another shape).
        """
        caches = live_caches(self.dataset)
        return caches is not None and fill_caches(self.dataset, caches.values(), indices)

    def gather(self, indices: Sequence[int], pin: bool = False) -> dict[str, Any]:
        """The pairs of ``indices`` collated, from the caches (:meth:`fill` first).

        The same batch as ``default_collate([self[i] for i in indices])``, each image
        copied once, straight into the batch; ``pin``: in page-locked memory.
        """
        dataset = self.dataset
        caches = live_caches(dataset)
        assert caches is not None, "gather() without a successful fill()"
        index = torch.as_tensor(indices, dtype=torch.long)
        batch: dict[str, Any] = {f"image_{m}": c.gather(index, pin) for m, c in caches.items()}
        labels = cached_labels(dataset, index, pin)
        batch["label"] = labels
        batch["id"] = [dataset.ids[i] for i in index.tolist()]  # type: ignore[attr-defined]
        for m in self.modalities:
            batch[f"label_{m}"] = labels.clone()
        return batch


class UnpairedDataset(Dataset[dict[str, Any]]):
    """Independent samples of each modality, one dataset per modality.

    Indexed by a tuple holding one index per modality, in the order of ``datasets``
    (what :class:`UnpairedSampler` yields).

    Args:
        datasets: per modality ``m``, a dataset returning ``image_<m>``, ``label`` and ``id``.
    """

    def __init__(self, datasets: Mapping[str, Dataset[dict[str, Any]]]) -> None:
        self.datasets = dict(datasets)

    def __len__(self) -> int:
        """Size of the largest modality set."""
        return max(len(ds) for ds in self.datasets.values())  # type: ignore[arg-type]

    def __getitem__(self, index: Sequence[int]) -> dict[str, Any]:
        """``image_<m>``, ``label_<m>`` and ``id_<m>`` for every modality.

        Raises:
            ValueError: ``index`` does not hold one index per modality.
        """
        if len(index) != len(self.datasets):
            raise ValueError(f"expected {len(self.datasets)} indices (one per modality), "
                             f"got {index!r}")
        out: dict[str, Any] = {}
        for (m, ds), i in zip(self.datasets.items(), index, strict=True):
            sample = ds[i]
            out[f"image_{m}"] = sample[f"image_{m}"]
            out[f"label_{m}"] = sample["label"]
            out[f"id_{m}"] = sample["id"]
        return out

    def _columns(self, indices: Sequence[Sequence[int]]) -> list[Tensor]:
        """Per modality, its indices of the batch."""
        for index in indices:
            if len(index) != len(self.datasets):
                raise ValueError(f"expected {len(self.datasets)} indices (one per modality), "
                                 f"got {index!r}")
        return list(torch.as_tensor(indices, dtype=torch.long).reshape(-1, len(self.datasets)).T)

    def fill(self, indices: Sequence[Sequence[int]]) -> bool:
        """Read the images of ``indices`` not yet cached; whether :meth:`gather` can now serve them.

        Raises:
            ValueError: an index does not hold one index per modality.
        """
        filled = True
        for (m, ds), column in zip(self.datasets.items(), self._columns(indices), strict=True):
            caches = live_caches(ds)
            if caches is None or m not in caches:
                return False
            filled = fill_caches(ds, [caches[m]], column.tolist()) and filled
        return filled

    def gather(self, indices: Sequence[Sequence[int]], pin: bool = False) -> dict[str, Any]:
        """The samples of ``indices`` collated, from the caches (:meth:`fill` first).

        The same batch as ``default_collate([self[i] for i in indices])``, each image
        copied once, straight into the batch; ``pin``: in page-locked memory.
        """
        out: dict[str, Any] = {}
        for (m, ds), index in zip(self.datasets.items(), self._columns(indices), strict=True):
            caches = live_caches(ds)
            assert caches is not None, "gather() without a successful fill()"
            out[f"image_{m}"] = caches[m].gather(index, pin)
            out[f"label_{m}"] = cached_labels(ds, index, pin)
            out[f"id_{m}"] = [ds.ids[i] for i in index.tolist()]  # type: ignore[attr-defined]
        return out


class ClassBalancedSampler(Sampler[int]):
    """Indices with every class equally frequent, each class's samples used evenly.

    Each epoch draws ``num_samples`` indices: a random sequence of classes with (up to
    one) equal counts per class, each class position filled with that class's next sample
    from a reshuffled cycle of its samples. Small classes repeat (oversampling), large
    classes are sub-sampled, and no sample repeats before all of its class have been
    drawn.

    Args:
        targets: class label of every sample of the dataset.
        num_samples: indices per epoch (default: the dataset size).
        generator: random generator (seeded for reproducible epochs).

    Raises:
        ValueError: ``targets`` is empty.
    """

    def __init__(self, targets: Sequence[int], num_samples: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        if len(targets) == 0:
            raise ValueError("cannot balance an empty dataset")
        labels = torch.as_tensor(list(targets), dtype=torch.long)
        self.classes = torch.unique(labels)
        self.members = [torch.nonzero(labels == c).flatten() for c in self.classes]
        self.num_samples = len(labels) if num_samples is None else num_samples
        self.generator = generator

    def __len__(self) -> int:
        """Indices per epoch."""
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        """Yield one epoch of class-balanced indices."""
        k = len(self.classes)
        per_class = torch.full((k,), self.num_samples // k, dtype=torch.long)
        extra = torch.randperm(k, generator=self.generator)[: self.num_samples % k]
        per_class[extra] += 1
        picks = []
        for members, n in zip(self.members, per_class.tolist(), strict=True):
            cycles = -(-n // len(members))  # ceil: enough reshuffled passes over the class
            order = torch.cat([members[torch.randperm(len(members), generator=self.generator)]
                               for _ in range(cycles)])
            picks.append(order[:n])
        indices = torch.cat(picks)
        yield from indices[torch.randperm(len(indices), generator=self.generator)].tolist()


class UnpairedSampler(Sampler[tuple[Any, ...]]):
    """Zip independent per-modality samplers into tuples of indices.

    Pair it with :class:`UnpairedDataset` (datasets in the same modality order). Each
    modality's sampler draws on its own, so the i-th MS and SAR samples of a batch are
    unrelated, as the authors train.

    Args:
        samplers: one sampler per modality, all of the same length.

    Raises:
        ValueError: the samplers have different lengths.
    """

    def __init__(self, samplers: Mapping[str, Sampler[Any]]) -> None:
        lengths = {m: len(s) for m, s in samplers.items()}  # type: ignore[arg-type]
        if len(set(lengths.values())) != 1:
            raise ValueError(f"per-modality samplers must have one length, got {lengths}")
        self.samplers = dict(samplers)

    def __len__(self) -> int:
        """Tuples per epoch."""
        return len(next(iter(self.samplers.values())))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """Yield one index per modality, drawn independently."""
        yield from zip(*self.samplers.values(), strict=True)


class RankShard(Sampler[Any]):
    """One rank's share of every epoch of a sampler, each class dealt evenly to the ranks.

    Every rank iterates the same ``sampler``, whose generator is seeded alike on every
    rank (and advanced alike, since every rank draws whole epochs), so all ranks see the
    same epoch; the draws sorted (stably) by class are dealt round robin to the ranks, and
    each rank keeps its own in the order drawn. The shares are disjoint, their union is
    the epoch, and each rank holds every class's draws to within one of an equal split:
    the class balance of a :class:`ClassBalancedSampler`, or the class mix of a shuffle,
    holds per rank. A rank short of ``len(self)`` repeats the epoch's first draws, so
    every rank runs the same number of batches (DDP synchronises every step).

    Args:
        sampler: draws the whole epoch (the same on every rank).
        num_replicas: number of ranks.
        rank: this process's rank, in ``[0, num_replicas)``.
        targets: class label of every dataset index, to stratify by; ``None`` deals the
            draws in order (evaluation).

    Raises:
        ValueError: ``rank`` is not in ``[0, num_replicas)``.
    """

    def __init__(self, sampler: Sampler[Any], num_replicas: int, rank: int,
                 targets: Sequence[int] | None = None) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.sampler = sampler
        self.num_replicas = num_replicas
        self.rank = rank
        self.targets = None if targets is None else list(targets)

    def __len__(self) -> int:
        """Draws per rank and epoch: the epoch divided by the ranks, rounded up."""
        return -(-len(self.sampler) // self.num_replicas)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        """Yield this rank's share of one epoch, in the order drawn."""
        drawn = list(self.sampler)
        positions: list[int] = list(range(len(drawn)))
        if self.targets is not None:
            targets = self.targets
            positions.sort(key=lambda i: targets[drawn[i]])
        share = [drawn[i] for i in sorted(positions[self.rank::self.num_replicas])]
        yield from share + drawn[: len(self) - len(share)]


class ValidWindowSampler(Sampler[GeoSlice]):
    """Drop (or redraw) geo-windows whose nodata fraction exceeds a limit.

    The nodata fraction of a window is the share of its area outside ``valid_area``
    (e.g. :attr:`~discomkd_geo.data.scenes.SceneDataset.valid_area`), a pure geometry
    test, so filtering costs no raster read in the main process.

    Args:
        sampler: a TorchGeo sampler, e.g. ``RandomGeoSampler`` or ``GridGeoSampler``.
        valid_area: where every layer has data, in the sampler's CRS.
        max_nodata: largest accepted nodata fraction of a window.
        resample: redraw rejected windows from ``sampler`` so the epoch keeps the
            sampler's length (for random samplers); otherwise rejected windows are skipped
            (for grid samplers).
        max_tries: with ``resample``, give up after this many draws per accepted window.

    Raises:
        ValueError: without ``resample``, no window is valid.
    """

    def __init__(self, sampler: GeoSampler, valid_area: BaseGeometry, max_nodata: float,
                 resample: bool = False, max_tries: int = 100) -> None:
        self.sampler = sampler
        self.valid_area = valid_area
        shapely.prepare(self.valid_area)
        self.max_nodata = max_nodata
        self.resample = resample
        self.max_tries = max_tries
        self.length = len(sampler) if resample else sum(1 for _ in self._accepted(sampler))
        if self.length == 0:
            raise ValueError(f"no window of the sampler has at most {max_nodata:.0%} nodata")

    def nodata_fraction(self, query: GeoSlice) -> float:
        """Share of the window ``query`` outside the valid area."""
        x, y = query[0], query[1]  # type: ignore[index]
        window = shapely.box(x.start, y.start, x.stop, y.stop)
        return 1.0 - window.intersection(self.valid_area).area / window.area

    def _accepted(self, queries: Any) -> Iterator[GeoSlice]:
        return (q for q in queries if self.nodata_fraction(q) <= self.max_nodata)

    def __len__(self) -> int:
        """Windows per epoch."""
        return self.length

    def __iter__(self) -> Iterator[GeoSlice]:
        """Yield accepted windows.

        Raises:
            RuntimeError: with ``resample``, too many consecutive windows were rejected.
        """
        if not self.resample:
            yield from self._accepted(self.sampler)
            return
        produced = tries = 0
        while produced < self.length:
            for query in self.sampler:
                tries += 1
                if self.nodata_fraction(query) <= self.max_nodata:
                    produced, tries = produced + 1, 0
                    yield query
                    if produced == self.length:
                        return
                elif tries >= self.max_tries:
                    raise RuntimeError(f"{tries} windows in a row had more than "
                                       f"{self.max_nodata:.0%} nodata")
