"""Decoded images kept in shared memory, so epochs after the first read no file.

A small dataset (the synthetic EuroSat-MS-SAR of the demo, a few thousand patches)
is decoded again every epoch otherwise: GeoTIFF reading competes with training for
the CPU. :class:`SharedImageCache` holds one modality's images of a split in one
tensor in shared memory, filled on first read: the DataLoader's worker processes
(forked or spawned) all fill and read the same memory, so each image is decoded once
per run, whichever worker reads it first.
"""

import os
import shutil
from collections.abc import Callable

import torch
from torch import Tensor

#: Where Linux keeps shared memory; writing to a full one kills the process (SIGBUS).
SHM = "/dev/shm"


class SharedImageCache:
    """Equal-shaped float32 images by index, in shared memory, each filled once.

    Args:
        count: number of images.
        shape: ``(C, H, W)`` of every image.
    """

    def __init__(self, count: int, shape: tuple[int, int, int]) -> None:
        self.images = torch.zeros((count, *shape), dtype=torch.float32).share_memory_()
        self.filled = torch.zeros(count, dtype=torch.bool).share_memory_()

    @staticmethod
    def fits(size: int, max_bytes: int) -> bool:
        """Whether ``size`` bytes are at most ``max_bytes`` and fit in shared memory.

        A full ``/dev/shm`` kills the writer, so its free space is checked where it exists.
        """
        free = shutil.disk_usage(SHM).free if os.path.isdir(SHM) else size
        return 0 < size <= min(max_bytes, free)

    def get(self, index: int, load: Callable[[], Tensor]) -> Tensor:
        """The image at ``index``: a copy from the cache, or ``load()`` (then cached).

        An image of another shape than the cache's is returned as loaded, uncached.
        """
        if bool(self.filled[index]):
            return self.images[index].clone()
        image = load()
        if image.shape == self.images.shape[1:]:
            self.images[index] = image
            self.filled[index] = True  # after the pixels: a reader never sees half
        return image
