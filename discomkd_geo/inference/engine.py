"""The tiled inference engine: a land-cover GeoTIFF (or a lazy array) from any-size scenes.

Centre of the inference flow (io -> tiling -> engine -> writers), called by the CLI
(``discomkd-geo predict``, ``rio discomkd predict``) and the demo. The output grid is cut
into chunks of output pixels; :func:`predict_chunk` reads one chunk's windows with their
halo through windowed reads, classifies them in fixed-size batches (a window's
probabilities then never depend on its batch companions) and averages them per pixel
(:mod:`.tiling`), fusing modalities by averaging their probabilities.

:func:`predict_to_file` streams the chunks through a local thread pool or an existing
``dask.distributed`` cluster with a bounded number in flight, and writes each result
through windowed writes in chunk order, so memory follows the chunk size, not the scene
size. The predictors go to the workers once (scattered to a cluster, shared by threads).
:func:`predict_lazy` builds the same chunks as a Dask graph (the predictors one node of
it) and returns an :class:`xarray.DataArray` with its CRS, for use in other pipelines.
"""

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from .._io import atomic_path, check_writable
from ..constants import CLASS_NODATA
from ..errors import CheckpointError
from ..logs import progress_disabled
from ..models.predictor import Predictor
from .io import Grid, SceneSource, open_sources
from .stac import ItemInputs, item_path, map_item
from .tiling import PadMode, WindowGrid, accumulate, chunk_layout, extract_windows, relative_slices
from .writers import CogWriter, class_description, class_tags, legend, qgis_style, sidecar_paths

if TYPE_CHECKING:
    import xarray

