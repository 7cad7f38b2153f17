"""Image encoders: ``(B, C, H, W)`` images of any band count to ``(B, D)`` feature vectors.

``resnet18`` is the paper's encoder (torchvision ResNet-18 trained from scratch, first
convolution taking the modality's bands, classifier removed); ``small_cnn`` is a few
conv-BN-ReLU layers for the demo and the tests on CPU. Every encoder has an
``out_features`` attribute (D), and is a feature map followed by global average pooling:
``stages()`` lists the convolutional stages with their cumulative output strides and
``receptive_field`` is the side of the input square one feature-map cell sees, which is
what dense (shared-computation) inference needs (:mod:`discomkd_geo.models.dense`).
:func:`load_backbone_weights` initialises an encoder from a local state-dict file. Used by
:mod:`discomkd_geo.models.branches`.
"""

import os
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from ..errors import CheckpointError, ConfigError
from ._files import LOAD_ERRORS, load_error_message


class ResNet18Features(ResNet):
    """Torchvision ResNet-18 with ``in_channels`` input bands and no classifier.

    Subclassing (rather than wrapping) keeps torchvision's state-dict keys, so
    ResNet-18 weight files load as they are (see :func:`load_backbone_weights`).

    Args:
        in_channels: number of input bands.
        padding: the convolutions' ``padding_mode`` (see :data:`PADDINGS`).
    """

    out_features = 512
    #: Theoretical receptive field of a layer4 cell: 7x7/2 stem, 3x3/2 max-pool, then
    #: eight 3x3 convolutions per stage pair at strides 4, 8, 16 and 32.
    receptive_field = 435

    def __init__(self, in_channels: int, padding: str = "zeros") -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2])
        # PyTorch's default initialisation for the new stem, as the authors' code leaves it
        # (their conv1 is replaced after torchvision's init): its scale follows the band
        # count (fan-in). torchvision's kaiming fan_out init gave every band count a std of
        # 0.025, 2.3x smaller than the default for 2 SAR bands, and the SAR branch took off
        # epochs later (benchmarks/fidelity/: with the default init our SAR validation F1
        # fell within the public script's seed spread at 5 of 6 epochs, at none without).
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.fc = nn.Identity()
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d) and any(conv.padding):
                conv.padding_mode = padding

    def stages(self) -> list[tuple[nn.Module, int]]:
        """``(stage, cumulative output stride)`` whose composition gives the feature map."""
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        return [(stem, 4), (self.layer1, 4), (self.layer2, 8), (self.layer3, 16),
                (self.layer4, 32)]


def _conv_bn_relu(cin: int, cout: int, padding: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False, padding_mode=padding),
                         nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallCNN(nn.Sequential):
    """Four conv-BN-ReLU stages (``width`` to ``8 * width`` channels) and global pooling.

    Three 2x max-pools shrink the image before the wider stages, which keeps it fast on
    CPU; ``out_features = 8 * width``, output stride 8, receptive field 38 pixels.

    Args:
        in_channels: number of input bands.
        width: channels of the first stage.
        padding: the convolutions' ``padding_mode`` (see :data:`PADDINGS`).
    """

    def __init__(self, in_channels: int, width: int = 32, padding: str = "zeros") -> None:
        w = width
        super().__init__(OrderedDict(
            stage1=_conv_bn_relu(in_channels, w, padding), pool1=nn.MaxPool2d(2),
            stage2=_conv_bn_relu(w, 2 * w, padding), pool2=nn.MaxPool2d(2),
            stage3=_conv_bn_relu(2 * w, 4 * w, padding), pool3=nn.MaxPool2d(2),
            stage4=_conv_bn_relu(4 * w, 8 * w, padding),
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
        ))
        self.out_features = 8 * w
        self.receptive_field = 38

    def stages(self) -> list[tuple[nn.Module, int]]:
        """``(stage, cumulative output stride)`` whose composition gives the feature map."""
        return [(self.stage1, 1), (nn.Sequential(self.pool1, self.stage2), 2),
                (nn.Sequential(self.pool2, self.stage3), 4),
                (nn.Sequential(self.pool3, self.stage4), 8)]


