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
from discomkd_geo.demo import DEMO_TILES
from discomkd_geo.errors import CheckpointError, SettingsError
from discomkd_geo.models.loader import load_predictor

onnx = pytest.importorskip("onnx", reason="not run: onnx not installed (pip install '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="not run: onnxruntime not installed")


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


def test_dense_mode_refused_in_one_line(sar_onnx: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(sar_onnx), "--sar",
                                       str(DEMO_TILES / "sar.tif"), "-o",
                                       str(tmp_path / "m.tif"), "--mode", "dense"])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {sar_onnx}: ONNX models run in mode 'windows' "
                                     "only (modes dense and pixel need the encoders' feature "
                                     "maps); use --mode windows or the torch checkpoint")
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
