"""Whole batches from the shared image caches: what a training loader hands out.

A per-sample DataLoader copies each image out of the cache (:mod:`.cache`), stacks the
batch and, from a worker, sends it through a new shared-memory file: that costs more
than the copy. Here a worker only reads the images the caches lack and sends the batch's
indices (:class:`CachedBatch`); the loading process copies each image once, straight into
the batch (:class:`BatchLoader`). The batches are those of a per-sample loader. The
datasets that can be gathered (:class:`~.samplers.PairedDataset`,
:class:`~.samplers.UnpairedDataset`) do so with the functions below.
"""

import itertools
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from .cache import SharedImageCache
from .eurosat import EuroSATMSSAR


def live_caches(dataset: Dataset[dict[str, Any]]) -> dict[str, SharedImageCache] | None:
    """The shared caches of every modality of a :class:`~.eurosat.EuroSATMSSAR`, if usable here.

    ``None`` when a sample is not just its cached images, ``label`` and ``id`` (another
    dataset, ``transforms``), when a modality is not cached, or when the caches were
    pickled into this process (a spawned worker: their map is not shared).
    """
    if not isinstance(dataset, EuroSATMSSAR) or dataset.transforms is not None:
        return None
    caches = {m: dataset.caches.get(m) for m in dataset.modalities}
    if any(c is None or c.images is None for c in caches.values()):
        return None
    return caches  # type: ignore[return-value]


def fill_caches(dataset: Dataset[dict[str, Any]], caches: Iterable[SharedImageCache],
          indices: Sequence[int]) -> bool:
    """Read (so cache) each sample of ``indices`` missing from ``caches``; whether all are held."""
    caches = list(caches)
    index = torch.as_tensor(indices, dtype=torch.long)
    missing = sorted({i for c in caches for i in c.missing(index).tolist()})
    for i in missing:
        dataset[i]  # reading a sample caches its images
    return all(c.holds(index) for c in caches)


def cached_labels(dataset: Dataset[dict[str, Any]], index: Tensor, pin: bool) -> Tensor:
    """The ``label`` of each sample of ``index``, as ``default_collate`` stacks them."""
    targets = dataset.targets  # type: ignore[attr-defined]
    labels = torch.tensor([targets[i] for i in index.tolist()], dtype=torch.long)
    return labels.pin_memory() if pin else labels


#: Batched datasets of this process by key, for the batches their workers leave cached.
_SOURCES: "weakref.WeakValueDictionary[int, BatchedDataset]" = weakref.WeakValueDictionary()
_KEYS = itertools.count()


@dataclass(frozen=True)
class CachedBatch:
    """A batch whose images wait in shared image caches: what a worker sends for it.

    Sending a batch of images from a worker process costs more than gathering it: the
    tensors travel through a new shared-memory file per batch, written by the worker,
    mapped and read again by the loading process. A worker that finds (or puts) every
    image of a batch in the caches, which all processes share, sends the indices instead,
    and the loading process gathers the images (:meth:`resolve`), straight into
    page-locked memory when the loader pins (:meth:`pin_memory`, called by the
    DataLoader's pinning thread, so the gather overlaps the training step).

    Attributes:
        source: key of the :class:`BatchedDataset` (in this process) that gathers it.
        indices: the batch's sample indices.
    """

    source: int
    indices: list[Any]

    def resolve(self, pin: bool = False) -> dict[str, Any]:
        """The batch: its samples collated, gathered from the caches."""
        return _SOURCES[self.source].gather(self.indices, pin)

    def pin_memory(self, device: Any = None) -> dict[str, Any]:
        """The batch in page-locked memory (the DataLoader's ``pin_memory`` hook)."""
        return self.resolve(pin=True)


class BatchedDataset(Dataset[Any]):
    """Whole batches of a :class:`PairedDataset` or :class:`UnpairedDataset`, by index list.

    Indexed by the sample indices of one batch (what a ``BatchSampler`` yields), for a
    DataLoader with ``batch_size=None`` (:class:`BatchLoader`). A batch whose images are
    all held (once read) in shared image caches is returned as a :class:`CachedBatch`;
    any other as ``default_collate`` of the samples, as a DataLoader would collate them.
    Either way the same batch: the cached images are the decoded ones.

    Args:
        dataset: the per-sample dataset; with ``fill`` and ``gather`` methods (as
            :class:`PairedDataset` and :class:`UnpairedDataset`) its cached batches are
            gathered whole, else every batch is collated sample by sample.
    """

    def __init__(self, dataset: Dataset[dict[str, Any]]) -> None:
        self.dataset = dataset
        self.key = next(_KEYS)
        _SOURCES[self.key] = self

    def __len__(self) -> int:
        """Samples of the wrapped dataset."""
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, indices: list[Any]) -> Any:
        """The batch of ``indices``: a :class:`CachedBatch`, or the collated samples."""
        fill = getattr(self.dataset, "fill", None)
        if fill is not None and fill(indices):
            return CachedBatch(self.key, list(indices))
        return default_collate([self.dataset[i] for i in indices])

    def gather(self, indices: list[Any], pin: bool = False) -> dict[str, Any]:
        """The batch of ``indices`` from the caches (read here if they lack an image)."""
        if self.dataset.fill(indices):  # type: ignore[attr-defined]
            return self.dataset.gather(indices, pin)  # type: ignore[attr-defined]
        batch = default_collate([self.dataset[i] for i in indices])
        if pin:
            batch = {k: v.pin_memory() if isinstance(v, Tensor) else v for k, v in batch.items()}
        return batch


class BatchLoader(DataLoader[Any]):
    """A DataLoader of a :class:`BatchedDataset` that hands out every batch collated.

    Use it as ``BatchLoader(BatchedDataset(ds), sampler=BatchSampler(...),
    batch_size=None, ...)``: the batches are those of ``DataLoader(ds, sampler=...,
    batch_size=..., drop_last=...)``. A :class:`CachedBatch` is gathered in this process:
    by the pinning thread when the loader pins memory, else here as it is handed out.
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        """Iterate the batches of one epoch, cached ones gathered."""
        for batch in super().__iter__():
            yield batch.resolve() if isinstance(batch, CachedBatch) else batch