#: Encoder names accepted by :func:`build_backbone` (``model.backbone`` in the config).
BACKBONES = ("resnet18", "small_cnn")
#: What the convolutions see beyond an image's edge (``model.padding``). ``zeros`` is
#: torchvision's (the paper's). With ``zeros`` the cells at a training patch's edge see
#: the padding, and a classifier can learn to read the contrast between the patch and the
#: zeros (for SAR, the backscatter level); a window of a scene has real neighbours there
#: instead, which is why dense and per-pixel maps lost accuracy inside uniform regions.
#: ``reflect`` mirrors the image, so an edge cell of a patch sees what it would see in a
#: uniform region of a scene.
PADDINGS = ("zeros", "reflect")


def build_backbone(name: str, in_channels: int, width: int = 32,
                   padding: str = "zeros") -> nn.Module:
    """An encoder mapping ``(B, in_channels, H, W)`` to ``(B, out_features)``.

    Args:
        name: ``resnet18`` (512 features) or ``small_cnn`` (``8 * width`` features).
        in_channels: number of input bands.
        width: base channel count of ``small_cnn`` (ignored by ``resnet18``).
        padding: the convolutions' padding mode, one of :data:`PADDINGS`.

    Returns:
        The encoder, randomly initialised, with an ``out_features`` attribute.

    Raises:
        ConfigError: unknown backbone name or padding.
    """
    if padding not in PADDINGS:
        raise ConfigError("model.padding", f"unknown padding {padding!r}; choose one of "
                          f"{', '.join(PADDINGS)}")
    if name == "resnet18":
        return ResNet18Features(in_channels, padding)
    if name == "small_cnn":
        return SmallCNN(in_channels, width, padding)
    raise ConfigError("model.backbone", f"unknown backbone {name!r}; choose one of "
                      f"{', '.join(BACKBONES)}")


def _first_conv_key(module: nn.Module) -> str | None:
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            return f"{name}.weight"
    return None


def _adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Give a first-layer kernel ``(O, C', k, k)`` ``in_channels`` input channels.

    Each new channel gets the mean kernel over the file's channels, scaled by
    ``C' / in_channels`` so that an image with the same value in every band produces
    the same activations as before. Averaging (rather than cycling R, G, B over the new
    bands, as timm does) because satellite bands have no RGB order to map to.
    """
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)


def load_backbone_weights(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Initialise an encoder from a local state-dict file (e.g. ImageNet ResNet-18).

    The file may hold the state dict itself or ``{"state_dict": ...}``; a ``module.``
    prefix (DataParallel) is removed, and keys the encoder does not have (a classifier
    head, say) are ignored. If only the first convolution's input channel count
    differs, its kernel is adapted (see :func:`_adapt_first_conv`).

    Args:
        module: an encoder from :func:`build_backbone`.
        path: the weights file.

    Raises:
        CheckpointError: the file is unreadable or does not fit the encoder.
    """
    source = os.fspath(path)
    try:
        state: Any = torch.load(source, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as err:
        raise CheckpointError(f"{source}: cannot read weights ({load_error_message(err)})"
                              ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target = module.state_dict()
    missing = [k for k in target if k not in state]
    if missing:
        raise CheckpointError(
            f"{source}: does not fit a {type(module).__name__} encoder: {len(missing)} "
            f"missing keys (e.g. {', '.join(missing[:3])})")
    first = _first_conv_key(module)
    loaded = {}
    for key, ref in target.items():
        value = state[key]
        if (key == first and value.ndim == 4 and value.shape[0] == ref.shape[0]
                and value.shape[2:] == ref.shape[2:] and value.shape[1] != ref.shape[1]):
            value = _adapt_first_conv(value, ref.shape[1])
        if value.shape != ref.shape:
            raise CheckpointError(
                f"{source}: does not fit a {type(module).__name__} encoder: {key} has "
                f"shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
        loaded[key] = value
    module.load_state_dict(loaded)
