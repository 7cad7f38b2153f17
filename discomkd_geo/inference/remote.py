"""Scenes named by URL (``https://``, ``s3://``): GDAL's windowed range requests, one-line errors.

Used by :mod:`.io` wherever a raster is opened (the client's checks, every chunk a
worker reads, the Dask workers' open check). A URL is opened by rasterio as GDAL's
``/vsicurl/`` (``/vsis3/`` for ``s3://``, with the usual AWS environment variables), so
only the header and the blocks a window needs are fetched, by HTTP range requests; never
the whole file. Opening lists no directory (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``)
and a request gives up after ``GDAL_HTTP_TIMEOUT`` seconds (30 by default here). Any of
these GDAL options set in the environment wins over these defaults.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import rasterio

#: URL schemes read through GDAL's network file systems.
SCHEMES = ("http://", "https://", "s3://")

#: GDAL options for remote reads (the environment's own values win).
GDAL_DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no sidecar probing: fewer requests
    "GDAL_HTTP_TIMEOUT": "30",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_MAX_RETRY": "2",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
}


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a URL (or a GDAL network path such as ``/vsicurl/...``)."""
    text = os.fspath(path)
    return text.lower().startswith(SCHEMES) or text.startswith(("/vsicurl", "/vsis3"))


def gdal_options() -> dict[str, str]:
    """The GDAL options of a remote read: :data:`GDAL_DEFAULTS` unless set in the environment."""
    return {key: value for key, value in GDAL_DEFAULTS.items() if key not in os.environ}


def problem(err: Exception) -> str:
    """GDAL's failure to read a URL, as a short phrase (404, unreachable host, timeout)."""
    text = str(err.__cause__ or err).splitlines()[0] if str(err) else type(err).__name__
    lowered = text.lower()
    if "404" in lowered or "does not exist in the file system" in lowered:
        return "not found (HTTP 404)"
    if "timed out" in lowered or "timeout" in lowered:
        timeout = os.environ.get("GDAL_HTTP_TIMEOUT", GDAL_DEFAULTS["GDAL_HTTP_TIMEOUT"])
        return (f"no answer within {timeout} s (timed out; raise GDAL_HTTP_TIMEOUT for slow "
                f"servers) [{text}]")
    if any(word in lowered for word in ("resolve", "connect", "refused", "unreachable")):
        return f"host unreachable ({text})"
    return f"the remote read failed: is the host still reachable? ({text})"


@contextmanager
def remote_env(path: str | os.PathLike[str]) -> Iterator[None]:
    """GDAL's options for ``path`` while a block runs (nothing for local files)."""
    if not is_remote(path):
        yield
        return
    with rasterio.Env(**gdal_options()):
        yield
