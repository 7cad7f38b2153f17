"""Mean-field smoothing of per-pixel class probabilities: one class per parcel, sharp edges.

The per-pixel decoder labels every pixel from the window of the patch size around it. Inside
a parcel larger than that window, its evidence still varies from place to place (a
ploughed field among green crops, a calm stretch of a river), and a single-sensor map shows
it as blotches of other classes. Mode ``pixel`` therefore smooths the probabilities of a
single modality's map (fused maps only when asked: smoothing lowered their accuracy) by
mean-field inference in a Potts conditional random field over a box
neighbourhood, the post-processing CNN segmentation has long used (Chen et al., 2015,
DeepLab, with Krähenbühl & Koltun's dense CRF). Starting from the decoder's probabilities
``p``, each pass sets::

    q <- softmax(log p + strength * mean of q over the neighbourhood)

so a pixel takes the class that holds most of its surroundings unless its own evidence is
strong, a parcel's blotches join the parcel's class, and a boundary between two parcels
stays where the evidence on its two sides balances (there the neighbourhood is split).
Features narrower than the neighbourhood with weak evidence (a narrow river the decoder is
not sure of) can be absorbed by their surroundings: ``strength`` 0 turns smoothing off.

The neighbourhood means are taken on a grid of :data:`CELL` px cells (the cells of the
neighbourhood's square, then interpolated bilinearly back to the pixels), which costs a
little per pass whatever the radius. Pixels without data take no part in them. A pixel's
result depends on the pixels within :func:`smoothing_reach` of it: with that much context
around a block, the engine's blocks give exactly the values of one pass over the scene.
"""

import math

import torch.nn.functional as F
from torch import Tensor

from ..models.dense import context_means
from ..models.layout import channels_last, class_softmax

#: Side in pixels of the cells on which neighbourhood means are taken.
CELL = 4
#: The smallest probability whose logarithm the smoothing uses (``log 0`` is ``-inf``).
FLOOR = 1e-6


def smoothing_reach(radius: int, passes: int) -> int:
    """Pixels on each side whose probabilities reach a pixel's smoothed ones.

    Each pass reaches the neighbourhood's cells (``radius`` rounded up to whole cells),
    the cell that holds the pixel and the cell that interpolation adds.
    """
    return passes * (math.ceil(radius / CELL) + 2) * CELL


def _cell_means(x: Tensor) -> Tensor:
    """Means over the :data:`CELL`-pixel cells of ``(1, C, H, W)`` (whole cells)."""
    return F.avg_pool2d(x, CELL)


def _box_means(cells_map: Tensor, cells: int) -> Tensor:
    """:func:`~discomkd_geo.models.dense.context_means` of a ``(1, C, h, w)`` cell map.

    Computed channels-last, where PyTorch's CPU average pool is about three times faster
    on these maps (the same means, bit for bit), and returned in the usual layout for the
    pixel-sized arithmetic that follows.
    """
    return context_means(channels_last(cells_map), cells).contiguous()


def smooth_probabilities(probs: Tensor, valid: Tensor, strength: float, radius: int,
                         passes: int) -> Tensor:
    """Mean-field smoothed probabilities of a block (see the module docstring).

    Args:
        probs: ``(K, H, W)`` class probabilities; ``H`` and ``W`` need not be whole cells
            (the block is extended with pixels that take no part); its first pixel starts
            a cell of the scene's grid of cells (so the result does not depend on the block).
        valid: ``(H, W)`` bool, the pixels with data.
        strength: weight of the neighbourhood's mean probabilities against a pixel's own
            log-probabilities.
        radius: the neighbourhood's half-side in pixels (rounded up to whole cells).
        passes: mean-field passes.

    Returns:
        ``(K, H, W)`` probabilities, the same dtype as ``probs``.
    """
    k, h, w = probs.shape
    pad = (0, -w % CELL, 0, -h % CELL)
    # float32 inside: half the memory traffic of float64, and ample for a softmax; the
    # smoothing would otherwise cost more than the decoder whose output it smooths.
    p = F.pad(probs.float(), pad)
    weight = F.pad(valid.float(), pad)[None, None]
    everywhere = bool(weight.all())  # the usual block: no pixel to leave out
    log_p = p.clamp_min(FLOOR).log_()
    cells = 2 * math.ceil(radius / CELL) + 1
    # The valid share of every cell's neighbourhood, which normalises the means below, with
    # the strength folded in (on the cells, not the pixels).
    scale = strength / _box_means(_cell_means(weight), cells).clamp_min(FLOOR)
    q = p
    for _ in range(passes):
        sums = _cell_means(q[None] if everywhere else q[None] * weight)
        means = F.interpolate(_box_means(sums, cells) * scale, scale_factor=CELL,
                              mode="bilinear", align_corners=False)
        q = class_softmax(log_p + means[0], dim=0)
    return q[:, :h, :w].to(probs.dtype)
