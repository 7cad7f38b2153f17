"""GeoTIFF outputs a GIS user opens as is, and the style files beside them.

Last step of the inference flow (io -> tiling -> engine -> writers). A :class:`CogWriter`
takes windowed writes into a tiled staging GeoTIFF beside its target, then builds the
overviews (mode resampling for class codes, averaging for probabilities) and copies the
result with GDAL's COG driver into a Cloud-Optimised GeoTIFF: tiled, DEFLATE-compressed,
overviews after the full-resolution data. Targets are the temporary paths of
:func:`discomkd_geo.files.atomic_path`, so nothing appears at the real path unless the whole
map was written. The class map carries its colour table, the class names (band
description and metadata tags), and gets a QGIS ``.qml`` paletted style and a
``.legend.json`` beside it.

A write that fails (a full disk, a file size limit) is one :class:`OutputError` naming
the target: what GDAL and libtiff print on the way (libtiff writes some of it straight to
the process's stderr) is held back while GDAL writes, shown after a success and dropped
after a failure.
"""

import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ..constants import CLASS_NODATA
from ..errors import OutputError
from .io import Grid

#: Side of the COG tiles (and of the staging file's tiles).
BLOCKSIZE = 256

#: Overviews are added, halving each time, until the image side falls below this.
OVERVIEW_MIN_SIDE = 64


def overview_factors(height: int, width: int, min_side: int = OVERVIEW_MIN_SIDE) -> list[int]:
    """Decimation factors 2, 4, 8, ... while the overview keeps at least ``min_side`` px."""
    factors = []
    factor = 2
    while max(height, width) // factor >= min_side:
        factors.append(factor)
        factor *= 2
    return factors


#: What a failed write says in GDAL's and libtiff's messages, in the words of strerror.
_WRITE_FAILURES = re.compile(r"No space left on device|File too large|Disk quota exceeded|"
                             r"Input/output error|Read-only file system")


@contextmanager
def held_stderr() -> Iterator[Any]:
    """Hold back what is written to the process's stderr (file descriptor 2) meanwhile.

    Yields the file that receives it; the caller decides whether to show it. The
    descriptor is the process's, so held-back text from other threads is shown too.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield held
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


@contextmanager
def gdal_write(target: str | os.PathLike[str]) -> Iterator[None]:
    """Run GDAL writes for ``target``; a failure becomes one :class:`OutputError`.

    GDAL's and libtiff's messages are held back: shown after a success, replaced after a
    failure by the error, which names ``target`` and the system's reason.
    """
    failure = None
    with held_stderr() as held:
        try:
            yield
        except (OSError, RasterioError, CPLE_BaseError) as err:
            failure = err
        sys.stderr.flush()
        held.seek(0)
        text = held.read().decode(errors="replace")
    said = text if failure is None else f"{text}\n{failure}\n{failure.__cause__ or ''}"
    match = _WRITE_FAILURES.search(said)
    if failure is None and match is None:
        sys.stderr.write(text)
        return
    # libtiff reports some failed writes only on stderr, and GDAL goes on: one is enough.
    reason = match.group(0) if match else (
        str(failure).strip().splitlines() or [type(failure).__name__])[0]
    raise OutputError(target, f"writing failed ({reason}); nothing was written there") \
        from failure


def hex_color(rgb: Sequence[int]) -> str:
    """``#rrggbb`` of an RGB triple."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


