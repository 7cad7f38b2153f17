"""Single-modality branches: the deployable classifiers, and the models that hold them.

A *branch* maps one modality's normalised ``(B, C, H, W)`` images to ``(B, K)`` class
logits and is all that inference needs of a trained model. :func:`build_branch` rebuilds
a branch from JSON-able keyword arguments (its *spec*); checkpoints store the spec, and
:meth:`~discomkd_geo.models.predictor.Predictor.from_payload` calls
``build_branch(**spec)`` before loading the branch's weights.

:class:`BranchedModel` is the base of every multi-modal model (DisCoM-KD in
:mod:`.discomkd`, the baselines): its ``branches`` ModuleDict holds one branch per
modality, so a branch's weights sit under ``branches.<modality>.`` in the model.

Every branch is image encoders (each ending in global average pooling) followed by heads
on their pooled features: ``encoders()`` and ``pooled_logits(features)`` expose that
split, so dense inference (:mod:`.dense`) can pool the encoders' feature maps over many
windows at once and run only the heads per window; ``forward(x)`` is
``pooled_logits([e(x) for e in encoders()])``.

A branch built with ``decoder=True`` also has a per-pixel output
(:func:`pixel_logits`, :mod:`.decoder`); branches without one (every
checkpoint written before it existed) classify windows only, as before.
"""

import copy
import os
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .backbones import build_backbone, load_backbone_weights
from .decoder import PixelDecoder, stage_channels
from .dense import context_means, output_stride, stage_maps


def _decoder(encoder: nn.Module, num_classes: int) -> PixelDecoder:
    """A :class:`PixelDecoder` reading the first two stages of ``encoder``."""
    stages = encoder.stages()[:2]
    return PixelDecoder(num_classes, [(stage_channels(m), s) for m, s in stages],
                        output_stride(encoder))


def pixel_logits(branch: nn.Module, x: Tensor, patch: int,
                 maps: list[list[Tensor]] | None = None) -> Tensor:
    """Per-pixel logits ``(B, K, H, W)`` of a branch with a decoder.

    Every cell's context is the mean of its encoders' features over the ``patch``-sized
    window centred on it, classified by the branch's own heads; the decoder refines the
    upsampled result with the last encoder's first two stages (see :mod:`.decoder`).

    Args:
        branch: a branch whose ``decoder`` is not ``None``.
        x: ``(B, C, H, W)`` normalised images, ``H`` and ``W`` whole cells.
        patch: the context window's side in pixels (the training patch size).
        maps: ``stage_maps`` of every encoder on ``x``, if already computed.
    """
    encoders = branch.encoders()
    maps = maps if maps is not None else [stage_maps(e, x) for e in encoders]
    cells = patch // output_stride(encoders[0])
    context = [context_means(m[-1], cells + 1 - cells % 2) for m in maps]
    b, _, h, w = context[0].shape
    flat = [c.permute(0, 2, 3, 1).reshape(b * h * w, -1) for c in context]
    logits = branch.pooled_logits(flat).reshape(b, h, w, -1).permute(0, 3, 1, 2)
    return branch.decoder(logits, maps[-1][:2])


