"""Per-band normalisation statistics, without torch.

:class:`BandStats` travels inside checkpoints and exported models (torch and ONNX), so
it must load where PyTorch is not installed (``predict --checkpoint model.onnx``); the
module that applies it to tensors and the streaming pass that computes it live in
:mod:`.normalization`.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass
class BandStats:
    """Normalisation statistics of one modality: ``y = (x - shift) / scale``.

    Attributes:
        method: ``percentile`` (then ``y`` is clipped to [0, 1]) or ``meanstd``.
        bands: band names, in the order of the image channels.
        shift: per band, the low percentile or the mean.
        scale: per band, high minus low percentile, or the standard deviation.
        profile: per band, the training data's percentiles keyed ``p2``, ``p50``, ``p98``
            (:data:`~.normalization.PROFILE_PERCENTILES`); ``None`` in statistics computed
            before they were recorded.
    """

    method: Literal["percentile", "meanstd"]
    bands: list[str]
    shift: list[float]
    scale: list[float]
    profile: dict[str, list[float]] | None = None

    def __post_init__(self) -> None:
        if not len(self.bands) == len(self.shift) == len(self.scale):
            raise ValueError("bands, shift and scale must have the same length")
        if self.profile is not None and any(len(v) != len(self.bands)
                                            for v in self.profile.values()):
            raise ValueError("every profile percentile needs one value per band")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BandStats":
        """Inverse of :meth:`to_dict`."""
        profile = data.get("profile")  # absent from statistics of earlier versions
        return cls(method=data["method"], bands=list(data["bands"]),
                   shift=[float(v) for v in data["shift"]],
                   scale=[float(v) for v in data["scale"]],
                   profile=None if profile is None else {
                       k: [float(v) for v in values] for k, values in profile.items()})

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
        profile = None if self.profile is None else {
            k: [values[i] for i in idx] for k, values in self.profile.items()}
        return BandStats(self.method, list(bands), [self.shift[i] for i in idx],
                         [self.scale[i] for i in idx], profile)
