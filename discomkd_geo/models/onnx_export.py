"""Export one modality's branch to ONNX, normalisation included, with its metadata.

The graph takes raw patches ``(N, C, patch, patch)`` float32 in the units the checkpoint
was trained on (``info.units``: Sentinel-2 L1C digital numbers or SAR backscatter in dB,
exactly what :class:`~.predictor.Predictor` takes), applies the training normalisation
(clip to the 2-98 percentiles or standardise), runs the branch and returns softmax
probabilities ``(N, K)``. Conversions from other storages (linear power, reflectance
0-1) stay with the input description (``SceneInput``), as for torch branches.

The model's metadata carries:

- ``discomkd_geo``: the branch's :class:`~.info.PredictorInfo` and
  :class:`~discomkd_geo.data.bandstats.BandStats` (what
  :class:`~.onnx_predictor.OnnxPredictor` reads);
- for people and other tools, JSON values: ``modality``, ``classes``, ``class_colors``
  (``#rrggbb``), ``band_names``, ``units``, ``patch_size``, ``pixel_size_m``;
- the keys the QGIS plugin Deepness reads (``deepness/processing/models/model_base.py``):
  ``class_names`` (``{"0": name, ...}``), ``resolution`` (cm per pixel), ``tile_size``,
  ``tiles_overlap`` (percent; 50 like the default stride of ``windows`` mode), and
  ``standardization_mean`` 0 / ``standardization_std`` 1/255 per band: Deepness divides
  its input by 255 before standardising, so these make the graph receive the raster's raw
  values. With ``per_pixel=True`` the output is ``(N, K, patch, patch)``, each window's
  probabilities over its tile, and ``model_type`` is ``Segmentor``, the shape Deepness's
  segmentation tool takes.
"""

import io
import json
import os
from typing import Any

import torch
from torch import Tensor, nn

from ..files import atomic_path
from .onnx_predictor import METADATA_KEY, ONNX_FORMAT, ONNX_FORMAT_VERSION
from .predictor import Predictor

#: ONNX operator set of the exported graphs (onnxruntime >= 1.13 runs it).
OPSET = 17
#: Deepness's ``tiles_overlap``, percent of the tile: the default stride of windows mode.
TILES_OVERLAP = 50


class _PerPixel(nn.Module):
    """A predictor whose probabilities ``(N, K)`` are repeated over its patch."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.predictor = predictor
        self.patch = predictor.info.patch_size

    def forward(self, x: Tensor) -> Tensor:
        probs = self.predictor(x)
        return probs[:, :, None, None].expand(-1, -1, self.patch, self.patch)


def onnx_metadata(predictor: Predictor, per_pixel: bool = False) -> dict[str, str]:
    """The metadata of an exported branch (every value a string, as ONNX stores them)."""
    info, stats = predictor.info, predictor.stats
    channels = len(info.bands)
    values: dict[str, Any] = {
        METADATA_KEY: {"format": ONNX_FORMAT, "version": ONNX_FORMAT_VERSION,
                       "info": info.to_dict(), "stats": stats.to_dict()},
        "modality": info.modality,
        "classes": list(info.classes),
        "class_colors": ["#{:02x}{:02x}{:02x}".format(*c) for c in info.colors],
        "band_names": list(info.bands),
        "units": info.units,
        "patch_size": info.patch_size,
        "pixel_size_m": info.pixel_size,
        # Deepness
        "class_names": {str(i): name for i, name in enumerate(info.classes)},
        "tile_size": info.patch_size,
        "tiles_overlap": TILES_OVERLAP,
        "standardization_mean": [0.0] * channels,
        "standardization_std": [1 / 255] * channels,
    }
    if info.pixel_size is not None:
        values["resolution"] = info.pixel_size * 100
    if per_pixel:
        values["model_type"] = "Segmentor"
    return {key: json.dumps(value) for key, value in values.items()}


def export_onnx(predictor: Predictor, path: str | os.PathLike[str], *,
                per_pixel: bool = False, overwrite: bool = False) -> None:
    """Write ``predictor`` as an ONNX model with its metadata (see the module docstring).

    Args:
        predictor: the branch to export (on any device; exported from the CPU).
        path: the ``.onnx`` file to write (atomically).
        per_pixel: output ``(N, K, patch, patch)`` for Deepness instead of ``(N, K)``.
        overwrite: replace an existing file.
    """
    import onnx

    predictor = predictor.to("cpu").eval()
    module = _PerPixel(predictor) if per_pixel else predictor
    info = predictor.info
    example = torch.zeros(2, len(info.bands), info.patch_size, info.patch_size)
    buffer = io.BytesIO()
    # The TorchScript exporter: no onnxscript needed, and the graph is plain operators.
    torch.onnx.export(module, (example,), buffer, input_names=["image"],
                      output_names=["probabilities"], opset_version=OPSET, dynamo=False,
                      dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    model.doc_string = (f"discomkd_geo {info.modality} branch ({info.method}): raw "
                        f"{', '.join(info.bands)} in {info.units} -> probabilities of "
                        f"{len(info.classes)} classes")
    for key, value in onnx_metadata(predictor, per_pixel).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    with atomic_path(path, overwrite=overwrite) as tmp:
        onnx.save(model, tmp)
