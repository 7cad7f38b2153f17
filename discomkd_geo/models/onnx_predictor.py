"""Run an exported ONNX branch with onnxruntime: the engine's predictor without PyTorch.

:func:`discomkd_geo.models.onnx_export.export_onnx` writes a graph that takes raw patches
in the units of the checkpoint (normalisation baked in) and returns class probabilities,
with the branch's :class:`~.info.PredictorInfo` and :class:`BandStats` in the model's
metadata (key :data:`METADATA_KEY`). :class:`OnnxPredictor` reads both and implements
:class:`~.info.BranchPredictor`, so ``predict --checkpoint model.onnx`` maps through the
same engine, checks and writers as a torch branch: in ``windows`` mode, and in ``pixel``
mode when the export holds the per-pixel graph of a branch with a decoder (metadata key
:data:`PIXEL_GRAPH_KEY`; files exported before it existed, or from branches without a
decoder, have none). Dense mode pools the encoders' feature maps, which no exported graph
exposes.

A calibrated branch's temperature (``info.temperature``) is inside the window graph, traced
from :meth:`~.predictor.Predictor.probabilities` like the normalisation, so every tool
running the graph (Deepness too) gets the calibrated probabilities, and :class:`OnnxPredictor`
applies nothing more; the metadata's ``info`` records it. The pixel graph gives the
decoder's own probabilities, as the torch predictor does.
"""

