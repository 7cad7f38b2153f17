"""Kornia batch augmentations for normalised multispectral and SAR patches.

The authors' public code (Ienco & Fraga Dantas, 2024) augments with random flips,
random 90-degree rotations and colour jitter. RGB colour jitter (hue, saturation) has
no meaning for 13 Sentinel-2 bands or for SAR backscatter, so intensity jitter here is
physical per modality:

* reflectance (MS): a per-band multiplicative gain and additive offset
  (:class:`RandomBandGainOffset`), like illumination and calibration differences;
* SAR: an additive shift in dB, common to both polarisations plus a smaller
  per-polarisation part (:class:`RandomDecibelShift`), like incidence-angle and
  calibration differences. It is applied after normalisation, so the dB shift is divided
  by each band's normalisation scale.

Everything is an ``nn.Module`` working on batched ``(B, C, H, W)`` tensors on the batch's
device. :class:`MultiModalAugmentation` applies them to a DataModule batch after
normalisation (training only); for paired batches the geometric draw of the first
modality is replayed on the others (Kornia's ``params=``), so pairs stay aligned.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from ..config import AugmentConfig
from .normalization import BandStats
from .sensors import Sensor, sensor_of


class RandomBandGainOffset(K.IntensityAugmentationBase2D):
    """Per-band gain and offset jitter for normalised reflectance: ``x * g_c + o_c``.

    Args:
        gain: range of the multiplicative factor drawn per sample and band.
        offset: range of the additive offset (normalised units) per sample and band.
        p: probability of jittering each sample.
        keepdim: keep a ``(C, H, W)`` input unbatched.
    """

    def __init__(self, gain: tuple[float, float] = (0.9, 1.1),
                 offset: tuple[float, float] = (-0.05, 0.05), p: float = 0.5,
                 keepdim: bool = False) -> None:
        super().__init__(p=p, keepdim=keepdim)
        self.flags = {"gain": gain, "offset": offset}

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """Draw one gain and one offset per sample and band."""
        b, c = batch_shape[:2]
        gain = torch.empty(b, c).uniform_(*self.flags["gain"])
        offset = torch.empty(b, c).uniform_(*self.flags["offset"])
        return {"gain": gain, "offset": offset}

    def apply_transform(self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any],
                        transform: Tensor | None = None) -> Tensor:
        """``input * gain + offset`` per band, in the input's dtype and device."""
        gain = params["gain"].to(input)[..., None, None]
        offset = params["offset"].to(input)[..., None, None]
        return input * gain + offset


class RandomDecibelShift(K.IntensityAugmentationBase2D):
    """Additive backscatter shift in dB for normalised SAR bands.

    Each jittered sample gets one shift common to all polarisations plus a smaller one
    per polarisation (cross-pol calibration varies on its own). The shift is expressed in
    dB and converted to normalised units with the bands' normalisation scale (dB per unit),
    so ``shift_db=1`` means 1 dB whatever the statistics.

    Args:
        scale: per band, the normalisation scale in dB (``BandStats.scale``); 1 for raw dB.
        shift_db: the common shift is drawn in ``[-shift_db, shift_db]`` dB.
        band_shift_db: the per-polarisation shift is drawn in ``[-band_shift_db, band_shift_db]``.
        p: probability of jittering each sample.
        keepdim: keep a ``(C, H, W)`` input unbatched.
    """

    def __init__(self, scale: Sequence[float], shift_db: float = 1.0,
                 band_shift_db: float = 0.5, p: float = 0.5, keepdim: bool = False) -> None:
        super().__init__(p=p, keepdim=keepdim)
        self.flags = {"shift_db": shift_db, "band_shift_db": band_shift_db}
        # A zero scale is treated as 1, as Normalize does.
        self.register_buffer("scale", torch.tensor([s if s > 0 else 1.0 for s in scale]))

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """Draw a common and a per-band shift (dB) per sample."""
        b, c = batch_shape[:2]
        common = torch.empty(b, 1).uniform_(-self.flags["shift_db"], self.flags["shift_db"])
        per_band = torch.empty(b, c).uniform_(-self.flags["band_shift_db"],
                                              self.flags["band_shift_db"])
        return {"shift_db": common + per_band}

    def apply_transform(self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any],
                        transform: Tensor | None = None) -> Tensor:
        """Add the shift divided by each band's scale."""
        shift = params["shift_db"].to(input) / self.scale.to(input)
        return input + shift[..., None, None]


