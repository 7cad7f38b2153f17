"""Remote scenes: URLs read through GDAL's range requests from a server the test starts."""

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from rasterio.windows import Window
from test_inference import make_predictor

from discomkd_geo.constants import S1_BANDS
from discomkd_geo.errors import InputFileError
from discomkd_geo.inference.io import SceneInput, Source, open_sources
from discomkd_geo.inference.remote import is_remote
from discomkd_geo.models.predictor import PredictorInfo

DEMO = Path(__file__).resolve().parents[1] / "tiles" / "demo"


class RangeServer:
    """An HTTP server on 127.0.0.1 serving a folder with single-range requests.

    Python's ``http.server`` ignores ``Range``, so GDAL would download whole files; this
    handler answers ``bytes=a-b`` with 206 and counts the body bytes it sends.

    Args:
        root: the folder served.
        delay: seconds to wait before answering (to provoke timeouts).
    """

    def __init__(self, root: Path, delay: float = 0.0) -> None:
        self.root, self.delay = root, delay
        self.sent = 0
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                self.serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self.serve(body=True)

            def serve(self, body: bool) -> None:
                time.sleep(server.delay)
                path = server.root / self.path.lstrip("/")
                with server.lock:
                    server.requests.append((self.command, self.path, self.headers["Range"]))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers["Range"] or "")
                if match:
                    start = int(match.group(1))
                    end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
                    data = data[start:end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/"
                                                      f"{path.stat().st_size}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)
                    with server.lock:
                        server.sent += len(data)

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[RangeServer]:
    served = RangeServer(DEMO)
    yield served
    served.close()


def sar_info() -> PredictorInfo:
    return make_predictor("sar", list(S1_BANDS)).info


def open_url(url: str) -> Source:
    _, sources = open_sources({"sar": SceneInput(url)}, {"sar": sar_info()})
    return sources["sar"]


def test_is_remote() -> None:
    assert is_remote("https://example.org/a.tif") and is_remote("s3://bucket/key.tif")
    assert is_remote("/vsicurl/https://example.org/a.tif")
    assert not is_remote("tiles/demo/sar.tif") and not is_remote(r"C:\data\a.tif")


def test_url_scene_reads_like_the_file_by_ranges(server: RangeServer) -> None:
    """The URL gives the local file's grid and values; a window costs a few ranges."""
    remote = open_url(f"{server.url}/sar.tif")
    _, local = open_sources({"sar": SceneInput(DEMO / "sar.tif")}, {"sar": sar_info()})
    assert remote.grid == local["sar"].grid
    server.sent = 0
    window = Window(40, 40, 32, 32)
    data, valid = remote.read(window)
    expected, expected_valid = local["sar"].read(window)
    np.testing.assert_array_equal(data, expected)
    assert (valid == expected_valid).all()
    assert 0 < server.sent < (DEMO / "sar.tif").stat().st_size / 2
    assert all(r is not None for method, _, r in server.requests if method == "GET")


def test_remote_errors_are_one_line(server: RangeServer, monkeypatch: pytest.MonkeyPatch
                                    ) -> None:
    with pytest.raises(InputFileError, match=r"nope\.tif: cannot read raster: not found "
                                             r"\(HTTP 404\)$"):
        open_url(f"{server.url}/nope.tif")
    closed = server.url.rsplit(":", 1)[0] + ":9"  # discard port: nothing listens
    with pytest.raises(InputFileError, match="host unreachable"):
        open_url(f"{closed}/sar.tif")
    slow = RangeServer(DEMO, delay=3)
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    try:
        with pytest.raises(InputFileError, match="no answer within 1 s"):
            open_url(f"{slow.url}/sar.tif")
    finally:
        slow.close()
