"""The DisCoM-KD network (Ienco & Fraga Dantas, 2024, arXiv:2408.07080), for M >= 2 modalities.

Per modality a :class:`~discomkd_geo.models.branches.DisCoMKDBranch` (invariant encoder,
specific encoder, projection head, task classifier) produces ``z_inv``, ``z_inf`` and
``z_irr``. Shared across modalities:

- ``mod_cls_inf`` and ``mod_cls_irr`` predict the modality from ``z_inf`` and ``z_irr``;
- ``discriminator`` predicts the modality from ``z_inv`` behind a Gradient Reversal
  Layer, so the invariant encoders learn to hide the modality;
- ``aux_cls`` predicts the class from ``z_inv`` and from ``z_inf``.

The public code is hard-wired to two modalities; here the modality heads have M outputs
and the modality id of ``images[m]`` is ``m``'s position in ``model.modalities``, which
answers the paper's open question of more than two modalities. Modalities are
processed separately, so their batches need not be paired nor of equal size.
Given ``regions``, the images are mosaics (:mod:`discomkd_geo.data.mosaic`): every
output is then per region window, pooled from the encoders' feature maps exactly as
dense inference pools windows (:func:`~discomkd_geo.models.dense.window_features`), and
branches with a decoder add per-pixel logits.
:class:`~discomkd_geo.models.losses.DisCoMKDLoss` turns the output into the five loss
terms; the training task in :mod:`discomkd_geo.training.module` drives both.
"""

import os
from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from .branches import BranchedModel, DisCoMKDBranch, optional_spec, pixel_logits
from .dense import stage_maps, window_features
from .grl import GradientReversal