import base64
import binascii
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
#: ``format`` of a Deepness export of a branch with a decoder: its per-pixel output is the
#: decoder's, so it cannot classify windows, and this package does not map with it.
DEEPNESS_PIXELS_FORMAT = "discomkd_geo.onnx.deepness_pixels"
#: Metadata key holding the per-pixel graph (mode ``pixel``), a serialised ONNX model in
#: base64 (see :mod:`.onnx_export`), beside ``pixels`` ``{"halo", "cell"}`` in
#: :data:`METADATA_KEY`'s entry.
PIXEL_GRAPH_KEY = "discomkd_geo.pixel_graph"
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
        pixel_graph: the per-pixel graph, serialised, and its ``{"halo", "cell"}`` (the
            base halo it crops and the encoders' cell), or ``None``: no decoder.
    """

    def __init__(self, model: bytes, info: PredictorInfo, stats: BandStats,
                 source: str = "<onnx>",
                 pixel_graph: tuple[bytes, dict[str, int]] | None = None) -> None:
        self.model = model
        self.info = info
        self.stats = stats
        self.source = source
        self.pixel_graph = pixel_graph
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._sessions: dict[tuple[bool, str, int], Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("model", "info", "stats", "source",
                                                 "pixel_graph")}

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
        session = _cpu_session(model, source, "ONNX model")
        meta = session.get_modelmeta().custom_metadata_map
        try:
            payload = json.loads(meta[METADATA_KEY])
            fmt = payload.get("format")
            if fmt not in (ONNX_FORMAT, DEEPNESS_PIXELS_FORMAT):
                raise KeyError("format")
        except (KeyError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{source}: not a discomkd_geo ONNX export (no "
                                  f"{METADATA_KEY!r} metadata)") from err
        if fmt == DEEPNESS_PIXELS_FORMAT:
            raise CheckpointError(f"{source}: a Deepness export of a per-pixel decoder (for "
                                  "QGIS Deepness only); map with a plain ONNX export "
                                  "(per_pixel=False)")
        if payload.get("version") != ONNX_FORMAT_VERSION:
            raise CheckpointError(f"{source}: ONNX export version {payload.get('version')} "
                                  f"is not supported (expected {ONNX_FORMAT_VERSION})")
        info = PredictorInfo.from_dict(payload["info"])
        if modality is not None and info.modality != modality:
            raise CheckpointError(f"{source}: holds the {info.modality!r} branch, "
                                  f"not {modality!r}")
        return cls(model, info, BandStats.from_dict(payload["stats"]), source,
                   _read_pixel_graph(meta, payload, source))

    def _session(self, device: str, pixels: bool = False) -> Any:
        """The session of the window (or pixel) graph for ``device`` and this thread."""
        key = (pixels, device, self.get_threads())
        with self._lock:
            if key not in self._sessions:
                ort = _onnxruntime(self.source)
                self.check_device(device)
                options = ort.SessionOptions()
                options.intra_op_num_threads = key[2]
                options.inter_op_num_threads = 1
                provider = _PROVIDERS[device.split(":")[0]]
                model = self.pixel_graph[0] if pixels else self.model
                self._sessions[key] = ort.InferenceSession(model, options,
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

    @property
    def has_decoder(self) -> bool:
        """Whether the export holds a per-pixel graph (mode ``pixel``)."""
        return self.pixel_graph is not None

    def pixel_halo(self, extra: int = 0) -> int:
        """Context :meth:`predict_pixels` needs around a block, ``extra`` px more.

        The same numbers as :meth:`.Predictor.pixel_halo`: the base halo plus ``extra``,
        rounded up to whole cells (every term of the base is whole cells).

        Raises:
            CheckpointError: the export holds no per-pixel graph.
        """
        if self.pixel_graph is None:
            raise CheckpointError(f"{self.source}: this ONNX model has no per-pixel decoder "
                                  "(its branch had none, or it was exported before ONNX "
                                  "exports held one); use mode='windows'")
        geometry = self.pixel_graph[1]
        cell = geometry["cell"]
        return -(-(geometry["halo"] + extra) // cell) * cell

    def predict_pixels(self, values: np.ndarray, halo: int, device: str) -> np.ndarray:
        """Probabilities ``(K, h - 2 halo, w - 2 halo)`` of raw ``(C, h, w)`` values' pixels.

        ``halo`` is at least :meth:`pixel_halo`: the graph crops that, the rest here.
        """
        base = self.pixel_halo()
        if halo < base:
            raise ValueError(f"halo {halo} is less than the model's pixel halo {base}")
        session = self._session(device, pixels=True)
        block = np.ascontiguousarray(values[None], dtype=np.float32)
        [probs] = session.run(None, {session.get_inputs()[0].name: block})
        cut = halo - base
        return probs[0, :, cut:probs.shape[2] - cut, cut:probs.shape[3] - cut]

    def _no_dense(self) -> CheckpointError:
        return CheckpointError(f"{self.source}: ONNX models do not run in mode 'dense' (it "
                               "pools the encoders' feature maps, which no exported graph "
                               "exposes); use mode='windows' (or mode='pixel' with a decoder) "
                               "or the torch checkpoint")

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


def _cpu_session(model: bytes, source: str, what: str) -> Any:
    """An onnxruntime CPU session of ``model``; a one-line error if it cannot make one."""
    ort = _onnxruntime(source)
    try:
        return ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types (InvalidProtobuf, Fail)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{source}: cannot read {what}: "
                              f"{type(err).__name__}: {first[:120]}") from err


def _read_pixel_graph(meta: dict[str, str], payload: dict[str, Any],
                      source: str) -> tuple[bytes, dict[str, int]] | None:
    """The per-pixel graph and its geometry an export's metadata holds, if any.

    Raises:
        CheckpointError: the metadata announces a pixel graph it does not hold intact (a
            graph onnxruntime cannot load fails here, not in the middle of a map).
    """
    geometry = payload.get("pixels")
    if geometry is None:
        return None
    try:
        graph = base64.b64decode(meta[PIXEL_GRAPH_KEY], validate=True)
        geometry = {"halo": int(geometry["halo"]), "cell": int(geometry["cell"])}
    except (KeyError, TypeError, ValueError, binascii.Error) as err:
        raise CheckpointError(f"{source}: its per-pixel graph ({PIXEL_GRAPH_KEY!r} "
                              "metadata) is missing or damaged") from err
    _cpu_session(graph, source, "its per-pixel graph")
    return graph, geometry
