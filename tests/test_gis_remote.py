"""Remote scenes: URLs read through GDAL's range requests from a server the test starts."""

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import array_bounds, from_origin
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely.geometry import box
from test_inference import make_predictor, saved_sar_model, texture

from discomkd_geo.constants import S1_BANDS
from discomkd_geo.errors import InputFileError
from discomkd_geo.inference.engine import predict_to_file
from discomkd_geo.inference.io import SceneInput, SceneReader, open_readers
from discomkd_geo.inference.remote import is_remote
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.models.predictor import PredictorInfo

DEMO = Path(__file__).resolve().parents[1] / "tiles" / "demo"


class RangeServer:
    """An HTTP server on 127.0.0.1 serving a folder with single-range requests.

    Python's ``http.server`` ignores ``Range``, so GDAL would download whole files; this
    handler answers ``bytes=a-b`` with 206 and counts the body bytes it sends.

    Args:
        root: the folder served.
        delay: seconds to wait before answering (to provoke timeouts).
        stall: answer the header (ranges from byte 0) but never send data (the headers of
            other ranges, then nothing until closed).
    """

    def __init__(self, root: Path, delay: float = 0.0, stall: bool = False) -> None:
        self.root, self.delay, self.stall = root, delay, stall
        self.closed = threading.Event()
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
                    if server.stall and start > 0:
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        server.closed.wait()
                        return
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
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[RangeServer]:
    served = RangeServer(DEMO)
    yield served
    served.close()


def sar_info() -> PredictorInfo:
    return make_predictor("sar", list(S1_BANDS)).info


def open_url(url: str) -> SceneReader:
    _, sources = open_readers({"sar": SceneInput(url)}, {"sar": sar_info()})
    return sources["sar"]


def test_is_remote() -> None:
    assert is_remote("https://example.org/a.tif") and is_remote("s3://bucket/key.tif")
    assert is_remote("/vsicurl/https://example.org/a.tif")
    assert not is_remote("tiles/demo/sar.tif") and not is_remote(r"C:\data\a.tif")


def test_url_scene_reads_like_the_file_by_ranges(server: RangeServer) -> None:
    """The URL gives the local file's grid and values; a window costs a few ranges."""
    remote = open_url(f"{server.url}/sar.tif")
    _, local = open_readers({"sar": SceneInput(DEMO / "sar.tif")}, {"sar": sar_info()})
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


def test_a_server_stalling_on_the_data_fails_within_timeout_and_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header is served, the tiles never: GDAL alone asked 8 times (1 s each, a retry
    each) for the first window's tile; the map gives up after 1 request and 1 retry."""
    scene = tmp_path / "cog" / "sar.tif"
    scene.parent.mkdir()
    with rasterio.open(scene, "w", driver="COG", width=512, height=512, count=2,
                       dtype="float32", crs="EPSG:32631", transform=from_origin(5e5, 5e6, 10, 10),
                       blocksize=256) as dst:
        dst.write(texture(2, 512, seed=2) - 12)
        dst.descriptions = tuple(S1_BANDS)
    for name, value in {"GDAL_HTTP_TIMEOUT": "1", "GDAL_HTTP_MAX_RETRY": "1",
                        "GDAL_HTTP_RETRY_DELAY": "0.5"}.items():
        monkeypatch.setenv(name, value)
    stalled = RangeServer(scene.parent, stall=True)
    start = time.perf_counter()
    try:
        with pytest.raises(InputFileError, match=r"sar.tif: reading rows 0-64 failed: no "
                                                 r"answer within 2.5 s \(GDAL_HTTP_TIMEOUT 1 "
                                                 r"s, 1 retries; raise GDAL_HTTP_TIMEOUT for "
                                                 r"slow servers\)$"):
            predict_to_file(make_predictor("sar", list(S1_BANDS)), f"{stalled.url}/sar.tif",
                            tmp_path / "map.tif")
        waited = time.perf_counter() - start
    finally:
        stalled.close()
    assert waited < 2.5 + 2.0, f"{waited:.1f} s"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cog"]


def test_read_fails_in_one_line_when_the_server_goes(server: RangeServer) -> None:
    source = open_url(f"{server.url}/sar.tif")
    server.close()
    with pytest.raises(InputFileError, match=r"reading rows 300-332 failed: the remote read "
                                             r"failed: is the host still reachable\?"):
        source.read(Window(300, 300, 32, 32))


