"""Export one modality's branch to ONNX, normalisation included, with its metadata.

The graph takes raw patches ``(N, C, patch, patch)`` float32 in the units the checkpoint
was trained on (``info.units``: Sentinel-2 L1C digital numbers or SAR backscatter in dB,
exactly what :class:`~.predictor.Predictor` takes), applies the training normalisation
(clip to the 2-98 percentiles or standardise), runs the branch and returns softmax
probabilities ``(N, K)``. Conversions from other storages (linear power, reflectance
0-1) stay with the input description (``SceneInput``), as for torch branches.

A branch with a per-pixel decoder also gets the graph of :meth:`.Predictor.pixels` (mode
``pixel``): one raw block ``(1, C, H, W)`` in, any ``H`` and ``W`` (the graph pads the far
side to whole encoder cells, as the torch predictor does), per-pixel probabilities
``(1, K, H - 2 halo, W - 2 halo)`` out, ``halo`` being the branch's ``pixel_halo()``. It is
a complete ONNX model, serialised (base64) in the metadata key :data:`PIXEL_GRAPH_KEY` of
the same file, for three reasons: one file is one model to copy or to pick in QGIS (a
second file beside it could be left behind); the main graph stays the window classifier
every tool (Deepness, Netron, older versions of this package) reads; and onnxruntime runs
every node of a graph whatever outputs are asked for, so a second output of the same graph
would make each windows-mode batch pay for the decoder. The cost is the weights stored
twice (1.9 MiB instead of 0.8 for the demo's SAR branch).

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
  values. With ``per_pixel=True`` the output is ``(N, K, patch, patch)`` and ``model_type``
  is ``Segmentor``, the shape Deepness's segmentation tool takes: the decoder's per-pixel
  probabilities of each tile alone when the branch has one (:class:`_PerPixel`), else each
  window's probabilities over its tile.
"""

import base64
import io
import json
import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..files import atomic_path
from .dense import common_cell
from .onnx_predictor import (
    DEEPNESS_PIXELS_FORMAT,
    METADATA_KEY,
    ONNX_FORMAT,
    ONNX_FORMAT_VERSION,
    PIXEL_GRAPH_KEY,
)
from .predictor import Predictor

#: ONNX operator set of the exported graphs (onnxruntime >= 1.13 runs it).
OPSET = 17
#: Deepness's ``tiles_overlap``, percent of the tile: the default stride of windows mode.
TILES_OVERLAP = 50


class _PerPixel(nn.Module):
    """A predictor's probabilities over each patch, for Deepness's Segmentor.

    With a decoder, the decoder's per-pixel probabilities of the patch alone (no context
    beyond it: Deepness gives none); without, the window's probabilities repeated. On the
    demo scene, in Deepness's tiling (64 px tiles, 50% overlap, each tile's middle kept),
    the first scored OA 0.727 (edge 0.501), the second 0.652 (0.385).
    """

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.predictor = predictor
        self.patch = predictor.info.patch_size
        self.classes = len(predictor.info.classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.predictor.has_decoder:
            out = self.predictor.pixels(x, 0)
        else:
            out = self.predictor(x)[:, :, None, None].expand(-1, -1, self.patch, self.patch)
        # A reshape to constants makes the class and tile dimensions static in the graph:
        # Deepness takes the class count from the output's shape[-3] and counts with it
        # (through expand and the decoder's padding they were symbolic).
        return out.reshape(-1, self.classes, self.patch, self.patch)


class _Pixels(nn.Module):
    """A predictor's per-pixel probabilities of a raw block, ``halo`` px cropped."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.predictor = predictor
        self.halo = predictor.pixel_halo()

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor.pixels(x, self.halo)


def _pixel_geometry(predictor: Predictor) -> dict[str, int]:
    """What ``pixel_halo(extra)`` needs: the base halo and the encoders' common cell."""
    return {"halo": predictor.pixel_halo(), "cell": common_cell(predictor.branch.encoders())}


def _trace(module: nn.Module, example: Tensor, names: tuple[str, str],
           dynamic: dict[str, dict[int, str]]) -> Any:
    """``module`` traced to an ONNX model, in eval mode (and left in it)."""
    import onnx

    buffer = io.BytesIO()
    # The TorchScript exporter: no onnxscript needed, and the graph is plain operators. The
    # traced layout is the plain one: channels-last is a runtime choice of torch's CPU path.
    # On exit the exporter sets the whole module tree to the mode the module had: a wrapper
    # in training mode (a new module's) would leave the predictor's batch norms training.
    with warnings.catch_warnings():
        # The pixel graph's strided slices (the decoder's cells) are left unfolded, as
        # they must be: the exporter says so in a UserWarning per pass, with its paths.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1",
                                category=UserWarning)
        torch.onnx.export(module.eval(), (example,), buffer, input_names=[names[0]],
                          output_names=[names[1]], opset_version=OPSET, dynamo=False,
                          dynamic_axes=dynamic)
    return onnx.load_from_string(buffer.getvalue())


