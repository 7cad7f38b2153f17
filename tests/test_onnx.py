"""ONNX export and onnxruntime inference: same probabilities, same map, no torch imported."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from discomkd_geo.cli import main
from discomkd_geo.constants import SAR
from discomkd_geo.data.sensors import SENSORS
from discomkd_geo.demo import DEMO_TILES
from discomkd_geo.errors import CheckpointError, SettingsError
from discomkd_geo.models.loader import load_predictor

onnx = pytest.importorskip("onnx", reason="not run: onnx not installed (pip install '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="not run: onnxruntime not installed")

DATA = Path(__file__).parent / "data"


def export(run: Path, out: Path, fmt: str = "onnx") -> Path:
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(run), "--modality", SAR,
                                       "-o", str(out), "--format", fmt])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def sar_onnx(demo_sar_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DisCoM-KD SAR branch (see ``demo_sar_model``), exported to ONNX through the CLI."""
    return export(demo_sar_model, tmp_path_factory.mktemp("onnx") / "sar.onnx")


def raw_batch(predictor, n: int = 24, seed: int = 0) -> np.ndarray:
    """Raw patches around and beyond the training range (exercises the clipping)."""
    rng = np.random.default_rng(seed)
    low = np.asarray(predictor.stats.shift, dtype=np.float32)[None, :, None, None]
    spread = np.asarray(predictor.stats.scale, dtype=np.float32)[None, :, None, None]
    size = predictor.info.patch_size
    unit = rng.uniform(-0.3, 1.3, (n, len(predictor.info.bands), size, size))
    return (low + unit * spread).astype(np.float32)