def small_area(tmp_path: Path, scene: Path = DEMO / "sar.tif") -> str:
    """A 40 x 40 px area inside the scene's 256 px tile (1, 1)."""
    with rasterio.open(scene) as src:
        transform, crs = src.transform, src.crs
    bounds = array_bounds(40, 40, window_transform(Window(320, 320, 40, 40), transform))
    path = tmp_path / "area.gpkg"
    gpd.GeoDataFrame(geometry=[box(*bounds)], crs=crs).to_file(path)
    return str(path)


def test_small_area_of_a_remote_scene_reads_a_fraction(tmp_path: Path) -> None:
    """A 1024 px Cloud-Optimised scene of 256 px tiles: the area needs one of 16 tiles."""
    scene = tmp_path / "big" / "sar.tif"
    scene.parent.mkdir()
    data = texture(2, 1024, seed=5)
    with rasterio.open(scene, "w", driver="COG", width=1024, height=1024, count=2,
                       dtype="float32", crs="EPSG:32631", transform=from_origin(5e5, 5e6, 10, 10),
                       nodata=np.nan, blocksize=256, compress="deflate") as dst:
        dst.write(data)
        dst.descriptions = tuple(S1_BANDS)
    served = RangeServer(scene.parent)
    try:
        model = make_predictor("sar", list(S1_BANDS))
        settings = MapSettings.of(aoi=small_area(tmp_path, scene), stride=8)
        predict_to_file(model, scene, tmp_path / "local.tif", settings)
        summary = predict_to_file(model, SceneInput(f"{served.url}/sar.tif"),
                                  tmp_path / "remote.tif", settings)
    finally:
        served.close()
    assert summary.mapped_pixels == 40 * 40
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "remote.tif") as b:
        assert (a.read() == b.read()).all()
    size = scene.stat().st_size
    assert served.sent < size / 8, f"{served.sent} of {size} bytes served"


@pytest.mark.slow  # CLI subprocesses or a Dask cluster: seconds each
def test_dask_workers_read_urls(server: RangeServer, tmp_path: Path) -> None:
    from distributed import LocalCluster

    model = make_predictor("sar", list(S1_BANDS))
    settings = MapSettings.of(aoi=small_area(tmp_path), stride=8)
    predict_to_file(model, DEMO / "sar.tif", tmp_path / "local.tif", settings)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        predict_to_file(model, f"{server.url}/sar.tif", tmp_path / "cluster.tif",
                        settings.replace(scheduler=cluster.scheduler_address))
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "cluster.tif") as b:
        assert (a.read() == b.read()).all()


@pytest.mark.slow  # CLI subprocesses or a Dask cluster: seconds each
def test_stac_item_with_remote_assets_and_cli_errors(server: RangeServer,
                                                     tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    import pystac
    from click.testing import CliRunner

    from discomkd_geo.cli import main

    url = f"{server.url}/sar.tif"
    item = pystac.Item("remote", {"type": "Point", "coordinates": [24.65, 41.83]},
                       [24.65, 41.83, 24.65, 41.83],
                       pystac.utils.str_to_datetime("2024-06-01T09:30:00Z"), {})
    item.add_asset("vv_vh", pystac.Asset(url, roles=["data"], media_type=pystac.MediaType.COG,
                                         extra_fields={"sar:polarizations": list(S1_BANDS)}))
    (tmp_path / "item.json").write_text(json.dumps(item.to_dict(include_self_link=False)))
    model = saved_sar_model(tmp_path / "sar.pt")
    out = tmp_path / "map.tif"
    result = CliRunner().invoke(main, [
        "predict", "--checkpoint", str(model), "--stac", str(tmp_path / "item.json"),
        "-o", str(out), "--aoi", small_area(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    links = json.loads(out.with_suffix(".stac.json").read_text())["links"]
    assert any(link["rel"] == "derived_from" and link["href"] == url for link in links)
    missing = f"{server.url}/gone.tif"
    result = subprocess.run([sys.executable, "-m", "discomkd_geo", "predict", "--checkpoint",
                             str(model), "--sar", missing, "-o", str(tmp_path / "m.tif")],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip() == (f"Error: {missing}: cannot read raster: not found "
                                     "(HTTP 404)")
