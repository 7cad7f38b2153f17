"""A light per-pixel decoder: the branch's own window prediction, refined at the pixel.

What it reads, and why:

- **context** (both encoders, through the branch's task classifier): every feature-map
  cell's features are averaged over the window of the patch size centred on it
  (:func:`~discomkd_geo.models.dense.context_means`), and the branch's classifier
  (``pooled_logits``: for DisCoM-KD the projection of the invariant features and the
  informative half of the specific ones, as in training) turns them into logits at the
  encoders' output stride. That is dense mode's window prediction, at every cell: the
  window-scale context that classifies uniform regions well (the prototype's 1x1 and
  concatenated-mean heads, trained from scratch, lost it), shaped by every DisCoM-KD term.
- **detail** (the *specific* encoder's first two stages, stride 1 and 2 on ``small_cnn``):
  local texture at the input's pixel size, to move class boundaries from the coarse
  cells onto the pixels. The specific encoder, because the invariant one is trained to
  hide what identifies the modality, and the texture of the modality's own pixels is the
  detail a boundary shows in that modality.

The decoder upsamples the context logits (bilinear) and adds a residual computed from
them and the detail maps (two 3x3 convolutions), whose last layer starts at zero, so an
untrained residual leaves the window prediction as it is. On ``small_cnn`` width 16 it
has about 5k parameters.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def stage_channels(stage: nn.Module) -> int:
    """Output channels of a convolutional stage: those of its last convolution."""
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(stage).__name__} has no convolution")
    return convs[-1].out_channels


class PixelDecoder(nn.Module):
    """Context logits at the output stride plus a residual from high-resolution stages.

    Args:
        num_classes: number of classes K.
        detail: ``(channels, stride)`` of each detail map, in the order given to
            :meth:`forward`.
        cell: stride of the context logits (the encoders' output stride).
        hidden: channels of the residual's hidden layers.
    """

    def __init__(self, num_classes: int, detail: list[tuple[int, int]], cell: int,
                 hidden: int = 8) -> None:
        super().__init__()
        self.strides = [s for _, s in detail]
        self.cell = cell
        channels = num_classes + sum(c for c, _ in detail)
        # 3x3 convolutions only: CPU 1x1 convolutions round differently with the number of
        # threads, which would make a map depend on the workers that computed it.
        self.residual = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_classes, 3, padding=1))
        # Start from the window prediction: the residual's last layer begins at zero.
        nn.init.zeros_(self.residual[-1].weight)
        nn.init.zeros_(self.residual[-1].bias)

    def forward(self, context: Tensor, detail: list[Tensor]) -> Tensor:
        """Per-pixel logits ``(B, K, H, W)``.

        Args:
            context: ``(B, K, H / cell, W / cell)`` logits of the context windows.
            detail: the detail maps, ``(B, C_i, H / s_i, W / s_i)``.
        """
        up = F.interpolate(context, scale_factor=self.cell, mode="bilinear",
                           align_corners=False)
        maps = [up] + [m if s == 1 else F.interpolate(m, scale_factor=s, mode="bilinear",
                                                      align_corners=False)
                       for m, s in zip(detail, self.strides, strict=True)]
        return up + self.residual(torch.cat(maps, dim=1))
