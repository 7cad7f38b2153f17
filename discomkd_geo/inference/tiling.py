"""Sliding-window layout: which windows a chunk of the map needs, and how they add up.

Second step of the inference flow (io -> tiling -> engine -> writers). The classification
windows form one grid anchored to the scene, not to chunks: window ``(i, j)`` is the
``patch x patch`` square centred on the stride cell ``[i*stride, (i+1)*stride)`` x
``[j*stride, (j+1)*stride)``. A chunk of output pixels reads the union of the windows that
cover it (its halo), classifies them, and gives every pixel the mean of the probabilities
of all windows covering it, summed in float64 in the windows' row-major order. Because
the windows, their padding and the summation order depend only on the scene, a pixel's
value is the same whatever chunk it falls in: the output is byte-identical for any chunk
size, number of workers or scheduler. The coarse output (one pixel per stride cell) is
just each window's own probabilities. Invalid pixels are filled from their valid
neighbours (:func:`fill_invalid`) before any window sees them.
"""

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from rasterio.windows import Window

from .settings import PadMode


def relative_slices(inner: Window, outer: Window) -> tuple[slice, slice]:
    """Array slices of ``inner`` within an array covering ``outer`` (``inner`` inside it)."""
    shifted = Window(inner.col_off - outer.col_off, inner.row_off - outer.row_off,
                     inner.width, inner.height)
    return shifted.toslices()


