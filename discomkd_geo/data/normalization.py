"""Per-band normalisation: statistics, their JSON form, and the module that applies them.

The paper's preprocessing (Ienco & Fraga Dantas, 2024) clips each band to its 2nd-98th
percentile over the training set and rescales to [0, 1]; mean/std standardisation is the
alternative. :class:`BandStats` is what travels inside checkpoints, so inference
normalises exactly as training did.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn


@dataclass
class BandStats:
    """Normalisation statistics of one modality: ``y = (x - shift) / scale``.

    Attributes:
        method: ``percentile`` (then ``y`` is clipped to [0, 1]) or ``meanstd``.
        bands: band names, in the order of the image channels.
        shift: per band, the low percentile or the mean.
        scale: per band, high minus low percentile, or the standard deviation.
    """

    method: Literal["percentile", "meanstd"]
    bands: list[str]
    shift: list[float]
    scale: list[float]

    def __post_init__(self) -> None:
        if not len(self.bands) == len(self.shift) == len(self.scale):
            raise ValueError("bands, shift and scale must have the same length")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BandStats":
        """Inverse of :meth:`to_dict`."""
        return cls(method=data["method"], bands=list(data["bands"]),
                   shift=[float(v) for v in data["shift"]],
                   scale=[float(v) for v in data["scale"]])

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write the statistics as JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> "BandStats":
        """Read statistics written by :meth:`save_json`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def select(self, bands: Sequence[str]) -> "BandStats":
        """The statistics of a subset of bands, in the given order."""
        idx = [self.bands.index(b) for b in bands]
        return BandStats(self.method, list(bands), [self.shift[i] for i in idx],
                         [self.scale[i] for i in idx])


class Normalize(nn.Module):
    """Apply :class:`BandStats` to images of shape ``(..., C, H, W)`` on any device."""

    def __init__(self, stats: BandStats) -> None:
        super().__init__()
        self.clip = stats.method == "percentile"
        # A constant band has zero spread: divide by 1 rather than by 0.
        scale = [s if s > 0 else 1.0 for s in stats.scale]
        self.register_buffer("shift", torch.tensor(stats.shift).view(-1, 1, 1))
        self.register_buffer("scale", torch.tensor(scale).view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (cast to float32)."""
        y = (x.float() - self.shift) / self.scale
        return y.clamp(0.0, 1.0) if self.clip else y