class DisCoMKDBranch(nn.Module):
    """One modality's part of DisCoM-KD (Ienco & Fraga Dantas, 2024).

    Two encoders of the same architecture and separate weights: the invariant encoder,
    followed by the projection head, gives ``z_inv`` (D/2 features); the specific
    encoder's D features are split into ``z_inf`` (first half, modality-informative) and
    ``z_irr`` (second half, modality-irrelevant). The modality's task classifier reads
    ``concat(z_inv, z_inf)``, as in the paper: ``z_irr`` never reaches a task
    classifier.

    Args:
        in_channels: number of input bands.
        num_classes: number of classes K.
        backbone: encoder name (see :func:`~discomkd_geo.models.backbones.build_backbone`).
        width: base width of ``small_cnn``.
        padding: the encoders' padding mode (see
            :data:`~discomkd_geo.models.backbones.PADDINGS`).
        decoder: add a per-pixel decoder (:func:`pixel_logits`).
    """

    def __init__(self, in_channels: int, num_classes: int, backbone: str = "resnet18",
                 width: int = 32, padding: str = "zeros", decoder: bool = False) -> None:
        super().__init__()
        self.enc_inv = build_backbone(backbone, in_channels, width, padding)
        self.enc_spec = build_backbone(backbone, in_channels, width, padding)
        features = self.enc_inv.out_features
        #: Size of each of z_inv, z_inf and z_irr.
        self.embed_dim = features // 2
        # Linear -> BN -> ReLU, as the paper, so that z_inv has z_inf's size.
        self.proj = nn.Sequential(nn.Linear(features, self.embed_dim),
                                  nn.BatchNorm1d(self.embed_dim), nn.ReLU(inplace=True))
        self.task_cls = nn.Linear(2 * self.embed_dim, num_classes)
        self.decoder = _decoder(self.enc_spec, num_classes) if decoder else None

    def encoders(self) -> list[nn.Module]:
        """The image encoders (what :func:`load_backbone_weights` initialises)."""
        return [self.enc_inv, self.enc_spec]

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(z_inv, z_inf, z_irr)`` of normalised images, each ``(B, D/2)``."""
        return self.split(self.enc_inv(x), self.enc_spec(x))

    def split(self, pooled_inv: Tensor, pooled_spec: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(z_inv, z_inf, z_irr)`` from the encoders' pooled features."""
        z_inv = self.proj(pooled_inv)
        return z_inv, pooled_spec[:, : self.embed_dim], pooled_spec[:, self.embed_dim:]

    def classify(self, z_inv: Tensor, z_inf: Tensor) -> Tensor:
        """Task logits from the invariant and informative embeddings."""
        return self.task_cls(torch.cat([z_inv, z_inf], dim=1))

    def pooled_logits(self, features: list[Tensor]) -> Tensor:
        """Task logits ``(N, K)`` from the pooled outputs of :meth:`encoders` (in order).

        The projection is non-linear, so it runs on pooled features, never before pooling.
        """
        pooled_inv, pooled_spec = features
        return self.classify(self.proj(pooled_inv), pooled_spec[:, : self.embed_dim])

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, K)`` of normalised images ``(B, C, H, W)``."""
        return self.pooled_logits([encoder(x) for encoder in self.encoders()])


class MonoBranch(nn.Module):
    """An encoder and a linear classifier: the mono-modal baseline's branch.

    Args:
        in_channels: number of input bands.
        num_classes: number of classes K.
        backbone: encoder name (see :func:`~discomkd_geo.models.backbones.build_backbone`).
        width: base width of ``small_cnn``.
        padding: the encoders' padding mode (see
            :data:`~discomkd_geo.models.backbones.PADDINGS`).
        decoder: add a per-pixel decoder (:func:`pixel_logits`).
    """

    def __init__(self, in_channels: int, num_classes: int, backbone: str = "resnet18",
                 width: int = 32, padding: str = "zeros", decoder: bool = False) -> None:
        super().__init__()
        self.encoder = build_backbone(backbone, in_channels, width, padding)
        self.head = nn.Linear(self.encoder.out_features, num_classes)
        self.decoder = _decoder(self.encoder, num_classes) if decoder else None

    def encoders(self) -> list[nn.Module]:
        """The image encoders (what :func:`load_backbone_weights` initialises)."""
        return [self.encoder]

    def pooled_logits(self, features: list[Tensor]) -> Tensor:
        """Logits ``(N, K)`` from the encoder's pooled features (a one-element list)."""
        return self.head(features[0])

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, K)`` of normalised images ``(B, C, H, W)``."""
        return self.pooled_logits([self.encoder(x)])


#: Branch classes by the ``kind`` of :func:`build_branch`.
BRANCHES: dict[str, type[nn.Module]] = {"discomkd": DisCoMKDBranch, "mono": MonoBranch}


def optional_spec(padding: str = "zeros", decoder: bool = False) -> dict[str, Any]:
    """The optional branch arguments that differ from their defaults.

    A spec leaves the defaults out, so the spec (and the predictor file) of a branch that
    uses none of these options is what it was before they existed.
    """
    return {**({"padding": padding} if padding != "zeros" else {}),
            **({"decoder": True} if decoder else {})}


def build_branch(kind: str, **kwargs: Any) -> nn.Module:
    """Build a single-modality branch from its spec.

    Args:
        kind: ``discomkd`` (:class:`DisCoMKDBranch`) or ``mono`` (:class:`MonoBranch`).
        **kwargs: the branch's constructor arguments (``in_channels``, ``num_classes``,
            ``backbone``, ``width``, optionally ``padding`` and ``decoder``).

    Returns:
        A randomly initialised branch mapping ``(B, C, H, W)`` to ``(B, K)`` logits.

    Raises:
        CheckpointError: unknown kind (a spec written by another version).
    """
    if kind not in BRANCHES:
        raise CheckpointError(f"unknown branch kind {kind!r}; known kinds: "
                              f"{', '.join(BRANCHES)}")
    return BRANCHES[kind](**kwargs)


class BranchedModel(nn.Module):
    """Base of multi-modal models that hold one deployable branch per modality.

    Subclasses call :meth:`add_branch` for each modality; the branch's spec is recorded
    so that ``build_branch(**model.branch_spec(m))`` rebuilds the same architecture,
    and ``model.branch(m).state_dict()`` its weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleDict()
        self._specs: dict[str, dict[str, Any]] = {}

    def add_branch(self, modality: str, kind: str,
                   weights: str | os.PathLike[str] | None = None, **kwargs: Any) -> nn.Module:
        """Build a branch with :func:`build_branch` and register it under ``modality``.

        Args:
            modality: modality name, e.g. ``sar``.
            kind: branch kind (see :func:`build_branch`).
            weights: optional local state-dict file to initialise every encoder of the
                branch from (see :func:`load_backbone_weights`); not part of the spec,
                since a saved branch carries its trained weights.
            **kwargs: JSON-able constructor arguments of the branch.

        Returns:
            The new branch.
        """
        branch = build_branch(kind, **kwargs)
        if weights is not None:
            for encoder in branch.encoders():
                load_backbone_weights(encoder, weights)
        self.branches[modality] = branch
        self._specs[modality] = {"kind": kind, **kwargs}
        return branch

    @property
    def modalities(self) -> list[str]:
        """Modality names, in branch order (the modality ids of DisCoM-KD's targets)."""
        return list(self.branches)

    def branch(self, modality: str) -> nn.Module:
        """The deployable classifier of ``modality``: normalised images to logits."""
        if modality not in self.branches:
            raise KeyError(f"no {modality!r} branch (model has: {', '.join(self.branches)})")
        return self.branches[modality]

    def branch_spec(self, modality: str) -> dict[str, Any]:
        """Keyword arguments of :func:`build_branch` (``kind`` included) for ``modality``."""
        self.branch(modality)  # same error for an unknown modality
        return copy.deepcopy(self._specs[modality])
