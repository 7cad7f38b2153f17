"""Scenes named by URL (``https://``, ``s3://``): GDAL's windowed range requests, one-line errors.

Used by :mod:`.io` wherever a raster is opened (the client's checks, every chunk a
worker reads, the Dask workers' open check). A URL is opened by rasterio as GDAL's
``/vsicurl/`` (``/vsis3/`` for ``s3://``, with the usual AWS environment variables), so
only the header and the blocks a window needs are fetched, by HTTP range requests; never
the whole file. Opening lists no directory (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``)
and a request gives up after ``GDAL_HTTP_TIMEOUT`` seconds (30 by default here). Any of
these GDAL options set in the environment wins over these defaults.

GDAL bounds each request, not a read: a block it cannot get is asked for again in other
ranges (prefetch, merged, single), each with its retries, so a server that answers the
header and then stalls held a map 381 s (15 requests of 30 s) before the error. Reads of
URLs therefore run in a thread of their own (:func:`bounded_reads`), and one that takes
longer than a request's timeout and retries (:func:`read_limit`) fails the map.
"""

import functools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import rasterio
from rasterio.windows import Window

from ..errors import InputFileError

T = TypeVar("T")

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


def read_limit() -> tuple[float, str]:
    """Seconds one read of a URL may take, and how they add up (for messages).

    A request's timeout times its tries, plus GDAL's retry delays (doubled each time).
    """
    options = {**GDAL_DEFAULTS, **os.environ}
    timeout = float(options["GDAL_HTTP_TIMEOUT"])
    retries = int(options["GDAL_HTTP_MAX_RETRY"])
    delays = float(options["GDAL_HTTP_RETRY_DELAY"]) * (2 ** retries - 1)
    return (timeout * (retries + 1) + delays,
            f"GDAL_HTTP_TIMEOUT {timeout:g} s, {retries} retries")


def bounded_reads(method: Callable[[Any, Iterable[Window]], Iterator[T]]
                  ) -> Callable[[Any, Iterable[Window]], Iterator[T]]:
    """A reader's ``read_raw_windows``, each read of a URL given up after :func:`read_limit`.

    The reads run in a thread that opens, reads and closes the files (GDAL cannot be
    interrupted, and a dataset must not be closed under a read): on time-out the caller
    gets a one-line error at once, and the thread ends once GDAL gives up. Readers of local
    files read as before, in the caller's thread.
    """
    @functools.wraps(method)
    def read_raw_windows(reader: Any, windows: Iterable[Window]) -> Iterator[T]:
        if not any(is_remote(path) for path in reader.files):
            return method(reader, windows)
        current: list[Window] = []

        def remembered() -> Iterator[Window]:
            for window in windows:
                current[:] = [window]
                yield window

        return _in_thread(method(reader, remembered()), reader.name, current)

    return read_raw_windows


def _in_thread(reads: Iterator[T], name: str, current: list[Window]) -> Iterator[T]:
    """The items of ``reads``, each made in another thread and waited for at most the limit."""
    asked: queue.Queue[bool] = queue.Queue()
    answers: queue.Queue[tuple[str, Any]] = queue.Queue()

    def produce() -> None:
        try:
            while asked.get():
                try:
                    answers.put(("item", next(reads)))
                except StopIteration:
                    answers.put(("end", None))
                    return
                except BaseException as err:  # handed to the caller
                    answers.put(("error", err))
                    return
        finally:
            reads.close()  # its files are closed in the thread that opened them

    threading.Thread(target=produce, daemon=True, name="discomkd-remote-read").start()
    limit, why = read_limit()
    try:
        while True:
            asked.put(True)
            try:
                kind, value = answers.get(timeout=limit)
            except queue.Empty:
                rows = (f" rows {current[0].row_off}-{current[0].row_off + current[0].height}"
                        if current else "")
                raise InputFileError(name, f"reading{rows} failed: no answer within "
                                           f"{limit:g} s ({why}; raise GDAL_HTTP_TIMEOUT "
                                           "for slow servers)") from None
            if kind == "error":
                raise value
            if kind == "end":
                return
            yield value
    finally:
        asked.put(False)  # the thread stops after the read it is in


@contextmanager
def remote_env(path: str | os.PathLike[str]) -> Iterator[None]:
    """GDAL's options for ``path`` while a block runs (nothing for local files)."""
    if not is_remote(path):
        yield
        return
    with rasterio.Env(**gdal_options()):
        yield
