"""Decoded images kept in shared memory, so epochs after the first read no file.

A small dataset (the synthetic EuroSat-MS-SAR of the demo, a few thousand patches)
is decoded again every epoch otherwise: GeoTIFF reading competes with training for
the CPU. :class:`SharedImageCache` holds one modality's images of a split in one
file-backed shared memory map, filled on first read: the DataLoader's worker
processes (forked, Linux's default) all fill and read the same memory, so each image
is decoded once per run, whichever worker reads it first.

Each image is kept in the smallest dtype that holds its values exactly
(:func:`cached_dtype`): Sentinel-2 digital numbers (uint16 files) as uint16, anything
else (SAR dB) as float32, and handed out as float32, the values a float32 cache gives.
Copying out of the cache is the pipeline's main cost; uint16 halves the bytes of every
MS image, in memory and in each copy. The map lives in ``/dev/shm`` (RAM) when it fits
there. The whole EuroSat-MS-SAR (27,000 pairs of 13 uint16 + 2 float32 bands) takes
3.8 GB (6.6 GB all float32), more than a container's ``/dev/shm`` often holds (Docker's
default: 64 MB), and a process writing to a full ``/dev/shm`` dies of SIGBUS: the cache
then maps a file of the temporary directory (``TMPDIR``) instead, with one log line; the
page cache keeps it in RAM when there is room. Either file has its blocks reserved at
creation (``posix_fallocate``), so a full file system fails there, and is unlinked at
once, so no file outlives the processes using it, even killed ones.

A whole batch is copied out of the cache at once (:meth:`SharedImageCache.gather`, what
:class:`~.batching.BatchLoader` uses), each image straight into its row of the float32
batch, converted on the way.
"""

import contextlib
import functools
import math
import os
import tempfile
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from ..logs import log

#: Where Linux keeps shared memory; writing to a full one kills the process (SIGBUS).
SHM = "/dev/shm"


def shm_free_bytes() -> int:
    """Bytes free in :data:`SHM` (``os.statvfs``); 0 where there is none (macOS)."""
    try:
        stat = os.statvfs(SHM)
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


def cached_dtype(source: npt.DTypeLike) -> np.dtype[Any]:
    """The dtype a cache keeps images read as ``source`` in: the smallest holding them exactly.

    uint16 for unsigned integers of up to 16 bits (Sentinel-2 digital numbers), which
    float32 also holds exactly, so the float32 images a uint16 cache hands out are those
    of a float32 cache; float32 for anything else (SAR dB), as the datasets give it.
    """
    return np.dtype(np.uint16 if np.can_cast(source, np.uint16) else np.float32)


def mapped_zeros(count: int, directory: str, dtype: npt.DTypeLike = np.float32) -> Tensor:
    """``count`` zeros of ``dtype`` in a shared map of a file of ``directory``, blocks reserved.

    Raises:
        OSError: ``directory`` cannot hold them (no space: ENOSPC).
    """
    dtype = np.dtype(dtype)
    fd, path = tempfile.mkstemp(prefix="discomkd-cache-", suffix=f".{dtype.name}",
                                dir=directory)
    try:
        size = dtype.itemsize * count
        if hasattr(os, "posix_fallocate"):  # reserve now: no SIGBUS on a later write
            os.posix_fallocate(fd, 0, size)
        else:
            os.ftruncate(fd, size)
        array = np.memmap(path, dtype=dtype, mode="r+", shape=(count,))
    finally:
        os.close(fd)
        os.unlink(path)  # the map keeps the data; the space returns with the last process
    return torch.from_numpy(array)


@functools.cache
def _report_spill(directory: str) -> None:
    """Say once per process that the caches map files of ``directory``."""
    log.info("image cache: %s cannot hold the decoded images (%.2f GiB free); mapping "
             "files of %s instead", SHM, shm_free_bytes() / 2**30, directory)


class BatchBuffers:
    """A few batch-sized float32 buffers, each reused once no tensor uses it any more.

    A new batch-sized tensor (27 MB for 128 MS patches) is usually new memory from the
    operating system, and writing it faults in every page: that costs more than the
    copy itself. A batch taken here is a view of a buffer whose pages stay mapped; the
    buffer returns to the pool when the last tensor sharing its memory is gone (its
    numpy view is what the tensor's storage holds, and is finalised with it), so a
    batch kept by the caller is never overwritten: a pool with no free buffer gives
    none (:meth:`take` returns ``None``).

    Args:
        shape: ``(N, C, H, W)`` of the largest batch.
        count: number of buffers.
    """

    def __init__(self, shape: tuple[int, ...], count: int = 4) -> None:
        self.memory = np.empty((count, *shape), dtype=np.float32)
        self.free = list(range(count))

    @property
    def size(self) -> int:
        """Images per buffer: the largest batch :meth:`take` gives."""
        return int(self.memory.shape[1])

    def take(self, size: int) -> Tensor | None:
        """A ``(size, C, H, W)`` tensor on a free buffer, or ``None`` (none free, too big)."""
        if size > self.size:
            return None
        try:
            index = self.free.pop()
        except IndexError:
            return None
        view = self.memory[index, :size]
        weakref.finalize(view, self.free.append, index)
        return torch.from_numpy(view)