def region_embeddings(branch: DisCoMKDBranch, x: Tensor, patch: int,
                      stride: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(z_inv, z_inf, z_irr, pixel_logits)`` of the region windows of mosaics.

    Region ``(i, j)`` is the ``patch x patch`` window at ``(i * stride, j * stride)``;
    the embeddings are ``(B * rows * cols, E)`` in row-major order per mosaic. The
    encoders run once; the windows are pooled with dense mode's own function and the
    decoder (if the branch has one) reads the same stage outputs.
    """
    maps = [stage_maps(e, x) for e in branch.encoders()]
    pooled = [window_features(e, x, patch, stride, 0, maps=m)
              for e, m in zip(branch.encoders(), maps, strict=True)]
    flat = [f.reshape(-1, f.shape[-1]) for f in pooled]
    pixels = pixel_logits(branch, x, patch, maps) if branch.decoder is not None else None
    return (*branch.split(*flat), pixels)


@dataclass
class ModalityOutput:
    """What DisCoM-KD computes for one modality's batch of B images.

    Attributes:
        index: modality id, the target of the discriminator and modality classifiers.
        logits: ``(B, K)`` the modality's task classifier on ``concat(z_inv, z_inf)``.
        z_inv: ``(B, E)`` modality-invariant embedding (projection head output).
        z_inf: ``(B, E)`` modality-informative half of the specific embedding.
        z_irr: ``(B, E)`` modality-irrelevant half of the specific embedding.
        adv_logits: ``(B, M)`` discriminator on ``GRL(z_inv)``.
        mod_inf_logits: ``(B, M)`` modality classifier on ``z_inf``.
        mod_irr_logits: ``(B, M)`` modality classifier on ``z_irr``.
        aux_inv_logits: ``(B, K)`` auxiliary task classifier on ``z_inv``.
        aux_inf_logits: ``(B, K)`` auxiliary task classifier on ``z_inf``.
        pixel_logits: ``(B, K, H, W)`` the decoder's logits (mosaics, branches with a
            decoder), else ``None``.
    """

    index: int
    logits: Tensor
    z_inv: Tensor
    z_inf: Tensor
    z_irr: Tensor
    adv_logits: Tensor
    mod_inf_logits: Tensor
    mod_irr_logits: Tensor
    aux_inv_logits: Tensor
    aux_inf_logits: Tensor
    pixel_logits: Tensor | None = None


@dataclass
class DisCoMKDOutput:
    """DisCoM-KD's forward output: one :class:`ModalityOutput` per modality given.

    Attributes:
        modalities: per modality name, its outputs (in the model's modality order).
        num_modalities: M, the number of modalities the model knows.
    """

    modalities: dict[str, ModalityOutput]
    num_modalities: int

    @property
    def logits(self) -> dict[str, Tensor]:
        """Task logits per modality."""
        return {m: out.logits for m, out in self.modalities.items()}


class DisCoMKD(BranchedModel):
    """All single-modality classifiers of DisCoM-KD, trained at once.

    Args:
        in_channels: number of bands per modality, e.g. ``{"ms": 13, "sar": 2}``; the
            order fixes the modality ids. At least two modalities.
        num_classes: number of classes K.
        backbone: ``resnet18`` (the paper's) or ``small_cnn``.
        width: base width of ``small_cnn``.
        padding: the encoders' padding mode (``model.padding``).
        weights: optional local state-dict file every encoder is initialised from.
        decoder: give every branch a per-pixel decoder (trained on mosaics).

    Raises:
        ConfigError: fewer than two modalities.
    """

    def __init__(self, in_channels: dict[str, int], num_classes: int,
                 backbone: str = "resnet18", width: int = 32, padding: str = "zeros",
                 weights: str | os.PathLike[str] | None = None,
                 decoder: bool = False) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ConfigError("data.modalities", "DisCoM-KD needs at least two modalities, "
                              f"got {list(in_channels)}")
        for m, c in in_channels.items():
            self.add_branch(m, "discomkd", weights=weights, in_channels=int(c),
                            num_classes=int(num_classes), backbone=backbone, width=int(width),
                            **optional_spec(padding, decoder))
        dim = next(iter(self.branches.values())).embed_dim
        n_mod = len(in_channels)
        self.grl = GradientReversal()
        self.discriminator = nn.Linear(dim, n_mod)
        self.mod_cls_inf = nn.Linear(dim, n_mod)
        self.mod_cls_irr = nn.Linear(dim, n_mod)
        self.aux_cls = nn.Linear(dim, num_classes)

    def forward(self, images: dict[str, Tensor], grl_lambda: float = 1.0,
                regions: tuple[int, int] | None = None) -> DisCoMKDOutput:
        """Run every given modality's branch and the shared heads.

        Args:
            images: normalised ``(B_m, C_m, H, W)`` batch per modality; any non-empty
                subset of the model's modalities, batch sizes may differ.
            grl_lambda: gradient reversal coefficient for the discriminator.
            regions: ``(patch, stride)`` when the images are mosaics: every output is
                then per region window (see :func:`region_embeddings`), plus the
                decoders' per-pixel logits.

        Returns:
            The logits and embeddings :class:`~discomkd_geo.models.losses.DisCoMKDLoss`
            needs.

        Raises:
            KeyError: a modality the model does not have.
        """
        outputs = {}
        for index, m in enumerate(self.modalities):
            if m not in images:
                continue
            branch: DisCoMKDBranch = self.branches[m]
            pixels = None
            if regions is None:
                z_inv, z_inf, z_irr = branch.embed(images[m])
            else:
                z_inv, z_inf, z_irr, pixels = region_embeddings(branch, images[m], *regions)
            outputs[m] = ModalityOutput(
                index=index,
                logits=branch.classify(z_inv, z_inf),
                z_inv=z_inv, z_inf=z_inf, z_irr=z_irr,
                adv_logits=self.discriminator(self.grl(z_inv, grl_lambda)),
                mod_inf_logits=self.mod_cls_inf(z_inf),
                mod_irr_logits=self.mod_cls_irr(z_irr),
                aux_inv_logits=self.aux_cls(z_inv),
                aux_inf_logits=self.aux_cls(z_inf),
                pixel_logits=pixels,
            )
        unknown = sorted(set(images) - set(outputs))
        if unknown or not outputs:
            raise KeyError(f"images for modalities {unknown or 'none'}; the model has "
                           f"{', '.join(self.modalities)}")
        return DisCoMKDOutput(outputs, len(self.modalities))
