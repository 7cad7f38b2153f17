"""The tiled inference engine: a land-cover GeoTIFF (or a lazy array) from any-size scenes.

Centre of the inference flow (io -> tiling -> engine -> writers), called by the CLI
(``discomkd-geo predict``, ``rio discomkd predict``) and the demo. The output grid is cut
into chunks of output pixels; :func:`predict_chunk` reads one chunk's windows with their
halo through windowed reads, classifies them and averages them per pixel (:mod:`.tiling`);
several modalities are combined per pixel by a fusion rule (:mod:`.fusion`: where all are
valid their fusion, elsewhere the one valid branch), which also says which evidence
decided each pixel (the ``source`` raster). Three modes (:mod:`.modes`, one class each)
classify the pixels; the default, ``auto``, is ``pixel`` when every model has a per-pixel
decoder, ``windows`` when none has, and otherwise ``pixel`` with the branches without a
decoder classified window by window inside its blocks (:attr:`Plan.windowed`):

- ``pixel`` (models trained with ``model.decoder``): the chunk is cut into scene-anchored
  blocks of whole patches; each block's encoders and per-pixel decoder
  (:mod:`discomkd_geo.models.decoder`) run once over the block plus a halo of the
  encoders' reach and half a patch of context (64 px for ``small_cnn``), giving every
  input pixel its own probabilities. With smoothing (:mod:`.smoothing`: parcels keep one
  class; on by default, on the fused probabilities of several modalities) that takes
  two stages: every block's probabilities first (:func:`block_probabilities`), then each
  chunk's blocks are smoothed over the smoothing's reach around them (120 px by default),
  assembled from the neighbouring blocks' probabilities (:func:`smooth_chunk`), so every
  pixel has the value of one pass over the scene while the model runs once per pixel.
  Byte-identical
  for any chunk size, number of workers or scheduler, as dense mode.

- ``dense``: the chunk is cut into scene-anchored blocks; each block's
  encoders run once over the block's windows plus a halo of half the encoders' receptive
  field (224 px for ResNet-18, 24 for ``small_cnn``), and every window's pooled features
  are box means of the feature maps (:mod:`discomkd_geo.models.dense`). A block's
  computation depends only on the scene, so the output is byte-identical for any chunk
  size, number of workers or scheduler.
- ``windows`` (the default without a decoder, rather than dense: with the demo model
  dense mode is 15 points less accurate on the demo scene and 12 on the synthetic test
  patches, see ``benchmarks/results.json``): each window alone, as a model sees a
  training patch, in fixed-size batches (a window's probabilities then never depend on
  its batch companions).

:func:`predict_to_file` streams the chunks through a local thread pool or an existing
``dask.distributed`` cluster with a bounded number in flight
(:mod:`discomkd_geo.inference.runner`), and writes each result in chunk order into the
map's files (:mod:`.outputs`), so memory follows the chunk size, not the scene size
(smoothed pixel mode also keeps the blocks'
first-stage probabilities until the last chunk that needs them is submitted: about two
rows of chunks). The predictors go to the workers once (scattered to a cluster, shared
by threads). How the map is made is one
:class:`~discomkd_geo.inference.settings.MapSettings`.
:func:`predict_lazy` builds the same chunks (and blocks, in two stages) as a Dask graph
(the predictors one node of it) and returns an :class:`xarray.DataArray` with its CRS,
for use in other pipelines.
"""

import importlib.util
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from affine import Affine
from rasterio.windows import Window, intersect

from ..constants import CLASS_NODATA
from ..errors import CheckpointError, InputFileError, SettingsError
from ..files import check_outputs
from ..logs import log, progress_disabled
from ..memory import retain_freed_memory
from ..models.info import BranchPredictor as Predictor
from ..models.info import PredictorInfo
from .aoi import AreaOfInterest, aoi_on_grid, read_aoi
from .checks import SceneCheck, check_scenes, impossible_problem
from .classmap import ClassMap
from .fusion import (
    NONE,
    SOURCE_NODATA,
    FusionRule,
    Product,
    fusion_rule,
    parse_accuracy,
    source_names,
)
from .io import Grid, SceneInput, SceneReader, as_input, open_readers
from .masks import MASK_WORDS, mask_records
from .modes import MappingMode, mapping_mode
from .outputs import MapOutputs, MapPaths, MapSummary
from .runner import ChunkRunner, chunk_runner
from .settings import DEFAULTS, SMOOTHING, Execution, MapSettings, Tiling
from .stac import ItemInputs
from .tiling import (
    WindowGrid,
    chunk_layout,
    extend,
    fill_invalid,
    grow,
    relative_slices,
    valid_fraction,
    window_means,
    window_views,
)
from .vectorize import check_mmu, vector_driver, vectorize_to_file

if TYPE_CHECKING:
    import xarray

Predictors = Predictor | Mapping[str, Predictor]
if TYPE_CHECKING:
    #: One modality's scene: a path, several (one per band or polarisation), an array or
    #: a :class:`~discomkd_geo.inference.io.SceneInput` with units and scaling.
    Scene = (SceneInput | str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
             | xarray.DataArray)
    Scenes = Scene | Mapping[str, Scene]
