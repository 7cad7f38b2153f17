"""Memory layout of image batches: channels-last (NHWC) for CPU convolutions.

oneDNN's CPU convolutions are faster on NHWC than on NCHW input and, given NHWC, keep it
through the network: one ResNet-18 DisCoM-KD training step at batch 128 costs about 15%
less CPU time, and the per-pixel decoder's wide convolution (mode ``pixel``) runs about
three times faster (``benchmarks/bench_maps.py``). Only the input changes layout: the
weights, and so checkpoints, predictor files and Adam's state, keep theirs. The values are
the same; the convolutions sum in another order, so results differ from NCHW ones by float
rounding, and are the same for any number of threads (a map does not depend on the
workers that computed it; ``tests/test_pixel_mode.py`` checks it).

Softmax over the classes of an image's pixels is taken with the classes last and
contiguous (:func:`class_softmax`) for the same reason.
"""

import torch
from torch import Tensor


def channels_last(images: Tensor) -> Tensor:
    """A batch of CPU images in channels-last (NHWC) memory order.

    Args:
        images: ``(B, C, H, W)`` images; on another device, or of another rank, returned as is.
    """
    if images.device.type != "cpu" or images.ndim != 4:
        return images
    return images.contiguous(memory_format=torch.channels_last)


def class_softmax(scores: Tensor, dim: int) -> Tensor:
    """Softmax over the class dimension ``dim`` of per-pixel scores, the same for any threads.

    ATen's CPU softmax over a dimension that is not the last, contiguous one vectorises
    across pixels, and the pixels a thread's share ends on are computed on another code
    path: with AVX-512 kernels (and with AVX2 ones on 3 or 4 threads) a few probabilities
    then differed in their last bit with the number of threads, so a map's probabilities
    depended on the workers that computed it. Over the last dimension every pixel's classes
    are computed alone, on one code path.

    Args:
        scores: logits (or log-probabilities) with classes along ``dim``.
        dim: the class dimension.

    Returns:
        probabilities of the same shape and dimension order as ``scores``.
    """
    # Explicit, non-negative dimensions: the ONNX export turns movedim's -1 into a
    # Transpose whose negative permutation onnxruntime refuses.
    last = scores.ndim - 1
    dim %= scores.ndim
    return torch.softmax(scores.movedim(dim, last).contiguous(), dim=last).movedim(last, dim)
