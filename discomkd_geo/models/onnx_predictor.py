"""Run an exported ONNX branch with onnxruntime: the engine's predictor without PyTorch.

:func:`discomkd_geo.models.onnx_export.export_onnx` writes a graph that takes raw patches
in the units of the checkpoint (normalisation baked in) and returns class probabilities,
with the branch's :class:`~.info.PredictorInfo` and :class:`BandStats` in the model's
metadata (key :data:`METADATA_KEY`). :class:`OnnxPredictor` reads both and implements
:class:`~.info.BranchPredictor`, so ``predict --checkpoint model.onnx`` maps through the
same engine, checks and writers as a torch branch, in ``windows`` mode: dense mode pools
the encoders' feature maps, which the exported graph does not expose.
"""

import json
import os
import threading
from typing import Any

import numpy as np

from ..data.bandstats import BandStats
from ..errors import CheckpointError, SettingsError
from .info import PredictorInfo

#: Metadata key holding ``{"format", "version", "info", "stats"}`` as JSON.
METADATA_KEY = "discomkd_geo"
ONNX_FORMAT = "discomkd_geo.onnx"
ONNX_FORMAT_VERSION = 1
#: onnxruntime's execution provider for each device type.
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def _onnxruntime(source: str) -> Any:
    """The onnxruntime module, or a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise CheckpointError(f"{source}: running ONNX models needs onnxruntime "
                              "(pip install 'discomkd-geo[onnx]')") from err
    return onnxruntime


class OnnxPredictor:
    """One modality's exported branch, run by onnxruntime on NumPy arrays.

    Sessions are made on first use per device and thread count (onnxruntime fixes a
    session's intra-op threads when it is created) and shared by the engine's worker
    threads (``InferenceSession.run`` is thread-safe). Pickles as the model's bytes, so
    Dask workers need no copy of the file.

    Args:
        model: the ONNX model, serialised.
        info: what the branch expects and produces.
        stats: its normalisation statistics (already inside the graph; the engine uses
            them for gap filling and the scene checks).
        source: the file it came from, for error messages.
    """

    def __init__(self, model: bytes, info: PredictorInfo, stats: BandStats,
                 source: str = "<onnx>") -> None:
        self.model = model
        self.info = info
        self.stats = stats
        self.source = source
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._sessions: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("model", "info", "stats", "source")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    @classmethod
    def load(cls, path: str | os.PathLike[str], modality: str | None = None) -> "OnnxPredictor":
        """Read an ONNX file written by ``discomkd-geo export --format onnx``.

        Raises:
            CheckpointError: missing or unreadable file, not a discomkd_geo export, or
                the branch of another modality.
        """
        source = os.fspath(path)
        if not os.path.isfile(source):
            raise CheckpointError(f"{source}: checkpoint not found")
        with open(source, "rb") as f:
            model = f.read()
        ort = _onnxruntime(source)
        try:
            session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own exception types (InvalidProtobuf, Fail)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CheckpointError(f"{source}: cannot read ONNX model: "
                                  f"{type(err).__name__}: {first[:120]}") from err
        meta = session.get_modelmeta().custom_metadata_map
        try:
            payload = json.loads(meta[METADATA_KEY])
            if payload.get("format") != ONNX_FORMAT:
                raise KeyError("format")
        except (KeyError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{source}: not a discomkd_geo ONNX export (no "
                                  f"{METADATA_KEY!r} metadata)") from err
        if payload.get("version") != ONNX_FORMAT_VERSION:
            raise CheckpointError(f"{source}: ONNX export version {payload.get('version')} "
                                  f"is not supported (expected {ONNX_FORMAT_VERSION})")
        info = PredictorInfo.from_dict(payload["info"])
        if modality is not None and info.modality != modality:
            raise CheckpointError(f"{source}: holds the {info.modality!r} branch, "
                                  f"not {modality!r}")
        return cls(model, info, BandStats.from_dict(payload["stats"]), source)

    def _session(self, device: str) -> Any:
        """The session for ``device`` and the calling thread's thread count."""
        key = (device, self.get_threads())
        with self._lock:
            if key not in self._sessions:
                ort = _onnxruntime(self.source)
                self.check_device(device)
                options = ort.SessionOptions()
                options.intra_op_num_threads = key[1]
                options.inter_op_num_threads = 1
                provider = _PROVIDERS[device.split(":")[0]]
                self._sessions[key] = ort.InferenceSession(self.model, options,
                                                           providers=[provider])
            return self._sessions[key]

    def predict_batch(self, batch: np.ndarray, device: str) -> np.ndarray:
        """Probabilities ``(B, K)`` of raw float32 patches ``(B, C, patch, patch)``."""
        session = self._session(device)
        [probs] = session.run(None, {session.get_inputs()[0].name: batch})
        # A per-pixel (Deepness) export repeats each window's probabilities over its patch.
        return probs[:, :, 0, 0] if probs.ndim == 4 else probs

    def dense_halo(self) -> int:
        """Refuse dense mode: the exported graph does not expose the encoders' features."""
        raise self._no_dense()

    def predict_dense(self, values: np.ndarray, stride: int, halo: int,
                      device: str) -> np.ndarray:
        """Not available for ONNX models (see :meth:`dense_halo`)."""
        raise self._no_dense()

    #: The exported graph classifies windows; it holds no per-pixel decoder.
    has_decoder = False

    def pixel_halo(self, extra: int = 0) -> int:
        """Refuse pixel mode: the exported graph classifies windows only."""
        raise self._no_dense()

    def predict_pixels(self, values: np.ndarray, halo: int, device: str) -> np.ndarray:
        """Not available for ONNX models (see :meth:`pixel_halo`)."""
        raise self._no_dense()

    def _no_dense(self) -> CheckpointError:
        return CheckpointError(f"{self.source}: ONNX models run in mode 'windows' only "
                               "(modes dense and pixel need the encoders' feature maps); use "
                               "mode='windows' or the torch checkpoint")

    def default_device(self) -> str:
        """The CPU: onnxruntime's CUDA provider is used only when asked for."""
        return "cpu"

    def check_device(self, device: str) -> None:
        """Raise ``SettingsError`` unless onnxruntime has a provider for ``device`` here."""
        ort = _onnxruntime(self.source)
        if _PROVIDERS.get(device.split(":")[0]) not in ort.get_available_providers():
            raise SettingsError("device", f"{device!r}: onnxruntime runs here on "
                                          f"{', '.join(ort.get_available_providers())}")

    def get_threads(self) -> int:
        """Intra-op threads of the calling thread's sessions (default: one per CPU)."""
        threads = getattr(self._local, "threads", None)
        if threads is None and hasattr(os, "sched_getaffinity"):
            threads = len(os.sched_getaffinity(0))
        return threads or os.cpu_count() or 1

    def set_threads(self, threads: int) -> None:
        """Set the intra-op threads of the calling thread's sessions."""
        self._local.threads = threads