#: Invalid pixels take the mean of the valid ones within this many pixels.
FILL_RADIUS = 2
#: Windows mode with an area of interest computes a chunk in blocks of this side that
#: touch the area (an irregular area then costs little more than its own pixels).
AOI_BLOCK = 256


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs, besides the predictors, to classify a chunk (picklable).

    Attributes:
        grid: the input grid (the first modality's).
        readers: how to read each modality on that grid.
        tiling: the tiling settings, resolved: ``mode`` never ``auto``, ``stride`` and
            ``smoothing`` set, and ``block_size`` (the unit of work of modes dense and
            pixel: the encoders run on scene-anchored ``block x block`` areas with their
            halo, so a pixel's value never depends on the chunking; chunks are whole
            blocks) a whole number of strides (dense) or patches (pixel).
        device: device the predictors run on (``cpu``, ``cuda``).
        probabilities: whether chunks return their class probabilities.
        threads: intra-op threads per worker (``None``: leave the runtime's setting).
        aoi: the area of interest on the output grid (``None``: the whole scene).
        force: map values no sensor produces (the ``force`` setting); otherwise a chunk
            holding one is refused (the statistics check only samples the scene).
        fusion: how the modalities combine at each pixel.
        windowed: modalities that mode ``pixel`` classifies window by window (their
            models have no decoder; mode ``auto`` only), each pixel the mean of its
            windows as in mode ``windows``.
    """

    grid: Grid
    readers: Mapping[str, SceneReader]
    tiling: Tiling
    device: str
    probabilities: bool
    threads: int | None = None
    aoi: AreaOfInterest | None = None
    force: bool = False
    fusion: FusionRule = field(default_factory=Product)
    windowed: frozenset[str] = frozenset()

    @property
    def mode(self) -> MappingMode:
        """The mapping mode (:mod:`.modes`) the tiling names (resolved: never ``auto``)."""
        return mapping_mode(self.tiling.mode)

    def computes(self, chunk: Window) -> bool:
        """Whether ``chunk`` is read and classified (it touches the area of interest)."""
        return self.aoi is None or self.aoi.touches(chunk)

    def window_grid(self, patch: int) -> WindowGrid:
        """The classification windows of a model with this patch size."""
        return WindowGrid(self.grid.height, self.grid.width, patch, self.tiling.stride)

    @property
    def output(self) -> Grid:
        """The output grid: the input grid, or one pixel per stride cell."""
        if not self.tiling.coarse:
            return self.grid
        stride = self.tiling.stride
        rows, cols = WindowGrid(self.grid.height, self.grid.width, stride, stride).shape
        return Grid(self.grid.crs, self.grid.transform @ Affine.scale(stride), cols, rows)

    @property
    def output_block(self) -> int:
        """The block side (modes dense and pixel) in output pixels."""
        tiling = self.tiling
        return tiling.block_size // tiling.stride if tiling.coarse else tiling.block_size


@dataclass
class ChunkResult:
    """One chunk of the map.

    Attributes:
        codes: uint8 ``(h, w)`` class codes, :data:`CLASS_NODATA` where nothing was mapped.
        probs: float32 ``(K, h, w)`` mean probabilities (NaN where nodata), if asked for.
        source: uint8 ``(h, w)`` source codes (:mod:`.fusion`): which evidence decided.
    """

    codes: np.ndarray
    probs: np.ndarray | None
    source: np.ndarray


def classify(predictor: Predictor, windows: np.ndarray, which: np.ndarray, batch_size: int,
             device: str) -> np.ndarray:
    """Probabilities ``(n, K)`` of the windows ``windows[which]`` (``which``: index pairs).

    Batches are gathered one at a time (never all windows copied at once) and padded to
    ``batch_size``: CPU kernels pick their algorithm by batch size, so a constant size
    makes a window's probabilities independent of how many windows a chunk holds.
    """
    out = []
    for start in range(0, len(which), batch_size):
        idx = which[start:start + batch_size]
        batch = np.zeros((batch_size, *windows.shape[2:]), dtype=np.float32)
        batch[:len(idx)] = windows[idx[:, 0], idx[:, 1]]
        out.append(predictor.predict_batch(batch, device)[:len(idx)])
    classes = len(predictor.info.classes)
    return np.concatenate(out) if out else np.zeros((0, classes), dtype=np.float32)


def typical_values(predictor: Predictor) -> np.ndarray:
    """Per band, the raw value at the centre of the training distribution.

    The fill for pixels with no valid neighbour: the middle of the 2-98 percentile range,
    or the mean (a band's low percentile, used before, made holes look like another class).
    """
    stats = predictor.stats
    shift = np.asarray(stats.shift, dtype=np.float32)
    if stats.method == "percentile":
        return shift + np.asarray(stats.scale, dtype=np.float32) / 2
    return shift


def window_probabilities(predictor: Predictor, reader: SceneReader, plan: Plan, rows: range,
                         cols: range) -> tuple[np.ndarray, np.ndarray, np.ndarray, Window]:
    """Classify the windows ``rows x cols`` of one modality.

    The windows' span (plus, in dense mode, the encoders' halo) is read with
    :data:`FILL_RADIUS` more pixels for :func:`fill_invalid`, extended beyond the scene
    edge as ``plan.tiling.pad`` says, then classified window by window or densely.

    Returns:
        ``(probs, done, valid, read)``: float32 ``(rows, cols, K)`` probabilities (zero
        where not classified), which windows were classified (enough valid pixels), and
        the validity of the pixels of ``read``, the span's part inside the scene.
    """
    grid = plan.window_grid(predictor.info.patch_size)
    pooled = plan.mode.pools_windows
    halo = predictor.dense_halo() if pooled else 0
    span = grid.span(rows, cols)
    values, valid, read = read_values(predictor, reader, plan, span, halo)
    done = valid_fraction(valid, read, span, grid) >= plan.tiling.min_valid
    classes = len(predictor.info.classes)
    probs = np.zeros((len(rows), len(cols), classes), dtype=np.float32)
    if pooled:
        if done.any():
            probs[done] = predictor.predict_dense(values, plan.tiling.stride, halo,
                                                  plan.device)[done]
    else:
        probs[done] = classify(predictor, window_views(values, grid), np.argwhere(done),
                               plan.tiling.batch_size, plan.device)
    return probs, done, valid, read


def read_values(predictor: Predictor, reader: SceneReader, plan: Plan, span: Window,
                halo: int) -> tuple[np.ndarray, np.ndarray, Window]:
    """Raw values of ``span`` and ``halo`` pixels around it, ready for a model.

    Read with :data:`FILL_RADIUS` more pixels for :func:`fill_invalid`, extended beyond
    the scene edge as ``plan.tiling.pad`` says.

    Returns:
        ``(values, valid, read)``: float32 ``(C, h + 2 halo, w + 2 halo)`` values, and the
        validity of the pixels of ``read``, the span's part inside the scene.
    """
    area = grow(span, halo)
    inside = area.intersection(plan.grid.window)
    reach = grow(inside, FILL_RADIUS).intersection(plan.grid.window)
    data, valid = reader.read(reach)
    info = predictor.info
    if not plan.force and (problem := impossible_problem(
            data, valid, info.sensor, reader.units, info.bands,
            f"in rows {reach.row_off}-{reach.row_off + reach.height}")):
        raise InputFileError(reader.name, problem)
    fill = typical_values(predictor)
    data = fill_invalid(data, valid, fill, FILL_RADIUS)
    values = extend(data[(slice(None), *relative_slices(inside, reach))], inside, area, fill,
                    plan.tiling.pad)
    read = span.intersection(plan.grid.window)
    return values, valid[relative_slices(read, reach)], read


def pixel_probabilities(predictor: Predictor, reader: SceneReader, plan: Plan,
                        area: Window) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel probabilities ``(K, h, w)`` of one modality over a block (mode ``pixel``).

    The encoders and the decoder run once over the block plus the context they need
    (:meth:`~discomkd_geo.models.predictor.Predictor.pixel_halo`); blocks start on whole
    patches of the scene (:attr:`Plan.output_block`), so a pixel's value depends only on its
    block. Invalid pixels are filled for the model's context but left unmapped.

    Returns:
        ``(probs, ok)``: float64 probabilities and which pixels have one.
    """
    halo = predictor.pixel_halo()
    values, valid, read = read_values(predictor, reader, plan, area, halo)
    probs = predictor.predict_pixels(values, halo, plan.device).astype(np.float64)
    ok = np.zeros((area.height, area.width), dtype=bool)
    ok[relative_slices(read, area)] = valid
    return probs, ok


def _smoothing_span(predictors: Mapping[str, Predictor], plan: Plan, area: Window) -> Window:
    """``area`` with the smoothing's reach around it (:mod:`.smoothing`), inside the scene.

    The span must start a cell of the smoothing's grid in the scene
    (:func:`~.smoothing.smooth_probabilities`): the margin is the reach rounded up to
    whole cells of every encoder (powers of two of at least the smoothing's cell), as when
    the model itself ran over this span; the same spans keep the maps' bytes. Beyond the
    scene's edge no pixel takes part in the smoothing.
    """
    from .smoothing import smoothing_reach

    tiling = plan.tiling
    reach = smoothing_reach(tiling.smoothing_radius, tiling.smoothing_passes)
    margin = max(p.pixel_halo(reach) - p.pixel_halo() for m, p in predictors.items()
                 if m not in plan.windowed)
    return grow(area, margin).intersection(plan.grid.window)


def _window_means(predictor: Predictor, reader: SceneReader, plan: Plan,
                  area: Window) -> tuple[np.ndarray, np.ndarray]:
    """One modality's per-pixel window probabilities ``(K, h, w)`` over ``area``.

    The tempered mean of the windows covering the pixel (:func:`.window_means`) or,
    coarse, the pixel's window's. Returns float64 probabilities and which pixels have
    them.
    """
    grid = plan.window_grid(predictor.info.patch_size)
    if plan.tiling.coarse:
        rows = range(area.row_off, area.row_off + area.height)
        cols = range(area.col_off, area.col_off + area.width)
    else:
        rows, cols = grid.covering(area)
    probs, done, valid, read = window_probabilities(predictor, reader, plan, rows, cols)
    if plan.tiling.coarse:
        return probs.transpose(2, 0, 1).astype(np.float64), done
    mean, count = window_means(probs, done, grid, rows, cols, area,
                               predictor.info.temperature)
    return mean, (count > 0) & valid[relative_slices(area, read)]


def _predict_area(predictors: Mapping[str, Predictor], plan: Plan,
                  area: Window) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel probabilities ``(K, h, w)`` of ``area``, fused, and their source codes.

    Each modality's per-pixel probability is its decoder's (mode ``pixel``) or its mean
    over windows (:func:`_window_means`; also a windowed branch in mode ``pixel``); the
    plan's fusion rule combines them (:meth:`~.fusion.FusionRule.fuse`). Returns float64
    probabilities (zero where no modality has one) and uint8 source codes.
    """
    branches = {}
    per_pixel = plan.mode.per_pixel
    for modality, reader in plan.readers.items():
        predictor = predictors[modality]
        if per_pixel and modality not in plan.windowed:
            branches[modality] = pixel_probabilities(predictor, reader, plan, area)
        else:
            branches[modality] = _window_means(predictor, reader, plan, area)
    return plan.fusion.fuse(branches)


def _blocks(plan: Plan, chunk: Window) -> list[Window]:
    """What a chunk is computed in: itself, or (dense, pixel) its scene-anchored blocks.

    With an area of interest, only what touches it: in windows mode the chunk's
    :data:`AOI_BLOCK` px blocks that touch the area, cut to its bounding window (a pixel's
    windows are the same whatever area holds it), in modes dense and pixel the blocks
    touching the area (whole blocks: their values never depend on the cut).
    """
    blocked = plan.mode.blocked
    if not blocked and plan.aoi is None:
        return [chunk]
    size = plan.output_block if blocked else AOI_BLOCK
    blocks = [Window(chunk.col_off + b.col_off, chunk.row_off + b.row_off, b.width, b.height)
              for b in chunk_layout(chunk.height, chunk.width, size)]
    blocks = [b for b in blocks if plan.computes(b)]
    if blocked:
        return blocks
    out = plan.output
    bounds = plan.aoi.region(out.transform, out.width, out.height)
    return [b.intersection(bounds) for b in blocks if intersect(b, bounds)]


def _prepare_worker(predictors: Mapping[str, Predictor], plan: Plan) -> None:
    """Set up the calling worker thread for a task: threads, and on the CPU the memory.

    ``plan.threads`` intra-op threads, if set (per worker thread: OpenMP's thread count is
    a per-thread setting); on the CPU, freed memory kept for reuse in the worker's process
    (:mod:`discomkd_geo.memory`: every block allocates arrays of tens of MiB, and faulting
    them in afresh took a third of a smoothed pixel-mode map's time).
    """
    if plan.device == "cpu":
        retain_freed_memory()
    if plan.threads is not None:
        for predictor in predictors.values():
            predictor.set_threads(plan.threads)


def predict_chunk(predictors: Mapping[str, Predictor], plan: Plan, chunk: Window) -> ChunkResult:
    """Classify one chunk of output pixels (a window of :attr:`Plan.output`) in one stage.

    Each modality's per-pixel mean probability is computed over the windows covering the
    pixel (mode ``pixel``: given by the decoder); modalities are then averaged where they
    have a value. In modes dense and pixel the chunk is computed block by block (see
    :attr:`Plan.tiling`). Mode pixel with smoothing takes two stages instead
    (:func:`block_probabilities`, :func:`smooth_chunk`).
    """
    _prepare_worker(predictors, plan)
    return _classify_chunk(plan, chunk, _classes(predictors),
                           partial(_predict_area, predictors, plan))


def _classify_chunk(plan: Plan, chunk: Window, classes: int,
                    compute: Callable[[Window], tuple[np.ndarray, np.ndarray]]) -> ChunkResult:
    """Class codes (and probabilities) of a chunk from ``compute(block)`` of its blocks.

    ``compute`` gives a block's per-pixel probabilities and source codes
    (:func:`_predict_area`'s). With an area of interest, a chunk away from it is nodata
    without a read, and pixels whose centre lies outside it are nodata (and their source
    :data:`~.fusion.SOURCE_NODATA`).
    """
    shape = (chunk.height, chunk.width)
    if not plan.computes(chunk):  # away from the area of interest: nothing to read
        codes = np.full(shape, CLASS_NODATA, dtype=np.uint8)
        return ChunkResult(codes, np.full((classes, *shape), np.nan, dtype=np.float32)
                           if plan.probabilities else None,
                           np.full(shape, SOURCE_NODATA, dtype=np.uint8))
    probs = np.zeros((classes, *shape), dtype=np.float64)
    source = np.full(shape, SOURCE_NODATA, dtype=np.uint8)
    for unit in _blocks(plan, chunk):
        where = (slice(None), *relative_slices(unit, chunk))
        probs[where], source[where[1:]] = compute(unit)
    if plan.aoi is not None:
        source[~plan.aoi.mask(chunk)] = SOURCE_NODATA
    unmapped = (source == NONE) | (source == SOURCE_NODATA)
    codes = probs.argmax(axis=0).astype(np.uint8)
    codes[unmapped] = CLASS_NODATA
    if not plan.probabilities:
        return ChunkResult(codes, None, source)
    probs = probs.astype(np.float32)
    probs[:, unmapped] = np.nan
    return ChunkResult(codes, probs, source)


def _classes(predictors: Mapping[str, Predictor]) -> int:
    """How many classes the (fused) predictors give."""
    return len(next(iter(predictors.values())).info.classes)


def _two_stage(plan: Plan) -> bool:
    """Whether the map takes two stages: smoothing in a mode that smooths (:func:`smooth_chunk`)."""
    return plan.mode.smooths and plan.tiling.smoothing > 0


@dataclass
class BlockProbabilities:
    """Stage one of smoothed pixel mode: one block's fused probabilities, not smoothed.

    Attributes:
        window: the block, a window of :attr:`Plan.output`.
        probs: float32 ``(K, h, w)`` probabilities, zero where no modality has one (float32:
            the smoothing computes in it, and the blocks kept for it take half the memory).
        source: uint8 ``(h, w)`` source codes (:mod:`.fusion`; :data:`~.fusion.NONE`
            where no modality has a value).
    """

    window: Window
    probs: np.ndarray
    source: np.ndarray


def block_probabilities(predictors: Mapping[str, Predictor], plan: Plan,
                        block: Window) -> BlockProbabilities:
    """Stage one of smoothed pixel mode: a block's probabilities, as unsmoothed pixel mode's.

    The model runs over the block and its own halo only: the context the smoothing needs
    around a block is its neighbours' stage-one results (:func:`smooth_chunk`), so the
    model runs once per pixel of the scene instead of again over every block's reach.
    """
    _prepare_worker(predictors, plan)
    probs, source = _predict_area(predictors, plan, block)
    return BlockProbabilities(block, probs.astype(np.float32), source)


def smoothing_blocks(predictors: Mapping[str, Predictor], plan: Plan,
                     chunk: Window) -> list[Window]:
    """The blocks whose stage-one results :func:`smooth_chunk` needs for ``chunk``, row-major.

    Those within the smoothing's reach (:func:`_smoothing_span`) of the chunk's blocks that
    are computed (with an area of interest, those touching it; none away from it).
    """
    out = plan.output
    needed = {block for unit in _blocks(plan, chunk)
              for block in chunk_layout(out.height, out.width, plan.output_block,
                                        within=_smoothing_span(predictors, plan, unit))}
    return sorted(needed, key=lambda block: (block.row_off, block.col_off))


def smooth_chunk(predictors: Mapping[str, Predictor], plan: Plan, chunk: Window,
                 *parts: BlockProbabilities) -> ChunkResult:
    """Stage two of smoothed pixel mode: a chunk's classes from stage one's blocks.

    Each of the chunk's blocks is smoothed (:mod:`.smoothing`) over itself and the
    smoothing's reach around it, assembled from ``parts`` (the results for
    :func:`smoothing_blocks`), then cut to the block: a pixel's value is that of one pass
    over the scene's probabilities. Block by block rather than over the whole chunk: the
    smoothing then sees the same arrays whatever the chunk size (and the same as when one
    stage computed each block with the reach around it), so the bytes of the map cannot
    depend on the chunking; with the default chunk size (one block) it costs the same.
    """
    _prepare_worker(predictors, plan)
    return _classify_chunk(plan, chunk, _classes(predictors),
                           partial(_smoothed_block, predictors, plan, parts))


def _smoothed_block(predictors: Mapping[str, Predictor], plan: Plan,
                    parts: Sequence[BlockProbabilities],
                    block: Window) -> tuple[np.ndarray, np.ndarray]:
    """One block's smoothed probabilities and source codes (see :func:`smooth_chunk`).

    The smoothing's span is cut from ``parts``, which cover it; smoothing the fused
    probabilities (not each modality's) keeps each modality from becoming over-confident
    and the more confident one from deciding. The source codes are stage one's: which
    evidence the pixel's own probabilities came from.
    """
    # Here, not at the top: a map made with an ONNX model imports torch only to smooth.
    import torch

    from .smoothing import smooth_probabilities

    span = _smoothing_span(predictors, plan, block)
    probs = np.zeros((_classes(predictors), span.height, span.width), dtype=np.float32)
    source = np.full((span.height, span.width), NONE, dtype=np.uint8)
    for part in parts:
        if intersect(part.window, span):
            common = part.window.intersection(span)
            to, of = relative_slices(common, span), relative_slices(common, part.window)
            probs[(slice(None), *to)] = part.probs[(slice(None), *of)]
            source[to] = part.source[of]
    tiling = plan.tiling
    smoothed = smooth_probabilities(torch.from_numpy(probs), torch.from_numpy(source != NONE),
                                    tiling.smoothing, tiling.smoothing_radius,
                                    tiling.smoothing_passes).numpy()
    inner = relative_slices(block, span)
    return smoothed[(slice(None), *inner)], source[inner]


def _chunk_results(runner: ChunkRunner, predictors: Mapping[str, Predictor], plan: Plan,
                   chunks: Sequence[Window]) -> Iterator[tuple[Window, ChunkResult]]:
    """Every chunk's result, in order, in one stage or two (mode pixel with smoothing).

    In two stages, a block's stage-one result is computed once, before the first chunk
    that needs it, and freed after the last: with chunks in row-major order, about two
    rows of chunks' blocks are held (:meth:`~.runner.ChunkRunner.map_with_parts`).
    """
    if not _two_stage(plan):
        return runner.map(predict_chunk, chunks, plan)
    return runner.map_with_parts(smooth_chunk, chunks, block_probabilities,
                                 partial(smoothing_blocks, predictors, plan), plan)


def _lazy_results(predictors: Mapping[str, Predictor], plan: Plan,
                  chunks: Sequence[Window]) -> list[Any]:
    """Every chunk's result as a Dask ``Delayed``, in one stage or two (see above).

    In two stages, a chunk's node depends on the stage-one nodes of its
    :func:`smoothing_blocks`, each one node however many chunks need it; Dask frees them
    once their last chunk is computed. The predictors are one node of the graph.
    """
    import dask

    model = dask.delayed(predictors, pure=True, traverse=False)
    if not _two_stage(plan):
        return [dask.delayed(predict_chunk, pure=True)(model, plan, chunk) for chunk in chunks]
    needs = [smoothing_blocks(predictors, plan, chunk) for chunk in chunks]
    stage_one = {block: dask.delayed(block_probabilities, pure=True)(model, plan, block)
                 for need in needs for block in need}
    return [dask.delayed(smooth_chunk, pure=True)(model, plan, chunk,
                                                  *(stage_one[block] for block in need))
            for chunk, need in zip(chunks, needs, strict=True)]


def _as_dicts(predictors: Predictors, scenes: "Scenes"
              ) -> tuple[dict[str, Predictor], dict[str, SceneInput]]:
    """Both arguments as ``{modality: ...}`` dicts, checked against each other."""
    if not isinstance(predictors, Mapping):
        predictors = {predictors.info.modality: predictors}
    predictors = dict(predictors)
    if not isinstance(scenes, Mapping):
        if len(predictors) != 1:
            raise ValueError("one scene given for several predictors; pass a dict")
        scenes = {next(iter(predictors)): scenes}
    scenes = {m: as_input(s) for m, s in scenes.items()}
    if missing := sorted(set(scenes) - set(predictors)):
        raise CheckpointError(f"no predictor for the {', '.join(missing)} scene")
    first = predictors[next(iter(scenes))].info
    for m in scenes:
        if predictors[m].info.classes != first.classes:
            raise CheckpointError(f"the {m} predictor's classes differ from the "
                                  f"{first.modality} predictor's; cannot fuse them")
    return {m: predictors[m] for m in scenes}, scenes


def _smoothing(tiling: Tiling, mode: MappingMode) -> float:
    """The smoothing strength of a plan in ``mode``: ``tiling.smoothing``, default resolved.

    The default smooths maps of one modality and fused maps alike: it smooths the fused
    probabilities, and raised the product fusion's OA on validation scenes by 2.5 points
    (docs/guide/per-pixel-fusion.md; it had been off for fused maps, when SAR warped
    bilinearly made the average of the branches worse than either). The
    smoothing is PyTorch code (:mod:`.smoothing`) and ONNX models map without PyTorch:
    there the default is off (said in the log), and asking for it is an error.

    Raises:
        SettingsError: smoothing asked for in mode ``pixel`` where PyTorch is missing.
    """
    smoothing = tiling.smoothing
    if not mode.smooths or importlib.util.find_spec("torch") is not None:
        return SMOOTHING if smoothing is None else smoothing
    if smoothing:
        raise SettingsError("smoothing", f"mode {mode.name!r} smooths with PyTorch, which is "
                                         "not installed here: install it, or set smoothing=0")
    if smoothing is None:
        log.warning("mode %s: not smoothing the map (the smoothing needs PyTorch, which is "
                    "not installed here)", mode.name)
    return 0.0


def make_plan(predictors: Predictors, scenes: "Scenes",
              settings: MapSettings = DEFAULTS
              ) -> tuple[dict[str, Predictor], Plan, dict[str, SceneCheck]]:
    """Check the inputs and lay out the work (see :func:`predict_to_file` for arguments).

    The plan's chunks return probabilities when ``settings.outputs`` asks for a
    probability or confidence raster.

    Returns:
        The predictors per modality, the plan, and the statistics check of each scene.
    """
    tiling, execution = settings.tiling, settings.execution
    predictors, inputs = _as_dicts(predictors, scenes)
    mode, windowed = mapping_mode(tiling.mode).resolve(predictors)
    inputs = {m: _absolute(s) for m, s in inputs.items()}
    area = read_aoi(tiling.aoi) if tiling.aoi is not None else None  # fail before the scenes
    grid, readers = open_readers(inputs, {m: p.info for m, p in predictors.items()})
    patch = min(p.info.patch_size for p in predictors.values())
    stride = tiling.stride or mode.default_stride(patch)
    if not 0 < stride <= patch:
        raise CheckpointError(f"stride {stride} does not fit the model: it must be in "
                              f"[1, patch size {patch}] for windows to cover every pixel")
    mode.check(predictors, windowed, tiling.coarse)
    unit = mode.block_unit(patch, stride)
    block = max(1, round(tiling.block_size / unit)) * unit
    device = execution.device or next(iter(predictors.values())).default_device()
    for predictor in predictors.values():
        predictor.check_device(device)
    outputs, fusing = settings.outputs, settings.fusing
    smoothing = _smoothing(tiling, mode)
    accuracy = parse_accuracy(fusing.branch_accuracy) if fusing.branch_accuracy else None
    rule = fusion_rule(fusing.fusion, list(predictors), _classes(predictors), accuracy)
    plan = Plan(grid, readers, replace(tiling, mode=mode.name, stride=stride,
                                       block_size=block, smoothing=smoothing), device,
                probabilities=bool(outputs.probabilities or outputs.confidence),
                threads=execution.threads, force=settings.checks.force, fusion=rule,
                windowed=windowed)
    region = None
    if area is not None:
        out = plan.output
        plan = replace(plan, aoi=aoi_on_grid(area, out.crs, out.transform, out.width,
                                             out.height, tiling.aoi))
        # The statistics check samples the scene within the area only.
        region = plan.aoi.region(grid.transform, grid.width, grid.height)
    checks = check_scenes(predictors, readers, force=settings.checks.force, region=region)
    return predictors, plan, checks


def _absolute(scene: SceneInput) -> SceneInput:
    """The scene with local files as absolute paths; GDAL URLs and virtual paths as given.

    Dask workers have other working directories than the client.
    """
    if not scene.paths:
        return scene
    return replace(scene, source=tuple(os.path.abspath(p) if os.path.exists(p) else p
                                       for p in scene.paths))


def _input_files(scenes: "Scenes") -> dict[str, str]:
    """Every file the inputs name, labelled for error messages (outputs may not replace one)."""
    named = scenes if isinstance(scenes, Mapping) else {"scene": scenes}
    files = {}
    for m, scene in named.items():
        scene = as_input(scene)
        paths = scene.paths
        files.update({m if len(paths) == 1 else f"{m} {i + 1}": p for i, p in enumerate(paths)})
        if scene.mask is not None and scene.mask not in MASK_WORDS:
            files[f"{m} mask"] = str(scene.mask)
    return files


def _chunks(plan: Plan) -> list[Window]:
    """Output chunks of about ``plan.tiling.chunk_size`` pixels a side.

    On the input grid they are rounded to whole stride cells, so that neighbouring
    chunks share no window unless the windows overlap (stride < patch); in modes dense and
    pixel to whole blocks (:attr:`Plan.output_block`).
    """
    if plan.mode.blocked:
        cell = plan.output_block
    else:
        cell = 1 if plan.tiling.coarse else plan.tiling.stride
    size = max(1, round(plan.tiling.chunk_size / cell)) * cell
    return chunk_layout(plan.output.height, plan.output.width, size)


def predict_to_file(predictors: Predictors, scenes: "Scenes",
                    output: str | os.PathLike[str], settings: MapSettings = DEFAULTS, *,
                    progress: bool = False,
                    stac_source: ItemInputs | None = None) -> "MapSummary":
    """Map land cover from one scene per available modality into a Cloud-Optimised GeoTIFF.

    Several modalities are fused by averaging their class probabilities per pixel.

    Args:
        predictors: a :class:`Predictor`, or one per modality (``{"ms": ..., "sar": ...}``).
        scenes: the scene or one per modality (``{"ms": ..., "sar": ...}``): a raster
            path, several paths (one per band or polarisation), a directory of band files,
            an :class:`xarray.DataArray` with a CRS and a ``band`` coordinate, or a
            :class:`~discomkd_geo.inference.io.SceneInput` that also gives band names,
            SAR units and scaling. The first defines the output grid (at the model's pixel
            size), the others are warped onto it.
        output: the class map to write; ``<stem>.qml``, ``<stem>.legend.json`` and its
            STAC Item ``<stem>.stac.json`` go beside it.
        settings: how to map: tiling, execution, extra outputs and checks, e.g.
            ``MapSettings.of(stride=8, workers=2, probabilities="p.tif")`` (see
            :class:`~discomkd_geo.inference.settings.MapSettings` for every field).
        progress: show a progress bar.
        stac_source: the STAC Item the scenes came from (linked from the map's Item).

    Returns:
        What was written, and how (:class:`MapSummary`).

    Raises:
        OutputExistsError: an output exists and the ``overwrite`` setting is false
            (checked first).
        OutputError: two outputs share a path, or an output's directory is missing
            (checked first).
        InputFileError: a scene is unreadable (also mid-run, or on a Dask worker), not
            georeferenced, lacks bands, does not overlap, holds no valid pixel, or (unless
            the ``force`` setting) looks like other units, scale or band order than the
            training data.
        SchedulerError: the scheduler does not answer within ``scheduler_timeout``.
    """
    start = time.perf_counter()
    paths = MapPaths.of(output, settings.outputs)
    check_outputs(paths.labelled(), settings.outputs.overwrite, inputs=_input_files(scenes))
    if paths.polygons:
        vector_driver(paths.polygons)
    predictors, plan, checks = make_plan(predictors, scenes, settings)
    first = next(iter(predictors.values()))
    info = first.info
    if settings.outputs.mmu:  # on the map's grid, before the map is made
        grid = plan.output
        check_mmu(ClassMap(next(iter(plan.readers.values())).name, tuple(info.classes),
                           tuple(info.colors), CLASS_NODATA, grid.crs, grid.transform,
                           grid.width, grid.height), settings.outputs.mmu)
    chunks = _chunks(plan)
    inputs = {m: reader.files for m, reader in plan.readers.items()}
    execution = settings.execution
    with ExitStack() as stack:
        plan = stack.enter_context(_thread_budget(plan, execution, first))
        outputs = stack.enter_context(MapOutputs(paths, plan.output, info, _facts(plan),
                                                 settings.outputs, inputs, stac_source,
                                                 masks=mask_records(plan.readers),
                                                 sources=source_names(list(plan.readers))))
        bar = stack.enter_context(_progress_bar(plan.output, paths.map, progress))
        runner = stack.enter_context(chunk_runner(
            predictors, execution.workers, execution.scheduler,
            [f for files in inputs.values() for f in files], execution.scheduler_timeout))
        for chunk, result in _chunk_results(runner, predictors, plan, chunks):
            outputs.write(chunk, result.codes, result.probs, result.source)
            bar.update(chunk.width * chunk.height)
    if paths.polygons:
        # From the finished map: its tags give the classes and colours.
        vectorize_to_file(paths.map, paths.polygons, mmu=settings.outputs.mmu,
                          overwrite=settings.outputs.overwrite)
    return _summary(paths, plan, info, chunks, outputs, checks, time.perf_counter() - start)


@contextmanager
def _thread_budget(plan: Plan, execution: Execution,
                   predictor: Predictor) -> Iterator[Plan]:
    """The plan with each local worker's share of the runtime's threads; its count restored.

    N local workers share the runtime's thread budget (by default one thread per core):
    a full pool of intra-op threads each would oversubscribe the cores. A cluster's
    workers keep their own settings (Dask's nannies start them with one thread).
    """
    before = predictor.get_threads()  # restored at the end: workers change it
    if execution.scheduler is None and plan.threads is None:
        plan = replace(plan, threads=max(1, before // execution.workers))
    try:
        yield plan
    finally:
        predictor.set_threads(before)


def _facts(plan: Plan) -> dict[str, Any]:
    """How the map was made, as the rasters' metadata tags say it."""
    facts = {"modalities": ",".join(plan.readers), "stride": plan.tiling.stride,
             "coarse": plan.tiling.coarse, "mode": plan.tiling.mode, "software": "discomkd_geo"}
    if len(plan.readers) > 1:
        facts["fusion"] = plan.fusion.name
    if plan.windowed:
        facts["windowed"] = ",".join(m for m in plan.readers if m in plan.windowed)
    if masks := mask_records(plan.readers):
        facts["masks"] = json.dumps(masks)
    return facts


def _progress_bar(grid: Grid, output: Path, progress: bool) -> Any:
    """A progress bar over the map's pixels (disabled unless ``progress`` on a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(total=grid.width * grid.height, unit="px", unit_scale=True,
                disable=progress_disabled(progress), desc=f"mapping {output.name}")


def _summary(paths: MapPaths, plan: Plan, info: PredictorInfo, chunks: Sequence[Window],
             outputs: MapOutputs, checks: Mapping[str, SceneCheck],
             seconds: float) -> MapSummary:
    """The :class:`MapSummary` of a finished map."""
    grid, tiling = plan.output, plan.tiling
    pixels = grid.width * grid.height
    histogram, counts = outputs.histogram, outputs.source_histogram
    computed = max(1, int(counts[:SOURCE_NODATA].sum()))
    return MapSummary(
        output=str(paths.map),
        probabilities=str(paths.probabilities) if paths.probabilities else None,
        confidence=str(paths.confidence) if paths.confidence else None,
        vector=str(paths.polygons) if paths.polygons else None, width=grid.width,
        height=grid.height, crs=grid.crs.to_string(), modalities=tuple(plan.readers),
        patch_size=info.patch_size, stride=tiling.stride, coarse=tiling.coarse,
        mode=tiling.mode, chunks=len(chunks),
        computed_chunks=sum(map(plan.computes, chunks)), pixels=pixels,
        mapped_pixels=int(histogram[:-1].sum()), seconds=round(seconds, 3),
        pixels_per_s=round(pixels / max(seconds, 1e-9), 1),
        histogram={name: int(n) for name, n in zip(info.classes, histogram, strict=False)},
        checks=dict(checks), source=str(paths.source) if paths.source else None,
        fusion=plan.fusion.name if len(plan.readers) > 1 else None,
        windowed=tuple(m for m in plan.readers if m in plan.windowed),
        sources={name: round(int(counts[code]) / computed, 6)
                 for code, name in source_names(list(plan.readers)).items()})


@dataclass(frozen=True)
class _LazyLayer:
    """One array :func:`predict_lazy` can return: its chunk result field, type and nodata."""

    field: str
    dtype: type
    nodata: float
    per_class: bool = False
    #: Whether the array holds source codes: their names go in its ``sources`` attribute.
    sources: bool = False


#: :func:`predict_lazy`'s ``what``: the class codes, the probabilities, the source codes.
_LAZY_LAYERS = {"classes": _LazyLayer("codes", np.uint8, CLASS_NODATA),
                "probabilities": _LazyLayer("probs", np.float32, np.nan, per_class=True),
                "source": _LazyLayer("source", np.uint8, SOURCE_NODATA, sources=True)}


def predict_lazy(predictors: Predictors, scenes: "Scenes",
                 settings: MapSettings = DEFAULTS, *,
                 what: Literal["classes", "probabilities", "source"] = "classes"
                 ) -> "xarray.DataArray":
    """The map as a lazy, Dask-backed :class:`xarray.DataArray` with CRS and transform.

    Nothing is read or classified until the array is computed (with any Dask scheduler);
    each Dask chunk is one engine chunk (smoothed pixel mode: one node per chunk on one
    node per block it needs). The predictors are a single node of the graph.

    Args:
        predictors: as in :func:`predict_to_file`.
        scenes: as in :func:`predict_to_file`.
        settings: as in :func:`predict_to_file`; its tiling, checks, ``device`` and
            ``threads`` apply (the array is computed by whatever Dask scheduler the caller
            uses, and written by the caller).
        what: ``classes`` (uint8 ``(y, x)``, nodata 255), ``probabilities`` (float32
            ``(band, y, x)``, one band per class, NaN nodata) or ``source`` (uint8
            ``(y, x)``, which evidence decided each pixel, as the ``source`` output raster:
            its names in the ``sources`` attribute, nodata 255 outside the area of interest).

    Raises:
        SettingsError: ``what`` is none of these.
    """
    import dask.array as da
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    if what not in _LAZY_LAYERS:
        raise SettingsError("what", f"expected one of {', '.join(map(repr, _LAZY_LAYERS))}, "
                                    f"got {what!r}")
    layer = _LAZY_LAYERS[what]
    predictors, plan, _ = make_plan(predictors, scenes, settings)
    plan = replace(plan, probabilities=layer.per_class)
    info = next(iter(predictors.values())).info
    grid = plan.output
    chunks = _chunks(plan)
    columns = len(range(0, grid.width, chunks[0].width))
    bands = (len(info.classes),) if layer.per_class else ()
    blocks = [da.from_delayed(getattr(result, layer.field), (*bands, chunk.height, chunk.width),
                              layer.dtype)
              for chunk, result in zip(chunks, _lazy_results(predictors, plan, chunks),
                                       strict=True)]
    rows = [blocks[i:i + columns] for i in range(0, len(blocks), columns)]
    array = da.block(rows)
    xs, _ = grid.transform @ (np.arange(grid.width) + 0.5, np.full(grid.width, 0.5))
    _, ys = grid.transform @ (np.full(grid.height, 0.5), np.arange(grid.height) + 0.5)
    coords: dict[str, Any] = {"y": ys, "x": xs}
    dims: tuple[str, ...] = ("y", "x")
    if layer.per_class:
        dims, coords["band"] = ("band", "y", "x"), list(info.classes)
    attrs: dict[str, Any] = {"classes": list(info.classes)}
    if layer.sources:
        attrs["sources"] = source_names(list(plan.readers))
    out = xr.DataArray(array, dims=dims, coords=coords, name=f"landcover_{what}", attrs=attrs)
    out = out.rio.write_crs(grid.crs).rio.write_transform(grid.transform)
    return out.rio.write_nodata(layer.nodata)
