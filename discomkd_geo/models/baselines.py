"""Baseline networks DisCoM-KD is compared with (Ienco & Fraga Dantas, 2024, Sec. 4).

* :class:`MonoModal`: one supervised classifier per modality, trained on its own
  modality only: the lower bound every cross-modal method must beat. Its branches are the
  same ``mono`` branches (:class:`~discomkd_geo.models.branches.MonoBranch`) the
  distillation students use, so :func:`~discomkd_geo.models.predictor.load_torch_predictor`
  rebuilds them from ``branch_spec``.
* :class:`LateFusionTeacher`: one encoder per modality, features concatenated, one linear
  classifier: the multi-modal teacher of the KD / DKD baselines. It needs every modality
  of a sample at once, so it is not a single-modality predictor.

Used by :mod:`discomkd_geo.training.baselines`; like the rest of ``models`` it knows
nothing about training.
"""

import os

import torch
from torch import Tensor, nn

from .backbones import build_backbone, load_backbone_weights
from .branches import BranchedModel, optional_spec


class MonoModal(BranchedModel):
    """Independent supervised classifiers, one per modality.

    Args:
        bands: number of input bands per modality, e.g. ``{"ms": 13, "sar": 2}``.
        num_classes: number of land-cover classes.
        backbone: encoder name (``resnet18`` or ``small_cnn``).
        width: base channel count of ``small_cnn``.
        padding: the encoders' padding mode (``model.padding``).
        weights: optional local state-dict file to initialise the encoders from.
    """

    def __init__(self, bands: dict[str, int], num_classes: int, backbone: str = "resnet18",
                 width: int = 32, padding: str = "zeros",
                 weights: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        for m, c in bands.items():
            self.add_branch(m, "mono", weights=weights, in_channels=c,
                            num_classes=num_classes, backbone=backbone, width=width,
                            **optional_spec(padding))

    def forward(self, images: dict[str, Tensor]) -> dict[str, Tensor]:
        """Logits ``(B, K)`` per modality present in ``images``."""
        return {m: self.branches[m](x) for m, x in images.items()}


class LateFusionTeacher(nn.Module):
    """Multi-modal teacher: per-modality encoders, concatenated features, one classifier.

    Args:
        bands: number of input bands per modality; the forward pass needs all of them.
        num_classes: number of land-cover classes.
        backbone: encoder name (``resnet18`` or ``small_cnn``).
        width: base channel count of ``small_cnn``.
        padding: the encoders' padding mode (``model.padding``).
        weights: optional local state-dict file to initialise the encoders from.
    """

    def __init__(self, bands: dict[str, int], num_classes: int, backbone: str = "resnet18",
                 width: int = 32, padding: str = "zeros",
                 weights: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({m: build_backbone(backbone, c, width, padding)
                                       for m, c in bands.items()})
        if weights is not None:
            for encoder in self.encoders.values():
                load_backbone_weights(encoder, weights)
        features = sum(e.out_features for e in self.encoders.values())
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, images: dict[str, Tensor]) -> Tensor:
        """Logits ``(B, K)`` of aligned samples: ``images`` holds every modality."""
        missing = sorted(set(self.encoders) - set(images))
        if missing:
            raise ValueError(f"the late-fusion teacher needs every modality; missing {missing}")
        features = [self.encoders[m](images[m]) for m in self.encoders]
        return self.classifier(torch.cat(features, dim=1))
