"""Memory layout of image batches: channels-last (NHWC) for CPU convolutions.

oneDNN's CPU convolutions are faster on NHWC than on NCHW input and, given NHWC, keep it
through the network: one ResNet-18 DisCoM-KD training step at batch 128 costs about 15%
less CPU time, and the per-pixel decoder's wide convolution (mode ``pixel``) runs about
three times faster (``benchmarks/bench_maps.py``). Only the input changes layout: the
weights, and so checkpoints, predictor files and Adam's state, keep theirs. The values are
the same; the convolutions sum in another order, so results differ from NCHW ones by float
rounding, and are the same for any number of threads (a map does not depend on the
workers that computed it; ``tests/test_pixel_mode.py`` checks it).
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
