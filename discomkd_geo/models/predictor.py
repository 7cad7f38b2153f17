"""Single-modality predictor: raw patch in, class probabilities out, nothing else needed.

A :class:`Predictor` bundles one modality's trained branch with the normalisation
statistics and the facts inference needs (band order, classes, colours, patch and pixel
size). It is what ``discomkd_geo.load_predictor`` returns and what
``discomkd-geo export`` writes, and the only thing the inference engine relies on.
"""

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.bandstats import BandStats
from ..data.normalization import Normalize
from ..errors import CheckpointError, SettingsError
from ..files import atomic_path
from ._files import LOAD_ERRORS, load_error_message, load_torch_file
from .branches import pixel_logits
from .dense import common_cell, dense_halo, output_stride, pixel_halo, window_features
from .info import PredictorInfo
from .layout import channels_last, class_softmax

#: Identifies files written by :meth:`Predictor.save`.
PREDICTOR_FORMAT = "discomkd_geo.predictor"
PREDICTOR_FORMAT_VERSION = 1


class Predictor(nn.Module):
    """Normalise, run one modality's branch, return softmax probabilities.

    Args:
        branch: module mapping normalised ``(B, C, H, W)`` images to ``(B, K)`` logits.
        stats: normalisation statistics of the modality, bands in ``info.bands`` order.
        info: metadata; ``info.branch_spec`` must rebuild ``branch`` for :meth:`load`.
    """

    def __init__(self, branch: nn.Module, stats: BandStats, info: PredictorInfo) -> None:
        super().__init__()
        if list(stats.bands) != list(info.bands):
            raise CheckpointError(
                f"normalisation bands {stats.bands} differ from model bands {info.bands}")
        self.info = info
        self.stats = stats
        self.normalize = Normalize(stats)
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        """Class probabilities ``(B, K)`` of raw images ``(B, C, H, W)``."""
        return self.probabilities(self.logits(x))

    def logits(self, x: Tensor) -> Tensor:
        """Class logits ``(B, K)`` of raw images ``(B, C, H, W)``, before calibration."""
        return self.branch(channels_last(self.normalize(x)))

    def probabilities(self, logits: Tensor, dim: int = 1) -> Tensor:
        """Calibrated probabilities of window logits with classes along ``dim``.

        The one place the window classifier's probabilities are made (windows and dense
        mode, and so the ONNX graph traced from them): ``softmax(logits / T)`` with the
        branch's temperature ``info.temperature`` (Guo et al., "On Calibration of Modern
        Neural Networks", ICML 2017, section 4.2), the plain softmax without one. One
        positive ``T`` keeps each window's argmax; a map that averages overlapping
        windows can still change where the average is a near tie (the demo scene at
        stride 32: 0.8 / 1.4 points of OA lost, SAR / MS, for an ECE of 0.076 / 0.037
        instead of 0.150 / 0.198).

        Mode pixel's probabilities are the decoder's own (:meth:`pixels`): ``T`` was fitted
        on the window classifier's logits, another classifier's. On the demo scene the
        decoder's probabilities had an ECE of 0.029 as they are and 0.184 divided by the
        SAR branch's ``T`` (0.22), and its smoothed map lost 1.9 points of OA.
        """
        t = self.info.temperature
        return class_softmax(logits if t is None else logits / t, dim)

    def dense_halo(self) -> int:
        """Context :meth:`dense` needs around its windows (see :func:`.dense.dense_halo`).

        Raises:
            CheckpointError: the branch cannot run densely (its encoders do not expose
                their stages, or the patch is not a whole number of feature-map cells).
        """
        encoders = self.branch.encoders() if hasattr(self.branch, "pooled_logits") else []
        if not encoders or not all(hasattr(e, "stages") for e in encoders):
            raise CheckpointError(f"the {type(self.branch).__name__} branch cannot run in "
                                  f"dense mode (no encoder stages); use mode 'windows'")
        cells = [output_stride(e) for e in encoders]
        if any(self.info.patch_size % c for c in cells):
            raise CheckpointError(f"dense mode needs the patch ({self.info.patch_size} px) "
                                  f"to be whole cells of {max(cells)} px; use mode 'windows'")
        return dense_halo(encoders)

    def dense(self, x: Tensor, stride: int, halo: int) -> Tensor:
        """Probabilities of every window of raw images, from one pass of each encoder.

        Args:
            x: ``(B, C, H, W)`` raw images.
            stride: step between windows.
            halo: context around the windows (at least :meth:`dense_halo`).

        Returns:
            ``(B, rows, cols, K)``: window ``(i, j)`` is the ``patch x patch`` square at
            ``(halo + i * stride, halo + j * stride)``
            (see :func:`~discomkd_geo.models.dense.window_features`).
        """
        x = channels_last(self.normalize(x))
        features = [window_features(e, x, self.info.patch_size, stride, halo)
                    for e in self.branch.encoders()]
        b, rows, cols, _ = features[0].shape
        logits = self.branch.pooled_logits([f.reshape(b * rows * cols, -1) for f in features])
        return self.probabilities(logits).reshape(b, rows, cols, -1)

    @property
    def has_decoder(self) -> bool:
        """Whether the branch has a per-pixel decoder (mode ``pixel``)."""
        return getattr(self.branch, "decoder", None) is not None

    def pixel_halo(self, extra: int = 0) -> int:
        """Context :meth:`pixels` needs around a block (see :func:`.dense.pixel_halo`).

        Args:
            extra: pixels of context wanted beyond it (the result stays in whole cells).

        Raises:
            CheckpointError: the branch has no decoder, or cannot run densely.
        """
        if not self.has_decoder:
            raise CheckpointError(f"this {self.info.modality} model has no per-pixel decoder "
                                  "(trained without model.decoder); use mode 'windows' or "
                                  "'dense'")
        self.dense_halo()  # the same conditions on the encoders
        return pixel_halo(self.branch.encoders(), self.info.patch_size, extra)

    def pixels(self, x: Tensor, halo: int) -> Tensor:
        """Per-pixel probabilities ``(B, K, H - 2 halo, W - 2 halo)`` of raw images.

        Args:
            x: ``(B, C, H, W)`` raw images whose first pixel starts a cell of the
                encoders in the scene (so that the result does not depend on the block).
            halo: context cropped from every side (at least :meth:`pixel_halo`).
        """
        h, w = x.shape[-2:]
        cell = common_cell(self.branch.encoders())
        # Whole cells: the far side's extra pixels lie beyond the halo, out of every
        # kept pixel's reach.
        x = F.pad(self.normalize(x), (0, -w % cell, 0, -h % cell), mode="replicate")
        x = channels_last(x)
        logits = pixel_logits(self.branch, x, self.info.patch_size)
        # The decoder's own probabilities, not tempered (see :meth:`probabilities`).
        return class_softmax(logits[..., halo:h - halo, halo:w - halo], dim=1)

    # The engine's interface (:class:`~.info.BranchPredictor`): NumPy in and out.

    def predict_batch(self, batch: np.ndarray, device: str) -> np.ndarray:
        """Probabilities ``(B, K)`` of raw float32 patches ``(B, C, patch, patch)``."""
        predictor = self.to(device).eval()
        with torch.inference_mode():
            probs = predictor(torch.from_numpy(batch).to(device))
        return probs.float().cpu().numpy()

    def predict_dense(self, values: np.ndarray, stride: int, halo: int,
                      device: str) -> np.ndarray:
        """Probabilities ``(rows, cols, K)`` of every window of raw ``(C, h, w)`` values."""
        return self._block_pass(values, device, lambda x: self.dense(x, stride, halo))

    def predict_pixels(self, values: np.ndarray, halo: int, device: str) -> np.ndarray:
        """Probabilities ``(K, h - 2 halo, w - 2 halo)`` of raw ``(C, h, w)`` values' pixels."""
        return self._block_pass(values, device, lambda x: self.pixels(x, halo))

    def _block_pass(self, values: np.ndarray, device: str,
                    run: Callable[[Tensor], Tensor]) -> np.ndarray:
        """``run(block)[0]`` on a block's raw ``(C, h, w)`` values, as a numpy array.

        One transfer in and one out per block: on CUDA the block goes through pinned
        memory and everything computed from it stays on the device.
        """
        self.to(device).eval()
        x = torch.from_numpy(np.ascontiguousarray(values))[None]
        if torch.device(device).type == "cuda":
            x = x.pin_memory()
        with torch.inference_mode():
            out = run(x.to(device, non_blocking=True))
        return out[0].float().cpu().numpy()

    def default_device(self) -> str:
        """CUDA when available, else the CPU."""
        return "cuda" if torch.cuda.is_available() else "cpu"

    def check_device(self, device: str) -> None:
        """Raise ``SettingsError`` if torch does not know ``device``."""
        try:
            torch.device(device)
        except RuntimeError as err:
            raise SettingsError("device", f"{device!r} is not a torch device "
                                          f"({str(err).splitlines()[0]})") from err

    def get_threads(self) -> int:
        """Torch's intra-op threads (a per-thread setting)."""
        return torch.get_num_threads()

    def set_threads(self, threads: int) -> None:
        """Set torch's intra-op threads for the calling thread."""
        torch.set_num_threads(threads)

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Write a small self-contained file (loadable with ``weights_only=True``)."""
        payload = {
            "format": PREDICTOR_FORMAT,
            "version": PREDICTOR_FORMAT_VERSION,
            "info": self.info.to_dict(),
            "stats": self.stats.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.branch.state_dict().items()},
        }
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], source: str) -> "Predictor":
        """Rebuild a predictor from the dict :meth:`save` writes.

        Raises:
            CheckpointError: the payload is not a predictor of a known version.
        """
        from .branches import build_branch

        if payload.get("format") != PREDICTOR_FORMAT:
            raise CheckpointError(f"{source}: not a discomkd_geo predictor file")
        if payload.get("version") != PREDICTOR_FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: predictor format version {payload.get('version')} is not "
                f"supported (expected {PREDICTOR_FORMAT_VERSION})")
        info = PredictorInfo.from_dict(payload["info"])
        branch = build_branch(**info.branch_spec)
        branch.load_state_dict(payload["state_dict"])
        predictor = cls(branch, BandStats.from_dict(payload["stats"]), info)
        return predictor.eval()

    @classmethod
    def load(cls, path: str | os.PathLike[str],
             map_location: str | torch.device = "cpu") -> "Predictor":
        """Read a file written by :meth:`save`.

        Raises:
            CheckpointError: the file is unreadable or not a predictor file.
        """
        try:
            payload = load_torch_file(path, map_location)
        except LOAD_ERRORS as err:
            raise CheckpointError(f"{os.fspath(path)}: cannot read predictor: "
                                  f"{load_error_message(err)}") from err
        if not isinstance(payload, dict):
            raise CheckpointError(f"{os.fspath(path)}: not a discomkd_geo predictor file")
        return cls.from_payload(payload, os.fspath(path))


#: Key under which training checkpoints carry what :func:`load_torch_predictor` needs.
CHECKPOINT_KEY = "discomkd_geo"


def _checkpoint_payload(ckpt: dict[str, Any], modality: str, source: str) -> dict[str, Any]:
    """Cut one modality's predictor payload out of a training checkpoint.

    Training checkpoints hold ``ckpt[CHECKPOINT_KEY]["predictors"][modality]`` =
    ``{"info": ..., "stats": ..., "prefix": ...}``, where ``prefix`` selects the
    branch's weights in ``ckpt["state_dict"]``.
    """
    predictors = ckpt[CHECKPOINT_KEY].get("predictors", {})
    if modality not in predictors:
        raise CheckpointError(
            f"{source}: no {modality!r} branch in this checkpoint "
            f"(it has: {', '.join(sorted(predictors)) or 'none'})")
    entry = predictors[modality]
    prefix = entry["prefix"]
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return {"format": PREDICTOR_FORMAT, "version": PREDICTOR_FORMAT_VERSION,
            "info": entry["info"], "stats": entry["stats"], "state_dict": state}


#: Sub-directory of a training run that holds its branches given a per-pixel decoder
#: (``<modality>.pt`` predictor files, see ``discomkd_geo.training.decoder_fit``).
RUN_DECODERS = "decoders"


def run_checkpoint(run_dir: str | os.PathLike[str], modality: str) -> str:
    """The file a run directory's ``modality`` branch is loaded from.

    The branch with a per-pixel decoder (``RUN/decoders/<modality>.pt``) when the run has
    one (the same weights plus the decoder, so windows and dense maps are unchanged),
    else the best checkpoint (``RUN/checkpoints/best-<modality>.ckpt``, the paper's
    per-modality model selection).
    """
    decoded = os.path.join(run_dir, RUN_DECODERS, f"{modality}.pt")
    if os.path.isfile(decoded):
        return decoded
    return os.path.join(run_dir, "checkpoints", f"best-{modality}.ckpt")


def load_torch_predictor(path: str | os.PathLike[str], modality: str | None = None,
                   map_location: str | torch.device = "cpu", trusted: bool = False) -> Predictor:
    """Load a single-modality predictor from a training checkpoint or an exported file.

    Args:
        path: a training checkpoint (``.ckpt``), a training run directory (see
            :func:`run_checkpoint`), or a file written by ``discomkd-geo export``.
        modality: the branch to load; may be omitted for exported (single-branch) files.
        map_location: device to load the weights on.
        trusted: read the file with full pickle, which may run any code it holds (only
            for files you made yourself; see :func:`._files.load_torch_file`). Files
            this package writes never need it.

    Raises:
        CheckpointError: unreadable file, or no such modality in it.
        UntrustedFileError: the file would run code on load and ``trusted`` is false.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if modality is None:
            raise CheckpointError(f"{path}: a run directory needs a modality to pick a checkpoint")
        path = run_checkpoint(path, modality)
    try:
        payload = load_torch_file(path, map_location, trusted=trusted)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: checkpoint not found") from err
    except LOAD_ERRORS as err:
        raise CheckpointError(f"{path}: cannot read checkpoint: {load_error_message(err)}"
                              ) from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a discomkd_geo checkpoint or predictor file")
    if CHECKPOINT_KEY in payload:
        if modality is None:
            raise CheckpointError(f"{path}: a training checkpoint needs a modality "
                                  f"(one of {sorted(payload[CHECKPOINT_KEY]['predictors'])})")
        payload = _checkpoint_payload(payload, modality, path)
    predictor = Predictor.from_payload(payload, path)
    if modality is not None and predictor.info.modality != modality:
        raise CheckpointError(f"{path}: holds the {predictor.info.modality!r} branch, "
                              f"not {modality!r}")
    return predictor.to(map_location)