Predictors = Predictor | Mapping[str, Predictor]
Sources = str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]]


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs, besides the predictors, to classify a chunk (picklable).

    Attributes:
        grid: the input grid (the first modality's).
        sources: how to read each modality on that grid.
        stride: step between windows, in input pixels.
        coarse: output one pixel per stride cell instead of the input grid.
        pad: how windows beyond the scene edge are filled.
        min_valid: windows with a smaller share of valid pixels are skipped.
        batch_size: windows per forward pass (always full: the last batch is padded).
        device: torch device the predictors run on.
        probabilities: whether chunks return their class probabilities.
    """

    grid: Grid
    sources: Mapping[str, SceneSource]
    stride: int
    coarse: bool
    pad: PadMode
    min_valid: float
    batch_size: int
    device: str
    probabilities: bool

    def window_grid(self, patch: int) -> WindowGrid:
        """The classification windows of a model with this patch size."""
        return WindowGrid(self.grid.height, self.grid.width, patch, self.stride)

    @property
    def output(self) -> Grid:
        """The output grid: the input grid, or one pixel per stride cell."""
        if not self.coarse:
            return self.grid
        rows, cols = WindowGrid(self.grid.height, self.grid.width, self.stride,
                                self.stride).shape
        return Grid(self.grid.crs, self.grid.transform @ Affine.scale(self.stride), cols, rows)


@dataclass
class ChunkResult:
    """One chunk of the map.

    Attributes:
        codes: uint8 ``(h, w)`` class codes, :data:`CLASS_NODATA` where nothing was mapped.
        probs: float32 ``(K, h, w)`` mean probabilities (NaN where nodata), if asked for.
    """

    codes: np.ndarray
    probs: np.ndarray | None


def classify(predictor: Predictor, windows: np.ndarray, which: np.ndarray, batch_size: int,
             device: str) -> np.ndarray:
    """Probabilities ``(n, K)`` of the windows ``windows[which]`` (``which``: index pairs).

    Batches are gathered one at a time (never all windows copied at once) and padded to
    ``batch_size``: CPU kernels pick their algorithm by batch size, so a constant size
    makes a window's probabilities independent of how many windows a chunk holds.
    """
    predictor = predictor.to(device).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(which), batch_size):
            idx = which[start:start + batch_size]
            batch = np.zeros((batch_size, *windows.shape[2:]), dtype=np.float32)
            batch[:len(idx)] = windows[idx[:, 0], idx[:, 1]]
            probs = predictor(torch.from_numpy(batch).to(device))
            out.append(probs[:len(idx)].float().cpu().numpy())
    classes = len(predictor.info.classes)
    return np.concatenate(out) if out else np.zeros((0, classes), dtype=np.float32)


def predict_chunk(predictors: Mapping[str, Predictor], plan: Plan, chunk: Window) -> ChunkResult:
    """Classify one chunk of output pixels (a window of :attr:`Plan.output`).

    Each modality's per-pixel mean probability is computed over the windows covering the
    pixel; modalities are then averaged where they have a value.
    """
    classes = len(next(iter(predictors.values())).info.classes)
    total: np.ndarray | None = None
    mapped = np.zeros((chunk.height, chunk.width), dtype=np.int32)
    for modality, source in plan.sources.items():
        predictor = predictors[modality]
        grid = plan.window_grid(predictor.info.patch_size)
        if plan.coarse:
            rows = range(chunk.row_off, chunk.row_off + chunk.height)
            cols = range(chunk.col_off, chunk.col_off + chunk.width)
        else:
            rows, cols = grid.covering(chunk)
        span = grid.span(rows, cols)
        read = span.intersection(plan.grid.window)
        data, valid = source.read(read)
        fill = np.asarray(predictor.stats.shift, dtype=np.float32)
        windows, fraction = extract_windows(data, valid, read, span, grid, fill, plan.pad)
        done = fraction >= plan.min_valid
        probs = np.zeros((len(rows), len(cols), classes), dtype=np.float32)
        probs[done] = classify(predictor, windows, np.argwhere(done), plan.batch_size,
                               plan.device)
        if plan.coarse:
            mean, ok = probs.transpose(2, 0, 1).astype(np.float64), done
        else:
            mean, count = accumulate(probs, done, grid, rows, cols, chunk)
            mean /= np.maximum(count, 1)  # in place: chunk-sized float64 arrays are large
            ok = (count > 0) & valid[relative_slices(chunk, read)]
        mean[:, ~ok] = 0.0
        total = mean if total is None else total + mean
        mapped += ok
    probs = total / np.maximum(mapped, 1) if len(plan.sources) > 1 else total
    codes = probs.argmax(axis=0).astype(np.uint8)
    codes[mapped == 0] = CLASS_NODATA
    if not plan.probabilities:
        return ChunkResult(codes, None)
    probs = probs.astype(np.float32)
    probs[:, mapped == 0] = np.nan
    return ChunkResult(codes, probs)


def _as_dicts(predictors: Predictors, sources: Sources) -> tuple[dict[str, Predictor],
                                                                  dict[str, str]]:
    """Both arguments as ``{modality: ...}`` dicts, checked against each other."""
    if isinstance(predictors, Predictor):
        predictors = {predictors.info.modality: predictors}
    predictors = dict(predictors)
    if isinstance(sources, str | os.PathLike):
        if len(predictors) != 1:
            raise ValueError("one scene path given for several predictors; pass a dict")
        sources = {next(iter(predictors)): sources}
    sources = {m: os.fspath(p) for m, p in sources.items()}
    if missing := sorted(set(sources) - set(predictors)):
        raise CheckpointError(f"no predictor for the {', '.join(missing)} scene")
    first = predictors[next(iter(sources))].info
    for m in sources:
        if predictors[m].info.classes != first.classes:
            raise CheckpointError(f"the {m} predictor's classes differ from the "
                                  f"{first.modality} predictor's; cannot fuse them")
    return {m: predictors[m] for m in sources}, sources


def make_plan(predictors: Predictors, sources: Sources, *, stride: int | None = None,
              coarse: bool = False, pad: PadMode = "reflect", min_valid: float = 0.5,
              batch_size: int = 32, device: str | None = None, probabilities: bool = False,
              bands: Mapping[str, Sequence[str]] | None = None,
              sar_db: Sequence[str] = (), scale: float = 1.0,
              offset: float = 0.0) -> tuple[dict[str, Predictor], Plan]:
    """Check the inputs and lay out the work (see :func:`predict_to_file` for arguments)."""
    predictors, paths = _as_dicts(predictors, sources)
    grid, readers = open_sources(paths, {m: p.info.bands for m, p in predictors.items()},
                                 names=bands, sar_db=sar_db, scale=scale, offset=offset)
    patch = min(p.info.patch_size for p in predictors.values())
    stride = stride or max(1, patch // 2)
    if not 0 < stride <= patch:
        raise CheckpointError(f"stride {stride} does not fit the model: it must be in "
                              f"[1, patch size {patch}] for windows to cover every pixel")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return predictors, Plan(grid, readers, stride, coarse, pad, min_valid, batch_size, device,
                            probabilities)


def _chunks(plan: Plan, chunk_size: int) -> list[Window]:
    """Output chunks of about ``chunk_size`` pixels a side.

    On the input grid they are rounded to whole stride cells, so that neighbouring
    chunks share no window unless the windows overlap (stride < patch).
    """
    cell = 1 if plan.coarse else plan.stride
    size = max(1, round(chunk_size / cell)) * cell
    return chunk_layout(plan.output.height, plan.output.width, size)


@contextmanager
def _submitter(predictors: dict[str, Predictor], workers: int, scheduler: str | None
               ) -> Iterator[tuple[Callable[[Plan, Window], Future], int]]:
    """``(submit(plan, chunk) -> future, slots)`` on local threads or a Dask cluster.

    On a cluster the predictors are scattered (broadcast) once; every chunk task refers
    to that one copy per worker.
    """
    if scheduler is None:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="discomkd")
        try:
            yield (lambda plan, chunk: pool.submit(predict_chunk, predictors, plan, chunk)), workers
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    from distributed import Client

    with Client(scheduler, set_as_default=False) as client:
        [model] = client.scatter([predictors], broadcast=True, hash=False)
        slots = max(1, sum(client.nthreads().values()))
        yield (lambda plan, chunk: client.submit(predict_chunk, model, plan, chunk,
                                                 pure=False)), slots


def predict_to_file(predictors: Predictors, sources: Sources,
                    output: str | os.PathLike[str], *, stride: int | None = None,
                    coarse: bool = False, chunk_size: int = 1024, workers: int = 1,
                    scheduler: str | None = None,
                    probabilities: str | os.PathLike[str] | None = None,
                    probabilities_dtype: Literal["float32", "uint8"] = "float32",
                    confidence: bool | str | os.PathLike[str] = False,
                    overwrite: bool = False, progress: bool = False,
                    bands: Mapping[str, Sequence[str]] | None = None,
                    sar_db: Sequence[str] = (), scale: float = 1.0, offset: float = 0.0,
                    pad: PadMode = "reflect", min_valid: float = 0.5, batch_size: int = 32,
                    device: str | None = None,
                    stac_source: ItemInputs | None = None) -> dict[str, Any]:
    """Map land cover from one scene per available modality into a Cloud-Optimised GeoTIFF.

    Several modalities are fused by averaging their class probabilities per pixel.

    Args:
        predictors: a :class:`Predictor`, or one per modality (``{"ms": ..., "sar": ...}``).
        sources: the scene (any GDAL raster) or one per modality; the first defines the
            output grid, the others are warped onto it.
        output: the class map to write; ``<stem>.qml``, ``<stem>.legend.json`` and its
            STAC Item ``<stem>.stac.json`` go beside it.
        stride: step between windows (default: half the patch size).
        coarse: one output pixel per stride cell instead of the input grid.
        chunk_size: side of the chunks of output pixels each task maps (bounds memory).
        workers: local threads (ignored with ``scheduler``).
        scheduler: address of a ``dask.distributed`` scheduler to run the chunks on.
        probabilities: also write per-class probabilities (one band per class) there.
        probabilities_dtype: ``float32`` (nodata NaN) or ``uint8`` (0-250 = p x 250,
            nodata 255) for the probability and confidence rasters.
        confidence: also write the winning class's probability; ``True`` puts it at
            ``<stem>.confidence.tif``.
        overwrite: replace existing outputs.
        progress: show a progress bar.
        bands: explicit band names of a modality's raster, in raster order.
        sar_db: modalities whose raster holds linear power, converted to dB.
        scale: multiply raster values by this, then ...
        offset: ... add this (e.g. reflectance to L1C digital numbers).
        pad: scene edge extension, ``reflect`` or ``constant`` (the band's fill value).
        min_valid: windows with a smaller share of valid pixels are skipped (nodata).
        batch_size: windows per forward pass.
        device: torch device (default: CUDA when available).
        stac_source: the STAC Item the scenes came from (linked from the map's Item).

    Returns:
        A summary: ``output``, ``pixels``, ``mapped_pixels``, ``seconds``,
        ``pixels_per_s``, per-class ``histogram``, and the layout used.

    Raises:
        OutputExistsError: an output exists and ``overwrite`` is false (checked first).
        InputFileError: a scene is unreadable, lacks bands or a CRS, or does not overlap.
    """
    start = time.perf_counter()
    output = Path(output)
    qml_path, legend_path = sidecar_paths(output)
    if confidence is True:
        confidence = output.with_suffix(".confidence.tif")
    extras = {"probabilities": probabilities, "confidence": confidence or None}
    stac_path = item_path(output)
    for path in (output, qml_path, legend_path, stac_path, *filter(None, extras.values())):
        check_writable(path, overwrite)
    predictors, plan = make_plan(
        predictors, sources, stride=stride, coarse=coarse, pad=pad, min_valid=min_valid,
        batch_size=batch_size, device=device, bands=bands, sar_db=sar_db, scale=scale,
        offset=offset, probabilities=any(extras.values()))
    info = next(iter(predictors.values())).info
    classes, colors = list(info.classes), [tuple(c) for c in info.colors]
    grid = plan.output
    facts = {"modalities": ",".join(plan.sources), "stride": plan.stride,
             "coarse": plan.coarse, "software": "discomkd_geo"}
    chunks = _chunks(plan, chunk_size)
    histogram = np.zeros(len(classes) + 1, dtype=np.int64)  # last bin: nodata

    with ExitStack() as stack:
        def writer(path: str | os.PathLike[str], **kwargs: Any) -> CogWriter:
            tmp = stack.enter_context(atomic_path(path, overwrite=overwrite))
            cog = CogWriter(tmp, grid, **kwargs)
            stack.callback(cog.close, keep=False)  # on failure; a finished writer is closed
            return cog

        outputs = {"classes": writer(
            output, count=1, dtype="uint8", nodata=CLASS_NODATA, resampling=Resampling.mode,
            descriptions=[class_description(classes)], tags=class_tags(classes, colors, facts),
            colormap=colors)}
        scaled = probabilities_dtype == "uint8"
        continuous = {"dtype": probabilities_dtype, "nodata": 255 if scaled else np.nan,
                      "resampling": Resampling.average}
        if probabilities:
            outputs["probabilities"] = writer(
                probabilities, count=len(classes), descriptions=classes, **continuous,
                tags={**class_tags(classes, colors, facts), "SCALE": "1/250" if scaled else "1"})
        if confidence:
            outputs["confidence"] = writer(
                confidence, count=1, descriptions=["confidence (winning class probability)"],
                **continuous, tags={**facts, "SCALE": "1/250" if scaled else "1"})

        from tqdm.auto import tqdm

        bar = stack.enter_context(tqdm(total=grid.width * grid.height, unit="px",
                                       unit_scale=True, disable=progress_disabled(progress),
                                       desc=f"mapping {output.name}"))
        submit, slots = stack.enter_context(_submitter(predictors, workers, scheduler))
        todo = iter(chunks)
        pending = deque((c, submit(plan, c)) for c in islice(todo, 2 * slots))
        while pending:
            chunk, future = pending.popleft()
            result = future.result()
            if (following := next(todo, None)) is not None:
                pending.append((following, submit(plan, following)))
            _write(outputs, chunk, result, scaled)
            histogram += np.bincount(np.minimum(result.codes, len(classes)).ravel(),
                                     minlength=len(classes) + 1)
            bar.update(chunk.width * chunk.height)
        for cog in outputs.values():
            cog.close(keep=True)
        item = map_item(output, grid, classes, colors,
                        {m: source.path for m, source in plan.sources.items()},
                        {"style": qml_path, "legend": legend_path,
                         **{k: v for k, v in extras.items() if v}}, source=stac_source)
        for path, text in ((qml_path, qgis_style(classes, colors)),
                           (legend_path, json.dumps(legend(classes, colors), indent=2)),
                           (stac_path, json.dumps(item, indent=2))):
            tmp = stack.enter_context(atomic_path(path, overwrite=overwrite))
            tmp.write_text(text)

    seconds = time.perf_counter() - start
    pixels = grid.width * grid.height
    return {
        "output": str(output),
        "probabilities": str(probabilities) if probabilities else None,
        "confidence": str(confidence) if confidence else None,
        "width": grid.width, "height": grid.height, "crs": grid.crs.to_string(),
        "modalities": list(plan.sources), "patch_size": info.patch_size,
        "stride": plan.stride, "coarse": plan.coarse, "chunks": len(chunks),
        "pixels": pixels, "mapped_pixels": int(histogram[:-1].sum()),
        "seconds": round(seconds, 3), "pixels_per_s": round(pixels / max(seconds, 1e-9), 1),
        "histogram": {name: int(n) for name, n in zip(classes, histogram, strict=False)},
    }


def _write(outputs: Mapping[str, CogWriter], chunk: Window, result: ChunkResult,
           scaled: bool) -> None:
    """Windowed writes of one chunk into every requested output."""
    outputs["classes"].write(chunk, result.codes)
    if result.probs is None:
        return
    extra = {"probabilities": result.probs, "confidence": np.max(result.probs, axis=0,
                                                                  keepdims=True)}
    for name, values in extra.items():
        if name in outputs:
            if scaled:
                values = np.where(np.isnan(values), 255, np.round(values * 250)).astype(np.uint8)
            outputs[name].write(chunk, values)


def predict_lazy(predictors: Predictors, sources: Sources, *, stride: int | None = None,
                 coarse: bool = False, chunk_size: int = 1024,
                 what: Literal["classes", "probabilities"] = "classes",
                 **options: Any) -> "xarray.DataArray":
    """The map as a lazy, Dask-backed :class:`xarray.DataArray` with CRS and transform.

    Nothing is read or classified until the array is computed (with any Dask scheduler);
    each Dask chunk is one engine chunk. The predictors are a single node of the graph.

    Args:
        predictors: as in :func:`predict_to_file`.
        sources: as in :func:`predict_to_file`.
        stride: as in :func:`predict_to_file`.
        coarse: as in :func:`predict_to_file`.
        chunk_size: as in :func:`predict_to_file`.
        what: ``classes`` (uint8 ``(y, x)``, nodata 255) or ``probabilities`` (float32
            ``(band, y, x)``, one band per class, NaN nodata).
        **options: ``bands``, ``sar_db``, ``scale``, ``offset``, ``pad``, ``min_valid``,
            ``batch_size``, ``device`` of :func:`make_plan`.
    """
    import dask
    import dask.array as da
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    predictors, plan = make_plan(predictors, sources, stride=stride, coarse=coarse,
                                 probabilities=what == "probabilities", **options)
    info = next(iter(predictors.values())).info
    model = dask.delayed(predictors, pure=True, traverse=False)
    grid = plan.output
    chunks = _chunks(plan, chunk_size)
    columns = len(range(0, grid.width, chunks[0].width))
    blocks = []
    for chunk in chunks:
        result = dask.delayed(predict_chunk, pure=True)(model, plan, chunk)
        if what == "classes":
            block = da.from_delayed(result.codes, (chunk.height, chunk.width), np.uint8)
        else:
            block = da.from_delayed(result.probs, (len(info.classes), chunk.height,
                                                   chunk.width), np.float32)
        blocks.append(block)
    rows = [blocks[i:i + columns] for i in range(0, len(blocks), columns)]
    array = da.block(rows)
    xs, _ = grid.transform @ (np.arange(grid.width) + 0.5, np.full(grid.width, 0.5))
    _, ys = grid.transform @ (np.full(grid.height, 0.5), np.arange(grid.height) + 0.5)
    coords: dict[str, Any] = {"y": ys, "x": xs}
    dims: tuple[str, ...] = ("y", "x")
    if what == "probabilities":
        dims, coords["band"] = ("band", "y", "x"), list(info.classes)
    out = xr.DataArray(array, dims=dims, coords=coords, name=f"landcover_{what}",
                       attrs={"classes": list(info.classes)})
    out = out.rio.write_crs(grid.crs).rio.write_transform(grid.transform)
    return out.rio.write_nodata(CLASS_NODATA if what == "classes" else np.nan)