def chunk_layout(height: int, width: int, size: int,
                 within: Window | None = None) -> list[Window]:
    """Row-major ``size x size`` chunks tiling a ``height x width`` grid (edge ones cut).

    With ``within`` (a window of the grid), only the chunks that overlap it.
    """
    full = Window(0, 0, width, height)
    area = full if within is None else within
    return [Window(col, row, size, size).intersection(full)
            for row in range(area.row_off // size * size, area.row_off + area.height, size)
            for col in range(area.col_off // size * size, area.col_off + area.width, size)]


@dataclass(frozen=True)
class WindowGrid:
    """The classification windows of a scene.

    Attributes:
        height: scene rows.
        width: scene columns.
        patch: window side (the model's patch size).
        stride: step between windows; at most ``patch`` so that windows cover every pixel.
    """

    height: int
    width: int
    patch: int
    stride: int

    def __post_init__(self) -> None:
        if not 0 < self.stride <= self.patch:
            raise ValueError(f"stride must be in [1, patch size {self.patch}], got {self.stride}")

    @property
    def shape(self) -> tuple[int, int]:
        """Rows and columns of windows (also the coarse output's shape)."""
        return -(-self.height // self.stride), -(-self.width // self.stride)

    @property
    def margin(self) -> int:
        """How far a window reaches before its stride cell."""
        return (self.patch - self.stride) // 2

    def window(self, row: int, col: int) -> Window:
        """Window ``(row, col)`` in scene pixels (may reach beyond the scene)."""
        return Window(col * self.stride - self.margin, row * self.stride - self.margin,
                      self.patch, self.patch)

    def covering(self, area: Window) -> tuple[range, range]:
        """Indices of the windows that cover any pixel of ``area`` (rows, columns)."""

        def axis(start: int, stop: int, count: int) -> range:
            first = -(-(start + self.margin - self.patch + 1) // self.stride)
            last = (stop - 1 + self.margin) // self.stride
            return range(max(first, 0), min(last, count - 1) + 1)

        rows, cols = self.shape
        return (axis(area.row_off, area.row_off + area.height, rows),
                axis(area.col_off, area.col_off + area.width, cols))

    def span(self, rows: range, cols: range) -> Window:
        """The union of the windows ``rows x cols``: the area a chunk reads, halo included."""
        first = self.window(rows[0], cols[0])
        return Window(first.col_off, first.row_off, (len(cols) - 1) * self.stride + self.patch,
                      (len(rows) - 1) * self.stride + self.patch)


def grow(area: Window, margin: int) -> Window:
    """``area`` with ``margin`` more pixels on every side."""
    return Window(area.col_off - margin, area.row_off - margin, area.width + 2 * margin,
                  area.height + 2 * margin)


def _box_sum(values: np.ndarray, radius: int) -> np.ndarray:
    """Sums over ``(2 radius + 1)^2`` boxes of the last two axes (zero beyond the array).

    Shifted slices added in a fixed order: a pixel's sum depends only on its box, never
    on how large the array around it is (cumulative sums would).
    """
    for axis in (-2, -1):
        widths = [(0, 0)] * values.ndim
        widths[axis] = (radius, radius)
        padded = np.pad(values, widths)
        size = values.shape[axis]
        lead = (slice(None),) * (values.ndim + axis)  # the axes before ``axis``
        values = sum(padded[(*lead, slice(k, k + size))] for k in range(2 * radius + 1))
    return values


def fill_invalid(data: np.ndarray, valid: np.ndarray, fallback: np.ndarray,
                 radius: int) -> np.ndarray:
    """Give invalid pixels the mean of the valid pixels within ``radius`` (band by band).

    Scattered invalid pixels (NaN, nodata) thus take values like their neighbours', which
    disturbs the windows around them least; pixels with no valid neighbour take
    ``fallback``. A pixel's value depends only on its ``(2 radius + 1)^2`` neighbourhood,
    so reading that much around an area makes the result independent of the chunking.

    Args:
        data: ``(C, h, w)`` values.
        valid: ``(h, w)`` validity.
        fallback: ``(C,)`` value where no neighbour is valid.
        radius: neighbourhood reach in pixels.
    """
    if valid.all():
        return data
    counts = _box_sum(valid.astype(np.float64), radius)
    sums = _box_sum(np.where(valid, data, 0.0).astype(np.float64), radius)
    local = np.where(counts > 0, sums / np.maximum(counts, 1.0), fallback[:, None, None])
    return np.where(valid, data, local).astype(data.dtype)


def extend(data: np.ndarray, read: Window, area: Window, fill: np.ndarray,
           pad: PadMode = "reflect") -> np.ndarray:
    """Values ``(C, area.height, area.width)`` of ``area`` from ``data`` read over ``read``.

    ``read`` is the part of ``area`` inside the scene; the rest is mirrored from the scene
    (``reflect``: about the scene edge, so the same for every chunk) or ``fill``
    (``constant``).
    """
    inside = relative_slices(read, area)
    if pad == "reflect":
        widths = [(0, 0)] + [(s.start, size - s.stop) for s, size in
                             zip(inside, (area.height, area.width), strict=True)]
        return np.pad(data, widths, mode="reflect")
    out = np.broadcast_to(fill.astype(data.dtype)[:, None, None],
                          (data.shape[0], area.height, area.width)).copy()
    out[(slice(None), *inside)] = data
    return out


def valid_fraction(valid: np.ndarray, read: Window, span: Window,
                   grid: WindowGrid) -> np.ndarray:
    """``(rows, cols)`` share of valid pixels among each window's in-scene pixels.

    Args:
        valid: ``(h, w)`` validity over ``read``.
        read: the part of ``span`` inside the scene.
        span: the union of the windows (see :meth:`WindowGrid.span`).
        grid: the window grid.
    """
    inside = relative_slices(read, span)
    in_scene = np.zeros((span.height, span.width), dtype=np.int32)
    in_scene[inside] = 1
    good = np.zeros_like(in_scene)
    good[inside] = valid
    step = (slice(None, None, grid.stride),) * 2
    shape = (grid.patch, grid.patch)
    counts = sliding_window_view(in_scene, shape)[step].sum(axis=(-2, -1))
    goods = sliding_window_view(good, shape)[step].sum(axis=(-2, -1))
    return goods / np.maximum(counts, 1)


def window_views(values: np.ndarray, grid: WindowGrid) -> np.ndarray:
    """``(rows, cols, C, patch, patch)`` views of the windows of a span's ``(C, h, w)`` values."""
    step = (slice(None, None, grid.stride),) * 2
    views = sliding_window_view(values, (grid.patch, grid.patch), axis=(1, 2))
    return views[(slice(None), *step)].transpose(1, 2, 0, 3, 4)


def accumulate(probs: np.ndarray, done: np.ndarray, grid: WindowGrid, rows: range,
               cols: range, area: Window) -> tuple[np.ndarray, np.ndarray]:
    """Sum the probabilities of the windows ``rows x cols`` over the pixels of ``area``.

    Args:
        probs: ``(len(rows), len(cols), K)`` window probabilities.
        done: ``(len(rows), len(cols))`` which windows were classified (others add nothing).
        grid: the window grid.
        rows: window rows (covering ``area``).
        cols: window columns.
        area: the output pixels.

    Returns:
        ``(total, count)``: float64 ``(K, h, w)`` sums, in row-major window order (fixed
        for a pixel whatever ``area`` is), and int32 ``(h, w)`` numbers of windows.
    """
    total = np.zeros((probs.shape[-1], area.height, area.width), dtype=np.float64)
    count = np.zeros((area.height, area.width), dtype=np.int32)
    for a, row in enumerate(rows):
        for b, col in enumerate(cols):
            if not done[a, b]:
                continue
            where = relative_slices(grid.window(row, col).intersection(area), area)
            total[(slice(None), *where)] += probs[a, b, :, None, None]
            count[where] += 1
    return total, count


#: Guards the normalisations of :func:`window_means` where nothing was classified.
_TINY = float(np.finfo(np.float64).tiny)


def window_means(probs: np.ndarray, done: np.ndarray, grid: WindowGrid, rows: range,
                 cols: range, area: Window, temperature: float | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's probabilities: the mean of the windows covering it, then tempered.

    The windows' probabilities are averaged as the branch gives them untempered (a
    calibrated branch's are un-tempered first: ``p ** T``, normalised) and the mean is
    tempered once: ``mean ** (1 / T)``, normalised. A temperature then changes no
    pixel's class, and a pixel of one window gets that window's calibrated probabilities
    (to rounding). Averaging the tempered probabilities instead weighs each window more
    like a vote (the demo model's calibrated MS windows map lost 1.2 points of OA on the
    demo scene), and their geometric mean lets one confident window veto a class (its
    SAR windows map lost 4.3). Tempering the mean also made the MS map's probabilities
    the best calibrated of the three (ECE 0.034 against 0.076 and 0.050).

    Args:
        probs: ``(len(rows), len(cols), K)`` window probabilities, tempered by
            ``temperature`` (zero where not classified).
        done: ``(len(rows), len(cols))`` which windows were classified (others add nothing).
        grid: the window grid.
        rows: window rows (covering ``area``).
        cols: window columns.
        area: the output pixels.
        temperature: the branch's ``T`` (``None``: uncalibrated, the plain mean).

    Returns:
        ``(mean, count)``: float64 ``(K, h, w)`` probabilities (zero where no window
        counts) and int32 ``(h, w)`` numbers of windows.
    """
    if temperature is not None:
        probs = np.power(probs, temperature, dtype=np.float64)
        probs /= np.maximum(probs.sum(axis=-1, keepdims=True), _TINY)  # unclassified: 0
    total, count = accumulate(probs, done, grid, rows, cols, area)
    total /= np.maximum(count, 1)  # in place: chunk-sized float64 arrays are large
    if temperature is not None:
        np.power(total, 1 / temperature, out=total)
        total /= np.maximum(total.sum(axis=0, keepdims=True), _TINY)
    return total, count
