"""Mosaic training samples: labelled patches pasted into one image along random lines.

A model that maps a scene classifies windows that straddle parcels, whose edges see real
neighbours; a model trained on isolated patches never saw one. A *mosaic* puts four
``patch x patch`` training patches into one ``size x size`` image (``size = 3/2 patch``,
96 px for 64 px patches): patch ``r`` (0 top left, 1 top right, 2 bottom left, 3 bottom
right) is pasted at its corner of the mosaic, and its *region* is cut by three random
straight lines (one roughly vertical, one roughly horizontal on each side of it) whose
ends fall anywhere in the middle third, on no grid. Every region lies inside its patch's
square, so every pixel of the mosaic is a pixel of its region's patch at the same place,
and the label map (``mask_<m>``) gives every pixel its patch's class.

Training pools each region's window (the patch's square) from the feature map with dense
mode's own function (:func:`~discomkd_geo.models.dense.window_features`, patch at stride
``size - patch``) and scores it against the window's class shares
(:func:`window_shares`); a decoder learns the label map.

Pairing follows the dataset's: a paired mosaic pastes the four pairs of aligned patches
with one layout (its modalities stay aligned); an unpaired one draws the four patches of
each modality independently (class-balanced, by the usual samplers) and cuts each
modality with its own layout. :class:`MosaicSampler` groups a sampler's indices by four
and draws each mosaic's layout seed, so the mosaics follow the training seed.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler

#: Patches per mosaic (a 2 x 2 layout).
PATCHES = 4


def mosaic_size(patch: int) -> int:
    """Side of a mosaic of ``patch``-pixel patches: one and a half patches."""
    return patch + patch // 2


def region_offsets(size: int, patch: int) -> list[tuple[int, int]]:
    """``(row, col)`` of each region's patch square in the mosaic, regions in order."""
    far = size - patch
    return [(0, 0), (0, far), (far, 0), (far, far)]


def mosaic_layout(size: int, patch: int, generator: torch.Generator) -> Tensor:
    """Region index (0-3) of every pixel of a ``size x size`` mosaic, ``(size, size)`` int64.

    Three random lines cut the mosaic: ``x = a + (b - a) * y / size`` (left/right) and, on
    each side of it, ``y = c + (d - c) * x / size`` (top/bottom), with ``a, b, c, d`` drawn
    uniformly in ``[size - patch, patch]``, so each region stays inside its patch's square
    (see :func:`region_offsets`).
    """
    low, high = size - patch, patch
    ends = low + (high - low) * torch.rand(6, generator=generator, dtype=torch.float64)
    pos = torch.arange(size, dtype=torch.float64) + 0.5
    y, x = pos[:, None], pos[None, :]
    right = x >= ends[0] + (ends[1] - ends[0]) * y / size
    cut_left = ends[2] + (ends[3] - ends[2]) * x / size
    cut_right = ends[4] + (ends[5] - ends[4]) * x / size
    bottom = y >= torch.where(right, cut_right, cut_left)
    return (2 * bottom + right).long()


def paste(patches: Sequence[Tensor], layout: Tensor, patch: int) -> Tensor:
    """A mosaic ``(C, size, size)``: every pixel from its region's patch, at its place.

    Args:
        patches: the four ``(C, patch, patch)`` patches, in region order.
        layout: region index per pixel (:func:`mosaic_layout`).
        patch: the patches' side.
    """
    size = layout.shape[-1]
    out = patches[0].new_zeros(patches[0].shape[0], size, size)
    for region, (row, col) in enumerate(region_offsets(size, patch)):
        where = layout[row:row + patch, col:col + patch] == region
        square = out[:, row:row + patch, col:col + patch]
        square[:, where] = patches[region][:, where]
    return out


def window_shares(mask: Tensor, num_classes: int, patch: int, stride: int) -> Tensor:
    """Class shares ``(B * rows * cols, K)`` of the ``patch`` windows of label maps.

    The windows are those of :func:`~discomkd_geo.models.dense.window_features` with no
    halo (``(i * stride, j * stride)``), in the same row-major order, so row ``n`` is the
    target of region window ``n``.

    Args:
        mask: ``(B, H, W)`` int64 label maps.
        num_classes: K.
        patch: window side.
        stride: step between windows.
    """
    onehot = F.one_hot(mask, num_classes).permute(0, 3, 1, 2).float()
    shares = F.avg_pool2d(onehot, patch, stride=stride)
    return shares.permute(0, 2, 3, 1).reshape(-1, num_classes)


class MosaicDataset(Dataset[dict[str, Any]]):
    """Mosaics of four samples of a paired or unpaired dataset (batch contract plus masks).

    Indexed by ``(indices, seed)`` (what :class:`MosaicSampler` yields): the four indices
    of ``dataset`` (each an int, or a tuple for :class:`~.samplers.UnpairedDataset`) and
    the seed of the layout. A sample holds ``image_<m>`` ``(C, size, size)``,
    ``mask_<m>`` ``(size, size)`` int64 label maps and ``label_<m>`` ``(4,)`` the
    patches' classes in region order, for every modality.

    Args:
        dataset: a dataset returning ``image_<m>`` and ``label_<m>`` for every modality.
        modalities: the modality names.
        patch: the side of the dataset's patches.
        paired: one layout for every modality (aligned pairs); otherwise one each.

    Raises:
        ValueError: (on access) a patch of another size.
    """

    def __init__(self, dataset: Dataset[dict[str, Any]], modalities: Sequence[str],
                 patch: int, paired: bool) -> None:
        self.dataset = dataset
        self.modalities = list(modalities)
        self.patch = patch
        self.size = mosaic_size(patch)
        self.paired = paired

    def __len__(self) -> int:
        """Mosaics in one pass over the dataset."""
        return len(self.dataset) // PATCHES  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[Sequence[Any], int]) -> dict[str, Any]:
        """The mosaic of the four samples ``key[0]`` with layout seed ``key[1]``."""
        indices, seed = key
        samples = [self.dataset[i] for i in indices]
        generator = torch.Generator().manual_seed(int(seed))
        out: dict[str, Any] = {}
        layout = None
        for m in self.modalities:
            if layout is None or not self.paired:
                layout = mosaic_layout(self.size, self.patch, generator)
            patches = [s[f"image_{m}"] for s in samples]
            if any(p.shape[-2:] != (self.patch, self.patch) for p in patches):
                raise ValueError(f"mosaics need {self.patch} px patches, got "
                                 f"{[tuple(p.shape[-2:]) for p in patches]}")
            labels = torch.as_tensor([int(s[f"label_{m}"]) for s in samples])
            out[f"image_{m}"] = paste(patches, layout, self.patch)
            out[f"mask_{m}"] = labels[layout]
            out[f"label_{m}"] = labels
        return out


class MosaicSampler(Sampler[tuple[list[Any], int]]):
    """Group a sampler's indices by four, each group with a layout seed.

    Args:
        sampler: the patch sampler (shuffled pairs, or class-balanced unpaired draws).
        generator: draws the layout seeds (seeded for reproducible epochs).
    """

    def __init__(self, sampler: Sampler[Any], generator: torch.Generator) -> None:
        self.sampler = sampler
        self.generator = generator

    def __len__(self) -> int:
        """Mosaics per epoch (incomplete groups dropped)."""
        return len(self.sampler) // PATCHES  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[list[Any], int]]:
        """Yield ``(four indices, layout seed)``."""
        group: list[Any] = []
        for index in self.sampler:
            group.append(index)
            if len(group) == PATCHES:
                seed = int(torch.randint(2**62, (), generator=self.generator))
                yield group, seed
                group = []