def _pixel_graph(predictor: Predictor) -> bytes:
    """The serialised ONNX model of :meth:`.Predictor.pixels` (see the module docstring)."""
    import onnx

    info, geometry = predictor.info, _pixel_geometry(predictor)
    side = 2 * geometry["halo"] + info.patch_size
    example = torch.zeros(1, len(info.bands), side, side)
    model = _trace(_Pixels(predictor), example, ("block", "probabilities"),
                   {"block": {2: "height", 3: "width"},
                    "probabilities": {2: "rows", 3: "cols"}})
    model.doc_string = (f"discomkd_geo {info.modality} branch ({info.method}), per pixel: raw "
                        f"block (1, {len(info.bands)}, H, W) -> probabilities (1, "
                        f"{len(info.classes)}, H - {2 * geometry['halo']}, "
                        f"W - {2 * geometry['halo']})")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_metadata(predictor: Predictor, per_pixel: bool = False) -> dict[str, str]:
    """The metadata of an exported branch (every value a string, as ONNX stores them).

    With a decoder (and not ``per_pixel``) the ``discomkd_geo`` entry holds ``pixels``:
    ``{"halo", "cell"}`` of the pixel graph (:data:`PIXEL_GRAPH_KEY`, added by
    :func:`export_onnx`), from which ``pixel_halo(extra)`` is computed.
    """
    info, stats = predictor.info, predictor.stats
    channels = len(info.bands)
    # A Deepness export of a decoder does not classify windows: another format, so that
    # this package (and its older versions) never map windows with it.
    fmt = DEEPNESS_PIXELS_FORMAT if per_pixel and predictor.has_decoder else ONNX_FORMAT
    payload = {"format": fmt, "version": ONNX_FORMAT_VERSION,
               "info": info.to_dict(), "stats": stats.to_dict()}
    if predictor.has_decoder and not per_pixel:
        payload["pixels"] = _pixel_geometry(predictor)
    values: dict[str, Any] = {
        METADATA_KEY: payload,
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
        per_pixel: output ``(N, K, patch, patch)`` for Deepness instead of ``(N, K)``
            (and no pixel graph: Deepness runs the main graph only).
        overwrite: replace an existing file.
    """
    import onnx

    predictor = predictor.to("cpu").eval()
    module = _PerPixel(predictor) if per_pixel else predictor
    info = predictor.info
    example = torch.zeros(2, len(info.bands), info.patch_size, info.patch_size)
    model = _trace(module, example, ("image", "probabilities"),
                   {"image": {0: "batch"}, "probabilities": {0: "batch"}})
    model.doc_string = (f"discomkd_geo {info.modality} branch ({info.method}): raw "
                        f"{', '.join(info.bands)} in {info.units} -> probabilities of "
                        f"{len(info.classes)} classes")
    for key, value in onnx_metadata(predictor, per_pixel).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    if predictor.has_decoder and not per_pixel:
        entry = model.metadata_props.add()
        entry.key = PIXEL_GRAPH_KEY
        entry.value = base64.b64encode(_pixel_graph(predictor)).decode("ascii")
    onnx.checker.check_model(model)
    with atomic_path(path, overwrite=overwrite) as tmp:
        onnx.save(model, tmp)