class RandomDihedral(K.GeometricAugmentationBase2D):
    """Random horizontal/vertical flips and quarter turns of square images, in one pass.

    Kornia's separate ``RandomHorizontalFlip``, ``RandomVerticalFlip`` and
    ``RandomRotation90`` each transform the whole batch and blend it with the input, and
    the rotation resamples through an affine warp: on a CPU that costs several times the
    loading of the batch. Here each sample draws its flips (probability ``flip_p`` each)
    and 1-3 counter-clockwise quarter turns (probability ``turn_p``); samples sharing a
    draw are moved together with index permutations (``flip``/``rot90``), so pixels are
    moved exactly, never interpolated. The transformation matrices follow Kornia's
    conventions, so parameters can be replayed on another modality.

    Args:
        flip_p: probability of each flip per sample (0 disables flips).
        turn_p: probability of turning a sample (0 disables turns).
        keepdim: keep a ``(C, H, W)`` input unbatched.
    """

    def __init__(self, flip_p: float = 0.5, turn_p: float = 0.5, keepdim: bool = False) -> None:
        # The per-sample probabilities live in the parameters: Kornia's own gate is off.
        super().__init__(p=1.0, keepdim=keepdim)
        self.flags = {"flip_p": flip_p, "turn_p": turn_p}

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """Draw per sample: horizontal flip, vertical flip, quarter turns (0-3)."""
        b = batch_shape[0]
        turned = torch.rand(b) < self.flags["turn_p"]
        return {"hflip": (torch.rand(b) < self.flags["flip_p"]).long(),
                "vflip": (torch.rand(b) < self.flags["flip_p"]).long(),
                "turns": torch.where(turned, torch.randint(1, 4, (b,)), 0)}

    def compute_transformation(self, input: Tensor, params: dict[str, Tensor],
                               flags: dict[str, Any]) -> Tensor:
        """Pixel-coordinate matrices ``(B, 3, 3)``: turns after vertical after horizontal flip."""
        h, w = input.shape[-2] - 1, input.shape[-1] - 1

        def matrix(rows: list[list[float]]) -> Tensor:
            return torch.tensor(rows, device=input.device, dtype=input.dtype)

        eye = torch.eye(3, device=input.device, dtype=input.dtype)
        hflip = torch.stack([eye, matrix([[-1, 0, w], [0, 1, 0], [0, 0, 1]])])
        vflip = torch.stack([eye, matrix([[1, 0, 0], [0, -1, h], [0, 0, 1]])])
        turn = matrix([[0, 1, 0], [-1, 0, w], [0, 0, 1]])  # (x, y) -> (y, w - x)
        turns = torch.stack([torch.linalg.matrix_power(turn, k) for k in range(4)])
        index = {k: params[k].to(input.device).long() for k in ("hflip", "vflip", "turns")}
        return turns[index["turns"]] @ vflip[index["vflip"]] @ hflip[index["hflip"]]

    @staticmethod
    def _sources(height: int, width: int, device: torch.device) -> Tensor:
        """Per draw code (hflip + 2 vflip + 4 turns), the source pixel of each output pixel.

        The moves are applied to an image of pixel indices, so each output position holds
        the flat index of the input pixel that lands there.
        """
        pixels = torch.arange(height * width, device=device).view(height, width)
        sources = []
        for code in range(16):
            moved = pixels.flip(-1) if code & 1 else pixels
            moved = moved.flip(-2) if code & 2 else moved
            sources.append(torch.rot90(moved, code // 4, dims=(-2, -1)).flatten())
        return torch.stack(sources)

    def apply_transform(self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any],
                        transform: Tensor | None = None) -> Tensor:
        """Move every sample's pixels with one gather over the batch.

        Raises:
            ValueError: quarter turns of non-square images.
        """
        b, c, h, w = input.shape
        if h != w and bool((params["turns"] % 2 == 1).any()):
            raise ValueError(f"quarter turns need square images, got {(h, w)}")
        code = (params["hflip"] + 2 * params["vflip"] + 4 * params["turns"]).to(input.device)
        index = self._sources(h, w, input.device)[code]  # (B, H*W)
        moved = input.reshape(b, c, h * w).gather(2, index[:, None, :].expand(b, c, h * w))
        return moved.view(b, c, h, w)


def geometric_augmentation(config: AugmentConfig) -> K.AugmentationSequential:
    """Flips and quarter turns as configured (:class:`RandomDihedral`), exact."""
    if not (config.flips or config.rot90):
        return K.AugmentationSequential()
    return K.AugmentationSequential(RandomDihedral(flip_p=config.p if config.flips else 0.0,
                                                   turn_p=config.p if config.rot90 else 0.0))


def intensity_augmentation(sensor: Sensor, config: AugmentConfig,
                           stats: BandStats | None = None) -> nn.Module:
    """The intensity jitter that suits a sensor's raw units, or identity if disabled.

    Args:
        sensor: the sensor whose values are jittered: in decibels (SAR backscatter) a
            shift in dB, otherwise (reflectance) a gain and offset.
        config: augmentation settings.
        stats: normalisation statistics of the modality; for decibels their scale turns
            dB shifts into normalised units (``None``: the images are raw dB).
    """
    if not config.intensity:
        return nn.Identity()
    if sensor.decibels:
        scale = stats.scale if stats is not None else [1.0]
        return RandomDecibelShift(scale, p=config.p)
    return RandomBandGainOffset(p=config.p)


class MultiModalAugmentation(nn.Module):
    """Augment the ``image_<m>`` entries of a batch; labels and other keys pass through.

    A mosaic's label map ``mask_<m>`` moves with its image (the same geometric draw).

    Args:
        modalities: the modality names (each one's sensor says its intensity jitter).
        config: augmentation settings (``AugmentConfig``).
        stats: normalisation statistics per modality (for the SAR dB-to-normalised scale).
    """

    def __init__(self, modalities: Iterable[str], config: AugmentConfig,
                 stats: Mapping[str, BandStats] | None = None) -> None:
        super().__init__()
        self.share_geometry = config.share_geometry
        self.geometric = nn.ModuleDict({m: geometric_augmentation(config) for m in modalities})
        self.intensity = nn.ModuleDict({
            m: intensity_augmentation(sensor_of(m), config, None if stats is None else stats[m])
            for m in self.geometric
        })

    def forward(self, batch: dict[str, Any], paired: bool) -> dict[str, Any]:
        """Augment a batch (a new dict; the input is not modified).

        Args:
            batch: ``image_<m>`` tensors of shape ``(B, C, H, W)`` for every modality.
            paired: the modalities' samples are aligned pairs; with ``share_geometry``
                every modality then gets the first modality's geometric draw.

        Returns:
            The batch with augmented images, same shapes and dtypes.
        """
        out = dict(batch)
        shared_params = None
        for m, geometric in self.geometric.items():
            image = batch[f"image_{m}"]
            if paired and self.share_geometry and shared_params is not None:
                image = geometric(image, params=shared_params)
            else:
                image = geometric(image)
                shared_params = geometric._params
            out[f"image_{m}"] = self.intensity[m](image)
            if f"mask_{m}" in batch:
                mask = batch[f"mask_{m}"][:, None].to(image.dtype)
                out[f"mask_{m}"] = geometric(mask, params=geometric._params)[:, 0].long()
        return out
