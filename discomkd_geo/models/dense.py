"""Dense window features: the pooled encoder features of many overlapping windows at once.

A branch's encoders are feature maps with an output stride ``S`` followed by global
average pooling, so the pooled feature of a ``patch x patch`` window is the mean of the
feature-map cells under it. Running an encoder once over an image that holds many
overlapping windows (plus a halo of context) and taking box means of its feature map
(``avg_pool2d``) gives every window's pooled features for about one pass over the image,
instead of ``(patch / stride)^2`` passes. Only the pooling is linear: the heads
(DisCoM-KD's Linear + BatchNorm1d + ReLU projection, the classifiers) run on the pooled
features, as in training. What differs from classifying each window alone
is the context: cells near a window's edge see the real neighbouring pixels instead of
the convolutions' zero padding.

Window strides finer than ``S`` use shift-and-stitch: window offsets ``k * stride`` fall
on ``S / gcd(stride, S)`` residues modulo ``S`` per axis; for each residue pair the
encoder runs on the image shifted by that residue and the windows take cells of their
copy. The leading stages whose stride divides the shift run once and are shared by every
copy (shifting their input by a multiple of their stride shifts whole cells of their
output), so at stride 16 only ResNet-18's ``layer4`` runs four times. That is what
dilating the tail (a trous) computes, but it works for any encoder made of stages,
without rewriting its convolutions or pooling layers.

Training on mosaics (:mod:`discomkd_geo.data.mosaic`) pools each labelled patch's region
with :func:`window_features` too, from the stage outputs the per-pixel decoder also reads
(``maps``), so a region's features in training are computed exactly as a window's in
dense mode. :func:`pixel_halo` and :func:`context_means` serve the per-pixel mode.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def output_stride(encoder: nn.Module) -> int:
    """Input pixels per feature-map cell of an encoder with ``stages()``."""
    return encoder.stages()[-1][1]


def common_cell(encoders: list[nn.Module]) -> int:
    """The smallest whole number of every encoder's cells, in input pixels."""
    return math.lcm(*(output_stride(e) for e in encoders))


def dense_halo(encoders: list[nn.Module]) -> int:
    """Context around the windows, in input pixels, that the encoders' receptive fields need.

    Half the receptive field, rounded up to whole cells of every encoder: a window's cells
    then see only real (or mirrored) pixels, never the encoder input's zero padding, so
    their values are those of a pass over the whole scene.
    """
    cell = common_cell(encoders)
    reach = max(e.receptive_field // 2 for e in encoders)
    return -(-reach // cell) * cell


def pixel_halo(encoders: list[nn.Module], patch: int, extra: int = 0) -> int:
    """Context the per-pixel mode needs around a block, in input pixels.

    The encoders' reach (:func:`dense_halo`), plus half a window for the context means
    (:func:`context_means`), plus one cell for the decoder's upsampling and convolution,
    plus ``extra`` pixels wanted beyond (e.g. for smoothing); whole cells of every encoder.
    """
    cell = common_cell(encoders)
    need = dense_halo(encoders) + -(-(patch // 2) // cell) * cell + cell + extra
    return -(-need // cell) * cell


def stage_maps(encoder: nn.Module, x: Tensor) -> list[Tensor]:
    """The output of every stage of ``encoder.stages()`` on ``x``, in order."""
    maps = []
    for stage, _ in encoder.stages():
        x = stage(x)
        maps.append(x)
    return maps


def context_means(fmap: Tensor, cells: int) -> Tensor:
    """Mean of each cell's ``cells x cells`` neighbourhood (centred; ``cells`` odd).

    Cells near the map's edge average the neighbours there are (no zero padding counted);
    with the halo of :func:`pixel_halo` every output cell of a block has them all. Two
    one-axis passes (the same means: a cell's count of neighbours is its row count times
    its column count): PyTorch's square CPU kernel made this 16% of pixel mode's time.
    """
    half = cells // 2
    rows = F.avg_pool2d(fmap, (cells, 1), stride=1, padding=(half, 0), count_include_pad=False)
    return F.avg_pool2d(rows, (1, cells), stride=1, padding=(0, half), count_include_pad=False)


def window_features(encoder: nn.Module, x: Tensor, patch: int, stride: int,
                    halo: int, maps: list[Tensor] | None = None) -> Tensor:
    """Pooled features ``(B, rows, cols, D)`` of the windows of ``x``.

    Window ``(i, j)`` is the ``patch x patch`` square at ``(halo + i * stride,
    halo + j * stride)`` in ``x``; ``rows`` and ``cols`` are as many as fit before the
    halo on the far side.

    Args:
        encoder: an encoder with ``stages()`` (see :mod:`.backbones`).
        x: ``(B, C, H, W)`` normalised images.
        patch: window side, a multiple of the encoder's output stride.
        stride: step between windows.
        halo: context on every side, a multiple of the encoder's output stride.
        maps: ``stage_maps(encoder, x)`` if already computed (training computes them
            once for the windows and the decoder); the shared stages are then not rerun.
    """
    stages = encoder.stages()
    cell = stages[-1][1]
    shift = math.gcd(stride, cell)
    shared = 0
    while shared < len(stages) and shift % stages[shared][1] == 0:
        shared += 1
    trunk_stride = stages[shared - 1][1] if shared else 1
    if maps is not None and shared:
        trunk = maps[shared - 1]
    else:
        trunk = x
        for stage, _ in stages[:shared]:
            trunk = stage(trunk)
    rows = (x.shape[-2] - 2 * halo - patch) // stride + 1
    cols = (x.shape[-1] - 2 * halo - patch) // stride + 1
    # Window k starts at o = halo + k * stride: copy (o % cell) / shift, cell o // cell.
    starts = [halo + stride * torch.arange(n, device=x.device) for n in (rows, cols)]
    copy = [(o % cell) // shift for o in starts]
    first = [o // cell for o in starts]
    out = x.new_empty(x.shape[0], rows, cols, encoder.out_features)
    for u in torch.unique(copy[0]).tolist():
        for v in torch.unique(copy[1]).tolist():
            fmap = trunk[..., u * shift // trunk_stride:, v * shift // trunk_stride:]
            for stage, _ in stages[shared:]:
                fmap = stage(fmap)
            pooled = F.avg_pool2d(fmap, patch // cell, stride=1)
            r = torch.nonzero(copy[0] == u)[:, 0, None]
            c = torch.nonzero(copy[1] == v)[None, :, 0]
            out[:, r, c] = pooled[:, :, first[0][r], first[1][c]].permute(0, 2, 3, 1)
    return out