class CogWriter:
    """Windowed writes into a staging file, closed into a Cloud-Optimised GeoTIFF.

    Args:
        path: final file (normally a temporary path of ``atomic_path``); the staging
            file ``<path>.stage.tif`` sits beside it and is deleted by :meth:`close`.
        grid: pixel grid and CRS of the output.
        count: number of bands.
        dtype: band data type.
        nodata: nodata value.
        resampling: overview resampling (``mode`` for classes, ``average`` otherwise).
        descriptions: one description per band.
        tags: dataset metadata tags.
        colormap: RGB per class code, for a paletted single-band map.
        scale: GDAL band scale of every band (value = stored x scale), so GDAL and QGIS
            show scaled integers as what they stand for.
        target: what a failed write's error names (default: ``path``; the real output
            when ``path`` is its temporary).

    Raises:
        OutputError: GDAL cannot write (disk full, size limit), naming ``target``; then
            or on any other failure, :meth:`close` with ``keep=False`` cleans up.
    """

    def __init__(self, path: str | os.PathLike[str], grid: Grid, count: int, dtype: str,
                 nodata: float, resampling: Resampling, descriptions: Sequence[str],
                 tags: Mapping[str, str], colormap: Sequence[Sequence[int]] | None = None,
                 scale: float = 1.0, target: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.target = Path(target or path)
        self.stage = self.path.with_name(self.path.name + ".stage.tif")
        self.resampling = resampling
        with gdal_write(self.target):
            self.dataset = rasterio.open(
                self.stage, "w", driver="GTiff", width=grid.width, height=grid.height,
                count=count, dtype=dtype, crs=grid.crs, transform=grid.transform,
                nodata=nodata, tiled=True, blockxsize=BLOCKSIZE, blockysize=BLOCKSIZE,
                compress="deflate", zlevel=1, bigtiff="if_safer")
        try:
            with gdal_write(self.target):
                for band, text in enumerate(descriptions, start=1):
                    self.dataset.set_band_description(band, text)
                self.dataset.update_tags(**tags)
                if scale != 1.0:
                    self.dataset.scales = (scale,) * count
                    self.dataset.offsets = (0.0,) * count
                if colormap is not None:
                    self.dataset.write_colormap(1, {code: (*rgb, 255)
                                                    for code, rgb in enumerate(colormap)})
        except OutputError:
            self.close(keep=False)  # the caller never gets the writer to close
            raise

    def write(self, window: Window, array: np.ndarray) -> None:
        """Write ``(count, h, w)`` (or ``(h, w)`` for one band) values over ``window``."""
        if array.ndim == 2:
            array = array[None]
        with gdal_write(self.target):
            self.dataset.write(array, window=window)

    def close(self, keep: bool = True) -> None:
        """Finish: overviews, then the COG copy at ``path`` (only if ``keep``).

        Without ``keep`` (cleaning up after a failure) GDAL's complaints are dropped.
        """
        try:
            if not keep:
                with held_stderr(), suppress(OSError, RasterioError, CPLE_BaseError):
                    self.dataset.close()
                return
            with gdal_write(self.target):
                self.dataset.close()
                with rasterio.open(self.stage, "r+") as stage:
                    factors = overview_factors(stage.height, stage.width)
                    if factors:
                        stage.build_overviews(factors, self.resampling)
                rasterio.shutil.copy(self.stage, self.path, driver="COG", COMPRESS="DEFLATE",
                                     BLOCKSIZE=BLOCKSIZE, OVERVIEWS="FORCE_USE_EXISTING",
                                     BIGTIFF="IF_SAFER")
        finally:
            self.stage.unlink(missing_ok=True)


def class_tags(classes: Sequence[str], colors: Sequence[Sequence[int]],
               extra: Mapping[str, Any]) -> dict[str, str]:
    """Metadata tags of a class map: names and colours by code, plus ``extra`` facts."""
    tags = {"CLASSES": json.dumps(list(classes)),
            "CLASS_COLORS": json.dumps([hex_color(c) for c in colors]),
            "NODATA_CLASS": str(CLASS_NODATA)}
    tags.update({f"CLASS_{code}": name for code, name in enumerate(classes)})
    tags.update({key.upper(): str(value) for key, value in extra.items()})
    return tags


def class_description(classes: Sequence[str]) -> str:
    """Band description of a class map: ``land cover: 0=AnnualCrop, 1=Forest, ...``."""
    return "land cover: " + ", ".join(f"{code}={name}" for code, name in enumerate(classes))


def legend(classes: Sequence[str], colors: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The ``.legend.json`` content: code, name and colour of every class, and nodata."""
    return {"nodata": CLASS_NODATA,
            "classes": [{"value": code, "name": name, "color": hex_color(rgb)}
                        for code, (name, rgb) in enumerate(zip(classes, colors, strict=True))]}


def qgis_style(classes: Sequence[str], colors: Sequence[Sequence[int]]) -> str:
    """A QGIS ``.qml`` paletted renderer for the class map (QGIS loads it automatically)."""
    entries = "\n".join(
        f'        <paletteEntry value="{code}" color="{hex_color(rgb)}" alpha="255" '
        f"label={quoteattr(name)}/>"
        for code, (name, rgb) in enumerate(zip(classes, colors, strict=True)))
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
  </pipe>
</qgis>
"""


def sidecar_paths(output: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Where the QGIS style and the legend of a class map go: ``<stem>.qml``, ``.legend.json``."""
    output = Path(output)
    return output.with_suffix(".qml"), output.with_suffix(".legend.json")