def deepness_reads(path: Path) -> dict:
    """What the QGIS plugin Deepness reads of a Segmentor, read its way.

    ``processing/models/model_base.py`` and ``segmentor.py``: the ``get_inputs()[0]`` and
    ``get_outputs()[0]`` shapes from onnxruntime, the output checked 4-D and square, the
    class count its ``shape[-3]``, counted with ``range()`` (which a symbolic dimension,
    a string, fails); class names consecutive from 0.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [image], [output] = session.get_inputs(), session.get_outputs()
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    shape = output.shape
    assert len(shape) == 4 and shape[2] == shape[3], shape
    classes = list(range(shape[-3]))
    names = sorted(meta["class_names"].items(), key=lambda kv: int(kv[0]))
    assert [int(k) for k, _ in names] == classes
    return {"model_type": str(meta["model_type"]).capitalize(), "classes": len(classes),
            "channels": image.shape[-3], "tile": (*image.shape[-2:], *shape[-2:]),
            "tile_size": int(meta["tile_size"]), "resolution": float(meta["resolution"])}


def test_probabilities_match_torch(demo_sar_model: Path, sar_onnx: Path) -> None:
    torch_branch = load_predictor(demo_sar_model, SAR)
    onnx_branch = load_predictor(sar_onnx, SAR)
    assert onnx_branch.info == torch_branch.info and onnx_branch.stats == torch_branch.stats
    batch = raw_batch(torch_branch)
    expected = torch_branch.predict_batch(batch, "cpu")
    got = onnx_branch.predict_batch(batch, "cpu")
    assert got.shape == expected.shape == (24, len(torch_branch.info.classes))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).all()
    # Pickled (as for Dask workers): the model's bytes travel, sessions are rebuilt.
    again = pickle.loads(pickle.dumps(onnx_branch))
    np.testing.assert_array_equal(again.predict_batch(batch, "cpu"), got)


def test_metadata_for_people_and_deepness(demo_sar_model: Path, sar_onnx: Path,
                                          tmp_path: Path) -> None:
    torch_branch = load_predictor(demo_sar_model, SAR)
    info = torch_branch.info
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(sar_onnx)).metadata_props}
    assert meta["classes"] == list(info.classes) and meta["band_names"] == list(info.bands)
    assert meta["units"] == "dB" and meta["patch_size"] == info.patch_size
    assert meta["class_colors"][0] == "#{:02x}{:02x}{:02x}".format(*info.colors[0])
    # Deepness (model_base.py): class ids 0..K-1, cm per pixel, tile size, overlap %.
    assert meta["class_names"] == {str(i): c for i, c in enumerate(info.classes)}
    assert meta["resolution"] == pytest.approx(info.pixel_size * 100)
    assert meta["tile_size"] == info.patch_size and meta["tiles_overlap"] == 50
    assert "model_type" not in meta  # a (N, K) output is no segmentation model
    # The per-pixel export is Deepness's Segmentor: its preprocessing (x / 255, then
    # (x - mean) / std) hands the graph the raw values, and every pixel of a tile gets
    # the window's probabilities.
    deepness = export(demo_sar_model, tmp_path / "sar_deepness.onnx", "deepness")
    patch = info.patch_size
    assert deepness_reads(deepness) == {
        "model_type": "Segmentor", "classes": len(info.classes), "channels": len(info.bands),
        "tile": (patch,) * 4, "tile_size": patch, "resolution": info.pixel_size * 100}
    session = ort.InferenceSession(str(deepness), providers=["CPUExecutionProvider"])
    dmeta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert dmeta["model_type"] == "Segmentor"
    batch = raw_batch(torch_branch, n=3)
    mean = np.asarray(dmeta["standardization_mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(dmeta["standardization_std"], dtype=np.float32)[None, :, None, None]
    [out] = session.run(None, {"image": ((batch / 255.0 - mean) / std).astype(np.float32)})
    assert out.shape == (3, len(info.classes), info.patch_size, info.patch_size)
    expected = torch_branch.predict_batch(batch, "cpu")
    np.testing.assert_allclose(out[:, :, 17, 40], expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(load_predictor(deepness).predict_batch(batch, "cpu"),
                               expected, atol=1e-4, rtol=0)


def predict(checkpoint: Path, out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(checkpoint), "--sar",
                                       str(DEMO_TILES / "sar.tif"), "-o", str(out),
                                       "--probabilities", str(out.with_suffix(".p.tif")),
                                       "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.mark.slow
def test_identical_map_on_the_demo_scene(demo_sar_model: Path, sar_onnx: Path,
                                         tmp_path: Path) -> None:
    from_torch = predict(demo_sar_model, tmp_path / "torch.tif")
    from_onnx = predict(sar_onnx, tmp_path / "onnx.tif")
    codes = read(tmp_path / "onnx.tif")
    assert len(np.unique(codes[codes != 255])) > 1  # a real map, not one class
    np.testing.assert_array_equal(codes, read(tmp_path / "torch.tif"))
    np.testing.assert_allclose(read(tmp_path / "onnx.p.tif"), read(tmp_path / "torch.p.tif"),
                               atol=1e-4, rtol=0)
    assert from_onnx["histogram"] == from_torch["histogram"]


@pytest.mark.slow
def test_onnx_predict_imports_no_torch(sar_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    code = ("import sys\nfrom discomkd_geo.cli import main\n"
            f"main(['predict', '--checkpoint', {str(sar_onnx)!r}, '--sar', "
            f"{str(DEMO_TILES / 'sar.tif')!r}, '-o', {str(out)!r}, '--stride', '32'], "
            "standalone_mode=False)\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "no torch"
    assert read(out).shape[0] == 1


@pytest.mark.slow
def test_export_prints_only_its_result(tmp_path: Path) -> None:
    """A decoder's pixel graph made the exporter print 6 lines of constant-folding warnings."""
    pixel_branch().save(tmp_path / "sar.pt")
    result = subprocess.run([sys.executable, "-m", "discomkd_geo", "export", "--checkpoint",
                             str(tmp_path / "sar.pt"), "--modality", SAR, "-o",
                             str(tmp_path / "sar.onnx")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'sar.onnx'}: sar predictor (onnx)")
    assert result.stdout.count("\n") == 1


@pytest.mark.parametrize(("mode", "problem"), [
    ("dense", "ONNX models do not run in mode 'dense' (it pools the encoders' feature maps, "
              "which no exported graph exposes); use --mode windows (or --mode pixel with a "
              "decoder) or the torch checkpoint"),
    # An export without the pixel graph (this one's branch has no decoder).
    ("pixel", "this ONNX model has no per-pixel decoder (its branch had none, or it was "
              "exported before ONNX exports held one); use --mode windows")])
def test_modes_without_a_graph_refused_in_one_line(sar_onnx: Path, tmp_path: Path,
                                                   mode: str, problem: str) -> None:
    assert not load_predictor(sar_onnx).has_decoder
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(sar_onnx), "--sar",
                                       str(DEMO_TILES / "sar.tif"), "-o",
                                       str(tmp_path / "m.tif"), "--mode", mode])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {sar_onnx}: {problem}"
    assert not (tmp_path / "m.tif").exists()


