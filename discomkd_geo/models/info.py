"""What every predictor is and says, without torch: its metadata and its interface.

The inference engine relies on :class:`BranchPredictor` only, which both the PyTorch
:class:`~discomkd_geo.models.predictor.Predictor` and the onnxruntime
:class:`~discomkd_geo.models.onnx_predictor.OnnxPredictor` implement; so mapping with an
exported ONNX branch never imports torch.
"""

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from ..data.bandstats import BandStats
from ..data.sensors import Sensor, sensor_of


@dataclass
class PredictorInfo:
    """What a single-modality classifier expects and produces.

    Attributes:
        modality: modality name, e.g. ``sar``.
        bands: band names in the order the model reads them.
        classes: class names in logit order.
        colors: one RGB triple per class, for colour tables and legends.
        patch_size: side of the square window the model classifies, in pixels.
        pixel_size: ground sampling distance of the training data in metres, if known.
        units: the name of the raw values' units as files store it, ``dB`` (SAR
            backscatter) or ``dn`` (Sentinel-2 L1C digital numbers, reflectance x 10000):
            the :attr:`sensor`'s, filled in when not given. Code asks :attr:`sensor`.
        method: training method that produced the branch (``discomkd``, ``mono``, ...).
        branch_spec: keyword arguments of :func:`discomkd_geo.models.branches.build_branch`.
        temperature: the calibration temperature ``T`` of the window classifier, whose
            probabilities are ``softmax(logits / T)`` (Guo et al., 2017; fitted on the
            validation split by :mod:`discomkd_geo.training.temperature_fit`), or
            ``None``: not calibrated, the plain softmax (files written before
            calibration existed). Mode pixel's decoder keeps its own probabilities.
    """

    modality: str
    bands: list[str]
    classes: list[str]
    colors: list[tuple[int, int, int]]
    patch_size: int
    pixel_size: float | None = None
    units: str | None = None
    method: str = "discomkd"
    branch_spec: dict[str, Any] = field(default_factory=dict)
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.units is None:  # files always store it; new infos store their sensor's
            self.units = self.sensor.units

    @property
    def sensor(self) -> Sensor:
        """The profile of the sensor whose values the classifier reads.

        From :mod:`discomkd_geo.data.sensors`, by modality; what depends on the sensor
        (value range, storages, saturation, resampling) is asked of it.
        """
        return sensor_of(self.modality)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PredictorInfo":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["colors"] = [tuple(int(v) for v in c) for c in data["colors"]]
        return cls(**data)


class BranchPredictor(Protocol):
    """One modality's classifier as the inference engine uses it: raw patches in, probabilities out.

    Window probabilities (windows and dense mode) are already calibrated with
    ``info.temperature`` when the branch has one; callers never apply it again. Mode
    pixel's are the decoder's own (see ``Predictor.probabilities``).

    Attributes:
        info: what the classifier expects and produces.
        stats: its normalisation statistics (the engine fills gaps with typical values and
            checks scenes against the training profile).
    """

    info: PredictorInfo
    stats: BandStats

    def predict_batch(self, batch: np.ndarray, device: str) -> np.ndarray:
        """Probabilities ``(B, K)`` float32 of raw float32 patches ``(B, C, patch, patch)``."""

    def dense_halo(self) -> int:
        """Context dense mode needs around its windows; raises ``CheckpointError`` if none."""

    def predict_dense(self, values: np.ndarray, stride: int, halo: int,
                      device: str) -> np.ndarray:
        """Probabilities ``(rows, cols, K)`` of every window of raw ``(C, h, w)`` values."""

    @property
    def has_decoder(self) -> bool:
        """Whether the classifier has a per-pixel decoder (mode ``pixel``)."""

    def pixel_halo(self, extra: int = 0) -> int:
        """Context pixel mode needs around a block, ``extra`` px more, in whole cells.

        Raises ``CheckpointError`` if the classifier has no decoder.
        """

    def predict_pixels(self, values: np.ndarray, halo: int, device: str) -> np.ndarray:
        """Probabilities ``(K, h - 2 halo, w - 2 halo)`` of raw ``(C, h, w)`` values' pixels."""

    def default_device(self) -> str:
        """The device to run on when the user names none."""

    def check_device(self, device: str) -> None:
        """Raise ``SettingsError`` (param ``device``) if the runtime cannot use ``device``."""

    def get_threads(self) -> int:
        """Intra-op threads the calling thread's runs use."""

    def set_threads(self, threads: int) -> None:
        """Set the intra-op threads of the calling thread's runs."""