class SharedImageCache:
    """Equal-shaped images by index, in a shared memory map, each filled once.

    The images are kept as ``dtype`` and handed out as float32.

    Args:
        count: number of images.
        shape: ``(C, H, W)`` of every image.
        dtype: what the map holds (:func:`cached_dtype`): float32, or uint16 for images
            read as unsigned integers of up to 16 bits.

    Attributes:
        location: the directory of the mapped file: :data:`SHM`, or the temporary
            directory when shared memory cannot hold the images.
    """

    def __init__(self, count: int, shape: tuple[int, int, int],
                 dtype: npt.DTypeLike = np.float32) -> None:
        numel = count * math.prod(shape)
        self.location = SHM
        flat = None
        if self.nbytes(count, shape, dtype) <= shm_free_bytes():
            with contextlib.suppress(OSError):  # filled meanwhile (another rank's cache)
                flat = mapped_zeros(numel, SHM, dtype)
        if flat is None:
            self.location = tempfile.gettempdir()
            _report_spill(self.location)
            flat = mapped_zeros(numel, self.location, dtype)
        self.images: Tensor | None = flat.view(count, *shape)
        self.filled = torch.zeros(count, dtype=torch.bool).share_memory_()
        self._buffers: BatchBuffers | None = None  # made by the first gather

    @staticmethod
    def nbytes(count: int, shape: tuple[int, int, int], dtype: npt.DTypeLike) -> int:
        """Bytes the map of a cache of ``count`` images of ``shape`` and ``dtype`` takes."""
        return count * math.prod(shape) * np.dtype(dtype).itemsize

    @staticmethod
    def fits(size: int, max_bytes: int) -> bool:
        """Whether a cache of ``size`` bytes is wanted: some, and at most ``max_bytes``."""
        return 0 < size <= max_bytes

    def __getstate__(self) -> dict[str, Any]:
        """Without the images: a spawned process cannot share the map, and reads the files."""
        return {**self.__dict__, "images": None, "_buffers": None}

    def get(self, index: int, load: Callable[[], Tensor]) -> Tensor:
        """The image at ``index`` as float32: a copy from the cache, or ``load()`` (then cached).

        ``load`` gives the image as read (uint16 digital numbers for a uint16 cache). An
        image of another shape than the cache's, or of a dtype the cache's does not hold
        exactly, is returned as loaded (as float32), uncached, and so is every image in a
        process the cache was pickled into.
        """
        if self.images is None:
            return load().float()
        if bool(self.filled[index]):
            return self.images[index].to(torch.float32, copy=True)
        image = load()
        exact = np.can_cast(image.numpy().dtype, self.images.numpy().dtype)
        if exact and image.shape == self.images.shape[1:]:
            self.images[index] = image
            self.filled[index] = True  # after the pixels: a reader never sees half
        return image.float()

    def missing(self, indices: Tensor) -> Tensor:
        """The ones of ``indices`` (int64) whose images are not in the cache yet."""
        return indices[~self.filled[indices]]

    def holds(self, indices: Tensor) -> bool:
        """Whether :meth:`gather` can give the images of ``indices`` in this process.

        False for every index in a process the cache was pickled into (its map is not
        shared there).
        """
        return self.images is not None and bool(self.filled[indices].all())

    def gather(self, indices: Tensor, pin: bool = False) -> Tensor:
        """The cached images of ``indices`` as one float32 ``(N, C, H, W)`` tensor: one copy.

        Each image is copied from the map straight into its row of the batch, instead of
        into a tensor of its own and then stacked, converted to float32 on the way (a
        uint16 image is read at half the bytes): a batch costs one memory pass, into
        reused buffers (:class:`BatchBuffers`). ``pin`` gathers into page-locked memory
        (for an asynchronous copy to a GPU), with no second copy. The copies are numpy's,
        on one thread: they are bound by memory bandwidth, and a multi-threaded
        ``index_select`` (OpenMP) burns CPU time spinning, at times seconds per batch,
        when its threads compete with DataLoader workers and training for the cores.

        Raises:
            RuntimeError: an image of ``indices`` is not cached (:meth:`holds` is false).
        """
        if not self.holds(indices):
            raise RuntimeError("gathering images the cache does not hold")
        assert self.images is not None
        shape = (len(indices), *self.images.shape[1:])
        out = None
        if not pin:  # page-locked memory comes from CUDA's caching host allocator
            if self._buffers is None or self._buffers.size < len(indices):
                self._buffers = BatchBuffers(shape)  # a batch in use keeps its old buffer
            out = self._buffers.take(len(indices))
        if out is None:
            out = torch.empty(shape, dtype=torch.float32, pin_memory=pin)
        images, rows = self.images.numpy(), out.numpy()
        for row, index in enumerate(indices.tolist()):
            rows[row] = images[index]
        return out