def test_bad_onnx_files_are_one_line_errors(sar_onnx: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match=r"junk.onnx: cannot read ONNX model: "):
        load_predictor(junk)
    with pytest.raises(CheckpointError, match=r"missing.onnx: checkpoint not found"):
        load_predictor(tmp_path / "missing.onnx")
    with pytest.raises(CheckpointError, match=r"holds the 'sar' branch, not 'ms'"):
        load_predictor(sar_onnx, "ms")
    with pytest.raises(SettingsError, match=r"^device: 'tpu': onnxruntime runs here on "):
        load_predictor(sar_onnx).check_device("tpu")
    bare = onnx.load(str(sar_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(CheckpointError, match=r"bare.onnx: not a discomkd_geo ONNX export"):
        load_predictor(tmp_path / "bare.onnx")


def test_damaged_pixel_graphs_are_one_line_errors_at_load(pixel_onnx: Path,
                                                          tmp_path: Path) -> None:
    import base64

    from discomkd_geo.models.onnx_predictor import PIXEL_GRAPH_KEY

    for name, graph in [("missing", None), ("not_base64", "%%%"),
                        ("not_a_graph", base64.b64encode(b"junk").decode())]:
        model = onnx.load(str(pixel_onnx))
        [entry] = [p for p in model.metadata_props if p.key == PIXEL_GRAPH_KEY]
        if graph is None:
            model.metadata_props.remove(entry)
        else:
            entry.value = graph
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        problem = ("cannot read its per-pixel graph: " if name == "not_a_graph" else
                   f"its per-pixel graph \\('{PIXEL_GRAPH_KEY}' metadata\\) is missing")
        with pytest.raises(CheckpointError, match=rf"^\S*{name}.onnx: {problem}"):
            load_predictor(tmp_path / f"{name}.onnx")


# Mode pixel: the per-pixel graph of a branch with a decoder.


def pixel_branch(padding: str = "reflect"):
    """``test_pixel_mode``'s tiny DisCoM-KD branch with an untrained, non-zero decoder."""
    from test_pixel_mode import pixel_predictor

    return pixel_predictor(padding)


@pytest.fixture(scope="module")
def pixel_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from discomkd_geo.models.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx_pixels") / "sar.onnx"
    export_onnx(pixel_branch(), path)
    return path


@pytest.fixture(scope="module")
def pixel_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_pixel_mode import write_pixel_scene

    return write_pixel_scene(tmp_path_factory.mktemp("onnx_scene") / "sar.tif")


def test_pixel_graph_implements_pixel_mode_like_torch(pixel_onnx: Path) -> None:
    from discomkd_geo.models.onnx_predictor import METADATA_KEY, PIXEL_GRAPH_KEY

    torch_branch, onnx_branch = pixel_branch(), load_predictor(pixel_onnx)
    assert onnx_branch.has_decoder and torch_branch.has_decoder
    meta = {p.key: p.value for p in onnx.load(str(pixel_onnx)).metadata_props}
    assert json.loads(meta[METADATA_KEY])["pixels"] == {"halo": torch_branch.pixel_halo(),
                                                        "cell": 8}
    assert PIXEL_GRAPH_KEY in meta
    # The same halo for every extra context (the smoothing's reach asks for any).
    assert [onnx_branch.pixel_halo(e) for e in range(50)] == \
        [torch_branch.pixel_halo(e) for e in range(50)]
    rng = np.random.default_rng(1)
    halo = torch_branch.pixel_halo()
    # Whole cells or not (the graph pads the far side), base halo or more (cropped here).
    for (h, w), crop in [((2 * halo + 32, 2 * halo + 48), halo), ((2 * halo + 37, 2 * halo + 21),
                                                                  halo + 8)]:
        values = rng.uniform(-25, 5, (2, h, w)).astype(np.float32)
        expected = torch_branch.predict_pixels(values, crop, "cpu")
        got = onnx_branch.predict_pixels(values, crop, "cpu")
        assert got.shape == expected.shape == (10, h - 2 * crop, w - 2 * crop)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        assert (got.argmax(0) == expected.argmax(0)).mean() > 0.999
    again = pickle.loads(pickle.dumps(onnx_branch))  # Dask workers: both graphs travel
    np.testing.assert_array_equal(again.predict_pixels(values, crop, "cpu"), got)


def test_onnx_pixel_map_same_bytes_for_any_chunk_size_and_workers(
        pixel_onnx: Path, pixel_scene: Path, tmp_path: Path) -> None:
    from test_pixel_mode import assert_same_bytes_however_chunked

    from discomkd_geo.inference.engine import predict_to_file
    from discomkd_geo.inference.settings import MapSettings

    assert_same_bytes_however_chunked(load_predictor(pixel_onnx), pixel_scene, tmp_path)
    # The torch branch's map: the same classes but for float rounding, smoothing included.
    predict_to_file(pixel_branch(), pixel_scene, tmp_path / "torch.tif", MapSettings.of(
        mode="pixel", block_size=32, probabilities=tmp_path / "torch.p.tif"))
    codes, expected = read(tmp_path / "c40w1.tif"), read(tmp_path / "torch.tif")
    assert len(np.unique(codes[codes != 255])) >= 2
    assert (codes == expected).mean() >= 0.999
    np.testing.assert_allclose(read(tmp_path / "c40w1.p.tif"), read(tmp_path / "torch.p.tif"),
                               atol=1e-4, rtol=0)


def test_export_from_before_pixel_graphs_maps_in_windows_mode(pixel_scene: Path,
                                                              tmp_path: Path) -> None:
    """``tests/data/main_decoder_branch.onnx`` is ``pixel_branch()`` exported by the code on
    ``main`` before exports held the pixel graph: it loads, and auto maps in windows mode,
    as the torch branch does in windows mode."""
    from discomkd_geo.inference.engine import predict_to_file
    from discomkd_geo.inference.settings import MapSettings

    old = load_predictor(DATA / "main_decoder_branch.onnx")
    assert not old.has_decoder
    assert old.info.units == "dB" and old.info.sensor is SENSORS[SAR]  # the stored name
    summary = predict_to_file(old, pixel_scene, tmp_path / "old.tif", MapSettings.of())
    assert summary.mode == "windows"
    predict_to_file(pixel_branch(), pixel_scene, tmp_path / "torch.tif",
                    MapSettings.of(mode="windows"))
    np.testing.assert_array_equal(read(tmp_path / "old.tif"), read(tmp_path / "torch.tif"))
    with pytest.raises(CheckpointError, match="has no per-pixel decoder"):
        predict_to_file(old, pixel_scene, tmp_path / "p.tif", MapSettings.of(mode="pixel"))


def test_deepness_export_of_a_decoder_is_its_per_pixel_output(tmp_path: Path) -> None:
    from discomkd_geo.models.onnx_export import export_onnx

    torch_branch = pixel_branch()
    path = tmp_path / "deepness.onnx"
    export_onnx(torch_branch, path, per_pixel=True)
    read = deepness_reads(path)
    assert (read["classes"], read["tile"]) == (10, (16, 16, 16, 16))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["model_type"]) == "Segmentor"
    batch = raw_batch(torch_branch, n=3)
    [out] = session.run(None, {"image": batch})
    import torch

    with torch.no_grad():
        expected = torch_branch.pixels(torch.from_numpy(batch), 0).numpy()
    assert out.shape == expected.shape == (3, 10, 16, 16)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    assert not torch_branch.training  # the export leaves the branch in eval mode
    # Its output is no window classification: this package does not map with it.
    with pytest.raises(CheckpointError, match=r"deepness.onnx: a Deepness export of a "
                                              r"per-pixel decoder"):
        load_predictor(path)


@pytest.mark.slow
def test_pixel_map_of_the_demo_scene_matches_torch(demo_sar_model: Path,
                                                   tmp_path: Path) -> None:
    """The demo scene in mode pixel (auto, smoothed), a decoder on the demo SAR branch."""
    import torch

    from discomkd_geo.models.branches import build_branch
    from discomkd_geo.models.predictor import Predictor

    base = load_predictor(demo_sar_model, SAR)
    spec = {**base.info.branch_spec, "decoder": True}
    torch.manual_seed(4)
    branch = build_branch(**spec)
    branch.load_state_dict(base.branch.state_dict(), strict=False)
    with torch.no_grad():
        branch.decoder.residual[-1].weight.normal_(0, 0.3)
    base.info.branch_spec = spec
    Predictor(branch, base.stats, base.info).eval().save(tmp_path / "sar.pt")
    sar_onnx = export(tmp_path / "sar.pt", tmp_path / "sar.onnx")
    from_torch = predict(tmp_path / "sar.pt", tmp_path / "torch.tif")
    from_onnx = predict(sar_onnx, tmp_path / "onnx.tif")
    assert from_torch["mode"] == from_onnx["mode"] == "pixel"
    codes, expected = read(tmp_path / "onnx.tif"), read(tmp_path / "torch.tif")
    assert len(np.unique(codes[codes != 255])) > 1
    assert (codes == expected).mean() >= 0.999
    np.testing.assert_allclose(read(tmp_path / "onnx.p.tif"), read(tmp_path / "torch.p.tif"),
                               atol=1e-4, rtol=0)


@pytest.mark.slow
def test_onnx_pixel_mode_without_torch(pixel_onnx: Path, pixel_scene: Path,
                                       tmp_path: Path) -> None:
    """Where PyTorch is missing, pixel maps are unsmoothed by default (said in the log);
    smoothing asked for is a one-line error."""
    def run(out: Path, *extra: str) -> subprocess.CompletedProcess:
        code = ("import sys\nsys.modules['torch'] = None  # as if not installed\n"
                "from discomkd_geo.cli import main\n"
                f"main(['predict', '--checkpoint', {str(pixel_onnx)!r}, '--sar', "
                f"{str(pixel_scene)!r}, '-o', {str(out)!r}, *{list(extra)!r}])\n")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300)

    done = run(tmp_path / "default.tif")
    assert done.returncode == 0, done.stderr
    assert "not smoothing the map (the smoothing needs PyTorch" in done.stderr
    done = run(tmp_path / "unsmoothed.tif", "--smoothing", "0")
    assert done.returncode == 0, done.stderr
    assert "not smoothing" not in done.stderr
    # The same map: the default resolved to no smoothing.
    assert np.array_equal(read(tmp_path / "default.tif"), read(tmp_path / "unsmoothed.tif"))
    done = run(tmp_path / "smoothed.tif", "--smoothing", "8")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: --smoothing: mode 'pixel' smooths with PyTorch, which is not installed here: "
        "install it, or set --smoothing 0")
    assert not (tmp_path / "smoothed.tif").exists()
